/**
 * Path management and path choice of src/controller/multipath.ts, pinned for the mutation runs
 *   npm run mutate -- src/controller/multipath.ts:1-400 (and :401-800, :801-1185)
 *     --tests=multipath-ana-invalid,multipath-ana,multipath-failover,multipath-scenario-harness,
 *     ana-wire,mut-ctrl-multipath,mut-ctrl-multipath2 --concurrency 1 --timeoutMS 5000
 * with recording fake paths (test/helpers/mp-fake-path.ts) and a hand-driven clock: the I/O
 * policy parser; path statuses told from other errors (only NVME_STATUS with SCT 3h is retried);
 * identifiers compared with presence (a UUID on one path only is a mismatch), read once per path
 * with a 4 KiB Identify, filled in from Identify Namespace, shown only when non-zero; read-only
 * namespaces; addPath / attachPath refusals (closing, duplicate, other subsystem, other block
 * size) and what a new path adds; removePath (unknown id, the last path closes the subsystem,
 * in-flight writes held from the removal, pass-back off with one path left, listeners detached,
 * reconnects kept, a path dying while removed); hand-back to a path that holds I/O; dead paths
 * and the subsystem's dead / close events and error; ANATT (from Identify, 0 → 10 s, not
 * restarted, cleared when the group leaves change); the primary path's facts and the aggregate
 * state; namespace changes of a path (removed, added, resized, reformatted, mismatched); the
 * loss time kept across repeated non-live states; a fence released only by its own path's new
 * association; which path a request goes to in every ANA / state mix; topology `current`; the
 * real clock (setTimeout clamp, Date.now) under mock.timers.
 */
import { strict as assert } from 'node:assert';
import { describe, it } from 'node:test';
import { MultipathController, parseIoPolicy } from '../../src/controller/multipath';
import type { NamespaceInfo } from '../../src/controller/namespace-info';
import { ErrorCode, NvmfNbdError } from '../../src/errors';
import { NbdErrno } from '../../src/block/errno';
import { AnaState } from '../../src/wire/ana';
import type { NamespaceIdentifiers } from '../../src/wire/ns-descriptors';
import { rejectsCode, throwsCode } from '../helpers/assert-code';
import { FakeClock, FakePath, NGUID, NQN, nsInfo, pathOpts, pathStatus, tick, track } from '../helpers/mp-fake-path';

const HOLD = 5000 + 6000; // KATO + CQT of the fake paths

async function two(clock = new FakeClock(), o: { b?: FakePath } = {}): Promise<{ mp: MultipathController; a: FakePath; b: FakePath; clock: FakeClock }> {
  const a = new FakePath(pathOpts(4420), 1);
  const b = o.b ?? new FakePath(pathOpts(4421), 2);
  const mp = MultipathController.fromPath(a, { clock });
  await mp.attachPath(b);
  return { mp, a, b, clock };
}

describe('multipath: policy and error classification', () => {
  it('parseIoPolicy: the three names; anything else CLI_USAGE naming the value', () => {
    assert.equal(parseIoPolicy('numa'), 'numa');
    assert.equal(parseIoPolicy('round-robin'), 'round-robin');
    assert.equal(parseIoPolicy('queue-depth'), 'queue-depth');
    const e = throwsCode(() => parseIoPolicy('fastest'), ErrorCode.CLI_USAGE);
    assert.match(e.message, /'fastest'.*numa, round-robin or queue-depth/);
  });

  it('an error with SCT 3h but another code is not a path status: it reaches the caller, not retried', async () => {
    const { mp, a, b } = await two();
    const ns = mp.namespace(1)!;
    const r = track(ns.read(0, 512));
    await tick();
    const odd = new NvmfNbdError(ErrorCode.TIMEOUT, 'timed out', { errno: NbdErrno.EIO, status: { sct: 3, sc: 0x02, dnr: false, more: false, crd: 0 } });
    a.complete(undefined, odd);
    await tick();
    assert.equal(b.running.length, 0, 'not sent again');
    assert.equal(r.error, odd);
    assert.equal(mp.topology().paths[0]!.io.pathErrors, 0);
    await mp.close();
  });

  it('NVME_STATUS without a status is not a path status either', async () => {
    const { mp, a, b } = await two();
    const ns = mp.namespace(1)!;
    const r = track(ns.read(0, 512));
    await tick();
    const bare = new NvmfNbdError(ErrorCode.NVME_STATUS, 'status', { errno: NbdErrno.EIO });
    a.complete(undefined, bare);
    await tick();
    assert.equal(b.running.length, 0);
    assert.equal(r.error, bare);
    await mp.close();
  });

  it('a path status (SCT 3h) is retried and counted', async () => {
    const { mp, a, b } = await two();
    const r = track(mp.namespace(1)!.read(0, 512));
    await tick();
    a.complete(undefined, pathStatus(0x02));
    await tick();
    assert.equal(b.running.length, 1);
    b.complete();
    await r.p;
    assert.deepEqual(mp.topology().paths.map((p) => p.io.pathErrors), [1, 0]);
    await mp.close();
  });
});

describe('multipath: identifiers', () => {
  const UUID = Buffer.from('0f0e0d0c0b0a09080706050403020100', 'hex');
  const EUI = Buffer.from('0102030405060708', 'hex');

  it('a UUID on one path and none on the other is a mismatch (both orders)', async () => {
    const pairs: Array<[NamespaceIdentifiers, NamespaceIdentifiers]> = [[{ nguid: NGUID, uuid: UUID }, { nguid: NGUID }], [{ nguid: NGUID }, { nguid: NGUID, uuid: UUID }]];
    for (const [ia, ib] of pairs) {
      const a = new FakePath(pathOpts(4420), 1, { ids: new Map([[1, ia]]) });
      const b = new FakePath(pathOpts(4421), 2, { ids: new Map([[1, ib]]) });
      const mp = MultipathController.fromPath(a, { clock: new FakeClock() });
      const e = await rejectsCode(mp.attachPath(b), ErrorCode.MULTIPATH_NS_MISMATCH);
      assert.match(e.message, /namespace 1 on path 127\.0\.0\.1:4421 has other identifiers/);
      assert.equal(b.closed, true);
      assert.equal(mp.paths.length, 1);
      await mp.close();
    }
  });

  it('the same identifiers (NGUID, EUI-64, UUID) on both paths: merged', async () => {
    const ids = { nguid: NGUID, eui64: EUI, uuid: UUID };
    const a = new FakePath(pathOpts(4420), 1, { ids: new Map([[1, ids]]) });
    const b = new FakePath(pathOpts(4421), 2, { ids: new Map([[1, { ...ids }]]) });
    const mp = MultipathController.fromPath(a, { clock: new FakeClock() });
    await mp.attachPath(b);
    assert.equal(mp.paths.length, 2);
    assert.deepEqual(mp.topology().namespaces[0]!.ids, { nguid: NGUID.toString('hex'), eui64: EUI.toString('hex'), uuid: '0f0e0d0c-0b0a-0908-0706-050403020100' });
    await mp.close();
  });

  it('without CNS 03h, Identify Namespace NGUID / EUI-64 are compared: a different EUI-64 is a mismatch', async () => {
    const a = new FakePath(pathOpts(4420), 1, { ids: 'reject', namespaces: [nsInfo(1, { eui64: EUI })] });
    const b = new FakePath(pathOpts(4421), 2, { ids: 'reject', namespaces: [nsInfo(1, { eui64: Buffer.from('0102030405060709', 'hex') })] });
    const mp = MultipathController.fromPath(a, { clock: new FakeClock() });
    await rejectsCode(mp.attachPath(b), ErrorCode.MULTIPATH_NS_MISMATCH);
    await mp.close();
  });

  it('topology ids: Identify Namespace NGUID / EUI-64 only when not all zero', () => {
    const zero8 = Buffer.alloc(8);
    const EUI = Buffer.from('0102030405060700', 'hex'); // one zero byte: still set
    const a = new FakePath(pathOpts(4420), 1, { namespaces: [nsInfo(1, { eui64: EUI }), nsInfo(2, { nguid: Buffer.alloc(16), eui64: zero8 }), nsInfo(3, { nguid: Buffer.alloc(16), eui64: EUI })] });
    const mp = MultipathController.fromPath(a, { clock: new FakeClock() });
    const t = mp.topology();
    assert.deepEqual(t.namespaces.map((n) => n.ids), [{ nguid: NGUID.toString('hex'), eui64: EUI.toString('hex') }, undefined, { eui64: EUI.toString('hex') }]);
    // Only one byte non-zero still counts as set.
    const one = Buffer.alloc(16);
    one[15] = 1;
    const c = new FakePath(pathOpts(4422), 3, { namespaces: [nsInfo(1, { nguid: one })] });
    const mp2 = MultipathController.fromPath(c, { clock: new FakeClock() });
    assert.deepEqual(mp2.topology().namespaces[0]!.ids, { nguid: one.toString('hex') });
  });

  it('a namespace only the second path has: added, its topology without ids (none read, the primary lacks it)', async () => {
    const a = new FakePath(pathOpts(4420), 1);
    const b = new FakePath(pathOpts(4421), 2, { namespaces: [nsInfo(1), nsInfo(2, { nguid: Buffer.alloc(16) })] });
    const mp = MultipathController.fromPath(a, { clock: new FakeClock() });
    const events: unknown[] = [];
    mp.on('namespaces', (c) => events.push(c));
    mp.on('paths', (c) => events.push(c));
    await mp.attachPath(b);
    assert.deepEqual(events, [{ added: '127.0.0.1:4421' }, { added: [2], removed: [], resized: [] }]);
    assert.ok(mp.namespace(2) !== undefined);
    assert.equal(mp.topology().namespaces[1]!.ids, undefined);
    assert.deepEqual([...mp.namespaces.keys()], [1, 2]);
    await mp.close();
  });
});

describe('multipath: adding paths', () => {
  it('addPath refuses a closing subsystem and a known address before connecting', async () => {
    const a = new FakePath(pathOpts(4420), 1);
    let connects = 0;
    const mp = MultipathController.fromPath(a, { clock: new FakeClock(), connectPath: () => { connects++; return Promise.resolve(new FakePath(pathOpts(4421), 2)); } });
    const dup = await rejectsCode(mp.addPath(pathOpts(4420)), ErrorCode.ALREADY_CONNECTED);
    assert.equal(dup.message, `path 127.0.0.1:4420 of ${NQN} is already connected`);
    assert.equal(connects, 0);
    await mp.addPath(pathOpts(4421));
    assert.equal(connects, 1);
    assert.deepEqual(mp.paths.map((p) => p.id), ['127.0.0.1:4420', '127.0.0.1:4421']);
    await rejectsCode(mp.addPath(pathOpts(4421)), ErrorCode.ALREADY_CONNECTED);
    void mp.close();
    const e = await rejectsCode(mp.addPath(pathOpts(4422)), ErrorCode.CONTROLLER_DELETED);
    assert.equal(e.message, 'subsystem is closing');
    assert.equal(connects, 1);
  });

  it('attachPath refuses (and closes) a duplicate, another subsystem, and anything once closing', async () => {
    const a = new FakePath(pathOpts(4420), 1);
    const mp = MultipathController.fromPath(a, { clock: new FakeClock() });
    const dup = new FakePath(pathOpts(4420), 9);
    const e1 = await rejectsCode(mp.attachPath(dup), ErrorCode.ALREADY_CONNECTED);
    assert.equal(e1.message, `path 127.0.0.1:4420 of ${NQN} is already connected`);
    assert.equal(dup.closed, true);
    const other = new FakePath(pathOpts(4421), 2, { subnqn: 'nqn.2014-08.org.other:x' });
    const e2 = await rejectsCode(mp.attachPath(other), ErrorCode.MULTIPATH_SUBSYSTEM_MISMATCH);
    assert.equal(e2.message, `path 127.0.0.1:4421 reached subsystem 'nqn.2014-08.org.other:x', not '${NQN}'`);
    assert.equal(other.closed, true);
    assert.equal(mp.paths.length, 1);
    const late = new FakePath(pathOpts(4422), 3);
    late.closeRejects = true;
    void mp.close();
    const e3 = await rejectsCode(mp.attachPath(late), ErrorCode.CONTROLLER_DELETED);
    assert.equal(e3.message, 'subsystem is closing');
    assert.equal(late.closed, true, 'closed (its close error swallowed)');
  });

  it('a new path with only namespaces the subsystem has: no namespaces event; unusable and unservable ones skipped', async () => {
    const huge = { ...nsInfo(3), nsze: 1n << 60n } as NamespaceInfo; // usable as classified, beyond 2^53 bytes
    const b = new FakePath(pathOpts(4421), 2, { namespaces: [nsInfo(1), nsInfo(2, { nsze: 0n }), huge] });
    const a = new FakePath(pathOpts(4420), 1);
    const mp = MultipathController.fromPath(a, { clock: new FakeClock() });
    const ns1 = mp.namespace(1);
    const events: unknown[] = [];
    mp.on('namespaces', (c) => events.push(c));
    await mp.attachPath(b);
    assert.deepEqual(events, []);
    assert.equal(mp.namespace(1), ns1, 'the same object');
    assert.equal(mp.namespace(2), undefined);
    assert.equal(mp.namespace(3), undefined);
    await mp.close();
  });

  it('readOnlyNamespaces on the first path: writes refused EPERM', async () => {
    const a = new FakePath(pathOpts(4420, { readOnlyNamespaces: true }), 1);
    const mp = MultipathController.fromPath(a, { clock: new FakeClock() });
    const e = await rejectsCode(mp.namespace(1)!.write(0, Buffer.alloc(512), false), ErrorCode.INVALID_ARGUMENT);
    assert.equal(e.errno, NbdErrno.EPERM);
    assert.equal(a.running.length, 0);
    const b = new FakePath(pathOpts(4421), 1);
    const mp2 = MultipathController.fromPath(b, { clock: new FakeClock() });
    const w = track(mp2.namespace(1)!.write(0, Buffer.alloc(512), false));
    await tick();
    assert.equal(b.running.length, 1, 'not read-only by default');
    b.complete();
    await w.p;
    await mp.close();
    await mp2.close();
  });

  it('nothing is held at the start', () => {
    const mp = MultipathController.fromPath(new FakePath(pathOpts(4420), 1), { clock: new FakeClock() });
    assert.equal(mp.heldWrites(), 0);
    assert.equal(mp.heldWrites(1), 0);
  });
});

describe('multipath: removing paths', () => {
  it('an unknown id is NO_SUCH_CONTROLLER; removing the last path closes the subsystem', async () => {
    const a = new FakePath(pathOpts(4420), 1);
    const mp = MultipathController.fromPath(a, { clock: new FakeClock() });
    const e = await rejectsCode(mp.removePath('127.0.0.1:9999'), ErrorCode.NO_SUCH_CONTROLLER);
    assert.equal(e.message, `no path 127.0.0.1:9999 of ${NQN}`);
    assert.equal(a.closed, false);
    const closed = new Promise((r) => mp.once('close', r));
    await mp.removePath('127.0.0.1:4420');
    assert.equal(await closed, undefined);
    assert.equal(a.closed, true);
    assert.equal(mp.state, 'dead');
  });

  it('removing one of two: closed, dropped, listeners off, pass-back off, its reconnects kept, paths event', async () => {
    const { mp, a, b } = await two();
    a.reconnects = 3;
    b.reconnects = 4;
    assert.equal(mp.reconnects, 7);
    assert.deepEqual([a.passBack, b.passBack], [true, true]);
    const events: unknown[] = [];
    mp.on('paths', (e) => events.push(e));
    await mp.removePath('127.0.0.1:4420');
    assert.equal(a.closed, true);
    assert.deepEqual(mp.paths.map((p) => p.id), ['127.0.0.1:4421']);
    assert.equal(b.passBack, false, 'one path left: no pass-back');
    assert.equal(mp.reconnects, 7, 'the removed path\'s reconnects still count');
    assert.deepEqual(events.at(-1), { removed: '127.0.0.1:4420' });
    for (const ev of ['state', 'handback', 'namespaces', 'ana', 'dead', 'warning']) assert.equal(a.listenerCount(ev), 0, `no '${ev}' listener left`);
    assert.equal(b.listenerCount('state'), 1);
    await mp.close();
  });

  it('while a path is being removed new I/O avoids it; its in-flight write is held from the removal time', async () => {
    const clock = new FakeClock();
    const { mp, a, b } = await two(clock);
    const ns = mp.namespace(1)!;
    const w = track(ns.write(0, Buffer.alloc(512, 7), false));
    await tick();
    assert.equal(a.running.length, 1);
    const t0 = clock.now();
    let finishClose!: () => void;
    a.close = () => { a.closed = true; return new Promise<void>((r) => { finishClose = r; }); };
    const removing = mp.removePath('127.0.0.1:4420');
    const r = track(ns.read(4096, 512));
    await tick();
    assert.equal(b.running.length, 1, 'the read goes to the other path, not the one being removed');
    b.complete();
    await r.p;
    clock.advance(2000);
    // The closing controller hands back the write it had in flight.
    a.fail();
    clock.advance(HOLD - 2000 - 1);
    await tick();
    assert.equal(b.running.length, 0, 'held until KATO + CQT after the removal, not after the hand-back');
    clock.advance(1);
    await tick();
    assert.equal(clock.now(), t0 + HOLD);
    assert.equal(b.running.length, 1);
    b.complete();
    await w.p;
    finishClose();
    await removing;
    assert.equal(mp.paths.length, 1);
    await mp.close();
  });

  it('a path that dies while being removed is dropped once (the other path stays)', async () => {
    const { mp, a, b } = await two();
    a.close = () => {
      a.closed = true;
      a.state = 'dead';
      a.emit('dead', new NvmfNbdError(ErrorCode.CONTROLLER_LOST, 'gone', { errno: NbdErrno.EIO }));
      return Promise.resolve();
    };
    await mp.removePath('127.0.0.1:4420');
    assert.deepEqual(mp.paths.map((p) => p.id), ['127.0.0.1:4421']);
    assert.equal(mp.state, 'live');
    const r = track(mp.namespace(1)!.read(0, 512));
    await tick();
    assert.equal(b.running.length, 1);
    b.complete();
    await r.p;
    await mp.close();
  });

  it('path events are forwarded: warning, namespaces, state (with the path id)', async () => {
    const { mp, a, b } = await two();
    const warnings: unknown[] = [];
    const paths: unknown[] = [];
    const nss: unknown[] = [];
    mp.on('warning', (e) => warnings.push(e));
    mp.on('paths', (e) => paths.push(e));
    mp.on('namespaces', (e) => nss.push(e));
    const w = new Error('something');
    a.emit('warning', w);
    assert.deepEqual(warnings, [w]);
    b.namespaces.set(5, nsInfo(5));
    b.emit('namespaces', { added: [5], removed: [], resized: [] });
    assert.deepEqual(nss, [{ added: [5], removed: [], resized: [] }]);
    assert.ok(mp.namespace(5) !== undefined);
    b.setState('connecting');
    assert.deepEqual(paths, [{ state: { id: '127.0.0.1:4421', state: 'connecting' } }]);
    await mp.close();
  });
});

describe('multipath: loss time and fences', () => {
  it('a second non-live state keeps the first loss time (the deadline does not move)', async () => {
    const clock = new FakeClock();
    const { mp, a, b } = await two(clock);
    const w = track(mp.namespace(1)!.write(0, Buffer.alloc(512), false));
    await tick();
    a.fail();
    clock.advance(3000);
    a.setState('connecting');
    a.setState('deleting');
    clock.advance(HOLD - 3000);
    await tick();
    assert.equal(b.running.length, 1, 're-issued KATO + CQT after the first loss');
    b.complete();
    await w.p;
    await mp.close();
  });

  it('a live state that is no reconnect (no loss seen) does not release a held write', async () => {
    const clock = new FakeClock();
    const { mp, a, b } = await two(clock);
    const w = track(mp.namespace(1)!.write(0, Buffer.alloc(512), false));
    await tick();
    // The record comes back lost while the path still says live (no state event first).
    const req = a.running.shift()!;
    req.pathLost = true;
    req.owner!.onIoDone(req, new NvmfNbdError(ErrorCode.CONNECTION_CLOSED, 'lost'));
    a.cntlid = 9;
    a.setState('live');
    await tick();
    assert.equal(a.running.length + b.running.length, 0, 'still held');
    clock.advance(HOLD);
    await tick();
    assert.equal(a.running.length + b.running.length, 1);
    (a.running.length > 0 ? a : b).complete();
    await w.p;
    await mp.close();
  });

  it('a reconnect with a new cntlid releases only the fences of that path', async () => {
    const clock = new FakeClock();
    const { mp, a, b } = await two(clock);
    mp.iopolicy = 'round-robin';
    const ns = mp.namespace(1)!;
    const wa = track(ns.write(0, Buffer.alloc(512, 1), false));
    const wb = track(ns.write(4096, Buffer.alloc(512, 2), false));
    await tick();
    assert.deepEqual([a.running.length, b.running.length], [1, 1]);
    a.fail();
    b.fail();
    assert.equal(mp.heldWrites(1), 2);
    a.revive(11);
    await tick();
    assert.equal(a.running.length, 1, 'the write lost on a runs again on a');
    assert.equal(a.running[0]!.slba, 0n);
    assert.equal(b.held.length + b.running.length, 0, 'the write lost on b is still held');
    a.complete();
    await wa.p;
    assert.equal(wb.done, false);
    clock.advance(HOLD);
    await tick();
    assert.equal(a.running.length, 1);
    assert.equal(a.running[0]!.slba, 8n);
    a.complete();
    await wb.p;
    await mp.close();
  });
});

describe('multipath: the real clock', () => {
  it('a timer longer than 2^31 - 1 ms is clamped to it (not fired at once as setTimeout would)', async (t) => {
    t.mock.timers.enable({ apis: ['setTimeout'] });
    const a = new FakePath(pathOpts(4420, { ctrlLossTmoMs: 2 ** 40 }), 1);
    a.setAna([[1, AnaState.INACCESSIBLE, [1]]], false);
    a.anaReporting = false;
    const mp = MultipathController.fromPath(a);
    const r = track(mp.namespace(1)!.read(0, 512));
    await tick();
    assert.equal(a.running.length, 0, 'waits for an ANA change');
    t.mock.timers.tick(2 ** 31 - 2);
    await tick();
    assert.equal(r.done, false);
    t.mock.timers.tick(1);
    await tick();
    assert.equal(r.done, true);
    assert.equal((r.error as NvmfNbdError).code, ErrorCode.NO_USABLE_PATH);
    await mp.close();
  });
});

describe('multipath: held records when a path returns', () => {
  it('the returning path keeps its own held records; a path no longer reconnecting keeps its records too', async () => {
    const { mp, a, b } = await two();
    a.fail();
    b.fail();
    const r = track(mp.namespace(1)!.read(0, 512));
    await tick();
    assert.equal(a.held.length, 1, 'held by the first reconnecting path');
    a.revive(21);
    await tick();
    assert.equal(a.held.length, 1, 'its own held record stays with its controller (which re-sends it)');
    assert.equal(a.running.length, 0);
    a.running.push(a.held.shift()!);
    a.complete();
    await r.p;
    await mp.close();
  });

  it('records held by a path that is no longer reconnecting (deleting) are not pulled', async () => {
    const { mp, a, b } = await two();
    a.fail();
    b.fail();
    const r = track(mp.namespace(1)!.read(0, 512));
    await tick();
    assert.equal(a.held.length, 1);
    a.setState('deleting');
    b.revive(31);
    await tick();
    assert.equal(a.held.length, 1, 'not taken from a path that is not reconnecting');
    assert.equal(b.running.length, 0);
    assert.equal(r.done, false);
    void mp.close();
  });

  it('a path state event that is not live pulls nothing', async () => {
    const { mp, a, b } = await two();
    a.holdsOverride = false;
    a.fail();
    b.fail();
    const r = track(mp.namespace(1)!.read(0, 512));
    await tick();
    assert.equal(b.held.length, 1, 'held by the path that still holds I/O');
    b.holdsOverride = false;
    a.setState('connecting');
    await tick();
    assert.equal(b.held.length, 1, 'still on b');
    assert.equal(a.held.length, 0);
    assert.equal(r.done, false);
    void mp.close();
  });
});

describe('multipath: hand-back, dead paths, ANATT', () => {
  it('records a reconnecting path gives back go to another path that holds I/O (queue depth moved)', async () => {
    const { mp, a, b } = await two();
    a.fail();
    b.fail();
    const r = track(mp.namespace(1)!.read(0, 512));
    await tick();
    assert.equal(a.held.length, 1);
    assert.deepEqual(mp.topology().paths.map((p) => p.queueDepth), [1, 0]);
    a.holdsOverride = false;
    const err = new NvmfNbdError(ErrorCode.CONTROLLER_LOST, 'fast_io_fail_tmo', { errno: NbdErrno.EIO });
    a.emit('handback', a.held.splice(0), err);
    assert.equal(b.held.length, 1, 'b still holds I/O');
    assert.deepEqual(mp.topology().paths.map((p) => p.queueDepth), [0, 1]);
    b.revive(5);
    b.running.push(b.held.shift()!);
    b.complete();
    await r.p;
    await mp.close();
  });

  it('given back with no other path that could take it (deleting, or being removed): fails with the path error', async () => {
    const { mp, a, b } = await two();
    a.fail();
    b.setState('deleting');
    const r = track(mp.namespace(1)!.read(0, 512));
    await tick();
    assert.equal(a.held.length, 1);
    const err = new NvmfNbdError(ErrorCode.CONTROLLER_LOST, 'ctrl_loss_tmo', { errno: NbdErrno.EIO });
    a.emit('handback', a.held.splice(0), err);
    await tick();
    assert.equal(r.error, err);
    await mp.close();
    const t = await two();
    t.b.close = () => new Promise(() => undefined);
    void t.mp.removePath('127.0.0.1:4421');
    t.a.fail();
    const r2 = track(t.mp.namespace(1)!.read(0, 512));
    await tick();
    assert.equal(t.a.held.length, 1);
    t.a.emit('handback', t.a.held.splice(0), err);
    await tick();
    assert.equal(r2.error, err, 'a path being removed takes nothing');
  });

  it('the only path dead: kept, its error is the subsystem\'s (dead, close emitted once)', async () => {
    const a = new FakePath(pathOpts(4420), 1);
    const mp = MultipathController.fromPath(a, { clock: new FakeClock() });
    const events: Array<[string, unknown]> = [];
    for (const ev of ['dead', 'close', 'state', 'warning']) mp.on(ev, (x) => events.push([ev, x]));
    const err = new NvmfNbdError(ErrorCode.CONTROLLER_LOST, 'ctrl_loss_tmo', { errno: NbdErrno.EIO });
    a.emit('dead', err);
    assert.equal(mp.paths.length, 1);
    assert.equal(mp.lastError, err);
    a.setState('dead');
    assert.deepEqual(events, [['state', 'dead'], ['dead', err], ['close', err]]);
    await mp.close();
    assert.deepEqual(events.length, 3, 'no second close');
  });

  it('the last path dead without a recorded error: CONTROLLER_LOST EIO; held requests fail with it (cause kept)', async () => {
    const a = new FakePath(pathOpts(4420), 1);
    const mp = MultipathController.fromPath(a, { clock: new FakeClock() });
    a.setAna([[1, AnaState.INACCESSIBLE, [1]]]);
    const r = track(mp.namespace(1)!.read(0, 512));
    await tick();
    let dead: NvmfNbdError | undefined;
    mp.on('dead', (e: NvmfNbdError) => { dead = e; });
    a.setState('dead');
    await tick();
    assert.equal(dead?.code, ErrorCode.CONTROLLER_LOST);
    assert.equal(dead.errno, NbdErrno.EIO);
    assert.equal(dead.message, `subsystem ${NQN}: every path is gone`);
    const e = r.error as NvmfNbdError;
    assert.equal(e.code, ErrorCode.CONTROLLER_LOST);
    assert.equal(e.errno, NbdErrno.EIO);
    assert.equal(e.cause, dead);
    assert.equal(mp.lastError, dead);
  });

  it('the primary path\'s last error is the subsystem\'s when every path dies', async () => {
    const a = new FakePath(pathOpts(4420), 1);
    const mp = MultipathController.fromPath(a, { clock: new FakeClock() });
    a.lastError = new NvmfNbdError(ErrorCode.TIMEOUT, 'keep-alive timeout', { errno: NbdErrno.EIO });
    let dead: unknown;
    mp.on('dead', (e) => { dead = e; });
    a.setState('dead');
    assert.equal(dead, a.lastError);
    await mp.close();
  });

  it('one of two paths dead: dropped with a warning naming it (its code, the cause)', async () => {
    const { mp, a } = await two();
    const warnings: NvmfNbdError[] = [];
    mp.on('warning', (e: NvmfNbdError) => warnings.push(e));
    const err = new NvmfNbdError(ErrorCode.CONTROLLER_LOST, 'ctrl_loss_tmo', { errno: NbdErrno.EIO });
    a.emit('dead', err);
    assert.equal(warnings.length, 1);
    assert.equal(warnings[0]!.code, ErrorCode.CONTROLLER_LOST);
    assert.equal(warnings[0]!.message, `path 127.0.0.1:4420 of ${NQN} removed: ctrl_loss_tmo`);
    assert.equal(warnings[0]!.cause, err);
    assert.deepEqual(mp.paths.map((p) => p.id), ['127.0.0.1:4421']);
    assert.equal(mp.lastError, undefined);
    await mp.close();
  });

  it('ANATT from Identify Controller (3 s here; 0 → 10 s); a new log still in change does not restart it; expiry warns once', async () => {
    for (const [anatt, ms] of [[3, 3000], [0, 10_000]] as const) {
      const clock = new FakeClock();
      const a = new FakePath(pathOpts(4420), 1, { anatt });
      const mp = MultipathController.fromPath(a, { clock });
      const warnings: NvmfNbdError[] = [];
      mp.on('warning', (e: NvmfNbdError) => warnings.push(e));
      a.setAna([[1, AnaState.CHANGE, [1]]]);
      clock.advance(ms - 1000);
      a.setAna([[1, AnaState.CHANGE, [1]]]);
      clock.advance(999);
      assert.equal(warnings.length, 0);
      clock.advance(1);
      assert.equal(warnings.length, 1, `expired ${ms} ms after the first change log`);
      assert.equal(warnings[0]!.message, `path 127.0.0.1:4420: ANA group 1 still in change after ANATT (${ms} ms): treated as inaccessible`);
      clock.advance(3 * ms);
      assert.equal(warnings.length, 1, 'once');
      await mp.close();
    }
  });

  it('a log leaving change clears the ANATT timer', async () => {
    const clock = new FakeClock();
    const a = new FakePath(pathOpts(4420), 1);
    const mp = MultipathController.fromPath(a, { clock });
    const warnings: unknown[] = [];
    mp.on('warning', (e) => warnings.push(e));
    const anaEvents: unknown[] = [];
    mp.on('ana', (e) => anaEvents.push(e));
    a.setAna([[1, AnaState.CHANGE, [1]], [2, AnaState.CHANGE, []]]);
    assert.equal(clock.timers.length, 2);
    a.setAna([[1, AnaState.OPTIMIZED, [1]], [2, AnaState.CHANGE, []]]);
    assert.equal(clock.timers.length, 1, 'only group 2 still timed');
    assert.deepEqual(anaEvents.at(-1), { path: '127.0.0.1:4420', groups: [{ grpid: 1, state: 'optimized' }, { grpid: 2, state: 'change' }] });
    clock.advance(20_000);
    assert.equal(warnings.length, 1);
    await mp.close();
  });

  it('no log refresh on a path status from a path that is not live or does not report ANA', async () => {
    const { mp, a, b } = await two();
    a.anaLog = { chgcnt: 1n, groups: [] };
    const r = track(mp.namespace(1)!.read(0, 512));
    await tick();
    a.complete(undefined, pathStatus(0x60));
    await tick();
    assert.equal(a.refreshes, 0, 'no ANA reporting');
    b.anaReporting = true;
    b.state = 'connecting';
    b.complete(undefined, pathStatus(0x60));
    await tick();
    assert.equal(b.refreshes, 0, 'not live');
    void mp.close();
    void r;
  });
});

describe('multipath: identities of a new path', () => {
  it('ids are read once per path and namespace (cached), with a 4 KiB Identify', async () => {
    const { mp, a, b } = await two();
    assert.equal(a.admin.length, 1);
    assert.deepEqual(a.adminOptions[0], { dataInLength: 4096 });
    const c = new FakePath(pathOpts(4422), 3);
    await mp.attachPath(c);
    assert.equal(a.admin.length, 1, 'a\'s ids cached');
    assert.equal(b.admin.length, 1);
    assert.equal(c.admin.length, 1);
    await mp.close();
  });

  it('CNS 03h with a UUID only: NGUID and EUI-64 filled in from Identify Namespace', async () => {
    const EUI = Buffer.from('a1a2a3a4a5a6a7a8', 'hex');
    const U = Buffer.from('11111111222233334444555555555555', 'hex');
    const a = new FakePath(pathOpts(4420), 1, { namespaces: [nsInfo(1, { eui64: EUI })], ids: new Map([[1, { uuid: U }]]) });
    const b = new FakePath(pathOpts(4421), 2, { namespaces: [nsInfo(1, { eui64: EUI })], ids: new Map([[1, { uuid: U }]]) });
    const mp = MultipathController.fromPath(a, { clock: new FakeClock() });
    await mp.attachPath(b);
    assert.deepEqual(mp.topology().namespaces[0]!.ids, { nguid: NGUID.toString('hex'), eui64: EUI.toString('hex'), uuid: '11111111-2222-3333-4444-555555555555' });
    await mp.close();
  });

  it('compared with the path that has the namespace; namespaces new to the subsystem are not read', async () => {
    const N2 = Buffer.from('22222222222222222222222222222222', 'hex');
    const a = new FakePath(pathOpts(4420), 1);
    const b = new FakePath(pathOpts(4421), 2, { namespaces: [nsInfo(1), nsInfo(2, { nguid: N2 })] });
    const c = new FakePath(pathOpts(4422), 3, { namespaces: [nsInfo(2, { nguid: N2 }), nsInfo(7)] });
    const mp = MultipathController.fromPath(a, { clock: new FakeClock() });
    await mp.attachPath(b);
    await mp.attachPath(c);
    assert.equal(mp.paths.length, 3);
    assert.deepEqual(c.admin.map((s) => s.readUInt32LE(4)), [2], 'NSID 7 is new: not read');
    assert.ok(mp.namespace(7) !== undefined);
    await mp.close();
  });

  it('a namespace unusable on the subsystem\'s paths is still compared; an unusable one is not size-checked', async () => {
    const N3 = Buffer.from('33333333333333333333333333333333', 'hex');
    const a = new FakePath(pathOpts(4420), 1, { namespaces: [nsInfo(1), nsInfo(2, { nsze: 0n })] });
    const mp = MultipathController.fromPath(a, { clock: new FakeClock() });
    assert.equal(mp.namespace(2), undefined);
    const c = new FakePath(pathOpts(4422), 3, { namespaces: [nsInfo(1), nsInfo(2, { nguid: N3 })] });
    const e = await rejectsCode(mp.attachPath(c), ErrorCode.MULTIPATH_NS_MISMATCH);
    assert.equal(e.message, `namespace 2 on path 127.0.0.1:4422 has other identifiers (NGUID ${N3.toString('hex')}) than on path 127.0.0.1:4420 (NGUID ${NGUID.toString('hex')}): not the same namespace, not merged`);
    // Same ids, usable here: merged, and the namespace now exists.
    const d = new FakePath(pathOpts(4423), 4, { namespaces: [nsInfo(1, { nsze: 0n, lbads: 12 }), nsInfo(2)] });
    await mp.attachPath(d);
    assert.ok(mp.namespace(2) !== undefined);
    assert.equal(mp.namespace(1)!.blockSize, 512);
    // A usable one with another block size is refused.
    const f = new FakePath(pathOpts(4424), 5, { namespaces: [nsInfo(1, { lbads: 12 })] });
    const e2 = await rejectsCode(mp.attachPath(f), ErrorCode.MULTIPATH_NS_MISMATCH);
    assert.equal(e2.message, 'namespace 1 on path 127.0.0.1:4424 has 4096-byte blocks, the subsystem\'s has 512');
    await mp.close();
  });
});

describe('multipath: the primary path and the aggregate state', () => {
  it('facts come from the first live path, else the first path', async () => {
    const a = new FakePath(pathOpts(4420), 1);
    const b = new FakePath(pathOpts(4421), 2);
    Object.assign(b, { ioQueueCount: 4, maxTransfer: 65536, version: 0x10400, oncs: 0x04, volatileWriteCache: false, namespacesOverLimit: 3, authentication: { protocol: 'dh-hmac-chap' } });
    const mp = MultipathController.fromPath(a, { clock: new FakeClock() });
    await mp.attachPath(b);
    a.setState('connecting');
    assert.equal(mp.options, b.options);
    assert.equal(mp.cntlid, 2);
    assert.equal(mp.identify, b.identify);
    assert.equal(mp.identifyRaw, b.identifyRaw);
    assert.deepEqual([mp.ioQueueCount, mp.maxTransfer, mp.version, mp.oncs, mp.volatileWriteCache, mp.namespacesOverLimit], [4, 65536, 0x10400, 0x04, false, 3]);
    assert.equal(mp.authentication, b.authentication);
    assert.deepEqual(mp.stats(), { cntlid: 2 });
    assert.equal(mp.describeState().attempts, 20);
    b.setState('connecting');
    assert.equal(mp.cntlid, 1, 'none live: the first path');
    assert.equal(mp.state, 'connecting');
    void mp.close();
  });

  it('aggregate state: live, connecting, deleting, dead; a state event only when it changes', async () => {
    const { mp, a, b } = await two();
    const states: unknown[] = [];
    mp.on('state', (s) => states.push(s));
    let deads = 0;
    mp.on('dead', () => deads++);
    a.setState('connecting');
    assert.deepEqual(states, []);
    b.setState('connecting');
    assert.deepEqual(states, ['connecting']);
    assert.equal(deads, 0);
    b.setState('deleting');
    assert.equal(mp.state, 'connecting');
    a.setState('dead');
    assert.equal(mp.state, 'deleting');
    assert.deepEqual(states, ['connecting', 'deleting']);
    assert.equal(deads, 0);
    void mp.close();
  });

  it('close makes the state dead even if a path still says live; no dead event, close with undefined', async () => {
    const { mp, a, b } = await two();
    a.close = () => Promise.resolve();
    b.close = () => Promise.resolve();
    const events: Array<[string, unknown]> = [];
    for (const ev of ['dead', 'close']) mp.on(ev, (x) => events.push([ev, x]));
    await mp.close();
    assert.equal(mp.state, 'dead');
    assert.deepEqual(events, [['close', undefined]]);
  });

  it('lastError: the primary path\'s, else any path\'s', async () => {
    const { mp, b } = await two();
    b.lastError = new NvmfNbdError(ErrorCode.CONNECTION_CLOSED, 'b lost once');
    assert.equal(mp.lastError, b.lastError);
    assert.deepEqual(mp.describeState().lastError, { code: ErrorCode.CONNECTION_CLOSED, message: 'b lost once' });
    await mp.close();
  });
});

describe('multipath: path choice', () => {
  it('a namespace only one path has goes to that path', async () => {
    const a = new FakePath(pathOpts(4420), 1);
    const b = new FakePath(pathOpts(4421), 2, { namespaces: [nsInfo(1), nsInfo(2, { nguid: Buffer.alloc(16, 2) })] });
    const mp = MultipathController.fromPath(a, { clock: new FakeClock() });
    await mp.attachPath(b);
    const r = track(mp.namespace(2)!.read(0, 512));
    await tick();
    assert.equal(a.running.length, 0);
    assert.equal(b.running.length, 1);
    b.complete();
    await r.p;
    // Every path deleting: the request goes to a path that has the namespace (and gets its error).
    a.setState('deleting');
    b.setState('deleting');
    const r2 = track(mp.namespace(2)!.read(0, 512));
    await tick();
    await tick();
    assert.equal((r2.error as NvmfNbdError).message, 'dead 4421');
    void mp.close();
  });

  it('every path deleting or dead: the request gets the path\'s own error (not NO_USABLE_PATH)', async () => {
    const { mp, a, b } = await two();
    a.setState('deleting');
    b.setState('deleting');
    const r = track(mp.namespace(1)!.read(0, 512));
    await tick();
    await tick();
    assert.equal((r.error as NvmfNbdError).code, ErrorCode.CONTROLLER_LOST);
    assert.equal((r.error as NvmfNbdError).message, 'dead 4420');
    void mp.close();
  });

  it('no live path: the first reconnecting path (even one that gave up holding) before a deleting one', async () => {
    const { mp, a, b } = await two();
    a.setState('deleting');
    b.holdsOverride = false;
    b.setState('connecting');
    const r = track(mp.namespace(1)!.read(0, 512));
    await tick();
    assert.equal(b.held.length, 1);
    void mp.close();
    void r;
  });

  it('the only live path in persistent loss: NO_USABLE_PATH (EIO) at once, nothing sent; a reconnecting path takes it instead', async () => {
    const a = new FakePath(pathOpts(4420), 1);
    a.setAna([[1, AnaState.PERSISTENT_LOSS, [1]]], false);
    a.holdsOverride = true;
    const mp = MultipathController.fromPath(a, { clock: new FakeClock() });
    const e = await rejectsCode(mp.namespace(1)!.read(0, 512), ErrorCode.NO_USABLE_PATH);
    assert.equal(e.errno, NbdErrno.EIO);
    assert.equal(e.message, `namespace 1 of ${NQN}: no path can serve it (every path in persistent loss or gone)`);
    assert.equal(a.running.length, 0);
    const b = new FakePath(pathOpts(4421), 2);
    await mp.attachPath(b);
    b.fail();
    const r = track(mp.namespace(1)!.read(0, 512));
    await tick();
    assert.equal(b.held.length, 1, 'held by the reconnecting path');
    void mp.close();
    void r;
  });

  it('live but inaccessible with another path reconnecting: the request waits; topology shows no current path', async () => {
    const { mp, a, b } = await two();
    a.setAna([[1, AnaState.INACCESSIBLE, [1]]]);
    b.fail();
    const r = track(mp.namespace(1)!.read(0, 512));
    await tick();
    assert.equal(b.held.length + a.running.length, 0, 'waits here for ANA');
    assert.deepEqual(mp.topology().namespaces[0]!.paths.map((p) => [p.anaState, p.usable, p.current]), [['inaccessible', false, false], ['optimized', false, false]]);
    a.setAna([[1, AnaState.OPTIMIZED, [1]]]);
    assert.equal(a.running.length, 1);
    a.complete();
    await r.p;
    await mp.close();
  });

  it('queue-depth with equal depths takes the first path', async () => {
    const { mp, a, b } = await two();
    mp.iopolicy = 'queue-depth';
    const r = track(mp.namespace(1)!.read(0, 512));
    await tick();
    assert.deepEqual([a.running.length, b.running.length], [1, 0]);
    a.complete();
    await r.p;
    await mp.close();
  });

  it('a read lost in flight after its namespace was retired fails with the retire error, not sent again', async () => {
    const { mp, a, b } = await two();
    const ns = mp.namespace(1)!;
    const r = track(ns.read(0, 512));
    await tick();
    ns.retire('removed');
    a.fail();
    await tick();
    assert.equal(b.running.length, 0);
    assert.equal((r.error as NvmfNbdError).code, ErrorCode.NAMESPACE_NOT_FOUND);
    await mp.close();
  });

  it('a request while close is under way: CONTROLLER_DELETED, ESHUTDOWN', async () => {
    const { mp, a } = await two();
    a.close = () => new Promise(() => undefined);
    void mp.close();
    const e = await rejectsCode(mp.namespace(1)!.read(0, 512), ErrorCode.CONTROLLER_DELETED);
    assert.equal(e.errno, NbdErrno.ESHUTDOWN);
    assert.equal(e.message, 'subsystem is being closed');
  });
});

describe('multipath: namespace changes of a path', () => {
  const N3 = Buffer.from('33333333333333333333333333333333', 'hex');
  const N4 = Buffer.from('44444444444444444444444444444444', 'hex');
  const ch = (o: Partial<{ added: number[]; removed: number[]; resized: number[] }>): { added: number[]; removed: number[]; resized: number[] } => ({ added: [], removed: [], resized: [], ...o });

  it('one path: the change is forwarded as reported (unusable namespaces too); the map is the path\'s own', () => {
    const a = new FakePath(pathOpts(4420), 1);
    const mp = MultipathController.fromPath(a, { clock: new FakeClock() });
    assert.equal(mp.namespaces, a.namespaces);
    const events: unknown[] = [];
    mp.on('namespaces', (e) => events.push(e));
    a.namespaces.set(9, nsInfo(9, { nsze: 0n }));
    const c = ch({ added: [9] });
    a.emit('namespaces', c);
    assert.equal(events[0], c);
    assert.equal(mp.namespace(9), undefined);
  });

  it('removed on one path: kept while another has it; retired (NAMESPACE_NOT_FOUND) when the last one drops it', async () => {
    const { mp, a, b } = await two();
    const ns = mp.namespace(1)!;
    const events: unknown[] = [];
    mp.on('namespaces', (e) => events.push(e));
    a.namespaces.delete(1);
    a.emit('namespaces', ch({ removed: [1] }));
    assert.deepEqual(events, []);
    assert.equal(mp.namespace(1), ns);
    assert.equal(ns.retired, false);
    b.namespaces.delete(1);
    b.emit('namespaces', ch({ removed: [1] }));
    assert.deepEqual(events, [ch({ removed: [1] })]);
    assert.equal(mp.namespace(1), undefined);
    assert.equal(ns.retiredReason?.code, ErrorCode.NAMESPACE_NOT_FOUND);
    // A removal of a namespace that has no object: nothing to report.
    b.emit('namespaces', ch({ removed: [77] }));
    assert.equal(events.length, 1);
    await mp.close();
  });

  it('added and removed together, added and resized together: reported', async () => {
    const b = new FakePath(pathOpts(4421), 2, { namespaces: [nsInfo(1), nsInfo(5, { nguid: N3 })] });
    const { mp } = await two(new FakeClock(), { b });
    const events: unknown[] = [];
    mp.on('namespaces', (e) => events.push(e));
    b.namespaces.delete(5);
    b.namespaces.set(6, nsInfo(6, { nguid: N4 }));
    b.emit('namespaces', ch({ added: [6], removed: [5] }));
    b.namespaces.set(7, nsInfo(7, { nguid: N3 }));
    b.emit('namespaces', ch({ added: [7], resized: [1] }));
    assert.deepEqual(events, [ch({ added: [6], removed: [5] }), ch({ added: [7], resized: [1] })]);
    await mp.close();
  });

  it('an NSID the path does not have, an unusable one, or one already served: no new object, no event', async () => {
    const { mp, b } = await two();
    const ns = mp.namespace(1)!;
    const events: unknown[] = [];
    mp.on('namespaces', (e) => events.push(e));
    b.emit('namespaces', ch({ added: [42] }));
    b.namespaces.set(8, nsInfo(8, { nsze: 0n }));
    b.emit('namespaces', ch({ added: [8, 1] }));
    assert.deepEqual(events, []);
    assert.equal(mp.namespace(8), undefined);
    assert.equal(mp.namespace(1), ns);
    await mp.close();
  });

  it('resized: the same block size keeps the object; another block size retires it (reformatted) and makes a new one; unusable retires it (removed)', async () => {
    const { mp, a, b } = await two();
    const events: unknown[] = [];
    mp.on('namespaces', (e) => events.push(e));
    const ns = mp.namespace(1)!;
    b.namespaces.set(1, nsInfo(1, { nsze: 16384n }));
    b.emit('namespaces', ch({ resized: [1] }));
    assert.equal(mp.namespace(1), ns);
    assert.equal(ns.retired, false);
    a.namespaces.set(1, nsInfo(1, { lbads: 12 }));
    a.emit('namespaces', ch({ resized: [1] }));
    assert.equal(ns.retiredReason?.code, ErrorCode.NAMESPACE_UNSUPPORTED);
    const ns2 = mp.namespace(1)!;
    assert.equal(ns2.blockSize, 4096);
    b.namespaces.set(1, nsInfo(1, { nsze: 0n }));
    b.emit('namespaces', ch({ resized: [1] }));
    assert.equal(ns2.retiredReason?.code, ErrorCode.NAMESPACE_NOT_FOUND);
    assert.equal(mp.namespace(1), undefined);
    assert.deepEqual(events, [ch({ resized: [1] }), ch({ resized: [1] }), ch({ resized: [1] })]);
    await mp.close();
  });

  it('a namespace reported with other identifiers than on another path: a warning, not used on that path (either path)', async () => {
    for (const first of [true, false]) {
      const a = new FakePath(pathOpts(4420), 1);
      const b = new FakePath(pathOpts(4421), 2);
      const mp = MultipathController.fromPath(a, { clock: new FakeClock() });
      await mp.attachPath(b);
      const [keep, odd] = first ? [b, a] : [a, b];
      keep.namespaces.set(3, nsInfo(3, { nguid: N3 }));
      keep.emit('namespaces', ch({ added: [3] }));
      const warnings: NvmfNbdError[] = [];
      mp.on('warning', (e: NvmfNbdError) => warnings.push(e));
      odd.namespaces.set(3, nsInfo(3, { nguid: N4 }));
      odd.emit('namespaces', ch({ added: [3] }));
      assert.equal(warnings.length, 1);
      assert.equal(warnings[0]!.code, ErrorCode.MULTIPATH_NS_MISMATCH);
      assert.equal(warnings[0]!.message, `namespace 3 on path ${odd === a ? '127.0.0.1:4420' : '127.0.0.1:4421'} has other identifiers than on path ${keep === a ? '127.0.0.1:4420' : '127.0.0.1:4421'}: not used on ${odd === a ? '127.0.0.1:4420' : '127.0.0.1:4421'}`);
      if (odd === b) assert.equal(mp.namespaces.get(3), keep.namespaces.get(3));
      const r = track(mp.namespace(3)!.read(0, 512));
      await tick();
      assert.deepEqual([odd.running.length, keep.running.length], [0, 1]);
      keep.complete();
      await r.p;
      // Reported again with the same identifiers: used again.
      odd.namespaces.set(3, nsInfo(3, { nguid: N3 }));
      odd.emit('namespaces', ch({ resized: [3] }));
      keep.setState('connecting');
      const r2 = track(mp.namespace(3)!.read(0, 512));
      await tick();
      assert.equal(odd.running.length, 1);
      odd.complete();
      await r2.p;
      void mp.close();
    }
  });

  it('the union of namespaces: the primary path\'s info first, a mismatched path\'s never', async () => {
    const a = new FakePath(pathOpts(4420), 1);
    const b = new FakePath(pathOpts(4421), 2);
    const c = new FakePath(pathOpts(4422), 3);
    const mp = MultipathController.fromPath(a, { clock: new FakeClock() });
    await mp.attachPath(b);
    await mp.attachPath(c);
    assert.equal(mp.namespaces.get(1), a.namespaces.get(1));
    c.namespaces.set(3, nsInfo(3, { nguid: N3 }));
    c.emit('namespaces', ch({ added: [3] }));
    b.namespaces.set(3, nsInfo(3, { nguid: N4 }));
    b.emit('namespaces', ch({ added: [3] }));
    assert.equal(mp.namespaces.get(3), c.namespaces.get(3));
    void mp.close();
  });

  it('the union never takes the primary path\'s info for an NSID it is mismatched for', async () => {
    const a = new FakePath(pathOpts(4420), 1);
    const c = new FakePath(pathOpts(4422), 3);
    const mp = MultipathController.fromPath(a, { clock: new FakeClock() });
    await mp.attachPath(c);
    c.namespaces.set(3, nsInfo(3, { nguid: N3 }));
    c.emit('namespaces', ch({ added: [3] }));
    a.namespaces.set(3, nsInfo(3, { nguid: N4 }));
    a.emit('namespaces', ch({ added: [3] })); // a (the primary) mismatched for 3
    assert.equal(mp.namespaces.get(3), c.namespaces.get(3));
    assert.equal(mp.namespaces.get(1), a.namespaces.get(1), 'the primary\'s info still first where it matches');
    c.namespaces.delete(3);
    c.emit('namespaces', ch({ removed: [3] })); // only the mismatched copy left: not listed
    assert.equal(mp.namespaces.has(3), false);
    void mp.close();
  });

  it('one path left that is mismatched for an NSID: that NSID is not listed', async () => {
    const { mp, a, b } = await two();
    b.namespaces.set(3, nsInfo(3, { nguid: N3 }));
    b.emit('namespaces', ch({ added: [3] }));
    a.namespaces.set(3, nsInfo(3, { nguid: N4 }));
    a.emit('namespaces', ch({ added: [3] })); // a mismatched for 3
    await mp.removePath('127.0.0.1:4421');
    assert.equal(mp.topology().paths.length, 1);
    assert.equal(mp.namespaces.has(3), false);
    assert.equal(mp.namespaces.get(1), a.namespaces.get(1));
    void mp.close();
  });

  it('a change drops the cached identifiers of the path: read again when the next path is checked', async () => {
    const { mp, a } = await two();
    assert.equal(a.admin.length, 1);
    a.emit('namespaces', ch({ resized: [1] }));
    await mp.attachPath(new FakePath(pathOpts(4422), 3));
    assert.equal(a.admin.length, 2);
    await mp.close();
  });

  it('a subsystem namespace no other path serves is still size-checked for a new path', async () => {
    const { mp, a, b } = await two();
    b.namespaces.set(3, nsInfo(3, { nguid: N4 }));
    b.emit('namespaces', ch({ added: [3] }));
    a.namespaces.set(3, nsInfo(3, { nguid: N3 }));
    a.emit('namespaces', ch({ added: [3] })); // a mismatched for 3
    b.namespaces.delete(3);
    b.emit('namespaces', ch({ removed: [3] })); // a still has it (mismatched): the object stays
    assert.ok(mp.namespace(3) !== undefined);
    const c = new FakePath(pathOpts(4422), 3, { namespaces: [nsInfo(1), nsInfo(3, { nguid: N4, lbads: 12 })] });
    await rejectsCode(mp.attachPath(c), ErrorCode.MULTIPATH_NS_MISMATCH);
    void mp.close();
  });
});

describe('multipath: more path choice', () => {
  it('an unknown namespace goes to the first path that is not being removed', async () => {
    const { mp, a, b } = await two();
    a.close = () => new Promise(() => undefined);
    void mp.removePath('127.0.0.1:4420');
    const d = track(mp.deallocate(99, [{ slba: 0n, nlb: 1 }]));
    await tick();
    assert.deepEqual([a.ops.length, b.ops.length], [0, 1]);
    b.ops[0]!.resolve();
    await d.p;
  });

  it('topology current: the holding path when none is live; numa ignores queue depth; round-robin the next one', async () => {
    const { mp, a, b } = await two();
    const ns = mp.namespace(1)!;
    const r = track(ns.read(0, 512));
    await tick();
    assert.deepEqual(mp.topology().namespaces[0]!.paths.map((p) => p.current), [true, false], 'numa: a, though b has fewer in flight');
    a.complete();
    await r.p;
    mp.iopolicy = 'round-robin';
    const r2 = track(ns.read(0, 512));
    await tick();
    assert.equal(a.running.length, 1);
    assert.deepEqual(mp.topology().namespaces[0]!.paths.map((p) => p.current), [false, true], 'round-robin: b next');
    mp.iopolicy = 'numa';
    assert.deepEqual(mp.topology().namespaces[0]!.paths.map((p) => p.current), [true, false]);
    mp.iopolicy = 'queue-depth';
    a.complete();
    await r2.p;
    assert.deepEqual(mp.topology().namespaces[0]!.paths.map((p) => p.current), [true, false], 'equal depths: the first');
    a.fail();
    b.fail();
    assert.deepEqual(mp.topology().namespaces[0]!.paths.map((p) => p.current), [true, false], 'none live: the first holding path');
    void mp.close();
  });

  it('a read overlapping a held write is not blocked', async () => {
    const { mp, a, b } = await two();
    const ns = mp.namespace(1)!;
    const w = track(ns.write(0, Buffer.alloc(512), false));
    await tick();
    a.fail();
    const r = track(ns.read(0, 512));
    await tick();
    assert.equal(b.running.length, 1);
    b.complete();
    await r.p;
    assert.equal(w.done, false);
    void mp.close();
  });
});

describe('multipath: more path management', () => {
  it('attachPath refuses the address of any known path, not only of the first', async () => {
    const { mp } = await two();
    const dup = new FakePath(pathOpts(4421), 9);
    await rejectsCode(mp.attachPath(dup), ErrorCode.ALREADY_CONNECTED);
    assert.equal(mp.paths.length, 2);
    await mp.close();
  });

  it('a path being removed that comes back with a new association releases its held writes at once', async () => {
    const { mp, a, b } = await two();
    const w = track(mp.namespace(1)!.write(0, Buffer.alloc(512), false));
    await tick();
    a.close = () => new Promise(() => undefined);
    void mp.removePath('127.0.0.1:4420');
    a.fail();
    assert.equal(mp.heldWrites(), 1);
    a.revive(9);
    await tick();
    assert.equal(b.running.length, 1, 'the association it was on (cntlid 1) is proven gone');
    b.complete();
    await w.p;
    void mp.close();
  });

  it('the real clock: a held write waits KATO + CQT of wall time (mocked), not less', async (t) => {
    t.mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 1_000_000 });
    const a = new FakePath(pathOpts(4420), 1);
    const b = new FakePath(pathOpts(4421), 2);
    const mp = MultipathController.fromPath(a);
    await mp.attachPath(b);
    const w = track(mp.namespace(1)!.write(0, Buffer.alloc(512), false));
    await tick();
    a.fail();
    t.mock.timers.tick(HOLD - 1);
    await tick();
    assert.equal(b.running.length, 0);
    t.mock.timers.tick(1);
    await tick();
    assert.equal(b.running.length, 1);
    b.complete();
    await w.p;
    await mp.close();
  });
});
