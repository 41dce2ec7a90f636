/**
 * The failover rules of src/controller/multipath.ts with small fake paths and an injected clock
 * (no wall clock): reads in flight on a failed path re-issued at once on the healthy one; writes
 * and flushes held until the write-hold deadline (KATO + CQT since the loss) or until the failed
 * path is proven gone (reconnected with a new cntlid) — the deadline test FAILS if a held write
 * reaches another path one millisecond early; a new write overlapping a held one waits behind it
 * (and behind its re-issue), a non-overlapping one does not; every SCT 3h path status retried on
 * the other path; all paths gone → the requests wait on a reconnecting path and move to the first
 * path that comes back; the last path dead → EIO; identifier mismatch refused.
 */
import { strict as assert } from 'node:assert';
import { EventEmitter } from 'node:events';
import { describe, it } from 'node:test';
import { MultipathController, writeHoldTimeMs, type PathController, type PathOptions } from '../../src/controller/multipath';
import { classifyNamespace, type NamespaceInfo } from '../../src/controller/namespace-info';
import type { IoRequest } from '../../src/controller/io-request';
import type { Namespace } from '../../src/controller/namespace';
import type { CtrlStateValue } from '../../src/controller/resilient';
import { ErrorCode, NvmfNbdError } from '../../src/errors';
import { NbdErrno } from '../../src/block/errno';
import { encodeIdentifyController, encodeIdentifyNamespace, parseIdentifyController, PathStatus, Sct } from '../../src/wire';
import { encodeNsIdDescriptors } from '../../src/wire/ns-descriptors';
import type { AnaLog } from '../../src/wire';
import { rejectsCode } from '../helpers/assert-code';
import { FakeClock } from '../helpers/mp-fake-path';

const NQN = 'nqn.2014-08.org.nvmf-nbd:test-mp-failover';
const KATO = 5000;
const CQT = 6000;
const NGUID = Buffer.from('00112233445566778899aabbccddeeff', 'hex');

function nsInfo(nguid = NGUID): NamespaceInfo {
  return classifyNamespace(1, encodeIdentifyNamespace({ nsze: 8192n, ncap: 8192n, lbaf: [{ ms: 0, lbads: 9, rp: 0 }], nguid, anagrpid: 1 }));
}

/** A path whose I/O the test completes by hand; `fail()` is a lost association (pass-back mode). */
class FakePath extends EventEmitter implements PathController {
  state: CtrlStateValue = 'live';
  cntlid: number;
  readonly identifyRaw = encodeIdentifyController({ subnqn: NQN, cqt: CQT, anatt: 10, cmic: 0x0b });
  readonly identify = parseIdentifyController(this.identifyRaw);
  readonly namespaces = new Map<number, NamespaceInfo>();
  readonly namespacesOverLimit = 0;
  readonly ioQueueCount = 1;
  readonly maxTransfer = 1 << 20;
  readonly version = 0x20000;
  readonly oncs = 0x0c;
  readonly volatileWriteCache = true;
  reconnects = 0;
  lastError: NvmfNbdError | undefined;
  readonly authentication = undefined;
  anaLog: AnaLog | undefined = undefined;
  anaReporting = false;
  /** Records sent to this path and not completed. */
  readonly running: IoRequest[] = [];
  /** Records held while reconnecting (never sent). */
  readonly held: IoRequest[] = [];
  passBack = false;
  closed = false;
  get holdsIo(): boolean { return this.state === 'connecting'; }
  constructor(readonly options: PathOptions, cntlid: number, nguid = NGUID) {
    super();
    this.cntlid = cntlid;
    this.namespaces.set(1, nsInfo(nguid));
    this.nguid = nguid;
  }
  private readonly nguid: Buffer;
  describeState(): { state: CtrlStateValue; reconnects: number; attempts: number; since: string } {
    return { state: this.state, reconnects: this.reconnects, attempts: 0, since: new Date(0).toISOString() };
  }
  stats(): never { throw new Error('not used'); }
  submitIo(req: IoRequest): void {
    if (this.state === 'live') this.running.push(req);
    else if (this.state === 'connecting') this.held.push(req);
    else process.nextTick(() => (req.owner!).onIoDone(req, new NvmfNbdError(ErrorCode.CONTROLLER_LOST, 'dead', { errno: NbdErrno.EIO })));
  }
  deallocate(): Promise<void> { return Promise.resolve(); }
  writeZeroes(): Promise<void> { return Promise.resolve(); }
  adminCommand(): Promise<{ cqe: never; data: Buffer }> {
    return Promise.resolve({ cqe: undefined as never, data: encodeNsIdDescriptors({ nguid: this.nguid }) });
  }
  refreshes = 0;
  refreshAnaLog(): Promise<AnaLog> {
    this.refreshes++;
    return this.anaLog !== undefined ? Promise.resolve(this.anaLog) : Promise.reject(new Error('no ANA'));
  }
  setPassBack(on: boolean): void { this.passBack = on; }
  takeHeldRecords(): IoRequest[] { return this.held.splice(0); }
  close(): Promise<void> {
    this.closed = true;
    this.setState('dead');
    return Promise.resolve();
  }
  setState(s: CtrlStateValue): void {
    this.state = s;
    this.emit('state', s);
  }
  /** Complete the oldest running record (or the given one). */
  complete(req = this.running[0], err?: NvmfNbdError): void {
    assert.ok(req !== undefined, 'a running request');
    this.running.splice(this.running.indexOf(req), 1);
    (req.owner!).onIoDone(req, err);
  }
  /** The association is lost: state connecting, in-flight records handed back (pass-back). */
  fail(): void {
    assert.equal(this.passBack, true, 'pass-back mode with two paths');
    this.setState('connecting');
    for (const req of this.running.splice(0)) {
      req.pathLost = true;
      (req.owner!).onIoDone(req, new NvmfNbdError(ErrorCode.CONNECTION_CLOSED, 'lost'));
    }
  }
  /** Reconnected with a (new) cntlid. */
  revive(cntlid: number): void {
    this.cntlid = cntlid;
    this.reconnects++;
    this.setState('live');
  }
}

function pathOpts(port: number): PathOptions {
  return { traddr: '127.0.0.1', trsvcid: port, subnqn: NQN, hostnqn: 'nqn.h', hostid: '5d7c1f30-2b4a-4c6d-8e9f-00000000c013', kato: KATO };
}

async function twoPaths(clock: FakeClock): Promise<{ mp: MultipathController; a: FakePath; b: FakePath; ns: Namespace }> {
  const a = new FakePath(pathOpts(4420), 1);
  const b = new FakePath(pathOpts(4421), 2);
  const mp = MultipathController.fromPath(a, { clock });
  await mp.attachPath(b);
  return { mp, a, b, ns: mp.namespace(1)! };
}

const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

/** Track a promise's outcome without awaiting it. */
function track<T>(p: Promise<T>): { done: boolean; value?: T; error?: unknown; p: Promise<T> } {
  const s: { done: boolean; value?: T; error?: unknown; p: Promise<T> } = { done: false, p };
  p.then((v) => { s.done = true; s.value = v; }, (e: unknown) => { s.done = true; s.error = e; });
  return s;
}

describe('multipath failover (fake paths, injected clock)', () => {
  it('write-hold time: KATO + CQT; without CQT, KATO + KATO + the keep-alive grace', () => {
    assert.equal(writeHoldTimeMs(5000, 6000), 11_000);
    assert.equal(writeHoldTimeMs(5000, 0), 15_000);
    assert.equal(writeHoldTimeMs(30_000, 0), 75_000);
    assert.equal(writeHoldTimeMs(5000, 0, 1000), 11_000);
  });

  it('a read in flight on a failed path is re-issued on the healthy path at once', async () => {
    const clock = new FakeClock();
    const { mp, a, b, ns } = await twoPaths(clock);
    const r = track(ns.read(0, 4096));
    await tick();
    assert.equal(a.running.length, 1, 'numa: on the first path');
    a.fail();
    assert.equal(b.running.length, 1, 'the read is on the second path without any time passing');
    b.complete();
    await r.p;
    assert.equal(mp.topology().paths[0]!.io.failovers, 1);
    await mp.close();
  });

  it('a held write is not re-issued before KATO + CQT after the loss (fails if one ms early), then is', async () => {
    const clock = new FakeClock();
    const { mp, a, b, ns } = await twoPaths(clock);
    const data = Buffer.alloc(4096, 0xab);
    const w = track(ns.write(0, data, false));
    const f = track(ns.flush());
    await tick();
    assert.equal(a.running.length, 2);
    a.fail();
    const deadline = KATO + CQT;
    assert.equal(mp.holdTimeMs(mp.paths[0]!), deadline);
    assert.equal(b.running.length, 0, 'nothing re-issued at the loss');
    assert.equal(mp.topology().namespaces[0]!.heldWrites, 2);
    // New I/O goes to the healthy path meanwhile.
    const r = track(ns.read(65536, 4096));
    await tick();
    assert.deepEqual(b.running.map((x) => x.op), [0], 'a new read runs at once');
    b.complete();
    await r.p;
    clock.advance(deadline - 1);
    await tick();
    assert.equal(b.running.length, 0, 'a held write re-issued before its deadline would be a stale-write hazard');
    assert.equal(w.done, false);
    clock.advance(1);
    await tick();
    assert.equal(b.running.length, 2, 'write and flush re-issued at the deadline');
    assert.equal(b.running[0]!.data, data);
    b.complete();
    b.complete();
    await w.p;
    await f.p;
    assert.equal(mp.topology().namespaces[0]!.heldWrites, 0);
    await mp.close();
  });

  it('a new write overlapping a held one waits behind it and its re-issue; a disjoint one does not', async () => {
    const clock = new FakeClock();
    const { mp, a, b, ns } = await twoPaths(clock);
    const w = track(ns.write(0, Buffer.alloc(8192, 1), false));
    await tick();
    a.fail();
    const over = track(ns.write(4096, Buffer.alloc(4096, 2), false));
    const apart = track(ns.write(65536, Buffer.alloc(4096, 3), false));
    await tick();
    assert.equal(b.running.length, 1, 'only the disjoint write runs');
    assert.equal(b.running[0]!.slba, 128n);
    b.complete();
    await apart.p;
    clock.advance(KATO + CQT);
    await tick();
    assert.equal(b.running.length, 1, 'the held write, alone: the overlapping one still waits');
    assert.equal(b.running[0]!.slba, 0n);
    assert.equal(over.done, false);
    b.complete();
    await w.p;
    await tick();
    assert.equal(b.running.length, 1, 'now the overlapping write');
    assert.equal(b.running[0]!.slba, 8n);
    b.complete();
    await over.p;
    await mp.close();
  });

  it('held writes go at once when the failed path is proven gone (reconnected with a new cntlid)', async () => {
    const clock = new FakeClock();
    const { mp, a, b, ns } = await twoPaths(clock);
    const w = track(ns.write(0, Buffer.alloc(4096, 1), false));
    await tick();
    a.fail();
    clock.advance(1000);
    a.revive(1);
    await tick();
    assert.equal(a.running.length + b.running.length, 0, 'same cntlid: not proof, still held');
    a.fail();
    a.revive(7);
    await tick();
    assert.equal(b.running.length, 1, 'new association: re-issued at once (on the other path than the one it was lost on)');
    b.complete();
    await w.p;
    await mp.close();
  });

  for (const [name, sc] of Object.entries(PathStatus)) {
    it(`path status ${name} (SCT 3h SC ${sc.toString(16)}h) is retried on the other path, not returned`, async () => {
      const clock = new FakeClock();
      const { mp, a, b, ns } = await twoPaths(clock);
      const w = track(ns.write(0, Buffer.alloc(4096, 9), false));
      await tick();
      a.complete(undefined, new NvmfNbdError(ErrorCode.NVME_STATUS, name, { status: { sct: Sct.PATH, sc, dnr: false, more: false, crd: 0 } }));
      await tick();
      assert.equal(b.running.length, 1, 'sent again on the other path at once (the command was answered: not in flight)');
      b.complete();
      await w.p;
      assert.equal(mp.topology().paths[0]!.io.pathErrors, 1);
      await mp.close();
    });
  }

  it('a non-path status reaches the caller unchanged', async () => {
    const clock = new FakeClock();
    const { mp, a, ns } = await twoPaths(clock);
    const r = track(ns.read(0, 4096));
    await tick();
    a.complete(undefined, new NvmfNbdError(ErrorCode.NVME_STATUS, 'media', { status: { sct: 2, sc: 0x81, dnr: true, more: false, crd: 0 } }));
    await tick();
    assert.equal(r.done, true);
    assert.equal((r.error as NvmfNbdError).code, ErrorCode.NVME_STATUS);
    await mp.close();
  });

  it('every path gone: requests wait on a reconnecting path and move to the first path that returns', async () => {
    const clock = new FakeClock();
    const { mp, a, b, ns } = await twoPaths(clock);
    a.fail();
    b.fail();
    assert.equal(mp.state, 'connecting');
    const r = track(ns.read(0, 4096));
    await tick();
    assert.equal(a.held.length, 1, 'held by the first reconnecting path (its ctrl_loss / fast_io_fail rules)');
    b.revive(5);
    await tick();
    assert.equal(mp.state, 'live');
    assert.equal(a.held.length, 0);
    assert.equal(b.running.length, 1, 'taken over by the path that came back');
    b.complete();
    await r.p;
    await mp.close();
  });

  it('the last path dead: waiting and held requests fail with EIO, dead is emitted', async () => {
    const clock = new FakeClock();
    const { mp, a, b, ns } = await twoPaths(clock);
    const w = track(ns.write(0, Buffer.alloc(4096, 1), false));
    await tick();
    a.fail();
    const dead = new Promise((resolve) => mp.once('dead', resolve));
    a.lastError = new NvmfNbdError(ErrorCode.CONTROLLER_LOST, 'ctrl_loss_tmo', { errno: NbdErrno.EIO });
    a.setState('dead');
    a.emit('dead', a.lastError);
    assert.equal(mp.paths.length, 1, 'a dead path is dropped while another remains');
    b.lastError = new NvmfNbdError(ErrorCode.CONTROLLER_LOST, 'ctrl_loss_tmo', { errno: NbdErrno.EIO });
    b.setState('dead');
    b.emit('dead', b.lastError);
    await dead;
    assert.equal(mp.state, 'dead');
    await tick();
    assert.equal(w.done, true);
    assert.equal((w.error as NvmfNbdError).errno, NbdErrno.EIO);
    await mp.close();
  });

  it('ANA change longer than ANATT: the group is treated as inaccessible and its log re-read; a new log restores it', async () => {
    const clock = new FakeClock();
    const a = new FakePath(pathOpts(4420), 1);
    a.anaReporting = true;
    a.anaLog = { chgcnt: 1n, groups: [{ grpid: 1, chgcnt: 1n, state: 0x0f, nsids: [1] }] };
    const mp = MultipathController.fromPath(a, { clock });
    const warnings: NvmfNbdError[] = [];
    mp.on('warning', (e: NvmfNbdError) => warnings.push(e));
    const ns = mp.namespace(1)!;
    const r = track(ns.read(0, 4096));
    await tick();
    assert.equal(a.running.length, 0, 'in change: waits (no other path)');
    assert.equal(mp.topology().namespaces[0]!.paths[0]!.anaState, 'change');
    clock.advance(10_000 - 1);
    assert.equal(warnings.length, 0, 'not before ANATT (10 s)');
    clock.advance(1);
    assert.equal(warnings.length, 1);
    assert.equal(warnings[0]!.code, ErrorCode.NO_USABLE_PATH);
    assert.equal(a.refreshes, 1, 'the log is re-read at ANATT');
    assert.equal(mp.topology().namespaces[0]!.paths[0]!.anaState, 'inaccessible');
    assert.equal(r.done, false);
    a.emit('ana', { chgcnt: 2n, groups: [{ grpid: 1, chgcnt: 2n, state: 0x01, nsids: [1] }] } satisfies AnaLog);
    await tick();
    assert.equal(a.running.length, 1, 'optimized again: the waiting read runs');
    a.complete();
    await r.p;
    await mp.close();
  });

  it('a second path reporting other identifiers for the same NSID is refused and closed (NVMF_ERR_MULTIPATH_NS_MISMATCH)', async () => {
    const a = new FakePath(pathOpts(4420), 1);
    const b = new FakePath(pathOpts(4421), 2, Buffer.from('ffeeddccbbaa99887766554433221100', 'hex'));
    const mp = MultipathController.fromPath(a, { clock: new FakeClock() });
    await rejectsCode(mp.attachPath(b), ErrorCode.MULTIPATH_NS_MISMATCH);
    assert.equal(b.closed, true);
    assert.equal(mp.paths.length, 1);
    assert.equal(a.passBack, false, 'one path: no pass-back (today\'s behaviour)');
    await mp.close();
  });
});
