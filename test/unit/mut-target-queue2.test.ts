/**
 * Mutation-driven pins for the embedded target's queue (src/embedded-target/queue.ts, issue 15),
 * the parts the first pass did not measure: the connection's life (ICReq checks and its log, PDUs
 * before ICReq, a host's H2CTermReq, a fatal error that is not an NvmfNbdError, the teardown's
 * log with the peer address and its reason, one teardown per connection, a socket error, the
 * Connect timeout cleared by Connect and by close, an admin queue taking its I/O queues along, an
 * I/O queue's QID freed when it closes, write backpressure released on drain) and the Fabrics
 * Connect checks (unknown subsystem, host not allowed, KATO bound, I/O queue against the wrong
 * controller / host / subsystem / a disabled controller / past the granted queues, SQ flow
 * control disabled → SQHD FFFFh) with their exact status, IATTR/IPO and log lines.
 */
import { strict as assert } from 'node:assert';
import * as net from 'node:net';
import { after, before, describe, it, mock } from 'node:test';
import {
  encodeCapsuleCmd, encodeConnectData, encodeH2CData, encodeIcReq, encodeTermReq, FabricsStatus, GenericStatus, PduType,
  sqeConnect, sqeFlush, sqePropertyGet, sqeRead, sqeSetFeatures,
} from '../../src/wire';
import * as pduCodec from '../../src/wire/pdu';
import { NvmeTarget } from '../../src/embedded-target';
import { KATO_MAX_MS } from '../../src/embedded-target/target-controller';
import { connectAdmin, connectIo, enable, HOSTID, HOSTNQN, RawHost, type Reply } from './target-rawhost';
import { until } from '../helpers/clock';

const NQN = 'nqn.2014-08.org.example:mut-target-queue2';
const NQN2 = 'nqn.2014-08.org.example:mut-target-queue2-other';
const OTHER_HOST = 'nqn.2014-08.org.nvmexpress:uuid:99999999-8888-7777-6666-555555555555';
const T = { timeout: 15_000 };
const G = GenericStatus;
const IP = FabricsStatus.CONNECT_INVALID_PARAMETERS;
const PLAIN = { hdgst: false, ddgst: false, pda: 0 };

const st = (r: Reply): [number, number, boolean] => [r.cqe.status.sct, r.cqe.status.sc, r.cqe.status.dnr];
const stDw0 = (r: Reply): [number, number, boolean, number] => [...st(r), r.cqe.dw0];

function makeTarget(logs: string[], o: Partial<ConstructorParameters<typeof NvmeTarget>[0]> = {}): NvmeTarget {
  return new NvmeTarget({
    listen: { host: '127.0.0.1', port: 0 },
    subsystems: [
      { nqn: NQN, namespaces: [{ sizeBytes: 1 << 20, backing: { memory: true } }] },
      { nqn: NQN2, namespaces: [{ sizeBytes: 1 << 20, backing: { memory: true } }] },
    ],
    mdtsPages: 4,
    queueSize: 32,
    maxIoQueues: 2,
    log: (level, msg) => logs.push(`${level}: ${msg}`),
    ...o,
  });
}

const esc = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
/** Each host's local port, kept from connect time (a closed socket has none). */
const localPorts = new WeakMap<RawHost, number>();
async function connectRaw(port: number): Promise<RawHost> {
  const h = await RawHost.connect(port);
  localPorts.set(h, h.sock.localPort ?? -1);
  return h;
}
/** This host's address as the target logs it. */
const peerStr = (h: RawHost): string => `127.0.0.1:${localPorts.get(h) ?? h.sock.localPort}`;
const peerOf = (h: RawHost): string => esc(peerStr(h));

/** The connection number the target logged for `h` (from its ICReq line). */
function connIdOf(logs: string[], h: RawHost): number {
  const re = new RegExp(`^debug: conn (\\d+) ${peerOf(h)}: ICReq `);
  for (const l of logs) {
    const m = re.exec(l);
    if (m) return Number(m[1]);
  }
  assert.fail(`no ICReq log line for ${peerOf(h)}`);
}

describe('target queue: connection life, ICReq, teardown', () => {
  let target: NvmeTarget;
  let port = 0;
  const hosts: RawHost[] = [];
  const logs: string[] = [];

  before(async () => {
    target = makeTarget(logs);
    port = (await target.listen()).port;
  });
  after(async () => {
    for (const h of hosts) h.close();
    await target.close();
  });

  async function conn(): Promise<RawHost> {
    const h = await connectRaw(port);
    hosts.push(h);
    return h;
  }
  async function raw(o: { hdgst?: boolean; ddgst?: boolean; hpda?: number } = {}): Promise<RawHost> {
    const h = await conn();
    await h.icreq(o);
    return h;
  }
  async function expectTermReq(h: RawHost, fes: number, fei: number, why: string): Promise<void> {
    await h.waitClosed();
    assert.deepEqual(h.termReq, { fes, fei });
    const re = new RegExp(`^error: conn \\d+ ${peerOf(h)} qid -1: protocol error, sending C2HTermReq fes ${fes} fei ${fei}: ${why}$`);
    assert.ok(logs.some((l) => re.test(l)), `no log line matching ${re}:\n${logs.slice(-5).join('\n')}`);
  }

  it('ICReq is logged with HPDA, MAXR2T and the digests asked for; HPDA 31 is accepted', T, async () => {
    const h = await raw({ hdgst: true, ddgst: false, hpda: 3 });
    assert.ok(logs.some((l) => new RegExp(`^debug: conn \\d+ ${peerOf(h)}: ICReq hpda 3 maxr2t 0 hdgst 1 ddgst 0$`).test(l)), logs.slice(-3).join('\n'));
    const h2 = await raw({ hdgst: false, ddgst: true, hpda: 31 });
    assert.ok(logs.some((l) => new RegExp(`^debug: conn \\d+ ${peerOf(h2)}: ICReq hpda 31 maxr2t 0 hdgst 0 ddgst 1$`).test(l)), logs.slice(-3).join('\n'));
    assert.equal(h2.termReq, undefined);
    assert.equal(h2.closed, false);
  });

  it('ICReq errors: PFV 1 → FES 6 FEI 8, HPDA 32 → FES 1 FEI 10, a second ICReq → FES 2 FEI 0', T, async () => {
    const pfv = await conn();
    const a = encodeIcReq({ hpda: 0, hdgst: false, ddgst: false, maxr2t: 0 });
    a.writeUInt16LE(1, 8);
    pfv.send(a);
    await expectTermReq(pfv, 6, 8, 'unsupported PFV 1 \\(NVMF_ERR_PDU_INVALID_HEADER\\)');
    const hpda = await conn();
    const b = encodeIcReq({ hpda: 0, hdgst: false, ddgst: false, maxr2t: 0 });
    b[10] = 32;
    hpda.send(b);
    await expectTermReq(hpda, 1, 10, 'HPDA 32 > 31 \\(NVMF_ERR_PDU_INVALID_HEADER\\)');
    const twice = await raw();
    twice.send(encodeIcReq({ hpda: 0, hdgst: false, ddgst: false, maxr2t: 0 }));
    await expectTermReq(twice, 2, 0, 'second ICReq \\(NVMF_ERR_PDU_SEQUENCE\\)');
  });

  it('a CapsuleCmd or H2CData before ICReq → FES 2 FEI 0, each logged', T, async () => {
    const c = await conn();
    c.send(encodeCapsuleCmd(sqeFlush(1), undefined, PLAIN));
    await expectTermReq(c, 2, 0, 'CapsuleCmd before ICReq \\(NVMF_ERR_PDU_SEQUENCE\\)');
    const d = await conn();
    d.send(encodeH2CData({ cccid: 1, ttag: 0, datao: 0, last: true }, Buffer.alloc(16, 7), PLAIN));
    await expectTermReq(d, 2, 0, 'H2CData before ICReq \\(NVMF_ERR_PDU_SEQUENCE\\)');
  });

  it('a host\'s H2CTermReq closes the connection without a C2HTermReq, logged with its FES/FEI and counted', T, async () => {
    const before = target.stats();
    const h = await raw();
    const id = connIdOf(logs, h);
    h.send(encodeTermReq(PduType.H2C_TERM_REQ, 4, 9));
    await h.waitClosed();
    assert.equal(h.termReq, undefined);
    assert.ok(logs.includes(`warn: conn ${id} ${peerStr(h)}: host sent H2CTermReq fes 4 fei 9`), logs.slice(-3).join('\n'));
    assert.ok(logs.includes(`debug: conn ${id} ${peerStr(h)} qid -1: closed: H2CTermReq received`));
    const now = target.stats();
    assert.equal(now.termReqsReceived, before.termReqsReceived + 1);
    assert.equal(now.protocolErrors, before.protocolErrors, 'not a protocol error of the host');
  });

  it('a fatal error that is not an NvmfNbdError → FES 1 FEI 0, logged with its message (no code) or its string; counted once; one teardown', T, async () => {
    const before = target.stats();
    const m = mock.method(pduCodec, 'encodeIcResp', () => { throw new TypeError('icresp broke'); });
    let h: RawHost;
    let s: RawHost;
    try {
      h = await conn();
      h.send(encodeIcReq({ hpda: 0, hdgst: false, ddgst: false, maxr2t: 0 }));
      await expectTermReq(h, 1, 0, 'icresp broke');
      m.mock.mockImplementation(() => { throw 'not an error'; }); // eslint-disable-line no-throw-literal
      s = await conn();
      s.send(encodeIcReq({ hpda: 0, hdgst: false, ddgst: false, maxr2t: 0 }));
      await expectTermReq(s, 1, 0, 'not an error');
    } finally {
      m.mock.restore();
    }
    assert.equal(target.stats().protocolErrors, before.protocolErrors + 2);
    // The teardown ran once, for the protocol error (the socket's close that follows is a no-op).
    const ok = await raw();
    assert.equal((await connectAdmin(ok, NQN)).cqe.ok, true);
    const closedOf = (x: RawHost) => logs.filter((l) => new RegExp(`^debug: conn \\d+ ${peerOf(x)} qid -1: closed: `).test(l));
    assert.deepEqual(closedOf(h!).map((l) => l.replace(/^.*closed: /, '')), ['protocol error']);
    assert.deepEqual(closedOf(s!).map((l) => l.replace(/^.*closed: /, '')), ['protocol error']);
  });

  it('a host closing is logged with the peer address, QID and reason; the target forgets the connection', T, async () => {
    const h = await raw();
    const id = connIdOf(logs, h);
    const peer = `${peerStr(h)}`;
    await until(() => target.stats().connections >= 1, 'the connection is counted');
    const n = target.stats().connections;
    h.close();
    await until(() => logs.includes(`debug: conn ${id} ${peer} qid -1: closed: connection closed`), 'the close is logged');
    assert.equal(target.stats().connections, n - 1);
    // Connected queues log their QID.
    const { admin, io } = await ioQueue();
    const ioId = connIdOf(logs, io);
    const ioPeer = `${peerStr(io)}`;
    io.close();
    await until(() => logs.includes(`debug: conn ${ioId} ${ioPeer} qid 1: closed: connection closed`), 'the I/O queue close is logged');
    admin.close();
  });

  it('a socket error is logged (debug) with the connection and the error', T, async () => {
    const h = await raw();
    const id = connIdOf(logs, h);
    const peer = `${peerStr(h)}`;
    h.sock.resetAndDestroy();
    await until(() => logs.some((l) => l.startsWith(`debug: conn ${id} ${peer}: socket error: `) && /ECONNRESET/.test(l)), 'the reset is logged');
    await until(() => logs.includes(`debug: conn ${id} ${peer} qid -1: closed: connection closed`), 'then the connection closes');
  });

  async function ioQueue(qid = 1): Promise<{ admin: RawHost; io: RawHost; cntlid: number }> {
    const admin = await raw();
    const c = await connectAdmin(admin, NQN);
    assert.equal(c.cqe.ok, true);
    await enable(admin);
    const io = await raw();
    const ic = await connectIo(io, NQN, c.cqe.dw0, { qid });
    assert.equal(ic.cqe.ok, true, `I/O connect: sc ${ic.cqe.status.sc}`);
    return { admin, io, cntlid: c.cqe.dw0 };
  }

  it('an I/O queue that closes frees its QID; the admin queue closing takes its I/O queues along', T, async () => {
    const { admin, io, cntlid } = await ioQueue();
    const again = await raw();
    assert.deepEqual(stDw0(await connectIo(again, NQN, cntlid, { qid: 1 })), [1, IP, true, 42], 'QID 1 is taken');
    const ioId = connIdOf(logs, io);
    io.close();
    await until(() => logs.some((l) => l.startsWith(`debug: conn ${ioId} `) && l.endsWith('qid 1: closed: connection closed')), 'the I/O queue closed');
    const io2 = await raw();
    assert.equal((await connectIo(io2, NQN, cntlid, { qid: 1 })).cqe.ok, true, 'QID 1 is free again');
    const io3 = await raw();
    assert.equal((await connectIo(io3, NQN, cntlid, { qid: 2 })).cqe.ok, true);
    admin.close();
    await io2.waitClosed();
    await io3.waitClosed();
  });

  it('Connect: each refusal with its status, IATTR/IPO and log line', T, async () => {
    const cd = (o: { cntlid?: number; hostnqn?: string; subnqn?: string } = {}) =>
      encodeConnectData({ hostid: HOSTID, cntlid: o.cntlid ?? 0xffff, subnqn: o.subnqn ?? NQN, hostnqn: o.hostnqn ?? HOSTNQN });
    const h = await raw();
    const id = connIdOf(logs, h);
    const peer = `${peerStr(h)}`;
    const admin = (kato = 0) => sqeConnect({ qid: 0, sqsize: 15, kato, disableSqFlowControl: false });
    const unknown = 'nqn.2014-08.org.example:no-such-subsystem';
    assert.deepEqual(stDw0(await h.submit(admin(), { write: cd({ subnqn: unknown }) })), [1, IP, true, (1 << 16) | 256]);
    assert.ok(logs.includes(`info: conn ${id} ${peer}: Connect to unknown subsystem '${unknown}'`));
    assert.deepEqual(stDw0(await h.submit(admin(KATO_MAX_MS + 1), { write: cd() })), [1, IP, true, 48]);
    assert.ok(logs.includes(`info: conn ${id} ${peer}: Connect with KATO ${KATO_MAX_MS + 1} ms refused (maximum ${KATO_MAX_MS} ms)`));
    const c = await h.submit(admin(KATO_MAX_MS), { write: cd() });
    assert.equal(c.cqe.ok, true, 'KATO at the maximum is accepted');
    const cntlid = c.cqe.dw0;
    assert.ok(logs.includes(`debug: conn ${id} ${peer}: qid 0 connected to ${NQN} cntlid ${cntlid} sqsize 15`), logs.slice(-3).join('\n'));

    // I/O queues of that controller: before CC.EN, then with the wrong controller, host, subsystem, QID.
    const io = await raw();
    const ioc = (o: { qid?: number; cntlid?: number; hostnqn?: string; subnqn?: string } = {}) =>
      io.submit(sqeConnect({ qid: o.qid ?? 1, sqsize: 7, kato: 0, disableSqFlowControl: false }), { write: cd({ cntlid: o.cntlid ?? cntlid, hostnqn: o.hostnqn, subnqn: o.subnqn }) });
    assert.deepEqual(stDw0(await ioc()), [1, IP, true, (1 << 16) | 16], 'controller not enabled');
    await enable(h);
    assert.deepEqual(stDw0(await ioc({ cntlid: (cntlid + 1) & 0xffff })), [1, IP, true, (1 << 16) | 16], 'no such controller');
    assert.deepEqual(stDw0(await ioc({ hostnqn: OTHER_HOST })), [1, IP, true, (1 << 16) | 16], 'another host');
    assert.deepEqual(stDw0(await ioc({ subnqn: NQN2 })), [1, IP, true, (1 << 16) | 16], 'another subsystem');
    assert.deepEqual(stDw0(await ioc({ qid: 3 })), [1, IP, true, 42], 'past the granted queues (2)');
    const ok2 = await ioc({ qid: 2 });
    assert.equal(ok2.cqe.ok, true, 'the last granted QID');
    assert.deepEqual([ok2.cqe.sqid, ok2.cqe.sqhd, ok2.cqe.dw0], [2, 1, cntlid]);
    h.close();
    await io.waitClosed();
  });

  it('Connect with SQ flow control disabled: SQHD FFFFh in every completion, logged', T, async () => {
    const h = await raw();
    const c = await connectAdmin(h, NQN);
    assert.equal(c.cqe.ok, true);
    await enable(h);
    const io = await raw();
    const id = connIdOf(logs, io);
    const ic = await connectIo(io, NQN, c.cqe.dw0, { qid: 1, disableSqFc: true });
    assert.equal(ic.cqe.ok, true);
    assert.equal(ic.cqe.sqhd, 0xffff);
    assert.ok(logs.includes(`debug: conn ${id} ${peerStr(io)}: qid 1 connected to ${NQN} cntlid ${c.cqe.dw0} sqsize 31 (SQ flow control disabled)`), logs.slice(-3).join('\n'));
    for (let i = 0; i < 2; i++) assert.equal((await io.submit(sqeFlush(1))).cqe.sqhd, 0xffff);
    h.close();
  });
});

describe('target queue: host allow list', () => {
  it('a host not on the allow list → Connect Invalid Host (SCT 1, SC 84h, DNR), logged; a listed host connects', T, async () => {
    const logs: string[] = [];
    const target = makeTarget(logs, { allowHosts: [HOSTNQN] });
    const port = (await target.listen()).port;
    const h = await connectRaw(port);
    try {
      await h.icreq();
      const id = connIdOf(logs, h);
      const r = await connectAdmin(h, NQN, { hostnqn: OTHER_HOST });
      assert.deepEqual(st(r), [1, FabricsStatus.CONNECT_INVALID_HOST, true]);
      assert.ok(logs.includes(`info: conn ${id} ${peerStr(h)}: host '${OTHER_HOST}' not allowed`));
      assert.equal((await connectAdmin(h, NQN)).cqe.ok, true);
    } finally {
      h.close();
      await target.close();
    }
  });
});

describe('target queue: Connect timeout (mock timers)', () => {
  it('a connection without Connect closes after connectTimeoutMs, logged; Connect and an early close clear the timer', T, async () => {
    mock.timers.enable({ apis: ['setTimeout'] });
    const logs: string[] = [];
    const target = makeTarget(logs, { connectTimeoutMs: 1000 });
    const hosts: RawHost[] = [];
    try {
      const port = (await target.listen()).port;
      const open = async () => { const h = await connectRaw(port); hosts.push(h); await h.icreq(); return h; };
      const idle = await open();
      const connected = await open();
      assert.equal((await connectAdmin(connected, NQN)).cqe.ok, true);
      const gone = await open();
      const goneId = connIdOf(logs, gone);
      gone.close();
      await until(() => logs.some((l) => l.startsWith(`debug: conn ${goneId} `) && l.endsWith('closed: connection closed')), 'the early close');
      const idleId = connIdOf(logs, idle);
      mock.timers.tick(999);
      assert.equal(logs.some((l) => l.includes('no Connect within')), false, 'not before connectTimeoutMs');
      mock.timers.tick(1);
      assert.deepEqual(logs.filter((l) => l.includes('no Connect within')), [`warn: conn ${idleId} ${peerStr(idle)}: no Connect within 1000 ms, closing`]);
      assert.ok(logs.includes(`debug: conn ${idleId} ${peerStr(idle)} qid -1: closed: connect timeout`));
      await idle.waitClosed();
      mock.timers.tick(60_000);
      assert.equal(logs.filter((l) => l.includes('no Connect within')).length, 1, 'the connected and the closed queue had no timer left');
      assert.equal((await connected.submit(sqePropertyGet(0x1c, false))).cqe.ok, true, 'the connected queue still serves');
      assert.equal(connected.closed, false);
    } finally {
      mock.timers.reset();
      for (const h of hosts) h.close();
      await target.close();
    }
  });
});

describe('target queue: write backpressure', () => {
  it('a host that does not read pauses the target; once it reads again the target drains and serves the next command', { timeout: 30_000 }, async () => {
    const logs: string[] = [];
    // 1 MiB per read (MDTS 256 pages): 24 reads are 24 MiB of responses.
    const target = makeTarget(logs, { mdtsPages: 256, queueSize: 64 });
    const port = (await target.listen()).port;
    const paused = new Set<net.Socket>();
    const origPause = net.Socket.prototype.pause;
    const pm = mock.method(net.Socket.prototype, 'pause', function (this: net.Socket) {
      paused.add(this);
      return origPause.call(this);
    });
    const admin = await connectRaw(port);
    const io = await connectRaw(port);
    try {
      await admin.icreq();
      const c = await connectAdmin(admin, NQN);
      await enable(admin);
      await io.icreq();
      assert.equal((await connectIo(io, NQN, c.cqe.dw0, { sqsize: 63 })).cqe.ok, true);
      io.sock.pause();
      const reads = Array.from({ length: 24 }, () => io.submit(sqeRead(1, 0n, 2048), { readLength: 1 << 20, timeoutMs: 25_000 }));
      // The target pauses its side of this connection (a socket other than the hosts' own).
      await until(() => [...paused].some((s) => s !== io.sock && s !== admin.sock), 'the target paused reading', 20_000);
      const flush = io.submit(sqeFlush(1), { timeoutMs: 25_000 });
      io.sock.resume();
      for (const r of await Promise.all(reads)) assert.equal(r.data.length, 1 << 20);
      assert.equal((await flush).cqe.ok, true, 'the command sent while paused is served after the drain');
      // Opcode 09h on an I/O queue is Dataset Management: namespace 0 is refused, and the answer
      // (not a hang) shows the queue still reads and answers commands after the drain.
      assert.deepEqual(st(await io.submit(sqeSetFeatures(0x0f, 10_000), { timeoutMs: 25_000 })), [0, G.INVALID_NAMESPACE_OR_FORMAT, true]);
    } finally {
      pm.mock.restore();
      admin.close();
      io.close();
      await target.close();
    }
  });
});
