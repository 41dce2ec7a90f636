/**
 * NbdServer (src/nbd/server.ts), second set of mutation pins: the connection cap counts
 * connections still in the TLS gate, accepted sockets have Nagle off, connection ids count up,
 * NO_ZEROES negotiated before STARTTLS holds after it, serveSocket while closing still returns a
 * promise, and close() resolves only
 * after its connections have closed. Mutation run: `npm run mutate -- src/nbd/server.ts
 * --tests=mut-nbd-srv,mut-nbd-srv2,nbd-server,nbd-server-budget,nbd-server-limits,io-buffers`.
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
import type { BlockRequest } from '../../src/block/types';
import { NbdServer, type NbdLogEntry } from '../../src/nbd/server';
import { until } from '../helpers/clock';
import { Cmd, NbdTestClient } from '../helpers/nbd-test-client';

const MiB = 1 << 20;
const dev = (): MemoryBlockDevice => new MemoryBlockDevice({ size: MiB });

/** A stream double that records what the server writes (as in mut-nbd-srv). */
class Sock extends EventEmitter {
  readonly written: Buffer[] = [];
  destroyed = false;
  writableLength = 0;
  write(b: Buffer, cb?: () => void): boolean { this.written.push(Buffer.from(b)); if (cb !== undefined) process.nextTick(cb); return true; }
  cork(): void {}
  uncork(): void {}
  pause(): this { return this; }
  resume(): this { return this; }
  end(cb?: () => void): this { process.nextTick(() => cb?.()); return this; }
  destroy(): this {
    if (!this.destroyed) { this.destroyed = true; process.nextTick(() => this.emit('close')); }
    return this;
  }
}

/** NBD option header: IHAVEOPT, option, length. */
function option(opt: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const h = Buffer.alloc(16);
  h.writeBigUInt64BE(0x49484156454f5054n, 0);
  h.writeUInt32BE(opt, 8);
  h.writeUInt32BE(data.length, 12);
  return Buffer.concat([h, data]);
}
const NBD_OPT_EXPORT_NAME = 1;
const NBD_OPT_STARTTLS = 5;

test('the connection cap counts connections still in the TLS gate', async () => {
  const logs: NbdLogEntry[] = [];
  // A gate that never finishes: the first connection stays pending.
  const tls = { accept: () => new Promise(() => undefined) };
  const s = new NbdServer({ log: (e) => logs.push(e), maxConnections: 1, access: { tls: tls as never } });
  s.addExport('e', dev());
  const ep = (await s.listen({ tcp: { port: 0 } })) as { tcp: { port: number } };
  const a = net.connect(ep.tcp.port, '127.0.0.1');
  const b = new net.Socket();
  try {
    await once(a, 'data'); // the greeting: a is in the gate
    b.connect(ep.tcp.port, '127.0.0.1');
    // Refused before the greeting: the socket closes without a byte.
    const first = await Promise.race([once(b, 'close').then(() => 'closed'), once(b, 'data').then(() => 'greeting')]);
    assert.equal(first, 'closed');
    assert.deepEqual(logs.find((l) => l.code === ErrorCode.NBD_TOO_MANY_CONNECTIONS),
      { level: 'warn', msg: 'connection refused: 0 open (maximum 1)', code: ErrorCode.NBD_TOO_MANY_CONNECTIONS });
  } finally {
    a.destroy();
    b.destroy();
    await s.close();
  }
});

test('accepted sockets have Nagle off', async () => {
  // Record the socket's local port at the call: the server side of a connection is the
  // socket whose local port is the listener's.
  const seen: Array<[number | undefined, unknown]> = [];
  const orig = net.Socket.prototype.setNoDelay;
  const nd = mock.method(net.Socket.prototype, 'setNoDelay', function (this: net.Socket, v?: boolean) {
    seen.push([this.localPort, v]);
    return orig.call(this, v);
  });
  try {
    const s = new NbdServer({ log: () => undefined, access: { allowAnyLocalUser: true } });
    s.addExport('e', dev());
    const ep = (await s.listen({ tcp: { port: 0 } })) as { tcp: { port: number } };
    const c = await NbdTestClient.connect({ port: ep.tcp.port }, 'e');
    c.destroy();
    await s.close();
    assert.deepEqual(seen.filter(([port]) => port === ep.tcp.port).map(([, v]) => v), [true]);
  } finally {
    nd.mock.restore();
  }
});

test('connection ids count up from 1', async () => {
  const logs: NbdLogEntry[] = [];
  const s = new NbdServer({ log: (e) => logs.push(e), access: { allowAnyLocalUser: true } });
  s.addExport('e', dev());
  const ep = (await s.listen({ tcp: { port: 0 } })) as { tcp: { port: number } };
  const c1 = await NbdTestClient.connect({ port: ep.tcp.port }, 'e');
  const c2 = await NbdTestClient.connect({ port: ep.tcp.port }, 'e');
  c1.destroy();
  c2.destroy();
  await s.close();
  const ids = [...new Set(logs.filter((l) => l.conn !== undefined).map((l) => l.conn))].sort();
  assert.deepEqual(ids, [1, 2]);
});

test('NO_ZEROES from the client flags before STARTTLS holds on the secure socket (EXPORT_NAME reply of 10 bytes)', async () => {
  let accept: ((v: unknown) => void) | undefined;
  const tls = { accept: () => new Promise((r) => { accept = r; }) };
  const s = new NbdServer({ log: () => undefined, access: { tls: tls as never } });
  s.addExport('e', dev());
  const plain = new Sock();
  s.serveSocket(plain as unknown as Duplex);
  // Client flags FIXED_NEWSTYLE | NO_ZEROES, then STARTTLS.
  plain.emit('data', Buffer.concat([Buffer.from([0, 0, 0, 3]), option(NBD_OPT_STARTTLS)]));
  await until(() => accept !== undefined, 'STARTTLS reached the TLS accept');
  const secure = new Sock();
  accept?.(secure);
  await until(() => (s as unknown as { connections: Set<unknown> }).connections.size === 1, 'connection made');
  secure.emit('data', option(NBD_OPT_EXPORT_NAME, Buffer.from('e')));
  await until(() => secure.written.length > 0, 'export name answered');
  const reply = Buffer.concat(secure.written);
  assert.equal(reply.length, 10, 'size u64 + flags u16, no 124 zero bytes');
  assert.equal(reply.readBigUInt64BE(0), BigInt(MiB));
  await s.close();
});

test('serveSocket with TLS while closing: destroyed, and `closed` is still a promise', async () => {
  const s = new NbdServer({ log: () => undefined, access: { tls: { accept: () => new Promise(() => undefined) } as never } });
  await s.close();
  const sock = new Sock();
  const r = s.serveSocket(sock as unknown as Duplex);
  assert.equal(sock.destroyed, true);
  assert.equal(typeof r.closed.then, 'function');
  await r.closed;
});

test('close() resolves only after its connections have closed (a held read completes first)', async () => {
  const held: Array<() => void> = [];
  class Held extends MemoryBlockDevice {
    override submit(req: BlockRequest): void {
      held.push(() => super.submit(req));
    }
  }
  const s = new NbdServer({ log: () => undefined });
  s.addExport('e', new Held({ size: MiB }));
  // A listener of our own: the NBD server has none, so close() has only its connections to wait for.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mut-nbd-srv2-'));
  const sockPath = path.join(dir, 's');
  let conn: { closed: Promise<void> } | undefined;
  const plain = net.createServer((x) => { conn = s.serveSocket(x); });
  await new Promise<void>((r) => plain.listen(sockPath, r));
  try {
    const c = await NbdTestClient.connect({ path: sockPath }, 'e');
    const read = c.request(Cmd.READ, 0, 4096);
    await until(() => held.length === 1, 'the read reached the device');
    const order: string[] = [];
    void conn?.closed.then(() => order.push('connection'));
    const closing = s.close().then(() => order.push('server'));
    held.shift()?.();
    assert.equal((await read).error, 0, 'the in-flight read finished');
    await closing;
    assert.deepEqual(order, ['connection', 'server']);
    c.destroy();
  } finally {
    plain.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
