/**
 * Mutation-driven pins for the embedded target's queue (src/embedded-target/queue.ts, issue 15),
 * through a raw host on a real socket: the SGL checks of a command capsule (in-capsule data or
 * not, each with its own status), the in-capsule limit of each queue kind, the pre-Connect depth,
 * Fabrics commands on the wrong queue, Connect field errors with their exact IATTR/IPO, SQHD and
 * SQID in completions, the exact-length C2H transfer (truncated or zero padded), and the
 * H2CData checks of the R2T path (cccid, MAXH2CDATA, early LAST_PDU, data digest).
 * Each case asserts the exact status (SCT, SC, DNR) or the exact C2HTermReq FES/FEI.
 */
import { strict as assert } from 'node:assert';
import { after, before, describe, it, mock } from 'node:test';
import {
  encodeConnectData, encodeH2CData, FabricsStatus, GenericStatus, sqeConnect, sqeFlush, sqeIdentify, sqePropertyGet,
  sqePropertySet, sqeRead, sqeSetFeatures, sqeWrite,
} from '../../src/wire';
import { MemoryBackend, NvmeTarget } from '../../src/embedded-target';
import { TargetController } from '../../src/embedded-target/target-controller';
import { CC_ENABLE, connectAdmin, connectIo, enable, HOSTID, HOSTNQN, RawHost, type Reply } from './target-rawhost';

const NQN = 'nqn.2014-08.org.example:mut-target-queue';
const T = { timeout: 10_000 };
/** mdtsPages 4: MDTS 16 KiB. */
const MAX_TRANSFER = 4 * 4096;
/** I/O queue in-capsule data size of the main target (the admin queue's is fixed at 8 KiB). */
const IO_ICD = 4096;
const ADMIN_ICD = 8192;
const MAXH2CDATA = 4096;
const QUEUE_SIZE = 32;
const DATA_SGL_LENGTH_INVALID = 0x0f;
const G = GenericStatus;
/** SGL descriptor type byte (SQE byte 39) of a Data Block descriptor (type 0, subtype 0). */
const SGL_DATA_BLOCK = 0x00;
const SGL_DATA_BLOCK_OFFSET = 0x01;
const SGL_TRANSPORT_DATA_BLOCK = 0x5a;

const st = (r: Reply): [number, number, boolean] => [r.cqe.status.sct, r.cqe.status.sc, r.cqe.status.dnr];

function makeTarget(inCapsuleDataSize: number, logs: string[] = [], maxH2CData = MAXH2CDATA): NvmeTarget {
  return new NvmeTarget({
    listen: { host: '127.0.0.1', port: 0 },
    subsystems: [{ nqn: NQN, namespaces: [{ sizeBytes: 1 << 20, backing: { memory: true } }] }],
    mdtsPages: MAX_TRANSFER / 4096,
    inCapsuleDataSize,
    maxH2CData,
    queueSize: QUEUE_SIZE,
    log: (level, msg) => logs.push(`${level}: ${msg}`),
  });
}

describe('target queue: capsule checks, limits, fabrics, connect, H2CData', () => {
  let target: NvmeTarget;
  let port = 0;
  const hosts: RawHost[] = [];
  const logs: string[] = [];

  before(async () => {
    target = makeTarget(IO_ICD, logs);
    port = (await target.listen()).port;
  });
  after(async () => {
    for (const h of hosts) h.close();
    await target.close();
  });

  async function raw(o: { digests?: boolean } = {}): Promise<RawHost> {
    const h = await RawHost.connect(port);
    hosts.push(h);
    await h.icreq({ hdgst: o.digests, ddgst: o.digests });
    return h;
  }

  /** Admin queue (connected, enabled) and I/O queue 1 on a second connection. */
  async function ioQueue(o: { digests?: boolean; sqsize?: number } = {}): Promise<{ admin: RawHost; io: RawHost; cntlid: number }> {
    const admin = await raw(o);
    const c = await connectAdmin(admin, NQN);
    assert.equal(c.cqe.ok, true);
    await enable(admin);
    const io = await raw(o);
    const ic = await connectIo(io, NQN, c.cqe.dw0, { sqsize: o.sqsize });
    assert.equal(ic.cqe.ok, true);
    return { admin, io, cntlid: c.cqe.dw0 };
  }

  /** The C2HTermReq (FES, FEI) and the error log line naming it and what was wrong (`why`, a regexp source). */
  async function expectTermReq(h: RawHost, fes: number, fei: number, why?: string): Promise<void> {
    await h.waitClosed();
    assert.deepEqual(h.termReq, { fes, fei });
    if (why !== undefined) {
      const re = new RegExp(`^error: conn \\d+ [^ ]+ qid -?\\d+: protocol error, sending C2HTermReq fes ${fes} fei ${fei}: ${why}$`);
      assert.ok(logs.some((l) => re.test(l)), `no log line matching ${re}:\n${logs.slice(-5).join('\n')}`);
    }
  }

  it('in-capsule data: a host-to-controller command, an offset SGL at 0, exactly the data length — else its own status and nothing is written', T, async () => {
    const { io } = await ioQueue();
    const data = Buffer.alloc(512, 0x6d);
    const wr = (edit?: (sqe: Buffer) => void) => io.submit(sqeWrite(1, 3n, 1, false), { write: data, inCapsule: true, edit });
    assert.deepEqual(st(await io.submit(sqeRead(1, 3n, 1), { write: data, inCapsule: true })), [0, G.INVALID_FIELD, true], 'a Read carrying data');
    assert.deepEqual(st(await wr((s) => { s[39] = SGL_TRANSPORT_DATA_BLOCK; })), [0, G.SGL_DESCRIPTOR_TYPE_INVALID, true], 'transport SGL with in-capsule data');
    assert.deepEqual(st(await wr((s) => s.writeBigUInt64LE(512n, 24))), [0, G.SGL_OFFSET_INVALID, true], 'offset 512');
    assert.deepEqual(st(await wr((s) => s.writeUInt32LE(511, 32))), [0, DATA_SGL_LENGTH_INVALID, true], 'SGL one byte short');
    assert.deepEqual(st(await wr((s) => s.writeUInt32LE(513, 32))), [0, DATA_SGL_LENGTH_INVALID, true], 'SGL one byte long');
    const before = await io.submit(sqeRead(1, 3n, 1), { readLength: 512 });
    assert.ok(before.data.every((b) => b === 0), 'none of the refused writes reached the namespace');
    assert.equal((await wr()).cqe.ok, true);
    assert.deepEqual((await io.submit(sqeRead(1, 3n, 1), { readLength: 512 })).data, data);
  });

  it('in-capsule limit: I/O queue inCapsuleDataSize exactly is served, more → TermReq FES 5 FEI 4', T, async () => {
    const { io } = await ioQueue();
    const okW = await io.submit(sqeWrite(1, 0n, IO_ICD / 512, false), { write: Buffer.alloc(IO_ICD, 1), inCapsule: true });
    assert.equal(okW.cqe.ok, true);
    io.submit(sqeWrite(1, 0n, IO_ICD / 512 + 1, false), { write: Buffer.alloc(IO_ICD + 512, 2), inCapsule: true }).catch(() => undefined);
    await expectTermReq(io, 5, 4, `in-capsule data ${IO_ICD + 512} exceeds ${IO_ICD} \\(NVMF_ERR_PDU_TOO_LARGE\\)`);
  });

  it('SGL without in-capsule data: an offset SGL → Data SGL Length Invalid, a Data Block SGL → SGL Descriptor Type Invalid, no R2T for either', T, async () => {
    const { io } = await ioQueue();
    const r2ts: number[] = [];
    io.onR2T = (p) => { r2ts.push(p.cccid); return false; };
    const data = Buffer.alloc(1024, 0x42);
    const w = (type: number) => io.submit(sqeWrite(1, 8n, 2, false), { write: data, inCapsule: false, edit: (s) => { s[39] = type; } });
    assert.deepEqual(st(await w(SGL_DATA_BLOCK_OFFSET)), [0, DATA_SGL_LENGTH_INVALID, true]);
    assert.deepEqual(st(await w(SGL_DATA_BLOCK)), [0, G.SGL_DESCRIPTOR_TYPE_INVALID, true]);
    assert.deepEqual(r2ts, []);
    // A Read's SGL must be a transport data block too.
    const rd = await io.submit(sqeRead(1, 8n, 2), { readLength: 1024, edit: (s) => { s[39] = SGL_DATA_BLOCK_OFFSET; } });
    assert.deepEqual(st(rd), [0, G.SGL_DESCRIPTOR_TYPE_INVALID, true]);
    assert.equal(rd.data.length, 0);
    // The valid form is served through one R2T for the whole transfer.
    const good = await w(SGL_TRANSPORT_DATA_BLOCK);
    assert.equal(good.cqe.ok, true);
    assert.equal(r2ts.length, 1);
    assert.deepEqual((await io.submit(sqeRead(1, 8n, 2), { readLength: 1024 })).data, data);
  });

  it('MDTS on the admin queue (no I/O precheck there): a Connect SGL or an Identify buffer of MDTS is served, one block more → Invalid Field without R2T', T, async () => {
    const h = await raw();
    const r2tl: number[] = [];
    h.onR2T = (p) => { r2tl.push(p.r2tl); return false; };
    const cd = Buffer.alloc(MAX_TRANSFER + 512);
    encodeConnectData({ hostid: HOSTID, cntlid: 0xffff, subnqn: NQN, hostnqn: HOSTNQN }).copy(cd);
    const connect = () => sqeConnect({ qid: 0, sqsize: 15, kato: 0, disableSqFlowControl: false });
    assert.deepEqual(st(await h.submit(connect(), { write: cd, inCapsule: false })), [0, G.INVALID_FIELD, true]);
    assert.deepEqual(r2tl, []);
    const c = await h.submit(connect(), { write: cd.subarray(0, MAX_TRANSFER), inCapsule: false });
    assert.equal(c.cqe.ok, true);
    assert.deepEqual(r2tl, [MAX_TRANSFER]);
    await enable(h);
    const tooBig = await h.submit(sqeIdentify(1), { readLength: MAX_TRANSFER + 512 });
    assert.deepEqual(st(tooBig), [0, G.INVALID_FIELD, true]);
    assert.equal(tooBig.data.length, 0);
    // NVMe has no short transfers: the 4 KiB structure is zero padded to the SGL, or cut to it.
    const full = (await h.submit(sqeIdentify(1), { readLength: 4096 })).data;
    assert.equal(full.length, 4096);
    const padded = await h.submit(sqeIdentify(1), { readLength: MAX_TRANSFER });
    assert.equal(padded.cqe.ok, true);
    assert.equal(padded.data.length, MAX_TRANSFER);
    assert.deepEqual(padded.data.subarray(0, 4096), full);
    assert.ok(padded.data.subarray(4096).every((b) => b === 0), 'zero padding past the structure');
    const cut = await h.submit(sqeIdentify(1), { readLength: 100 });
    assert.equal(cut.cqe.ok, true);
    assert.deepEqual(cut.data, full.subarray(0, 100));
  });

  it('data is asked for (R2T) only when the command may run: an admin command is not prechecked as I/O; before Connect and on a disabled controller the answer is Command Sequence Error', T, async () => {
    // Admin Set Features carrying data: the admin queue skips the I/O precheck, so the data is
    // requested (had it been checked as I/O, opcode 09h would have been taken for DSM).
    const { admin, io } = await ioQueue();
    let adminR2Ts = 0;
    admin.onR2T = () => { adminR2Ts++; return false; };
    const sf = await admin.submit(sqeSetFeatures(0x0f, 10_000), { write: Buffer.alloc(512), inCapsule: false });
    assert.equal(adminR2Ts, 1);
    assert.equal(sf.cqe.ok, true, `Set Features with data: sc ${sf.cqe.status.sc}`);
    // Before Connect a Write's data is requested (only Fabrics could run there), then refused.
    const pre = await raw();
    let preR2Ts = 0;
    pre.onR2T = () => { preR2Ts++; return false; };
    assert.deepEqual(st(await pre.submit(sqeWrite(1, 0n, 1, false), { write: Buffer.alloc(512), inCapsule: false })), [0, G.COMMAND_SEQUENCE_ERROR, true]);
    assert.equal(preR2Ts, 1);
    assert.equal(pre.termReq, undefined);
    // CC.EN cleared: an I/O write is refused before its data is requested.
    assert.equal((await admin.submit(sqePropertySet(0x14, false, 0n))).cqe.ok, true);
    let ioR2Ts = 0;
    io.onR2T = () => { ioR2Ts++; return false; };
    assert.deepEqual(st(await io.submit(sqeWrite(1, 0n, 1, false), { write: Buffer.alloc(512), inCapsule: false })), [0, G.COMMAND_SEQUENCE_ERROR, true]);
    assert.equal(ioR2Ts, 0);
  });

  it('before Connect at most 4 commands may be outstanding: 4 waiting for data get 4 R2Ts with distinct tags, a 5th → TermReq FES 2', T, async () => {
    const h = await raw();
    const ttags: number[] = [];
    let fourR2Ts: () => void = () => undefined;
    const four = new Promise<void>((resolve) => { fourR2Ts = resolve; });
    h.onR2T = (p) => { // never send the data: the commands stay outstanding
      ttags.push(p.ttag);
      if (ttags.length === 4) fourR2Ts();
      return true;
    };
    const cd = encodeConnectData({ hostid: HOSTID, cntlid: 0xffff, subnqn: NQN, hostnqn: HOSTNQN });
    for (let i = 0; i < 4; i++) {
      h.submit(sqeConnect({ qid: 0, sqsize: 15, kato: 0, disableSqFlowControl: false }), { write: cd, inCapsule: false, timeoutMs: 3000 }).catch(() => undefined);
    }
    await four;
    assert.equal(h.termReq, undefined, 'four outstanding commands are allowed');
    assert.equal(new Set(ttags).size, 4, 'each R2T has its own transfer tag');
    h.submit(sqePropertyGet(0x1c, false), { timeoutMs: 3000 }).catch(() => undefined);
    await expectTermReq(h, 2, 0, 'more than 4 commands outstanding \\(SQ overflow\\) \\(NVMF_ERR_PDU_SEQUENCE\\)');
  });

  it('Fabrics on the wrong queue: Property Get/Set on an I/O queue → Invalid Field; before Connect → Command Sequence Error (SQID 0); unknown fctype → Invalid Opcode', T, async () => {
    const pre = await raw();
    const pg = await pre.submit(sqePropertyGet(0x1c, false));
    assert.deepEqual(st(pg), [0, G.COMMAND_SEQUENCE_ERROR, true]);
    assert.equal(pg.cqe.sqid, 0);
    assert.deepEqual(st(await pre.submit(sqePropertySet(0x14, false, CC_ENABLE))), [0, G.COMMAND_SEQUENCE_ERROR, true]);
    const authSend = sqePropertyGet(0, false);
    authSend[4] = 0x05; // Authentication Send
    assert.deepEqual(st(await pre.submit(authSend)), [0, G.COMMAND_SEQUENCE_ERROR, true], 'Auth Send before Connect');
    const authRecv = sqePropertyGet(0, false);
    authRecv[4] = 0x06; // Authentication Receive
    assert.deepEqual(st(await pre.submit(authRecv)), [0, G.COMMAND_SEQUENCE_ERROR, true], 'Auth Receive before Connect');

    const { admin, io } = await ioQueue();
    const ioPg = await io.submit(sqePropertyGet(0x1c, false));
    assert.deepEqual(st(ioPg), [0, G.INVALID_FIELD, true]);
    assert.equal(ioPg.cqe.sqid, 1, 'an I/O queue answers with its SQID');
    assert.deepEqual(st(await io.submit(sqePropertySet(0x14, false, CC_ENABLE))), [0, G.INVALID_FIELD, true]);
    const unknown = sqePropertyGet(0, false);
    unknown[4] = 0x10; // no such fctype (bits 1:0 = 0: no data)
    assert.deepEqual(st(await io.submit(unknown)), [0, G.INVALID_OPCODE, true]);
    const authAfter = sqePropertyGet(0, false);
    authAfter[4] = 0x05;
    assert.deepEqual(st(await admin.submit(authAfter)), [0, G.INVALID_OPCODE, true], 'Auth Send on a queue that does not authenticate');
    authAfter[4] = 0x06;
    assert.deepEqual(st(await admin.submit(authAfter)), [0, G.INVALID_OPCODE, true], 'Auth Receive on a queue that does not authenticate');
    // Admin: an unknown property or a read-only one → Invalid Field; CAP as 8 bytes = its two 4-byte halves.
    assert.deepEqual(st(await admin.submit(sqePropertyGet(0x30, false))), [0, G.INVALID_FIELD, true]);
    assert.deepEqual(st(await admin.submit(sqePropertySet(0x08, false, 1n))), [0, G.INVALID_FIELD, true]);
    const cap8 = await admin.submit(sqePropertyGet(0, true));
    const lo = await admin.submit(sqePropertyGet(0, false));
    const hi = await admin.submit(sqePropertyGet(4, false));
    assert.deepEqual([cap8.cqe.dw0, cap8.cqe.dw1], [lo.cqe.dw0, hi.cqe.dw0]);
    assert.equal(cap8.cqe.dw0 & 0xffff, QUEUE_SIZE - 1, 'MQES in the low dword');
    assert.equal(cap8.cqe.dw1 & 0x20, 0x20, 'CSS NVM (CAP bit 37) in the high dword');
    assert.equal(lo.cqe.dw1, 0, 'a 4-byte property has no high dword');
  });

  it('fused commands and bidirectional opcodes on an I/O queue → Invalid Field', T, async () => {
    const { io } = await ioQueue();
    assert.deepEqual(st(await io.submit(sqeFlush(1), { edit: (s) => { s[1] = (s[1]! & ~3) | 1; } })), [0, G.INVALID_FIELD, true], 'FUSE first');
    assert.deepEqual(st(await io.submit(sqeFlush(1), { edit: (s) => { s[1] = (s[1]! & ~3) | 2; } })), [0, G.INVALID_FIELD, true], 'FUSE second');
    const bidi = sqeFlush(1);
    bidi[0] = 0x03;
    assert.deepEqual(st(await io.submit(bidi)), [0, G.INVALID_FIELD, true]);
    assert.equal((await io.submit(sqeFlush(1))).cqe.ok, true);
  });

  it('Connect errors: record format, short data, empty host NQN, admin CNTLID, SQ size bounds, a taken QID — each with its IATTR/IPO', T, async () => {
    const cd = (o: { cntlid?: number; hostnqn?: string } = {}) => encodeConnectData({ hostid: HOSTID, cntlid: o.cntlid ?? 0xffff, subnqn: NQN, hostnqn: o.hostnqn ?? HOSTNQN });
    const connect = (o: { qid?: number; sqsize?: number } = {}) => sqeConnect({ qid: o.qid ?? 0, sqsize: o.sqsize ?? 15, kato: 0, disableSqFlowControl: false });
    const h = await raw();
    const recfmt = connect();
    recfmt.writeUInt16LE(1, 40);
    const bad = async (sqe: Buffer, data: Buffer): Promise<[number, number, boolean, number]> => {
      const r = await h.submit(sqe, { write: data });
      return [...st(r), r.cqe.dw0];
    };
    const IP = FabricsStatus.CONNECT_INVALID_PARAMETERS;
    assert.deepEqual(await bad(recfmt, cd()), [1, FabricsStatus.INCOMPATIBLE_FORMAT, true, 0]);
    assert.deepEqual(await bad(connect(), cd().subarray(0, 1023)), [0, DATA_SGL_LENGTH_INVALID, true, 0]);
    const noHost = cd();
    noHost.fill(0, 512, 768);
    assert.deepEqual(await bad(connect(), noHost), [1, IP, true, (1 << 16) | 512]);
    assert.deepEqual(await bad(connect(), cd({ cntlid: 0x0001 })), [1, IP, true, (1 << 16) | 16]);
    assert.deepEqual(await bad(connect({ sqsize: 0 }), cd()), [1, IP, true, 44]);
    assert.deepEqual(await bad(connect({ sqsize: QUEUE_SIZE }), cd()), [1, IP, true, 44]);
    // The largest SQ is queueSize entries (sqsize is 0-based); the Connect consumed entry 0: SQHD 1.
    const c = await h.submit(connect({ sqsize: QUEUE_SIZE - 1 }), { write: cd() });
    assert.equal(c.cqe.ok, true);
    assert.deepEqual([c.cqe.sqid, c.cqe.sqhd], [0, 1]);
    await enable(h);
    const io = await raw();
    assert.equal((await connectIo(io, NQN, c.cqe.dw0, { qid: 1 })).cqe.ok, true);
    const io2 = await raw();
    const taken = await connectIo(io2, NQN, c.cqe.dw0, { qid: 1 });
    assert.deepEqual([...st(taken), taken.cqe.dw0], [1, IP, true, 42]);
  });

  it('SQHD wraps at the SQ size (Connect sqsize 2: three entries); SQID is the queue\'s', T, async () => {
    const { admin, cntlid } = await ioQueue();
    const io = await raw();
    const c = await connectIo(io, NQN, cntlid, { qid: 2, sqsize: 2 });
    assert.equal(c.cqe.ok, true, `connect qid 2: sc ${c.cqe.status.sc}`);
    const heads = [c.cqe.sqhd];
    for (let i = 0; i < 4; i++) {
      const r = await io.submit(sqeFlush(1));
      assert.equal(r.cqe.sqid, 2);
      heads.push(r.cqe.sqhd);
    }
    assert.deepEqual(heads, [1, 2, 0, 1, 2]);
    admin.close();
  });

  it('a backend failure is Internal Error (SCT 0, SC 06h, DNR clear) for that command only, logged with cid, opcode and cause', T, async () => {
    const { admin, io } = await ioQueue();
    const m = mock.method(MemoryBackend.prototype, 'read', () => Promise.reject(new Error('media gone')));
    try {
      const r = await io.submit(sqeRead(1, 0n, 1), { readLength: 512 });
      assert.deepEqual(st(r), [0, G.INTERNAL_ERROR, false]);
      assert.equal(r.data.length, 0, 'no data for a failed read');
      assert.ok(logs.some((l) => new RegExp(`^error: conn \\d+ qid 1: cid ${r.cqe.cid} opcode 0x2 failed: media gone$`).test(l)), logs.slice(-3).join('\n'));
      // A rejection that is not an Error is logged as its string.
      m.mock.mockImplementation(() => Promise.reject('plain string'));
      const r2 = await io.submit(sqeRead(1, 0n, 1), { readLength: 512 });
      assert.deepEqual(st(r2), [0, G.INTERNAL_ERROR, false]);
      assert.ok(logs.some((l) => new RegExp(`^error: conn \\d+ qid 1: cid ${r2.cqe.cid} opcode 0x2 failed: plain string$`).test(l)));
    } finally {
      m.mock.restore();
    }
    assert.equal((await io.submit(sqeRead(1, 0n, 1), { readLength: 512 })).cqe.ok, true, 'the queue still serves');
    // A handler that throws synchronously (here Property Get) is answered the same way.
    const p = mock.method(TargetController.prototype, 'propertyGet', () => { throw new Error('boom'); });
    try {
      const r = await admin.submit(sqePropertyGet(0x1c, false));
      assert.deepEqual(st(r), [0, G.INTERNAL_ERROR, false]);
      assert.ok(logs.some((l) => new RegExp(`^error: conn \\d+ qid 0: cid ${r.cqe.cid} opcode 0x7f failed: boom$`).test(l)));
    } finally {
      p.mock.restore();
    }
    assert.equal((await admin.submit(sqePropertyGet(0x1c, false))).cqe.ok, true);
  });

  it('a failure while completing an asynchronous command closes that connection only (no C2HTermReq), logged; the target keeps serving', T, async () => {
    const { admin, io } = await ioQueue();
    // Not a Buffer: sending it as C2HData throws inside the completion callback.
    const m = mock.method(MemoryBackend.prototype, 'read', (_o: number, length: number) => Promise.resolve({ length } as unknown as Buffer));
    try {
      io.submit(sqeRead(1, 0n, 1), { readLength: 512, cid: 77 }).catch(() => undefined);
      await io.waitClosed();
    } finally {
      m.mock.restore();
    }
    assert.equal(io.termReq, undefined);
    assert.ok(logs.some((l) => /^error: conn \d+ qid 1: completing cid 77 failed: .+/.test(l)), logs.slice(-3).join('\n'));
    assert.equal((await admin.submit(sqePropertyGet(0x1c, false))).cqe.ok, true, 'other connections are unaffected');
  });

  describe('H2CData on the R2T path', () => {
    /** Submit a 16 KiB write via R2T and hand its R2T to `reply` instead of the default sender. */
    async function withR2T(io: RawHost, reply: (p: { cccid: number; ttag: number; r2tl: number }) => void): Promise<Reply> {
      io.onR2T = (p) => { reply(p); return true; };
      return io.submit(sqeWrite(1, 16n, 32, false), { write: Buffer.alloc(MAX_TRANSFER, 0x33), inCapsule: false, timeoutMs: 3000 });
    }

    interface BadH2C {
      name: string;
      fes: number;
      fei: number;
      /** Send the bad PDU(s) for this R2T; returns the log text expected (a regexp source). */
      send(io: RawHost, p: { cccid: number; ttag: number; r2tl: number }): string;
    }
    const h2c = (io: RawHost, p: { cccid: number; ttag: number }, datao: number, len: number, last: boolean, o: { cccid?: number; ttag?: number } = {}) =>
      io.send(encodeH2CData({ cccid: o.cccid ?? p.cccid, ttag: o.ttag ?? p.ttag, datao, last }, Buffer.alloc(len, 0x33), io.tx));
    const cases: BadH2C[] = [
      {
        name: 'an unknown ttag → FES 1 FEI 10', fes: 1, fei: 10,
        send: (io, p) => { h2c(io, p, 0, MAXH2CDATA, false, { ttag: p.ttag + 1 }); return `H2CData with unknown ttag ${p.ttag + 1} \\(NVMF_ERR_UNKNOWN_CCCID\\)`; },
      },
      {
        name: 'a cccid that does not match the tag → FES 1 FEI 8', fes: 1, fei: 8,
        send: (io, p) => { h2c(io, p, 0, MAXH2CDATA, false, { cccid: p.cccid + 1 }); return `H2CData cccid ${p.cccid + 1} does not match ttag ${p.ttag} \\(cid ${p.cccid}\\) \\(NVMF_ERR_UNKNOWN_CCCID\\)`; },
      },
      {
        name: 'a PDU larger than MAXH2CDATA (but within what the parser buffers) → FES 5 FEI 16', fes: 5, fei: 16,
        send: (io, p) => { h2c(io, p, 0, MAXH2CDATA + 4, false); return `H2CData ${MAXH2CDATA + 4} bytes exceeds MAXH2CDATA \\(NVMF_ERR_PDU_TOO_LARGE\\)`; },
      },
      {
        name: 'data past the end of the R2T range → FES 4 FEI 12', fes: 4, fei: 12,
        send: (io, p) => { h2c(io, p, p.r2tl - 2048, MAXH2CDATA, true); return `H2CData ${p.r2tl - 2048}\\+${MAXH2CDATA} beyond R2T length ${p.r2tl} \\(NVMF_ERR_DATA_OUT_OF_RANGE\\)`; },
      },
      {
        name: 'a datao that skips ahead → FES 2 FEI 12', fes: 2, fei: 12,
        send: (io, p) => { h2c(io, p, MAXH2CDATA, MAXH2CDATA, false); return `H2CData datao ${MAXH2CDATA}, expected 0 \\(NVMF_ERR_PDU_SEQUENCE\\)`; },
      },
      {
        name: 'LAST_PDU before the R2T range is complete → FES 2 FEI 1', fes: 2, fei: 1,
        send: (io, p) => { h2c(io, p, 0, MAXH2CDATA, true); return 'LAST_PDU before the R2T range is complete \\(NVMF_ERR_PDU_SEQUENCE\\)'; },
      },
      {
        name: 'no LAST_PDU on the PDU that completes the range → FES 2 FEI 1', fes: 2, fei: 1,
        send: (io, p) => {
          for (let off = 0; off < p.r2tl; off += MAXH2CDATA) h2c(io, p, off, MAXH2CDATA, false);
          return 'LAST_PDU missing on the final H2CData \\(NVMF_ERR_PDU_SEQUENCE\\)';
        },
      },
    ];
    for (const c of cases) {
      it(`${c.name}, logged with what was wrong`, T, async () => {
        const { io } = await ioQueue();
        let why = '';
        withR2T(io, (p) => { why = c.send(io, p); }).catch(() => undefined);
        await io.waitClosed();
        await expectTermReq(io, c.fes, c.fei, why);
      });
    }

    it('a bad data digest on one H2CData PDU fails the command (Data Transfer Error, DNR clear) after the last PDU; nothing is written; the queue stays up', T, async () => {
      const { io } = await ioQueue({ digests: true });
      const w = withR2T(io, (p) => {
        for (let off = 0; off < p.r2tl; off += MAXH2CDATA) {
          const bufs = encodeH2CData({ cccid: p.cccid, ttag: p.ttag, datao: off, last: off + MAXH2CDATA === p.r2tl }, Buffer.alloc(MAXH2CDATA, 0x33), io.tx);
          if (off === MAXH2CDATA) bufs[bufs.length - 1] = Buffer.from([0xef, 0xbe, 0xad, 0xde]);
          io.send(bufs);
        }
      });
      assert.deepEqual(st(await w), [0, G.DATA_TRANSFER_ERROR, false]);
      assert.ok(logs.some((l) => /^warn: conn \d+ qid 1: data digest error on cid \d+$/.test(l)), 'the digest error is logged with its cid');
      io.onR2T = undefined;
      const r = await io.submit(sqeRead(1, 16n, 32), { readLength: MAX_TRANSFER });
      assert.ok(r.data.every((b) => b === 0), 'the failed write did not reach the namespace');
      assert.equal(io.termReq, undefined);
    });
  });
});

/**
 * The queue's own in-capsule limits, on targets whose PDU parser buffers more than them (so the
 * queue, not the parser, is the check that refuses): MAXH2CDATA 32 KiB, or I/O in-capsule 16 KiB.
 */
describe('target queue: in-capsule limit of the admin queue and before Connect', () => {
  const cd = (n: number) => {
    const b = Buffer.alloc(n);
    encodeConnectData({ hostid: HOSTID, cntlid: 0xffff, subnqn: NQN, hostnqn: HOSTNQN }).copy(b);
    return b;
  };
  const connect = () => sqeConnect({ qid: 0, sqsize: 15, kato: 0, disableSqFlowControl: false });
  async function withTarget(icd: number, maxH2CData: number, fn: (port: number, logs: string[]) => Promise<void>): Promise<void> {
    const logs: string[] = [];
    const target = makeTarget(icd, logs, maxH2CData);
    const port = (await target.listen()).port;
    try {
      await fn(port, logs);
    } finally {
      await target.close();
    }
  }
  async function termReqLogged(h: RawHost, logs: string[], size: number, limit: number): Promise<void> {
    await h.waitClosed();
    assert.deepEqual(h.termReq, { fes: 5, fei: 4 });
    const re = new RegExp(`^error: conn \\d+ [^ ]+ qid -?\\d+: protocol error, sending C2HTermReq fes 5 fei 4: in-capsule data ${size} exceeds ${limit} \\(NVMF_ERR_PDU_TOO_LARGE\\)$`);
    assert.ok(logs.some((l) => re.test(l)), `no log line matching ${re}:\n${logs.slice(-5).join('\n')}`);
  }

  it('the admin queue takes 8 KiB (more than an I/O queue of 4 KiB here); 8 KiB + 16 → TermReq FES 5 FEI 4', T, async () => {
    await withTarget(4096, 32768, async (port, logs) => {
      const h = await RawHost.connect(port);
      try {
        await h.icreq();
        assert.equal((await h.submit(connect(), { write: cd(ADMIN_ICD), inCapsule: true })).cqe.ok, true, 'Connect with 8 KiB in-capsule');
        // A second Connect on a connected queue is answered (Command Sequence Error), not a transport error.
        assert.deepEqual(st(await h.submit(connect(), { write: cd(ADMIN_ICD), inCapsule: true })), [0, G.COMMAND_SEQUENCE_ERROR, true]);
        h.submit(connect(), { write: cd(ADMIN_ICD + 16), inCapsule: true }).catch(() => undefined);
        await termReqLogged(h, logs, ADMIN_ICD + 16, ADMIN_ICD);
      } finally {
        h.close();
      }
    });
  });

  it('before Connect the larger of the two limits: 8 KiB + 16 → TermReq when I/O takes 4 KiB', T, async () => {
    await withTarget(4096, 32768, async (port, logs) => {
      const h = await RawHost.connect(port);
      try {
        await h.icreq();
        h.submit(connect(), { write: cd(ADMIN_ICD + 16), inCapsule: true }).catch(() => undefined);
        await termReqLogged(h, logs, ADMIN_ICD + 16, ADMIN_ICD);
      } finally {
        h.close();
      }
    });
  });

  it('before Connect the larger of the two limits: a 12 KiB capsule is accepted when I/O takes 16 KiB; the admin queue still refuses 8 KiB + 16', T, async () => {
    await withTarget(16384, MAXH2CDATA, async (port, logs) => {
      const h = await RawHost.connect(port);
      try {
        await h.icreq();
        const c = await h.submit(connect(), { write: cd(12288), inCapsule: true });
        assert.equal(c.cqe.ok, true);
        assert.equal(h.termReq, undefined);
        h.submit(connect(), { write: cd(ADMIN_ICD + 16), inCapsule: true }).catch(() => undefined);
        await termReqLogged(h, logs, ADMIN_ICD + 16, ADMIN_ICD);
      } finally {
        h.close();
      }
    });
  });
});
