/**
 * NbdServer (src/nbd/server.ts): endpoint formatting, the default log sink, option defaults,
 * export management (name limits, stats), the shared budget's wake-ups, listen errors, the
 * connection cap, the loopback peer-uid rule, the TLS gate hand-over and close().
 */
import { test, mock } from 'node:test';
import assert from 'node:assert/strict';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import * as fs from 'node:fs';
import { once, EventEmitter } from 'node:events';
import type { Duplex } from 'node:stream';
import { ErrorCode } from '../../src/errors';
import { MemoryBlockDevice } from '../../src/block/memory-device';
import { NbdServer, formatEndpoint, type NbdLogEntry } from '../../src/nbd/server';
import { encodeGreeting } from '../../src/wire/nbd';
import { rejectsCode, throwsCode } from '../helpers/assert-code';
import { until } from '../helpers/clock';
import { NbdTestClient } from '../helpers/nbd-test-client';

const dev = (size = 1 << 20, o: { blockSize?: number; readOnly?: boolean } = {}): MemoryBlockDevice => new MemoryBlockDevice({ size, ...o });
type Host = {
  maxInFlight: number; maxInFlightBytes: number; handshakeTimeoutMs: number; closeGraceMs: number;
  maxConnectionsPerExport: number; idleTimeoutMs: number; shuttingDown: boolean;
  budgetExhausted(): boolean; waitBudget(r: () => void): void; budgetReleased(): void;
  findExport(n: string): { name: string } | undefined; listExports(): Array<{ name: string }>; log(e: NbdLogEntry): void;
};
const hostOf = (s: NbdServer): Host => (s as unknown as { host: Host }).host;

class Sock extends EventEmitter {
  readonly written: Buffer[] = [];
  destroyed = false;
  writableLength = 0;
  write(b: Buffer): boolean { this.written.push(Buffer.from(b)); return true; }
  cork(): void {}
  uncork(): void {}
  pause(): this { return this; }
  resume(): this { return this; }
  ends = 0;
  end(cb?: () => void): this { this.ends++; process.nextTick(() => cb?.()); return this; }
  destroy(): this {
    if (!this.destroyed) { this.destroyed = true; process.nextTick(() => this.emit('close')); }
    return this;
  }
}

test('formatEndpoint: each kind', () => {
  assert.equal(formatEndpoint({ unix: '/run/x.sock' }), 'unix:/run/x.sock');
  assert.equal(formatEndpoint({ tcp: { host: '127.0.0.2', port: 10809 } }), 'tcp:127.0.0.2:10809');
  assert.equal(formatEndpoint({ fd: 3 }), 'fd:3');
  assert.equal(formatEndpoint({ stdio: true }), 'stdio');
});

test('the default log prints warnings and errors with connection, export and code; nothing else', () => {
  const w = mock.method(process.stderr, 'write', () => true);
  try {
    const s = new NbdServer();
    const log = hostOf(s).log;
    log({ level: 'warn', msg: 'm1', conn: 3, export: 'e', code: ErrorCode.NBD_PROTOCOL });
    log({ level: 'error', msg: 'm2' });
    log({ level: 'info', msg: 'm3' });
    log({ level: 'debug', msg: 'm4' });
    assert.deepEqual(w.mock.calls.map((c) => c.arguments[0]), [`nbd conn 3 export 'e': m1 (${ErrorCode.NBD_PROTOCOL})\n`, 'nbd: m2\n']);
  } finally {
    w.mock.restore();
  }
});

test('option defaults and overrides reach the connections’ host', () => {
  const d = hostOf(new NbdServer());
  assert.deepEqual(
    [d.maxInFlight, d.maxInFlightBytes, d.handshakeTimeoutMs, d.closeGraceMs, d.maxConnectionsPerExport, d.idleTimeoutMs, d.shuttingDown],
    [128, 64 * 1024 * 1024, 30_000, 5000, 64, 0, false],
  );
  const o = hostOf(new NbdServer({ maxInFlight: 3, maxInFlightBytes: 5, handshakeTimeoutMs: 7, closeGraceMs: 11, maxConnectionsPerExport: 13, idleTimeoutMs: 17 }));
  assert.deepEqual([o.maxInFlight, o.maxInFlightBytes, o.handshakeTimeoutMs, o.closeGraceMs, o.maxConnectionsPerExport, o.idleTimeoutMs], [3, 5, 7, 11, 13, 17]);
  const logs: NbdLogEntry[] = [];
  const l = new NbdServer({ log: (e) => logs.push(e) });
  hostOf(l).log({ level: 'debug', msg: 'x' });
  assert.deepEqual(logs, [{ level: 'debug', msg: 'x' }]);
});

test('addExport: names up to 4096 bytes without NUL; duplicates refused; the first is the default', () => {
  const s = new NbdServer({ log: () => undefined });
  s.addExport('a'.repeat(4096), dev());
  throwsCode(() => s.addExport('b'.repeat(4097), dev()), ErrorCode.CFG_INVALID);
  throwsCode(() => s.addExport('é'.repeat(2049), dev()), ErrorCode.CFG_INVALID, '4098 bytes in 2049 characters');
  const n = throwsCode(() => s.addExport('x\0y', dev()), ErrorCode.CFG_INVALID);
  assert.equal(n.message, "bad export name 'x\0y'");
  s.addExport('second', dev(), { description: 'two' });
  const e = throwsCode(() => s.addExport('second', dev()), ErrorCode.NBD_EXPORT_EXISTS);
  assert.equal(e.message, "export 'second' already exists");
  assert.deepEqual(s.exportNames(), ['a'.repeat(4096), 'second']);
  const h = hostOf(s);
  assert.equal(h.findExport('')?.name, 'a'.repeat(4096));
  assert.equal(h.findExport('second')?.name, 'second');
  assert.equal(h.findExport('nope'), undefined);
  assert.deepEqual(h.listExports().map((x) => x.name), ['a'.repeat(4096), 'second']);
  assert.equal(hostOf(new NbdServer()).findExport(''), undefined);
});

test('stats: every field of every export', () => {
  const s = new NbdServer({ log: () => undefined });
  s.addExport('one', dev(8 * 4096, { blockSize: 4096, readOnly: true }), { description: 'first' });
  s.addExport('two', dev(3 * 512));
  assert.deepEqual(s.stats(), [
    { name: 'one', description: 'first', size: 8 * 4096, blockSize: 4096, readOnly: true, connections: 0, reads: 0, writes: 0, bytesRead: 0, bytesWritten: 0, flushes: 0, trims: 0, zeroes: 0, errors: 0, rmw: 0, rmwBlocksRead: 0, unaligned: 0 },
    { name: 'two', description: '', size: 1536, blockSize: 512, readOnly: false, connections: 0, reads: 0, writes: 0, bytesRead: 0, bytesWritten: 0, flushes: 0, trims: 0, zeroes: 0, errors: 0, rmw: 0, rmwBlocksRead: 0, unaligned: 0 },
  ]);
});

test('removeExport: unknown name refused; the export disappears and its connections close', async () => {
  const s = new NbdServer({ log: () => undefined });
  const u = await rejectsCode(s.removeExport('nope'), ErrorCode.NBD_UNKNOWN_EXPORT);
  assert.equal(u.message, "no export 'nope'");
  s.addExport('a', dev());
  s.addExport('b', dev());
  const ep = await s.listen({ tcp: { port: 0 } });
  const port = (ep as { tcp: { port: number } }).tcp.port;
  const c = await NbdTestClient.connect({ port }, 'a');
  await until(() => s.stats()[0]?.connections === 1, 'connection registered');
  await s.removeExport('a');
  assert.equal((s as unknown as { connections: Set<unknown> }).connections.size, 0, 'resolved once its connections closed');
  assert.deepEqual(s.exportNames(), ['b']);
  assert.equal(hostOf(s).findExport('')?.name, 'b');
  await assert.rejects(c.read(0, 512));
  await s.close();
});

test('heldBytes and the budget: waiters wake once per tick, FIFO, only when under the budget', async () => {
  const s = new NbdServer({ log: () => undefined, maxTotalBytes: 100 });
  const h = hostOf(s);
  assert.equal(s.heldBytes(), 0);
  assert.equal(h.budgetExhausted(), false);
  h.budgetReleased(); // nobody waiting: nothing
  const order: number[] = [];
  h.waitBudget(() => (order as number[]).push(1));
  h.waitBudget(() => (order as number[]).push(2));
  h.budgetReleased();
  h.budgetReleased();
  assert.deepEqual(order, []);
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(order, [1, 2]);
  h.budgetReleased();
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(order, [1, 2], 'waiters were taken');

  // over budget: a connection holding 100 bytes of unsent replies
  const sock = new Sock();
  sock.writableLength = 100;
  s.serveSocket(sock as unknown as Duplex);
  assert.equal(s.heldBytes(), 100);
  assert.equal(h.budgetExhausted(), true);
  h.waitBudget(() => (order as number[]).push(3));
  h.budgetReleased();
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(order, [1, 2], 'still over budget');
  sock.writableLength = 99;
  assert.equal(h.budgetExhausted(), false);
  h.budgetReleased();
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(order, [1, 2, 3]);
  // a closed connection releases its bytes and wakes waiters
  sock.writableLength = 200;
  h.waitBudget(() => (order as number[]).push(4));
  sock.destroy();
  await until(() => order.length === 4, 'woken by the close');
  assert.equal(s.heldBytes(), 0);
});

test('serveSocket: a plain stream gets the greeting; after close() a new one is destroyed', async () => {
  const s = new NbdServer({ log: () => undefined });
  const a = new Sock();
  const r = s.serveSocket(a as unknown as Duplex);
  assert.deepEqual(a.written[0], encodeGreeting());
  await s.close();
  await r.closed;
  const b = new Sock();
  s.serveSocket(b as unknown as Duplex);
  assert.equal(b.destroyed, true);
  assert.equal(b.written.length, 0);
  assert.equal(hostOf(s).shuttingDown, true);
});

test('listen: TCP defaults to 127.0.0.1 and reports the bound port; endpoints are kept; logged', async () => {
  const logs: NbdLogEntry[] = [];
  const s = new NbdServer({ log: (e) => logs.push(e) });
  const ep = await s.listen({ tcp: { port: 0 } });
  assert.ok('tcp' in ep);
  const tcp = (ep as { tcp: { host: string; port: number } }).tcp;
  assert.equal(tcp.host, '127.0.0.1');
  assert.ok(tcp.port > 0);
  assert.deepEqual(s.endpoints, [ep]);
  assert.deepEqual(logs, [{ level: 'info', msg: `listening on tcp:127.0.0.1:${tcp.port}` }]);
  // the same port again: NBD_LISTEN_FAILED, endpoints unchanged
  const e = await rejectsCode(s.listen({ tcp: { host: '127.0.0.1', port: tcp.port } }), ErrorCode.NBD_LISTEN_FAILED);
  assert.match(e.message, /^cannot listen: .*EADDRINUSE/);
  assert.ok(e.cause !== undefined);
  assert.equal(s.endpoints.length, 1);
  // plain TCP on a non-loopback address is refused with its own code
  await rejectsCode(s.listen({ tcp: { host: '0.0.0.0', port: 0 } }), ErrorCode.NBD_INSECURE_BIND);
  await s.close();
  assert.deepEqual(s.endpoints, []);
  const c = await rejectsCode(s.listen({ tcp: { port: 0 } }), ErrorCode.NBD_LISTEN_FAILED);
  assert.equal(c.message, 'server is closing');
});

test('listen on a Unix socket (directory made)', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mut-nbd-srv-'));
  const s = new NbdServer({ log: () => undefined });
  s.addExport('u', dev());
  try {
    const p = path.join(dir, 'sub', 'nbd.sock');
    const ep = await s.listen({ unix: p });
    assert.deepEqual(ep, { unix: p });
    const c = await NbdTestClient.connect({ path: p }, 'u');
    assert.equal(c.size, 1n << 20n);
    c.destroy?.();
    assert.equal(s.endpoints.length, 1);
    await s.close();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('connections above maxConnections are refused with a warning naming the count', async () => {
  const logs: NbdLogEntry[] = [];
  const s = new NbdServer({ log: (e) => logs.push(e), maxConnections: 1, access: { allowAnyLocalUser: true } });
  s.addExport('e', dev());
  const ep = (await s.listen({ tcp: { port: 0 } })) as { tcp: { port: number } };
  const a = await NbdTestClient.connect({ port: ep.tcp.port }, 'e');
  const b = net.connect(ep.tcp.port, '127.0.0.1');
  await once(b, 'close');
  const w = logs.find((l) => l.code === ErrorCode.NBD_TOO_MANY_CONNECTIONS);
  assert.deepEqual(w, { level: 'warn', msg: 'connection refused: 1 open (maximum 1)', code: ErrorCode.NBD_TOO_MANY_CONNECTIONS });
  assert.ok(a.size > 0n);
  await s.close();
});

test('loopback peer-uid rule: an unknown peer is refused (counted, logged); allowAnyLocalUser serves it', async () => {
  const proc = fs.mkdtempSync(path.join(os.tmpdir(), 'mut-nbd-proc-'));
  try {
    const logs: NbdLogEntry[] = [];
    const s = new NbdServer({ log: (e) => logs.push(e), procRoot: proc, peerUid: 4242 });
    s.addExport('e', dev());
    const ep = (await s.listen({ tcp: { port: 0 } })) as { tcp: { port: number } };
    const c = net.connect(ep.tcp.port, '127.0.0.1');
    const got: Buffer[] = [];
    c.on('data', (d) => got.push(d));
    await once(c, 'close');
    assert.equal(Buffer.concat(got).length, 0, 'no greeting');
    assert.equal(s.peerRefused, 1);
    const w = logs.find((l) => l.code === ErrorCode.NBD_PEER_REFUSED);
    assert.equal(w?.level, 'warn');
    assert.match(w?.msg ?? '', /^connection from 127\.0\.0\.1:\d+ refused: its socket belongs to an unknown user; loopback TCP serves only uid 4242 and root \(use a Unix socket, --nbd-tls, or --nbd-allow-any-local-user\)$/);
    await s.close();

    const any = new NbdServer({ log: () => undefined, procRoot: proc, peerUid: 4242, access: { allowAnyLocalUser: true } });
    any.addExport('e', dev());
    const ep2 = (await any.listen({ tcp: { port: 0 } })) as { tcp: { port: number } };
    const ok = await NbdTestClient.connect({ port: ep2.tcp.port }, 'e');
    assert.equal(ok.size, 1n << 20n);
    assert.equal(any.peerRefused, 0);
    await any.close();
  } finally {
    fs.rmSync(proc, { recursive: true, force: true });
  }
});

test('loopback peer-uid rule with the real /proc: our own (root or self) peer is served', async () => {
  const s = new NbdServer({ log: () => undefined });
  s.addExport('e', dev());
  const ep = (await s.listen({ tcp: { port: 0 } })) as { tcp: { port: number } };
  const c = await NbdTestClient.connect({ port: ep.tcp.port }, 'e');
  assert.equal(c.size, 1n << 20n);
  assert.equal(s.peerRefused, 0);
  await s.close();
});

test('TLS required: the gate runs first; refusal resolves closed; close() destroys pending sockets', async () => {
  const logs: NbdLogEntry[] = [];
  let accept: ((v: unknown) => void) | undefined;
  const tls = { accept: () => new Promise((r) => { accept = r; }) };
  const s = new NbdServer({ log: (e) => logs.push(e), access: { tls: tls as never } });
  s.addExport('e', dev());
  const a = new Sock();
  const ra = s.serveSocket(a as unknown as Duplex);
  assert.deepEqual(a.written[0], encodeGreeting());
  a.emit('data', Buffer.from([0, 0, 0, 8]));
  await ra.closed;
  const bad = logs.find((l) => l.code === ErrorCode.NBD_BAD_FLAGS);
  assert.equal(bad?.conn, 1);
  assert.equal(bad?.level, 'warn');

  // a secure socket after STARTTLS becomes a connection with no second greeting
  const b = new Sock();
  s.serveSocket(b as unknown as Duplex);
  const opt = Buffer.alloc(16);
  opt.writeBigUInt64BE(0x49484156454f5054n, 0);
  opt.writeUInt32BE(5, 8);
  b.emit('data', Buffer.concat([Buffer.from([0, 0, 0, 3]), opt]));
  const secure = new Sock();
  accept?.(secure);
  await until(() => s.heldBytes() === 0 && (s as unknown as { connections: Set<unknown> }).connections.size === 1, 'connection made');
  assert.equal(secure.written.length, 0, 'no greeting on the secure socket');

  // still in the gate at close(): destroyed
  const c = new Sock();
  const rc = s.serveSocket(c as unknown as Duplex);
  await s.close();
  assert.equal(c.destroyed, true);
  await rc.closed;
  assert.equal((secure as Sock).ends, 1, 'handshake-phase connection ended softly');
  const d = new Sock();
  await s.serveSocket(d as unknown as Duplex).closed;
  assert.equal(d.destroyed, true, 'closing: destroyed at once');
  assert.equal(d.written.length, 0);
});

test('TLS done after close() began: the secure socket is destroyed', async () => {
  let accept: ((v: unknown) => void) | undefined;
  const tls = { accept: () => new Promise((r) => { accept = r; }) };
  const s = new NbdServer({ log: () => undefined, access: { tls: tls as never } });
  const b = new Sock();
  const r = s.serveSocket(b as unknown as Duplex);
  const opt = Buffer.alloc(16);
  opt.writeBigUInt64BE(0x49484156454f5054n, 0);
  opt.writeUInt32BE(5, 8);
  b.emit('data', Buffer.concat([Buffer.from([0, 0, 0, 3]), opt]));
  (s as unknown as { pending: Set<unknown> }).pending.clear();
  await s.close();
  const secure = new Sock();
  accept?.(secure);
  await r.closed;
  assert.equal(secure.destroyed, true);
  assert.equal(secure.written.length, 0);
});

test('the default shared budget is 256 MiB of held bytes', () => {
  const s = new NbdServer({ log: () => undefined });
  const sock = new Sock();
  sock.writableLength = 256 * 1024 * 1024 - 1;
  s.serveSocket(sock as unknown as Duplex);
  assert.equal(hostOf(s).budgetExhausted(), false);
  sock.writableLength = 256 * 1024 * 1024;
  assert.equal(hostOf(s).budgetExhausted(), true);
  sock.destroy();
});
