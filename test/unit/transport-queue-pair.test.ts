/**
 * QueuePair against a scripted fake target: the happy paths (in-capsule data, R2T → H2CData
 * split, C2HData reassembly, digests, SQ flow control, FIFO of waiters) and one test per PDU a
 * malicious target can send. Each malicious case ends in the documented error code — no crash,
 * no hang (every test has a timeout), the command fails and `close` reports the same code.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { QueuePair } from '../../src/transport/queue-pair';
import type { QueuePairOptions } from '../../src/transport/queue-pair';
import { ErrorCode, NvmfNbdError } from '../../src/errors';
import type { ErrorCodeValue } from '../../src/errors';
import { encodeC2HData, encodeCapsuleResp, encodeCqe, encodeTermReq, sqeRead, sqeWrite, sqeFlush, crc32c } from '../../src/wire';
import { FakeTarget } from '../helpers/fake-target';
import type { FakeConn, FakeIcResp } from '../helpers/fake-target';
import { track, turns, until } from '../helpers/clock';
import { rejectsCode } from '../helpers/assert-code';

const T = { timeout: 5000 };
const HOSTID = Buffer.alloc(16, 0x11);

function qpOpts(port: number, o: Partial<QueuePairOptions> = {}): QueuePairOptions {
  return {
    host: '127.0.0.1', port, qid: 1, queueSize: 8, subnqn: 'nqn.test:sub', hostnqn: 'nqn.test:host', hostid: HOSTID,
    cntlid: 1, inCapsuleMax: 4096, connectTimeoutMs: 2000, timeoutMs: 2000, ...o,
  };
}

/** Start a fake whose script first accepts Connect then runs `after`. */
async function withTarget(
  after: (c: FakeConn) => Promise<void>,
  o: { ic?: FakeIcResp; qp?: Partial<QueuePairOptions>; connect?: Parameters<FakeConn['acceptConnect']>[0] } = {},
): Promise<{ target: FakeTarget; qp: QueuePair; closed: Promise<NvmfNbdError | undefined>; conn: () => FakeConn }> {
  const target = await FakeTarget.start(async (c) => {
    await c.acceptConnect(o.connect);
    await after(c);
  }, o.ic);
  const qp = await QueuePair.connect(qpOpts(target.port, o.qp));
  const closed = new Promise<NvmfNbdError | undefined>((resolve) => qp.once('close', resolve));
  return { target, qp, closed, conn: () => target.conns[0] as FakeConn };
}

/** A fatal case: the command fails with `code`, the queue closes with `code`, a TermReq with `fes` is sent. */
async function expectFatal(
  script: (c: FakeConn) => Promise<void>,
  code: ErrorCodeValue,
  fes: number | undefined,
  cmd: (qp: QueuePair) => Promise<unknown> = (qp) => qp.submit(sqeRead(1, 0n, 8), { dataInLength: 4096 }),
  o: Parameters<typeof withTarget>[1] = {},
): Promise<void> {
  const { target, qp, closed, conn } = await withTarget(script, o);
  try {
    await rejectsCode(cmd(qp), code);
    const err = await closed;
    assert.equal(err?.code, code);
    assert.equal(qp.connected, false);
    await conn().closed;
    if (fes === undefined) {
      assert.equal(conn().termReqs.length, 0);
    } else {
      assert.equal(conn().termReqs.length, 1, 'host sends exactly one H2CTermReq');
      assert.equal(conn().termReqs[0]?.fes, fes);
    }
    // Nothing more is accepted after the teardown.
    await rejectsCode(qp.submit(sqeFlush(1)), code);
  } finally {
    qp.destroy();
    await target.close();
  }
}

// ---------------------------------------------------------------- happy paths

test('connect negotiates ICResp, returns cntlid, honours SQHD', T, async () => {
  const { target, qp } = await withTarget(async () => undefined, { connect: { cntlid: 0x42 }, ic: { maxh2cdata: 16384 } });
  try {
    assert.equal(qp.cntlid, 0x42);
    assert.equal(qp.maxH2CData, 16384);
    assert.equal(qp.sqFlowControl, true);
    const c = target.conns[0] as FakeConn;
    assert.equal(c.qid, 1);
  } finally {
    qp.destroy();
    await target.close();
  }
});

test('small write travels in-capsule with an SGL Data Block descriptor', T, async () => {
  const data = randomBytes(4096);
  const { target, qp } = await withTarget(async (c) => {
    const cmd = await c.nextCommand();
    assert.equal(cmd.sqe.sgl.type, 0x01);
    assert.equal(cmd.sqe.sgl.length, 4096);
    assert.equal(cmd.sqe.psdt, 1);
    assert.deepEqual(cmd.data, data);
    c.respond(cmd.sqe.cid, { sqhd: 2 });
  });
  try {
    const before = qp.stats().bytesOut; // includes the 1 KiB Connect data
    const r = await qp.submit(sqeWrite(1, 0n, 8, false), { dataOut: data });
    assert.equal(r.cqe.ok, true);
    assert.equal(qp.stats().bytesOut - before, 4096);
  } finally {
    qp.destroy();
    await target.close();
  }
});

test('large write waits for R2T and splits H2CData at MAXH2CDATA without losing bytes', T, async () => {
  const data = randomBytes(20000);
  let seen: { data: Buffer; pdus: number; offsets: number[] } | undefined;
  const { target, qp } = await withTarget(async (c) => {
    const cmd = await c.nextCommand();
    assert.equal(cmd.sqe.sgl.type, 0x5a);
    assert.equal(cmd.data, undefined);
    c.r2t(cmd.sqe.cid, 0, 12000, 7);
    const a = await c.receiveH2C(cmd.sqe.cid);
    c.r2t(cmd.sqe.cid, 12000, 8000, 8);
    const b = await c.receiveH2C(cmd.sqe.cid);
    seen = { data: Buffer.concat([a.data, b.data]), pdus: a.pdus + b.pdus, offsets: [...a.offsets, ...b.offsets] };
    c.respond(cmd.sqe.cid, { sqhd: 2 });
  }, { ic: { maxh2cdata: 4096 } });
  try {
    await qp.submit(sqeWrite(1, 0n, 40, false), { dataOut: data.subarray(0, 20000) });
    assert.ok(seen);
    assert.deepEqual(seen.data, data);
    assert.deepEqual(seen.offsets, [0, 4096, 8192, 12000, 16096]);
  } finally {
    qp.destroy();
    await target.close();
  }
});

test('read reassembles several C2HData PDUs into one buffer', T, async () => {
  const data = randomBytes(10000);
  const { target, qp } = await withTarget(async (c) => {
    const cmd = await c.nextCommand();
    assert.equal(cmd.sqe.sgl.length, 10000);
    c.c2h(cmd.sqe.cid, 0, data.subarray(0, 3000), { last: false });
    c.c2h(cmd.sqe.cid, 3000, data.subarray(3000, 9000), { last: false });
    c.c2h(cmd.sqe.cid, 9000, data.subarray(9000), { last: true });
    c.respond(cmd.sqe.cid, { sqhd: 2 });
  });
  try {
    const r = await qp.submit(sqeRead(1, 0n, 20), { dataInLength: 10000 });
    assert.deepEqual(r.data, data);
    assert.equal(qp.stats().bytesIn, 10000);
  } finally {
    qp.destroy();
    await target.close();
  }
});

test('header and data digests on: write via R2T and read round-trip', T, async () => {
  const data = randomBytes(9000);
  const { target, qp } = await withTarget(async (c) => {
    assert.equal(c.opts.hdgst && c.opts.ddgst, true);
    const w = await c.nextCommand();
    c.r2t(w.sqe.cid, 0, 9000);
    const got = await c.receiveH2C(w.sqe.cid);
    c.respond(w.sqe.cid, { sqhd: 2 });
    const r = await c.nextCommand();
    c.c2h(r.sqe.cid, 0, got.data, { last: true });
    c.respond(r.sqe.cid, { sqhd: 3 });
  }, { qp: { hdgst: true, ddgst: true } });
  try {
    await qp.submit(sqeWrite(1, 0n, 18, false), { dataOut: data });
    const r = await qp.submit(sqeRead(1, 0n, 18), { dataInLength: 9000 });
    assert.deepEqual(r.data, data);
  } finally {
    qp.destroy();
    await target.close();
  }
});

test('SQ flow control: CATTR asks to disable, SQHD 0xFFFF disables, SUCCESS then completes a read', T, async () => {
  const data = randomBytes(512);
  const { target, qp } = await withTarget(async (c) => {
    assert.equal(c.sqFlowDisabledAsked, true);
    const cmd = await c.nextCommand();
    c.c2h(cmd.sqe.cid, 0, data, { last: true, success: true });
  }, { connect: { sqhd: 0xffff }, qp: { disableSqFlowControl: true } });
  try {
    assert.equal(qp.sqFlowControl, false);
    const r = await qp.submit(sqeRead(1, 0n, 1), { dataInLength: 512 });
    assert.deepEqual(r.data, data);
    assert.equal(qp.stats().inFlight, 0);
  } finally {
    qp.destroy();
    await target.close();
  }
});

test('command ids are bounded by the queue size; extra commands wait in FIFO order', T, async () => {
  const order: number[] = [];
  let host: QueuePair | undefined;
  const { target, qp } = await withTarget(async (c) => {
    // queueSize 3 → 2 commands in flight at most.
    const a = await c.nextCommand();
    const b = await c.nextCommand();
    // All four submitted: two in flight, the other two wait on the host for a free cid.
    await until(() => host !== undefined && host.stats().waiting === 2, 'two commands waiting for a cid');
    assert.equal(host?.stats().inFlight, 2, 'a third command must wait for a free cid');
    order.push(a.sqe.nsid, b.sqe.nsid);
    c.respond(a.sqe.cid, { sqhd: 2 });
    const c3 = await c.nextCommand();
    order.push(c3.sqe.nsid);
    c.respond(b.sqe.cid, { sqhd: 0 });
    const c4 = await c.nextCommand();
    order.push(c4.sqe.nsid);
    c.respond(c3.sqe.cid, { sqhd: 1 });
    c.respond(c4.sqe.cid, { sqhd: 2 });
  }, { qp: { queueSize: 3 } });
  host = qp;
  try {
    await Promise.all([1, 2, 3, 4].map((nsid) => qp.submit(sqeFlush(nsid))));
    assert.deepEqual(order, [1, 2, 3, 4]);
  } finally {
    qp.destroy();
    await target.close();
  }
});

test('NVMe error status rejects the command with NVMF_ERR_NVME_STATUS and keeps the queue', T, async () => {
  const { target, qp } = await withTarget(async (c) => {
    const cmd = await c.nextCommand();
    c.respond(cmd.sqe.cid, { sqhd: 2, sc: 0x80, dnr: true });
    const ok = await c.nextCommand();
    c.respond(ok.sqe.cid, { sqhd: 3 });
  });
  try {
    const err = await rejectsCode(qp.submit(sqeFlush(1)), ErrorCode.NVME_STATUS);
    assert.equal(err.status?.sc, 0x80);
    assert.equal(err.retriable, false);
    assert.equal((await qp.submit(sqeFlush(1))).cqe.ok, true);
  } finally {
    qp.destroy();
    await target.close();
  }
});

test('Connect refused: NVMF_ERR_CONNECT_FAILED with the NVMe status', T, async () => {
  const target = await FakeTarget.start(async (c) => {
    await c.acceptConnect({ sct: 1, sc: 0x82, dnr: true });
  });
  try {
    const err = await rejectsCode(QueuePair.connect(qpOpts(target.port)), ErrorCode.CONNECT_FAILED);
    assert.equal(err.status?.sct, 1);
    assert.equal(err.status?.sc, 0x82);
  } finally {
    await target.close();
  }
});

test('connection refused: NVMF_ERR_CONNECT_FAILED', T, async () => {
  const target = await FakeTarget.start(() => undefined);
  const port = target.port;
  await target.close();
  await rejectsCode(QueuePair.connect(qpOpts(port)), ErrorCode.CONNECT_FAILED);
});

// ---------------------------------------------------------------- ICResp checks

for (const [name, ic] of [
  ['MAXH2CDATA below 4096', { maxh2cdata: 2048 }],
  ['MAXH2CDATA not a multiple of 4', { maxh2cdata: 4098 }],
  ['digest refused', { hdgst: false }],
  ['digest forced on', { ddgst: true }],
  ['non-zero PFV', { pfv: 1 }],
] as const) {
  test(`ICResp rejected: ${name} → NVMF_ERR_ICRESP_INVALID`, T, async () => {
    const target = await FakeTarget.start(async (c) => { await c.nextPdu(); }, ic);
    try {
      await rejectsCode(QueuePair.connect(qpOpts(target.port, { hdgst: name === 'digest refused' })), ErrorCode.ICRESP_INVALID);
    } finally {
      await target.close();
    }
  });
}

test('target that never answers ICReq → NVMF_ERR_TIMEOUT within the connect budget', T, async () => {
  // Swallow the ICReq: drop the fake's data handler so nothing ever answers.
  const silent = await FakeTarget.start(async (c) => { c.socket.removeAllListeners('data'); });
  try {
    await rejectsCode(QueuePair.connect(qpOpts(silent.port, { connectTimeoutMs: 200 })), ErrorCode.TIMEOUT);
  } finally {
    await silent.close();
  }
});

// ---------------------------------------------------------------- malicious PDUs

function header(type: number, flags: number, hlen: number, pdo: number, plen: number, size = hlen): Buffer {
  const b = Buffer.alloc(size);
  b[0] = type; b[1] = flags; b[2] = hlen; b[3] = pdo; b.writeUInt32LE(plen, 4);
  return b;
}

test('wrong PDU type (a host-only CapsuleCmd from the target) → PDU_INVALID_TYPE, TermReq FES 1', T, async () => {
  await expectFatal(async (c) => {
    await c.nextCommand();
    c.send(header(0x04, 0, 72, 0, 72));
  }, ErrorCode.PDU_INVALID_TYPE, 1);
});

test('unknown PDU type 0x0a → PDU_INVALID_TYPE', T, async () => {
  await expectFatal(async (c) => {
    await c.nextCommand();
    c.send(header(0x0a, 0, 24, 0, 24));
  }, ErrorCode.PDU_INVALID_TYPE, 1);
});

test('plen too big for the negotiated data limit → PDU_TOO_LARGE before buffering, FES 5', T, async () => {
  await expectFatal(async (c) => {
    const cmd = await c.nextCommand();
    const h = header(0x07, 0x04, 24, 24, 24 + 0x7fff0000);
    h.writeUInt16LE(cmd.sqe.cid, 8);
    h.writeUInt32LE(0x7fff0000, 16);
    c.send(h);
  }, ErrorCode.PDU_TOO_LARGE, 5);
});

test('plen too small for a CapsuleResp → PDU_INVALID_HEADER', T, async () => {
  await expectFatal(async (c) => {
    await c.nextCommand();
    c.send(header(0x05, 0, 24, 0, 20));
  }, ErrorCode.PDU_INVALID_HEADER, 1);
});

test('C2HData past the command length → DATA_OUT_OF_RANGE, FES 4', T, async () => {
  await expectFatal(async (c) => {
    const cmd = await c.nextCommand();
    c.c2h(cmd.sqe.cid, 0, Buffer.alloc(8192), { last: true });
  }, ErrorCode.DATA_OUT_OF_RANGE, 4);
});

test('C2HData out of order (datao skips ahead) → DATA_OUT_OF_RANGE', T, async () => {
  await expectFatal(async (c) => {
    const cmd = await c.nextCommand();
    c.c2h(cmd.sqe.cid, 1024, Buffer.alloc(1024), { last: false });
  }, ErrorCode.DATA_OUT_OF_RANGE, 4);
});

test('C2HData for a command that reads nothing → PDU_SEQUENCE', T, async () => {
  await expectFatal(async (c) => {
    const cmd = await c.nextCommand();
    c.c2h(cmd.sqe.cid, 0, Buffer.alloc(512), { last: true });
  }, ErrorCode.PDU_SEQUENCE, 2, (qp) => qp.submit(sqeFlush(1)));
});

test('CapsuleResp for an unknown cccid → UNKNOWN_CCCID', T, async () => {
  await expectFatal(async (c) => {
    await c.nextCommand();
    c.respond(77, { sqhd: 2 });
  }, ErrorCode.UNKNOWN_CCCID, 1);
});

test('C2HData for an unknown cccid → UNKNOWN_CCCID', T, async () => {
  await expectFatal(async (c) => {
    await c.nextCommand();
    c.c2h(99, 0, Buffer.alloc(512));
  }, ErrorCode.UNKNOWN_CCCID, 1);
});

test('reused cccid (a second CapsuleResp for a completed command) → UNKNOWN_CCCID', T, async () => {
  await expectFatal(async (c) => {
    const a = await c.nextCommand();
    c.respond(a.sqe.cid, { sqhd: 2 });
    const b = await c.nextCommand();
    c.respond(a.sqe.cid, { sqhd: 3 });
    void b;
  }, ErrorCode.UNKNOWN_CCCID, 1, async (qp) => {
    await qp.submit(sqeFlush(1));
    return qp.submit(sqeFlush(1));
  });
});

test('SUCCESS while SQ flow control is on (SPDK default): reads complete, the SQ head advances, counted', T, async () => {
  // queueSize 3: two commands fit the SQ. The target answers every read with C2HData SUCCESS
  // and never a CapsuleResp, so no SQHD ever arrives: unless each SUCCESS advances the host's
  // view of the SQ head, the third read waits forever for a slot.
  const datas = [0, 1, 2, 3, 4, 5].map(() => randomBytes(512));
  const { target, qp } = await withTarget(async (c) => {
    for (let i = 0; i < datas.length; i++) {
      const cmd = await c.nextCommand();
      c.c2h(cmd.sqe.cid, 0, datas[cmd.sqe.nsid - 1] as Buffer, { last: true, success: true });
    }
  }, { qp: { queueSize: 3 } });
  try {
    assert.equal(qp.sqFlowControl, true);
    const got = await Promise.all(datas.map((_, i) => qp.submit(sqeRead(i + 1, 0n, 1), { dataInLength: 512 })));
    got.forEach((r, i) => assert.deepEqual(r.data, datas[i]));
    const s = qp.stats();
    assert.equal(s.c2hSuccess, 6);
    assert.equal(s.c2hSuccessWithSqFlow, 6);
    assert.equal(s.bytesIn, 6 * 512);
    assert.equal(s.errors, 0);
    assert.equal(s.inFlight, 0);
  } finally {
    qp.destroy();
    await target.close();
  }
});

test('SUCCESS with SQ flow control on, then a CQE with an older SQHD: the head never moves back', T, async () => {
  const data = randomBytes(512);
  const { target, qp } = await withTarget(async (c) => {
    const a = await c.nextCommand(); // flush, SQ slot 1
    const b = await c.nextCommand(); // read, SQ slot 2
    c.c2h(b.sqe.cid, 0, data, { last: true, success: true }); // b fetched: head is slot 0 now
    c.respond(a.sqe.cid, { sqhd: 2 }); // stale: the head as it was before b was fetched
    // Two more commands fit only if the stale SQHD did not rewind the head.
    const x = await c.nextCommand();
    const y = await c.nextCommand();
    c.respond(x.sqe.cid, { sqhd: 1 });
    c.respond(y.sqe.cid, { sqhd: 2 });
  }, { qp: { queueSize: 3 } });
  try {
    const [, rb] = await Promise.all([qp.submit(sqeFlush(1)), qp.submit(sqeRead(1, 0n, 1), { dataInLength: 512 })]);
    assert.deepEqual(rb.data, data);
    await Promise.all([qp.submit(sqeFlush(1)), qp.submit(sqeFlush(1))]);
    assert.equal(qp.stats().c2hSuccessWithSqFlow, 1);
  } finally {
    qp.destroy();
    await target.close();
  }
});

test('SUCCESS without LAST_PDU with SQ flow control on → still rejected', T, async () => {
  const { target, qp, closed } = await withTarget(async (c) => {
    const cmd = await c.nextCommand();
    const parts = encodeC2HData({ cccid: cmd.sqe.cid, datao: 0, last: true, success: true }, Buffer.alloc(4096), c.opts);
    (parts[0] as Buffer)[1] = 0x08; // SUCCESS, LAST_PDU cleared
    c.send(parts);
  });
  try {
    assert.equal(qp.sqFlowControl, true);
    const err = await rejectsCode(qp.submit(sqeRead(1, 0n, 8), { dataInLength: 4096 }), ErrorCode.PDU_INVALID_HEADER);
    assert.equal(err.fes, 1);
    assert.equal((await closed)?.code, ErrorCode.PDU_INVALID_HEADER);
  } finally {
    qp.destroy();
    await target.close();
  }
});

test('SUCCESS without LAST_PDU → rejected as an invalid header', T, async () => {
  const { target, qp, closed } = await withTarget(async (c) => {
    const cmd = await c.nextCommand();
    const parts = encodeC2HData({ cccid: cmd.sqe.cid, datao: 0, last: true, success: true }, Buffer.alloc(4096), c.opts);
    (parts[0] as Buffer)[1] = 0x08; // SUCCESS, LAST_PDU cleared
    c.send(parts);
  }, { connect: { sqhd: 0xffff }, qp: { disableSqFlowControl: true } });
  try {
    const err = await rejectsCode(qp.submit(sqeRead(1, 0n, 8), { dataInLength: 4096 }), ErrorCode.PDU_INVALID_HEADER);
    assert.equal(err.fes, 1);
    assert.equal((await closed)?.code, ErrorCode.PDU_INVALID_HEADER);
  } finally {
    qp.destroy();
    await target.close();
  }
});

test('C2HData completing the transfer without LAST_PDU → PDU_SEQUENCE', T, async () => {
  await expectFatal(async (c) => {
    const cmd = await c.nextCommand();
    c.c2h(cmd.sqe.cid, 0, Buffer.alloc(4096), { last: false });
  }, ErrorCode.PDU_SEQUENCE, 2);
});

test('C2HData after LAST_PDU → PDU_SEQUENCE', T, async () => {
  await expectFatal(async (c) => {
    const cmd = await c.nextCommand();
    c.c2h(cmd.sqe.cid, 0, Buffer.alloc(2048), { last: true });
    c.c2h(cmd.sqe.cid, 2048, Buffer.alloc(2048), { last: true });
  }, ErrorCode.PDU_SEQUENCE, 2);
});

test('R2T beyond the command data → DATA_OUT_OF_RANGE', T, async () => {
  await expectFatal(async (c) => {
    const cmd = await c.nextCommand();
    c.r2t(cmd.sqe.cid, 0, 1 << 30);
  }, ErrorCode.DATA_OUT_OF_RANGE, 4, (qp) => qp.submit(sqeWrite(1, 0n, 16, false), { dataOut: Buffer.alloc(8192) }));
});

test('R2T for a read command → PDU_SEQUENCE', T, async () => {
  await expectFatal(async (c) => {
    const cmd = await c.nextCommand();
    c.r2t(cmd.sqe.cid, 0, 4096);
  }, ErrorCode.PDU_SEQUENCE, 2);
});

test('bad header digest → HEADER_DIGEST, TermReq FES 3', T, async () => {
  await expectFatal(async (c) => {
    const cmd = await c.nextCommand();
    const pdu = Buffer.concat(encodeCapsuleResp(encodeCqe({ cid: cmd.sqe.cid, sqhd: 2 }), c.opts));
    pdu[24] = (pdu[24] as number) ^ 0xff;
    c.send(pdu);
  }, ErrorCode.HEADER_DIGEST, 3, (qp) => qp.submit(sqeFlush(1)), { qp: { hdgst: true } });
});

test('bad data digest → that command fails with DATA_DIGEST, the connection stays up', T, async () => {
  const data = randomBytes(4096);
  const { target, qp } = await withTarget(async (c) => {
    const cmd = await c.nextCommand();
    const pdu = Buffer.concat(encodeC2HData({ cccid: cmd.sqe.cid, datao: 0, last: true, success: false }, data, c.opts));
    pdu[pdu.length - 1] = (pdu[pdu.length - 1] as number) ^ 0xff;
    c.send(pdu);
    c.respond(cmd.sqe.cid, { sqhd: 2 });
    const again = await c.nextCommand();
    c.c2h(again.sqe.cid, 0, data, { last: true });
    c.respond(again.sqe.cid, { sqhd: 3 });
  }, { qp: { ddgst: true } });
  try {
    await rejectsCode(qp.submit(sqeRead(1, 0n, 8), { dataInLength: 4096 }), ErrorCode.DATA_DIGEST);
    assert.equal(qp.connected, true);
    const r = await qp.submit(sqeRead(1, 0n, 8), { dataInLength: 4096 });
    assert.deepEqual(r.data, data);
    assert.equal(crc32c(r.data as Buffer), crc32c(data));
  } finally {
    qp.destroy();
    await target.close();
  }
});

test('successful completion with less data than requested → SHORT_READ, queue stays up', T, async () => {
  const { target, qp } = await withTarget(async (c) => {
    const cmd = await c.nextCommand();
    c.c2h(cmd.sqe.cid, 0, Buffer.alloc(1024), { last: true });
    c.respond(cmd.sqe.cid, { sqhd: 2 });
  });
  try {
    await rejectsCode(qp.submit(sqeRead(1, 0n, 8), { dataInLength: 4096 }), ErrorCode.SHORT_READ);
    assert.equal(qp.connected, true);
  } finally {
    qp.destroy();
    await target.close();
  }
});

test('C2HTermReq from the target → TERM_REQ_RECEIVED for every in-flight command, no TermReq back', T, async () => {
  const { target, qp, closed, conn } = await withTarget(async (c) => {
    await c.nextCommand();
    await c.nextCommand();
    c.send(encodeTermReq(0x03, 2, 0));
  });
  try {
    const a = qp.submit(sqeFlush(1));
    const b = qp.submit(sqeRead(1, 0n, 1), { dataInLength: 512 });
    const errA = await rejectsCode(a, ErrorCode.TERM_REQ_RECEIVED);
    await rejectsCode(b, ErrorCode.TERM_REQ_RECEIVED);
    assert.equal(errA.fes, 2);
    assert.equal((await closed)?.code, ErrorCode.TERM_REQ_RECEIVED);
    await conn().closed;
    assert.equal(conn().termReqs.length, 0);
  } finally {
    qp.destroy();
    await target.close();
  }
});

test('target closes mid-command → CONNECTION_CLOSED', T, async () => {
  await expectFatal(async (c) => {
    await c.nextCommand();
    c.socket.destroy();
  }, ErrorCode.CONNECTION_CLOSED, undefined);
});

test('command timeout → TIMEOUT and the queue is torn down', T, async () => {
  await expectFatal(async (c) => {
    await c.nextCommand();
  }, ErrorCode.TIMEOUT, undefined, (qp) => qp.submit(sqeFlush(1), { timeoutMs: 100 }), { qp: { timeoutMs: 200 } });
});

test('a stuck command times out at its deadline even while other commands keep completing', T, async (t) => {
  const { target, qp, closed } = await withTarget(async (c) => {
    await c.nextCommand(); // never answered
    for (;;) {
      const cmd = await c.nextCommand().catch(() => undefined);
      if (cmd === undefined) return;
      c.respond(cmd.sqe.cid, { sqhd: 0xffff });
    }
  }, { qp: { timeoutMs: 300, queueSize: 4 }, connect: { sqhd: 0xffff } });
  try {
    // The deadline clock (Date) and the queue's tick timer are mocked from 0: deadline 300.
    t.mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 0 });
    const stuck = track(qp.submit(sqeFlush(1)));
    // A quick command completes in every 10 mocked ms up to 290: each new one must not push
    // the stuck one's deadline back, and none of them times out.
    for (let ms = 0; ms < 290; ms += 10) {
      await qp.submit(sqeFlush(2));
      t.mock.timers.tick(10);
    }
    await turns(10);
    assert.equal(stuck.done, false, 'the stuck command is within its timeout');
    t.mock.timers.tick(10); // 300: the deadline (the queue's tick timer may be a real one: wait for it)
    await until(() => stuck.done, 'the stuck command timed out');
    await rejectsCode(stuck.promise, ErrorCode.TIMEOUT);
    assert.equal((await closed)?.code, ErrorCode.TIMEOUT);
  } finally {
    t.mock.timers.reset();
    qp.destroy();
    await target.close();
  }
});

test('SQHD beyond the queue size → PDU_INVALID_HEADER', T, async () => {
  await expectFatal(async (c) => {
    const cmd = await c.nextCommand();
    c.respond(cmd.sqe.cid, { sqhd: 500 });
  }, ErrorCode.PDU_INVALID_HEADER, 1, (qp) => qp.submit(sqeFlush(1)));
});

test('SQHD outside the submitted range (one past the tail) → PDU_INVALID_HEADER, not a wedged SQ (issue 14 finding 5)', T, async () => {
  // Connect leaves head = tail = 1; one command makes tail 2. SQHD 3 would claim the controller
  // consumed an entry never submitted, and make the SQ look full for ever after.
  await expectFatal(async (c) => {
    const cmd = await c.nextCommand();
    c.respond(cmd.sqe.cid, { sqhd: 3 });
  }, ErrorCode.PDU_INVALID_HEADER, 1, (qp) => qp.submit(sqeFlush(1)));
});

test('a command waiting for an SQ slot times out from submission (stale SQHD keeps the SQ full) (issue 14 finding 5)', T, async () => {
  // queueSize 3: after Connect head = tail = 1. The target completes both commands but never
  // moves SQHD (legal, in range): tail wraps to 0, (0 + 1) % 3 === head, the SQ looks full with
  // nothing in flight. The third command must still fail within its own timeout.
  const { target, qp, closed } = await withTarget(async (c) => {
    const a = await c.nextCommand();
    c.respond(a.sqe.cid, { sqhd: 1 });
    const b = await c.nextCommand();
    c.respond(b.sqe.cid, { sqhd: 1 });
    await c.closed;
  }, { qp: { queueSize: 3, timeoutMs: 5000 } });
  try {
    await qp.submit(sqeFlush(1));
    await qp.submit(sqeFlush(2));
    await rejectsCode(qp.submit(sqeFlush(3), { timeoutMs: 150 }), ErrorCode.TIMEOUT);
    assert.equal((await closed)?.code, ErrorCode.TIMEOUT);
  } finally {
    qp.destroy();
    await target.close();
  }
});

test('destroy() fails waiting and in-flight commands once and emits close once', T, async () => {
  const { target, qp } = await withTarget(async (c) => { await c.nextCommand(); }, { qp: { queueSize: 2 } });
  try {
    let closes = 0;
    qp.on('close', () => closes++);
    const a = qp.submit(sqeFlush(1));
    const b = qp.submit(sqeFlush(2)); // waits: queueSize 2 → one cid
    assert.equal(qp.stats().waiting, 1);
    qp.destroy(new NvmfNbdError(ErrorCode.ABORTED, 'test'));
    qp.destroy();
    await rejectsCode(a, ErrorCode.ABORTED);
    await rejectsCode(b, ErrorCode.ABORTED);
    assert.equal(closes, 1);
  } finally {
    await target.close();
  }
});

// ---------------------------------------------------------------- seeded random input

/** xorshift32: a dependency-free, reproducible byte source. */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    return x;
  };
}

test('seeded random PDUs from the target end in a typed error, never a crash or hang', { timeout: 20_000 }, async () => {
  for (let seed = 1; seed <= 40; seed++) {
    const next = rng(seed * 2654435761);
    const { target, qp, closed } = await withTarget(async (c) => {
      const cmd = await c.nextCommand();
      // A plausible header (controller PDU types, right hlen) with random flags/lengths and fields,
      // aimed at the in-flight cid half of the time, then random tail bytes.
      const types = [0x01, 0x03, 0x05, 0x07, 0x09, 0x04, 0x0b];
      const type = types[next() % types.length] as number;
      const h = Buffer.alloc(24 + (next() % 64));
      for (let i = 0; i < h.length; i++) h[i] = next() & 0xff;
      h[0] = type;
      h[2] = type === 0x01 ? 128 : 24;
      if (next() % 2 === 0) h.writeUInt32LE(24 + (next() % 4096), 4);
      if (next() % 2 === 0) h.writeUInt16LE(cmd.sqe.cid, 8);
      c.send(h);
      c.socket.end();
    }, { qp: { timeoutMs: 1000 } });
    try {
      const res = await qp.submit(sqeRead(1, 0n, 8), { dataInLength: 4096 }).then(() => undefined, (e: unknown) => e);
      assert.ok(res instanceof NvmfNbdError, `seed ${seed}: ${String(res)}`);
      const err = await closed;
      assert.ok(err instanceof NvmfNbdError, `seed ${seed}: close without a typed error`);
    } finally {
      qp.destroy();
      await target.close();
    }
  }
});
