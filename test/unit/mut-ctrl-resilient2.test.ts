/**
 * Mutation-audit pins (issue 15) for the reconnect state machine (src/controller/resilient.ts)
 * against the scripted fake target (test/helpers/fake-target.ts), whose reconnects a test
 * refuses (socket closed: retried) or rejects with Do Not Retry (fatal) at will: describeState
 * and the state events, holdsIo, heldOps (bytes of reads, writes, admin data; 0 for
 * deallocate), the hold limit's boundary and message, refreshAnaLog when not live, a DNR
 * Connect refusal on reconnect (dead at once, no further attempt), I/O in DELETING (ESHUTDOWN)
 * and after DEAD (the dead error, EIO), close() once, the 'dead' / 'close' events, the
 * attempt counter, fast_io_fail_tmo reset by a reconnect, the quiesce time computed from KATO,
 * grace and CQT (mocked clock), KATO 0 allowed for a discovery controller, the namespace
 * objects (kept, read-only); pass-back mode (takeHeldRecords, pathLost records, PATH_LOST
 * closures, handback on fast_io_fail_tmo and on giving up); recovery details (diffNamespaces
 * order, quiesceTimeMs, no namespaces event and no late timer after a plain reconnect, the
 * 10 s default reconnect_delay, the ctrl_loss_tmo message, a throwing listener as a warning,
 * warning/ana forwarding, a new association lost or closed during the quiesce wait, close()
 * during a reconnect attempt); live operations (facts passed through, NVMe errors are answers,
 * record owner links restored, retired objects' errors on both paths, admin re-drive by opcode,
 * held admin bytes). Serves `npm run mutate -- src/controller/resilient.ts
 * --tests=mut-ctrl-resilient,mut-ctrl-resilient2,resilient-admin-redrive,resilient-close-connecting,resilient-controller,resilient-keepalive,resilient-session,resilient-stale-write`.
 */
import { test } from 'node:test';
import type { TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { CtrlState, RESILIENCE_DEFAULTS, ResilientController, diffNamespaces, quiesceTimeMs } from '../../src/controller/resilient';
import type { ResilienceOptions } from '../../src/controller/resilient';
import type { Controller, ControllerOptions, NamespaceInfo } from '../../src/controller/controller';
import { ErrorCode, NvmfNbdError } from '../../src/errors';
import { DISCOVERY_NQN, sqeGetFeatures, sqeGetLogPage, sqeIdentify, sqeKeepAlive, sqeSetFeatures } from '../../src/wire';
import { FakeTarget, serveController, type ControllerModel } from '../helpers/fake-target';
import { rejectsCode } from '../helpers/assert-code';
import { IoRequest, type IoOwner } from '../../src/controller/io-request';
import { BlockOpCode } from '../../src/block/types';
import { tickUntil, track, turns, until } from '../helpers/clock';

const NQN = 'nqn.2014-08.org.nvmf-nbd:mut-ctrl-resilient2';
const HOSTNQN = 'nqn.2014-08.org.nvmexpress:uuid:0f6c3d1e-1a2b-4c3d-9e8f-00000000e201';
const HOSTID = '0f6c3d1e-1a2b-4c3d-9e8f-00000000e201';

interface Rig {
  rc: ResilientController;
  target: FakeTarget;
  m: ControllerModel;
  ctl: { refuse: boolean; connects: number };
  /** Drop every connection of the target (the association is lost). */
  cut(): void;
  states: string[];
  /** Commands the target received (opcode, queue, cdw10). */
  seen(): NonNullable<ControllerModel['seen']>;
  done(): Promise<void>;
}

async function rig(o: Partial<ControllerOptions & ResilienceOptions> = {}, m: ControllerModel = { namespaces: new Map([[1, { data: Buffer.alloc(256 << 10), lbaSize: 512 }]]) }): Promise<Rig> {
  const ctl = { refuse: false, connects: 0 };
  m.seen ??= [];
  const target = await FakeTarget.start((c) => {
    ctl.connects++;
    if (ctl.refuse) {
      c.socket.destroy();
      return undefined;
    }
    return serveController(c, m);
  });
  const rc = await ResilientController.connect({
    traddr: '127.0.0.1', trsvcid: target.port, subnqn: NQN, hostnqn: HOSTNQN, hostid: HOSTID, nrIoQueues: 1, queueSize: 16,
    kato: 10_000, connectTimeoutMs: 3000, reconnectDelayMs: 10, quiesceMs: 0, ctrlLossTmoMs: 30_000, ...o,
  });
  const states: string[] = [];
  rc.on('state', (s: string) => states.push(s));
  return {
    rc, target, m, ctl, states, seen: () => m.seen ?? [],
    cut: () => { for (const c of target.conns) c.socket.destroy(); },
    done: async () => { await rc.close(); await target.close(); },
  };
}

function settle<T>(p: Promise<T>): Promise<{ ok: boolean; value?: T; err?: NvmfNbdError }> {
  return p.then((value) => ({ ok: true, value }), (err: NvmfNbdError) => ({ ok: false, err }));
}

test('defaults of the recovery options', () => {
  assert.deepEqual(RESILIENCE_DEFAULTS, { reconnectDelayMs: 10_000, ctrlLossTmoMs: 600_000, fastIoFailTmoMs: -1, holdLimitBytes: 256 << 20 });
});

test('describeState, holdsIo and heldOps through an outage: bytes of reads, writes and admin data held, re-driven, counters after', { timeout: 20_000 }, async () => {
  const r = await rig();
  try {
    const t0 = r.rc.describeState();
    assert.deepEqual(Object.keys(t0).sort(), ['attempts', 'reconnects', 'since', 'state']);
    assert.equal(t0.state, 'live');
    assert.equal(t0.reconnects, 0);
    assert.equal(t0.attempts, 0);
    assert.equal(new Date(t0.since).toISOString(), t0.since);
    assert.equal(r.rc.holdsIo, false);
    assert.deepEqual(r.rc.heldOps, { count: 0, bytes: 0 });
    assert.equal(r.rc.lastError, undefined);
    r.ctl.refuse = true;
    r.cut();
    await until(() => r.rc.state === CtrlState.CONNECTING, 'connecting');
    assert.deepEqual(r.states, ['connecting']);
    assert.equal(r.rc.holdsIo, true);
    const d = r.rc.describeState();
    assert.equal(d.state, 'connecting');
    assert.ok(d.since >= t0.since);
    assert.equal(d.lastError?.code, ErrorCode.CONTROLLER_LOST);
    assert.equal(d.lastError?.message, (r.rc as { lastError?: NvmfNbdError }).lastError?.message);
    await rejectsCode(r.rc.refreshAnaLog(), ErrorCode.CONTROLLER_LOST);
    const w = settle(r.rc.write(1, 0n, Buffer.alloc(1024, 0xa1)));
    assert.deepEqual(r.rc.heldOps, { count: 1, bytes: 1024 });
    const rd = settle(r.rc.read(1, 0n, 4));
    assert.deepEqual(r.rc.heldOps, { count: 2, bytes: 1024 + 2048 });
    const id = settle(r.rc.adminCommand(sqeIdentify(1), { dataInLength: 4096 }));
    assert.deepEqual(r.rc.heldOps, { count: 3, bytes: 1024 + 2048 + 4096 });
    const dealloc = settle(r.rc.deallocate(1, [{ slba: 100n, nlb: 1 }]));
    const fl = settle(r.rc.flush(1));
    assert.deepEqual(r.rc.heldOps, { count: 5, bytes: 1024 + 2048 + 4096 });
    await until(() => r.rc.attempts >= 2, 'two refused attempts');
    assert.equal(r.rc.describeState().attempts, r.rc.attempts);
    r.ctl.refuse = false;
    await until(() => r.rc.state === CtrlState.LIVE, 'live again');
    assert.equal((await w).ok, true);
    const rr = await rd;
    assert.deepEqual(rr.value, Buffer.concat([Buffer.alloc(1024, 0xa1), Buffer.alloc(1024)]), 'the read ran after the write (FIFO)');
    assert.equal((await id).ok, true);
    assert.equal((await dealloc).ok, true);
    assert.equal((await fl).ok, true);
    assert.deepEqual(r.states, ['connecting', 'live']);
    assert.deepEqual(r.rc.heldOps, { count: 0, bytes: 0 });
    assert.equal(r.rc.holdsIo, false);
    assert.equal(r.rc.reconnects, 1);
    assert.equal(r.rc.attempts, 0);
    const after = r.rc.describeState();
    assert.equal(after.reconnects, 1);
    assert.equal(after.attempts, 0);
    assert.equal(after.state, 'live');
  } finally {
    await r.done();
  }
});

test('hold limit: reaching it exactly is still held, one byte past fails with HOLD_QUEUE_FULL (EIO) naming both numbers', { timeout: 20_000 }, async () => {
  const r = await rig({ holdLimitBytes: 1536 });
  try {
    r.ctl.refuse = true;
    r.cut();
    await until(() => r.rc.state === CtrlState.CONNECTING, 'connecting');
    const a = settle(r.rc.write(1, 0n, Buffer.alloc(1024, 1)));
    const b = settle(r.rc.write(1, 2n, Buffer.alloc(512, 2)));
    assert.deepEqual(r.rc.heldOps, { count: 2, bytes: 1536 });
    const zero = settle(r.rc.adminCommand(sqeKeepAlive()));
    assert.equal(r.rc.heldOps.count, 3, 'a 0-byte operation at the limit is held');
    const c = await settle(r.rc.write(1, 4n, Buffer.alloc(512, 3)));
    assert.equal(c.err?.code, ErrorCode.HOLD_QUEUE_FULL);
    assert.equal(c.err?.errno, 5);
    assert.equal(c.err?.message, 'reconnecting: 1536 bytes of I/O already held (limit 1536)');
    assert.ok(c.err?.cause instanceof NvmfNbdError, 'the cause is the loss');
    r.ctl.refuse = false;
    await until(() => r.rc.state === CtrlState.LIVE, 'live again');
    assert.equal((await a).ok, true);
    assert.equal((await b).ok, true);
    assert.equal((await zero).ok, true);
  } finally {
    await r.done();
  }
});

test('a reconnect refused with Do Not Retry is fatal at once: DEAD, no further attempt, held and new I/O fail with its code (EIO)', { timeout: 20_000 }, async () => {
  const r = await rig({ reconnectDelayMs: 10 });
  const dead = track(new Promise<NvmfNbdError>((resolve) => r.rc.once('dead', resolve)));
  const closes: Array<NvmfNbdError | undefined> = [];
  r.rc.on('close', (e?: NvmfNbdError) => closes.push(e));
  try {
    r.m.subnqn = 'nqn.2014-08.org.nvmf-nbd:someone-else';
    r.ctl.refuse = true;
    r.cut();
    await until(() => r.rc.state === CtrlState.CONNECTING, 'connecting');
    const held = settle(r.rc.write(1, 0n, Buffer.alloc(512, 1)));
    r.ctl.refuse = false;
    await until(() => dead.done, 'dead');
    const err = await dead.promise;
    assert.equal(err.code, ErrorCode.CONNECT_FAILED);
    assert.equal(err.status?.dnr, true);
    assert.equal(r.rc.state, CtrlState.DEAD);
    assert.deepEqual(r.states, ['connecting', 'deleting', 'dead']);
    const h = await held;
    assert.equal(h.err?.code, ErrorCode.CONNECT_FAILED);
    assert.equal(h.err?.errno, 5);
    const n = await settle(r.rc.read(1, 0n, 1));
    assert.equal(n.err?.code, ErrorCode.CONNECT_FAILED);
    assert.equal(n.err?.message, err.message);
    assert.equal(n.err?.errno, 5);
    const a = await settle(r.rc.adminCommand(sqeIdentify(1)));
    assert.equal(a.err?.code, ErrorCode.CONNECT_FAILED);
    assert.deepEqual(closes, [err]);
    assert.equal(r.rc.lastError, err);
    const connects = r.ctl.connects;
    await new Promise((res) => setTimeout(res, 100));
    assert.equal(r.ctl.connects, connects, 'no attempt after the fatal one');
  } finally {
    await r.done();
  }
});

test('close() of a live controller: DELETING (I/O fails ESHUTDOWN), then DEAD (I/O fails "controller deleted", EIO); one close event; close() is idempotent', { timeout: 20_000 }, async () => {
  const r = await rig();
  const closes: Array<NvmfNbdError | undefined> = [];
  r.rc.on('close', (e?: NvmfNbdError) => closes.push(e));
  let during: Promise<{ ok: boolean; err?: NvmfNbdError }> | undefined;
  let duringAdmin: Promise<{ ok: boolean; err?: NvmfNbdError }> | undefined;
  r.rc.on('state', (s: string) => {
    if (s === CtrlState.DELETING) {
      during = settle(r.rc.write(1, 0n, Buffer.alloc(512)));
      duringAdmin = settle(r.rc.adminCommand(sqeIdentify(1)));
    }
  });
  try {
    const p1 = r.rc.close();
    const p2 = r.rc.close();
    assert.equal(p1, p2);
    await p1;
    assert.deepEqual(r.states, ['deleting', 'dead']);
    const d = await during;
    assert.equal(d?.err?.code, ErrorCode.CONTROLLER_DELETED);
    assert.equal(d?.err?.errno, 108);
    assert.equal(d?.err?.message, 'controller is being deleted');
    const da = await duringAdmin;
    assert.equal(da?.err?.code, ErrorCode.CONTROLLER_DELETED);
    assert.equal(da?.err?.errno, 108);
    const after = await settle(r.rc.read(1, 0n, 1));
    assert.equal(after.err?.code, ErrorCode.CONTROLLER_DELETED);
    assert.equal(after.err?.message, 'controller deleted');
    assert.equal(after.err?.errno, 5);
    const afterAdmin = await settle(r.rc.adminCommand(sqeIdentify(1)));
    assert.equal(afterAdmin.err?.message, 'controller deleted');
    assert.deepEqual(closes, [undefined]);
    await r.rc.close();
    assert.deepEqual(closes, [undefined], 'no second close event');
    // The live association was shut down in order (CC.SHN written), not just dropped.
    assert.ok(((r.m.regs?.cc ?? 0) >>> 14 & 3) === 1, `CC ${r.m.regs?.cc?.toString(16)}`);
  } finally {
    await r.done();
  }
});

test('close() while reconnecting fails held I/O with ESHUTDOWN and "closed while reconnecting"', { timeout: 20_000 }, async () => {
  const r = await rig();
  try {
    r.ctl.refuse = true;
    r.cut();
    await until(() => r.rc.state === CtrlState.CONNECTING, 'connecting');
    const held = settle(r.rc.write(1, 0n, Buffer.alloc(512)));
    await r.rc.close();
    const h = await held;
    assert.equal(h.err?.code, ErrorCode.CONTROLLER_DELETED);
    assert.equal(h.err?.errno, 108);
    assert.equal(h.err?.message, 'controller closed while reconnecting');
    assert.deepEqual(r.states, ['connecting', 'deleting', 'dead']);
    assert.deepEqual(r.rc.heldOps, { count: 0, bytes: 0 });
  } finally {
    await r.done();
  }
});

test('a second outage starts counting attempts from 0 and holds again even after fast_io_fail_tmo expired in the first', { timeout: 20_000 }, async (t) => {
  const r = await rig({ fastIoFailTmoMs: 5000, ctrlLossTmoMs: -1, reconnectDelayMs: 50 });
  try {
    t.mock.timers.enable({ apis: ['setTimeout'] });
    r.ctl.refuse = true;
    r.cut();
    await until(() => r.rc.state === CtrlState.CONNECTING, 'connecting');
    await tickUntil(t, () => r.rc.attempts >= 3, 'three refused attempts', 50, 400);
    await tickUntil(t, () => !r.rc.holdsIo, 'fast_io_fail_tmo expired', 50, 400);
    assert.equal(r.rc.state, CtrlState.CONNECTING);
    const fast = await settle(r.rc.write(1, 0n, Buffer.alloc(512)));
    assert.equal(fast.err?.code, ErrorCode.CONTROLLER_LOST);
    assert.equal(fast.err?.message, 'fast_io_fail_tmo expired while reconnecting');
    assert.equal(fast.err?.errno, 5);
    const fastAdmin = await settle(r.rc.adminCommand(sqeIdentify(1)));
    assert.equal(fastAdmin.err?.message, 'fast_io_fail_tmo expired while reconnecting');
    r.ctl.refuse = false;
    await tickUntil(t, () => r.rc.state === CtrlState.LIVE, 'live again', 5, 900);
    assert.equal(r.rc.attempts, 0);
    assert.equal(r.rc.holdsIo, false);
    r.ctl.refuse = true;
    r.cut();
    await until(() => r.rc.state === CtrlState.CONNECTING, 'connecting again');
    assert.equal(r.rc.attempts, 0, 'counted per outage');
    assert.equal(r.rc.holdsIo, true, 'fast-fail is per outage');
    const held = track(settle(r.rc.write(1, 0n, Buffer.alloc(512, 9))));
    await turns(10);
    assert.equal(held.done, false);
    assert.equal(r.rc.heldOps.count, 1);
    r.ctl.refuse = false;
    await tickUntil(t, () => held.done, 'held write re-driven', 5, 900);
    assert.equal(r.rc.state, CtrlState.LIVE);
    assert.equal((await held.promise).ok, true);
  } finally {
    t.mock.timers.reset();
    await r.done();
  }
});

test('quiesce time without the override: 2·KATO + target grace + CQT after the loss, counted on the clock (held write waits until then)', { timeout: 20_000 }, async (t) => {
  const r = await rig({ quiesceMs: undefined, kato: 1000, targetKeepAliveGraceMs: 700, reconnectDelayMs: 10 });
  try {
    t.mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 1_000_000 });
    r.ctl.refuse = true;
    const lostAt = Date.now();
    r.cut();
    await until(() => r.rc.state === CtrlState.CONNECTING, 'connecting');
    const held = track(settle(r.rc.write(1, 0n, Buffer.alloc(512, 7))));
    r.ctl.refuse = false;
    // Reconnect attempts run on small mocked steps; the re-drive must wait for 2·1000 + 700 ms.
    for (let i = 0; i < 2000 && Date.now() - lostAt < 2690; i++) {
      t.mock.timers.tick(10);
      await new Promise<void>((res) => setImmediate(res));
      await new Promise<void>((res) => setImmediate(res));
    }
    await turns(20);
    assert.equal(held.done, false, `not re-driven ${Date.now() - lostAt} ms after the loss`);
    await tickUntil(t, () => held.done, 'held write re-driven after the quiesce time', 10, 2000);
    assert.equal((await held.promise).ok, true);
    assert.ok(Date.now() - lostAt >= 2700, `re-driven at ${Date.now() - lostAt} ms`);
  } finally {
    t.mock.timers.reset();
    await r.done();
  }
});

test('KATO 0 is accepted for a discovery controller (it never re-drives I/O)', { timeout: 20_000 }, async () => {
  const m: ControllerModel = { namespaces: new Map(), discovery: [] };
  const target = await FakeTarget.start((c) => serveController(c, m));
  try {
    const rc = await ResilientController.connect({
      traddr: '127.0.0.1', trsvcid: target.port, subnqn: DISCOVERY_NQN, hostnqn: HOSTNQN, hostid: HOSTID, kato: 0, nrIoQueues: 0, discovery: true,
    });
    assert.equal(rc.state, CtrlState.LIVE);
    await rc.close();
    await rejectsCode(ResilientController.connect({
      traddr: '127.0.0.1', trsvcid: target.port, subnqn: NQN, hostnqn: HOSTNQN, hostid: HOSTID, kato: 0, nrIoQueues: 0,
    }), ErrorCode.INVALID_ARGUMENT);
  } finally {
    await target.close();
  }
});

test('namespace objects: one per usable namespace, the same object across a reconnect, read-only when asked', { timeout: 20_000 }, async () => {
  const r = await rig({ readOnlyNamespaces: true }, { namespaces: new Map([[1, { data: Buffer.alloc(64 << 10), lbaSize: 512 }], [2, { data: Buffer.alloc(64 << 10), lbaSize: 4096 }]]) });
  try {
    const n1 = r.rc.namespace(1);
    assert.ok(n1 !== undefined);
    assert.equal(r.rc.namespace(2)?.blockSize, 4096);
    assert.equal(r.rc.namespace(3), undefined);
    const ro = await rejectsCode(n1.write(0, Buffer.alloc(512), false), ErrorCode.INVALID_ARGUMENT);
    assert.equal(ro.errno, 1, 'EPERM');
    r.cut();
    await until(() => r.rc.reconnects === 1 && r.rc.state === CtrlState.LIVE, 'reconnected');
    assert.equal(r.rc.namespace(1), n1, 'kept across a reconnect without changes');
    assert.deepEqual(await n1.read(0, 512), Buffer.alloc(512));
  } finally {
    await r.done();
  }
});

// ---- pass-back mode (a path of a multipath subsystem) -----------------------------------------

interface Rec { req: IoRequest; done: Promise<NvmfNbdError | undefined>; readonly settled: boolean; owner: IoOwner }

/** A record with a recording owner (what the multipath layer or a namespace would be). */
function rec(op: (typeof BlockOpCode)['READ' | 'WRITE'], slba: bigint, data: Buffer): Rec {
  const req = new IoRequest();
  req.op = op;
  req.nsid = 1;
  req.slba = slba;
  req.nlb = data.length / 512;
  req.data = data;
  let settled = false;
  let resolve!: (e: NvmfNbdError | undefined) => void;
  const done = new Promise<NvmfNbdError | undefined>((r) => { resolve = r; });
  const owner: IoOwner = { onIoDone: (_r, err) => { settled = true; resolve(err); } };
  req.owner = owner;
  return { req, done, owner, get settled() { return settled; } };
}

test('pass-back: takeHeldRecords gives back only the held records, in order, owned by their submitter again; closures stay held', { timeout: 20_000 }, async () => {
  const r = await rig();
  try {
    r.rc.setPassBack(true);
    r.ctl.refuse = true;
    r.cut();
    await until(() => r.rc.state === CtrlState.CONNECTING, 'connecting');
    const a = rec(BlockOpCode.WRITE, 0n, Buffer.alloc(512, 1));
    r.rc.submitIo(a.req);
    const d = settle(r.rc.deallocate(1, [{ slba: 8n, nlb: 1 }]));
    const b = rec(BlockOpCode.READ, 2n, Buffer.alloc(1024));
    r.rc.submitIo(b.req);
    assert.deepEqual(r.rc.heldOps, { count: 3, bytes: 1536 });
    const back = r.rc.takeHeldRecords();
    assert.deepEqual(back, [a.req, b.req]);
    assert.equal(a.req.owner, a.owner);
    assert.equal(b.req.owner, b.owner);
    for (const q of back) {
      assert.equal(q.upper, undefined);
      assert.equal(q.ctrl, undefined);
    }
    assert.deepEqual(r.rc.heldOps, { count: 1, bytes: 0 });
    assert.deepEqual(r.rc.takeHeldRecords(), []);
    await turns(10);
    assert.equal(a.settled || b.settled, false, 'handed back, not completed');
    r.ctl.refuse = false;
    assert.equal((await d).ok, true, 'the deallocate closure ran after the reconnect');
  } finally {
    await r.done();
  }
});

test('pass-back: a record in flight on the lost association comes back with pathLost (not re-sent); a deallocate rejects PATH_LOST; an Identify is re-driven', { timeout: 20_000 }, async () => {
  const r = await rig();
  try {
    r.rc.setPassBack(true);
    r.ctl.refuse = true;
    const w = rec(BlockOpCode.WRITE, 16n, Buffer.alloc(512, 0x5a));
    r.rc.submitIo(w.req);
    const dl = settle(r.rc.deallocate(1, [{ slba: 24n, nlb: 1 }]));
    const id = settle(r.rc.adminCommand(sqeIdentify(1), { dataInLength: 4096 }));
    r.cut();
    const err = await w.done;
    assert.ok(err instanceof NvmfNbdError);
    assert.equal(w.req.pathLost, true);
    assert.equal(w.req.owner, w.owner);
    assert.equal(w.req.ctrl, undefined);
    const de = await dl;
    assert.equal(de.err?.code, ErrorCode.PATH_LOST);
    assert.match(de.err?.message ?? '', /^association lost while the command was outstanding: /);
    assert.ok(de.err?.cause instanceof Error);
    assert.equal(r.rc.heldOps.count, 1, 'only the Identify is held');
    r.ctl.refuse = false;
    assert.equal((await id).ok, true);
    const ns = r.m.namespaces.get(1)?.data as Buffer;
    assert.deepEqual(ns.subarray(16 * 512, 17 * 512), Buffer.alloc(512), 'the lost write was not sent again');
  } finally {
    await r.done();
  }
});

test('without pass-back an in-flight record is re-driven after the reconnect and completes without pathLost', { timeout: 20_000 }, async () => {
  const r = await rig();
  try {
    r.ctl.refuse = true;
    const w = rec(BlockOpCode.WRITE, 32n, Buffer.alloc(512, 0x6b));
    r.rc.submitIo(w.req);
    r.cut();
    await until(() => r.rc.state === CtrlState.CONNECTING, 'connecting');
    await until(() => r.rc.heldOps.count === 1, 'the in-flight write held');
    r.ctl.refuse = false;
    assert.equal(await w.done, undefined);
    assert.equal(w.req.pathLost, false);
    assert.deepEqual((r.m.namespaces.get(1)?.data as Buffer).subarray(32 * 512, 33 * 512), Buffer.alloc(512, 0x6b));
  } finally {
    await r.done();
  }
});

test('pass-back: fast_io_fail_tmo hands held records back (handback event with the error); with no listener they fail with it', { timeout: 20_000 }, async () => {
  for (const listen of [true, false]) {
    const r = await rig({ fastIoFailTmoMs: 100, ctrlLossTmoMs: -1, reconnectDelayMs: 20 });
    try {
      r.rc.setPassBack(true);
      const events: Array<[IoRequest[], NvmfNbdError]> = [];
      if (listen) r.rc.on('handback', (reqs: IoRequest[], e: NvmfNbdError) => events.push([reqs, e]));
      r.ctl.refuse = true;
      r.cut();
      await until(() => r.rc.state === CtrlState.CONNECTING, 'connecting');
      const a = rec(BlockOpCode.WRITE, 0n, Buffer.alloc(512, 1));
      r.rc.submitIo(a.req);
      await until(() => !r.rc.holdsIo, 'fast_io_fail_tmo expired');
      if (listen) {
        assert.equal(events.length, 1);
        assert.deepEqual(events[0]?.[0], [a.req]);
        assert.equal(events[0]?.[1].code, ErrorCode.CONTROLLER_LOST);
        assert.match(events[0]?.[1].message ?? '', /^fast_io_fail_tmo \(100 ms\) expired while reconnecting$/);
        assert.equal(events[0]?.[1].errno, 5);
        await turns(10);
        assert.equal(a.settled, false);
      } else {
        const e = await a.done;
        assert.equal(e?.code, ErrorCode.CONTROLLER_LOST);
        assert.match(e?.message ?? '', /fast_io_fail_tmo \(100 ms\)/);
      }
      assert.deepEqual(r.rc.heldOps, { count: 0, bytes: 0 });
    } finally {
      await r.done();
    }
  }
});

test('pass-back: giving up (ctrl_loss_tmo) hands held records back too, even none (the route choice changes)', { timeout: 20_000 }, async () => {
  const r = await rig({ ctrlLossTmoMs: 100, reconnectDelayMs: 20 });
  try {
    r.rc.setPassBack(true);
    const events: Array<[IoRequest[], NvmfNbdError]> = [];
    r.rc.on('handback', (reqs: IoRequest[], e: NvmfNbdError) => events.push([reqs, e]));
    r.ctl.refuse = true;
    r.cut();
    await until(() => r.rc.state === CtrlState.CONNECTING, 'connecting');
    const a = rec(BlockOpCode.WRITE, 0n, Buffer.alloc(512, 1));
    r.rc.submitIo(a.req);
    await until(() => r.rc.state === CtrlState.DEAD, 'dead');
    assert.equal(events.length, 1);
    assert.deepEqual(events[0]?.[0], [a.req]);
    assert.equal(events[0]?.[1].code, ErrorCode.CONTROLLER_LOST);
    assert.match(events[0]?.[1].message ?? '', /ctrl_loss_tmo \(100 ms\)/);
    await turns(10);
    assert.equal(a.settled, false);
  } finally {
    await r.done();
  }
  const r2 = await rig({ fastIoFailTmoMs: 50, ctrlLossTmoMs: -1, reconnectDelayMs: 20 });
  try {
    r2.rc.setPassBack(true);
    const events: IoRequest[][] = [];
    r2.rc.on('handback', (reqs: IoRequest[]) => events.push(reqs));
    r2.ctl.refuse = true;
    r2.cut();
    await until(() => events.length === 1, 'handback with no records');
    assert.deepEqual(events, [[]]);
  } finally {
    await r2.done();
  }
});

// ---- recovery details -------------------------------------------------------------------------

test('diffNamespaces: each list sorted; resized by size or by block size alone; unchanged ones not reported', () => {
  const info = (nsid: number, nsze: bigint, lbaSize: number): NamespaceInfo => ({ nsid, nsze, lbaSize, usable: true } as unknown as NamespaceInfo);
  const before = new Map([[7, info(7, 10n, 512)], [2, info(2, 10n, 512)], [5, info(5, 10n, 512)], [4, info(4, 8n, 512)], [3, info(3, 8n, 512)], [9, info(9, 1n, 512)], [1, info(1, 1n, 512)]]);
  const after = new Map([[12, info(12, 1n, 512)], [4, info(4, 8n, 4096)], [9, info(9, 2n, 512)], [3, info(3, 8n, 512)], [10, info(10, 1n, 512)], [1, info(1, 9n, 512)]]);
  assert.deepEqual(diffNamespaces(before, after), { added: [10, 12], removed: [2, 5, 7], resized: [1, 4, 9] });
  assert.deepEqual(diffNamespaces(after, after), { added: [], removed: [], resized: [] });
});

test('quiesceTimeMs: 2·KATO + grace (default max(5000, floor(KATO/2))) + CQT', () => {
  assert.equal(quiesceTimeMs(5000, 0), 15_000);
  assert.equal(quiesceTimeMs(12_001, 7), 24_002 + 6000 + 7);
  assert.equal(quiesceTimeMs(20_000, 100), 40_000 + 10_000 + 100);
  assert.equal(quiesceTimeMs(1000, 3, 0), 2003);
});

test('a plain reconnect emits no namespaces event; the recovery timers are cleared by it (no late ctrl_loss_tmo, no late handback)', { timeout: 20_000 }, async (t) => {
  const r = await rig({ ctrlLossTmoMs: 2000, fastIoFailTmoMs: 1000, reconnectDelayMs: 10 });
  try {
    r.rc.setPassBack(true);
    const events: string[] = [];
    r.rc.on('namespaces', () => events.push('namespaces'));
    r.rc.on('handback', () => events.push('handback'));
    t.mock.timers.enable({ apis: ['setTimeout'] });
    r.cut();
    await until(() => r.rc.state === CtrlState.CONNECTING, 'connecting');
    await tickUntil(t, () => r.rc.state === CtrlState.LIVE, 'reconnected', 5, 150);
    t.mock.timers.tick(5000);
    await turns(20);
    assert.equal(r.rc.state, CtrlState.LIVE, 'ctrl_loss_tmo cleared');
    assert.deepEqual(events, [], 'no namespaces event, no handback after the reconnect');
  } finally {
    t.mock.timers.reset();
    await r.done();
  }
});

test('reconnect_delay defaults to 10 s: the first attempt starts at 10000 ms after the loss, not 1 ms earlier', { timeout: 20_000 }, async (t) => {
  const r = await rig({ reconnectDelayMs: undefined, ctrlLossTmoMs: -1 });
  try {
    t.mock.timers.enable({ apis: ['setTimeout'] });
    r.ctl.refuse = true;
    const before = r.ctl.connects;
    r.cut();
    await until(() => r.rc.state === CtrlState.CONNECTING, 'connecting');
    await turns(20);
    t.mock.timers.tick(9999);
    await turns(20);
    assert.equal(r.rc.attempts, 0);
    assert.equal(r.ctl.connects, before);
    t.mock.timers.tick(1);
    await until(() => r.rc.attempts === 1, 'first attempt');
  } finally {
    t.mock.timers.reset();
    await r.done();
  }
});

test('ctrl_loss_tmo gives up with a message naming the subsystem, the timeout and the last error; cause = last error', { timeout: 20_000 }, async () => {
  const r = await rig({ ctrlLossTmoMs: 80, reconnectDelayMs: 10 });
  try {
    const dead = new Promise<NvmfNbdError>((resolve) => r.rc.once('dead', resolve));
    r.ctl.refuse = true;
    r.cut();
    await until(() => r.rc.state === CtrlState.CONNECTING, 'connecting');
    const held = settle(r.rc.write(1, 0n, Buffer.alloc(512)));
    const err = await dead;
    const last = err.cause as NvmfNbdError;
    assert.ok(last instanceof NvmfNbdError);
    assert.equal(err.message, `controller nqn.fake: not reconnected within ctrl_loss_tmo (80 ms); last error: ${last.message}`);
    assert.equal(err.errno, 5);
    const h = await held;
    assert.equal(h.err?.message, err.message);
    assert.equal(r.rc.lastError, err);
  } finally {
    await r.done();
  }
});

test('a listener that throws on the reconnect becomes a warning, not an unhandled rejection', { timeout: 20_000 }, async () => {
  const r = await rig();
  try {
    const boom = new Error('listener failed');
    r.rc.on('state', (s: string) => { if (s === CtrlState.LIVE) throw boom; });
    const warned = new Promise<unknown>((resolve) => r.rc.once('warning', resolve));
    r.cut();
    assert.equal(await warned, boom);
  } finally {
    await r.done();
  }
});

test('warnings and ANA logs of the association are passed on', { timeout: 20_000 }, async () => {
  const r = await rig();
  try {
    const got: unknown[] = [];
    r.rc.on('warning', (w: unknown) => got.push(['warning', w]));
    r.rc.on('ana', (l: unknown) => got.push(['ana', l]));
    const inner = (r.rc as unknown as { ctrl: { emit(e: string, v: unknown): void } }).ctrl;
    inner.emit('warning', 'w1');
    inner.emit('ana', 'log1');
    assert.deepEqual(got, [['warning', 'w1'], ['ana', 'log1']]);
  } finally {
    await r.done();
  }
});

test('the new association lost during the quiesce wait is not used: "new association lost before I/O resumed", then another attempt', { timeout: 20_000 }, async () => {
  const r = await rig({ quiesceMs: 400, reconnectDelayMs: 10 });
  try {
    r.ctl.refuse = true;
    r.cut();
    await until(() => r.rc.state === CtrlState.CONNECTING, 'connecting');
    const held = settle(r.rc.write(1, 40n, Buffer.alloc(512, 0x77)));
    const n = r.target.conns.length;
    r.ctl.refuse = false;
    // The next association's admin and I/O queues are up: drop them while it waits out the quiesce time.
    await until(() => r.target.conns.length >= n + 2 && r.target.conns.slice(n).every((c) => c.qid >= 0), 'new association connected');
    await new Promise((res) => setTimeout(res, 50));
    assert.equal(r.rc.state, CtrlState.CONNECTING);
    for (const c of r.target.conns.slice(n)) c.socket.destroy();
    assert.equal((await held).ok, true);
    assert.equal(r.rc.lastError?.message, 'new association lost before I/O resumed');
    assert.equal(r.rc.lastError?.code, ErrorCode.CONNECTION_CLOSED);
    assert.ok(r.target.conns.length >= n + 4, 'a third association');
    assert.deepEqual((r.m.namespaces.get(1)?.data as Buffer).subarray(40 * 512, 41 * 512), Buffer.alloc(512, 0x77));
  } finally {
    await r.done();
  }
});

test('close() during the quiesce wait closes the new association and ends DEAD without re-driving', { timeout: 20_000 }, async () => {
  const r = await rig({ quiesceMs: 60_000, reconnectDelayMs: 10 });
  try {
    r.ctl.refuse = true;
    r.cut();
    await until(() => r.rc.state === CtrlState.CONNECTING, 'connecting');
    const held = settle(r.rc.write(1, 48n, Buffer.alloc(512, 0x78)));
    const n = r.target.conns.length;
    r.ctl.refuse = false;
    await until(() => r.target.conns.length >= n + 2 && r.target.conns.slice(n).every((c) => c.qid >= 0), 'new association connected');
    await new Promise((res) => setTimeout(res, 50));
    await r.rc.close();
    assert.equal(r.rc.state, CtrlState.DEAD);
    assert.equal((await held).err?.code, ErrorCode.CONTROLLER_DELETED);
    await Promise.all(r.target.conns.slice(n).map((c) => c.closed));
    assert.equal((r.m.regs?.cc ?? 0) >>> 14 & 3, 1, 'the new association was shut down in order');
    assert.deepEqual((r.m.namespaces.get(1)?.data as Buffer).subarray(48 * 512, 49 * 512), Buffer.alloc(512));
  } finally {
    await r.done();
  }
});

test('close() while a reconnect attempt is connecting: the attempt\'s association is closed, never adopted', { timeout: 20_000 }, async () => {
  const m: ControllerModel = { namespaces: new Map([[1, { data: Buffer.alloc(64 << 10), lbaSize: 512 }]]) };
  const r = await rig({ reconnectDelayMs: 10 }, m);
  try {
    r.ctl.refuse = true;
    r.cut();
    await until(() => r.rc.state === CtrlState.CONNECTING, 'connecting');
    const n = r.target.conns.length;
    m.identifyDelayMs = 300;
    r.ctl.refuse = false;
    await until(() => r.target.conns.length > n && r.target.conns[n]?.qid === 0, 'attempt connecting');
    const states: string[] = [];
    r.rc.on('state', (s: string) => states.push(s));
    await r.rc.close();
    assert.deepEqual(states, ['deleting', 'dead']);
    await Promise.all(r.target.conns.slice(n).map((c) => c.closed));
  } finally {
    await r.done();
  }
});

// ---- operations on a live association and the namespace objects --------------------------------

test('the association\'s facts are passed through', { timeout: 20_000 }, async () => {
  const r = await rig({ maxNamespaces: 1 }, { namespaces: new Map([[1, { data: Buffer.alloc(64 << 10), lbaSize: 512 }], [3, { data: Buffer.alloc(64 << 10), lbaSize: 512 }]]), mdts: 2, oncs: 0x1d, vwc: false });
  try {
    const inner = (r.rc as unknown as { ctrl: Controller }).ctrl;
    assert.equal(r.rc.cntlid, 7);
    assert.equal(r.rc.identify.subnqn, 'nqn.fake');
    assert.equal(r.rc.identifyRaw, inner.identifyRaw);
    assert.equal(r.rc.identifyRaw.length, 4096);
    assert.equal(r.rc.namespaces, inner.namespaces);
    assert.deepEqual([...r.rc.namespaces.keys()], [1]);
    assert.equal(r.rc.namespacesOverLimit, 1);
    assert.equal(r.rc.ioQueueCount, 1);
    assert.equal(r.rc.maxTransfer, 16384);
    assert.equal(r.rc.version, 0x00020000);
    assert.equal(r.rc.oncs, 0x1d);
    assert.equal(r.rc.anaReporting, false);
    assert.equal(r.rc.volatileWriteCache, false);
    assert.equal(r.rc.authentication, undefined);
    assert.equal(r.rc.stats().cntlid, 7);
    assert.equal(r.rc.stats().io.length, 1);
  } finally {
    await r.done();
  }
});

test('KATO 0 refusal message says why', async () => {
  const e = await rejectsCode(ResilientController.connect({ traddr: '127.0.0.1', trsvcid: 1, subnqn: NQN, hostnqn: HOSTNQN, hostid: HOSTID, kato: 0 }), ErrorCode.INVALID_ARGUMENT);
  assert.match(e.message, /^keep-alive is required for safe reconnects: KATO 0 lets the target keep a lost association forever/);
});

test('refreshAnaLog on a live association asks the controller (not "not live")', { timeout: 20_000 }, async () => {
  const r = await rig();
  try {
    const res = await settle(r.rc.refreshAnaLog());
    assert.notEqual(res.err?.message, 'not live');
    assert.ok(r.seen().some((s) => s.opcode === 0x02 && (s.cdw10 & 0xff) === 0x0c), 'ANA log page read');
  } finally {
    await r.done();
  }
});

test('across a reconnect: removed and reformatted namespaces are retired (their errors), resized keeps its object, new and reformatted get new ones, an unusable one none', { timeout: 20_000 }, async () => {
  const m: ControllerModel = {
    mdts: 2,
    namespaces: new Map([
      [1, { data: Buffer.alloc(64 << 10), lbaSize: 512 }],
      [2, { data: Buffer.alloc(64 << 10), lbaSize: 512 }],
      [3, { data: Buffer.alloc(64 << 10), lbaSize: 512 }],
      [5, { data: Buffer.alloc(64 << 10), lbaSize: 512 }],
    ]),
  };
  const r = await rig({}, m);
  try {
    const [n1, n2, n3, n5] = [1, 2, 3, 5].map((n) => r.rc.namespace(n));
    assert.ok(n1 && n2 && n3 && n5);
    const changes: unknown[] = [];
    r.rc.on('namespaces', (ch: unknown) => changes.push(ch));
    r.ctl.refuse = true;
    r.cut();
    await until(() => r.rc.state === CtrlState.CONNECTING, 'connecting');
    m.namespaces.delete(2);
    m.namespaces.set(1, { data: Buffer.alloc(128 << 10), lbaSize: 512 });
    m.namespaces.set(3, { data: Buffer.alloc(64 << 10), lbaSize: 4096 });
    m.namespaces.set(4, { data: Buffer.alloc(64 << 10), lbaSize: 512 });
    m.namespaces.set(5, { data: Buffer.alloc(64 << 10), lbaSize: 32768 });
    // Held I/O of the namespaces that change.
    const h2 = settle(n2.read(0, 512));
    const h3 = settle(n3.read(0, 512));
    const h1 = settle(n1.read(0, 512));
    r.ctl.refuse = false;
    await until(() => r.rc.state === CtrlState.LIVE, 'live again');
    assert.deepEqual(changes, [{ added: [4], removed: [2], resized: [1, 3, 5] }]);
    assert.equal(r.rc.namespace(1), n1, 'a capacity change keeps the object');
    assert.equal(n1.retiredReason, undefined);
    assert.equal(r.rc.namespace(2), undefined);
    assert.equal(n2.retiredReason?.code, ErrorCode.NAMESPACE_NOT_FOUND);
    assert.notEqual(r.rc.namespace(3), n3);
    assert.equal(r.rc.namespace(3)?.blockSize, 4096);
    assert.equal(n3.retiredReason?.code, ErrorCode.NAMESPACE_UNSUPPORTED);
    assert.equal(r.rc.namespace(4)?.blockSize, 512);
    assert.equal(r.rc.namespace(5), undefined, 'a block larger than the transfer limit: not usable, no object');
    assert.equal(n5.retiredReason?.code, ErrorCode.NAMESPACE_UNSUPPORTED);
    assert.equal((await h2).err?.code, ErrorCode.NAMESPACE_NOT_FOUND);
    assert.equal((await h3).err?.code, ErrorCode.NAMESPACE_UNSUPPORTED);
    assert.equal((await h1).ok, true);
    // A retired object's I/O on the live association fails with its error, on both paths.
    assert.equal((await settle(r.rc.read(2, 0n, 1, undefined, n2))).err?.code, ErrorCode.NAMESPACE_NOT_FOUND);
    assert.equal((await settle(r.rc.deallocate(3, [{ slba: 0n, nlb: 1 }], n3))).err?.code, ErrorCode.NAMESPACE_UNSUPPORTED);
    assert.equal((await settle(r.rc.writeZeroes(3, 0n, 1, {}, n3))).err?.code, ErrorCode.NAMESPACE_UNSUPPORTED);
    const q = rec(BlockOpCode.READ, 0n, Buffer.alloc(512));
    q.req.nsid = 2;
    q.req.ns = n2;
    r.rc.submitIo(q.req);
    assert.equal(q.settled, false, 'never completed synchronously');
    assert.equal((await q.done)?.code, ErrorCode.NAMESPACE_NOT_FOUND);
    assert.equal(q.req.owner, q.owner);
  } finally {
    await r.done();
  }
});

test('live: an NVMe error is the answer (not held); a record comes back to its owner with the links cleared', { timeout: 20_000 }, async () => {
  const r = await rig();
  try {
    const past = await settle(r.rc.read(1, 10_000n, 1));
    assert.ok(past.err instanceof NvmfNbdError);
    assert.notEqual(past.err?.status, undefined, 'the NVMe status');
    const z = await settle(r.rc.writeZeroes(1, 10_000n, 1));
    assert.notEqual(z.err?.status, undefined);
    assert.equal(r.rc.state, CtrlState.LIVE);
    assert.deepEqual(r.rc.heldOps, { count: 0, bytes: 0 });
    const w = rec(BlockOpCode.WRITE, 3n, Buffer.alloc(512, 0x42));
    r.rc.submitIo(w.req);
    assert.equal(await w.done, undefined);
    assert.equal(w.req.owner, w.owner);
    assert.equal(w.req.upper, undefined);
    assert.equal(w.req.ctrl, undefined);
    assert.equal(w.req.bytes, 512);
    const bad = rec(BlockOpCode.READ, 10_000n, Buffer.alloc(512));
    r.rc.submitIo(bad.req);
    const be = await bad.done;
    assert.notEqual(be?.status, undefined);
    assert.equal(bad.req.owner, bad.owner);
    assert.equal(bad.req.pathLost, false);
    // An empty write sends nothing.
    const before = r.seen().length;
    await r.rc.write(1, 0n, Buffer.alloc(0));
    assert.equal(r.seen().length, before);
    await r.rc.flush(1);
    assert.ok(r.seen().some((s) => s.qid > 0 && s.opcode === 0x00), 'Flush sent');
  } finally {
    await r.done();
  }
});

test('admin commands outstanding on a lost association: Get Log Page and Get Features are re-driven, Set Features fails CONTROLLER_LOST (EIO) unsent', { timeout: 20_000 }, async () => {
  const r = await rig();
  try {
    r.ctl.refuse = true;
    const glp = settle(r.rc.adminCommand(sqeGetLogPage(0x70, 1024, 0), { dataInLength: 1024 }));
    const gf = settle(r.rc.adminCommand(sqeGetFeatures(0x07)));
    const sf = settle(r.rc.adminCommand(sqeSetFeatures(0x0b, 0)));
    r.cut();
    const s = await sf;
    assert.equal(s.err?.code, ErrorCode.CONTROLLER_LOST);
    assert.equal(s.err?.errno, 5);
    assert.match(s.err?.message ?? '', /^association lost while the command was outstanding; not re-sent \(the target may have executed it\): /);
    assert.ok(s.err?.cause instanceof Error);
    await until(() => r.rc.heldOps.count === 2, 'the two reads held');
    // Held admin data counts: out + in.
    const big = settle(r.rc.adminCommand(sqeSetFeatures(0x0b, 0), { dataOut: Buffer.alloc(300), dataInLength: 200 }));
    assert.deepEqual(r.rc.heldOps, { count: 3, bytes: 1024 + 500 });
    r.ctl.refuse = false;
    assert.equal((await glp).ok, true);
    const g = await gf;
    assert.notEqual(g.err?.code, ErrorCode.CONTROLLER_LOST, 're-sent: the answer is the target\'s');
    await big;
  } finally {
    await r.done();
  }
});
