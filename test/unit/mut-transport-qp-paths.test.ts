/**
 * QueuePair survivors of the mutation run (issue 15 item 2): the defaults (queue timeout and
 * its tick, transfer limit, connect budget), every PDU before ICResp, a second ICResp, the CQE
 * fields read at their offsets, status decoding with fields that differ, SQHD repeated, AER
 * bookkeeping on completion, oldest-first teardown and timeout naming, digests on the in-capsule
 * and H2CData paths (target side checks them), H2CData splits at exact MAXH2CDATA multiples,
 * in-band authentication at Connect and on Authentication Required, and the counters.
 */
import { test } from 'node:test';
import type { TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { QueuePair, QueueCommand } from '../../src/transport/queue-pair';
import type { QueuePairOptions } from '../../src/transport/queue-pair';
import type { Cqe } from '../../src/wire/cqe';
import { ErrorCode, NvmfNbdError } from '../../src/errors';
import { encodeCapsuleResp, encodeCqe, encodeIcResp, encodeC2HData, sqeRead, sqeWrite, sqeFlush, sqeAsyncEventRequest } from '../../src/wire';
import { FakeTarget } from '../helpers/fake-target';
import type { FakeConn, ReceivedCommand } from '../helpers/fake-target';
import { rejectsCode } from '../helpers/assert-code';
import { qpOpts, scripted } from '../helpers/qp-scripted';
import { track, turns, until } from '../helpers/clock';

const T = { timeout: 20_000 };

/** Answers every command with success (SQHD following the tail), R2T for writes that wait for one. */
async function echo(c: FakeConn, seen: ReceivedCommand[] = [], queueSize = 8, from = 2): Promise<void> {
  for (let sqhd = from; ; sqhd++) {
    const cmd = await c.nextCommand().catch(() => undefined);
    if (cmd === undefined) return;
    seen.push(cmd);
    if (cmd.sqe.sgl.type === 0x5a && cmd.sqe.opcode === 0x01) {
      c.r2t(cmd.sqe.cid, 0, cmd.sqe.sgl.length);
      await c.receiveH2C(cmd.sqe.cid);
    }
    c.respond(cmd.sqe.cid, { sqhd: sqhd % queueSize });
  }
}

class Recorded extends QueueCommand {
  readonly events: string[];
  constructor(events: string[], readonly name: string) {
    super();
    this.events = events;
  }
  onQpComplete(_cqe: Cqe): void { this.events.push(`${this.name} ok`); }
  onQpError(err: NvmfNbdError): void { this.events.push(`${this.name} ${err.code}`); }
}

// ------------------------------------------------------------------ defaults

test('default transfer limit is 1 MiB: 1 MiB accepted, one byte more refused with the limit', T, async () => {
  const target = await FakeTarget.start(async (c) => {
    await c.acceptConnect();
    const r = await c.nextCommand();
    c.c2h(r.sqe.cid, 0, Buffer.alloc(1 << 20, 3), { last: true });
    c.respond(r.sqe.cid, { sqhd: 2 });
  });
  const o = qpOpts(target.port);
  delete (o as { maxTransfer?: number }).maxTransfer;
  const qp = await QueuePair.connect(o);
  try {
    const e = await rejectsCode(qp.submit(sqeRead(1, 0n, 2049), { dataInLength: (1 << 20) + 1 }), ErrorCode.INVALID_ARGUMENT);
    assert.equal(e.message, `transfer of ${(1 << 20) + 1} bytes exceeds the queue limit ${1 << 20}`);
    const r = await qp.submit(sqeRead(1, 0n, 2048), { dataInLength: 1 << 20 });
    assert.deepEqual(r.data, Buffer.alloc(1 << 20, 3));
    assert.equal(qp.stats().bytesIn, 1 << 20);
  } finally {
    qp.destroy();
    await target.close();
  }
});

test('exactly maxTransfer is accepted both ways (a given dataIn counts by its length)', T, async () => {
  const seen: ReceivedCommand[] = [];
  const { target, qp } = await scripted(async (c) => {
    const r = await c.nextCommand();
    seen.push(r);
    c.c2h(r.sqe.cid, 0, Buffer.alloc(4096, 1), { last: true });
    c.respond(r.sqe.cid, { sqhd: 2 });
    await echo(c, seen);
  }, { maxTransfer: 4096 });
  try {
    const into = Buffer.alloc(4096);
    const r = await qp.submit(sqeRead(1, 0n, 8), { dataIn: into });
    assert.equal(r.data, into);
    assert.deepEqual(into, Buffer.alloc(4096, 1));
    await qp.submit(sqeWrite(1, 0n, 8, false), { dataOut: Buffer.alloc(4096, 2) });
    assert.deepEqual(seen.map((c) => [c.sqe.sgl.type, c.sqe.sgl.length]), [[0x5a, 4096], [0x5a, 4096]]);
    let e = await rejectsCode(qp.submit(sqeRead(1, 0n, 9), { dataIn: Buffer.alloc(4097) }), ErrorCode.INVALID_ARGUMENT);
    assert.equal(e.message, 'transfer of 4097 bytes exceeds the queue limit 4096');
    e = await rejectsCode(qp.submit(sqeRead(1, 0n, 1), { dataIn: Buffer.alloc(512), dataOut: Buffer.alloc(512) }), ErrorCode.INVALID_ARGUMENT);
    assert.equal(e.message, 'bidirectional commands are not supported');
  } finally {
    qp.destroy();
    await target.close();
  }
});

test('a C2HData larger than maxTransfer but within 8 KiB is the command\'s range error, not an oversized PDU', T, async () => {
  const { target, qp, closed } = await scripted(async (c) => {
    const r = await c.nextCommand();
    c.c2h(r.sqe.cid, 0, Buffer.alloc(6000, 1), { last: true });
  }, { maxTransfer: 4096 });
  try {
    await rejectsCode(qp.submit(sqeRead(1, 0n, 8), { dataInLength: 4096 }), ErrorCode.DATA_OUT_OF_RANGE);
    assert.equal((await closed)?.code, ErrorCode.DATA_OUT_OF_RANGE);
  } finally {
    qp.destroy();
    await target.close();
  }
});

/**
 * Mocked clock from 0 before connect, so the queue's one tick timer (armed by Fabrics Connect)
 * is a mocked one too. Node 20's mocked timers do not reschedule on refresh(): only the first
 * tick is under the test's control, enough to place a deadline on it.
 */
async function mockedQueue(t: TestContext, o: Partial<QueuePairOptions>) {
  t.mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 0 });
  const target = await FakeTarget.start(async (c) => {
    await c.acceptConnect();
    for (;;) if (await c.nextCommand().catch(() => undefined) === undefined) return;
  });
  const qp = await QueuePair.connect(qpOpts(target.port, o));
  const closed = track(new Promise<NvmfNbdError | undefined>((r) => qp.once('close', r)));
  return { target, qp, closed };
}

test('the timeout check runs every timeoutMs/8 ms (at most 1 s, at least 5 ms): a deadline on that tick fires there', T, async (t) => {
  // queue timeout 4000 → tick 500; the flush's own timeout 500 puts its deadline on that tick.
  const { target, qp, closed } = await mockedQueue(t, { timeoutMs: 4000 });
  try {
    const f = track(qp.submit(sqeFlush(1), { timeoutMs: 500 }));
    await turns(10);
    t.mock.timers.tick(499);
    await turns(10);
    assert.equal(qp.connected, true, '1 ms before the deadline');
    t.mock.timers.tick(1);
    await until(() => f.done, 'timed out at the deadline', 5000);
    const e = await rejectsCode(f.promise, ErrorCode.TIMEOUT);
    assert.match(e.message, /^queue 1: command 0x0 \(cid \d+\) timed out$/);
    assert.equal(closed.done, true);
  } finally {
    qp.destroy();
    t.mock.timers.reset();
    await target.close();
  }
});

test('queue timeout 16 s: the tick is capped at 1 s; 8 ms: at least 5 ms', T, async (t) => {
  for (const [timeoutMs, tick] of [[16_000, 1000], [8, 5]] as const) {
    const { target, qp } = await mockedQueue(t, { timeoutMs });
    try {
      const f = track(qp.submit(sqeFlush(1), { timeoutMs: tick }));
      await turns(10);
      t.mock.timers.tick(tick - 1);
      await turns(10);
      assert.equal(qp.connected, true, `${timeoutMs}: before the tick`);
      t.mock.timers.tick(1);
      await until(() => f.done, `${timeoutMs}: timed out on the tick`, 5000);
      await rejectsCode(f.promise, ErrorCode.TIMEOUT);
    } finally {
      qp.destroy();
      t.mock.timers.reset();
      await target.close();
    }
  }
});

test('without timeoutMs the queue times out in 30 s (tick 1 s); a command\'s own 1 s deadline meets the first tick', T, async (t) => {
  const { target, qp } = await mockedQueue(t, { timeoutMs: undefined });
  try {
    const f = track(qp.submit(sqeFlush(1), { timeoutMs: 1000 }));
    const g = track(qp.submit(sqeFlush(2)));
    await turns(10);
    t.mock.timers.tick(999);
    await turns(10);
    assert.equal(qp.connected, true);
    t.mock.timers.tick(1);
    await until(() => f.done && g.done, 'timed out', 5000);
    await rejectsCode(f.promise, ErrorCode.TIMEOUT);
  } finally {
    qp.destroy();
    t.mock.timers.reset();
    await target.close();
  }
});

test('a waiting command\'s deadline on the tick fires there, with the in-flight count', T, async (t) => {
  const { target, qp } = await mockedQueue(t, { timeoutMs: 4000, queueSize: 2 });
  try {
    const aer = track(qp.submit(sqeAsyncEventRequest(), { timeoutMs: Infinity }));
    const w = track(qp.submit(sqeFlush(1), { timeoutMs: 500 }));
    await turns(10);
    assert.equal(qp.stats().waiting, 1);
    t.mock.timers.tick(499);
    await turns(10);
    assert.equal(qp.connected, true);
    t.mock.timers.tick(1);
    await until(() => w.done && aer.done, 'the waiter timed out', 5000);
    const e = await rejectsCode(w.promise, ErrorCode.TIMEOUT);
    assert.equal(e.message, 'queue 1: command 0x0 timed out waiting for a submission slot (1 in flight)');
  } finally {
    qp.destroy();
    t.mock.timers.reset();
    await target.close();
  }
});

test('connect budget defaults to 10 s: pending 1 ms before, TIMEOUT with the budget at it', T, async (t) => {
  t.mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 0 });
  // A target that reads nothing: the ICReq is never answered.
  const silent = await FakeTarget.start(async (c) => { c.socket.removeAllListeners('data'); await c.closed; });
  const o = qpOpts(silent.port);
  delete (o as { connectTimeoutMs?: number }).connectTimeoutMs;
  try {
    const p = track(QueuePair.connect(o));
    await until(() => silent.conns.length === 1, 'connected');
    await turns(20);
    t.mock.timers.tick(9999);
    await turns(10);
    assert.equal(p.done, false);
    t.mock.timers.tick(1);
    await until(() => p.done, 'connect timed out', 5000);
    const e = await rejectsCode(p.promise, ErrorCode.TIMEOUT);
    assert.equal(e.message, `queue 1: connect to 127.0.0.1:${silent.port} timed out after 10000 ms`);
  } finally {
    t.mock.timers.reset();
    await silent.close();
  }
});

// ------------------------------------------------------------------ ICResp and the order of PDUs

for (const [what, type, send] of [
  ['an R2T', 9, (c: FakeConn) => c.r2t(0, 0, 512)],
  ['a CapsuleResp', 5, (c: FakeConn) => c.respond(0, { sqhd: 1 })],
  ['a C2HData', 7, (c: FakeConn) => c.c2h(0, 0, Buffer.alloc(16), { last: true })],
] as const) {
  test(`${what} before ICResp → PDU_SEQUENCE (not looked up as a command), H2CTermReq FES 2`, T, async () => {
    // The script runs as soon as the host connects, before its ICReq is answered.
    const target = await FakeTarget.start((c) => { send(c); });
    try {
      const e = await rejectsCode(QueuePair.connect(qpOpts(target.port)), ErrorCode.PDU_SEQUENCE);
      assert.equal(e.message, `queue 1: PDU type ${type} before ICResp`);
      const conn = target.conns[0] as FakeConn;
      await conn.closed;
      assert.deepEqual(conn.termReqs.map((t) => [t.fes, t.fei]), [[2, 0]]);
    } finally {
      await target.close();
    }
  });
}

test('a second ICResp → PDU_SEQUENCE for the command in flight, H2CTermReq FES 2', T, async () => {
  const { target, qp, closed, conn } = await scripted(async (c) => {
    await c.nextCommand();
    c.send(encodeIcResp({ cpda: 0, hdgst: false, ddgst: false, maxh2cdata: 8192 }));
  });
  try {
    await rejectsCode(qp.submit(sqeFlush(1)), ErrorCode.PDU_SEQUENCE);
    const e = await closed;
    assert.equal(e?.code, ErrorCode.PDU_SEQUENCE);
    assert.equal(e?.message, 'queue 1: unexpected ICResp');
    await conn().closed;
    assert.deepEqual(conn().termReqs.map((t) => [t.fes, t.fei]), [[2, 0]]);
    assert.equal(qp.stats().errors, 2, 'the receive error and the command it failed');
  } finally {
    qp.destroy();
    await target.close();
  }
});

test('an invalid ICResp is answered with an H2CTermReq FES 1 (invalid header field)', T, async () => {
  const target = await FakeTarget.start(() => undefined, { maxh2cdata: 1024 });
  try {
    await rejectsCode(QueuePair.connect(qpOpts(target.port)), ErrorCode.ICRESP_INVALID);
    const conn = target.conns[0] as FakeConn;
    await conn.closed;
    assert.deepEqual(conn.termReqs.map((t) => [t.fes, t.fei]), [[1, 0]]);
  } finally {
    await target.close();
  }
});

test('C2HTermReq: no H2CTermReq back, the command fails with its FES/FEI', T, async () => {
  const { target, qp, conn } = await scripted(async (c) => {
    await c.nextCommand();
    const { encodeTermReq } = await import('../../src/wire');
    c.send(encodeTermReq(0x03, 4, 12));
  });
  try {
    const e = await rejectsCode(qp.submit(sqeFlush(1)), ErrorCode.TERM_REQ_RECEIVED);
    assert.deepEqual([e.fes, e.fei], [4, 12]);
    await conn().closed;
    assert.equal(conn().termReqs.length, 0);
  } finally {
    qp.destroy();
    await target.close();
  }
});

// ------------------------------------------------------------------ CQE decoding

test('CQE fields are read at their offsets (DW0, DW1, SQHD, SQID, CID all different)', T, async () => {
  const { target, qp } = await scripted(async (c) => {
    const f = await c.nextCommand();
    c.send(encodeCapsuleResp(encodeCqe({ cid: f.sqe.cid, sqhd: 2, sqid: 0x0305, dw0: 0x89abcdef, dw1: 0x01234567 }), c.opts));
  });
  try {
    const { cqe } = await qp.submit(sqeFlush(1));
    assert.deepEqual(cqe, { dw0: 0x89abcdef, dw1: 0x01234567, sqhd: 2, sqid: 0x0305, cid: cqe.cid, ok: true, status: { sct: 0, sc: 0, dnr: false, more: false, crd: 0 } });
    assert.notEqual(cqe.cid, 2);
  } finally {
    qp.destroy();
    await target.close();
  }
});

test('status SCT 1 SC 0 is an error (ok needs both zero); acceptErrorStatus resolves with it', T, async () => {
  const { target, qp } = await scripted(async (c) => {
    const a = await c.nextCommand();
    c.respond(a.sqe.cid, { sqhd: 2, sct: 1, sc: 0 });
    const b = await c.nextCommand();
    c.respond(b.sqe.cid, { sqhd: 3, sct: 0, sc: 6, dw0: 7 });
  });
  try {
    const e = await rejectsCode(qp.submit(sqeFlush(1)), ErrorCode.NVME_STATUS);
    assert.deepEqual([e.status?.sct, e.status?.sc], [1, 0]);
    const { cqe } = await qp.submit(sqeFlush(1), { acceptErrorStatus: true });
    assert.deepEqual([cqe.ok, cqe.status.sct, cqe.status.sc, cqe.dw0], [false, 0, 6, 7]);
    assert.equal(qp.stats().errors, 1);
  } finally {
    qp.destroy();
    await target.close();
  }
});

test('two CQEs may report the same SQHD (the head did not move): both complete', T, async () => {
  const { target, qp } = await scripted(async (c) => {
    const a = await c.nextCommand();
    const b = await c.nextCommand();
    c.respond(a.sqe.cid, { sqhd: 3 });
    c.respond(b.sqe.cid, { sqhd: 3 });
    await echo(c, [], 8);
  });
  try {
    const [a, b] = await Promise.all([qp.submit(sqeFlush(1)), qp.submit(sqeFlush(2))]);
    assert.deepEqual([a.cqe.ok, b.cqe.ok], [true, true]);
    assert.equal(qp.connected, true);
  } finally {
    qp.destroy();
    await target.close();
  }
});

test('SQ flow control: with cids free but the SQ full by SQHD, the next command waits until SQHD moves', T, async () => {
  // queueSize 4: 3 cids, 3 SQ slots. Connect: head 1 = tail 1. A, B, C fill the SQ (tail 0).
  let release: () => void = () => undefined;
  const gate = new Promise<void>((r) => { release = r; });
  const seen: ReceivedCommand[] = [];
  const { target, qp } = await scripted(async (c) => {
    const a = await c.nextCommand();
    seen.push(a);
    c.respond(a.sqe.cid, { sqhd: 1 }); // completed, but not a single entry fetched by SQHD
    await gate;
    for (let i = 0; i < 2; i++) seen.push(await c.nextCommand());
    c.respond((seen[1] as ReceivedCommand).sqe.cid, { sqhd: 0 });
    c.respond((seen[2] as ReceivedCommand).sqe.cid, { sqhd: 0 });
    seen.push(await c.nextCommand());
    c.respond((seen[3] as ReceivedCommand).sqe.cid, { sqhd: 1 });
  }, { queueSize: 4 });
  try {
    await qp.submit(sqeFlush(1));
    const b = qp.submit(sqeFlush(2));
    const c = qp.submit(sqeFlush(3));
    const d = track(qp.submit(sqeFlush(4)));
    await turns(20);
    // A was taken from head 1, B and C: 3 issued since; 4 - 1 = 3 unfetched allowed → D waits.
    assert.deepEqual([qp.stats().inFlight, qp.stats().waiting], [2, 1]);
    release();
    await Promise.all([b, c]);
    await until(() => d.done, 'D issued once SQHD moved');
    assert.equal((await d.promise).cqe.ok, true);
    assert.equal(seen.length, 4);
  } finally {
    qp.destroy();
    await target.close();
  }
});

// ------------------------------------------------------------------ bookkeeping

test('an AER that completes leaves the untimed count: awaitingReply counts the remaining timed command', T, async () => {
  const seen: ReceivedCommand[] = [];
  let release: () => void = () => undefined;
  const gate = new Promise<void>((r) => { release = r; });
  const { target, qp } = await scripted(async (c) => {
    seen.push(await c.nextCommand(), await c.nextCommand());
    c.respond((seen[0] as ReceivedCommand).sqe.cid, { sqhd: 3 });
    await gate;
    c.respond((seen[1] as ReceivedCommand).sqe.cid, { sqhd: 3 });
  });
  try {
    const aer = qp.submit(sqeAsyncEventRequest(), { timeoutMs: Infinity });
    const f = qp.submit(sqeFlush(1));
    assert.deepEqual([qp.awaitingReply, qp.load], [1, 2]);
    await aer;
    assert.deepEqual([qp.awaitingReply, qp.load], [1, 1]);
    release();
    await f;
    assert.deepEqual([qp.awaitingReply, qp.load], [0, 0]);
  } finally {
    qp.destroy();
    await target.close();
  }
});

test('counters: commands, bytes out in the capsule and by R2T, bytes in, rxEvents move', T, async () => {
  const { target, qp } = await scripted(async (c) => {
    const w = await c.nextCommand();
    c.respond(w.sqe.cid, { sqhd: 2 });
    const r = await c.nextCommand();
    c.c2h(r.sqe.cid, 0, Buffer.alloc(1536, 9), { last: true });
    c.respond(r.sqe.cid, { sqhd: 3 });
    await echo(c, [], 8, 4);
  }, { inCapsuleMax: 1024 });
  try {
    const s0 = qp.stats();
    const rx0 = qp.rxEvents;
    assert.equal(s0.commands, 1, 'Fabrics Connect');
    assert.equal(s0.bytesOut, 1024, 'its 1 KiB of data in the capsule');
    assert.ok(rx0 >= 2, 'ICResp and Connect response were read');
    await qp.submit(sqeWrite(1, 0n, 2, false), { dataOut: Buffer.alloc(1000, 1) });
    await qp.submit(sqeRead(1, 0n, 3), { dataInLength: 1536 });
    await qp.submit(sqeWrite(1, 0n, 4, false), { dataOut: Buffer.alloc(2048, 1) });
    const s = qp.stats();
    assert.deepEqual([s.commands, s.bytesOut, s.bytesIn, s.errors, s.inFlight, s.waiting, s.qid, s.sqFlowControl],
      [4, 1024 + 1000 + 2048, 1536, 0, 0, 0, 1, true]);
    assert.ok(qp.rxEvents > rx0);
  } finally {
    qp.destroy();
    await target.close();
  }
});

test('teardown fails in-flight commands oldest first (not by cid), then the waiting ones; plain destroy says "closed"', T, async () => {
  const events: string[] = [];
  const { target, qp } = await scripted(async (c) => {
    const a = await c.nextCommand();
    c.respond(a.sqe.cid, { sqhd: 2 });
    for (;;) if (await c.nextCommand().catch(() => undefined) === undefined) return;
  }, { queueSize: 4 });
  try {
    const mk = (name: string): Recorded => {
      const r = new Recorded(events, name);
      r.sqe = sqeFlush(1);
      return r;
    };
    // 3 cids in a FIFO ring, Connect took 0 first: A 1, B 2; A done frees 1 behind 0; C 0, D 1 —
    // by cid C, D, B; by age B, C, D.
    const a = mk('A');
    qp.submitCommand(a);
    const b = mk('B');
    qp.submitCommand(b);
    await until(() => events.length === 1, 'A done');
    const c = mk('C');
    qp.submitCommand(c);
    const d = mk('D');
    qp.submitCommand(d);
    const e = mk('E');
    qp.submitCommand(e);
    assert.deepEqual([a.cid, b.cid, c.cid, d.cid], [1, 2, 0, 1]);
    assert.equal(qp.stats().waiting, 1);
    qp.destroy();
    await until(() => events.length === 5, 'all failed');
    assert.deepEqual(events, ['A ok', 'B NVMF_ERR_CONNECTION_CLOSED', 'C NVMF_ERR_CONNECTION_CLOSED', 'D NVMF_ERR_CONNECTION_CLOSED', 'E NVMF_ERR_CONNECTION_CLOSED']);
    assert.deepEqual([qp.stats().inFlight, qp.stats().waiting, qp.load, qp.awaitingReply], [0, 0, 0, 0]);
    const late = await rejectsCode(qp.submit(sqeFlush(1)), ErrorCode.CONNECTION_CLOSED);
    assert.equal(late.message, 'queue 1 is closed');
  } finally {
    qp.destroy();
    await target.close();
  }
});

test('plain destroy rejects in-flight commands with "queue N closed"; after a fatal error later submits get that error', T, async () => {
  const { target, qp } = await scripted(async (c) => { await c.nextCommand(); });
  try {
    const f = qp.submit(sqeFlush(1));
    await turns(5);
    qp.destroy();
    const e = await rejectsCode(f, ErrorCode.CONNECTION_CLOSED);
    assert.equal(e.message, 'queue 1 closed');
  } finally {
    await target.close();
  }
  const t2 = await scripted(async (c) => {
    const f = await c.nextCommand();
    c.respond(f.sqe.cid, { sqhd: 7 });
  });
  try {
    await rejectsCode(t2.qp.submit(sqeFlush(1)), ErrorCode.PDU_INVALID_HEADER);
    await rejectsCode(t2.qp.submit(sqeFlush(1)), ErrorCode.PDU_INVALID_HEADER);
  } finally {
    t2.qp.destroy();
    await t2.target.close();
  }
});

test('the oldest late command is named in the TIMEOUT (not the lowest cid)', T, async (t) => {
  const { target, qp } = await scripted(async (c) => {
    const a = await c.nextCommand();
    c.respond(a.sqe.cid, { sqhd: 2 });
    for (;;) if (await c.nextCommand().catch(() => undefined) === undefined) return;
  }, { queueSize: 4, timeoutMs: 400 });
  try {
    await qp.submit(sqeFlush(1)); // Connect had cid 0, this one 1: B gets 2, C 0, D 1
    t.mock.timers.enable({ apis: ['Date'], now: 1_000_000 });
    const b = track(qp.submit(sqeFlush(1), { timeoutMs: 10 }));
    const c = track(qp.submit(sqeFlush(1), { timeoutMs: 10 }));
    const d = track(qp.submit(sqeFlush(1), { timeoutMs: 10 }));
    t.mock.timers.tick(10);
    await until(() => b.done && c.done && d.done, 'timed out');
    const e = await rejectsCode(b.promise, ErrorCode.TIMEOUT);
    assert.equal(e.message, 'queue 1: command 0x0 (cid 2) timed out', 'B, the oldest; C has the lowest cid');
  } finally {
    t.mock.timers.reset();
    qp.destroy();
    await target.close();
  }
});

test('a reset after the queue is up is CONNECTION_CLOSED naming the target address', T, async () => {
  const { target, qp, closed } = await scripted(async (c) => {
    await c.nextCommand();
    c.socket.resetAndDestroy();
  });
  try {
    const e = await rejectsCode(qp.submit(sqeFlush(1)), ErrorCode.CONNECTION_CLOSED);
    assert.equal((await closed)?.code, ErrorCode.CONNECTION_CLOSED);
    assert.ok(e.message.startsWith(`queue 1 (127.0.0.1:${target.port}): `) || e.message === 'queue 1: connection closed by the target', e.message);
  } finally {
    qp.destroy();
    await target.close();
  }
});

test('localAddress binds the local end of the connection', T, async () => {
  const target = await FakeTarget.start(async (c) => { await c.acceptConnect(); });
  try {
    const qp = await QueuePair.connect(qpOpts(target.port, { localAddress: '127.0.0.2' }));
    assert.equal((target.conns[0] as FakeConn).socket.remoteAddress, '127.0.0.2');
    qp.destroy();
  } finally {
    await target.close();
  }
});

// ------------------------------------------------------------------ digests and H2CData splits

for (const [hdgst, ddgst] of [[true, false], [false, true]] as const) {
  test(`digests hdgst ${hdgst} ddgst ${ddgst}: in-capsule write, R2T write, read by CapsuleResp and by SUCCESS all check out at both ends`, T, async () => {
    const okFlags: boolean[] = [];
    const payload = Buffer.from(Array.from({ length: 6000 }, (_, i) => (i * 7 + 1) & 0xff));
    const { target, qp } = await scripted(async (c) => {
      const w = await c.nextPdu();
      if (w?.type !== 0x04) throw new Error('expected a capsule');
      okFlags.push(w.dataDigestOk);
      c.respond(w.sqe.readUInt16LE(2), { sqhd: 2 });
      const big = await c.nextCommand();
      c.r2t(big.sqe.cid, 0, big.sqe.sgl.length);
      for (;;) {
        const p = await c.nextPdu();
        if (p?.type !== 0x06) throw new Error('expected H2CData');
        okFlags.push(p.dataDigestOk);
        if (p.last) break;
      }
      c.respond(big.sqe.cid, { sqhd: 3 });
      const r = await c.nextCommand();
      c.c2h(r.sqe.cid, 0, payload.subarray(0, 3000), { last: false });
      c.c2h(r.sqe.cid, 3000, payload.subarray(3000), { last: true });
      c.respond(r.sqe.cid, { sqhd: 4 });
      const s = await c.nextCommand();
      c.c2h(s.sqe.cid, 0, payload, { last: true, success: true });
    }, { hdgst, ddgst, inCapsuleMax: 1024 }, { maxh2cdata: 4096 });
    try {
      await qp.submit(sqeWrite(1, 0n, 2, false), { dataOut: payload.subarray(0, 1024) });
      await qp.submit(sqeWrite(1, 0n, 12, false), { dataOut: payload });
      assert.deepEqual((await qp.submit(sqeRead(1, 0n, 12), { dataInLength: 6000 })).data, payload);
      assert.deepEqual((await qp.submit(sqeRead(1, 0n, 12), { dataInLength: 6000 })).data, payload);
      assert.deepEqual(okFlags, [true, true, true], 'the capsule and both H2CData PDUs');
      assert.deepEqual([qp.hdgst, qp.ddgst], [hdgst, ddgst]);
    } finally {
      qp.destroy();
      await target.close();
    }
  });
}

test('R2T lengths that are exact multiples of MAXH2CDATA: no empty PDU, LAST on the final one', T, async () => {
  const seen: Array<{ offsets: number[]; pdus: number }> = [];
  const data = Buffer.from(Array.from({ length: 12_288 }, (_, i) => (i * 13) & 0xff));
  const { target, qp } = await scripted(async (c) => {
    const w = await c.nextCommand();
    c.r2t(w.sqe.cid, 0, 4096);
    seen.push(await c.receiveH2C(w.sqe.cid));
    c.r2t(w.sqe.cid, 4096, 8192);
    seen.push(await c.receiveH2C(w.sqe.cid));
    c.respond(w.sqe.cid, { sqhd: 2 });
  }, {}, { maxh2cdata: 4096 });
  try {
    await qp.submit(sqeWrite(1, 0n, 24, false), { dataOut: data });
    assert.deepEqual(seen.map((s) => [s.offsets, s.pdus]), [[[0], 1], [[4096, 8192], 2]]);
  } finally {
    qp.destroy();
    await target.close();
  }
});

test('an R2T repeating a range already sent → DATA_OUT_OF_RANGE', T, async () => {
  const { target, qp, closed } = await scripted(async (c) => {
    const w = await c.nextCommand();
    c.r2t(w.sqe.cid, 0, 512);
    await c.receiveH2C(w.sqe.cid);
    c.r2t(w.sqe.cid, 0, 512);
  });
  try {
    const e = await rejectsCode(qp.submit(sqeWrite(1, 0n, 2, false), { dataOut: Buffer.alloc(1024) }), ErrorCode.DATA_OUT_OF_RANGE);
    assert.equal(e.message, 'queue 1: R2T 0+512 invalid (next offset 512, command has 1024 bytes)');
    assert.equal((await closed)?.code, ErrorCode.DATA_OUT_OF_RANGE);
  } finally {
    qp.destroy();
    await target.close();
  }
});

// ------------------------------------------------------------------ in-band authentication

/** A fake whose Connect response carries `dw0` (cntlid 1 plus AUTHREQ bits), then echoes. */
async function authTarget(dw0: number, seen: ReceivedCommand[] = []): Promise<FakeTarget> {
  return FakeTarget.start(async (c) => {
    const connect = await c.nextCommand();
    c.respond(connect.sqe.cid, { dw0, sqhd: 1 });
    await echo(c, seen);
  });
}

const ATR = 1 << 17;
const ASCR = 1 << 18;

test('Connect AUTHREQ: ATR without a secret and ASCR refused with AUTH_FAILED; ATR or authenticateAlways run authenticate once', T, async () => {
  let target = await authTarget(1 | ATR);
  try {
    const e = await rejectsCode(QueuePair.connect(qpOpts(target.port)), ErrorCode.AUTH_FAILED);
    assert.equal(e.message, 'Fabrics Connect (queue 1, subsystem nqn.test:sub): the target requires in-band authentication; give a DH-HMAC-CHAP secret (-S/--dhchap-secret)');
  } finally {
    await target.close();
  }
  target = await authTarget(1 | ASCR);
  try {
    const e = await rejectsCode(QueuePair.connect(qpOpts(target.port, { authenticate: async () => undefined })), ErrorCode.AUTH_FAILED);
    assert.match(e.message, /AUTHREQ\.ASCR/);
  } finally {
    await target.close();
  }
  for (const [dw0, always, runs] of [[1 | ATR, false, 1], [1, true, 1], [1, false, 0], [0x0102 | ATR, undefined, 1]] as const) {
    target = await authTarget(dw0);
    try {
      let calls = 0;
      const qp = await QueuePair.connect(qpOpts(target.port, { authenticate: async (q) => { assert.ok(q instanceof QueuePair); calls++; }, authenticateAlways: always }));
      assert.deepEqual([calls, qp.authentications, qp.cntlid], [runs, runs, dw0 & 0xffff]);
      qp.destroy();
    } finally {
      await target.close();
    }
  }
});

test('authenticate rejecting at Connect: connect rejects with that error, close reports it (a plain Error as CONNECT_FAILED)', T, async () => {
  const target = await authTarget(1 | ATR);
  try {
    let closeErr: NvmfNbdError | undefined;
    const boom = new Error('boom');
    const p = QueuePair.connect(qpOpts(target.port, {
      authenticate: async (q) => { q.once('close', (e: NvmfNbdError) => { closeErr = e; }); throw boom; },
    }));
    await assert.rejects(p, (e) => e === boom);
    assert.equal(closeErr?.code, ErrorCode.CONNECT_FAILED);
    assert.equal(closeErr?.message, 'Error: boom');
  } finally {
    await target.close();
  }
});

test('authSend sends its data to the controller, authReceive resolves with the controller\'s data', T, async () => {
  const got: Array<{ fctype: number; data: Buffer }> = [];
  const { target, qp } = await scripted(async (c) => {
    const s = await c.nextCommand();
    c.r2t(s.sqe.cid, 0, s.sqe.sgl.length);
    got.push({ fctype: s.raw[4] as number, data: (await c.receiveH2C(s.sqe.cid)).data });
    c.respond(s.sqe.cid, { sqhd: 2 });
    const r = await c.nextCommand();
    got.push({ fctype: r.raw[4] as number, data: Buffer.alloc(0) });
    c.c2h(r.sqe.cid, 0, Buffer.from('reply-bytes'), { last: true });
    c.respond(r.sqe.cid, { sqhd: 3 });
  });
  try {
    await qp.authSend(Buffer.from('hello-auth'), 5000);
    const data = await qp.authReceive(11, 5000);
    assert.deepEqual(data, Buffer.from('reply-bytes'));
    assert.deepEqual(got.map((g) => [g.fctype, g.data.toString()]), [[0x05, 'hello-auth'], [0x06, '']]);
  } finally {
    qp.destroy();
    await target.close();
  }
});

/** Answers each command with Authentication Required when `refuse` says so, else success. */
async function authRequired(c: FakeConn, seen: ReceivedCommand[], refuse: (cmd: ReceivedCommand, n: number) => boolean, queueSize = 8): Promise<void> {
  for (let sqhd = 2, n = 0; ; sqhd++, n++) {
    const cmd = await c.nextCommand().catch(() => undefined);
    if (cmd === undefined) return;
    seen.push(cmd);
    if (refuse(cmd, n)) c.respond(cmd.sqe.cid, { sqhd: sqhd % queueSize, sct: 1, sc: 0x91 });
    else c.respond(cmd.sqe.cid, { sqhd: sqhd % queueSize });
  }
}

test('Authentication Required: re-authenticate once (shared by commands refused meanwhile), retry each command once', T, async () => {
  const seen: ReceivedCommand[] = [];
  let calls = 0;
  const { target, qp } = await scripted((c) => authRequired(c, seen, (_cmd, n) => n < 2), {
    // Still running when the second refusal arrives: both retries wait for this one.
    authenticate: async (q) => { calls++; await until(() => seen.length >= 2 && q.stats().inFlight === 0, 'both refused'); },
  });
  try {
    const [a, b] = await Promise.all([qp.submit(sqeFlush(1)), qp.submit(sqeFlush(2))]);
    assert.deepEqual([a.cqe.ok, b.cqe.ok], [true, true]);
    assert.equal(calls, 1);
    assert.equal(qp.authentications, 1);
    assert.deepEqual(seen.map((s) => s.raw.readUInt32LE(4)), [1, 2, 1, 2], 'each command sent twice');
    assert.equal(qp.connected, true);
  } finally {
    qp.destroy();
    await target.close();
  }
});

test('Authentication Required twice for the same command: the retry\'s refusal is the command\'s NVME_STATUS', T, async () => {
  const seen: ReceivedCommand[] = [];
  let calls = 0;
  const { target, qp } = await scripted((c) => authRequired(c, seen, () => true), {
    authenticate: async () => { calls++; },
  });
  try {
    const e = await rejectsCode(qp.submit(sqeFlush(1)), ErrorCode.NVME_STATUS);
    assert.deepEqual([e.status?.sct, e.status?.sc], [1, 0x91]);
    assert.deepEqual([calls, seen.length], [1, 2]);
  } finally {
    qp.destroy();
    await target.close();
  }
});

test('Authentication Required for a Fabrics command (auth itself) is never retried', T, async () => {
  const seen: ReceivedCommand[] = [];
  let calls = 0;
  const { target, qp } = await scripted((c) => authRequired(c, seen, () => true), {
    authenticate: async () => { calls++; },
  });
  try {
    await rejectsCode(qp.authReceive(16, 5000), ErrorCode.NVME_STATUS);
    assert.deepEqual([calls, seen.length], [0, 1]);
  } finally {
    qp.destroy();
    await target.close();
  }
});

test('Authentication Required without an authenticate hook is the command\'s NVME_STATUS', T, async () => {
  const seen: ReceivedCommand[] = [];
  const { target, qp } = await scripted((c) => authRequired(c, seen, () => true));
  try {
    await rejectsCode(qp.submit(sqeFlush(1)), ErrorCode.NVME_STATUS);
    assert.equal(seen.length, 1);
  } finally {
    qp.destroy();
    await target.close();
  }
});

test('a failed re-authentication ends the queue: AUTH_FAILED (a plain Error wrapped with its text) for the refused command', T, async () => {
  const seen: ReceivedCommand[] = [];
  const { target, qp, closed } = await scripted((c) => authRequired(c, seen, () => true), {
    authenticate: async () => { throw new Error('bad key'); },
  });
  try {
    const e = await rejectsCode(qp.submit(sqeFlush(1)), ErrorCode.AUTH_FAILED);
    assert.equal(e.message, 'queue 1: re-authentication failed: Error: bad key');
    assert.equal((await closed)?.code, ErrorCode.AUTH_FAILED);
    assert.equal(qp.authentications, 0);
  } finally {
    qp.destroy();
    await target.close();
  }
});

test('a retry after re-authentication waits for a slot when the queue filled up meanwhile', T, async () => {
  const seen: ReceivedCommand[] = [];
  let release: () => void = () => undefined;
  const gate = new Promise<void>((r) => { release = r; });
  const { target, qp } = await scripted((c) => authRequired(c, seen, (_cmd, n) => n === 0, 2), {
    queueSize: 2,
    authenticate: async () => { await gate; },
  });
  try {
    const a = qp.submit(sqeFlush(1));
    await until(() => seen.length === 1, 'A refused');
    await turns(10);
    const b = qp.submit(sqeFlush(2));
    await until(() => seen.length === 2, 'B sent while A re-authenticates');
    release();
    await Promise.all([a, b]);
    assert.deepEqual(seen.map((s) => s.raw.readUInt32LE(4)), [1, 2, 1]);
  } finally {
    release();
    qp.destroy();
    await target.close();
  }
});

// ------------------------------------------------------------------ survivors of the ranged run

test('only Command Specific / Authentication Required starts a re-authentication: SCT 0 SC 0x91 and SCT 1 SC 0x82 are plain errors', T, async () => {
  let calls = 0;
  const { target, qp } = await scripted(async (c) => {
    const a = await c.nextCommand();
    c.respond(a.sqe.cid, { sqhd: 2, sct: 0, sc: 0x91 });
    const b = await c.nextCommand();
    c.respond(b.sqe.cid, { sqhd: 3, sct: 1, sc: 0x82 });
    await echo(c, [], 8, 4);
  }, { authenticate: async () => { calls++; } });
  try {
    let e = await rejectsCode(qp.submit(sqeFlush(1)), ErrorCode.NVME_STATUS);
    assert.deepEqual([e.status?.sct, e.status?.sc], [0, 0x91]);
    e = await rejectsCode(qp.submit(sqeFlush(1)), ErrorCode.NVME_STATUS);
    assert.deepEqual([e.status?.sct, e.status?.sc], [1, 0x82]);
    assert.equal(calls, 0);
    assert.equal((await qp.submit(sqeFlush(1))).cqe.ok, true, 'the queue is still up');
  } finally {
    qp.destroy();
    await target.close();
  }
});

test('SQHD outside the submitted range: the message gives head and tail as ring indices', T, async () => {
  const { target, qp } = await scripted(async (c) => {
    const f = await c.nextCommand();
    c.respond(f.sqe.cid, { sqhd: 3 });
  });
  try {
    const e = await rejectsCode(qp.submit(sqeFlush(1)), ErrorCode.PDU_INVALID_HEADER);
    assert.equal(e.message, 'queue 1: SQHD 3 outside the submitted range (head 1, tail 2)');
  } finally {
    qp.destroy();
    await target.close();
  }
});

test('replies for a command id not in flight name the PDU: CapsuleResp, C2HData, R2T', T, async () => {
  for (const [what, send] of [
    ['CapsuleResp', (c: FakeConn) => c.respond(5, { sqhd: 2 })],
    ['C2HData', (c: FakeConn) => c.c2h(5, 0, Buffer.alloc(8), { last: true })],
    ['R2T', (c: FakeConn) => c.r2t(5, 0, 8)],
  ] as const) {
    const { target, qp, closed } = await scripted(async (c) => {
      await c.nextCommand();
      send(c);
    });
    try {
      await rejectsCode(qp.submit(sqeFlush(1)), ErrorCode.UNKNOWN_CCCID);
      assert.equal((await closed)?.message, `queue 1: ${what} for command id 5, which is not in flight`);
    } finally {
      qp.destroy();
      await target.close();
    }
  }
});

test('C2HData SUCCESS with SQ flow control off is not counted as a deviation', T, async () => {
  const { target, qp } = await scripted(async (c) => {
    const r = await c.nextCommand();
    c.c2h(r.sqe.cid, 0, Buffer.alloc(512, 4), { last: true, success: true });
  }, { disableSqFlowControl: true }, {}, { sqhd: 0xffff });
  try {
    await qp.submit(sqeRead(1, 0n, 1), { dataInLength: 512 });
    assert.deepEqual([qp.stats().sqFlowControl, qp.stats().c2hSuccess, qp.stats().c2hSuccessWithSqFlow], [false, 1, 0]);
  } finally {
    qp.destroy();
    await target.close();
  }
});
