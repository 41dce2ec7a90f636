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
 * closures, handback on fast_io_fail_tmo and on giving up). Serves `npm run mutate -- src/controller/resilient.ts
 * --tests=mut-ctrl-resilient,mut-ctrl-resilient2,resilient-admin-redrive,resilient-close-connecting,resilient-controller,resilient-keepalive,resilient-session,resilient-stale-write`.
 */
import { test } from 'node:test';
import type { TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { CtrlState, RESILIENCE_DEFAULTS, ResilientController } from '../../src/controller/resilient';
import type { ResilienceOptions } from '../../src/controller/resilient';
import type { ControllerOptions } from '../../src/controller/controller';
import { ErrorCode, NvmfNbdError } from '../../src/errors';
import { DISCOVERY_NQN, sqeIdentify, sqeKeepAlive } from '../../src/wire';
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
  done(): Promise<void>;
}

async function rig(o: Partial<ControllerOptions & ResilienceOptions> = {}, m: ControllerModel = { namespaces: new Map([[1, { data: Buffer.alloc(256 << 10), lbaSize: 512 }]]) }): Promise<Rig> {
  const ctl = { refuse: false, connects: 0 };
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
    rc, target, m, ctl, states,
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
