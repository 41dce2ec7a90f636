/**
 * Mutation-audit pins (issue 15) for the survivors of
 * `npm run mutate -- src/controller/resilient.ts:1-560 --tests=mut-ctrl-resilient3,...`
 * (state, namespaces and operations), in a file of their own so the incremental results of the
 * other files stay valid: how a failed reconnect attempt is classified (a reason that is not an
 * NvmfNbdError is wrapped and retried; SUBSYSTEM_CHANGED and a Connect refused with DNR are
 * fatal, a CONNECT_FAILED without DNR or another code with DNR is retried — Controller.connect
 * is stubbed for the attempts only); the ANA log of the association passed through; a
 * successful record completion handed up in the same turn, a failed one a tick later; a record
 * over the hold limit never completed inside submitIo; the promise API's mapping (a read into
 * the caller's buffer, an unknown NSID rejected — not thrown, an empty write sent nowhere, FUA
 * only when asked for); admin bytes held (data out + data in); held operations re-driven in
 * submission order when in-flight ones bounce back after newer ones were held; a held
 * deallocate / write zeroes of a namespace reformatted across the reconnect fails with the old
 * object's error, a record takes the current object of its NSID unless given one; a read or
 * write held for an NSID unknown at submission never runs; a namespace resized into an
 * unusable one is retired, an unusable one removed is only reported; the exact errors of an
 * operation outstanding on a lost association (PATH_LOST in pass-back mode, CONTROLLER_LOST for
 * a command that is not re-sent, an Identify pass-through included) and of one submitted while
 * deleting; refreshAnaLog when not live. Equivalent mutants: test/mutation/equivalent-resilient.json.
 */
import { test } from 'node:test';
import type { TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { CtrlState, ResilientController } from '../../src/controller/resilient';
import type { ResilienceOptions } from '../../src/controller/resilient';
import { Controller } from '../../src/controller/controller';
import type { ControllerOptions } from '../../src/controller/controller';
import { ErrorCode, NvmfNbdError } from '../../src/errors';
import { NvmeTarget } from '../../src/embedded-target/target';
import { sqeIdentify, sqeSetFeatures } from '../../src/wire';
import { FakeTarget, serveController, type ControllerModel } from '../helpers/fake-target';
import { rejectsCode } from '../helpers/assert-code';
import { IoRequest, type IoOwner } from '../../src/controller/io-request';
import { BlockOpCode } from '../../src/block/types';
import { track, until } from '../helpers/clock';

const NQN = 'nqn.2014-08.org.nvmf-nbd:mut-ctrl-resilient4';
const HOSTNQN = 'nqn.2014-08.org.nvmexpress:uuid:0f6c3d1e-1a2b-4c3d-9e8f-00000000e401';
const HOSTID = '0f6c3d1e-1a2b-4c3d-9e8f-00000000e401';

/** One command capsule the target received: queue and the whole SQE. */
interface SeenSqe { qid: number; sqe: Buffer }

interface Rig {
  rc: ResilientController;
  target: FakeTarget;
  m: ControllerModel;
  ctl: { refuse: boolean };
  /** Every command capsule received, in arrival order (all connections). */
  sqes: SeenSqe[];
  /** Drop every connection of the target (the association is lost). */
  cut(): void;
  /** Drop the association from the host side, synchronously (what a reset link does). */
  drop(): void;
  done(): Promise<void>;
}

async function rig(o: Partial<ControllerOptions & ResilienceOptions> = {}, m: ControllerModel = { namespaces: new Map([[1, { data: Buffer.alloc(64 << 10), lbaSize: 512 }]]) }): Promise<Rig> {
  const ctl = { refuse: false };
  const sqes: SeenSqe[] = [];
  const target = await FakeTarget.start((c) => {
    if (ctl.refuse) {
      c.socket.destroy();
      return undefined;
    }
    const next = c.nextPdu.bind(c);
    c.nextPdu = async () => {
      const p = await next();
      if (p !== undefined && p.type === 0x04) sqes.push({ qid: c.qid, sqe: Buffer.from(p.sqe) });
      return p;
    };
    return serveController(c, m);
  });
  const rc = await ResilientController.connect({
    traddr: '127.0.0.1', trsvcid: target.port, subnqn: NQN, hostnqn: HOSTNQN, hostid: HOSTID, nrIoQueues: 1, queueSize: 16,
    kato: 10_000, connectTimeoutMs: 3000, reconnectDelayMs: 10, quiesceMs: 0, ctrlLossTmoMs: 30_000, ...o,
  });
  return {
    rc, target, m, ctl, sqes,
    cut: () => { for (const c of target.conns) c.socket.destroy(); },
    drop: () => { (rc as unknown as { ctrl: Controller }).ctrl.destroy(new NvmfNbdError(ErrorCode.CONNECTION_CLOSED, 'test: link lost')); },
    done: async () => { await rc.close(); await target.close(); },
  };
}

function settle<T>(p: Promise<T>): Promise<{ ok: boolean; value?: T; err?: NvmfNbdError }> {
  return p.then((value) => ({ ok: true, value }), (err: NvmfNbdError) => ({ ok: false, err }));
}

/** I/O commands (qid > 0) of the given opcodes the target received since `from`. */
function ioCommands(r: Rig, from: number, opcodes: number[]): Buffer[] {
  return r.sqes.slice(from).filter((s) => s.qid > 0 && opcodes.includes(s.sqe[0] as number)).map((s) => s.sqe);
}

// ---- classification of a failed reconnect attempt ---------------------------------------------

/**
 * Stub Controller.connect for the reconnect attempts: each call takes the next planned reason to
 * reject with (then the real connect); `seen` gets the controller's lastError at each call, i.e.
 * what the previous attempt left behind.
 */
function planAttempts(t: TestContext, rcRef: () => ResilientController, plan: Array<{ reason: unknown }>): { seen: Array<NvmfNbdError | undefined>; calls: () => number } {
  const real = Controller.connect.bind(Controller);
  const seen: Array<NvmfNbdError | undefined> = [];
  let calls = 0;
  t.mock.method(Controller, 'connect', async (o: ControllerOptions) => {
    calls++;
    seen.push(rcRef().lastError);
    const next = plan.shift();
    if (next !== undefined) throw next.reason;
    return real(o);
  });
  return { seen, calls: () => calls };
}

test('a failed reconnect attempt whose reason is no NvmfNbdError, or a CONNECT_FAILED without DNR, or another code with DNR, is retried; the wrapped lastError names it', { timeout: 20_000 }, async (t: TestContext) => {
  const r = await rig();
  const events: string[] = [];
  try {
    r.rc.on('dead', () => events.push('dead'));
    r.rc.on('warning', (w: unknown) => events.push(`warning:${String(w)}`));
    const boom = new TypeError('socket exploded');
    const noDnr = new NvmfNbdError(ErrorCode.CONNECT_FAILED, 'busy', { status: { sct: 1, sc: 0x82, dnr: false, more: false, crd: 0 } });
    const noStatus = new NvmfNbdError(ErrorCode.CONNECT_FAILED, 'refused, no status');
    const otherDnr = new NvmfNbdError(ErrorCode.CONNECTION_CLOSED, 'closed with a DNR status', { status: { sct: 0, sc: 6, dnr: true, more: false, crd: 0 } });
    const plan = [{ reason: boom }, { reason: undefined }, { reason: noDnr }, { reason: noStatus }, { reason: otherDnr }];
    const p = planAttempts(t, () => r.rc, plan);
    r.cut();
    await until(() => r.rc.reconnects === 1 && r.rc.state === CtrlState.LIVE, 'live again after five failed attempts', 10_000);
    assert.equal(p.calls(), 6);
    assert.deepEqual(events, []);
    const [loss, afterBoom, afterUndefined, afterNoDnr, afterNoStatus, afterOtherDnr] = p.seen;
    assert.ok(loss instanceof NvmfNbdError, 'the loss itself');
    assert.ok(afterBoom instanceof NvmfNbdError);
    assert.equal(afterBoom.code, ErrorCode.CONNECTION_CLOSED);
    assert.equal(afterBoom.message, 'reconnect failed: TypeError: socket exploded');
    assert.equal(afterBoom.cause, boom);
    assert.ok(afterUndefined instanceof NvmfNbdError);
    assert.equal(afterUndefined.code, ErrorCode.CONNECTION_CLOSED);
    assert.equal(afterUndefined.message, 'reconnect failed: undefined');
    // An NvmfNbdError is kept as it is (not wrapped).
    assert.equal(afterNoDnr, noDnr);
    assert.equal(afterNoStatus, noStatus);
    assert.equal(afterOtherDnr, otherDnr);
  } finally {
    await r.done();
  }
});

test('a reconnect attempt failing with SUBSYSTEM_CHANGED, or CONNECT_FAILED with DNR, is fatal at once: that very error is the dead error', { timeout: 20_000 }, async (t: TestContext) => {
  const reasons = [
    new NvmfNbdError(ErrorCode.SUBSYSTEM_CHANGED, 'another subsystem answered'),
    new NvmfNbdError(ErrorCode.CONNECT_FAILED, 'host not allowed', { status: { sct: 1, sc: 0x84, dnr: true, more: false, crd: 0 } }),
  ];
  for (const reason of reasons) {
    const r = await rig();
    try {
      const dead = track(new Promise<NvmfNbdError>((resolve) => r.rc.once('dead', resolve)));
      const p = planAttempts(t, () => r.rc, [{ reason }, { reason }, { reason }]);
      r.cut();
      await until(() => dead.done, `dead on ${reason.code}`);
      assert.equal(await dead.promise, reason);
      assert.equal(r.rc.lastError, reason);
      assert.equal(r.rc.state, CtrlState.DEAD);
      assert.equal(p.calls(), 1, 'no attempt after the fatal one');
      await rejectsCode(r.rc.read(1, 0n, 1), reason.code);
    } finally {
      t.mock.restoreAll();
      await r.done();
    }
  }
});

// ---- facts of the association -------------------------------------------------------------------

test('anaLog is the ANA log of the current association (the embedded target reports ANA)', { timeout: 20_000 }, async () => {
  const target = new NvmeTarget({
    listen: { host: '127.0.0.1', port: 0 },
    subsystems: [{ nqn: NQN, namespaces: [{ nsid: 1, sizeBytes: 1 << 20, backing: { memory: true } }, { nsid: 2, sizeBytes: 1 << 20, backing: { memory: true } }] }],
    log: () => undefined,
  });
  const port = (await target.listen()).port;
  const rc = await ResilientController.connect({
    traddr: '127.0.0.1', trsvcid: port, subnqn: NQN, hostnqn: HOSTNQN, hostid: HOSTID, nrIoQueues: 1, queueSize: 8,
    kato: 5000, connectTimeoutMs: 3000, reconnectDelayMs: 10, quiesceMs: 0,
  });
  try {
    assert.equal(rc.anaReporting, true);
    const inner = (rc as unknown as { ctrl: Controller }).ctrl;
    const log = rc.anaLog;
    assert.ok(log !== undefined, 'read at connect');
    assert.equal(log, inner.anaLog);
    assert.deepEqual(log.groups.flatMap((g) => g.nsids), [1, 2]);
    const fresh = await rc.refreshAnaLog();
    assert.equal(rc.anaLog, fresh, 'the refreshed log replaces it');
    await rc.close();
    const e = await rejectsCode(rc.refreshAnaLog(), ErrorCode.CONTROLLER_LOST);
    assert.equal(e.message, 'not live');
    assert.equal(rc.anaLog, fresh, 'the last association\'s log stays readable');
  } finally {
    await rc.close();
    await target.close();
  }
});

// ---- the record path ------------------------------------------------------------------------------

/** A record with a recording owner. */
function rec(op: (typeof BlockOpCode)['READ' | 'WRITE'], slba: bigint, data: Buffer): { req: IoRequest; calls: Array<NvmfNbdError | undefined>; owner: IoOwner } {
  const req = new IoRequest();
  req.op = op;
  req.nsid = 1;
  req.slba = slba;
  req.nlb = data.length / 512;
  req.data = data;
  const calls: Array<NvmfNbdError | undefined> = [];
  const owner: IoOwner = { onIoDone: (_r, err) => { calls.push(err); } };
  req.owner = owner;
  return { req, calls, owner };
}

test('a record\'s success is handed up in the same turn; its failure on a live association after a tick, as the answer', { timeout: 20_000 }, async () => {
  const r = await rig();
  try {
    const inner = (r.rc as unknown as { ctrl: Controller }).ctrl;
    const ok = rec(BlockOpCode.WRITE, 0n, Buffer.alloc(512));
    // What dispatchIo leaves on a record sent to the association.
    ok.req.upper = ok.owner;
    ok.req.owner = r.rc;
    ok.req.ctrl = inner;
    r.rc.onIoDone(ok.req, undefined);
    assert.deepEqual(ok.calls, [undefined], 'completed inside onIoDone');
    assert.equal(ok.req.owner, ok.owner);
    assert.equal(ok.req.upper, undefined);
    assert.equal(ok.req.ctrl, undefined);
    const bad = rec(BlockOpCode.WRITE, 0n, Buffer.alloc(512));
    bad.req.upper = bad.owner;
    bad.req.owner = r.rc;
    bad.req.ctrl = inner;
    const e = new NvmfNbdError(ErrorCode.NVME_STATUS, 'LBA out of range');
    r.rc.onIoDone(bad.req, e);
    assert.equal(bad.calls.length, 0, 'decided after the teardown tick');
    await new Promise<void>((res) => process.nextTick(res));
    assert.deepEqual(bad.calls, [e]);
    assert.equal(bad.req.owner, bad.owner);
  } finally {
    await r.done();
  }
});

test('a record over the hold limit fails with HOLD_QUEUE_FULL, never inside submitIo', { timeout: 20_000 }, async () => {
  const r = await rig({ holdLimitBytes: 512 });
  try {
    r.ctl.refuse = true;
    r.cut();
    await until(() => r.rc.state === CtrlState.CONNECTING, 'connecting');
    const a = rec(BlockOpCode.WRITE, 0n, Buffer.alloc(1024, 1));
    r.rc.submitIo(a.req);
    assert.equal(a.calls.length, 0, 'not completed synchronously');
    await until(() => a.calls.length === 1, 'failed');
    assert.equal(a.calls[0]?.code, ErrorCode.HOLD_QUEUE_FULL);
    assert.equal(a.req.owner, a.owner);
    assert.deepEqual(r.rc.heldOps, { count: 0, bytes: 0 });
  } finally {
    await r.done();
  }
});

// ---- the promise API ---------------------------------------------------------------------------------

test('read into the caller\'s buffer returns that buffer; an unknown NSID rejects (read and write) with NAMESPACE_NOT_FOUND', { timeout: 20_000 }, async () => {
  const r = await rig();
  try {
    (r.m.namespaces.get(1)?.data as Buffer).fill(0x3c, 1024, 2048);
    const into = Buffer.alloc(1024, 0xff);
    const got = await r.rc.read(1, 2n, 2, into);
    assert.equal(got, into);
    assert.deepEqual(got, Buffer.alloc(1024, 0x3c));
    const fresh = await r.rc.read(1, 2n, 1);
    assert.deepEqual(fresh, Buffer.alloc(512, 0x3c));
    await rejectsCode(() => r.rc.read(9, 0n, 1), ErrorCode.NAMESPACE_NOT_FOUND);
    await rejectsCode(() => r.rc.write(9, 0n, Buffer.alloc(512)), ErrorCode.NAMESPACE_NOT_FOUND);
  } finally {
    await r.done();
  }
});

test('an empty write is sent nowhere, also while reconnecting; FUA is set only when asked for', { timeout: 20_000 }, async () => {
  const r = await rig();
  try {
    const from = r.sqes.length;
    await r.rc.write(1, 4n, Buffer.alloc(0));
    await r.rc.write(1, 4n, Buffer.alloc(512, 1));
    await r.rc.write(1, 5n, Buffer.alloc(512, 2), { fua: true });
    await r.rc.write(1, 6n, Buffer.alloc(512, 3), { fua: false });
    await r.rc.write(1, 7n, Buffer.alloc(1024, 4), {});
    const writes = ioCommands(r, from, [0x01]);
    assert.deepEqual(writes.map((s) => s.readUInt32LE(40)), [4, 5, 6, 7], 'one command per non-empty write');
    assert.deepEqual(writes.map((s) => s.readUInt32LE(48)), [0, 1 << 30, 0, 1], 'NLB − 1 and FUA (bit 30) only for fua: true');
    r.ctl.refuse = true;
    r.cut();
    await until(() => r.rc.state === CtrlState.CONNECTING, 'connecting');
    await r.rc.write(1, 0n, Buffer.alloc(0));
    assert.deepEqual(r.rc.heldOps, { count: 0, bytes: 0 });
  } finally {
    await r.done();
  }
});

test('a read or write held for an NSID unknown when submitted never runs, even when that namespace is there after the reconnect (no block size to size it by)', { timeout: 20_000 }, async () => {
  const m: ControllerModel = { namespaces: new Map([[1, { data: Buffer.alloc(64 << 10), lbaSize: 512 }]]) };
  const r = await rig({}, m);
  try {
    r.ctl.refuse = true;
    r.cut();
    await until(() => r.rc.state === CtrlState.CONNECTING, 'connecting');
    const w = settle(r.rc.write(2, 0n, Buffer.alloc(512, 0x5e)));
    const rd = settle(r.rc.read(2, 0n, 1));
    assert.deepEqual(r.rc.heldOps, { count: 2, bytes: 512 }, 'the write counts its payload; the read has no destination to count');
    m.namespaces.set(2, { data: Buffer.alloc(64 << 10), lbaSize: 512 });
    const from = r.sqes.length;
    r.ctl.refuse = false;
    const we = await w;
    assert.equal(we.err?.code, ErrorCode.INVALID_ARGUMENT);
    assert.equal(we.err?.message, 'write of 512 bytes for 0 blocks of 512');
    const re = await rd;
    assert.equal(re.err?.code, ErrorCode.INVALID_ARGUMENT);
    assert.equal(re.err?.message, 'read destination of 0 bytes for 1 blocks of 512');
    assert.deepEqual(ioCommands(r, from, [0x01, 0x02]), [], 'neither was sent');
    assert.ok(r.rc.namespace(2) !== undefined, 'the new namespace is served');
  } finally {
    await r.done();
  }
});

test('a held admin command counts its data out plus its data in against the hold limit', { timeout: 20_000 }, async () => {
  const r = await rig();
  try {
    r.ctl.refuse = true;
    r.cut();
    await until(() => r.rc.state === CtrlState.CONNECTING, 'connecting');
    const a = settle(r.rc.adminCommand(sqeSetFeatures(0x0b, 0), { dataOut: Buffer.alloc(512), dataInLength: 1024 }));
    assert.deepEqual(r.rc.heldOps, { count: 1, bytes: 1536 });
    const b = settle(r.rc.adminCommand(sqeSetFeatures(0x0b, 0), { dataOut: Buffer.alloc(256) }));
    assert.deepEqual(r.rc.heldOps, { count: 2, bytes: 1792 });
    await r.rc.close();
    assert.equal((await a).err?.code, ErrorCode.CONTROLLER_DELETED);
    assert.equal((await b).err?.code, ErrorCode.CONTROLLER_DELETED);
  } finally {
    await r.done();
  }
});

// ---- held operations: order, owners, errors of outstanding ones ------------------------------------

test('operations in flight when the association is lost rejoin the hold queue ahead of newer held ones: re-driven in submission order', { timeout: 20_000 }, async () => {
  const r = await rig();
  try {
    const data = r.m.namespaces.get(1)?.data as Buffer;
    r.ctl.refuse = true;
    const newer: Array<Promise<{ ok: boolean; err?: NvmfNbdError }>> = [];
    // Submitted the moment CONNECTING is entered: held before the in-flight ones come back.
    r.rc.once('state', () => {
      newer.push(settle(r.rc.write(1, 0n, Buffer.alloc(512, 0xcc))));
      newer.push(settle(r.rc.writeZeroes(1, 1n, 1)));
    });
    const w1 = settle(r.rc.write(1, 0n, Buffer.alloc(512, 0xaa)));
    const z1 = settle(r.rc.writeZeroes(1, 0n, 1));
    const w2 = settle(r.rc.write(1, 1n, Buffer.alloc(512, 0xbb)));
    r.drop();
    assert.equal(newer.length, 2);
    await until(() => r.rc.heldOps.count === 5, 'all five held');
    const from = r.sqes.length;
    r.ctl.refuse = false;
    for (const p of [w1, z1, w2, ...newer]) assert.equal((await p).ok, true);
    const order = ioCommands(r, from, [0x01, 0x08]).map((s) => `${s[0] === 0x01 ? 'w' : 'z'}${s.readUInt32LE(40)}`);
    assert.deepEqual(order, ['w0', 'z0', 'w1', 'w0', 'z1']);
    assert.deepEqual(data.subarray(0, 512), Buffer.alloc(512, 0xcc));
    assert.deepEqual(data.subarray(512, 1024), Buffer.alloc(512));
  } finally {
    await r.done();
  }
});

test('a deallocate / write zeroes held across a reformat of its namespace (no ns given) fails with the old object\'s error, never runs', { timeout: 20_000 }, async () => {
  const m: ControllerModel = { namespaces: new Map([[1, { data: Buffer.alloc(64 << 10), lbaSize: 512 }]]) };
  const r = await rig({}, m);
  try {
    const old = r.rc.namespace(1);
    assert.ok(old !== undefined);
    r.ctl.refuse = true;
    r.cut();
    await until(() => r.rc.state === CtrlState.CONNECTING, 'connecting');
    const d = settle(r.rc.deallocate(1, [{ slba: 0n, nlb: 1 }]));
    const z = settle(r.rc.writeZeroes(1, 0n, 1));
    m.namespaces.set(1, { data: Buffer.alloc(64 << 10), lbaSize: 4096 });
    const from = r.sqes.length;
    r.ctl.refuse = false;
    const de = await d;
    const ze = await z;
    assert.equal(de.err?.code, ErrorCode.NAMESPACE_UNSUPPORTED);
    assert.equal(de.err, old.retiredReason);
    assert.equal(ze.err, old.retiredReason);
    assert.deepEqual(ioCommands(r, from, [0x08, 0x09]), [], 'neither was sent');
    assert.notEqual(r.rc.namespace(1), old);
    assert.equal(r.rc.namespace(1)?.blockSize, 4096);
  } finally {
    await r.done();
  }
});

test('outstanding on a lost association: a deallocate in pass-back mode rejects PATH_LOST naming the teardown; without pass-back it is re-driven; a Set Features is not re-sent (CONTROLLER_LOST, EIO)', { timeout: 20_000 }, async () => {
  const r = await rig();
  try {
    r.rc.setPassBack(true);
    r.ctl.refuse = true;
    const d = settle(r.rc.deallocate(1, [{ slba: 8n, nlb: 1 }]));
    const sf = settle(r.rc.adminCommand(sqeSetFeatures(0x0b, 0)));
    const id = settle(r.rc.adminCommand(sqeIdentify(1), { dataInLength: 4096 }));
    r.drop();
    const de = await d;
    assert.equal(de.err?.code, ErrorCode.PATH_LOST);
    assert.ok(de.err?.cause instanceof NvmfNbdError);
    assert.equal(de.err?.message, `association lost while the command was outstanding: ${de.err?.cause.message}`);
    assert.equal(de.err?.errno, undefined);
    const se = await sf;
    assert.equal(se.err?.code, ErrorCode.CONTROLLER_LOST);
    assert.equal(se.err?.errno, 5);
    assert.ok(se.err?.cause instanceof NvmfNbdError);
    assert.equal(se.err?.message, `association lost while the command was outstanding; not re-sent (the target may have executed it): ${se.err?.cause.message}`);
    assert.deepEqual(r.rc.heldOps, { count: 1, bytes: 4096 }, 'only the Identify (no NSID) is held, even in pass-back mode');
    r.ctl.refuse = false;
    assert.equal((await id).ok, true);
    await until(() => r.rc.state === CtrlState.LIVE, 'live');
    // Pass-back off: the same deallocate is held and re-driven.
    r.rc.setPassBack(false);
    r.ctl.refuse = true;
    const from = r.sqes.length;
    const d2 = settle(r.rc.deallocate(1, [{ slba: 9n, nlb: 1 }]));
    r.drop();
    await until(() => r.rc.heldOps.count === 1, 'the deallocate held');
    r.ctl.refuse = false;
    assert.equal((await d2).ok, true);
    assert.equal(ioCommands(r, from, [0x09]).length >= 1, true, 'sent on the new association');
  } finally {
    await r.done();
  }
});

test('an Identify sent as a user pass-through is not re-sent after the association is lost (CONTROLLER_LOST); the same Identify of the host\'s own is', { timeout: 20_000 }, async () => {
  const r = await rig();
  try {
    r.ctl.refuse = true;
    const user = settle(r.rc.adminCommand(sqeIdentify(1), { dataInLength: 4096, passthru: true }));
    const own = settle(r.rc.adminCommand(sqeIdentify(1), { dataInLength: 4096 }));
    r.drop();
    const ue = await user;
    assert.equal(ue.err?.code, ErrorCode.CONTROLLER_LOST);
    assert.equal(ue.err?.errno, 5);
    await until(() => r.rc.heldOps.count === 1, 'the host\'s Identify held');
    r.ctl.refuse = false;
    const o = await own;
    assert.equal(o.ok, true);
    assert.equal(o.value?.data?.length, 4096);
  } finally {
    await r.done();
  }
});

test('a namespace resized across a reconnect into an unusable one (metadata, same block size) is retired and not served', { timeout: 20_000 }, async () => {
  const m: ControllerModel = { namespaces: new Map([[1, { data: Buffer.alloc(64 << 10), lbaSize: 512 }], [2, { data: Buffer.alloc(64 << 10), lbaSize: 512 }]]) };
  const r = await rig({}, m);
  try {
    const n2 = r.rc.namespace(2);
    assert.ok(n2 !== undefined);
    r.ctl.refuse = true;
    r.cut();
    await until(() => r.rc.state === CtrlState.CONNECTING, 'connecting');
    m.namespaces.set(2, { data: Buffer.alloc(128 << 10), lbaSize: 512, ms: 8 });
    r.ctl.refuse = false;
    await until(() => r.rc.state === CtrlState.LIVE, 'live again');
    assert.equal(r.rc.namespaces.get(2)?.usable, false);
    assert.equal(n2.retiredReason?.code, ErrorCode.NAMESPACE_UNSUPPORTED);
    assert.equal(r.rc.namespace(2), undefined);
  } finally {
    await r.done();
  }
});

test('a record\'s namespace object: the current one of its NSID when none is given (held across a reformat → its error), the given one otherwise', { timeout: 20_000 }, async () => {
  const m: ControllerModel = { namespaces: new Map([[1, { data: Buffer.alloc(64 << 10), lbaSize: 512 }]]) };
  const r = await rig({}, m);
  try {
    const old = r.rc.namespace(1);
    assert.ok(old !== undefined);
    r.ctl.refuse = true;
    r.cut();
    await until(() => r.rc.state === CtrlState.CONNECTING, 'connecting');
    const w = settle(r.rc.write(1, 0n, Buffer.alloc(512, 0x11)));
    const a = rec(BlockOpCode.WRITE, 1n, Buffer.alloc(512, 0x12));
    r.rc.submitIo(a.req);
    assert.equal(a.req.ns, old);
    m.namespaces.set(1, { data: Buffer.alloc(64 << 10), lbaSize: 4096 });
    const from = r.sqes.length;
    r.ctl.refuse = false;
    assert.equal((await w).err, old.retiredReason);
    await until(() => a.calls.length === 1, 'the record failed');
    assert.equal(a.calls[0], old.retiredReason);
    assert.equal(old.retiredReason?.code, ErrorCode.NAMESPACE_UNSUPPORTED);
    // Live, with the retired object given: it is not swapped for the new object of NSID 1.
    const late = await settle(r.rc.write(1, 0n, Buffer.alloc(4096, 0x13), {}, old));
    assert.equal(late.err, old.retiredReason);
    assert.deepEqual(ioCommands(r, from, [0x01]), [], 'nothing was written');
    await r.rc.write(1, 0n, Buffer.alloc(4096, 0x14));
    assert.equal(ioCommands(r, from, [0x01]).length, 1, 'the new object of NSID 1 serves');
  } finally {
    await r.done();
  }
});

test('an unusable namespace (never given an object) removed across a reconnect: reported, and the held I/O of the others is re-driven', { timeout: 20_000 }, async () => {
  const m: ControllerModel = { namespaces: new Map([[1, { data: Buffer.alloc(64 << 10), lbaSize: 512 }], [2, { data: Buffer.alloc(64 << 10), lbaSize: 512, ms: 8 }]]) };
  const r = await rig({}, m);
  try {
    assert.equal(r.rc.namespace(2), undefined);
    const seen: string[] = [];
    r.rc.on('namespaces', (ch: { removed: number[] }) => seen.push(`removed:${ch.removed.join(',')}`));
    r.rc.on('warning', (w: unknown) => seen.push(`warning:${String(w)}`));
    r.ctl.refuse = true;
    r.cut();
    await until(() => r.rc.state === CtrlState.CONNECTING, 'connecting');
    const w = settle(r.rc.write(1, 3n, Buffer.alloc(512, 0x21)));
    m.namespaces.delete(2);
    r.ctl.refuse = false;
    assert.equal((await w).ok, true);
    assert.deepEqual(seen, ['removed:2']);
    assert.deepEqual((m.namespaces.get(1)?.data as Buffer).subarray(3 * 512, 4 * 512), Buffer.alloc(512, 0x21));
  } finally {
    await r.done();
  }
});

test('a deallocate or admin command submitted while the controller is being deleted: CONTROLLER_DELETED "controller is being deleted" (ESHUTDOWN)', { timeout: 20_000 }, async () => {
  const r = await rig();
  try {
    const during: Array<Promise<{ ok: boolean; err?: NvmfNbdError }>> = [];
    r.rc.on('state', (s: string) => {
      if (s === CtrlState.DELETING) during.push(settle(r.rc.deallocate(1, [{ slba: 0n, nlb: 1 }])), settle(r.rc.adminCommand(sqeIdentify(1), { dataInLength: 4096 })));
    });
    await r.rc.close();
    assert.equal(during.length, 2);
    for (const p of during) {
      const e = (await p).err;
      assert.equal(e?.code, ErrorCode.CONTROLLER_DELETED);
      assert.equal(e?.message, 'controller is being deleted');
      assert.equal(e?.errno, 108);
    }
  } finally {
    await r.done();
  }
});

test('namespace objects are writable unless readOnlyNamespaces is set; authentication is the association\'s outcome', { timeout: 20_000 }, async () => {
  const r = await rig();
  try {
    const n1 = r.rc.namespace(1);
    assert.ok(n1 !== undefined);
    assert.equal(n1.readOnly, false);
    await n1.write(512, Buffer.alloc(512, 0x42), false);
    assert.deepEqual((r.m.namespaces.get(1)?.data as Buffer).subarray(512, 1024), Buffer.alloc(512, 0x42));
    const inner = (r.rc as unknown as { ctrl: Controller }).ctrl;
    assert.equal(r.rc.authentication, undefined);
    const outcome = { hash: 'sha256' } as unknown as NonNullable<Controller['authentication']>;
    inner.authentication = outcome;
    assert.equal(r.rc.authentication, outcome);
  } finally {
    await r.done();
  }
});
