/**
 * Mutation-driven pins for the embedded target's queue (src/embedded-target/queue.ts, issue 15),
 * survivors of the whole-file run: a read longer than MAXC2HDATA (128 KiB) and not a multiple of
 * it (two C2HData, LAST_PDU on the second only, every byte), the controller limits per host and
 * per target with their status and log line, Property Set of CC as an 8-byte property refused,
 * the admin queue's close reason logged for its controller and its I/O queues, the command
 * counter; and the second batch: SQHD 0 before Connect, DNR clear on success, a Connect without
 * data or with an SGL longer than its in-capsule data, SGL type checks only for commands that
 * move data (no-data and 0-length commands run whatever their SGL type, also with C2HData
 * SUCCESS on), a controller-to-host command that completes without data (a CapsuleResp only), a Fabrics command with R2T data not prechecked as I/O, an I/O queue joining from
 * another port, PDUs after an H2CTermReq in the same read ignored, the parser's role in the
 * refusal log, and Nagle off on the target's sockets; the internal-error paths' log text (a
 * rejection that is undefined, a failure while completing with its message and the close
 * reason 'internal error'); before in-band authentication: no R2T for a command that will be
 * refused, R2T for Authentication Send, and only Fabrics commands count as authentication; the
 * TLS identity refusals' log lines (host named, subsystem named, no NQNs).
 */
import { strict as assert } from 'node:assert';
import { after, describe, it, mock } from 'node:test';
import * as net from 'node:net';
import {
  encodeCapsuleCmd, encodeCapsuleResp, encodeConnectData, encodeCqe, encodeTermReq, FabricsStatus, GenericStatus, PduType,
  sqeConnect, sqeFlush, sqeGetFeatures, sqeIdentify, sqePropertyGet, sqePropertySet, sqeRead, sqeSetFeatures, sqeWrite,
} from '../../src/wire';
import { sqeAuthSend } from '../../src/wire/auth';
import * as pduCodec from '../../src/wire/pdu';
import { formatDhchapKey, generateDhchapKey } from '../../src/wire/dhchap';
import { QueuePair } from '../../src/transport/queue-pair';
import { ErrorCode } from '../../src/errors';
import { rejectsCode } from '../helpers/assert-code';
import { MemoryBackend, NvmeTarget } from '../../src/embedded-target';
import { CC_ENABLE, connectAdmin, connectIo, enable, HOSTID, HOSTNQN, RawHost, type Reply } from './target-rawhost';
import { until } from '../helpers/clock';

const NQN = 'nqn.2014-08.org.example:mut-target-queue3';
const OTHER_HOST = 'nqn.2014-08.org.nvmexpress:uuid:99999999-8888-7777-6666-555555555555';
const T = { timeout: 15_000 };
const G = GenericStatus;
const PLAIN = { hdgst: false, ddgst: false, pda: 0 };
const SGL_DATA_BLOCK_OFFSET = 0x01;
const DATA_SGL_LENGTH_INVALID = 0x0f;

const st = (r: Reply): [number, number, boolean] => [r.cqe.status.sct, r.cqe.status.sc, r.cqe.status.dnr];

function makeTarget(logs: string[], o: Partial<ConstructorParameters<typeof NvmeTarget>[0]> = {}): NvmeTarget {
  return new NvmeTarget({
    listen: { host: '127.0.0.1', port: 0 },
    subsystems: [{ nqn: NQN, namespaces: [{ sizeBytes: 1 << 20, backing: { memory: true } }] }],
    mdtsPages: 64,
    queueSize: 32,
    maxIoQueues: 2,
    log: (level, msg) => logs.push(`${level}: ${msg}`),
    ...o,
  });
}

/** The connection number the target logged for `h` (from its ICReq line), and its address. */
function connOf(logs: string[], h: RawHost, localPort: number): { id: number; peer: string } {
  const peer = `127.0.0.1:${localPort}`;
  for (const l of logs) {
    const m = /^debug: conn (\d+) (\S+): ICReq /.exec(l);
    if (m && m[2] === peer) return { id: Number(m[1]), peer };
  }
  assert.fail(`no ICReq log line for ${peer}`);
}

describe('target queue: C2H split, controller limits, properties, close reasons, counters', () => {
  const hosts: RawHost[] = [];
  const targets: NvmeTarget[] = [];
  async function start(logs: string[], o: Partial<ConstructorParameters<typeof NvmeTarget>[0]> = {}): Promise<number> {
    const t = makeTarget(logs, o);
    targets.push(t);
    return (await t.listen()).port;
  }
  async function raw(port: number): Promise<{ h: RawHost; localPort: number }> {
    const h = await RawHost.connect(port);
    hosts.push(h);
    const localPort = h.sock.localPort ?? -1;
    await h.icreq();
    return { h, localPort };
  }
  after(async () => {
    for (const h of hosts) h.close();
    for (const t of targets) await t.close();
  });

  it('a read of 128 KiB + 64.5 KiB: two C2HData PDUs (128 KiB, then the rest with LAST_PDU), every byte', T, async () => {
    const logs: string[] = [];
    const port = await start(logs);
    const { h: admin } = await raw(port);
    const c = await connectAdmin(admin, NQN);
    await enable(admin);
    const { h: io } = await raw(port);
    assert.equal((await connectIo(io, NQN, c.cqe.dw0)).cqe.ok, true);
    const len = (128 << 10) + 66_048; // 385 blocks of 512
    const data = Buffer.from(Array.from({ length: len }, (_, i) => (i * 13 + (i >> 9)) & 0xff));
    assert.equal((await io.submit(sqeWrite(1, 0n, len / 512, false), { write: data, inCapsule: false })).cqe.ok, true);
    const r = await io.submit(sqeRead(1, 0n, len / 512), { readLength: len });
    assert.equal(r.cqe.ok, true);
    assert.deepEqual([r.c2hPdus, r.lastFlags], [2, [false, true]]);
    assert.equal(r.data.length, len);
    assert.equal(r.data.equals(data), true);
  });

  it('maxControllersPerHost: the host\'s next admin Connect → Controller Busy (SCT 1, SC 81h, DNR), logged with the host count, counted', T, async () => {
    const logs: string[] = [];
    const port = await start(logs, { maxControllersPerHost: 1 });
    const { h: first } = await raw(port);
    assert.equal((await connectAdmin(first, NQN)).cqe.ok, true);
    const { h, localPort } = await raw(port);
    const { id, peer } = connOf(logs, h, localPort);
    assert.deepEqual(st(await connectAdmin(h, NQN)), [1, FabricsStatus.CONTROLLER_BUSY, true]);
    assert.ok(logs.includes(`warn: conn ${id} ${peer}: Connect from '${HOSTNQN}' refused: 1 controllers for this host (maximum 1)`), logs.slice(-3).join('\n'));
    assert.equal(targets.at(-1)?.stats().controllersRefused, 1);
    assert.equal((await connectAdmin(h, NQN, { hostnqn: OTHER_HOST })).cqe.ok, true, 'another host still connects');
  });

  it('maxControllers: the next admin Connect of any host → Controller Busy, logged with the target\'s count', T, async () => {
    const logs: string[] = [];
    const port = await start(logs, { maxControllers: 1 });
    const { h: first } = await raw(port);
    assert.equal((await connectAdmin(first, NQN)).cqe.ok, true);
    const { h, localPort } = await raw(port);
    const { id, peer } = connOf(logs, h, localPort);
    assert.deepEqual(st(await connectAdmin(h, NQN, { hostnqn: OTHER_HOST })), [1, FabricsStatus.CONTROLLER_BUSY, true]);
    assert.ok(logs.includes(`warn: conn ${id} ${peer}: Connect from '${OTHER_HOST}' refused: 1 controllers (maximum 1)`), logs.slice(-3).join('\n'));
    assert.equal(targets.at(-1)?.stats().controllersRefused, 1);
  });

  it('Property Set of CC as an 8-byte property → Invalid Field, CC unchanged (CSTS.RDY stays 0); as 4 bytes it enables', T, async () => {
    const logs: string[] = [];
    const port = await start(logs);
    const { h } = await raw(port);
    assert.equal((await connectAdmin(h, NQN)).cqe.ok, true);
    assert.deepEqual(st(await h.submit(sqePropertySet(0x14, true, CC_ENABLE))), [0, G.INVALID_FIELD, true]);
    assert.equal((await h.submit(sqePropertyGet(0x14, false))).cqe.dw0, 0, 'CC');
    assert.equal((await h.submit(sqePropertyGet(0x1c, false))).cqe.dw0 & 1, 0, 'CSTS.RDY');
    assert.equal((await h.submit(sqePropertySet(0x14, false, CC_ENABLE))).cqe.ok, true);
    assert.equal((await h.submit(sqePropertyGet(0x1c, false))).cqe.dw0 & 1, 1);
  });

  it('the admin queue closing: its controller and its I/O queue log "admin queue closed (<reason>)"', T, async () => {
    const logs: string[] = [];
    const port = await start(logs);
    const { h: admin } = await raw(port);
    const c = await connectAdmin(admin, NQN);
    const cntlid = c.cqe.dw0 & 0xffff;
    await enable(admin);
    const { h: io, localPort } = await raw(port);
    const { id, peer } = connOf(logs, io, localPort);
    assert.equal((await connectIo(io, NQN, cntlid)).cqe.ok, true);
    admin.close();
    await io.waitClosed();
    await until(() => logs.includes(`debug: conn ${id} ${peer} qid 1: closed: admin queue closed (connection closed)`), 'the I/O queue\'s close line');
    assert.ok(logs.includes(`debug: controller ${cntlid} (${NQN}): destroyed: admin queue closed (connection closed)`), logs.slice(-4).join('\n'));
  });

  it('every command capsule is counted once in stats().commands', T, async () => {
    const logs: string[] = [];
    const port = await start(logs);
    const t = targets.at(-1) as NvmeTarget;
    const { h } = await raw(port);
    const before0 = t.stats().commands;
    const cd = encodeConnectData({ hostid: HOSTID, cntlid: 0xffff, subnqn: NQN, hostnqn: HOSTNQN });
    assert.equal((await h.submit(sqeConnect({ qid: 0, sqsize: 15, kato: 0, disableSqFlowControl: false }), { write: cd })).cqe.ok, true);
    await h.submit(sqePropertyGet(0x1c, false));
    await h.submit(sqePropertyGet(0x08, false));
    assert.equal(t.stats().commands - before0, 3);
  });
});

describe('target queue: SQHD before Connect, DNR, Connect data, SGL checks, ports, PDUs after close, role, Nagle', () => {
  const hosts: RawHost[] = [];
  const targets: NvmeTarget[] = [];
  after(async () => {
    for (const h of hosts) h.close();
    for (const t of targets) await t.close();
  });
  async function start(logs: string[], o: Partial<ConstructorParameters<typeof NvmeTarget>[0]> = {}): Promise<NvmeTarget> {
    const t = makeTarget(logs, o);
    targets.push(t);
    await t.listen();
    return t;
  }
  async function raw(port: number): Promise<{ h: RawHost; localPort: number }> {
    const h = await RawHost.connect(port);
    hosts.push(h);
    const localPort = h.sock.localPort ?? -1;
    await h.icreq();
    return { h, localPort };
  }
  const portOf = (t: NvmeTarget): number => t.address()?.port ?? -1;
  const cd = (o: { cntlid?: number; hostnqn?: string } = {}) =>
    encodeConnectData({ hostid: HOSTID, cntlid: o.cntlid ?? 0xffff, subnqn: NQN, hostnqn: o.hostnqn ?? HOSTNQN });
  const adminConnect = () => sqeConnect({ qid: 0, sqsize: 15, kato: 0, disableSqFlowControl: false });

  it('before Connect a completion carries SQHD 0 (flow control is on until Connect says otherwise); a success has DNR clear', T, async () => {
    const t = await start([]);
    const { h } = await raw(portOf(t));
    const pre = await h.submit(sqePropertyGet(0x1c, false));
    assert.deepEqual([...st(pre), pre.cqe.sqhd], [0, G.COMMAND_SEQUENCE_ERROR, true, 0]);
    const c = await h.submit(adminConnect(), { write: cd() });
    assert.deepEqual([...st(c), c.cqe.sqhd], [0, 0, false, 1]);
    assert.deepEqual(st(await h.submit(sqePropertyGet(0x1c, false))), [0, 0, false]);
  });

  it('Connect without data → Data SGL Length Invalid; with an SGL longer than its in-capsule data → the same, nothing connected', T, async () => {
    const t = await start([]);
    const { h } = await raw(portOf(t));
    assert.deepEqual(st(await h.submit(adminConnect())), [0, DATA_SGL_LENGTH_INVALID, true], 'no data');
    const longer = await h.submit(adminConnect(), { write: cd(), inCapsule: true, edit: (sqe) => sqe.writeUInt32LE(2048, 32) });
    assert.deepEqual(st(longer), [0, DATA_SGL_LENGTH_INVALID, true], 'SGL 2048, data 1024');
    assert.equal(t.stats().controllers, 0);
    assert.equal((await h.submit(adminConnect(), { write: cd() })).cqe.ok, true);
  });

  it('a command without data runs whatever its SGL type: Flush with an offset SGL (length 0 or 512), Identify with a 0-length offset SGL', T, async () => {
    for (const c2hSuccess of ['spec', 'spdk'] as const) {
      const t = await start([], { c2hSuccess });
      const { h: admin } = await raw(portOf(t));
      const c = await connectAdmin(admin, NQN);
      await enable(admin);
      const { h: io } = await raw(portOf(t));
      assert.equal((await connectIo(io, NQN, c.cqe.dw0)).cqe.ok, true);
      for (const len of [0, 512]) {
        const f = await io.submit(sqeFlush(1), { edit: (sqe) => { sqe[39] = SGL_DATA_BLOCK_OFFSET; sqe.writeUInt32LE(len, 32); } });
        assert.deepEqual(st(f), [0, 0, false], `${c2hSuccess}: Flush, offset SGL of ${len}`);
      }
      const id = await admin.submit(sqeIdentify(1), { edit: (sqe) => { sqe[39] = SGL_DATA_BLOCK_OFFSET; } });
      assert.deepEqual([...st(id), id.c2hPdus, id.viaSuccess], [0, 0, false, 0, false], `${c2hSuccess}: Identify of 0 bytes: a CapsuleResp, no data`);
    }
  });

  it('a controller-to-host command whose completion has no data (Get Features with a buffer): a CapsuleResp only, the queue stays up', T, async () => {
    const t = await start([]);
    const { h } = await raw(portOf(t));
    assert.equal((await connectAdmin(h, NQN)).cqe.ok, true);
    await enable(h);
    const r = await h.submit(sqeGetFeatures(0x07), { readLength: 512 });
    assert.deepEqual([...st(r), r.cqe.dw0, r.c2hPdus, r.data.length], [0, 0, false, 0x10001, 0, 0], 'Number of Queues: 2 and 2 (0-based 1)');
    assert.equal((await h.submit(sqePropertyGet(0x1c, false))).cqe.dw0 & 1, 1);
  });

  it('a Fabrics command with data by R2T on an I/O queue of a disabled controller is not prechecked as I/O: Auth Send → Invalid Opcode after its data', T, async () => {
    const t = await start([]);
    const { h: admin } = await raw(portOf(t));
    const c = await connectAdmin(admin, NQN);
    await enable(admin);
    const { h: io } = await raw(portOf(t));
    assert.equal((await connectIo(io, NQN, c.cqe.dw0)).cqe.ok, true);
    assert.equal((await admin.submit(sqePropertySet(0x14, false, 0n))).cqe.ok, true, 'CC.EN 0');
    const r = await io.submit(sqeAuthSend(512), { write: Buffer.alloc(512, 7), inCapsule: false });
    assert.deepEqual(st(r), [0, G.INVALID_OPCODE, true]);
  });

  it('an I/O queue may only join its controller on the port the admin queue connected on', T, async () => {
    const t = new NvmeTarget({
      ports: [{ host: '127.0.0.1', port: 0 }, { host: '127.0.0.1', port: 0 }],
      subsystems: [{ nqn: NQN, namespaces: [{ sizeBytes: 1 << 20, backing: { memory: true } }] }],
      maxIoQueues: 2,
      log: () => undefined,
    });
    targets.push(t);
    await t.listen();
    const [p1, p2] = t.ports().map((p) => p.port);
    const { h: admin } = await raw(p1 as number);
    const c = await connectAdmin(admin, NQN);
    await enable(admin);
    const { h: other } = await raw(p2 as number);
    const r = await connectIo(other, NQN, c.cqe.dw0 & 0xffff);
    assert.deepEqual([...st(r), r.cqe.dw0], [1, FabricsStatus.CONNECT_INVALID_PARAMETERS, true, (1 << 16) | 16]);
    const { h: same } = await raw(p1 as number);
    assert.equal((await connectIo(same, NQN, c.cqe.dw0 & 0xffff)).cqe.ok, true);
  });

  it('a CapsuleCmd in the same read after an H2CTermReq is not run (not counted)', T, async () => {
    const t = await start([]);
    const { h } = await raw(portOf(t));
    assert.equal((await h.submit(adminConnect(), { write: cd() })).cqe.ok, true);
    const before0 = t.stats().commands;
    const pg = sqePropertyGet(0x1c, false);
    h.send([encodeTermReq(PduType.H2C_TERM_REQ, 1, 0), ...encodeCapsuleCmd(pg, undefined, PLAIN)]);
    await h.waitClosed();
    assert.equal(t.stats().commands, before0);
  });

  it('a host PDU type the controller does not take is refused naming the controller role in the log', T, async () => {
    const logs: string[] = [];
    const t = await start(logs);
    const { h, localPort } = await raw(portOf(t));
    h.send(encodeCapsuleResp(encodeCqe({ cid: 1, sqhd: 0 }), PLAIN));
    await h.waitClosed();
    assert.deepEqual(h.termReq, { fes: 1, fei: 0 });
    const line = logs.find((l) => l.includes(`127.0.0.1:${localPort} qid -1: protocol error`));
    assert.ok(line?.endsWith('PDU type 0x5 not valid for controller (NVMF_ERR_PDU_INVALID_TYPE)'), line);
  });

  it('the target turns Nagle off on each connection (setNoDelay(true))', T, async () => {
    const calls: Array<{ sock: net.Socket; arg: unknown }> = [];
    const orig = net.Socket.prototype.setNoDelay;
    const m = mock.method(net.Socket.prototype, 'setNoDelay', function (this: net.Socket, arg?: boolean) {
      calls.push({ sock: this, arg });
      return orig.call(this, arg);
    });
    try {
      const t = await start([]);
      const { h } = await raw(portOf(t));
      assert.equal((await h.submit(adminConnect(), { write: cd() })).cqe.ok, true);
      const theirs = calls.filter((c) => c.sock !== h.sock);
      assert.deepEqual(theirs.map((c) => c.arg), [true]);
    } finally {
      m.mock.restore();
    }
  });
});

describe('target queue: internal error texts', () => {
  it('a backend rejecting with undefined → Internal Error, logged as "undefined"; a failure while completing logs its message and closes with "internal error"', T, async () => {
    const logs: string[] = [];
    const t = makeTarget(logs);
    const port = (await t.listen()).port;
    const admin = await RawHost.connect(port);
    const io = await RawHost.connect(port);
    try {
      await admin.icreq();
      const c = await connectAdmin(admin, NQN);
      await enable(admin);
      await io.icreq();
      assert.equal((await connectIo(io, NQN, c.cqe.dw0)).cqe.ok, true);
      const rd = mock.method(MemoryBackend.prototype, 'read', () => Promise.reject(undefined));
      try {
        const r = await io.submit(sqeRead(1, 0n, 1), { readLength: 512 });
        assert.deepEqual(st(r), [0, G.INTERNAL_ERROR, false]);
        assert.ok(logs.some((l) => new RegExp(`^error: conn \\d+ qid 1: cid ${r.cqe.cid} opcode 0x2 failed: undefined$`).test(l)), logs.slice(-3).join('\n'));
      } finally {
        rd.mock.restore();
      }
      const enc = mock.method(pduCodec, 'encodeC2HData', () => { throw new Error('encode failed'); });
      try {
        io.submit(sqeRead(1, 0n, 1), { readLength: 512, cid: 91 }).catch(() => undefined);
        await io.waitClosed();
      } finally {
        enc.mock.restore();
      }
      assert.equal(io.termReq, undefined);
      assert.ok(logs.some((l) => /^error: conn \d+ qid 1: completing cid 91 failed: encode failed$/.test(l)), logs.slice(-3).join('\n'));
      assert.ok(logs.some((l) => /^debug: conn \d+ \S+ qid 1: closed: internal error$/.test(l)), logs.slice(-3).join('\n'));
    } finally {
      admin.close();
      io.close();
      await t.close();
    }
  });

  it('a failure while completing that is not an Error is logged as its string', T, async () => {
    const logs: string[] = [];
    const t = makeTarget(logs);
    const port = (await t.listen()).port;
    const admin = await RawHost.connect(port);
    const io = await RawHost.connect(port);
    try {
      await admin.icreq();
      const c = await connectAdmin(admin, NQN);
      await enable(admin);
      await io.icreq();
      assert.equal((await connectIo(io, NQN, c.cqe.dw0)).cqe.ok, true);
      const enc = mock.method(pduCodec, 'encodeC2HData', () => { throw undefined; }); // eslint-disable-line no-throw-literal
      try {
        io.submit(sqeRead(1, 0n, 1), { readLength: 512, cid: 92 }).catch(() => undefined);
        await io.waitClosed();
      } finally {
        enc.mock.restore();
      }
      assert.ok(logs.some((l) => /^error: conn \d+ qid 1: completing cid 92 failed: undefined$/.test(l)), logs.slice(-3).join('\n'));
    } finally {
      admin.close();
      io.close();
      await t.close();
    }
  });
});

describe('target queue: before in-band authentication', () => {
  it('a queue that must authenticate: Set Features with data → Authentication Required without an R2T; Auth Send gets its R2T; Identify with NSID 5 (the AUTH_SEND fctype byte) is refused', T, async () => {
    const t = makeTarget([], { hostKeys: [{ hostnqn: HOSTNQN, key: formatDhchapKey(generateDhchapKey({ hmac: 1, nqn: HOSTNQN })) }] });
    const port = (await t.listen()).port;
    const h = await RawHost.connect(port);
    try {
      await h.icreq();
      const c = await connectAdmin(h, NQN);
      assert.equal((c.cqe.dw0 & (1 << 17)) !== 0, true, 'AUTHREQ.ATR');
      let r2ts = 0;
      h.onR2T = () => { r2ts++; return false; };
      const sf = await h.submit(sqeSetFeatures(0x0f, 10_000), { write: Buffer.alloc(512), inCapsule: false });
      assert.deepEqual([...st(sf), r2ts], [1, FabricsStatus.AUTH_REQUIRED, true, 0]);
      const id = await h.submit(sqeIdentify(1, 5), { readLength: 4096 });
      assert.deepEqual(st(id), [1, FabricsStatus.AUTH_REQUIRED, true]);
      const as = await h.submit(sqeAuthSend(512), { write: Buffer.alloc(512), inCapsule: false });
      assert.deepEqual([...st(as), r2ts], [0, 0, false, 1], 'Authentication Send is asked for its data');
    } finally {
      h.close();
      await t.close();
    }
  });
});

describe('target queue: TLS PSK identity refusals', () => {
  it('Connect over TLS naming another host / subsystem / an identity without NQNs: each log line names what the identity names', T, async () => {
    const logs: string[] = [];
    const NQN2 = `${NQN}-b`;
    const psk = Buffer.alloc(32, 0x42);
    const t = new NvmeTarget({
      listen: { host: '127.0.0.1', port: 0 },
      subsystems: [
        { nqn: NQN, namespaces: [{ sizeBytes: 1 << 20, backing: { memory: true } }] },
        { nqn: NQN2, namespaces: [{ sizeBytes: 1 << 20, backing: { memory: true } }] },
      ],
      tls: { mode: 'optional', lookup: () => psk },
      log: (level, msg) => logs.push(`${level}: ${msg}`),
    });
    const port = (await t.listen()).port;
    const connect = (identity: string, hostnqn: string) => QueuePair.connect({
      host: '127.0.0.1', port, qid: 0, queueSize: 8, subnqn: NQN, hostnqn, hostid: HOSTID, cntlid: 0xffff,
      connectTimeoutMs: 10_000, timeoutMs: 10_000, tls: { identity, psk, cipher: 1 },
    });
    const refusal = (identity: string): string | undefined => logs.find((l) => l.includes(`: ${ErrorCode.TLS_IDENTITY_MISMATCH}: `) && l.includes(`identity '${identity}'`));
    try {
      const cases: Array<[string, string, string, string]> = [
        [`NVMe0R01 ${HOSTNQN} ${NQN}`, OTHER_HOST, `NVMe0R01 ${HOSTNQN} ${NQN}`, `Connect as host '${OTHER_HOST}' to '${NQN}' refused: the TLS PSK identity 'NVMe0R01 ${HOSTNQN} ${NQN}' names host '${HOSTNQN}'`],
        [`NVMe1R01 ${HOSTNQN} ${NQN2} abc=`, HOSTNQN, `NVMe1R01 ${HOSTNQN} ${NQN2}`, `Connect as host '${HOSTNQN}' to '${NQN}' refused: the TLS PSK identity 'NVMe1R01 ${HOSTNQN} ${NQN2}' names subsystem '${NQN2}'`],
        ['not-an-nvme-identity', HOSTNQN, 'not-an-nvme-identity', `Connect as host '${HOSTNQN}' to '${NQN}' refused: the TLS PSK identity 'not-an-nvme-identity' names no NQNs`],
      ];
      for (const [identity, hostnqn, shown, tail] of cases) {
        const e = await rejectsCode(connect(identity, hostnqn), ErrorCode.CONNECT_FAILED);
        assert.deepEqual([e.status?.sct, e.status?.sc], [1, FabricsStatus.CONNECT_INVALID_PARAMETERS], identity);
        const line = refusal(shown);
        assert.ok(line?.startsWith('warn: conn ') && line.endsWith(`: ${ErrorCode.TLS_IDENTITY_MISMATCH}: ${tail}`), `${identity}: ${line ?? logs.slice(-3).join('\n')}`);
      }
      assert.equal(t.stats().tlsIdentityMismatches, 3);
    } finally {
      await t.close();
    }
  });
});
