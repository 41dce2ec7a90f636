/**
 * More QueuePair survivors of the mutation run (issue 15 item 2), outside the lines covered by
 * mut-transport-qp-paths: which receive buffer a socket read lands in (64 KiB scratch, the 1 KiB
 * scratch after a large payload on plain TCP, the whole scratch on TLS; counted by rxEvents, a
 * read into 1 KiB cannot return more than 1 KiB), TLS handshake errors vs TCP connect errors,
 * and the per-range survivors listed in the test names. With mut-transport-qp-tls: lines 1-250
 * 65.52 -> 100 %, 251-480 69.31 -> 91.54 %, 878-928 77.78 -> 100 %, queue-command.ts 62.50 -> 100 %.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as net from 'node:net';
import * as tls from 'node:tls';
import { QueuePair, QueueCommand } from '../../src/transport/queue-pair';
import type { Cqe } from '../../src/wire/cqe';
import type { QueuePairOptions } from '../../src/transport/queue-pair';
import { ErrorCode, NvmfNbdError } from '../../src/errors';
import { encodeCapsuleResp, encodeCqe, sqeRead, sqeFlush, sqeWrite } from '../../src/wire';
import { FakeConn } from '../helpers/fake-target';
import { FakeTarget } from '../helpers/fake-target';
import { rejectsCode } from '../helpers/assert-code';
import { qpOpts, scripted } from '../helpers/qp-scripted';
import { track, turns, until } from '../helpers/clock';
import { deriveTlsPsk, formatInterchangeKey, parseInterchangeKey } from '../../src/tls/psk';
import { tlsServerOptions } from '../../src/tls/channel';

const T = { timeout: 30_000 };

const TLS_KEY = parseInterchangeKey(formatInterchangeKey(Buffer.from('f0e1d2c3b4a5968778695a4b3c2d1e0f0f1e2d3c4b5a69788796a5b4c3d2e1f0', 'hex'), 1));
const TLS_PSK = deriveTlsPsk(TLS_KEY, 'nqn.test:host', 'nqn.test:sub', 1);

/** A fake target speaking NVMe/TCP inside TLS 1.3 with TLS_PSK (the script runs once the channel is up). */
async function tlsFake(script: (c: FakeConn) => Promise<void>): Promise<{ port: number; conns: FakeConn[]; close(): Promise<void> }> {
  const conns: FakeConn[] = [];
  const raw: net.Socket[] = [];
  const server = net.createServer((sock) => {
    raw.push(sock);
    sock.on('error', () => undefined);
    const ts = new tls.TLSSocket(sock, { ...tlsServerOptions((id) => (id === TLS_PSK.identity ? TLS_PSK.psk : undefined)) } as tls.TLSSocketOptions);
    ts.on('error', () => undefined);
    ts.once('secure', () => {
      const c = new FakeConn(ts, {});
      conns.push(c);
      script(c).catch(() => ts.destroy());
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as net.AddressInfo).port,
    conns,
    async close() {
      for (const s of raw) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

/** `n` CapsuleResps (SQHD 0xFFFF, flow control off) for `cids`, as one buffer: one socket write. */
function burst(c: FakeConn, cids: readonly number[]): Buffer {
  return Buffer.concat(cids.flatMap((cid) => encodeCapsuleResp(encodeCqe({ cid, sqhd: 0xffff }), c.opts)));
}

const BURST = 1000;
/** Bytes of one burst of BURST CapsuleResps without digests (24 bytes each). */
const BURST_BYTES = BURST * 24;

/**
 * The script for the read-count tests: answers `steps` in order. 'burst': collect BURST flushes,
 * answer them all in one write; a number: one read answered with one C2HData of that size and a
 * CapsuleResp.
 */
function readScript(steps: ReadonlyArray<'burst' | number>) {
  return async (c: FakeConn): Promise<void> => {
    await c.acceptConnect({ sqhd: 0xffff });
    for (const s of steps) {
      if (s === 'burst') {
        const cids: number[] = [];
        for (let i = 0; i < BURST; i++) cids.push((await c.nextCommand()).sqe.cid);
        c.send(burst(c, cids));
      } else {
        const r = await c.nextCommand();
        c.c2h(r.sqe.cid, 0, Buffer.alloc(s, 0x5c), { last: true });
        c.respond(r.sqe.cid, { sqhd: 0xffff });
      }
    }
    for (;;) if (await c.nextCommand().catch(() => undefined) === undefined) return;
  };
}

/** Submit BURST flushes and return how many socket reads their answers took. */
async function readsForBurst(qp: QueuePair): Promise<number> {
  const before = qp.rxEvents;
  const all = [];
  for (let i = 0; i < BURST; i++) all.push(qp.submit(sqeFlush(1)));
  await Promise.all(all);
  return qp.rxEvents - before;
}

const burstOpts: Partial<QueuePairOptions> = { queueSize: 1024, disableSqFlowControl: true, maxTransfer: 1 << 20 };

// ------------------------------------------------------------------ lines 1-250: receive buffers

test('plain TCP: a burst before any C2HData and after a small one lands in the 64 KiB scratch (few reads)', T, async () => {
  const target = await FakeTarget.start(readScript(['burst', 512, 'burst']));
  const qp = await QueuePair.connect(qpOpts(target.port, burstOpts));
  try {
    assert.equal(qp.sqFlowControl, false);
    const first = await readsForBurst(qp);
    assert.ok(first < 12, `${BURST_BYTES} bytes in one write took ${first} reads (a 1 KiB buffer needs >= 24)`);
    const r = await qp.submit(sqeRead(1, 0n, 1), { dataInLength: 512 });
    assert.deepEqual(r.data, Buffer.alloc(512, 0x5c));
    const second = await readsForBurst(qp);
    assert.ok(second < 12, `after a 512-byte payload: ${second} reads (a 1 KiB buffer needs >= 24)`);
  } finally {
    qp.destroy();
    await target.close();
  }
});

test('plain TCP: after a payload of 16 KiB (the direct-read minimum) headers are read 1 KiB at a time', T, async () => {
  for (const size of [16 * 1024, 64 * 1024]) {
    const target = await FakeTarget.start(readScript([size, 'burst']));
    const qp = await QueuePair.connect(qpOpts(target.port, burstOpts));
    try {
      const r = await qp.submit(sqeRead(1, 0n, size / 512), { dataInLength: size });
      assert.deepEqual(r.data, Buffer.alloc(size, 0x5c));
      const n = await readsForBurst(qp);
      assert.ok(n >= Math.ceil(BURST_BYTES / 1024), `${size}: ${BURST_BYTES} bytes in ${n} reads: not the 1 KiB scratch`);
    } finally {
      qp.destroy();
      await target.close();
    }
  }
});

test('plain TCP: after a payload just under 16 KiB the next reads use the whole scratch again', T, async () => {
  const size = 16 * 1024 - 512;
  const target = await FakeTarget.start(readScript([size, 'burst']));
  const qp = await QueuePair.connect(qpOpts(target.port, burstOpts));
  try {
    const r = await qp.submit(sqeRead(1, 0n, size / 512), { dataInLength: size });
    assert.deepEqual(r.data, Buffer.alloc(size, 0x5c));
    const n = await readsForBurst(qp);
    assert.ok(n < 12, `${n} reads`);
  } finally {
    qp.destroy();
    await target.close();
  }
});

test('TLS: after a large payload records are still read into the whole scratch (no 1 KiB reads)', T, async () => {
  const target = await tlsFake(readScript([64 * 1024, 'burst']));
  const qp = await QueuePair.connect(qpOpts(target.port, { ...burstOpts, tls: TLS_PSK }));
  try {
    const r = await qp.submit(sqeRead(1, 0n, 128), { dataInLength: 64 * 1024 });
    assert.deepEqual(r.data, Buffer.alloc(64 * 1024, 0x5c));
    const n = await readsForBurst(qp);
    assert.ok(n < 12, `${BURST_BYTES} bytes (two TLS records) in ${n} reads`);
  } finally {
    qp.destroy();
    await target.close();
  }
});

// ------------------------------------------------------------------ lines 1-250: TLS vs TCP errors

test('TLS: the target closing during the handshake is TLS_HANDSHAKE (not CONNECT_FAILED)', T, async () => {
  // A plain-TCP fake: the ClientHello is garbage to its PDU parser, which drops the connection.
  const target = await FakeTarget.start(() => undefined);
  try {
    const e = await rejectsCode(QueuePair.connect(qpOpts(target.port, { tls: TLS_PSK })), ErrorCode.TLS_HANDSHAKE);
    // node:tls reports the early close as a socket error first (its text); the code is the handshake's.
    assert.ok(e.message.startsWith(`queue 1 (127.0.0.1:${target.port}): `), e.message);
    assert.match(e.message, /TLS|PSK identity/);
  } finally {
    await target.close();
  }
});

test('TLS: a refused TCP connect is CONNECT_FAILED, not a handshake error', T, async () => {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise<void>((r) => srv.close(() => r()));
  const e = await rejectsCode(QueuePair.connect(qpOpts(port, { tls: TLS_PSK })), ErrorCode.CONNECT_FAILED);
  assert.match(e.message, new RegExp(`^queue 1 \\(127\\.0\\.0\\.1:${port}\\): .*ECONNREFUSED`));
});

test('TLS: a queue over the secure channel connects and reads', T, async () => {
  const target = await tlsFake(readScript([4096]));
  const qp = await QueuePair.connect(qpOpts(target.port, { tls: TLS_PSK }));
  const closed = new Promise<NvmfNbdError | undefined>((r) => qp.once('close', r));
  try {
    const r = await qp.submit(sqeRead(1, 0n, 8), { dataInLength: 4096 });
    assert.deepEqual(r.data, Buffer.alloc(4096, 0x5c));
  } finally {
    qp.destroy();
    await closed;
    await target.close();
  }
});

// ------------------------------------------------------------------ lines 251-480: constructor, connect, Connect

test('the queue\'s socket turns Nagle off (setNoDelay(true)) once', T, async () => {
  const orig = net.Socket.prototype.setNoDelay;
  const calls: unknown[] = [];
  net.Socket.prototype.setNoDelay = function (this: net.Socket, ...a: [boolean?]) { calls.push(a[0]); return orig.apply(this, a); };
  let target: FakeTarget | undefined;
  try {
    target = await FakeTarget.start(async (c) => { await c.acceptConnect(); });
    const qp = await QueuePair.connect(qpOpts(target.port));
    assert.deepEqual(calls, [true]);
    qp.destroy();
  } finally {
    net.Socket.prototype.setNoDelay = orig;
    await target?.close();
  }
});

test('socketClosed resolves once the socket is closed, not before', T, async () => {
  const { target, qp } = await scripted(async (c) => {
    const f = await c.nextCommand();
    c.respond(f.sqe.cid, { sqhd: 2 });
    await c.closed;
  });
  try {
    const s = track(qp.socketClosed);
    await qp.submit(sqeFlush(1));
    assert.equal(s.done, false, 'a queue that just completed a command still has its socket');
    qp.destroy();
    await until(() => s.done, 'socketClosed resolved', 15_000);
  } finally {
    qp.destroy();
    await target.close();
  }
});

test('the target ending the connection is CONNECTION_CLOSED "connection closed by the target"', T, async () => {
  const { target, qp, closed } = await scripted(async (c) => {
    await c.nextCommand();
    c.socket.end();
  });
  try {
    const e = await rejectsCode(qp.submit(sqeFlush(1)), ErrorCode.CONNECTION_CLOSED);
    assert.equal(e.message, 'queue 1: connection closed by the target');
    assert.equal((await closed)?.message, 'queue 1: connection closed by the target');
  } finally {
    qp.destroy();
    await target.close();
  }
});

test('the connect budget timer is cleared once connected: the queue outlives its connect budget', T, async (t) => {
  t.mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 0 });
  const target = await FakeTarget.start(async (c) => {
    await c.acceptConnect();
    const f = await c.nextCommand();
    c.respond(f.sqe.cid, { sqhd: 2 });
    await c.closed;
  });
  try {
    const qp = await QueuePair.connect(qpOpts(target.port, { connectTimeoutMs: 3000, timeoutMs: 600_000 }));
    const closed = track(new Promise((r) => qp.once('close', r)));
    t.mock.timers.tick(3000);
    t.mock.timers.tick(1);
    assert.equal(closed.done, false);
    assert.equal(qp.connected, true);
    const r = await qp.submit(sqeFlush(1));
    assert.equal(r.cqe.ok, true);
    qp.destroy();
  } finally {
    t.mock.timers.reset();
    await target.close();
  }
});

test('cntlid is DW0 bits 15:0 of the Connect response (other AUTHREQ bits ignored)', T, async () => {
  const { target, qp } = await scripted(async () => undefined, {}, {}, { cntlid: 0x00110007 });
  try {
    assert.equal(qp.cntlid, 7);
    assert.equal(qp.authentications, 0);
  } finally {
    qp.destroy();
    await target.close();
  }
});

test('Connect refused: the message names queue, subsystem, status and the rejected field', T, async () => {
  const target = await FakeTarget.start(async (c) => {
    // Connect Invalid Parameters, IATTR 1 (Connect data), IPO 256: the subsystem NQN.
    await c.acceptConnect({ sct: 1, sc: 0x82, dnr: true, cntlid: 0x00010100 });
  });
  try {
    const e = await rejectsCode(QueuePair.connect(qpOpts(target.port, { qid: 3 })), ErrorCode.CONNECT_FAILED);
    assert.equal(e.message, 'Fabrics Connect (queue 3, subsystem nqn.test:sub) refused: Connect Invalid Parameters (sct 1 sc 0x82, dnr): the target rejected the subsystem NQN \'nqn.test:sub\'');
  } finally {
    await target.close();
  }
});

test('SQ flow control off: cids still bound the queue (queue size 3: two in flight, the third waits)', T, async () => {
  const seen: number[] = [];
  const { target, qp } = await scripted(async (c) => {
    for (;;) {
      const f = await c.nextCommand().catch(() => undefined);
      if (f === undefined) return;
      seen.push(f.sqe.cid);
      c.respond(f.sqe.cid, { sqhd: 0xffff });
    }
  }, { queueSize: 3, disableSqFlowControl: true }, {}, { sqhd: 0xffff });
  try {
    assert.equal(qp.sqFlowControl, false);
    const all = [1, 2, 3].map((n) => qp.submit(sqeFlush(n)));
    assert.deepEqual([qp.stats().inFlight, qp.stats().waiting, qp.load], [2, 1, 3]);
    await Promise.all(all);
    // Connect took cid 0; FIFO reuse: 1, 0, then 1 again once the first flush freed it.
    assert.deepEqual(seen, [1, 0, 1]);
  } finally {
    qp.destroy();
    await target.close();
  }
});

// ------------------------------------------------------------------ lines 878-928: teardown

class Throwing extends QueueCommand {
  failed: NvmfNbdError | undefined;
  constructor(private readonly err: Error) { super(); }
  onQpComplete(_cqe: Cqe): void { throw this.err; }
  onQpError(e: NvmfNbdError): void { this.failed = e; }
}

test('an error without a FES ends the queue without an H2CTermReq; one with a FES sends it', T, async () => {
  for (const [thrown, termReqs] of [
    [new NvmfNbdError(ErrorCode.INVALID_ARGUMENT, 'completion handler refused'), []],
    [new NvmfNbdError(ErrorCode.INVALID_ARGUMENT, 'completion handler refused', { fes: 6, fei: 3 }), [[6, 3]]],
  ] as const) {
    const { target, qp, closed, conn } = await scripted(async (c) => {
      const f = await c.nextCommand();
      c.respond(f.sqe.cid, { sqhd: 2 });
      await c.closed;
    });
    try {
      const cmd = new Throwing(thrown);
      cmd.sqe = sqeFlush(1);
      qp.submitCommand(cmd);
      assert.equal(await closed, thrown, 'the handler\'s own error ends the queue');
      await conn().closed;
      assert.deepEqual(conn().termReqs.map((t) => [t.fes, t.fei]), termReqs);
    } finally {
      qp.destroy();
      await target.close();
    }
  }
});

test('a peer that keeps its half of the connection open: the socket is destroyed 1 s after destroy()', T, async (t) => {
  const { target, qp } = await scripted(async (c) => {
    // Keep the connection half-open after the host's FIN (never end our side).
    c.socket.allowHalfOpen = true;
    await c.closed;
  });
  try {
    t.mock.timers.enable({ apis: ['setTimeout'] });
    const s = track(qp.socketClosed);
    qp.destroy();
    await until(() => (target.conns[0] as FakeConn).socket.readableEnded, 'the target saw the FIN');
    t.mock.timers.tick(999);
    await turns(20);
    assert.equal(s.done, false, 'still half-open before 1 s');
    t.mock.timers.tick(1);
    await until(() => s.done, 'socket closed at 1 s', 10_000);
  } finally {
    t.mock.timers.reset();
    qp.destroy();
    await target.close();
  }
});

// ------------------------------------------------------------------ lines 251-480: options, Connect SQE, submit defaults

test('queue size limits: 1 and 65537 refused with the range, 2 and 65536 connect', T, async () => {
  for (const n of [1, 65537]) {
    const e = await rejectsCode(QueuePair.connect(qpOpts(1, { queueSize: n })), ErrorCode.INVALID_ARGUMENT);
    assert.equal(e.message, `queue size ${n} out of range 2..65536`);
  }
  for (const n of [2, 65536]) {
    let sqsize = -1;
    const target = await FakeTarget.start(async (c) => { sqsize = (await c.acceptConnect()).raw.readUInt16LE(44); });
    try {
      const qp = await QueuePair.connect(qpOpts(target.port, { queueSize: n }));
      assert.equal(sqsize, n - 1, 'SQSIZE is 0-based');
      qp.destroy();
    } finally {
      await target.close();
    }
  }
});

test('ICResp CPDA 31 is accepted, 32 refused naming it', T, async () => {
  const bad = await FakeTarget.start(() => undefined, { cpda: 32 });
  try {
    const e = await rejectsCode(QueuePair.connect(qpOpts(bad.port)), ErrorCode.ICRESP_INVALID);
    assert.equal(e.message, 'queue 1: invalid ICResp: CPDA 32');
  } finally {
    await bad.close();
  }
  const ok = await FakeTarget.start(async (c) => { await c.acceptConnect(); }, { cpda: 31 });
  try {
    const qp = await QueuePair.connect(qpOpts(ok.port));
    assert.equal(qp.connected, true);
    qp.destroy();
  } finally {
    await ok.close();
  }
});

test('Connect SQE: KATO only on the admin queue (0 without one), CATTR bit 2 only when asked, 1 KiB data in the capsule', T, async () => {
  const cases: Array<[Partial<QueuePairOptions>, number, number]> = [
    [{ qid: 0, kato: 7000 }, 7000, 0],
    [{ qid: 0 }, 0, 0],
    [{ qid: 2, kato: 7000, disableSqFlowControl: true }, 0, 4],
    [{ qid: 2, disableSqFlowControl: false }, 0, 0],
  ];
  for (const [o, kato, cattr] of cases) {
    let got: { raw: Buffer; data: Buffer | undefined } | undefined;
    const target = await FakeTarget.start(async (c) => { got = await c.acceptConnect({ sqhd: 1 }); });
    try {
      const qp = await QueuePair.connect(qpOpts(target.port, o));
      const raw = (got as { raw: Buffer }).raw;
      assert.deepEqual([raw.readUInt16LE(42), raw.readUInt32LE(48), (raw[46] as number) & 4], [o.qid, kato, cattr], JSON.stringify(o));
      assert.equal(got?.data?.length, 1024, 'Connect data travels in the capsule');
      assert.equal((raw[39] as number) >> 4, 0, 'SGL Data Block (in-capsule offset)');
      qp.destroy();
    } finally {
      await target.close();
    }
  }
});

test('admin queue: writes up to 8 KiB in the capsule, 8193 bytes wait for R2T; I/O queue: inCapsule forces it', T, async () => {
  const seen: Array<[number, number | undefined]> = [];
  const { target, qp } = await scripted(async (c) => {
    for (;;) {
      const w = await c.nextCommand().catch(() => undefined);
      if (w === undefined) return;
      seen.push([(w.raw[39] as number) >> 4, w.data?.length]);
      if (w.data === undefined) {
        c.r2t(w.sqe.cid, 0, w.sqe.sgl.length);
        await c.receiveH2C(w.sqe.cid);
      }
      c.respond(w.sqe.cid, { sqhd: 0xffff });
    }
  }, { qid: 0, disableSqFlowControl: true }, {}, { sqhd: 0xffff });
  try {
    await qp.submit(sqeWrite(1, 0n, 16, false), { dataOut: Buffer.alloc(8192, 1) });
    await qp.submit(sqeWrite(1, 0n, 17, false), { dataOut: Buffer.alloc(8193, 2) });
    assert.deepEqual(seen, [[0, 8192], [5, undefined]]);
  } finally {
    qp.destroy();
    await target.close();
  }
  const io = await scripted(async (c) => {
    const w = await c.nextCommand();
    seen.push([(w.raw[39] as number) >> 4, w.data?.length]);
    c.respond(w.sqe.cid, { sqhd: 2 });
  }, { qid: 1 });
  try {
    seen.length = 0;
    await io.qp.submit(sqeWrite(1, 0n, 1, false), { dataOut: Buffer.alloc(512, 3), inCapsule: true });
    assert.deepEqual(seen, [[0, 512]]);
  } finally {
    io.qp.destroy();
    await io.target.close();
  }
});

test('setInCapsuleMax: exactly the limit in the capsule, one byte more by R2T; a negative limit is 0', T, async () => {
  const seen: Array<number | undefined> = [];
  const { target, qp } = await scripted(async (c) => {
    for (let sqhd = 2; ; sqhd++) {
      const w = await c.nextCommand().catch(() => undefined);
      if (w === undefined) return;
      seen.push(w.data?.length);
      if (w.data === undefined) {
        c.r2t(w.sqe.cid, 0, w.sqe.sgl.length);
        await c.receiveH2C(w.sqe.cid);
      }
      c.respond(w.sqe.cid, { sqhd: sqhd % 8 });
    }
  });
  try {
    qp.setInCapsuleMax(16);
    await qp.submit(sqeWrite(1, 0n, 1, false), { dataOut: Buffer.alloc(16, 1) });
    await qp.submit(sqeWrite(1, 0n, 1, false), { dataOut: Buffer.alloc(17, 2) });
    qp.setInCapsuleMax(-5);
    await qp.submit(sqeWrite(1, 0n, 1, false), { dataOut: Buffer.alloc(1, 3) });
    assert.deepEqual(seen, [16, undefined, undefined]);
  } finally {
    qp.destroy();
    await target.close();
  }
});

test('a command without its own timeout gets the queue\'s (not 1 ms): unanswered past the first tick, it still completes', T, async (t) => {
  t.mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 0 });
  let answer: (() => void) | undefined;
  const target = await FakeTarget.start(async (c) => {
    await c.acceptConnect();
    const f = await c.nextCommand();
    answer = () => c.respond(f.sqe.cid, { sqhd: 2 });
    await c.closed;
  });
  try {
    const qp = await QueuePair.connect(qpOpts(target.port, { timeoutMs: 8000 }));
    const f = track(qp.submit(sqeFlush(1)));
    await until(() => answer !== undefined, 'the target has the flush');
    // The queue's tick is 1000 ms (8000 / 8): the flush's deadline is 8000, not 1.
    t.mock.timers.tick(1000);
    await turns(20);
    assert.equal(qp.connected, true);
    assert.equal(f.done, false);
    answer?.();
    assert.equal((await f.promise).cqe.ok, true);
    qp.destroy();
  } finally {
    t.mock.timers.reset();
    await target.close();
  }
});

test('errors keep their cause: a refused TCP connect, a plain Error from authenticate', T, async () => {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise<void>((r) => srv.close(() => r()));
  const e = await rejectsCode(QueuePair.connect(qpOpts(port)), ErrorCode.CONNECT_FAILED);
  assert.equal((e.cause as NodeJS.ErrnoException).code, 'ECONNREFUSED');
  const plain = new Error('no secret today');
  const target = await FakeTarget.start(async (c) => { await c.acceptConnect({ cntlid: 1 | (1 << 17) }); await c.closed; });
  try {
    const orig = QueuePair.prototype.emit;
    const closes: unknown[] = [];
    QueuePair.prototype.emit = function (this: QueuePair, ev: string | symbol, ...a: unknown[]) { if (ev === 'close') closes.push(a[0]); return orig.call(this, ev, ...a); };
    try {
      await assert.rejects(QueuePair.connect(qpOpts(target.port, { authenticate: () => Promise.reject(plain) })), (x) => x === plain);
    } finally {
      QueuePair.prototype.emit = orig;
    }
    assert.equal(closes.length, 1);
    assert.equal((closes[0] as NvmfNbdError).code, ErrorCode.CONNECT_FAILED);
    assert.equal((closes[0] as NvmfNbdError).cause, plain);
  } finally {
    await target.close();
  }
});

// ------------------------------------------------------------------ queue-command.ts: a record's defaults

class Rec extends QueueCommand {
  ok: Cqe | undefined;
  err: NvmfNbdError | undefined;
  onQpComplete(cqe: Cqe): void { this.ok = { ...cqe }; }
  onQpError(e: NvmfNbdError): void { this.err = e; }
}

test('QueueCommand defaults: data by R2T (not in-capsule), an error status is an error, the queue\'s timeout', T, async (t) => {
  t.mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 0 });
  let capsuleData: number | undefined = -1;
  let answer: (() => void) | undefined;
  const target = await FakeTarget.start(async (c) => {
    await c.acceptConnect();
    const w = await c.nextCommand();
    capsuleData = w.data?.length;
    c.r2t(w.sqe.cid, 0, w.sqe.sgl.length);
    await c.receiveH2C(w.sqe.cid);
    c.respond(w.sqe.cid, { sqhd: 2, sct: 0, sc: 0x0b });
    const f = await c.nextCommand();
    answer = () => c.respond(f.sqe.cid, { sqhd: 3 });
    await c.closed;
  });
  try {
    const qp = await QueuePair.connect(qpOpts(target.port, { timeoutMs: 8000 }));
    const w = new Rec();
    w.sqe = sqeWrite(1, 0n, 1, false);
    w.dataOut = Buffer.alloc(512, 9);
    qp.submitCommand(w);
    await until(() => w.ok !== undefined || w.err !== undefined, 'the write completed');
    assert.equal(capsuleData, undefined, 'no in-capsule data on an I/O queue by default');
    assert.equal(w.ok, undefined);
    assert.equal(w.err?.code, ErrorCode.NVME_STATUS);
    assert.equal(w.err?.status?.sc, 0x0b);
    const f = new Rec();
    f.sqe = sqeFlush(1);
    qp.submitCommand(f);
    await until(() => answer !== undefined, 'the target has the flush');
    t.mock.timers.tick(1000);
    await turns(20);
    assert.equal(qp.connected, true, 'the flush has the queue\'s 8 s, not 1 ms');
    answer?.();
    await until(() => f.ok !== undefined, 'flush done');
    assert.equal(f.err, undefined);
    qp.destroy();
  } finally {
    t.mock.timers.reset();
    await target.close();
  }
});

test('submit(): a command without data resolves with the CQE only (no data key)', T, async () => {
  const { target, qp } = await scripted(async (c) => {
    const f = await c.nextCommand();
    c.respond(f.sqe.cid, { sqhd: 2 });
  });
  try {
    const r = await qp.submit(sqeFlush(1));
    assert.deepEqual(Object.keys(r), ['cqe']);
  } finally {
    qp.destroy();
    await target.close();
  }
});
