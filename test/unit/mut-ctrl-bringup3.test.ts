/**
 * Mutation-audit pins (issue 15), third part, for the bring-up of src/controller/controller.ts
 * (lines 1-641 and 888-end): the bring-up budget (exact deadline, cleared after success, no
 * 32-bit timer overflow), a queue that connects after the controller died, digests and SQ flow
 * control per queue, DH-HMAC-CHAP wiring (transaction ids, outcome per queue, callbacks), the
 * 4-byte property reads, CC written with MPS, the CC.SHN write keeping other bits, command
 * deadlines of enable and shutdown, the ANA log (size, fields, failures, change notices), the
 * asynchronous event dispatch (namespace, ANA, others), rescan coalescing, keep-alive (period,
 * TBKAS skipping, KATO expiry, failures) and the receive watchdog, destroy/whenClosed/stats.
 * A wrapper around the scripted fake target patches Identify Controller and property answers,
 * records every command, and lets a test take commands to answer them itself (or never).
 * Serves `npm run mutate -- src/controller/controller.ts:1-641 --tests=mut-ctrl-bringup3,...`.
 */
import { test } from 'node:test';
import type { TestContext } from 'node:test';
import assert from 'node:assert/strict';
import * as os from 'node:os';
import { Controller } from '../../src/controller/controller';
import type { ControllerOptions, NamespaceChanges } from '../../src/controller/controller';
import { ErrorCode, NvmfNbdError } from '../../src/errors';
import { encodeAnaLog } from '../../src/wire';
import type { AnaLog } from '../../src/wire';
import { generateDhchapKey } from '../../src/wire/dhchap';
import { sqeIdentify, sqeKeepAlive } from '../../src/wire/sqe';
import { FakeTarget, identifyNamespaceData, serveController } from '../helpers/fake-target';
import type { ControllerModel, FakeConn } from '../helpers/fake-target';
import type { QueuePair } from '../../src/transport/queue-pair';
import { rejectsCode } from '../helpers/assert-code';
import { track, turns, until } from '../helpers/clock';

const T = { timeout: 30_000 };

/** A command the target received: its connection, queue, opcode, fctype, cid and raw SQE. */
interface Seen { c: FakeConn; qid: number; opcode: number; fctype: number; cid: number; sqe: Buffer }

interface Hooks {
  /** Change the Identify Controller data (a copy) before it is sent. */
  identify?: (b: Buffer) => void;
  /** Change a response on the admin queue before it is sent: (SQE, response fields). */
  respond?: (sqe: Buffer, o: RespondFields) => RespondFields;
  /** Return true to take the command: the model never sees it, the test answers it (or not). */
  take?: (s: Seen) => boolean;
  /** The Fabrics Connect answer of a queue waits for this (per qid). */
  holdConnect?: (qid: number) => Promise<void> | undefined;
}
type RespondFields = { sqhd?: number; sc?: number; sct?: number; dnr?: boolean; dw0?: number; dw1?: number };

type NsModel = { data: Buffer; lbaSize: number };

function model(o: Partial<ControllerModel> = {}): ControllerModel {
  return { namespaces: new Map<number, NsModel>([[1, { data: Buffer.alloc(64 * 512), lbaSize: 512 }]]), ...o };
}

const SUBNQN = 'nqn.2024-01.io.test:mut-up3';
const BASE: Omit<ControllerOptions, 'trsvcid'> = {
  traddr: '127.0.0.1', subnqn: SUBNQN, hostnqn: 'nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-00000000003c',
  hostid: '00000000-0000-0000-0000-00000000003c', nrIoQueues: 1, queueSize: 16, kato: 0, connectTimeoutMs: 5000, ioTimeoutMs: 8000,
};

interface Rig { target: FakeTarget; seen: Seen[]; taken: Seen[]; conn(qid: number): FakeConn | undefined }

async function start(m: ControllerModel, h: Hooks = {}): Promise<Rig> {
  const seen: Seen[] = [];
  const taken: Seen[] = [];
  const byQid = new Map<number, FakeConn>();
  const target = await FakeTarget.start((c: FakeConn) => {
    const byCid = new Map<number, Buffer>();
    let connectQid = -1;
    const next = c.nextPdu.bind(c);
    c.nextPdu = async () => {
      for (;;) {
        const pdu = await next();
        if (pdu === undefined || pdu.type !== 0x04) return pdu;
        const sqe = Buffer.from(pdu.sqe);
        const cid = sqe.readUInt16LE(2);
        const isConnect = sqe[0] === 0x7f && sqe[4] === 0x01;
        if (isConnect) {
          connectQid = sqe.readUInt16LE(42);
          byQid.set(connectQid, c);
        }
        const s: Seen = { c, qid: isConnect ? connectQid : c.qid, opcode: sqe[0] as number, fctype: sqe[4] as number, cid, sqe };
        seen.push(s);
        byCid.set(cid, sqe);
        if (!isConnect && h.take?.(s) === true) {
          taken.push(s);
          continue;
        }
        return pdu;
      }
    };
    const c2h = c.c2h.bind(c);
    c.c2h = (cid, datao, data, o) => {
      const sqe = byCid.get(cid);
      if (h.identify !== undefined && sqe !== undefined && sqe[0] === 0x06 && (sqe.readUInt32LE(40) & 0xff) === 1 && c.qid === 0) {
        const copy = Buffer.from(data);
        h.identify(copy);
        data = copy;
      }
      c2h(cid, datao, data, o);
    };
    const respond = c.respond.bind(c);
    c.respond = (cid, o = {}) => {
      const sqe = byCid.get(cid);
      if (sqe !== undefined && sqe[0] === 0x7f && sqe[4] === 0x01) {
        const hold = h.holdConnect?.(connectQid);
        if (hold !== undefined) {
          void hold.then(() => respond(cid, o));
          return;
        }
      }
      respond(cid, sqe !== undefined && c.qid === 0 && h.respond !== undefined ? h.respond(sqe, o) : o);
    };
    return serveController(c, m);
  });
  return { target, seen, taken, conn: (qid) => byQid.get(qid) };
}

async function rig(m: ControllerModel, h: Hooks = {}, o: Partial<ControllerOptions> = {}): Promise<Rig & { ctrl: Controller; close(): Promise<void> }> {
  const r = await start(m, h);
  try {
    const ctrl = await Controller.connect({ ...BASE, trsvcid: r.target.port, ...o });
    return { ...r, ctrl, close: async () => { await ctrl.close(); await r.target.close(); } };
  } catch (err) {
    await r.target.close();
    throw err;
  }
}

/** Answer a taken command (SQHD FFFFh: no flow-control bookkeeping for it). */
function answer(s: Seen, o: RespondFields = {}, data?: Buffer): void {
  if (data !== undefined) s.c.c2h(s.cid, 0, data, { last: true });
  s.c.respond(s.cid, { sqhd: 0xffff, ...o });
}

const isProp = (s: Seen, fctype: number, offset: number): boolean => s.opcode === 0x7f && s.fctype === fctype && s.sqe.readUInt32LE(44) === offset;
const isLog = (s: Seen, lid: number): boolean => s.qid === 0 && s.opcode === 0x02 && (s.sqe.readUInt32LE(40) & 0xff) === lid;
const isAer = (s: Seen): boolean => s.qid === 0 && s.opcode === 0x0c;
const isKa = (s: Seen): boolean => s.qid === 0 && s.opcode === 0x18;
const count = (seen: Seen[], f: (s: Seen) => boolean): number => seen.filter(f).length;
const ioQueues = (c: Controller): QueuePair[] => (c as unknown as { ioQueues: QueuePair[] }).ioQueues;
const adminOf = (c: Controller): QueuePair => (c as unknown as { admin: QueuePair }).admin;
const kaSentAt = (c: Controller): number | undefined => (c as unknown as { kaSentAt: number | undefined }).kaSentAt;
/**
 * Run the queue's deadline check now. Its timer re-arms with Timeout.refresh(), which
 * node:test's mocked timers (Node 20) ignore: after a mocked tick the test asks for the check.
 */
const checkDeadlines = (qp: QueuePair): void => (qp as unknown as { onTick(): void }).onTick();

/** Record every Controller.destroy call (synchronous, so a mocked tick can be checked at once). */
function spyDestroy(t: TestContext): Array<{ ctrl: Controller; err: NvmfNbdError | undefined }> {
  const calls: Array<{ ctrl: Controller; err: NvmfNbdError | undefined }> = [];
  const orig = Controller.prototype.destroy;
  Controller.prototype.destroy = function destroy(this: Controller, err?: NvmfNbdError): void {
    calls.push({ ctrl: this, err });
    orig.call(this, err);
  };
  t.after(() => { Controller.prototype.destroy = orig; });
  return calls;
}

// ---------------------------------------------------------------- bring-up budget

test('bring-up budget: expires exactly at bringUpTimeoutMs with TIMEOUT naming subsystem, address and budget; a queue connected afterwards is closed', T, async (t) => {
  const calls = spyDestroy(t);
  let release!: () => void;
  const held = new Promise<void>((r) => { release = r; });
  const r = await start(model(), { holdConnect: (qid) => (qid === 1 ? held : undefined) });
  try {
    t.mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 0 });
    const p = track(Controller.connect({ ...BASE, trsvcid: r.target.port, bringUpTimeoutMs: 777, connectTimeoutMs: 60_000 }));
    await until(() => r.conn(1) !== undefined, 'I/O queue Connect sent');
    t.mock.timers.tick(776);
    assert.equal(calls.length, 0, 'not expired 1 ms early');
    t.mock.timers.tick(1);
    assert.equal(calls.length, 1);
    assert.equal(calls[0]?.err?.code, ErrorCode.TIMEOUT);
    const msg = `controller ${SUBNQN} at 127.0.0.1:${r.target.port}: bring-up did not finish within 777 ms`;
    assert.equal(calls[0]?.err?.message, msg);
    await until(() => r.conn(0)?.ended === true, 'admin queue closed at expiry');
    assert.equal(p.done, false, 'still waiting for the I/O queue connect');
    release();
    const e = await rejectsCode(p.promise, ErrorCode.TIMEOUT);
    assert.equal(e.message, msg);
    await until(() => r.conn(1)?.ended === true, 'the late I/O queue is closed', 5000);
  } finally {
    t.mock.timers.reset();
    await r.target.close();
  }
});

test('bring-up budget: the timer is cleared once connected (ticking past it does nothing); a budget beyond 2^31-1 ms does not overflow', T, async (t) => {
  const calls = spyDestroy(t);
  const r = await start(model());
  try {
    t.mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 0 });
    const c = await Controller.connect({ ...BASE, trsvcid: r.target.port, bringUpTimeoutMs: 1000 });
    t.mock.timers.tick(120_000);
    assert.equal(calls.length, 0);
    assert.equal(c.alive, true);
    t.mock.timers.reset();
    await c.close();
    // Real timers: a delay past 2^31-1 would be taken as 1 ms by setTimeout.
    const big = await Controller.connect({ ...BASE, trsvcid: r.target.port, bringUpTimeoutMs: 2 ** 31 + 60_000 });
    assert.equal(big.alive, true);
    assert.equal(calls.length, 0);
    await big.close();
  } finally {
    t.mock.timers.reset();
    await r.target.close();
  }
});

test('admin queue lost while an I/O queue connects: CONTROLLER_LOST naming the queue and cause; connect rejects CONNECTION_CLOSED and closes the late queue', T, async (t) => {
  const calls = spyDestroy(t);
  let release!: () => void;
  const held = new Promise<void>((r) => { release = r; });
  const r = await start(model(), { holdConnect: (qid) => (qid === 1 ? held : undefined) });
  try {
    const p = track(Controller.connect({ ...BASE, trsvcid: r.target.port }));
    await until(() => r.conn(1) !== undefined, 'I/O queue Connect sent');
    r.conn(0)?.socket.destroy();
    await until(() => calls.length === 1, 'controller destroyed');
    const lost = calls[0]?.err;
    assert.equal(lost?.code, ErrorCode.CONTROLLER_LOST);
    const cause = lost?.cause as NvmfNbdError | undefined;
    assert.equal(cause?.code, ErrorCode.CONNECTION_CLOSED);
    assert.equal(lost?.message, `controller 7: queue 0 lost: ${cause?.message}`);
    assert.match(cause?.message ?? '', /^queue 0/);
    assert.equal(p.done, false);
    release();
    const e = await rejectsCode(p.promise, ErrorCode.CONNECTION_CLOSED);
    assert.equal(e.message, `controller ${SUBNQN}: closed during bring-up`);
    await until(() => r.conn(1)?.ended === true, 'the late I/O queue is closed', 5000);
  } finally {
    await r.target.close();
  }
});

// ---------------------------------------------------------------- queue options

test('header and data digests and the SQ flow control request apply to every queue, each on its own; off by default', T, async () => {
  for (const o of [{}, { hdgst: true }, { ddgst: true }, { disableSqFlowControl: true }] as const) {
    const r = await rig(model(), {}, { nrIoQueues: 2, ...o });
    try {
      for (const qid of [0, 1, 2]) {
        const c = r.conn(qid);
        assert.equal(c?.opts.hdgst, 'hdgst' in o, `qid ${qid} hdgst ${JSON.stringify(o)}`);
        assert.equal(c?.opts.ddgst, 'ddgst' in o, `qid ${qid} ddgst ${JSON.stringify(o)}`);
        const connect = r.seen.find((s) => s.qid === qid && s.opcode === 0x7f && s.fctype === 0x01);
        assert.equal(((connect?.sqe[46] as number) & 4) !== 0, 'disableSqFlowControl' in o, `qid ${qid} CATTR ${JSON.stringify(o)}`);
      }
      assert.deepEqual([...(await r.ctrl.read(1, 3n, 2))], [...Buffer.alloc(1024)]);
    } finally {
      await r.close();
    }
  }
});

test('I/O queue count defaults to the CPU count (Number of Queues asks for it, 0-based in both halves)', T, async () => {
  const n = os.cpus().length;
  const r = await rig(model(), {}, { nrIoQueues: undefined });
  try {
    const nq = r.seen.filter((s) => s.qid === 0 && s.opcode === 0x09 && (s.sqe.readUInt32LE(40) & 0xff) === 7).map((s) => s.sqe.readUInt32LE(44));
    assert.deepEqual(nq, [((n - 1) | ((n - 1) << 16)) >>> 0]);
    assert.equal(r.ctrl.ioQueueCount, n);
  } finally {
    await r.close();
  }
});

// ---------------------------------------------------------------- DH-HMAC-CHAP wiring

// The controller calls authenticateQueue through the module's export at each use, so a
// wrapper stands in for the whole exchange here (the exchange itself: auth tests).
// eslint-disable-next-line @typescript-eslint/no-require-imports
const authMod = require('../../src/controller/auth') as { authenticateQueue: (qp: QueuePair, o: Record<string, unknown>) => Promise<unknown> };

test('DH-HMAC-CHAP: each queue authenticates with the next T_ID, host and subsystem NQN; admin outcome kept; onAuthenticated and authenticated per queue', T, async (t) => {
  const orig = authMod.authenticateQueue;
  t.after(() => { authMod.authenticateQueue = orig; });
  const calls: Array<{ qid: number; o: Record<string, unknown> }> = [];
  authMod.authenticateQueue = async (qp, o) => {
    calls.push({ qid: qp.qid, o });
    const n = calls.length;
    return { hashId: n, dhgroup: 10 + n, bidirectional: n % 2 === 1 };
  };
  const callbacks: unknown[] = [];
  const dhchap = { secret: generateDhchapKey({}), ctrlSecret: generateDhchapKey({}), onAuthenticated: (e: unknown) => callbacks.push(e) };
  // The fake never asks (no AUTHREQ): a controller secret makes the host authenticate anyway.
  let authRequired = false;
  const r = await rig(model(), {
    respond: (sqe, o) => {
      if (sqe[0] === 0x18 && authRequired) {
        authRequired = false;
        return { ...o, sct: 1, sc: 0x91 };
      }
      return o;
    },
  }, { nrIoQueues: 2, dhchap });
  try {
    assert.deepEqual(calls.map((c) => [c.qid, c.o.tid, c.o.hostnqn, c.o.subnqn, c.o.dhchap === dhchap]), [
      [0, 0, BASE.hostnqn, SUBNQN, true], [1, 1, BASE.hostnqn, SUBNQN, true], [2, 2, BASE.hostnqn, SUBNQN, true],
    ]);
    assert.deepEqual(r.ctrl.authentication, { hashId: 1, dhgroup: 11, bidirectional: true });
    assert.deepEqual(callbacks, [
      { qid: 0, hashId: 1, dhgroup: 11, bidirectional: true },
      { qid: 1, hashId: 2, dhgroup: 12, bidirectional: false },
      { qid: 2, hashId: 3, dhgroup: 13, bidirectional: true },
    ]);
    const events: unknown[] = [];
    r.ctrl.on('authenticated', (e: unknown) => events.push(e));
    // Authentication Required on an admin command: the admin queue authenticates again.
    authRequired = true;
    await r.ctrl.adminCommand(sqeKeepAlive());
    assert.deepEqual(events, [{ qid: 0, hashId: 4, dhgroup: 14, bidirectional: false }]);
    assert.equal(calls[3]?.o.tid, 3);
    assert.deepEqual(r.ctrl.authentication, { hashId: 4, dhgroup: 14, bidirectional: false });
  } finally {
    await r.close();
  }
});

test('DH-HMAC-CHAP: an I/O queue re-authentication does not replace the admin outcome; no onAuthenticated needed', T, async (t) => {
  const orig = authMod.authenticateQueue;
  t.after(() => { authMod.authenticateQueue = orig; });
  let n = 0;
  authMod.authenticateQueue = async () => {
    n++;
    return { hashId: n, dhgroup: 0, bidirectional: false };
  };
  let authRequired = false;
  const r = await start(model(), {});
  // Authentication Required on the first I/O command (queue 1).
  const c = await Controller.connect({ ...BASE, trsvcid: r.target.port, dhchap: { secret: generateDhchapKey({}), ctrlSecret: generateDhchapKey({}) } });
  try {
    assert.equal(n, 2);
    const io = r.conn(1);
    assert.ok(io !== undefined);
    const respond = io.respond.bind(io);
    io.respond = (cid, o = {}) => {
      if (authRequired) {
        authRequired = false;
        respond(cid, { ...o, sct: 1, sc: 0x91 });
        return;
      }
      respond(cid, o);
    };
    const events: Array<{ qid: number }> = [];
    c.on('authenticated', (e: { qid: number }) => events.push(e));
    authRequired = true;
    await c.flush(1);
    assert.deepEqual(events, [{ qid: 1, hashId: 3, dhgroup: 0, bidirectional: false }]);
    assert.deepEqual(c.authentication, { hashId: 1, dhgroup: 0, bidirectional: false });
  } finally {
    await c.close();
    await r.target.close();
  }
});

test('DH-HMAC-CHAP: without a controller secret, or on a discovery controller, the host authenticates only when asked', T, async (t) => {
  const orig = authMod.authenticateQueue;
  t.after(() => { authMod.authenticateQueue = orig; });
  let n = 0;
  authMod.authenticateQueue = async () => {
    n++;
    return { hashId: 1, dhgroup: 0, bidirectional: false };
  };
  const plain = await rig(model(), {}, { dhchap: { secret: generateDhchapKey({}) } });
  try {
    assert.equal(n, 0);
    assert.equal(plain.ctrl.authentication, undefined);
  } finally {
    await plain.close();
  }
  const disc = await rig(model({ namespaces: new Map(), discovery: [] }), {}, {
    discovery: true, subnqn: 'nqn.2014-08.org.nvmexpress.discovery', nrIoQueues: 0, dhchap: { secret: generateDhchapKey({}), ctrlSecret: generateDhchapKey({}) },
  });
  try {
    assert.equal(n, 0);
  } finally {
    await disc.close();
  }
  const always = await rig(model(), {}, { nrIoQueues: 0, dhchap: { secret: generateDhchapKey({}), ctrlSecret: generateDhchapKey({}) } });
  try {
    assert.equal(n, 1);
  } finally {
    await always.close();
  }
});

// ---------------------------------------------------------------- properties

test('4-byte property reads ignore DW1 (VS, CC, CSTS); CAP is read as 8 bytes; CC written with MPS = CAP.MPSMIN', T, async () => {
  const r = await rig(model({ mqes: 45, capTo: 6 }), {
    respond: (sqe, o) => {
      if (sqe[0] !== 0x7f || sqe[4] !== 0x04) return o;
      const off = sqe.readUInt32LE(44);
      if (off === 0x00) return { ...o, dw1: ((o.dw1 ?? 0) & ~(0xf << 16)) | (3 << 16) };
      return { ...o, dw1: 0x5a5a5a5a };
    },
  }, { nrIoQueues: 0 });
  try {
    assert.equal(r.ctrl.version, 0x00020000);
    assert.deepEqual(r.ctrl.cap, { mqes: 45, to: 6, mpsmin: 3, css: 1 });
    const ccWrites = r.seen.filter((s) => isProp(s, 0x00, 0x14)).map((s) => Number(s.sqe.readBigUInt64LE(48)));
    assert.deepEqual(ccWrites, [(4 << 20) | (6 << 16) | (3 << 7) | 1]);
    assert.equal(await r.ctrl.propertyGet(0x08, false), 0x00020000n);
    assert.equal(await r.ctrl.propertyGet(0x1c, false), 1n);
    assert.equal(await r.ctrl.propertyGet(0x00, true), 45n | (6n << 24n) | (1n << 37n) | (3n << 48n));
  } finally {
    await r.close();
  }
});

test('closed controller: adminCommand rejects CONNECTION_CLOSED "controller closed" without touching the queue', T, async () => {
  const r = await rig(model(), {}, { nrIoQueues: 0 });
  await r.ctrl.close();
  const e = await rejectsCode(r.ctrl.propertyGet(0x08, false), ErrorCode.CONNECTION_CLOSED);
  assert.equal(e.message, 'controller closed');
  const e2 = await rejectsCode(r.ctrl.adminCommand(sqeIdentify(1), { dataInLength: 4096 }), ErrorCode.CONNECTION_CLOSED);
  assert.equal(e2.message, 'controller closed');
  await r.target.close();
});

test('enable: each CSTS read may take max(1000 ms, the CAP.TO budget), not the I/O timeout', T, async (t) => {
  const ctrls: Controller[] = [];
  const orig = Controller.prototype.propertyGet;
  Controller.prototype.propertyGet = function propertyGet(this: Controller, ...a: Parameters<typeof orig>) {
    ctrls.push(this);
    return orig.apply(this, a);
  };
  t.after(() => { Controller.prototype.propertyGet = orig; });
  for (const [capTo, limit] of [[1, 1000], [4, 2000]] as const) {
    const r = await start(model({ capTo }), { take: (s) => isProp(s, 0x04, 0x1c) });
    try {
      t.mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 0 });
      const p = track(Controller.connect({ ...BASE, trsvcid: r.target.port, nrIoQueues: 0, ioTimeoutMs: 40 }));
      await until(() => r.taken.length === 1, 'CSTS read sent');
      const admin = adminOf(ctrls[ctrls.length - 1] as Controller);
      t.mock.timers.tick(limit - 1);
      checkDeadlines(admin);
      assert.equal(admin.connected, true, `CAP.TO ${capTo}: still waiting at ${limit - 1} ms`);
      t.mock.timers.tick(1);
      checkDeadlines(admin);
      assert.equal(admin.connected, false, `CAP.TO ${capTo}: timed out at ${limit} ms`);
      const e = await rejectsCode(p.promise, ErrorCode.TIMEOUT);
      assert.match(e.message, /^queue 0: command 0x7f \(cid \d+\) timed out$/);
    } finally {
      t.mock.timers.reset();
      await r.target.close();
    }
  }
});

// ---------------------------------------------------------------- shutdown

test('close(): CC.SHN = 01b replaces SHN 10b and keeps every other CC bit; alive is false from the start', T, async () => {
  const cc = (4 << 20) | (6 << 16) | (2 << 14) | (5 << 7) | 1;
  const m = model({ regs: { cc, csts: 1 } });
  const r = await rig(m, {}, { nrIoQueues: 0 });
  const before = r.seen.length;
  const closing = r.ctrl.close();
  assert.equal(r.ctrl.alive, false);
  await closing;
  const writes = r.seen.slice(before).filter((s) => isProp(s, 0x00, 0x14)).map((s) => Number(s.sqe.readBigUInt64LE(48)));
  assert.deepEqual(writes, [(4 << 20) | (6 << 16) | (1 << 14) | (5 << 7) | 1]);
  await r.target.close();
});

test('close(): the budget from RTD3E ends exactly at the deadline (polls at 0, 5, 15, 35, 75, 155 ms for 155 ms; 155.5 ms rounds up to 156: one more); 1 µs rounds up to 1 ms', T, async (t) => {
  for (const [rtd3e, polls] of [[155_000, 6], [155_500, 7], [1, 2]] as const) {
    const r = await rig(model(), { identify: (b) => b.writeUInt32LE(rtd3e, 88), respond: (sqe, o) => (isPropSqe(sqe, 0x1c) ? { ...o, dw0: (o.dw0 ?? 0) & ~0xc } : o) }, { nrIoQueues: 0 });
    try {
      const before = count(r.seen, (s) => isProp(s, 0x04, 0x1c));
      t.mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 0 });
      const closed = track(r.ctrl.close());
      for (let i = 0; i < 20 && !closed.done; i++) {
        await until(() => count(r.seen, (s) => isProp(s, 0x04, 0x1c)) - before > i || closed.done, `SHST poll ${i + 1}`);
        await turns(5);
        if (closed.done) break;
        t.mock.timers.tick([5, 10, 20, 40, 80][i] ?? 100);
      }
      await until(() => closed.done, 'close() returned');
      assert.equal(count(r.seen, (s) => isProp(s, 0x04, 0x1c)) - before, polls, `RTD3E ${rtd3e}`);
    } finally {
      t.mock.timers.reset();
      await r.target.close();
    }
  }
});

function isPropSqe(sqe: Buffer, offset: number): boolean {
  return sqe[0] === 0x7f && sqe[4] === 0x04 && sqe.readUInt32LE(44) === offset;
}

test('close(): the CC read and the CC write each get 5 s, not the I/O timeout; then the sockets close', T, async (t) => {
  for (const which of [0x04, 0x00] as const) {
    let hold = false;
    const r = await start(model(), { take: (s) => hold && isProp(s, which, 0x14) });
    try {
      t.mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 0 });
      const c = await Controller.connect({ ...BASE, trsvcid: r.target.port, nrIoQueues: 0, ioTimeoutMs: 40 });
      const closes: unknown[] = [];
      c.on('close', (e: unknown) => closes.push(e));
      hold = true;
      const closed = track(c.close());
      await until(() => r.taken.length === 1, 'CC command sent');
      t.mock.timers.tick(4999);
      checkDeadlines(adminOf(c));
      assert.equal(adminOf(c).connected, true, `fctype ${which}: still waiting at 4999 ms`);
      t.mock.timers.tick(1);
      checkDeadlines(adminOf(c));
      await until(() => closed.done, 'close() gave up');
      assert.deepEqual(closes, [undefined]);
      assert.equal(c.alive, false);
    } finally {
      t.mock.timers.reset();
      await r.target.close();
    }
  }
});

// ---------------------------------------------------------------- destroy, whenClosed, stats

test('destroy(): alive is already false for error listeners; without an error only close(undefined); whenClosed waits for every socket', T, async () => {
  const r = await rig(model(), {}, { nrIoQueues: 2 });
  try {
    const got: string[] = [];
    r.ctrl.on('error', (e: NvmfNbdError) => got.push(`error:${e.code}:${r.ctrl.alive}`));
    r.ctrl.on('close', (e?: NvmfNbdError) => got.push(`close:${e?.code}:${r.ctrl.alive}`));
    const sockets = [adminOf(r.ctrl), ...ioQueues(r.ctrl)].map((q) => (q as unknown as { socket: { closed: boolean } }).socket);
    r.ctrl.destroy();
    assert.deepEqual(got, ['close:undefined:false']);
    await r.ctrl.whenClosed();
    assert.deepEqual(sockets.map((s) => s.closed), [true, true, true]);
  } finally {
    await r.target.close();
  }
  const s = await rig(model(), {}, { nrIoQueues: 1 });
  try {
    const got: string[] = [];
    s.ctrl.on('error', (e: NvmfNbdError) => got.push(`error:${e.code}:${s.ctrl.alive}`));
    s.ctrl.destroy(new NvmfNbdError(ErrorCode.CONTROLLER_LOST, 'x'));
    assert.deepEqual(got, [`error:${ErrorCode.CONTROLLER_LOST}:false`]);
  } finally {
    await s.target.close();
  }
});

test('a lost I/O queue without an error: CONTROLLER_LOST "queue N closed" as the cause', T, async () => {
  const r = await rig(model(), {}, { nrIoQueues: 2 });
  try {
    const closed = new Promise<NvmfNbdError | undefined>((res) => r.ctrl.once('close', res));
    ioQueues(r.ctrl)[0]?.destroy();
    const e = await closed;
    assert.equal(e?.code, ErrorCode.CONTROLLER_LOST);
    assert.equal(e?.message, 'controller 7: queue 1 lost: queue 1 closed');
    assert.equal((e?.cause as NvmfNbdError | undefined)?.code, ErrorCode.CONNECTION_CLOSED);
    assert.equal((e?.cause as NvmfNbdError | undefined)?.message, 'queue 1 closed');
  } finally {
    await r.target.close();
  }
});

test('stats(): the controller ID and each queue\'s own counters', T, async () => {
  const r = await rig(model(), {}, { nrIoQueues: 2 });
  try {
    await r.ctrl.read(1, 0n, 1);
    const s = r.ctrl.stats();
    assert.equal(s.cntlid, 7);
    assert.deepEqual(s.admin, adminOf(r.ctrl).stats());
    assert.deepEqual(s.io, ioQueues(r.ctrl).map((q) => q.stats()));
    assert.deepEqual(s.io.map((q) => q.qid), [1, 2]);
  } finally {
    await r.close();
  }
});

test('writeZeroes: a failing part rejects with its status after every part settled', T, async () => {
  const r = await rig(model(), {}, { nrIoQueues: 2 });
  try {
    await r.ctrl.writeZeroes(1, 0n, 64);
    const e = await rejectsCode(r.ctrl.writeZeroes(1, 60n, 8), ErrorCode.NVME_STATUS);
    assert.match(e.message, /0x8/);
  } finally {
    await r.close();
  }
});

// ---------------------------------------------------------------- ANA

const ANA_LOG: AnaLog = {
  chgcnt: 0x1122334455n,
  groups: [
    { grpid: 3, chgcnt: 0x77n, state: 0x01, nsids: [1] },
    { grpid: 9, chgcnt: 0x99n, state: 0x02, nsids: [] },
  ],
};

/** Identify patch: CMIC ANA, NANAGRPID, NN, OAES. */
function anaIdentify(o: { nanagrpid?: number; nn?: number; oaes?: number } = {}): (b: Buffer) => void {
  return (b) => {
    b[76] = 0x08;
    b.writeUInt32LE(o.nanagrpid ?? 2, 348);
    if (o.nn !== undefined) b.writeUInt32LE(o.nn, 516);
    b.writeUInt32LE((o.oaes ?? 0) >>> 0, 92);
  };
}

/** Answer every ANA log read with `log()` padded to the length asked. */
function anaTaker(log: () => Buffer | 'status' | 'hold', lengths?: number[]): (s: Seen) => boolean {
  return (s) => {
    if (!isLog(s, 0x0c)) return false;
    const cdw10 = s.sqe.readUInt32LE(40);
    const n = (((cdw10 >>> 16) | ((s.sqe.readUInt32LE(44) & 0xffff) << 16)) + 1) * 4;
    lengths?.push(n);
    const l = log();
    if (l === 'hold') return true;
    if (l === 'status') answer(s, { sc: 0x02 });
    else {
      const b = Buffer.alloc(n);
      l.copy(b);
      answer(s, {}, b);
    }
    return true;
  };
}

test('ANA log at bring-up: read with RAE clear, NSID FFFFFFFFh, offset 0; parsed into anaLog; ANA change notices configured with namespace notices', T, async () => {
  const lengths: number[] = [];
  const r = await rig(model(), { identify: anaIdentify({ oaes: (1 << 8) | (1 << 11) }), take: anaTaker(() => encodeAnaLog(ANA_LOG), lengths) }, { nrIoQueues: 0 });
  try {
    assert.equal(r.ctrl.anaReporting, true);
    assert.deepEqual(r.ctrl.anaLog, ANA_LOG);
    const reads = r.seen.filter((s) => isLog(s, 0x0c));
    assert.equal(reads.length, 1);
    const sqe = reads[0]!.sqe;
    assert.equal(sqe.readUInt32LE(4), 0xffffffff, 'NSID');
    assert.equal(sqe.readUInt32LE(40) & 0x8000, 0, 'RAE clear');
    assert.equal((sqe.readUInt32LE(40) >>> 8) & 0x7f, 0, 'LSP 0');
    assert.equal(sqe.readUInt32LE(48), 0, 'offset');
    assert.deepEqual(lengths, [4096]);
    const aec = r.seen.filter((s) => s.qid === 0 && s.opcode === 0x09 && (s.sqe.readUInt32LE(40) & 0xff) === 0x0b).map((s) => s.sqe.readUInt32LE(44));
    assert.deepEqual(aec, [(1 << 8) | (1 << 11)]);
    await until(() => count(r.seen, isAer) === 1, 'AER posted');
  } finally {
    await r.close();
  }
});

test('ANA log size: header + 32 B per group (1..1024) + 4 B per NSID (NN, 1024 when 0, capped by maxNamespaces), at least 4 KiB', T, async () => {
  const cases: Array<[number, number, number | undefined, number]> = [
    [0, 0, undefined, 16 + 32 + 4 * 1024],
    [2000, 100, undefined, 16 + 32 * 1024 + 4 * 100],
    [1024, 1, undefined, 16 + 32 * 1024 + 4],
    [3, 10_000, undefined, 16 + 96 + 4 * 4096],
    [3, 10_000, 2000, 16 + 96 + 4 * 2000],
    [5, 0, 1000, 16 + 160 + 4 * 1000],
    [1, 4, undefined, 4096],
    [120, 200, undefined, 16 + 3840 + 800],
  ];
  for (const [nanagrpid, nn, maxNamespaces, want] of cases) {
    const lengths: number[] = [];
    const r = await rig(model(), { identify: anaIdentify({ nanagrpid, nn }), take: anaTaker(() => encodeAnaLog(ANA_LOG), lengths) }, { nrIoQueues: 0, maxNamespaces });
    try {
      assert.deepEqual(lengths, [want], `NANAGRPID ${nanagrpid} NN ${nn} max ${maxNamespaces}`);
    } finally {
      await r.close();
    }
  }
});

test('ANA log at bring-up: a malformed log or an error status is not fatal (anaLog stays undefined); a lost queue during the read is', T, async () => {
  for (const bad of [() => Buffer.from([1, 0, 0, 0, 0, 0, 0, 0, 5, 0]), () => 'status' as const]) {
    const r = await rig(model(), { identify: anaIdentify(), take: anaTaker(bad) }, { nrIoQueues: 1 });
    try {
      assert.equal(r.ctrl.anaLog, undefined);
      assert.equal(r.ctrl.alive, true);
      assert.equal(r.ctrl.ioQueueCount, 1);
    } finally {
      await r.close();
    }
  }
  const r = await start(model(), { identify: anaIdentify(), take: (s) => { if (isLog(s, 0x0c)) { s.c.socket.destroy(); return true; } return false; } });
  try {
    await rejectsCode(Controller.connect({ ...BASE, trsvcid: r.target.port, nrIoQueues: 0 }), ErrorCode.CONNECTION_CLOSED);
  } finally {
    await r.target.close();
  }
});

test('refreshAnaLog(): reads again, keeps and returns the new log and emits ana with it', T, async () => {
  let log: AnaLog = ANA_LOG;
  const r = await rig(model(), { identify: anaIdentify(), take: anaTaker(() => encodeAnaLog(log)) }, { nrIoQueues: 0 });
  try {
    const events: AnaLog[] = [];
    r.ctrl.on('ana', (l: AnaLog) => events.push(l));
    log = { chgcnt: 5n, groups: [{ grpid: 4, chgcnt: 1n, state: 0x03, nsids: [1] }] };
    const got = await r.ctrl.refreshAnaLog();
    assert.deepEqual(got, log);
    assert.deepEqual(r.ctrl.anaLog, log);
    assert.deepEqual(events, [log]);
  } finally {
    await r.close();
  }
});

// ---------------------------------------------------------------- asynchronous events

interface AerRig extends Awaited<ReturnType<typeof rig>> {
  /** Complete the outstanding AER with `dw0`, then wait until the host posted the next one. */
  fire(dw0: number): void;
  aers(): Seen[];
}

async function aerRig(m: ControllerModel, h: Hooks, o: Partial<ControllerOptions> = {}): Promise<AerRig> {
  const take = h.take;
  const r = await rig(m, { ...h, take: (s) => isAer(s) || take?.(s) === true }, { nrIoQueues: 0, ...o });
  await until(() => count(r.seen, isAer) === 1, 'first AER posted');
  const aers = (): Seen[] => r.taken.filter(isAer);
  let answered = 0;
  return {
    ...r,
    aers,
    fire: (dw0) => {
      const a = aers()[answered++];
      assert.ok(a !== undefined, 'an AER outstanding');
      answer(a, { dw0 });
    },
  };
}

test('AER: the aen event carries type, info and log page; notices we do not act on re-post the AER at once', T, async () => {
  const r = await aerRig(model(), { identify: (b) => b.writeUInt32LE(1 << 8, 92) });
  try {
    const aens: unknown[] = [];
    r.ctrl.on('aen', (e: unknown) => aens.push(e));
    const logsBefore = count(r.seen, (s) => s.opcode === 0x02);
    // type 1 (SMART) info 0, type 0 (error) info 0, notice info 5, ANA change without ANA reporting.
    for (const [i, dw0] of [0x00010001, 0x00020000, 0x00470502, 0x000c0302].entries()) {
      r.fire(dw0);
      await until(() => r.aers().length === i + 2, `AER re-posted after ${dw0.toString(16)}`);
    }
    assert.deepEqual(aens, [
      { type: 1, info: 0, lid: 1 }, { type: 0, info: 0, lid: 2 }, { type: 2, info: 5, lid: 0x47 }, { type: 2, info: 3, lid: 0x0c },
    ]);
    assert.equal(count(r.seen, (s) => s.opcode === 0x02), logsBefore, 'no log page read for any of them');
  } finally {
    await r.close();
  }
});

test('AER: an ANA change notice re-reads the ANA log, emits ana, then re-posts the AER; a bad log is a warning; a non-notice type with info 3 is not acted on', T, async () => {
  let log: AnaLog | 'bad' = ANA_LOG;
  const r = await aerRig(model(), {
    identify: anaIdentify({ oaes: 1 << 11 }),
    take: anaTaker(() => (log === 'bad' ? Buffer.from([0, 0, 0, 0, 0, 0, 0, 0, 9, 0]) : encodeAnaLog(log))),
  });
  try {
    const events: AnaLog[] = [];
    const warnings: NvmfNbdError[] = [];
    r.ctrl.on('ana', (l: AnaLog) => events.push(l));
    r.ctrl.on('warning', (e: NvmfNbdError) => warnings.push(e));
    const next: AnaLog = { chgcnt: 8n, groups: [{ grpid: 3, chgcnt: 0x78n, state: 0x04, nsids: [1] }] };
    log = next;
    r.fire(0x000c0302);
    await until(() => r.aers().length === 2, 'AER re-posted');
    assert.deepEqual(events, [next]);
    assert.deepEqual(r.ctrl.anaLog, next);
    const order = r.seen.filter((s) => isLog(s, 0x0c) || isAer(s)).map((s) => (isAer(s) ? 'aer' : 'log'));
    assert.deepEqual(order, ['log', 'aer', 'log', 'aer'], 'the log read before the next AER');
    log = 'bad';
    r.fire(0x000c0302);
    await until(() => r.aers().length === 3, 'AER re-posted after a bad log');
    assert.equal(warnings.length, 1);
    assert.equal(warnings[0]?.code, ErrorCode.ANA_LOG_INVALID);
    assert.deepEqual(r.ctrl.anaLog, next, 'kept');
    // Type 1 with info 3 is not an ANA change.
    const logs = count(r.seen, (s) => isLog(s, 0x0c));
    r.fire(0x000c0301);
    await until(() => r.aers().length === 4, 'AER re-posted');
    assert.equal(count(r.seen, (s) => isLog(s, 0x0c)), logs);
    assert.equal(events.length, 1);
  } finally {
    await r.close();
  }
});

test('AER: no deadline (an AER outstanding far past the I/O timeout keeps the association)', T, async (t) => {
  const r = await start(model(), { identify: (b) => b.writeUInt32LE(1 << 8, 92), take: isAer });
  try {
    t.mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 0 });
    const c = await Controller.connect({ ...BASE, trsvcid: r.target.port, nrIoQueues: 0, ioTimeoutMs: 40 });
    await until(() => r.taken.length === 1, 'AER posted');
    t.mock.timers.tick(600_000);
    checkDeadlines(adminOf(c));
    assert.equal(c.alive, true);
    t.mock.timers.reset();
    await c.close();
  } finally {
    t.mock.timers.reset();
    await r.target.close();
  }
});

test('namespace notice: Changed Namespace List read (LID 04h, 4 KiB, NSID FFFFFFFFh, RAE clear) before the next AER; only the listed namespaces are identified', T, async () => {
  const m: ControllerModel = model({ namespaces: new Map<number, NsModel>([[1, { data: Buffer.alloc(64 * 512), lbaSize: 512 }], [2, { data: Buffer.alloc(8 * 4096), lbaSize: 4096 }], [3, { data: Buffer.alloc(16 * 512), lbaSize: 512 }]]) });
  let list: number[] = [2];
  const r = await aerRig(m, {
    identify: (b) => b.writeUInt32LE(1 << 8, 92),
    take: (s) => {
      if (!isLog(s, 0x04)) return false;
      const b = Buffer.alloc(4096);
      list.forEach((n, i) => b.writeUInt32LE(n >>> 0, i * 4));
      answer(s, {}, b);
      return true;
    },
  });
  try {
    const changes: NamespaceChanges[] = [];
    r.ctrl.on('namespaces', (c: NamespaceChanges) => changes.push(c));
    m.namespaces.set(2, { data: Buffer.alloc(16 * 4096), lbaSize: 4096 });
    m.namespaces.set(3, { data: Buffer.alloc(32 * 512), lbaSize: 512 });
    const aens: unknown[] = [];
    r.ctrl.on('aen', (e: unknown) => aens.push(e));
    r.fire(0x00040002);
    await until(() => changes.length === 1, 'namespaces event');
    assert.deepEqual(aens, [{ type: 2, info: 0, lid: 4 }]);
    assert.deepEqual(changes[0], { added: [], removed: [], resized: [2] });
    const read = r.seen.find((s) => isLog(s, 0x04));
    assert.equal(read?.sqe.readUInt32LE(4), 0xffffffff);
    assert.equal((read?.sqe.readUInt32LE(40) ?? 0) & 0x8000, 0, 'RAE clear');
    assert.equal((read?.sqe.readUInt32LE(40) ?? 0) >>> 16, 1023, '4 KiB');
    const order = r.seen.filter((s) => isLog(s, 0x04) || isAer(s)).map((s) => (isAer(s) ? 'aer' : 'log'));
    assert.deepEqual(order.slice(0, 3), ['aer', 'log', 'aer']);
    // FFFFFFFFh first: more than 1024 changed, rescan everything (3 resized too).
    list = [0xffffffff];
    m.namespaces.set(1, { data: Buffer.alloc(32 * 512), lbaSize: 512 });
    r.fire(0x00040002);
    await until(() => changes.length === 2, 'second namespaces event');
    assert.deepEqual(changes[1], { added: [], removed: [], resized: [1, 3] });
    await until(() => r.aers().length === 3, 'AER re-posted');
    assert.equal(r.ctrl.pendingRescans, 0);
  } finally {
    await r.close();
  }
});

test('namespace notice: a failed Changed Namespace List read is a warning and the AER is re-posted anyway', T, async () => {
  const r = await aerRig(model(), {
    identify: (b) => b.writeUInt32LE(1 << 8, 92),
    take: (s) => {
      if (!isLog(s, 0x04)) return false;
      answer(s, { sc: 0x09 });
      return true;
    },
  });
  try {
    const warnings: NvmfNbdError[] = [];
    r.ctrl.on('warning', (e: NvmfNbdError) => warnings.push(e));
    r.fire(0x00040002);
    await until(() => r.aers().length === 2 && warnings.length === 1, 'AER re-posted and a warning');
    assert.equal(warnings[0]?.code, ErrorCode.NVME_STATUS);
    assert.equal(r.ctrl.alive, true);
  } finally {
    await r.close();
  }
});

test('namespace notices during a rescan: one runs, one waits with the union of the NSIDs; a full rescan absorbs lists; nothing after destroy', T, async () => {
  const m: ControllerModel = model({
    namespaces: new Map<number, NsModel>([1, 2, 3, 4, 5].map((n) => [n, { data: Buffer.alloc(8 * 512 * n), lbaSize: 512 }])),
  });
  const lists: number[][] = [];
  let holdIdentify = false;
  const r = await aerRig(m, {
    identify: (b) => b.writeUInt32LE(1 << 8, 92),
    take: (s) => {
      if (isLog(s, 0x04)) {
        const b = Buffer.alloc(4096);
        (lists.shift() ?? []).forEach((n, i) => b.writeUInt32LE(n >>> 0, i * 4));
        answer(s, {}, b);
        return true;
      }
      return holdIdentify && s.qid === 0 && s.opcode === 0x06 && (s.sqe.readUInt32LE(40) & 0xff) === 0;
    },
  });
  try {
    const identifies = (): number[] => r.seen.filter((s) => s.qid === 0 && s.opcode === 0x06 && (s.sqe.readUInt32LE(40) & 0xff) === 0).map((s) => s.sqe.readUInt32LE(4));
    const release = (): void => {
      for (const s of r.taken.filter((x) => x.opcode === 0x06 && !(x as { done?: boolean }).done)) {
        (s as { done?: boolean }).done = true;
        const ns = m.namespaces.get(s.sqe.readUInt32LE(4));
        if (ns === undefined) answer(s, { sc: 0x0b });
        else answer(s, {}, identifyNamespaceData(ns));
      }
    };
    const changes: NamespaceChanges[] = [];
    r.ctrl.on('namespaces', (c: NamespaceChanges) => changes.push(c));
    for (const n of [1, 2, 3, 4, 5]) m.namespaces.set(n, { data: Buffer.alloc(16 * 512 * n), lbaSize: 512 });
    const base = identifies().length;
    holdIdentify = true;
    lists.push([1]);
    r.fire(0x00040002);
    await until(() => identifies().length === base + 1, 'rescan 1 identifying');
    assert.equal(r.ctrl.pendingRescans, 1);
    lists.push([3]);
    r.fire(0x00040002);
    await until(() => r.aers().length === 3, 'second notice read');
    await turns(5);
    assert.equal(r.ctrl.pendingRescans, 2);
    lists.push([5, 2]);
    r.fire(0x00040002);
    await until(() => r.aers().length === 4, 'third notice read');
    await turns(5);
    assert.equal(r.ctrl.pendingRescans, 2, 'merged into the waiting one');
    holdIdentify = false;
    release();
    await until(() => changes.length === 2, 'two rescans');
    assert.deepEqual(changes, [{ added: [], removed: [], resized: [1] }, { added: [], removed: [], resized: [2, 3, 5] }]);
    assert.deepEqual(identifies().slice(base), [1, 2, 3, 5]);
    await until(() => r.ctrl.pendingRescans === 0, 'idle');
    // A full rescan pending absorbs a later list.
    for (const n of [1, 2, 3, 4, 5]) m.namespaces.set(n, { data: Buffer.alloc(32 * 512 * n), lbaSize: 512 });
    holdIdentify = true;
    lists.push([2]);
    r.fire(0x00040002);
    await until(() => identifies().length === base + 5, 'rescan 3 identifying');
    lists.push([0xffffffff]);
    r.fire(0x00040002);
    await until(() => r.aers().length === 6, 'full-rescan notice read');
    lists.push([4]);
    r.fire(0x00040002);
    await until(() => r.aers().length === 7, 'list notice read');
    await turns(5);
    assert.equal(r.ctrl.pendingRescans, 2);
    holdIdentify = false;
    release();
    await until(() => changes.length === 4, 'two more rescans');
    assert.deepEqual(changes.slice(2), [{ added: [], removed: [], resized: [2] }, { added: [], removed: [], resized: [1, 3, 4, 5] }]);
    await until(() => r.ctrl.pendingRescans === 0, 'idle');
    // Destroyed with a rescan waiting: the waiting one never runs.
    holdIdentify = true;
    lists.push([1]);
    r.fire(0x00040002);
    await until(() => identifies().length === base + 11, 'rescan 5 identifying');
    lists.push([2]);
    r.fire(0x00040002);
    await until(() => r.aers().length === 9, 'notice read');
    await turns(5);
    assert.equal(r.ctrl.pendingRescans, 2);
    const warnings: unknown[] = [];
    r.ctrl.on('warning', (e: unknown) => warnings.push(e));
    let applied = 0;
    const apply = r.ctrl.applyNamespaceChanges.bind(r.ctrl);
    r.ctrl.applyNamespaceChanges = (ch?: readonly number[]) => { applied++; return apply(ch); };
    r.ctrl.destroy();
    await until(() => !(r.ctrl as unknown as { nsRunning: boolean }).nsRunning, 'the running rescan ended');
    assert.equal(applied, 0, 'the waiting rescan never started');
    assert.deepEqual(warnings, [], 'no warning for a lost association');
    await r.target.close();
  } catch (err) {
    await r.target.close();
    throw err;
  }
});

// ---------------------------------------------------------------- keep-alive and watchdog

async function kaRig(t: TestContext, h: Hooks, o: Partial<ControllerOptions>): Promise<Rig & { ctrl: Controller; kas(): Seen[] }> {
  const r = await start(model(), h);
  t.mock.timers.enable({ apis: ['setTimeout', 'setInterval', 'Date'], now: 0 });
  try {
    const ctrl = await Controller.connect({ ...BASE, trsvcid: r.target.port, ...o });
    return { ...r, ctrl, kas: () => r.seen.filter(isKa) };
  } catch (err) {
    t.mock.timers.reset();
    await r.target.close();
    throw err;
  }
}

async function kaDone(r: { ctrl: Controller }, what: string): Promise<void> {
  await until(() => kaSentAt(r.ctrl) === undefined, what);
}

test('keep-alive: every KATO/2 (at least 50 ms); an outstanding one is not repeated; unanswered for more than KATO fails the association', T, async (t) => {
  for (const [kato, period] of [[1000, 500], [80, 50], [130, 65]] as const) {
    let hold = false;
    const r = await kaRig(t, { take: (s) => hold && isKa(s) }, { kato, watchdogMs: 0, nrIoQueues: 0, ioTimeoutMs: 60_000 });
    try {
      const closes: Array<NvmfNbdError | undefined> = [];
      r.ctrl.on('close', (e?: NvmfNbdError) => closes.push(e));
      r.ctrl.on('error', () => undefined);
      t.mock.timers.tick(period - 1);
      assert.equal(kaSentAt(r.ctrl), undefined, `KATO ${kato}: none before ${period} ms`);
      t.mock.timers.tick(1);
      assert.equal(kaSentAt(r.ctrl), period);
      await until(() => r.kas().length === 1, 'Keep Alive received');
      await kaDone(r, 'answered');
      hold = true;
      t.mock.timers.tick(period);
      assert.equal(kaSentAt(r.ctrl), 2 * period);
      await until(() => r.taken.length === 1, 'second Keep Alive held');
      // KATO after sending it: still alive (more than KATO is needed), no second one.
      let elapsed = 0;
      while (elapsed + period <= kato) {
        t.mock.timers.tick(period);
        elapsed += period;
        assert.equal(kaSentAt(r.ctrl), 2 * period, 'not sent again while one is outstanding');
      }
      await turns(10);
      assert.equal(r.ctrl.alive, true, `KATO ${kato}: alive ${elapsed} ms after the Keep Alive`);
      assert.equal(r.kas().length, 2);
      t.mock.timers.tick(period);
      assert.equal(r.ctrl.alive, false);
      assert.equal(closes[0]?.code, ErrorCode.KEEPALIVE_TIMEOUT);
      assert.equal(closes[0]?.message, `controller 7: keep-alive not answered within ${kato} ms`);
    } finally {
      t.mock.timers.reset();
      await r.target.close();
    }
  }
});

test('keep-alive: its own command deadline lies past KATO (2·KATO), not the I/O timeout: the KATO check decides', T, async (t) => {
  const r = await kaRig(t, { take: isKa }, { kato: 1000, watchdogMs: 0, nrIoQueues: 0, ioTimeoutMs: 80 });
  try {
    t.mock.timers.tick(500);
    await until(() => r.taken.length === 1, 'Keep Alive held');
    t.mock.timers.tick(1000);
    checkDeadlines(adminOf(r.ctrl));
    assert.equal(r.ctrl.alive, true, 'KATO not yet exceeded, no queue timeout');
    t.mock.timers.tick(500);
    assert.equal(r.ctrl.alive, false);
  } finally {
    t.mock.timers.reset();
    await r.target.close();
  }
});

test('keep-alive: an error answer fails the association with KEEPALIVE_TIMEOUT "keep-alive failed" and the status as cause', T, async (t) => {
  const r = await kaRig(t, { take: (s) => { if (isKa(s)) { answer(s, { sc: 0x06 }); return true; } return false; } }, { kato: 1000, watchdogMs: 0, nrIoQueues: 0 });
  try {
    const closed = new Promise<NvmfNbdError | undefined>((res) => r.ctrl.once('close', res));
    r.ctrl.on('error', () => undefined);
    t.mock.timers.tick(500);
    const e = await closed;
    assert.equal(e?.code, ErrorCode.KEEPALIVE_TIMEOUT);
    assert.equal((e?.cause as NvmfNbdError | undefined)?.code, ErrorCode.NVME_STATUS);
    assert.equal(e?.message, `controller 7: keep-alive failed: ${(e?.cause as Error).message}`);
  } finally {
    t.mock.timers.reset();
    await r.target.close();
  }
});

test('keep-alive with TBKAS: every KATO/4, skipped when something was received since the previous tick', T, async (t) => {
  const r = await kaRig(t, { identify: (b) => b.writeUInt32LE(1 << 6, 96) }, { kato: 1000, watchdogMs: 0, nrIoQueues: 1 });
  try {
    assert.equal(r.ctrl.trafficBasedKeepAlive, true);
    t.mock.timers.tick(250);
    assert.equal(kaSentAt(r.ctrl), undefined, 'first tick: bring-up traffic counts');
    t.mock.timers.tick(249);
    assert.equal(kaSentAt(r.ctrl), undefined);
    t.mock.timers.tick(1);
    assert.equal(kaSentAt(r.ctrl), 500, 'a quiet period: Keep Alive');
    await kaDone(r, 'answered');
    t.mock.timers.tick(250);
    assert.equal(kaSentAt(r.ctrl), undefined, 'its answer was traffic');
    t.mock.timers.tick(250);
    assert.equal(kaSentAt(r.ctrl), 1000);
    await kaDone(r, 'answered');
    t.mock.timers.tick(250);
    await r.ctrl.read(1, 0n, 1);
    t.mock.timers.tick(250);
    assert.equal(kaSentAt(r.ctrl), undefined, 'I/O traffic on an I/O queue counts too');
    t.mock.timers.tick(250);
    assert.equal(kaSentAt(r.ctrl), 1750);
    await kaDone(r, 'answered');
    assert.equal(r.kas().length, 3);
  } finally {
    t.mock.timers.reset();
    await r.target.close();
  }
});

test('keep-alive without TBKAS: sent every tick even with traffic', T, async (t) => {
  const r = await kaRig(t, {}, { kato: 1000, watchdogMs: 0, nrIoQueues: 1 });
  try {
    for (let i = 1; i <= 3; i++) {
      await r.ctrl.read(1, 0n, 1);
      t.mock.timers.tick(500);
      assert.equal(kaSentAt(r.ctrl), 500 * i);
      await kaDone(r, `answer ${i}`);
    }
  } finally {
    t.mock.timers.reset();
    await r.target.close();
  }
});

/** Tick `n` keep-alive periods of 500 ms, waiting for each Keep Alive's answer. */
async function periods(t: TestContext, r: { ctrl: Controller }, n: number): Promise<void> {
  for (let i = 0; i < n && r.ctrl.alive; i++) {
    t.mock.timers.tick(500);
    if (r.ctrl.alive) await kaDone(r, 'Keep Alive answered');
  }
}

test('watchdog: a queue with a command waiting and nothing received for more than watchdogMs fails TARGET_UNRESPONSIVE naming it', T, async (t) => {
  const r = await kaRig(t, { take: (s) => s.qid === 1 && s.opcode === 0x02 }, { kato: 1000, watchdogMs: 1000, nrIoQueues: 1, ioTimeoutMs: 600_000 });
  try {
    const closes: Array<NvmfNbdError | undefined> = [];
    r.ctrl.on('close', (e?: NvmfNbdError) => closes.push(e));
    r.ctrl.on('error', () => undefined);
    void r.ctrl.read(1, 0n, 1).catch(() => undefined);
    await until(() => r.taken.length === 1, 'read held');
    await periods(t, r, 3);
    assert.equal(r.ctrl.alive, true, '1000 ms of silence is not more than 1000');
    t.mock.timers.tick(500);
    assert.equal(r.ctrl.alive, false);
    assert.equal(closes[0]?.code, ErrorCode.TARGET_UNRESPONSIVE);
    assert.equal(closes[0]?.message, 'controller 7: queue 1 received nothing for 1500 ms with 1 commands outstanding');
  } finally {
    t.mock.timers.reset();
    await r.target.close();
  }
});

test('watchdog: 2·KATO by default; off with watchdogMs 0; idle queues and queues still receiving never trip it', T, async (t) => {
  {
    const r = await kaRig(t, { take: (s) => s.qid === 1 && s.opcode === 0x02 }, { kato: 1000, nrIoQueues: 1, ioTimeoutMs: 600_000 });
    try {
      const closes: Array<NvmfNbdError | undefined> = [];
      r.ctrl.on('close', (e?: NvmfNbdError) => closes.push(e));
      r.ctrl.on('error', () => undefined);
      void r.ctrl.read(1, 0n, 1).catch(() => undefined);
      await until(() => r.taken.length === 1, 'read held');
      await periods(t, r, 5);
      assert.equal(r.ctrl.alive, true, '2000 ms of silence');
      t.mock.timers.tick(500);
      assert.equal(closes[0]?.message, 'controller 7: queue 1 received nothing for 2500 ms with 1 commands outstanding');
    } finally {
      t.mock.timers.reset();
      await r.target.close();
    }
  }
  {
    const r = await kaRig(t, { take: (s) => s.qid === 1 && s.opcode === 0x02 }, { kato: 1000, watchdogMs: 0, nrIoQueues: 1, ioTimeoutMs: 600_000 });
    try {
      void r.ctrl.read(1, 0n, 1).catch(() => undefined);
      await until(() => r.taken.length === 1, 'read held');
      await periods(t, r, 12);
      assert.equal(r.ctrl.alive, true, 'watchdog off');
    } finally {
      t.mock.timers.reset();
      await r.target.close();
    }
  }
  {
    // Idle I/O queues for 6 s.
    const r = await kaRig(t, {}, { kato: 1000, watchdogMs: 1000, nrIoQueues: 2, ioTimeoutMs: 600_000 });
    try {
      await periods(t, r, 12);
      assert.equal(r.ctrl.alive, true, 'idle queues');
    } finally {
      t.mock.timers.reset();
      await r.target.close();
    }
  }
  {
    // One read stuck, others completing on the same queue each period: it keeps receiving.
    let held = false;
    const r = await kaRig(t, { take: (s) => { if (!held && s.qid === 1 && s.opcode === 0x02) { held = true; return true; } return false; } }, { kato: 1000, watchdogMs: 1000, nrIoQueues: 1, ioTimeoutMs: 600_000 });
    try {
      void r.ctrl.read(1, 0n, 1).catch(() => undefined);
      await until(() => r.taken.length === 1, 'read held');
      for (let i = 0; i < 8; i++) {
        await r.ctrl.read(1, 1n, 1);
        await periods(t, r, 1);
      }
      assert.equal(r.ctrl.alive, true, 'a queue that receives is not silent');
    } finally {
      t.mock.timers.reset();
      await r.target.close();
    }
  }
});

// ---------------------------------------------------------------- after the association ended

/** Count the controller's (private) AER posts; each still runs. */
function spyPostAer(c: Controller): { calls: number } {
  const s = { calls: 0 };
  const inner = c as unknown as { postAer(): void };
  const orig = inner.postAer.bind(c);
  inner.postAer = () => { s.calls++; orig(); };
  return s;
}

test('a lost association is not a warning: ANA log or Changed Namespace List read failing after destroy', T, async () => {
  let holdAna = false;
  const r = await aerRig(model(), {
    identify: anaIdentify({ oaes: (1 << 11) | (1 << 8) }),
    take: (s) => {
      if (isLog(s, 0x04)) return true; // never answered
      return anaTaker(() => (holdAna ? 'hold' : encodeAnaLog(ANA_LOG)))(s);
    },
  });
  try {
    const warnings: unknown[] = [];
    r.ctrl.on('warning', (e: unknown) => warnings.push(e));
    const posts = spyPostAer(r.ctrl);
    holdAna = true;
    r.fire(0x000c0302);
    await until(() => r.taken.filter((s) => isLog(s, 0x0c)).length === 2, 'ANA log read held');
    r.ctrl.destroy();
    await until(() => posts.calls === 1, 'the ANA notice chain ended');
    await turns(5);
    assert.deepEqual(warnings, []);
  } finally {
    await r.target.close();
  }
  const n = await aerRig(model(), { identify: (b) => b.writeUInt32LE(1 << 8, 92), take: (s) => isLog(s, 0x04) });
  try {
    const warnings: unknown[] = [];
    n.ctrl.on('warning', (e: unknown) => warnings.push(e));
    const posts = spyPostAer(n.ctrl);
    n.fire(0x00040002);
    await until(() => n.taken.some((s) => isLog(s, 0x04)), 'Changed Namespace List read held');
    n.ctrl.destroy();
    await until(() => posts.calls === 1, 'the namespace notice chain ended');
    await turns(5);
    assert.deepEqual(warnings, []);
    assert.equal(n.ctrl.pendingRescans, 0);
  } finally {
    await n.target.close();
  }
});

test('during close(): an ANA log answered after close() began posts no new AER', T, async () => {
  let holdCc = false;
  let holdAna = false;
  const m = model();
  const r = await aerRig(m, {
    identify: anaIdentify({ oaes: 1 << 11 }),
    take: (s) => (holdCc && isProp(s, 0x04, 0x14)) || anaTaker(() => (holdAna ? 'hold' : encodeAnaLog(ANA_LOG)))(s),
  });
  try {
    const posts = spyPostAer(r.ctrl);
    const events: unknown[] = [];
    r.ctrl.on('ana', (l: unknown) => events.push(l));
    holdAna = true;
    r.fire(0x000c0302);
    await until(() => r.taken.filter((s) => isLog(s, 0x0c)).length === 2, 'ANA log read held');
    holdCc = true;
    const closed = track(r.ctrl.close());
    await until(() => r.taken.some((s) => isProp(s, 0x04, 0x14)), 'shutdown CC read held');
    const log = r.taken.filter((s) => isLog(s, 0x0c))[1] as Seen;
    const len = (((log.sqe.readUInt32LE(40) >>> 16) | ((log.sqe.readUInt32LE(44) & 0xffff) << 16)) + 1) * 4;
    const data = Buffer.alloc(len);
    encodeAnaLog(ANA_LOG).copy(data);
    answer(log, {}, data);
    await until(() => posts.calls === 1 && events.length === 1, 'ANA notice handled');
    answer(r.taken.find((s) => isProp(s, 0x04, 0x14)) as Seen, { dw0: m.regs?.cc ?? 0 });
    await until(() => closed.done, 'closed');
    assert.equal(r.aers().length, 1, 'no AER after close() began');
    assert.equal(count(r.seen, isAer), 1);
  } finally {
    await r.target.close();
  }
});

test('during close(): a Keep Alive failing then does not turn the orderly close into a failure', T, async (t) => {
  let holdCc = false;
  const m = model();
  const r = await start(m, { take: (s) => isKa(s) || (holdCc && isProp(s, 0x04, 0x14)) });
  t.mock.timers.enable({ apis: ['setTimeout', 'setInterval', 'Date'], now: 0 });
  try {
    const c = await Controller.connect({ ...BASE, trsvcid: r.target.port, kato: 1000, watchdogMs: 0, nrIoQueues: 0 });
    const got: string[] = [];
    c.on('error', (e: NvmfNbdError) => got.push(`error:${e.code}`));
    c.on('close', (e?: NvmfNbdError) => got.push(`close:${e?.code}`));
    t.mock.timers.tick(500);
    await until(() => r.taken.some(isKa), 'Keep Alive held');
    holdCc = true;
    const closed = track(c.close());
    await until(() => r.taken.some((s) => isProp(s, 0x04, 0x14)), 'shutdown CC read held');
    // The Keep Alive's error answer arrives before the CC read's.
    answer(r.taken.find(isKa) as Seen, { sc: 0x06 });
    answer(r.taken.find((s) => isProp(s, 0x04, 0x14)) as Seen, { dw0: m.regs?.cc ?? 0 });
    t.mock.timers.reset();
    await until(() => closed.done, 'closed');
    assert.deepEqual(got, ['close:undefined']);
  } finally {
    t.mock.timers.reset();
    await r.target.close();
  }
});

// ---------------------------------------------------------------- applyNamespaceChanges ordering

test('applyNamespaceChanges: identified in NSID order however named; removed sorted whatever the map order; any single kind of change is an event', T, async () => {
  const ns = (blocks: number, lbaSize = 512): NsModel => ({ data: Buffer.alloc(blocks * lbaSize), lbaSize });
  const m = model({ namespaces: new Map<number, NsModel>([[1, ns(8)], [2, ns(16)], [4, ns(24)], [6, ns(32)]]) });
  const r = await rig(m, {}, { nrIoQueues: 0 });
  try {
    const events: NamespaceChanges[] = [];
    r.ctrl.on('namespaces', (c: NamespaceChanges) => events.push(c));
    const identified = (from: number): number[] => r.seen.slice(from).filter((s) => s.qid === 0 && s.opcode === 0x06 && (s.sqe.readUInt32LE(40) & 0xff) === 0).map((s) => s.sqe.readUInt32LE(4));
    for (const n of [1, 4, 6]) m.namespaces.set(n, ns(40 + n));
    let before = r.seen.length;
    assert.deepEqual(await r.ctrl.applyNamespaceChanges([6, 1, 4]), { added: [], removed: [], resized: [1, 4, 6] });
    assert.deepEqual(identified(before), [1, 4, 6]);
    // Only resized: an event.
    assert.equal(events.length, 1);
    m.namespaces.set(5, ns(5));
    m.namespaces.set(3, ns(3));
    before = r.seen.length;
    assert.deepEqual(await r.ctrl.applyNamespaceChanges([]), { added: [3, 5], removed: [], resized: [] });
    assert.deepEqual(identified(before), [3, 5]);
    assert.equal(events.length, 2);
    // 6 comes before 3 in the map (3 was added later): removed is still sorted.
    m.namespaces.delete(6);
    m.namespaces.delete(3);
    assert.deepEqual(await r.ctrl.applyNamespaceChanges([]), { added: [], removed: [3, 6], resized: [] });
    assert.equal(events.length, 3);
    // One added and one removed.
    m.namespaces.set(7, ns(7));
    m.namespaces.delete(2);
    assert.deepEqual(await r.ctrl.applyNamespaceChanges([]), { added: [7], removed: [2], resized: [] });
    assert.equal(events.length, 4);
    assert.deepEqual(events[3], { added: [7], removed: [2], resized: [] });
    assert.deepEqual([...r.ctrl.namespaces.keys()].sort((a, b) => a - b), [1, 4, 5, 7]);
  } finally {
    await r.close();
  }
});
