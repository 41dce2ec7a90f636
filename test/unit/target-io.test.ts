/**
 * The target's happy paths through raw PDUs: bring-up, Identify, discovery log, in-capsule and
 * R2T writes, reads (split C2HData, SUCCESS flag), digests, Flush, DSM, Write Zeroes, AEN on
 * namespace add/remove, and shutdown.
 */
import { strict as assert } from 'node:assert';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import {
  encodeDsmRanges, GenericStatus, sqeAsyncEventRequest, sqeDatasetManagement,
  sqeFlush, sqeGetFeatures, sqeGetLogPage, sqeIdentify, sqeKeepAlive, sqePropertyGet, sqePropertySet, sqeRead,
  sqeSetFeatures, sqeWrite, sqeWriteZeroes,
} from '../../src/wire';
import { DISCOVERY_NQN, NvmeTarget } from '../../src/embedded-target';
import { connectAdmin, connectIo, enable, RawHost } from './target-rawhost';

const NQN = 'nqn.2014-08.org.nvmf-nbd:test-io';
const NS_SIZE = 16 << 20;
const T = { timeout: 10_000 };

describe('target: host bring-up and I/O', () => {
  let target: NvmeTarget;
  let port = 0;
  const errors: string[] = [];

  before(async () => {
    target = new NvmeTarget({
      listen: { host: '127.0.0.1', port: 0 },
      advertise: { host: '10.0.2.100', port: 4420 },
      subsystems: [{ nqn: NQN, serial: 'SN-TEST-1', namespaces: [{ sizeBytes: NS_SIZE, backing: { memory: true } }] }],
      maxH2CData: 16384,
      log: (level, msg) => { if (level === 'error') errors.push(msg); },
    });
    port = (await target.listen()).port;
  });
  after(async () => {
    await target.close();
  });

  async function open(o: { digests?: boolean; disableSqFc?: boolean } = {}): Promise<{ admin: RawHost; io: RawHost; cntlid: number }> {
    const admin = await RawHost.connect(port);
    await admin.icreq({ hdgst: o.digests, ddgst: o.digests });
    const c = await connectAdmin(admin, NQN, { kato: 5000 });
    assert.equal(c.cqe.ok, true);
    assert.equal(await enable(admin), 1, 'CSTS.RDY after CC.EN');
    const io = await RawHost.connect(port);
    await io.icreq({ hdgst: o.digests, ddgst: o.digests });
    const ic = await connectIo(io, NQN, c.cqe.dw0, { sqsize: 127, disableSqFc: o.disableSqFc });
    assert.equal(ic.cqe.ok, true);
    assert.equal(ic.cqe.dw0, c.cqe.dw0);
    return { admin, io, cntlid: c.cqe.dw0 };
  }

  it('CAP, VS and Identify Controller describe a fabrics I/O controller', T, async () => {
    const h = await RawHost.connect(port);
    const icr = await h.icreq();
    assert.equal(icr.maxh2cdata, 16384);
    assert.equal(icr.cpda, 0);
    const c = await connectAdmin(h, NQN);
    const cap = await h.submit(sqePropertyGet(0, true));
    const capv = (BigInt(cap.cqe.dw1) << 32n) | BigInt(cap.cqe.dw0);
    assert.equal(Number(capv & 0xffffn), 127, 'MQES = queueSize - 1');
    assert.equal(Number((capv >> 37n) & 1n), 1, 'CSS NVM');
    const vs = await h.submit(sqePropertyGet(8, false));
    assert.equal(vs.cqe.dw0, 0x00010400);
    await enable(h);
    const id = (await h.submit(sqeIdentify(1), { readLength: 4096 })).data;
    assert.equal(id.length, 4096);
    assert.equal(id.subarray(4, 24).toString('latin1').trim(), 'SN-TEST-1');
    assert.equal(id[77], 5, 'MDTS 128 KiB');
    assert.equal(id.readUInt16LE(78), c.cqe.dw0, 'CNTLID');
    assert.equal(id.readUInt32LE(92) & 0x100, 0x100, 'OAES namespace attribute notices');
    assert.equal(id[111], 1, 'CNTRLTYPE I/O');
    assert.ok(id.readUInt16LE(320) > 0, 'KAS');
    assert.equal(id[512], 0x66);
    assert.equal(id[513], 0x44);
    assert.equal(id.readUInt16LE(520) & 0x0c, 0x0c, 'ONCS DSM + Write Zeroes');
    assert.equal(id[525]! & 1, 1, 'VWC');
    assert.equal(id.readUInt32LE(536) & 0x3, 1, 'SGLS');
    assert.equal(id.subarray(768, 768 + NQN.length).toString(), NQN);
    assert.equal(id.readUInt32LE(1792), (64 + 8192) / 16, 'IOCCSZ');
    assert.equal(id.readUInt16LE(1800), 0, 'ICDOFF');
    const list = (await h.submit(sqeIdentify(2, 0), { readLength: 4096 })).data;
    assert.equal(list.readUInt32LE(0), 1);
    assert.equal(list.readUInt32LE(4), 0);
    const ns = (await h.submit(sqeIdentify(0, 1), { readLength: 4096 })).data;
    assert.equal(ns.readBigUInt64LE(0), BigInt(NS_SIZE / 512));
    assert.equal((ns.readUInt32LE(128) >>> 16) & 0xff, 9, 'LBADS 512');
    assert.equal(ns[33]! & 0x7, 1, 'DLFEAT reads zeroes after deallocate');
    const desc = (await h.submit(sqeIdentify(3, 1), { readLength: 4096 })).data;
    assert.deepEqual([desc[0], desc[1], desc[12], desc[13]], [1, 8, 2, 16]);
    assert.deepEqual(desc.subarray(16, 32), ns.subarray(104, 120), 'NGUID matches Identify Namespace');
    const inactive = await h.submit(sqeIdentify(0, 7), { readLength: 4096 });
    assert.equal(inactive.cqe.ok, true);
    assert.equal(inactive.data.readBigUInt64LE(0), 0n, 'inactive NSID reads as zeroes');
    const smart = await h.submit(sqeGetLogPage(0x02, 512), { readLength: 512 });
    assert.equal(smart.cqe.ok, true);
    assert.equal(smart.data.readUInt16LE(1), 300, 'composite temperature (K)');
    assert.equal(smart.data[3], 100, 'available spare');
    const errLog = await h.submit(sqeGetLogPage(0x01, 64), { readLength: 64 });
    assert.equal(errLog.cqe.ok, true);
    assert.equal(errLog.data.readBigUInt64LE(0), 0n, 'no errors recorded');
    const nq = await h.submit(sqeGetFeatures(0x07));
    assert.equal(nq.cqe.dw0, 7 | (7 << 16), 'default: 8 I/O queues');
    const ka = await h.submit(sqeKeepAlive());
    assert.equal(ka.cqe.ok, true);
    h.close();
  });

  it('discovery controller returns a log with our subsystem and the advertised address', T, async () => {
    const h = await RawHost.connect(port);
    await h.icreq();
    const c = await connectAdmin(h, DISCOVERY_NQN);
    assert.equal(c.cqe.ok, true);
    await enable(h);
    const id = (await h.submit(sqeIdentify(1), { readLength: 4096 })).data;
    assert.equal(id[111], 2, 'CNTRLTYPE discovery');
    const hdr = (await h.submit(sqeGetLogPage(0x70, 1024), { readLength: 1024 })).data;
    assert.equal(hdr.readBigUInt64LE(8), 1n, 'numrec');
    const e = (await h.submit(sqeGetLogPage(0x70, 1024, 0, 1024), { readLength: 1024 })).data;
    assert.equal(e[0], 3, 'TCP');
    assert.equal(e[2], 2, 'NVM subsystem');
    assert.equal(e.subarray(32, 36).toString(), '4420');
    assert.equal(e.subarray(256, 256 + NQN.length).toString(), NQN);
    assert.equal(e.subarray(512, 522).toString(), '10.0.2.100');
    const nsOnDisc = await h.submit(sqeIdentify(0, 1), { readLength: 4096 });
    assert.equal(nsOnDisc.cqe.status.sc, GenericStatus.INVALID_FIELD);
    h.close();
  });

  for (const digests of [false, true]) {
    it(`write and read back in-capsule and via R2T (digests ${digests ? 'on' : 'off'})`, T, async () => {
      const { admin, io } = await open({ digests });
      const small = randomBytes(4096);
      const w1 = await io.submit(sqeWrite(1, 8n, 8, false), { write: small });
      assert.equal(w1.cqe.ok, true);
      const big = randomBytes(128 << 10); // > in-capsule size, split at MAXH2CDATA 16 KiB
      const w2 = await io.submit(sqeWrite(1, 1000n, 256, true), { write: big });
      assert.equal(w2.cqe.ok, true);
      const r1 = await io.submit(sqeRead(1, 8n, 8), { readLength: 4096 });
      assert.equal(r1.cqe.ok, true);
      assert.deepEqual(r1.data, small);
      const r2 = await io.submit(sqeRead(1, 1000n, 256), { readLength: 128 << 10 });
      assert.deepEqual(r2.data, big);
      assert.equal(r2.viaSuccess, false);
      const f = await io.submit(sqeFlush(1));
      assert.equal(f.cqe.ok, true);
      const fall = await io.submit(sqeFlush(0xffffffff));
      assert.equal(fall.cqe.ok, true);
      admin.close();
    });
  }

  it('a bad data digest fails only that command (Data Transfer Error), the queue stays up', T, async () => {
    const { admin, io } = await open({ digests: true });
    const before = target.stats().dataDigestErrors;
    const r = await io.submit(sqeWrite(1, 0n, 1, false), { write: Buffer.alloc(512, 7), badDataDigest: true });
    assert.equal(r.cqe.status.sc, GenericStatus.DATA_TRANSFER_ERROR);
    assert.equal(target.stats().dataDigestErrors, before + 1);
    const k = await io.submit(sqeFlush(1));
    assert.equal(k.cqe.ok, true, 'queue still works');
    admin.close();
  });

  it('DSM deallocate and Write Zeroes make ranges read as zeroes', T, async () => {
    const { admin, io } = await open();
    const data = randomBytes(8192);
    await io.submit(sqeWrite(1, 0n, 16, false), { write: data });
    await io.submit(sqeWrite(1, 4096n, 16, false), { write: data });
    const dsm = await io.submit(sqeDatasetManagement(1, 1, true), { write: encodeDsmRanges([{ slba: 4n, nlb: 4 }]) });
    assert.equal(dsm.cqe.ok, true);
    const r = (await io.submit(sqeRead(1, 0n, 16), { readLength: 8192 })).data;
    assert.deepEqual(r.subarray(0, 2048), data.subarray(0, 2048));
    assert.ok(r.subarray(2048, 4096).every((b) => b === 0));
    assert.deepEqual(r.subarray(4096), data.subarray(4096));
    const wz = await io.submit(sqeWriteZeroes(1, 4100n, 8, { deallocate: false, fua: true }));
    assert.equal(wz.cqe.ok, true);
    const r2 = (await io.submit(sqeRead(1, 4096n, 16), { readLength: 8192 })).data;
    assert.deepEqual(r2.subarray(0, 2048), data.subarray(0, 2048));
    assert.ok(r2.subarray(2048, 6144).every((b) => b === 0));
    assert.deepEqual(r2.subarray(6144), data.subarray(6144));
    // Linux sends a 4 KiB DSM buffer whatever NR says: only the first NR ranges count.
    const padded = Buffer.alloc(4096, 0xff);
    encodeDsmRanges([{ slba: 20n, nlb: 2 }]).copy(padded);
    const dsm4k = await io.submit(sqeDatasetManagement(1, 1, true), { write: padded });
    assert.equal(dsm4k.cqe.ok, true);
    const tooShort = await io.submit(sqeDatasetManagement(1, 2, true), { write: encodeDsmRanges([{ slba: 0n, nlb: 1 }]) });
    assert.equal(tooShort.cqe.status.sc, 0x0f, 'Data SGL Length Invalid');
    const oob = await io.submit(sqeDatasetManagement(1, 1, true), { write: encodeDsmRanges([{ slba: BigInt(NS_SIZE / 512), nlb: 1 }]) });
    assert.equal(oob.cqe.status.sc, GenericStatus.LBA_OUT_OF_RANGE);
    admin.close();
  });

  it('with SQ flow control disabled: SQHD FFFFh and reads complete with C2HData SUCCESS', T, async () => {
    const { admin, io } = await open({ disableSqFc: true });
    const data = randomBytes(4096);
    const w = await io.submit(sqeWrite(1, 64n, 8, false), { write: data });
    assert.equal(w.cqe.sqhd, 0xffff);
    const r = await io.submit(sqeRead(1, 64n, 8), { readLength: 4096 });
    assert.equal(r.viaSuccess, true);
    assert.deepEqual(r.data, data);
    // A later command's completion: a CapsuleResp for the read would have come before it (one stream).
    assert.equal((await io.submit(sqeFlush(1))).cqe.ok, true);
    assert.equal(io.stray.length, 0, 'no CapsuleResp after SUCCESS');
    admin.close();
  });

  it('SQHD advances with each command when flow control is on', T, async () => {
    const { admin, io } = await open();
    const a = await io.submit(sqeFlush(1));
    const b = await io.submit(sqeFlush(1));
    assert.equal(b.cqe.sqhd, (a.cqe.sqhd + 1) % 128);
    admin.close();
  });

  it('namespace add/remove raises the namespace-attribute AEN and fills the Changed NS log', T, async () => {
    const { admin, io } = await open();
    const aec = await admin.submit(sqeSetFeatures(0x0b, 0x100));
    assert.equal(aec.cqe.ok, true);
    assert.equal((await admin.submit(sqeGetFeatures(0x0b))).cqe.dw0, 0x100);
    const aer = admin.submit(sqeAsyncEventRequest(), { timeoutMs: 5000 });
    const nsid = await target.addNamespace(NQN, { sizeBytes: 1 << 20, lbaSize: 4096, backing: { memory: true } });
    assert.equal(nsid, 2);
    const ev = await aer;
    assert.equal(ev.cqe.dw0, 0x040002, 'notice / ns attribute changed / log 04h');
    const log = (await admin.submit(sqeGetLogPage(0x04, 4096), { readLength: 4096 })).data;
    assert.equal(log.readUInt32LE(0), 2);
    assert.equal(log.readUInt32LE(4), 0);
    const again = (await admin.submit(sqeGetLogPage(0x04, 4096), { readLength: 4096 })).data;
    assert.equal(again.readUInt32LE(0), 0, 'cleared on read');
    const ns2 = (await admin.submit(sqeIdentify(0, 2), { readLength: 4096 })).data;
    assert.equal(ns2.readBigUInt64LE(0), 256n);
    assert.equal((ns2.readUInt32LE(128) >>> 16) & 0xff, 12);
    const w = await io.submit(sqeWrite(2, 1n, 1, false), { write: Buffer.alloc(4096, 0x5a) });
    assert.equal(w.cqe.ok, true);
    const aer2 = admin.submit(sqeAsyncEventRequest(), { timeoutMs: 5000 });
    await target.removeNamespace(NQN, 2);
    assert.equal((await aer2).cqe.dw0, 0x040002);
    const gone = await io.submit(sqeRead(2, 0n, 1), { readLength: 4096 });
    assert.equal(gone.cqe.status.sc, GenericStatus.INVALID_NAMESPACE_OR_FORMAT);
    admin.close();
  });

  it('shutdown via CC.SHN reports CSTS.SHST complete', T, async () => {
    const { admin } = await open();
    const cc = await admin.submit(sqePropertySet(0x14, false, 0x00464001n));
    assert.equal(cc.cqe.ok, true);
    let shst = 0;
    for (let i = 0; i < 2000 && shst !== 2; i++) { // polls the state; the bound only guards a hang
      shst = ((await admin.submit(sqePropertyGet(0x1c, false))).cqe.dw0 >>> 2) & 3;
      if (shst !== 2) await new Promise((res) => setTimeout(res, 10));
    }
    assert.equal(shst, 2);
    admin.close();
  });

  it('no protocol errors were logged by the happy paths', () => {
    assert.deepEqual(errors, []);
    assert.equal(target.stats().protocolErrors, 0);
  });
});

describe('target: large transfers', () => {
  it('a read larger than one C2HData PDU arrives in order-split PDUs with LAST on the final one', { timeout: 10_000 }, async () => {
    const t = new NvmeTarget({
      listen: { host: '127.0.0.1', port: 0 },
      mdtsPages: 128, // 512 KiB, four 128 KiB C2HData PDUs
      subsystems: [{ nqn: NQN, namespaces: [{ sizeBytes: 4 << 20, backing: { memory: true } }] }],
    });
    const { port } = await t.listen();
    try {
      const admin = await RawHost.connect(port);
      await admin.icreq();
      const c = await connectAdmin(admin, NQN);
      await enable(admin);
      const id = (await admin.submit(sqeIdentify(1), { readLength: 4096 })).data;
      assert.equal(id[77], 7, 'MDTS 2^7 pages');
      const io = await RawHost.connect(port);
      await io.icreq({ hdgst: true, ddgst: true });
      await connectIo(io, NQN, c.cqe.dw0);
      const data = randomBytes(512 << 10);
      const w = await io.submit(sqeWrite(1, 0n, 1024, false), { write: data });
      assert.equal(w.cqe.ok, true);
      const r = await io.submit(sqeRead(1, 0n, 1024), { readLength: 512 << 10 });
      assert.equal(r.c2hPdus, 4);
      assert.deepEqual(r.lastFlags, [false, false, false, true]);
      assert.deepEqual(r.data, data);
      admin.close();
    } finally {
      await t.close();
    }
  });
});
