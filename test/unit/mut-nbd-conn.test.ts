/**
 * NbdConnection (src/nbd/connection.ts) over a fake socket: greeting, phases, the handshake,
 * idle and close-grace timers (mock.timers), the one teardown path, log records, the export's
 * connection set, drain handling and heldBytes.
 */
import { test, mock } from 'node:test';
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import type { Duplex } from 'node:stream';
import { ErrorCode } from '../../src/errors';
import { BlockOpCode, type BlockRequest } from '../../src/block/types';
import { NbdConnection } from '../../src/nbd/connection';
import type { NbdConnectionHost, NbdExportEntry, NbdLogEntry } from '../../src/nbd/types';
import { Cmd, Opt, encodeGreeting, encodeOption, encodeRequest, encodeExportNameReply, TransmissionFlag as TF } from '../../src/wire/nbd';

class FakeSock extends EventEmitter {
  readonly written: Buffer[] = [];
  writableLength = 0;
  destroyed = false;
  destroys = 0;
  ends = 0;
  endCb: (() => void) | undefined;
  corks = 0;
  uncorks = 0;
  pauses = 0;
  resumes = 0;
  write(b: Buffer): boolean {
    this.written.push(Buffer.from(b));
    return true;
  }
  cork(): void {
    this.corks++;
  }
  uncork(): void {
    this.uncorks++;
  }
  pause(): this {
    this.pauses++;
    return this;
  }
  resume(): this {
    this.resumes++;
    return this;
  }
  end(cb?: () => void): this {
    this.ends++;
    this.endCb = cb;
    return this;
  }
  destroy(): this {
    this.destroys++;
    if (!this.destroyed) {
      this.destroyed = true;
      process.nextTick(() => this.emit('close'));
    }
    return this;
  }
  take(): Buffer {
    const b = Buffer.concat(this.written);
    this.written.length = 0;
    return b;
  }
}

interface HostOpts {
  handshakeTimeoutMs?: number;
  idleTimeoutMs?: number;
  closeGraceMs?: number;
}

function makeHost(o: HostOpts = {}): { host: NbdConnectionHost; logs: NbdLogEntry[]; exp: NbdExportEntry; submitted: BlockRequest[]; released: () => number } {
  const logs: NbdLogEntry[] = [];
  const submitted: BlockRequest[] = [];
  let released = 0;
  const exp: NbdExportEntry = {
    name: 'vol',
    device: { size: 1 << 20, blockSize: 512, maxRequest: 32 << 20, readOnly: false, canFlush: false, canFua: false, canTrim: false, canWriteZeroes: false, canFastZero: false } as never,
    sub: {
      submit: (r: BlockRequest) => { submitted.push(r); },
      createRequest: () => ({ op: BlockOpCode.READ, offset: 0, length: 0, data: undefined, fua: false, mayDeallocate: false, fastOnly: false, handler: undefined, upstream: undefined, cookieHi: 0, cookieLo: 0, kind: 0 }),
    } as never,
    description: '',
    counters: { reads: 0, writes: 0, bytesRead: 0, bytesWritten: 0, flushes: 0, trims: 0, zeroes: 0, errors: 0 },
    connections: new Set(),
    removed: false,
  };
  const host: NbdConnectionHost = {
    findExport: (n) => (n === 'vol' ? exp : undefined),
    listExports: () => [exp],
    log: (e) => { logs.push(e); },
    shuttingDown: false,
    maxInFlight: 2,
    maxInFlightBytes: 1 << 20,
    handshakeTimeoutMs: o.handshakeTimeoutMs ?? 0,
    closeGraceMs: o.closeGraceMs ?? 5000,
    maxConnectionsPerExport: 4,
    idleTimeoutMs: o.idleTimeoutMs ?? 0,
    budgetExhausted: () => false,
    waitBudget: () => undefined,
    budgetReleased: () => { released++; },
  };
  return { host, logs, exp, submitted, released: () => released };
}

const CLIENT_FLAGS = Buffer.from([0, 0, 0, 3]);
const tick = (): Promise<void> => new Promise((r) => process.nextTick(r));

function open(o: HostOpts = {}, afterTls?: { noZeroes: boolean }) {
  const h = makeHost(o);
  const s = new FakeSock();
  const c = new NbdConnection(h.host, s as unknown as Duplex, 42, afterTls);
  c.start();
  return { ...h, s, c };
}

/** Into transmission on 'vol' (EXPORT_NAME). */
async function attached(o: HostOpts = {}) {
  const t = open(o);
  t.s.emit('data', Buffer.concat([CLIENT_FLAGS, encodeOption(Opt.EXPORT_NAME, Buffer.from('vol'))]));
  await tick();
  t.s.take();
  return t;
}

test('start: greeting, phases; after TLS no greeting', () => {
  const t = open();
  assert.deepEqual(t.s.take(), encodeGreeting());
  assert.equal(t.c.inHandshake, true);
  assert.equal(t.c.inTransmission, false);
  assert.equal(t.c.exportName, undefined);
  const a = open({}, { noZeroes: false });
  assert.equal(a.s.written.length, 0);
  // the handshake continues with an option header and the gate's NO_ZEROES
  a.s.emit('data', encodeOption(Opt.EXPORT_NAME, Buffer.from('vol')));
  assert.equal(Buffer.concat(a.s.written).length, 134);
});

test('EXPORT_NAME enters transmission: export set, log tagged, phase flags, connection registered', async () => {
  const t = open();
  t.s.take();
  t.s.emit('data', Buffer.concat([CLIENT_FLAGS, encodeOption(Opt.EXPORT_NAME, Buffer.from('vol'))]));
  assert.deepEqual(t.s.take(), encodeExportNameReply(1 << 20, TF.HAS_FLAGS | TF.SEND_CACHE | TF.CAN_MULTI_CONN, true));
  assert.equal(t.c.inTransmission, true);
  assert.equal(t.c.inHandshake, false);
  assert.equal(t.c.exportName, 'vol');
  assert.ok(t.exp.connections.has(t.c));
  assert.deepEqual(t.logs, [{ level: 'debug', msg: "transmission on export 'vol'", conn: 42, export: 'vol' }]);
});

test('bytes sent with the final option are served once transmission starts (deferred pump)', async () => {
  const t = open();
  t.s.emit('data', Buffer.concat([CLIENT_FLAGS, encodeOption(Opt.EXPORT_NAME, Buffer.from('vol')), encodeRequest({ type: Cmd.READ, cookie: 7n, offset: 0, length: 4 })]));
  assert.equal(t.submitted.length, 0);
  await tick();
  assert.equal(t.submitted.length, 1);
  // later data goes to the transmission
  t.s.emit('data', encodeRequest({ type: Cmd.READ, cookie: 8n, offset: 512, length: 4 }));
  assert.equal(t.submitted.length, 2);
  assert.equal(t.c.heldBytes, 8);
  t.s.writableLength = 100;
  assert.equal(t.c.heldBytes, 108);
});

test('a DISC sent with the final option closes after the deferred pump (maybeFinish)', async () => {
  const t = open();
  t.s.emit('data', Buffer.concat([CLIENT_FLAGS, encodeOption(Opt.EXPORT_NAME, Buffer.from('vol')), encodeRequest({ type: Cmd.DISC, cookie: 1n, offset: 0, length: 0 })]));
  await tick();
  assert.equal(t.s.ends, 1);
  assert.equal(t.c.inTransmission, false);
});

test('handshake timer: destroys with NBD_HANDSHAKE_TIMEOUT; cleared by entering transmission; none when 0', async (ctx) => {
  ctx.mock.timers.enable({ apis: ['setTimeout'] });
  const t = open({ handshakeTimeoutMs: 1000 });
  ctx.mock.timers.tick(999);
  assert.equal(t.s.destroys, 0);
  ctx.mock.timers.tick(1);
  assert.equal(t.s.destroys, 1);
  assert.deepEqual(t.logs, [{ level: 'warn', msg: 'no export chosen within 1000 ms', conn: 42, code: ErrorCode.NBD_HANDSHAKE_TIMEOUT }]);
  assert.equal(t.c.inHandshake, false);

  const g = open({ handshakeTimeoutMs: 1000 });
  g.s.emit('data', Buffer.concat([CLIENT_FLAGS, encodeOption(Opt.EXPORT_NAME, Buffer.from('vol'))]));
  ctx.mock.timers.tick(5000);
  assert.equal(g.s.destroys, 0);
  assert.equal(g.c.inTransmission, true);

  const z = open({ handshakeTimeoutMs: 0 });
  ctx.mock.timers.tick(100_000);
  assert.equal(z.s.destroys, 0);
  assert.equal(z.c.inHandshake, true);
});

test('destroy: logs with the code (msg defaults to the code, level to warn), once; flushes then destroys', () => {
  const t = open();
  t.c.destroy(ErrorCode.NBD_PROTOCOL);
  assert.deepEqual(t.logs, [{ level: 'warn', msg: ErrorCode.NBD_PROTOCOL, conn: 42, code: ErrorCode.NBD_PROTOCOL }]);
  assert.equal(t.s.destroys, 1);
  t.c.destroy(ErrorCode.NBD_BAD_MAGIC, 'again');
  assert.equal(t.s.destroys, 1);
  assert.equal(t.logs.length, 1);
  assert.equal(t.c.heldBytes, 0);

  const q = open();
  q.c.destroy();
  assert.equal(q.logs.length, 0, 'no code: no log');
  assert.equal(q.s.destroys, 1);
  const l = open();
  l.c.destroy(ErrorCode.NBD_PROTOCOL, 'm', 'info');
  assert.equal(l.logs[0]?.level, 'info');
});

test('destroy sends the replies already produced this tick (out.flush before destroy)', async () => {
  const t = await attached();
  t.s.emit('data', encodeRequest({ type: Cmd.CACHE, cookie: 3n, offset: 0, length: 4 }));
  assert.equal(t.s.corks, t.s.uncorks + 1, 'reply corked');
  t.c.destroy();
  assert.equal(t.s.corks, t.s.uncorks, 'uncorked by destroy');
});

test('socket error → destroy with CONNECTION_CLOSED', () => {
  const t = open();
  t.s.emit('error', new Error('boom'));
  assert.deepEqual(t.logs, [{ level: 'warn', msg: 'socket error: boom', conn: 42, code: ErrorCode.CONNECTION_CLOSED }]);
  assert.equal(t.s.destroys, 1);
});

test('endSocket: ends once, destroys when the end completes; the grace timer hard-closes a client that does not read', async (ctx) => {
  ctx.mock.timers.enable({ apis: ['setTimeout'] });
  const t = open({ closeGraceMs: 300 });
  t.s.writableLength = 77;
  t.c.endSocket();
  t.c.endSocket();
  assert.equal(t.s.ends, 1);
  assert.equal(t.c.inHandshake, false);
  ctx.mock.timers.tick(299);
  assert.equal(t.s.destroys, 0);
  ctx.mock.timers.tick(1);
  assert.equal(t.s.destroys, 1);
  assert.deepEqual(t.logs, [{ level: 'warn', msg: 'client did not take its last 77 bytes within 300 ms; closing', conn: 42, code: ErrorCode.CONNECTION_CLOSED }]);

  const e = open({ closeGraceMs: 300 });
  e.c.endSocket();
  e.s.endCb?.();
  assert.equal(e.s.destroys, 1, 'end callback destroys');
  ctx.mock.timers.tick(300);
  assert.equal(e.logs.length, 0, 'already destroyed: no grace log');
  assert.equal(e.s.destroys, 1);

  const c = open({ closeGraceMs: 300 });
  c.c.endSocket();
  c.s.emit('close');
  ctx.mock.timers.tick(300);
  assert.equal(c.s.destroys, 0, 'close cleared the grace timer');
  assert.equal(c.logs.length, 0);
});

test('shutdown: in the handshake ends the socket; in transmission answers ESHUTDOWN; closed: nothing', async () => {
  const h = open();
  h.c.shutdown(false);
  assert.equal(h.s.ends, 1);
  h.c.shutdown(false);
  assert.equal(h.s.ends, 1);

  const t = await attached();
  t.s.emit('data', encodeRequest({ type: Cmd.READ, cookie: 5n, offset: 0, length: 4 }));
  t.c.shutdown(false);
  assert.equal(t.s.ends, 0, 'a request in flight');
  t.s.emit('data', encodeRequest({ type: Cmd.CACHE, cookie: 6n, offset: 0, length: 4 }));
  assert.equal(t.s.take().readUInt32BE(4), 108);
});

test('end of input: in the handshake mid-option → NBD_TRUNCATED; between options → endSocket; in transmission → tx.end', async () => {
  const p = open();
  p.s.emit('data', Buffer.concat([CLIENT_FLAGS, encodeOption(Opt.LIST).subarray(0, 9)]));
  p.s.emit('end');
  assert.deepEqual(p.logs, [{ level: 'warn', msg: 'client closed in the middle of an option', conn: 42, code: ErrorCode.NBD_TRUNCATED }]);
  assert.equal(p.s.destroys, 1);
  assert.equal(p.s.ends, 0);

  const b = open();
  b.s.emit('data', CLIENT_FLAGS);
  b.s.emit('end');
  assert.equal(b.s.ends, 1);
  assert.equal(b.logs.length, 0);
  b.s.emit('end');
  assert.equal(b.s.ends, 1);

  const t = await attached();
  t.s.emit('end');
  assert.equal(t.s.ends, 1, 'nothing in flight: ends');
});

test('data after close is ignored', async () => {
  const t = await attached();
  t.c.destroy();
  t.s.emit('data', encodeRequest({ type: Cmd.READ, cookie: 5n, offset: 0, length: 4 }));
  assert.equal(t.submitted.length, 0);
  const h = open();
  h.c.destroy();
  h.s.emit('data', CLIENT_FLAGS);
  h.s.emit('data', encodeOption(Opt.LIST));
  assert.equal(h.s.take().length, 152 - 152 + encodeGreeting().length, 'only the greeting');
});

test('close: leaves the export, logs once when it was open, resolves closed', async () => {
  const t = await attached();
  t.s.emit('close');
  await t.c.closed;
  assert.equal(t.exp.connections.has(t.c), false);
  assert.deepEqual(t.logs.at(-1), { level: 'debug', msg: 'connection closed', conn: 42, export: 'vol' });
  assert.equal(t.c.inTransmission, false);

  const d = open();
  d.c.destroy();
  await d.c.closed;
  assert.equal(d.logs.filter((l) => l.msg === 'connection closed').length, 0, 'already closed: no log');
});

test('drain: in transmission pumps and releases budget; in the handshake resumes option reading', async () => {
  const t = await attached();
  const before = t.released();
  t.s.emit('drain');
  assert.equal(t.released(), before + 1);

  const h = open();
  h.s.writableLength = (1 << 20) + 1;
  h.s.emit('data', Buffer.concat([CLIENT_FLAGS, encodeOption(Opt.LIST)]));
  assert.equal(h.s.pauses, 1);
  h.s.writableLength = 0;
  h.s.emit('drain');
  assert.equal(h.s.resumes, 1);
  const c = open();
  c.c.destroy();
  c.s.emit('drain');
  assert.equal(c.s.resumes, 0);
});

test('idle timer: closes with NBD_IDLE_TIMEOUT when nothing is in flight; waits while requests run; none when 0', async (ctx) => {
  ctx.mock.timers.enable({ apis: ['setTimeout'] });
  const t = await attached({ idleTimeoutMs: 2000 });
  ctx.mock.timers.tick(1999);
  assert.equal(t.s.ends, 0);
  ctx.mock.timers.tick(1);
  assert.equal(t.s.ends, 1);
  assert.deepEqual(t.logs.at(-1), { level: 'info', msg: 'idle for 2000 ms; closing', conn: 42, code: ErrorCode.NBD_IDLE_TIMEOUT, export: 'vol' });

  const b = await attached({ idleTimeoutMs: 2000 });
  b.s.emit('data', encodeRequest({ type: Cmd.READ, cookie: 5n, offset: 0, length: 4 }));
  ctx.mock.timers.tick(2000);
  assert.equal(b.s.ends, 0, 'a request in flight');
  assert.equal(b.logs.some((l) => l.code === ErrorCode.NBD_IDLE_TIMEOUT), false);

  const z = await attached({ idleTimeoutMs: 0 });
  ctx.mock.timers.tick(1_000_000);
  assert.equal(z.s.ends, 0);

  const c = await attached({ idleTimeoutMs: 2000 });
  c.c.destroy();
  ctx.mock.timers.tick(2000);
  assert.equal(c.logs.some((l) => l.code === ErrorCode.NBD_IDLE_TIMEOUT), false, 'cleared on destroy');
});

test('idle timer is refreshed by data (real timers)', async () => {
  const t = await attached({ idleTimeoutMs: 60 });
  const refresh = mock.method(Object.getPrototypeOf(setTimeout(() => undefined, 0)), 'refresh');
  t.s.emit('data', encodeRequest({ type: Cmd.CACHE, cookie: 5n, offset: 0, length: 4 }));
  assert.equal(refresh.mock.callCount(), 1);
  refresh.mock.restore();
  t.c.destroy();
});

test('heldBytes: unsent replies in the handshake; nothing once closed, whatever is still queued or in flight', async () => {
  const h = open();
  h.s.writableLength = 30;
  assert.equal(h.c.heldBytes, 30);
  const t = await attached();
  t.s.emit('data', encodeRequest({ type: Cmd.READ, cookie: 5n, offset: 0, length: 4 }));
  t.s.writableLength = 50;
  assert.equal(t.c.heldBytes, 54);
  t.c.destroy();
  assert.equal(t.c.heldBytes, 0);
});

test('end of input in transmission waits for requests in flight, then ends', async () => {
  const t = await attached();
  t.s.emit('data', encodeRequest({ type: Cmd.READ, cookie: 5n, offset: 0, length: 4 }));
  t.s.emit('end');
  assert.equal(t.s.ends, 0);
  assert.equal(t.s.destroys, 0);
  const r = t.submitted[0] as BlockRequest;
  r.data = Buffer.from('abcd');
  (r.handler as { onBlockComplete(r: BlockRequest): void }).onBlockComplete(r);
  assert.equal(t.s.ends, 1);
});
