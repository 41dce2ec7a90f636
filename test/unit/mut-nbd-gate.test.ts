/**
 * The STARTTLS gate (src/nbd/tls-gate.ts) over a fake raw socket and a fake TLS server, and the
 * access policy (src/nbd/access.ts): every plain option's answer, how each ending closes the
 * socket (soft end + 5 s hard close, or destroy), the log records, the timeout (mock.timers).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import type { Duplex } from 'node:stream';
import { ErrorCode, NvmfNbdError } from '../../src/errors';
import { runTlsGate, type TlsGateCounters, type TlsGateResult } from '../../src/nbd/tls-gate';
import { checkTcpListenAllowed, needsPeerUidCheck } from '../../src/nbd/access';
import type { NbdTlsServer } from '../../src/tls/nbd-tls';
import { Opt, Rep, encodeGreeting, encodeOption, encodeRepAck, encodeRepError, MAX_OPTION_LENGTH } from '../../src/wire/nbd';
import { throwsCode } from '../helpers/assert-code';

class Raw extends EventEmitter {
  readonly written: Buffer[] = [];
  destroys = 0;
  ends = 0;
  pauses = 0;
  write(b: Buffer): boolean {
    this.written.push(Buffer.from(b));
    return true;
  }
  end(): this {
    this.ends++;
    return this;
  }
  destroy(): this {
    this.destroys++;
    return this;
  }
  pause(): this {
    this.pauses++;
    return this;
  }
  take(): Buffer {
    const b = Buffer.concat(this.written);
    this.written.length = 0;
    return b;
  }
}

interface Log {
  level: string;
  msg: string;
  code?: string;
}

function gate(o: { timeoutMs?: number; maxOptions?: number; accept?: (raw: Duplex, ms: number) => Promise<unknown> } = {}) {
  const raw = new Raw();
  const logs: Log[] = [];
  const accepts: Array<{ raw: unknown; ms: number }> = [];
  const tls = {
    accept: (r: Duplex, ms: number) => {
      accepts.push({ raw: r, ms });
      return o.accept !== undefined ? o.accept(r, ms) : new Promise(() => undefined);
    },
  } as unknown as NbdTlsServer;
  const counters: TlsGateCounters = { tlsRequired: 0 };
  let result: TlsGateResult | undefined | 'pending' = 'pending';
  const p = runTlsGate(raw as unknown as Duplex, {
    tls,
    timeoutMs: o.timeoutMs ?? 0,
    ...(o.maxOptions !== undefined ? { maxOptions: o.maxOptions } : {}),
    log: (level, msg, code) => { logs.push({ level, msg, ...(code !== undefined ? { code } : {}) }); },
  }, counters).then((r) => { result = r; return r; });
  return { raw, logs, accepts, counters, p, get result() { return result; } };
}

const FLAGS = Buffer.from([0, 0, 0, 3]);
const settle = (): Promise<void> => new Promise((r) => setImmediate(r));

test('greeting first; options before STARTTLS are ERR_TLS_REQD, logged once, counted', async () => {
  const g = gate();
  assert.deepEqual(g.raw.take(), encodeGreeting());
  g.raw.emit('data', Buffer.concat([FLAGS, encodeOption(Opt.LIST), encodeOption(Opt.GO, Buffer.alloc(6))]));
  const msg = 'TLS is required: send NBD_OPT_STARTTLS first';
  assert.deepEqual(g.raw.take(), Buffer.concat([encodeRepError(Opt.LIST, Rep.ERR_TLS_REQD, msg), encodeRepError(Opt.GO, Rep.ERR_TLS_REQD, msg)]));
  assert.equal(g.counters.tlsRequired, 2);
  assert.deepEqual(g.logs, [{ level: 'info', msg: `option ${Opt.LIST} before STARTTLS: TLS required`, code: ErrorCode.NBD_TLS_REQUIRED }]);
  await settle();
  assert.equal(g.result, 'pending');
  assert.equal(g.raw.ends + g.raw.destroys, 0);
});

test('a shared counter logs only the first refusal', () => {
  const c: TlsGateCounters = { tlsRequired: 5 };
  const raw = new Raw();
  const logs: Log[] = [];
  void runTlsGate(raw as unknown as Duplex, { tls: {} as never, timeoutMs: 0, log: (level, msg) => { logs.push({ level, msg }); } }, c);
  raw.emit('data', Buffer.concat([FLAGS, encodeOption(Opt.LIST)]));
  assert.equal(c.tlsRequired, 6);
  assert.equal(logs.length, 0);
});

test('unknown client flags: NBD_BAD_FLAGS, destroyed', async () => {
  const g = gate();
  g.raw.emit('data', Buffer.from([0, 0, 0, 8]));
  await g.p;
  assert.equal(g.result, undefined);
  assert.deepEqual(g.logs, [{ level: 'warn', msg: 'unknown client flags 0x8', code: ErrorCode.NBD_BAD_FLAGS }]);
  assert.equal(g.raw.destroys, 1);
  assert.equal(g.raw.ends, 0);
});

test('EXPORT_NAME without TLS: counted, logged (info), ended softly then hard-closed after 5 s', async (ctx) => {
  ctx.mock.timers.enable({ apis: ['setTimeout'] });
  const g = gate();
  g.raw.emit('data', Buffer.concat([FLAGS, encodeOption(Opt.EXPORT_NAME, Buffer.from('x'))]));
  await g.p;
  assert.equal(g.counters.tlsRequired, 1);
  assert.deepEqual(g.logs, [{ level: 'info', msg: 'NBD_OPT_EXPORT_NAME without TLS; closing (TLS is required)', code: ErrorCode.NBD_TLS_REQUIRED }]);
  assert.equal(g.raw.ends, 1);
  assert.equal(g.raw.destroys, 0);
  assert.equal(g.raw.take().length, encodeGreeting().length, 'no reply');
  ctx.mock.timers.tick(4999);
  assert.equal(g.raw.destroys, 0);
  ctx.mock.timers.tick(1);
  assert.equal(g.raw.destroys, 1);
});

test('ABORT: ACK, soft end, nothing logged; listeners detached, errors swallowed', async () => {
  const g = gate();
  g.raw.take();
  g.raw.emit('data', Buffer.concat([FLAGS, encodeOption(Opt.ABORT), encodeOption(Opt.LIST)]));
  await g.p;
  assert.deepEqual(g.raw.take(), encodeRepAck(Opt.ABORT));
  assert.equal(g.logs.length, 0);
  assert.equal(g.raw.ends, 1);
  assert.equal(g.raw.listenerCount('data'), 0);
  assert.equal(g.raw.listenerCount('end'), 0);
  assert.equal(g.raw.listenerCount('close'), 0);
  assert.equal(g.raw.listenerCount('error'), 1);
  g.raw.emit('error', new Error('late'));
  g.raw.emit('end');
  assert.equal(g.logs.length, 0);
  assert.equal(g.raw.destroys, 0);
});

test('STARTTLS with data is ERR_INVALID; STARTTLS then pauses, ACKs and hands the socket to TLS', async () => {
  const g = gate({ timeoutMs: 700, accept: async () => ({ secure: true }) });
  g.raw.take();
  g.raw.emit('data', Buffer.concat([Buffer.from([0, 0, 0, 1]), encodeOption(Opt.STARTTLS, Buffer.from([1]))]));
  assert.deepEqual(g.raw.take(), encodeRepError(Opt.STARTTLS, Rep.ERR_INVALID, 'STARTTLS carries no data'));
  g.raw.emit('data', encodeOption(Opt.STARTTLS));
  assert.equal(g.raw.pauses, 1);
  assert.deepEqual(g.raw.take(), encodeRepAck(Opt.STARTTLS));
  assert.equal(g.accepts.length, 1);
  assert.equal(g.accepts[0]?.raw, g.raw);
  assert.equal(g.accepts[0]?.ms, 700);
  assert.equal(g.raw.listenerCount('data'), 0);
  const r = await g.p;
  assert.deepEqual(r, { socket: { secure: true }, clientFlags: 1, noZeroes: false });
  assert.equal(g.raw.destroys + g.raw.ends, 0);
  // data after the hand-over is not the gate's
  g.raw.emit('end');
  assert.equal(g.raw.destroys, 0);
});

test('STARTTLS: NO_ZEROES carried over; no timeout gives TLS 30 s; the gate timer is cleared', async (ctx) => {
  const g = gate({ accept: async () => ({}) });
  g.raw.emit('data', Buffer.concat([FLAGS, encodeOption(Opt.STARTTLS)]));
  const r = await g.p;
  assert.equal(r?.noZeroes, true);
  assert.equal(r?.clientFlags, 3);
  assert.equal(g.accepts[0]?.ms, 30_000);

  ctx.mock.timers.enable({ apis: ['setTimeout'] });
  let ok!: (v: unknown) => void;
  const t = gate({ timeoutMs: 1000, accept: () => new Promise((res) => { ok = res; }) });
  t.raw.emit('data', Buffer.concat([FLAGS, encodeOption(Opt.STARTTLS)]));
  ok({});
  await t.p;
  ctx.mock.timers.tick(1000);
  assert.equal(t.logs.length, 0, 'no timeout after success');
  assert.equal(t.raw.destroys + t.raw.ends, 0);
});

test('TLS failure: logged with its code (TLS_HANDSHAKE for foreign errors), destroyed, undefined; timer cleared', async (ctx) => {
  ctx.mock.timers.enable({ apis: ['setTimeout'] });
  const n = gate({ timeoutMs: 1000, accept: async () => { throw new NvmfNbdError(ErrorCode.NBD_PEER_REFUSED, 'who are you'); } });
  n.raw.emit('data', Buffer.concat([FLAGS, encodeOption(Opt.STARTTLS)]));
  assert.equal(await n.p, undefined);
  assert.deepEqual(n.logs, [{ level: 'warn', msg: 'who are you', code: ErrorCode.NBD_PEER_REFUSED }]);
  assert.equal(n.raw.destroys, 1);
  ctx.mock.timers.tick(1000);
  assert.equal(n.logs.length, 1);

  const f = gate({ accept: async () => { throw 'bad record'; } });
  f.raw.emit('data', Buffer.concat([FLAGS, encodeOption(Opt.STARTTLS)]));
  assert.equal(await f.p, undefined);
  assert.deepEqual(f.logs, [{ level: 'warn', msg: 'bad record', code: ErrorCode.TLS_HANDSHAKE }]);
  assert.equal(f.raw.destroys, 1);
});

test('bytes after STARTTLS before its reply: NBD_PROTOCOL, destroyed, no ACK', async () => {
  const g = gate();
  g.raw.take();
  g.raw.emit('data', Buffer.concat([FLAGS, encodeOption(Opt.STARTTLS), Buffer.from([0x16])]));
  assert.equal(await g.p, undefined);
  assert.deepEqual(g.logs, [{ level: 'warn', msg: 'data after NBD_OPT_STARTTLS before its reply; closing', code: ErrorCode.NBD_PROTOCOL }]);
  assert.equal(g.raw.destroys, 1);
  assert.equal(g.raw.written.length, 0);
  assert.equal(g.accepts.length, 0);
});

test('option limit: maxOptions answered, one more is ERR_POLICY and a soft close; default 1024', async () => {
  const g = gate({ maxOptions: 2 });
  g.raw.take();
  g.raw.emit('data', Buffer.concat([FLAGS, encodeOption(Opt.LIST), encodeOption(Opt.LIST)]));
  assert.equal(g.raw.written.length, 2);
  g.raw.emit('data', encodeOption(Opt.INFO));
  await g.p;
  assert.deepEqual(g.raw.written.at(-1), encodeRepError(Opt.INFO, Rep.ERR_POLICY, 'too many options'));
  assert.deepEqual(g.logs.at(-1), { level: 'warn', msg: 'more than 2 options before TLS; closing', code: ErrorCode.NBD_TOO_MANY_OPTIONS });
  assert.equal(g.raw.ends, 1);
  assert.equal(g.raw.destroys, 0);

  const d = gate();
  d.raw.emit('data', Buffer.concat([FLAGS, ...Array.from({ length: 1024 }, () => encodeOption(Opt.LIST))]));
  assert.equal(d.raw.ends, 0);
  d.raw.emit('data', encodeOption(Opt.LIST));
  await d.p;
  assert.equal(d.logs.at(-1)?.msg, 'more than 1024 options before TLS; closing');
});

test('an option too large: ERR_TOO_BIG then a soft close; a bad magic: destroyed', async () => {
  const g = gate();
  g.raw.take();
  const h = encodeOption(Opt.LIST);
  h.writeUInt32BE(MAX_OPTION_LENGTH + 1, 12);
  g.raw.emit('data', Buffer.concat([FLAGS, h]));
  await g.p;
  assert.deepEqual(g.raw.take(), encodeRepError(0, Rep.ERR_TOO_BIG, 'option too large'));
  assert.equal(g.logs[0]?.code, ErrorCode.NBD_OPTION_TOO_LARGE);
  assert.equal(g.logs[0]?.level, 'warn');
  assert.equal(g.raw.ends, 1);
  assert.equal(g.raw.destroys, 0);

  const b = gate();
  const bad = encodeOption(Opt.LIST);
  bad[3] = 0;
  b.raw.emit('data', Buffer.concat([FLAGS, bad]));
  await b.p;
  assert.deepEqual(b.logs, [{ level: 'warn', msg: 'option does not start with IHAVEOPT', code: ErrorCode.NBD_BAD_MAGIC }]);
  assert.equal(b.raw.destroys, 1);
  assert.equal(b.raw.ends, 0);
});

test('the client leaving (end or close) destroys quietly; a socket error is logged', async () => {
  for (const ev of ['end', 'close']) {
    const g = gate();
    g.raw.emit(ev);
    assert.equal(await g.p, undefined);
    assert.equal(g.logs.length, 0);
    assert.equal(g.raw.destroys, 1);
    assert.equal(g.raw.ends, 0);
  }
  const e = gate();
  e.raw.emit('error', new Error('reset'));
  await e.p;
  assert.deepEqual(e.logs, [{ level: 'warn', msg: 'socket error before TLS: reset', code: ErrorCode.CONNECTION_CLOSED }]);
  assert.equal(e.raw.destroys, 1);
  e.raw.emit('close');
  assert.equal(e.raw.destroys, 1, 'finished once');
});

test('timeout: NBD_HANDSHAKE_TIMEOUT and a soft close; none when 0', async (ctx) => {
  ctx.mock.timers.enable({ apis: ['setTimeout'] });
  const g = gate({ timeoutMs: 800 });
  ctx.mock.timers.tick(799);
  assert.equal(g.logs.length, 0);
  ctx.mock.timers.tick(1);
  await g.p;
  assert.deepEqual(g.logs, [{ level: 'warn', msg: 'no TLS within 800 ms; closing', code: ErrorCode.NBD_HANDSHAKE_TIMEOUT }]);
  assert.equal(g.raw.ends, 1);
  const z = gate({ timeoutMs: 0 });
  ctx.mock.timers.tick(100_000);
  assert.equal(z.logs.length, 0);
  assert.equal(z.raw.ends + z.raw.destroys, 0);
  // a finished gate's timer is cleared
  const a = gate({ timeoutMs: 800 });
  a.raw.emit('data', Buffer.concat([FLAGS, encodeOption(Opt.ABORT)]));
  ctx.mock.timers.tick(800);
  assert.equal(a.logs.length, 0);
});

test('access: plain NBD on a non-loopback address needs insecure or TLS', () => {
  const e = throwsCode(() => checkTcpListenAllowed('0.0.0.0'), ErrorCode.NBD_INSECURE_BIND);
  assert.equal(e.message, 'refusing to serve NBD without TLS on 0.0.0.0: anyone who can reach it could read and write the disks (use --nbd-tls, a loopback address, or --nbd-insecure)');
  throwsCode(() => checkTcpListenAllowed('10.0.0.1', { insecure: false, allowAnyLocalUser: true }), ErrorCode.NBD_INSECURE_BIND);
  checkTcpListenAllowed('0.0.0.0', { insecure: true });
  checkTcpListenAllowed('0.0.0.0', { tls: {} as never });
  checkTcpListenAllowed('127.0.0.1');
  checkTcpListenAllowed('::1', {});
});

test('access: the peer-uid check applies to plain loopback TCP unless any local user is allowed', () => {
  assert.equal(needsPeerUidCheck('127.0.0.1'), true);
  assert.equal(needsPeerUidCheck('127.0.0.1', { allowAnyLocalUser: false }), true);
  assert.equal(needsPeerUidCheck('127.0.0.1', { allowAnyLocalUser: true }), false);
  assert.equal(needsPeerUidCheck('127.0.0.1', { tls: {} as never }), false);
  assert.equal(needsPeerUidCheck('0.0.0.0', { insecure: true }), false);
});

test('the gate timeout does not cut a TLS handshake already under way (TLS has its own limit)', async (ctx) => {
  ctx.mock.timers.enable({ apis: ['setTimeout'] });
  let ok!: (v: unknown) => void;
  const g = gate({ timeoutMs: 1000, accept: () => new Promise((res) => { ok = res; }) });
  g.raw.emit('data', Buffer.concat([FLAGS, encodeOption(Opt.STARTTLS)]));
  ctx.mock.timers.tick(1000);
  await settle();
  assert.equal(g.result, 'pending');
  assert.equal(g.logs.length, 0);
  assert.equal(g.raw.ends + g.raw.destroys, 0);
  ok({ tls: 1 });
  const r = await g.p;
  assert.deepEqual(r, { socket: { tls: 1 }, clientFlags: 3, noZeroes: true });
});

test('without a counters argument the first refusal is still logged, once', () => {
  const raw = new Raw();
  const logs: Log[] = [];
  void runTlsGate(raw as unknown as Duplex, { tls: {} as never, timeoutMs: 0, log: (level, msg) => { logs.push({ level, msg }); } });
  raw.emit('data', Buffer.concat([FLAGS, encodeOption(Opt.LIST), encodeOption(Opt.LIST)]));
  assert.deepEqual(logs, [{ level: 'info', msg: `option ${Opt.LIST} before STARTTLS: TLS required` }]);
});
