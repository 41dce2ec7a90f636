/**
 * The target against a misbehaving host: malformed PDUs → C2HTermReq with the right FES and a
 * closed connection; bad commands → the exact NVMe status; the target keeps serving afterwards.
 */
import { strict as assert } from 'node:assert';
import { after, before, describe, it, mock } from 'node:test';
import {
  crc32c, encodeCapsuleCmd, encodeH2CData, encodeIcReq, GenericStatus, FabricsStatus, CommandSpecificStatus,
  sqeIdentify, sqeRead, sqeWrite, sqeSetFeatures, PduType, sqeConnect, encodeConnectData, sqeAsyncEventRequest,
} from '../../src/wire';
import { NvmeTarget } from '../../src/embedded-target';
import { connectAdmin, connectIo, enable, HOSTNQN, openIoQueue, RawHost } from './target-rawhost';

const NQN = 'nqn.2014-08.org.nvmf-nbd:test-proto';
const T = { timeout: 10_000 };

describe('target: malicious host', () => {
  let target: NvmeTarget;
  let port = 0;
  const logs: string[] = [];

  before(async () => {
    target = new NvmeTarget({
      listen: { host: '127.0.0.1', port: 0 },
      subsystems: [{ nqn: NQN, namespaces: [{ sizeBytes: 8 << 20, backing: { memory: true } }] }],
      log: (level, msg) => logs.push(`${level}: ${msg}`),
      keepAliveGraceMs: 100,
    });
    port = (await target.listen()).port;
  });
  after(async () => {
    await target.close();
  });

  /** A connected, enabled controller with I/O queue 1 on a second connection. */
  function ioQueue(): Promise<{ admin: RawHost; io: RawHost }> {
    return openIoQueue(port, NQN);
  }

  async function expectTermReq(h: RawHost, fes: number, fei?: number): Promise<void> {
    await h.waitClosed();
    assert.ok(h.termReq, 'expected a C2HTermReq before the close');
    assert.equal(h.termReq.fes, fes);
    if (fei !== undefined) assert.equal(h.termReq.fei, fei);
  }

  it('ICReq with PFV ≠ 0 → TermReq FES 6 (unsupported parameter), FEI 8', T, async () => {
    const h = await RawHost.connect(port);
    const req = encodeIcReq({ hpda: 0, hdgst: false, ddgst: false, maxr2t: 0 });
    req.writeUInt16LE(1, 8);
    h.send(req);
    await expectTermReq(h, 6, 8);
  });

  it('ICReq with a wrong plen → TermReq FES 1 (invalid header field), FEI 4', T, async () => {
    const h = await RawHost.connect(port);
    const req = encodeIcReq({ hpda: 0, hdgst: false, ddgst: false, maxr2t: 0 });
    req.writeUInt32LE(200, 4);
    h.send(req);
    await expectTermReq(h, 1, 4);
  });

  it('ICReq with HPDA > 31 → TermReq FES 1, FEI 10', T, async () => {
    const h = await RawHost.connect(port);
    h.send(encodeIcReq({ hpda: 32, hdgst: false, ddgst: false, maxr2t: 0 }));
    await expectTermReq(h, 1, 10);
  });

  it('CapsuleCmd before ICReq → TermReq FES 2 (PDU sequence error)', T, async () => {
    const h = await RawHost.connect(port);
    h.send(encodeCapsuleCmd(sqeIdentify(1), undefined, { hdgst: false, ddgst: false, pda: 0 }));
    await expectTermReq(h, 2);
  });

  it('a second ICReq → TermReq FES 2', T, async () => {
    const h = await RawHost.connect(port);
    await h.icreq();
    h.send(encodeIcReq({ hpda: 0, hdgst: false, ddgst: false, maxr2t: 0 }));
    await expectTermReq(h, 2);
  });

  it('bad header digest → TermReq FES 3 (header digest error)', T, async () => {
    const h = await RawHost.connect(port);
    const r = await h.icreq({ hdgst: true, ddgst: true });
    assert.equal(r.hdgst, true);
    assert.equal(r.ddgst, true);
    const bufs = encodeCapsuleCmd(sqeIdentify(1), undefined, h.tx);
    const hdr = bufs[0]!;
    hdr.writeUInt32LE((crc32c(hdr.subarray(0, 72)) ^ 1) >>> 0, 72);
    h.send(bufs);
    await expectTermReq(h, 3, 72);
  });

  it('a PDU type the controller never receives (R2T) → TermReq FES 1', T, async () => {
    const h = await RawHost.connect(port);
    await h.icreq();
    const r2t = Buffer.alloc(24);
    r2t[0] = PduType.R2T;
    r2t[2] = 24;
    r2t.writeUInt32LE(24, 4);
    h.send(r2t);
    await expectTermReq(h, 1, 0);
  });

  it('CapsuleCmd with in-capsule data beyond the I/O queue limit → TermReq FES 5', T, async () => {
    const { admin, io } = await ioQueue();
    io.submit(sqeWrite(1, 0n, 32, false), { write: Buffer.alloc(16384), inCapsule: true }).catch(() => undefined);
    await expectTermReq(io, 5);
    admin.close();
  });

  it('in-capsule data larger than the target ever accepts → TermReq FES 5 before buffering', T, async () => {
    const h = await RawHost.connect(port);
    await h.icreq();
    // Header only: plen claims 64 MiB of data; the target must reject from the header.
    const hdr = Buffer.alloc(72);
    hdr[0] = PduType.CAPSULE_CMD;
    hdr[2] = 72;
    hdr[3] = 72;
    hdr.writeUInt32LE(72 + (64 << 20), 4);
    h.send(hdr);
    await expectTermReq(h, 5);
  });

  it('H2CData with an unknown ttag → TermReq FES 1, FEI 10', T, async () => {
    const { admin, io } = await ioQueue();
    io.send(encodeH2CData({ cccid: 1, ttag: 777, datao: 0, last: true }, Buffer.alloc(512), io.tx));
    await expectTermReq(io, 1, 10);
    admin.close();
  });

  it('H2CData out of order (datao skips ahead) → TermReq FES 2', T, async () => {
    const { admin, io } = await ioQueue();
    io.onR2T = (r2t) => {
      io.send(encodeH2CData({ cccid: r2t.cccid, ttag: r2t.ttag, datao: 4096, last: false }, Buffer.alloc(4096), io.tx));
      return true;
    };
    io.submit(sqeWrite(1, 0n, 32, false), { write: Buffer.alloc(16384), inCapsule: false }).catch(() => undefined);
    await expectTermReq(io, 2, 12);
    admin.close();
  });

  it('H2CData beyond the R2T range → TermReq FES 4 (data transfer out of range)', T, async () => {
    const { admin, io } = await ioQueue();
    io.onR2T = (r2t) => {
      io.send(encodeH2CData({ cccid: r2t.cccid, ttag: r2t.ttag, datao: 0, last: true }, Buffer.alloc(r2t.r2tl + 512), io.tx));
      return true;
    };
    io.submit(sqeWrite(1, 0n, 32, false), { write: Buffer.alloc(16384), inCapsule: false }).catch(() => undefined);
    await expectTermReq(io, 4, 12);
    admin.close();
  });

  it('H2CData without LAST_PDU on the final PDU → TermReq FES 2', T, async () => {
    const { admin, io } = await ioQueue();
    io.onR2T = (r2t) => {
      io.send(encodeH2CData({ cccid: r2t.cccid, ttag: r2t.ttag, datao: 0, last: false }, Buffer.alloc(r2t.r2tl), io.tx));
      return true;
    };
    io.submit(sqeWrite(1, 0n, 32, false), { write: Buffer.alloc(16384), inCapsule: false }).catch(() => undefined);
    await expectTermReq(io, 2, 1);
    admin.close();
  });

  it('Connect to an unknown subsystem → Connect Invalid Parameters (IATTR 1, IPO 256)', T, async () => {
    const h = await RawHost.connect(port);
    await h.icreq();
    const r = await connectAdmin(h, 'nqn.2014-08.org.example:nope');
    assert.equal(r.cqe.status.sct, 1);
    assert.equal(r.cqe.status.sc, FabricsStatus.CONNECT_INVALID_PARAMETERS);
    assert.equal(r.cqe.status.dnr, true);
    assert.equal(r.cqe.dw0, (1 << 16) | 256);
    h.close();
  });

  it('I/O queue Connect with no admin queue → Connect Invalid Parameters (cntlid, IPO 16)', T, async () => {
    const h = await RawHost.connect(port);
    await h.icreq();
    const r = await connectIo(h, NQN, 0x1234);
    assert.equal(r.cqe.status.sct, 1);
    assert.equal(r.cqe.status.sc, FabricsStatus.CONNECT_INVALID_PARAMETERS);
    assert.equal(r.cqe.dw0, (1 << 16) | 16);
    h.close();
  });

  it('I/O queue Connect beyond the granted queues → Connect Invalid Parameters (qid, IPO 42)', T, async () => {
    const admin = await RawHost.connect(port);
    await admin.icreq();
    const c = await connectAdmin(admin, NQN);
    await enable(admin);
    const nq = await admin.submit(sqeSetFeatures(0x07, 0x00000000)); // one SQ, one CQ
    assert.equal(nq.cqe.ok, true);
    assert.equal(nq.cqe.dw0, 0);
    const io = await RawHost.connect(port);
    await io.icreq();
    const r = await connectIo(io, NQN, c.cqe.dw0, { qid: 2 });
    assert.equal(r.cqe.status.sc, FabricsStatus.CONNECT_INVALID_PARAMETERS);
    assert.equal(r.cqe.dw0, 42);
    const ok1 = await connectIo(io, NQN, c.cqe.dw0, { qid: 1 });
    assert.equal(ok1.cqe.ok, true);
    admin.close();
    await io.waitClosed(); // the association ends with its admin queue
  });

  it('Connect with an oversized SQ → Connect Invalid Parameters (sqsize, IPO 44)', T, async () => {
    const h = await RawHost.connect(port);
    await h.icreq();
    const r = await connectAdmin(h, NQN, { sqsize: 128 });
    assert.equal(r.cqe.status.sc, FabricsStatus.CONNECT_INVALID_PARAMETERS);
    assert.equal(r.cqe.dw0, 44);
    h.close();
  });

  it('admin command before Connect → Command Sequence Error', T, async () => {
    const h = await RawHost.connect(port);
    await h.icreq();
    const r = await h.submit(sqeIdentify(1), { readLength: 4096 });
    assert.equal(r.cqe.status.sct, 0);
    assert.equal(r.cqe.status.sc, GenericStatus.COMMAND_SEQUENCE_ERROR);
    h.close();
  });

  it('command on a controller that is not enabled → Command Sequence Error with DNR', T, async () => {
    const h = await RawHost.connect(port);
    await h.icreq();
    await connectAdmin(h, NQN);
    const r = await h.submit(sqeIdentify(1), { readLength: 4096 });
    assert.equal(r.cqe.status.sc, GenericStatus.COMMAND_SEQUENCE_ERROR);
    assert.equal(r.cqe.status.dnr, true);
    assert.equal(r.data.length, 0, 'no data for a failed command');
    h.close();
  });

  it('read past the end → LBA Out of Range; unknown opcodes → Invalid Opcode', T, async () => {
    const { admin, io } = await ioQueue();
    const blocks = (8 << 20) / 512;
    const r = await io.submit(sqeRead(1, BigInt(blocks - 4), 8), { readLength: 4096 });
    assert.equal(r.cqe.status.sc, GenericStatus.LBA_OUT_OF_RANGE);
    assert.equal(r.cqe.status.dnr, true);
    const huge = await io.submit(sqeRead(1, 0xffffffffffffn, 1), { readLength: 512 });
    assert.equal(huge.cqe.status.sc, GenericStatus.LBA_OUT_OF_RANGE);
    const badNs = await io.submit(sqeRead(9, 0n, 1), { readLength: 512 });
    assert.equal(badNs.cqe.status.sc, GenericStatus.INVALID_NAMESPACE_OR_FORMAT);
    const ioOp = Buffer.alloc(64);
    ioOp[0] = 0x7c;
    ioOp.writeUInt32LE(1, 4);
    const u1 = await io.submit(ioOp);
    assert.equal(u1.cqe.status.sc, GenericStatus.INVALID_OPCODE);
    assert.equal(u1.cqe.status.dnr, true);
    const adminOp = Buffer.alloc(64);
    adminOp[0] = 0xc0;
    const u2 = await admin.submit(adminOp);
    assert.equal(u2.cqe.status.sc, GenericStatus.INVALID_OPCODE);
    const badLog = Buffer.alloc(64);
    badLog[0] = 0x02;
    badLog.writeUInt32LE(0xc0 | (127 << 16), 40);
    const lp = await admin.submit(badLog, { readLength: 512 });
    assert.equal(lp.cqe.status.sct, 1);
    assert.equal(lp.cqe.status.sc, CommandSpecificStatus.INVALID_LOG_PAGE);
    // The Read SGL must describe exactly the transfer.
    const short = await io.submit(sqeRead(1, 0n, 8), { readLength: 512 });
    assert.equal(short.cqe.status.sc, 0x0f);
    // A transfer beyond MDTS is refused before any buffer is allocated.
    const big = await io.submit(sqeWrite(1, 0n, 512, false), { write: Buffer.alloc(256 << 10), inCapsule: false });
    assert.equal(big.cqe.status.sc, GenericStatus.INVALID_FIELD);
    admin.close();
  });

  it('duplicate command identifier in flight → Command ID Conflict', T, async () => {
    const { admin } = await ioQueue();
    const aer = Buffer.alloc(64);
    aer[0] = 0x0c;
    // The AER stays outstanding; its promise is dropped when the dup overwrites the test's map.
    void admin.submit(aer, { cid: 500, timeoutMs: 300 }).catch(() => undefined);
    const dup = Buffer.alloc(64);
    dup[0] = 0x18;
    const r = await admin.submit(dup, { cid: 500 });
    assert.equal(r.cqe.status.sc, GenericStatus.CID_CONFLICT);
    admin.close();
  });

  it('AERs beyond AERL+1 → Asynchronous Event Request Limit Exceeded', T, async () => {
    const { admin } = await ioQueue();
    for (let i = 0; i < 4; i++) void admin.submit(sqeAsyncEventRequest(), { timeoutMs: 2000 }).catch(() => undefined);
    const r = await admin.submit(sqeAsyncEventRequest());
    assert.equal(r.cqe.status.sct, 1);
    assert.equal(r.cqe.status.sc, CommandSpecificStatus.AER_LIMIT_EXCEEDED);
    admin.close();
  });

  it('host not on the allow-list → Connect Invalid Host', T, async () => {
    const t2 = new NvmeTarget({
      listen: { host: '127.0.0.1', port: 0 },
      allowHosts: ['nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-000000000001'],
      subsystems: [{ nqn: NQN, namespaces: [{ sizeBytes: 1 << 20, backing: { memory: true } }] }],
    });
    const p = (await t2.listen()).port;
    try {
      const h = await RawHost.connect(p);
      await h.icreq();
      const r = await connectAdmin(h, NQN, { hostnqn: HOSTNQN });
      assert.equal(r.cqe.status.sct, 1);
      assert.equal(r.cqe.status.sc, FabricsStatus.CONNECT_INVALID_HOST);
      h.close();
    } finally {
      await t2.close();
    }
  });

  it('KATO expiry drops the association (admin and I/O queues); not before KATO (fake timers)', T, async () => {
    const admin = await RawHost.connect(port);
    await admin.icreq();
    const before = target.stats().keepAliveTimeouts;
    // The target arms its keep-alive timer at the admin Connect: fake from here on.
    mock.timers.enable({ apis: ['setTimeout'] });
    try {
      const c = await connectAdmin(admin, NQN, { kato: 300 });
      await enable(admin);
      const io = await RawHost.connect(port);
      await io.icreq();
      await connectIo(io, NQN, c.cqe.dw0);
      mock.timers.tick(299);
      assert.equal(target.stats().keepAliveTimeouts, before, 'not before KATO');
      assert.equal(admin.closed || io.closed, false);
      mock.timers.tick(60_000); // past KATO + the target's grace
      assert.equal(target.stats().keepAliveTimeouts, before + 1);
      await admin.waitClosed(5000);
      await io.waitClosed(5000);
    } finally {
      mock.timers.reset();
    }
  });

  it('more commands outstanding than the SQ holds → TermReq FES 2', T, async () => {
    const admin = await RawHost.connect(port);
    await admin.icreq();
    const c = await connectAdmin(admin, NQN);
    await enable(admin);
    const io = await RawHost.connect(port);
    await io.icreq();
    await connectIo(io, NQN, c.cqe.dw0, { sqsize: 1 }); // 2 entries
    // Three writes whose data is never sent (R2T ignored): they stay outstanding.
    io.onR2T = () => true;
    for (let i = 0; i < 3; i++) void io.submit(sqeWrite(1, 0n, 32, false), { write: Buffer.alloc(16384), inCapsule: false, timeoutMs: 3000 }).catch(() => undefined);
    await expectTermReq(io, 2);
    admin.close();
  });

  it('H2CTermReq from the host closes the connection', T, async () => {
    const h = await RawHost.connect(port);
    await h.icreq();
    const before = target.stats().termReqsReceived;
    const term = Buffer.alloc(24);
    term[0] = PduType.H2C_TERM_REQ;
    term[2] = 24;
    term.writeUInt32LE(24, 4);
    term.writeUInt16LE(1, 8);
    h.send(term);
    await h.waitClosed();
    assert.equal(h.termReq, undefined, 'no TermReq in answer to a TermReq');
    assert.equal(target.stats().termReqsReceived, before + 1);
  });

  it('I/O queue Connect naming another host\'s controller → Connect Invalid Parameters (IPO 16)', T, async () => {
    const admin = await RawHost.connect(port);
    await admin.icreq();
    const c = await connectAdmin(admin, NQN);
    await enable(admin);
    const io = await RawHost.connect(port);
    await io.icreq();
    const sqe = sqeConnect({ qid: 1, sqsize: 31, kato: 0, disableSqFlowControl: false });
    const data = encodeConnectData({ hostid: Buffer.alloc(16), cntlid: c.cqe.dw0, subnqn: NQN, hostnqn: 'nqn.2014-08.org.nvmexpress:uuid:99999999-0000-0000-0000-000000000000' });
    const r = await io.submit(sqe, { write: data });
    assert.equal(r.cqe.status.sc, FabricsStatus.CONNECT_INVALID_PARAMETERS);
    assert.equal(r.cqe.dw0, (1 << 16) | 16);
    io.close();
    admin.close();
  });

  it('seeded random commands each get a completion and leave the target healthy', { timeout: 30_000 }, async () => {
    const { admin, io } = await ioQueue();
    let seed = 777;
    const rnd = (): number => {
      seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
      return seed >>> 8;
    };
    const errorsBefore = target.stats().protocolErrors;
    // Opcodes left out: Fabrics (would re-Connect/disable), Set Features (KATO could end the
    // association mid-test), AER (completes only on an event).
    const skip = new Set([0x7f, 0x09, 0x0c]);
    for (const h of [admin, io]) {
      h.onR2T = (r2t) => {
        const step = h.maxh2cdata;
        for (let off = 0; off < r2t.r2tl; off += step) {
          const n = Math.min(step, r2t.r2tl - off);
          h.send(encodeH2CData({ cccid: r2t.cccid, ttag: r2t.ttag, datao: off, last: off + n === r2t.r2tl }, Buffer.alloc(n), h.tx));
        }
        return true;
      };
      for (let i = 0; i < 150; i++) {
        const sqe = Buffer.alloc(64);
        for (let j = 0; j < 64; j++) sqe[j] = rnd() & 0xff;
        if (skip.has(sqe[0]!)) sqe[0] = 0x18;
        sqe[1] = 0; // no fused commands
        if (h === io && rnd() % 2 === 0) sqe.writeUInt32LE(1, 4); // often a valid NSID
        const len = [0, 512, 4096, 65536, 1 << 20][rnd() % 5]!;
        const r = await h.submit(sqe, { readLength: len });
        assert.equal(typeof r.cqe.status.sc, 'number');
      }
    }
    assert.equal(target.stats().protocolErrors, errorsBefore);
    const id = await admin.submit(sqeIdentify(1), { readLength: 4096 });
    assert.equal(id.cqe.ok, true);
    admin.close();
  });

  it('random garbage after ICReq → TermReq or close, and the target keeps serving', T, async () => {
    let seed = 12345;
    const rnd = (): number => {
      seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
      return seed >>> 16;
    };
    for (let round = 0; round < 20; round++) {
      const h = await RawHost.connect(port);
      await h.icreq();
      const junk = Buffer.alloc(8 + (rnd() % 400));
      for (let i = 0; i < junk.length; i++) junk[i] = rnd() & 0xff;
      junk[0] = [0x04, 0x06, 0x00, 0x02, 0x55][rnd() % 5]!;
      h.send(junk);
      // Either a TermReq and close, or the target waits for the rest of a plausible PDU.
      await h.waitClosed(500).catch(() => h.close());
      if (h.termReq !== undefined) assert.ok(h.termReq.fes >= 1 && h.termReq.fes <= 6);
    }
    const h = await RawHost.connect(port);
    await h.icreq();
    const r = await connectAdmin(h, NQN);
    assert.equal(r.cqe.ok, true);
    assert.equal(await enable(h), 1);
    h.close();
    assert.ok(target.stats().protocolErrors > 0);
    assert.ok(logs.some((l) => l.startsWith('error: ') && l.includes('C2HTermReq')));
  });
});
