/**
 * QueuePair survivors of the mutation run over src/transport/queue-pair.ts:481-723 (issue 15
 * item 2): a write past the transfer limit (refused unless forced in-capsule), 0-byte write data
 * (no in-capsule data, Transport Data Block of length 0), a given dataIn kept even with a
 * dataInLength, FIFO order kept for a command submitted from inside a completion, the tick
 * (through a recording setTimeout: one timer, armed once at a time, stopped when idle, re-armed
 * by refresh; a waiting command re-arms it when it has a deadline, an AER does not), a waiting
 * command timing out after the queue went idle, a waiting command not yet late at a tick,
 * nothing read into a caller's buffer (nor counted) after teardown on the end() path, PDUs after
 * a completion destroyed the queue ignored, the C2HTermReq message, a plain Error thrown by a
 * completion wrapped as PDU_INVALID_HEADER with an H2CTermReq, an error found at the end of a
 * directly read payload (the whole transfer without LAST_PDU), and successful completions
 * sharing the one frozen status.
 */
import { test } from 'node:test';
import type { TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { QueuePair, QueueCommand } from '../../src/transport/queue-pair';
import type { QueuePairOptions } from '../../src/transport/queue-pair';
import type { Cqe } from '../../src/wire/cqe';
import { ErrorCode, NvmfNbdError } from '../../src/errors';
import { encodeC2HData, encodeR2T, encodeTermReq, sqeAsyncEventRequest, sqeFlush, sqeRead, sqeWrite } from '../../src/wire';
import { FakeTarget } from '../helpers/fake-target';
import type { FakeConn, ReceivedCommand } from '../helpers/fake-target';
import { rejectsCode } from '../helpers/assert-code';
import { qpOpts, scripted } from '../helpers/qp-scripted';
import { realSleep, track, turns, until } from '../helpers/clock';

const T = { timeout: 20_000 };

/** A record command that logs its outcome and runs `then` inside its completion. */
class Rec extends QueueCommand {
  constructor(readonly events: string[], readonly name: string, readonly then: () => void = () => undefined) {
    super();
  }
  onQpComplete(_cqe: Cqe): void {
    this.events.push(`${this.name} ok`);
    this.then();
  }
  onQpError(err: NvmfNbdError): void { this.events.push(`${this.name} ${err.code}`); }
}

function rec(events: string[], name: string, sqe: Buffer, then?: () => void): Rec {
  const r = new Rec(events, name, then);
  r.sqe = sqe;
  r.timeoutMs = 10_000;
  return r;
}

test('a write past maxTransfer is refused with the limit; forced in-capsule it is sent whole in the capsule', T, async () => {
  const seen: ReceivedCommand[] = [];
  const { target, qp } = await scripted(async (c) => {
    const w = await c.nextCommand();
    seen.push(w);
    c.respond(w.sqe.cid, { sqhd: 2 });
  }, { maxTransfer: 4096 });
  try {
    const data = Buffer.from(Array.from({ length: 4097 }, (_, i) => (i * 7 + 1) & 0xff));
    const e = await rejectsCode(qp.submit(sqeWrite(1, 0n, 9, false), { dataOut: data }), ErrorCode.INVALID_ARGUMENT);
    assert.equal(e.message, 'transfer of 4097 bytes exceeds the queue limit 4096');
    await qp.submit(sqeWrite(1, 0n, 9, false), { dataOut: data, inCapsule: true });
    assert.deepEqual(seen.map((c) => [c.sqe.sgl.type, c.sqe.sgl.length]), [[0x01, 4097]]);
    assert.deepEqual(seen[0]?.data, data);
  } finally {
    qp.destroy();
    await target.close();
  }
});

test('0-byte write data: no in-capsule data, a Transport Data Block SGL of length 0 (even on a queue with in-capsule room)', T, async () => {
  const seen: ReceivedCommand[] = [];
  const { target, qp } = await scripted(async (c) => {
    for (let sqhd = 2; sqhd < 4; sqhd++) {
      const w = await c.nextCommand();
      seen.push(w);
      c.respond(w.sqe.cid, { sqhd });
    }
  });
  try {
    await qp.submit(sqeWrite(1, 0n, 1, false), { dataOut: Buffer.alloc(0) });
    qp.setInCapsuleMax(4096);
    await qp.submit(sqeWrite(1, 0n, 1, false), { dataOut: Buffer.alloc(0) });
    assert.deepEqual(seen.map((c) => [c.sqe.sgl.type, c.sqe.sgl.length, c.data]), [[0x5a, 0, undefined], [0x5a, 0, undefined]]);
    assert.equal(qp.stats().bytesOut, 1024, 'only the Connect data went out');
  } finally {
    qp.destroy();
    await target.close();
  }
});

test('a given dataIn is the destination even when dataInLength is given too', T, async () => {
  const data = Buffer.from(Array.from({ length: 512 }, (_, i) => (i * 3 + 5) & 0xff));
  const { target, qp } = await scripted(async (c) => {
    const r = await c.nextCommand();
    c.c2h(r.sqe.cid, 0, data, { last: true });
    c.respond(r.sqe.cid, { sqhd: 2 });
  });
  try {
    const into = Buffer.alloc(512);
    const r = await qp.submit(sqeRead(1, 0n, 1), { dataIn: into, dataInLength: 512 });
    assert.equal(r.data, into);
    assert.deepEqual(into, data);
  } finally {
    qp.destroy();
    await target.close();
  }
});

test('a command submitted from inside a completion queues behind the ones already waiting (FIFO)', T, async () => {
  const order: number[] = [];
  const { target, qp } = await scripted(async (c) => {
    for (let sqhd = 2; ; sqhd++) {
      const cmd = await c.nextCommand().catch(() => undefined);
      if (cmd === undefined) return;
      order.push(cmd.sqe.nsid);
      c.respond(cmd.sqe.cid, { sqhd: sqhd % 2 });
    }
  }, { queueSize: 2 });
  try {
    const events: string[] = [];
    const c = rec(events, 'c', sqeFlush(3));
    const a = rec(events, 'a', sqeFlush(1), () => qp.submitCommand(c));
    const b = rec(events, 'b', sqeFlush(2));
    qp.submitCommand(a);
    qp.submitCommand(b);
    await until(() => events.length === 3, 'three completions');
    assert.deepEqual(order, [1, 2, 3], 'b waited first, so it goes before c');
    assert.deepEqual(events, ['a ok', 'b ok', 'c ok']);
  } finally {
    qp.destroy();
    await target.close();
  }
});

test('a command that waits for a slot after the queue went idle still gets a tick: it times out', T, async () => {
  // queueSize 3, SQHD never moves: after two completions the SQ looks full with nothing in
  // flight. Tick 5 ms (queue timeout 40 ms); the commands' own timeouts are long.
  const { target, qp, closed } = await scripted(async (c) => {
    for (let i = 0; i < 2; i++) {
      const f = await c.nextCommand();
      c.respond(f.sqe.cid, { sqhd: 1 });
    }
    await c.closed;
  }, { queueSize: 3, timeoutMs: 40 });
  try {
    await qp.submit(sqeFlush(1), { timeoutMs: 10_000 });
    await qp.submit(sqeFlush(2), { timeoutMs: 10_000 });
    // Pacing only: let the 5 ms tick find the queue empty (and stop) before the next submit.
    await realSleep(100);
    const f = track(qp.submit(sqeFlush(3), { timeoutMs: 50 }));
    await until(() => f.done, 'the waiting command timed out', 10_000);
    const e = await rejectsCode(f.promise, ErrorCode.TIMEOUT);
    assert.equal(e.message, 'queue 1: command 0x0 timed out waiting for a submission slot (0 in flight)');
    assert.equal((await closed)?.code, ErrorCode.TIMEOUT);
  } finally {
    qp.destroy();
    await target.close();
  }
});

/** Mocked setTimeout/Date from 0 before connect: the tick armed by Connect is a mocked one. */
async function mockedQueue(t: TestContext, o: Partial<QueuePairOptions>) {
  t.mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 0 });
  const target = await FakeTarget.start(async (c) => {
    await c.acceptConnect();
    for (;;) if (await c.nextCommand().catch(() => undefined) === undefined) return;
  });
  const qp = await QueuePair.connect(qpOpts(target.port, o));
  return { target, qp };
}

test('a waiting command whose deadline is later than the tick does not end the queue at that tick', T, async (t) => {
  // Queue timeout 4000 → tick 500; one slot (queue size 2) taken by an AER, the flush waits.
  const { target, qp } = await mockedQueue(t, { queueSize: 2, timeoutMs: 4000 });
  try {
    const aer = track(qp.submit(sqeAsyncEventRequest(), { timeoutMs: Infinity }));
    const f = track(qp.submit(sqeFlush(1)));
    await until(() => qp.stats().inFlight === 1 && qp.stats().waiting === 1, 'AER in flight, flush waiting');
    t.mock.timers.tick(500);
    await turns(20);
    assert.equal(qp.connected, true, 'the flush (deadline 4000) is not late at 500');
    assert.equal(f.done, false);
    assert.equal(aer.done, false);
    qp.destroy();
    await rejectsCode(f.promise, ErrorCode.CONNECTION_CLOSED);
  } finally {
    qp.destroy();
    t.mock.timers.reset();
    await target.close();
  }
});

test('after destroy() the rest of a payload is not read into the caller\'s buffer, nor counted (socket.end() path)', T, async () => {
  // 12 KiB: the rest after the first 1 KiB is below the direct-read minimum (16 KiB), so the
  // queue reads into its scratch and destroy() ends the socket instead of pausing it: the rest
  // still arrives and must be dropped.
  const size = 12 * 1024;
  const payload = Buffer.alloc(size, 0x5c);
  let sendRest!: () => void;
  const rest = new Promise<void>((r) => { sendRest = r; });
  const { target, qp } = await scripted(async (c) => {
    const r = await c.nextCommand();
    const pdu = Buffer.concat(encodeC2HData({ cccid: r.sqe.cid, datao: 0, last: true, success: false }, payload, c.opts));
    const head = pdu.length - size + 1024;
    c.send(pdu.subarray(0, head));
    await rest;
    c.send(pdu.subarray(head));
    c.socket.end();
  });
  try {
    const into = Buffer.alloc(size);
    const rd = track(qp.submit(sqeRead(1, 0n, size / 512), { dataIn: into }));
    await until(() => into[1023] === 0x5c, 'the first 1 KiB of the payload placed');
    qp.destroy();
    await rejectsCode(rd.promise, ErrorCode.CONNECTION_CLOSED);
    const rx = qp.rxEvents;
    const errors = qp.stats().errors;
    sendRest();
    await qp.socketClosed;
    assert.deepEqual(into.subarray(0, 1024), payload.subarray(0, 1024));
    assert.equal(into.subarray(1024).every((b) => b === 0), true, 'nothing written into the buffer after the teardown');
    assert.equal(qp.rxEvents, rx, 'reads after the teardown are not counted');
    assert.equal(qp.stats().errors, errors);
  } finally {
    qp.destroy();
    await target.close();
  }
});

for (const what of ['a second CapsuleResp', 'an R2T'] as const) {
  test(`${what} in the same read after a completion destroyed the queue is ignored (no error counted)`, T, async () => {
    const { target, qp } = await scripted(async (c) => {
      const a = await c.nextCommand();
      const b = await c.nextCommand();
      c.socket.cork();
      c.respond(a.sqe.cid, { sqhd: 2 });
      if (what === 'an R2T') c.send(encodeR2T({ cccid: b.sqe.cid, ttag: 1, r2to: 0, r2tl: 512 }, c.opts));
      else c.respond(b.sqe.cid, { sqhd: 3 });
      c.socket.uncork();
      await c.closed;
    });
    try {
      const events: string[] = [];
      const a = rec(events, 'a', sqeFlush(1), () => qp.destroy());
      qp.submitCommand(a);
      const b = what === 'an R2T'
        ? qp.submit(sqeWrite(1, 0n, 1, false), { dataOut: Buffer.alloc(512) })
        : qp.submit(sqeFlush(2));
      const e = await rejectsCode(b, ErrorCode.CONNECTION_CLOSED);
      assert.equal(e.message, 'queue 1 closed');
      await qp.socketClosed;
      assert.deepEqual(events, ['a ok']);
      assert.equal(qp.stats().errors, 1, 'only the command failed by the teardown');
    } finally {
      qp.destroy();
      await target.close();
    }
  });
}

test('C2HTermReq: the error names the queue, FES and FEI', T, async () => {
  const { target, qp } = await scripted(async (c) => {
    await c.nextCommand();
    c.send(encodeTermReq(0x03, 2, 7));
  });
  try {
    const e = await rejectsCode(qp.submit(sqeFlush(1)), ErrorCode.TERM_REQ_RECEIVED);
    assert.equal(e.message, 'queue 1: target terminated the connection (C2HTermReq fes 2, fei 7)');
  } finally {
    qp.destroy();
    await target.close();
  }
});

test('a plain Error thrown by a completion ends the queue as PDU_INVALID_HEADER with its text and cause, H2CTermReq FES 1', T, async () => {
  const { target, qp, closed, conn } = await scripted(async (c) => {
    const a = await c.nextCommand();
    c.respond(a.sqe.cid, { sqhd: 2 });
    await c.closed;
  });
  try {
    const boom = new Error('boom');
    class Thrower extends QueueCommand {
      onQpComplete(): void { throw boom; }
      onQpError(): void { /* the queue's end */ }
    }
    const cmd = new Thrower();
    cmd.sqe = sqeFlush(1);
    qp.submitCommand(cmd);
    const err = await closed;
    assert.equal(err?.code, ErrorCode.PDU_INVALID_HEADER);
    assert.equal(err?.message, 'queue 1: Error: boom');
    assert.equal(err?.cause, boom);
    assert.equal(err?.fes, 1);
    await conn().closed;
    assert.deepEqual(conn().termReqs.map((x) => [x.fes, x.fei]), [[1, 0]]);
  } finally {
    qp.destroy();
    await target.close();
  }
});

test('an error found when a directly read payload completes (the whole transfer without LAST_PDU) ends the queue with an H2CTermReq', T, async () => {
  const size = 256 * 1024;
  const { target, qp, closed, conn } = await scripted(async (c) => {
    const r = await c.nextCommand();
    c.send(encodeC2HData({ cccid: r.sqe.cid, datao: 0, last: false, success: false }, Buffer.alloc(size, 1), c.opts));
    await c.closed;
  });
  try {
    const e = await rejectsCode(qp.submit(sqeRead(1, 0n, size / 512), { dataInLength: size, timeoutMs: 8000 }), ErrorCode.PDU_SEQUENCE);
    assert.equal(e.message, 'queue 1: C2HData completed the transfer without LAST_PDU');
    assert.equal((await closed)?.code, ErrorCode.PDU_SEQUENCE);
    await conn().closed;
    assert.deepEqual(conn().termReqs.map((x) => [x.fes, x.fei]), [[2, 1]]);
  } finally {
    qp.destroy();
    await target.close();
  }
});

test('successful completions share the one frozen success status', T, async () => {
  const { target, qp } = await scripted(async (c) => {
    for (let sqhd = 2; sqhd < 4; sqhd++) {
      const f = await c.nextCommand();
      c.respond(f.sqe.cid, { sqhd });
    }
  });
  try {
    const a = await qp.submit(sqeFlush(1));
    const b = await qp.submit(sqeFlush(2));
    assert.deepEqual(a.cqe.status, { sct: 0, sc: 0, dnr: false, more: false, crd: 0 });
    assert.equal(a.cqe.status, b.cqe.status);
    assert.equal(Object.isFrozen(a.cqe.status), true);
  } finally {
    qp.destroy();
    await target.close();
  }
});

/** A timer handed out by the recording setTimeout below: never fires by itself. */
interface FakeTimer { readonly fn: () => void; readonly ms: number; refreshes: number; cleared: boolean }

/**
 * Replace the global setTimeout/clearTimeout with a recording fake (Node 20's mocked timers do
 * not reschedule on refresh(), so they cannot show how the queue re-arms its tick). Date.now stays
 * real: the commands' deadlines are far away. The helpers' waits use the real timers they
 * captured at load.
 */
function recordTimers(): { timers: FakeTimer[]; restore(): void } {
  const realSet = globalThis.setTimeout;
  const realClear = globalThis.clearTimeout;
  const timers: FakeTimer[] = [];
  globalThis.setTimeout = ((fn: () => void, ms: number) => {
    const t = {
      fn, ms, refreshes: 0, cleared: false,
      refresh() { this.refreshes++; return this; },
      unref() { return this; },
      ref() { return this; },
      hasRef() { return false; },
    };
    timers.push(t);
    return t;
  }) as unknown as typeof setTimeout;
  globalThis.clearTimeout = ((t: unknown) => {
    const f = timers.find((x) => x === t);
    if (f !== undefined) f.cleared = true;
    else realClear(t as NodeJS.Timeout);
  }) as typeof clearTimeout;
  return { timers, restore: () => { globalThis.setTimeout = realSet; globalThis.clearTimeout = realClear; } };
}

test('the tick is one timer, armed once at a time: an idle tick stops; the next command re-arms it by refresh', T, async () => {
  // Queue size 2 (one command at a time). SQHD follows the tail: every command is fetched.
  const target = await FakeTarget.start(async (c) => {
    await c.acceptConnect();
    const held: ReceivedCommand[] = [];
    for (let sqhd = 0; ; sqhd ^= 1) {
      const cmd = await c.nextCommand().catch(() => undefined);
      if (cmd === undefined) return;
      if (cmd.sqe.opcode === 0x0c) { held.push(cmd); continue; } // AERs stay outstanding
      c.respond(cmd.sqe.cid, { sqhd });
    }
  });
  const fake = recordTimers();
  let qp: QueuePair | undefined;
  try {
    qp = await QueuePair.connect(qpOpts(target.port, { queueSize: 2, timeoutMs: 4000 }));
    const ticks = () => fake.timers.filter((x) => x.ms === 500);
    assert.equal(ticks().length, 1, 'Connect armed the tick (timeout 4000 → every 500 ms)');
    const tick = ticks()[0] as FakeTimer;
    assert.equal(tick.refreshes, 0);
    // Two commands while the tick is armed: not pushed back, no second timer.
    await qp.submit(sqeFlush(1), { timeoutMs: 10_000 });
    await qp.submit(sqeFlush(2), { timeoutMs: 10_000 });
    assert.deepEqual([ticks().length, tick.refreshes], [1, 0]);
    // The tick fires on an idle queue: it does not re-arm.
    tick.fn();
    assert.equal(tick.refreshes, 0, 'an idle queue\'s tick stops');
    // The next command re-arms the same timer once.
    await qp.submit(sqeFlush(3), { timeoutMs: 10_000 });
    assert.deepEqual([ticks().length, tick.refreshes], [1, 1]);
    tick.fn();
    assert.equal(tick.refreshes, 1);
    // An AER takes the one slot (re-arming the tick); the tick with only the AER in flight re-arms.
    const aer = qp.submit(sqeAsyncEventRequest(), { timeoutMs: Infinity });
    aer.catch(() => undefined);
    await until(() => qp?.stats().inFlight === 1, 'the AER in flight');
    assert.equal(tick.refreshes, 2);
    tick.fn();
    assert.equal(tick.refreshes, 3, 'a tick with a command in flight re-arms');
  } finally {
    fake.restore();
    qp?.destroy();
    await target.close();
  }
});

test('on an idle queue a command that must wait re-arms the tick when it has a deadline, an AER does not', T, async () => {
  // Queue size 3, SQHD never moves: after two completions the SQ looks full with nothing in flight.
  const target = await FakeTarget.start(async (c) => {
    await c.acceptConnect();
    for (let i = 0; i < 2; i++) {
      const f = await c.nextCommand();
      c.respond(f.sqe.cid, { sqhd: 1 });
    }
    await c.closed;
  });
  const fake = recordTimers();
  let qp: QueuePair | undefined;
  try {
    qp = await QueuePair.connect(qpOpts(target.port, { queueSize: 3, timeoutMs: 4000 }));
    const tick = fake.timers.find((x) => x.ms === 500) as FakeTimer;
    await qp.submit(sqeFlush(1), { timeoutMs: 10_000 });
    await qp.submit(sqeFlush(2), { timeoutMs: 10_000 });
    tick.fn();
    assert.equal(tick.refreshes, 0, 'idle: the tick stopped');
    const aer = qp.submit(sqeAsyncEventRequest(), { timeoutMs: Infinity });
    aer.catch(() => undefined);
    assert.deepEqual([qp.stats().waiting, tick.refreshes], [1, 0], 'a waiting AER has no deadline to watch');
    const f = qp.submit(sqeFlush(3), { timeoutMs: 10_000 });
    f.catch(() => undefined);
    assert.deepEqual([qp.stats().waiting, tick.refreshes], [2, 1], 'a waiting command with a deadline arms the tick');
    assert.equal(fake.timers.filter((x) => x.ms === 500).length, 1);
  } finally {
    fake.restore();
    qp?.destroy();
    await target.close();
  }
});
