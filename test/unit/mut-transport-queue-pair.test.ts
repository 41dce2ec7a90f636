/**
 * QueuePair survivors of the transport mutation runs (issue 15 item 2), against the scripted fake
 * target: three R2Ts for one write with lengths that are not multiples of MAXH2CDATA (offsets,
 * every byte once, LAST_PDU per R2T, bytesOut exact), an R2T of length 0 or skipping ahead
 * refused with its message and the H2CTermReq FES 4 / FEI 12, C2HData SUCCESS (the synthesized
 * CQE, a bad data digest, a short read; the queue stays up), destroy counting every in-flight and
 * waiting command as one error, the ICResp refusal message per field, a timeout of 0 as an
 * immediate deadline (in flight and waiting for a slot), and SQHD equal to the queue size.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { QueuePair, QueueCommand } from '../../src/transport/queue-pair';
import type { Cqe } from '../../src/wire/cqe';
import type { QueuePairOptions } from '../../src/transport/queue-pair';
import { ErrorCode, NvmfNbdError } from '../../src/errors';
import { sqeRead, sqeWrite, sqeFlush, sqeAsyncEventRequest, encodeC2HData } from '../../src/wire';
import { FakeTarget } from '../helpers/fake-target';
import type { FakeConn, FakeIcResp, ReceivedCommand } from '../helpers/fake-target';
import { rejectsCode } from '../helpers/assert-code';
import { qpOpts, scripted } from '../helpers/qp-scripted';
import { realSleep, until } from '../helpers/clock';

const T = { timeout: 20_000 };

test('three R2Ts for one write, lengths not multiples of MAXH2CDATA: every byte once, LAST_PDU per R2T, bytesOut exact', T, async () => {
  const data = Buffer.from(Array.from({ length: 13_001 }, (_, i) => (i * 31 + 7) & 0xff));
  const seen: Array<{ offsets: number[]; pdus: number; data: Buffer }> = [];
  const { target, qp } = await scripted(async (c) => {
    const w = await c.nextCommand();
    for (const [o, l] of [[0, 5000], [5000, 4097], [9097, 3904]] as const) {
      c.r2t(w.sqe.cid, o, l, 3);
      seen.push(await c.receiveH2C(w.sqe.cid));
    }
    c.respond(w.sqe.cid, { sqhd: 2 });
  }, {}, { maxh2cdata: 4096 });
  try {
    const before = qp.stats().bytesOut;
    await qp.submit(sqeWrite(1, 0n, 26, false), { dataOut: data });
    assert.deepEqual(seen.map((s) => s.offsets), [[0, 4096], [5000, 9096], [9097]]);
    assert.deepEqual(Buffer.concat(seen.map((s) => s.data)), data);
    assert.equal(qp.stats().bytesOut - before, data.length);
  } finally {
    qp.destroy();
    await target.close();
  }
});

for (const [what, r2to, r2tl] of [['R2TL 0', 0, 0], ['an offset that skips ahead', 512, 512]] as const) {
  test(`R2T with ${what} → DATA_OUT_OF_RANGE naming offset, length and the command size`, T, async () => {
    const { target, qp, closed } = await scripted(async (c) => {
      const w = await c.nextCommand();
      c.r2t(w.sqe.cid, r2to, r2tl);
    });
    try {
      const e = await rejectsCode(qp.submit(sqeWrite(1, 0n, 2, false), { dataOut: Buffer.alloc(1024) }), ErrorCode.DATA_OUT_OF_RANGE);
      assert.equal(e.message, `queue 1: R2T ${r2to}+${r2tl} invalid (next offset 0, command has 1024 bytes)`);
      assert.equal((await closed)?.code, ErrorCode.DATA_OUT_OF_RANGE);
      const conn = target.conns[0] as FakeConn;
      await conn.closed;
      assert.deepEqual(conn.termReqs.map((t) => [t.fes, t.fei]), [[4, 12]], 'H2CTermReq: DATA_OUT_OF_RANGE at the R2T offset field');
    } finally {
      qp.destroy();
      await target.close();
    }
  });
}

test('C2HData SUCCESS: the synthesized CQE; with a bad data digest → DATA_DIGEST; short → SHORT_READ; the queue stays up', T, async () => {
  const data = Buffer.from(Array.from({ length: 512 }, (_, i) => i & 0xff));
  const { target, qp } = await scripted(async (c) => {
    const a = await c.nextCommand();
    c.c2h(a.sqe.cid, 0, data, { last: true, success: true });
    const b = await c.nextCommand();
    const parts = encodeC2HData({ cccid: b.sqe.cid, datao: 0, last: true, success: true }, Buffer.from(data), c.opts);
    const dd = Buffer.from(parts[2] as Buffer);
    dd[0] = (dd[0] as number) ^ 0xff;
    c.send([parts[0] as Buffer, parts[1] as Buffer, dd]);
    const s = await c.nextCommand();
    c.c2h(s.sqe.cid, 0, data.subarray(0, 256), { last: true, success: true });
    const f = await c.nextCommand();
    c.respond(f.sqe.cid, { sqhd: 5 });
  }, { qid: 2, hdgst: true, ddgst: true, disableSqFlowControl: true });
  try {
    const r = await qp.submit(sqeRead(1, 0n, 1), { dataInLength: 512 });
    assert.deepEqual(r.data, data);
    assert.deepEqual(r.cqe, { dw0: 0, dw1: 0, sqhd: 0xffff, sqid: 2, cid: r.cqe.cid, ok: true, status: { sct: 0, sc: 0, dnr: false, more: false, crd: 0 } });
    const d = await rejectsCode(qp.submit(sqeRead(1, 0n, 1), { dataInLength: 512 }), ErrorCode.DATA_DIGEST);
    assert.match(d.message, /^queue 2: data digest error on command id \d+$/);
    const s = await rejectsCode(qp.submit(sqeRead(1, 0n, 1), { dataInLength: 512 }), ErrorCode.SHORT_READ);
    assert.match(s.message, /^queue 2: command id \d+ completed with 256 of 512 bytes$/);
    assert.equal((await qp.submit(sqeFlush(1))).cqe.ok, true);
    assert.equal(qp.stats().c2hSuccess, 3);
    assert.equal(qp.stats().errors, 2);
  } finally {
    qp.destroy();
    await target.close();
  }
});

test('destroy counts every in-flight and waiting command as an error once', T, async () => {
  const { target, qp } = await scripted(async (c) => {
    await c.nextCommand();
    await c.nextCommand();
  }, { queueSize: 3 });
  try {
    const cmds = [1, 2, 3].map((n) => qp.submit(sqeFlush(n)));
    for (const p of cmds) p.catch(() => undefined);
    await until(() => qp.stats().inFlight === 2 && qp.stats().waiting === 1, 'two in flight, one waiting');
    const before = qp.stats().errors;
    qp.destroy();
    for (const p of cmds) await rejectsCode(p, ErrorCode.CONNECTION_CLOSED);
    assert.equal(qp.stats().errors - before, 3);
    await rejectsCode(qp.submit(sqeFlush(1)), ErrorCode.CONNECTION_CLOSED);
  } finally {
    await target.close();
  }
});

test('ICResp refusals say which field: PFV, MAXH2CDATA (4096 and multiples of 4 only), digests asked vs answered', T, async () => {
  const cases: Array<[FakeIcResp, Partial<QueuePairOptions>, string]> = [
    [{ pfv: 1 }, {}, 'PDU format version 1'],
    [{ maxh2cdata: 4092 }, {}, 'MAXH2CDATA 4092 (must be >= 4096 and a multiple of 4)'],
    [{ maxh2cdata: 4098 }, {}, 'MAXH2CDATA 4098 (must be >= 4096 and a multiple of 4)'],
    [{ hdgst: true }, {}, 'header digest enabled (asked off)'],
    [{ hdgst: false }, { hdgst: true }, 'header digest refused (asked on)'],
    [{ ddgst: true }, {}, 'data digest enabled (asked off)'],
    [{ ddgst: false }, { ddgst: true }, 'data digest refused (asked on)'],
  ];
  for (const [ic, o, why] of cases) {
    const target = await FakeTarget.start(() => undefined, ic);
    try {
      const e = await rejectsCode(QueuePair.connect(qpOpts(target.port, o)), ErrorCode.ICRESP_INVALID);
      assert.equal(e.message, `queue 1: invalid ICResp: ${why}`);
    } finally {
      await target.close();
    }
  }
  const ok = await FakeTarget.start(async (c) => { await c.acceptConnect(); }, { maxh2cdata: 4096 });
  try {
    const qp = await QueuePair.connect(qpOpts(ok.port));
    assert.equal(qp.maxH2CData, 4096);
    qp.destroy();
  } finally {
    await ok.close();
  }
});

test('a timeout of 0 is an immediate deadline (not "the default"), in flight and while waiting for a slot', T, async () => {
  for (const waiting of [false, true]) {
    // The target takes the first command and never answers; the queue's own timeout is far away.
    const { target, qp, closed } = await scripted(async (c) => { await c.nextCommand(); }, { queueSize: 2, timeoutMs: 600_000 });
    try {
      if (waiting) {
        const aer = qp.submit(sqeAsyncEventRequest(), { timeoutMs: Infinity });
        aer.catch(() => undefined);
        const e = await rejectsCode(qp.submit(sqeFlush(7), { timeoutMs: 0 }), ErrorCode.TIMEOUT);
        assert.equal(e.message, 'queue 1: command 0x0 timed out waiting for a submission slot (1 in flight)');
      } else {
        const e = await rejectsCode(qp.submit(sqeFlush(7), { timeoutMs: 0 }), ErrorCode.TIMEOUT);
        assert.match(e.message, /^queue 1: command 0x0 \(cid \d+\) timed out$/);
      }
      assert.equal((await closed)?.code, ErrorCode.TIMEOUT, 'the queue is torn down');
    } finally {
      qp.destroy();
      await target.close();
    }
  }
});

test('SQHD equal to the queue size is already beyond the ring', T, async () => {
  const { target, qp, closed } = await scripted(async (c) => {
    const f = await c.nextCommand();
    c.respond(f.sqe.cid, { sqhd: 8 });
  }, { queueSize: 8 });
  try {
    const e = await rejectsCode(qp.submit(sqeFlush(1)), ErrorCode.PDU_INVALID_HEADER);
    assert.equal(e.message, 'queue 1: SQHD 8 beyond queue size 8');
    assert.equal((await closed)?.code, ErrorCode.PDU_INVALID_HEADER);
  } finally {
    qp.destroy();
    await target.close();
  }
});
