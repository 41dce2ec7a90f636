/**
 * Mutation-audit pins (issue 15), third part, for the bring-up of src/controller/controller.ts
 * (lines 1-641 and 888-end): the bring-up budget (exact deadline, cleared after success, no
 * 32-bit timer overflow), a queue that connects after the controller died, digests and SQ flow
 * control per queue, DH-HMAC-CHAP wiring (transaction ids, outcome per queue, callbacks), the
 * 4-byte property reads, CC written with MPS, the CC.SHN write keeping other bits, the shutdown
 * deadlines (RTD3E boundary, 5 s per CC command), destroy/whenClosed/stats. The rig:
 * test/helpers/bringup-rig.ts. Serves `npm run mutate -- src/controller/controller.ts:1-641
 * --tests=mut-ctrl-bringup3,mut-ctrl-bringup4,mut-ctrl-bringup5,...`.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as os from 'node:os';
import { Controller } from '../../src/controller/controller';
import { ErrorCode, NvmfNbdError } from '../../src/errors';
import { generateDhchapKey } from '../../src/wire/dhchap';
import { sqeIdentify, sqeKeepAlive } from '../../src/wire/sqe';
import type { QueuePair } from '../../src/transport/queue-pair';
import { rejectsCode } from '../helpers/assert-code';
import { track, turns, until } from '../helpers/clock';
import { BASE, SUBNQN, T, adminOf, checkDeadlines, count, ioQueues, isProp, isPropSqe, model, rig, spyDestroy, start } from '../helpers/bringup-rig';

// The controller calls authenticateQueue through the module's export at each use, so a
// wrapper stands in for the whole exchange here (the exchange itself: auth tests).
// eslint-disable-next-line @typescript-eslint/no-require-imports
const authMod = require('../../src/controller/auth') as { authenticateQueue: (qp: QueuePair, o: Record<string, unknown>) => Promise<unknown> };

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

test('close(): CC.SHN = 01b replaces SHN 10b and keeps every other CC bit (CC read as 4 bytes, DW1 ignored); alive is false from the start; a concurrent close() does nothing', T, async () => {
  const cc = (4 << 20) | (6 << 16) | (2 << 14) | (5 << 7) | 1;
  const m = model({ regs: { cc, csts: 1 } });
  // Garbage in DW1 of every CC read: a 64-bit read would lose the low bits (EN) in a Number.
  const r = await rig(m, { respond: (sqe, o) => (isPropSqe(sqe, 0x14) ? { ...o, dw1: 0x5a5a5a5a } : o) }, { nrIoQueues: 0 });
  assert.equal(count(r.seen, (s) => isProp(s, 0x00, 0x14)), 0, 'already enabled (EN seen through the DW1 garbage): no CC write');
  const before = r.seen.length;
  const closing = r.ctrl.close();
  assert.equal(r.ctrl.alive, false);
  const again = r.ctrl.close();
  await Promise.all([closing, again]);
  const writes = r.seen.slice(before).filter((s) => isProp(s, 0x00, 0x14)).map((s) => Number(s.sqe.readBigUInt64LE(48)));
  assert.deepEqual(writes, [(4 << 20) | (6 << 16) | (1 << 14) | (5 << 7) | 1]);
  assert.deepEqual(r.seen.slice(before).filter((s) => isProp(s, 0x00, 0x14)).map((s) => s.sqe[40]), [0], 'CC written as 4 bytes');
  assert.equal(count(r.seen.slice(before), (s) => isProp(s, 0x04, 0x14)), 1, 'one shutdown');
  await r.target.close();
});

test('CC is written as a 4-byte property at enable too; destroy() during close() ends it with one close event carrying the error', T, async () => {
  let hold = false;
  const r = await rig(model(), { take: (s) => hold && isProp(s, 0x04, 0x14) }, { nrIoQueues: 1 });
  try {
    assert.deepEqual(r.seen.filter((s) => isProp(s, 0x00, 0x14)).map((s) => s.sqe[40]), [0]);
    const closes: Array<NvmfNbdError | undefined> = [];
    r.ctrl.on('close', (e?: NvmfNbdError) => closes.push(e));
    r.ctrl.on('error', () => undefined);
    hold = true;
    const closing = r.ctrl.close();
    await until(() => r.taken.length === 1, 'shutdown CC read held');
    r.ctrl.destroy(new NvmfNbdError(ErrorCode.CONTROLLER_LOST, 'pulled'));
    await closing;
    assert.deepEqual(closes.map((e) => e?.message), ['pulled']);
  } finally {
    await r.target.close();
  }
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

test('I/O queues get in-capsule data up to IOCCSZ × 16 − 64 bytes; IOCCSZ 4 (the SQE alone) means none', T, async () => {
  for (const [ioccsz, bytes] of [[60, 896], [516, 8192], [4, 0]] as const) {
    const r = await rig(model({ ioccsz }), {}, { nrIoQueues: 1 });
    try {
      const qp = ioQueues(r.ctrl)[0] as QueuePair;
      assert.equal((qp as unknown as { inCapsuleMax: number }).inCapsuleMax, bytes, `IOCCSZ ${ioccsz}`);
    } finally {
      await r.close();
    }
  }
});
