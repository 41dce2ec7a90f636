/**
 * QueuePair option mappings and limits against the scripted fake target (issue 15 item 2,
 * transport survivors): the Connect SQE fields (admin vs I/O queue, KATO only on the admin
 * queue, SQSIZE 0-based, CATTR), queue size and CPDA limits on both sides, the in-capsule limit
 * per queue type and after setInCapsuleMax, transfer limits with their messages, 0-byte data,
 * commands without a deadline in awaitingReply/load, and I/O vs admin status naming.
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
import { realSleep, until } from '../helpers/clock';

const T = { timeout: 20_000 };
const HOSTID = Buffer.alloc(16, 0x11);

function opts(port: number, o: Partial<QueuePairOptions> = {}): QueuePairOptions {
  return {
    host: '127.0.0.1', port, qid: 1, queueSize: 8, subnqn: 'nqn.test:sub', hostnqn: 'nqn.test:host', hostid: HOSTID,
    cntlid: 1, connectTimeoutMs: 10_000, timeoutMs: 10_000, ...o,
  };
}

/** A fake that accepts Connect (kept in `connect`) and answers every later command with success, recording it. */
async function recorder(o: Partial<QueuePairOptions> = {}, ic: FakeIcResp = {}): Promise<{ target: FakeTarget; qp: QueuePair; connect: ReceivedCommand; cmds: ReceivedCommand[]; conn: FakeConn }> {
  let connect: ReceivedCommand | undefined;
  const cmds: ReceivedCommand[] = [];
  const target = await FakeTarget.start(async (c) => {
    connect = await c.acceptConnect();
    for (let sqhd = 2; ; sqhd++) {
      const cmd = await c.nextCommand().catch(() => undefined);
      if (cmd === undefined) return;
      cmds.push(cmd);
      if (cmd.sqe.sgl.type === 0x5a && cmd.sqe.opcode === 0x01) {
        c.r2t(cmd.sqe.cid, 0, cmd.sqe.sgl.length);
        await c.receiveH2C(cmd.sqe.cid);
      }
      if (cmd.sqe.opcode !== 0x0c) c.respond(cmd.sqe.cid, { sqhd: sqhd % (o.queueSize ?? 8) });
    }
  }, ic);
  const qp = await QueuePair.connect(opts(target.port, o));
  return { target, qp, connect: connect as ReceivedCommand, cmds, conn: target.conns[0] as FakeConn };
}

async function done(t: { target: FakeTarget; qp: QueuePair }): Promise<void> {
  t.qp.destroy();
  await t.target.close();
}

test('Connect SQE: admin queue carries QID 0, SQSIZE N-1 and KATO; an I/O queue never KATO; CATTR only when asked', T, async () => {
  const admin = await recorder({ qid: 0, queueSize: 5, kato: 15_000, cntlid: 0xffff });
  try {
    const raw = admin.connect.raw;
    assert.deepEqual([raw.readUInt16LE(42), raw.readUInt16LE(44), raw[46], raw.readUInt32LE(48)], [0, 4, 0, 15_000]);
    assert.equal(admin.connect.data?.length, 1024, 'Connect data in the capsule');
    assert.equal(admin.connect.sqe.sgl.type, 0x01);
  } finally {
    await done(admin);
  }
  const io = await recorder({ qid: 3, queueSize: 9, kato: 15_000, disableSqFlowControl: true });
  try {
    const raw = io.connect.raw;
    assert.deepEqual([raw.readUInt16LE(42), raw.readUInt16LE(44), raw[46], raw.readUInt32LE(48)], [3, 8, 4, 0]);
  } finally {
    await done(io);
  }
  const noKato = await recorder({ qid: 0 });
  try {
    assert.equal(noKato.connect.raw.readUInt32LE(48), 0, 'no kato given: 0');
  } finally {
    await done(noKato);
  }
});

test('queue size 2..65536: outside refused before dialling, with the value', T, async () => {
  for (const queueSize of [1, 65537, 0]) {
    const e = await rejectsCode(QueuePair.connect(opts(1, { queueSize })), ErrorCode.INVALID_ARGUMENT);
    assert.equal(e.message, `queue size ${queueSize} out of range 2..65536`);
  }
  for (const queueSize of [2, 65536]) {
    const t = await recorder({ queueSize });
    try {
      assert.equal(t.connect.raw.readUInt16LE(44), queueSize - 1);
      assert.equal((await t.qp.submit(sqeFlush(1))).cqe.ok, true);
    } finally {
      await done(t);
    }
  }
});

test('ICResp CPDA 31 is accepted (data padded to 128 bytes), 32 refused', T, async () => {
  const t = await recorder({ inCapsuleMax: 4096 }, { cpda: 31 });
  try {
    await t.qp.submit(sqeWrite(1, 0n, 1, false), { dataOut: Buffer.alloc(512, 7) });
    assert.deepEqual(t.cmds[0]?.data, Buffer.alloc(512, 7));
  } finally {
    await done(t);
  }
  const target = await FakeTarget.start(() => undefined, { cpda: 32 });
  try {
    const e = await rejectsCode(QueuePair.connect(opts(target.port)), ErrorCode.ICRESP_INVALID);
    assert.match(e.message, /CPDA 32/);
  } finally {
    await target.close();
  }
});

test('in-capsule limit: 8 KiB on the admin queue, none on an I/O queue by default, then setInCapsuleMax (negative = 0)', T, async () => {
  const admin = await recorder({ qid: 0, cntlid: 0xffff });
  try {
    await admin.qp.submit(sqeWrite(1, 0n, 16, false), { dataOut: Buffer.alloc(8192, 1) });
    await admin.qp.submit(sqeWrite(1, 0n, 17, false), { dataOut: Buffer.alloc(8196, 2) });
    assert.deepEqual(admin.cmds.map((c) => [c.sqe.sgl.type, c.data?.length]), [[0x01, 8192], [0x5a, undefined]]);
  } finally {
    await done(admin);
  }
  const io = await recorder({ qid: 1 });
  try {
    await io.qp.submit(sqeWrite(1, 0n, 1, false), { dataOut: Buffer.alloc(4, 1) });
    io.qp.setInCapsuleMax(600);
    await io.qp.submit(sqeWrite(1, 0n, 1, false), { dataOut: Buffer.alloc(600, 2) });
    await io.qp.submit(sqeWrite(1, 0n, 2, false), { dataOut: Buffer.alloc(601, 3) });
    io.qp.setInCapsuleMax(-5);
    await io.qp.submit(sqeWrite(1, 0n, 1, false), { dataOut: Buffer.alloc(4, 4) });
    assert.deepEqual(io.cmds.map((c) => [c.sqe.sgl.type, c.sqe.sgl.length, c.data?.length]),
      [[0x5a, 4, undefined], [0x01, 600, 600], [0x5a, 601, undefined], [0x5a, 4, undefined]]);
  } finally {
    await done(io);
  }
});

test('transfer limits: bidirectional and over maxTransfer refused with the size; a forced in-capsule write is not bounded; 0-byte data is none', T, async () => {
  const t = await recorder({ maxTransfer: 4096, inCapsuleMax: 8192 });
  try {
    let e = await rejectsCode(t.qp.submit(sqeRead(1, 0n, 1), { dataInLength: 512, dataOut: Buffer.alloc(512) }), ErrorCode.INVALID_ARGUMENT);
    assert.equal(e.message, 'bidirectional commands are not supported');
    e = await rejectsCode(t.qp.submit(sqeRead(1, 0n, 9), { dataInLength: 4097 }), ErrorCode.INVALID_ARGUMENT);
    assert.equal(e.message, 'transfer of 4097 bytes exceeds the queue limit 4096');
    e = await rejectsCode(t.qp.submit(sqeWrite(1, 0n, 9, false), { dataOut: Buffer.alloc(4100) }), ErrorCode.INVALID_ARGUMENT);
    assert.equal(e.message, 'transfer of 4100 bytes exceeds the queue limit 4096');
    await t.qp.submit(sqeWrite(1, 0n, 9, false), { dataOut: Buffer.alloc(4100, 9), inCapsule: true });
    await t.qp.submit(sqeFlush(1), { dataOut: Buffer.alloc(0) });
    assert.deepEqual(t.cmds.map((c) => [c.sqe.sgl.type, c.sqe.sgl.length, c.data?.length]), [[0x01, 4100, 4100], [0x5a, 0, undefined]]);
    assert.equal(t.qp.stats().commands, 3, 'Connect and the two commands that went out');
    assert.equal(t.qp.connected, true, 'refusals do not end the queue');
  } finally {
    await done(t);
  }
});

test('a command without a deadline (AER) counts in load but not in awaitingReply', T, async () => {
  const t = await recorder();
  try {
    const aer = t.qp.submit(sqeAsyncEventRequest(), { timeoutMs: Infinity });
    aer.catch(() => undefined);
    await until(() => t.cmds.length === 1, 'AER at the target');
    assert.equal(t.qp.awaitingReply, 0);
    assert.equal(t.qp.load, 1);
    await t.qp.submit(sqeFlush(1));
    assert.equal(t.qp.awaitingReply, 0);
    assert.equal(t.qp.stats().inFlight, 1);
    const second = t.qp.submit(sqeAsyncEventRequest(), { timeoutMs: Infinity });
    second.catch(() => undefined);
    await until(() => t.cmds.length === 3, 'second AER');
    assert.equal(t.qp.awaitingReply, 0);
    assert.equal(t.qp.load, 2);
  } finally {
    await done(t);
  }
});

test('error statuses are named as I/O statuses on an I/O queue and as Fabrics ones on the admin queue', T, async () => {
  for (const qid of [1, 0]) {
    const target = await FakeTarget.start(async (c) => {
      await c.acceptConnect();
      const cmd = await c.nextCommand();
      c.respond(cmd.sqe.cid, { sqhd: 2, sct: 1, sc: 0x82, dnr: true });
    });
    const qp = await QueuePair.connect(opts(target.port, { qid, cntlid: qid === 0 ? 0xffff : 1 }));
    try {
      const e = await rejectsCode(qp.submit(sqeFlush(1)), ErrorCode.NVME_STATUS);
      assert.equal(e.message, `queue ${qid} command 0x0: ${qid > 0 ? 'Attempted Write to Read Only Range' : 'Connect Invalid Parameters'} (sct 1 sc 0x82, dnr)`);
      assert.equal(qp.stats().errors, 1);
    } finally {
      qp.destroy();
      await target.close();
    }
  }
});

class Recorded extends QueueCommand {
  result: Promise<{ cqe?: Cqe; err?: NvmfNbdError }>;
  private settle!: (r: { cqe?: Cqe; err?: NvmfNbdError }) => void;
  constructor() {
    super();
    this.result = new Promise((r) => { this.settle = r; });
  }
  onQpComplete(cqe: Cqe): void { this.settle({ cqe }); }
  onQpError(err: NvmfNbdError): void { this.settle({ err }); }
}

test('record defaults: the queue timeout, in-capsule only within the limit, an error status is an error; promise completions without data carry no data key', T, async () => {
  const target = await FakeTarget.start(async (c) => {
    await c.acceptConnect();
    const w = await c.nextCommand();
    assert.equal(w.sqe.sgl.type, 0x5a, 'over the in-capsule limit: R2T, not forced into the capsule');
    c.r2t(w.sqe.cid, 0, w.sqe.sgl.length);
    await c.receiveH2C(w.sqe.cid);
    // Answer after the host has certainly passed a 1 ms deadline (a timeout default of +1 ms would fire).
    await realSleep(50);
    c.respond(w.sqe.cid, { sqhd: 2 });
    const f = await c.nextCommand();
    c.respond(f.sqe.cid, { sqhd: 3, sc: 0x02 });
    const g = await c.nextCommand();
    c.respond(g.sqe.cid, { sqhd: 4 });
  });
  const qp = await QueuePair.connect(opts(target.port, { inCapsuleMax: 512 }));
  try {
    const w = new Recorded();
    w.sqe = sqeWrite(1, 0n, 2, false);
    w.dataOut = Buffer.alloc(1024, 5);
    qp.submitCommand(w);
    assert.equal((await w.result).cqe?.ok, true);
    const f = new Recorded();
    f.sqe = sqeFlush(1);
    qp.submitCommand(f);
    const r = await f.result;
    assert.equal(r.err?.code, ErrorCode.NVME_STATUS, 'no acceptErrorStatus by default');
    const g = await qp.submit(sqeFlush(1));
    assert.equal('data' in g, false);
  } finally {
    qp.destroy();
    await target.close();
  }
});

/** A fake that accepts Connect and then runs `script`; returns the queue and its close error. */
async function scripted(script: (c: FakeConn) => Promise<void>, o: Partial<QueuePairOptions> = {}, ic: FakeIcResp = {}) {
  const target = await FakeTarget.start(async (c) => {
    await c.acceptConnect();
    await script(c);
  }, ic);
  const qp = await QueuePair.connect(opts(target.port, o));
  const closed = new Promise<NvmfNbdError | undefined>((r) => qp.once('close', r));
  return { target, qp, closed };
}

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
      const e = await rejectsCode(QueuePair.connect(opts(target.port, o)), ErrorCode.ICRESP_INVALID);
      assert.equal(e.message, `queue 1: invalid ICResp: ${why}`);
    } finally {
      await target.close();
    }
  }
  const ok = await FakeTarget.start(async (c) => { await c.acceptConnect(); }, { maxh2cdata: 4096 });
  try {
    const qp = await QueuePair.connect(opts(ok.port));
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
