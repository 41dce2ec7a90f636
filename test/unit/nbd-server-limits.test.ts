/**
 * NBD server limits against clients that misbehave (src/nbd/connection.ts, src/nbd/server.ts):
 * a client that stops reading cannot hold close()/removeExport() forever; a client that floods
 * handshake options without reading cannot grow the server's unsent output without bound, nor
 * haggle forever; and a FUA TRIM is durable (flushed) before its reply.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as net from 'node:net';
import { MemoryBlockDevice } from '../../src/block/memory-device';
import { NbdServer, type NbdLogEntry } from '../../src/nbd/server';
import { ClientFlag, Cmd, CmdFlag, Opt, encodeOption, encodeRequest } from '../../src/wire/nbd';
import { track, turns, until } from '../helpers/clock';

const MiB = 1024 * 1024;

function clientFlags(): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(ClientFlag.FIXED_NEWSTYLE | ClientFlag.NO_ZEROES);
  return b;
}

/** Connect to the server's TCP endpoint; the socket starts paused (the client reads nothing). */
async function connectPaused(port: number): Promise<net.Socket> {
  const s = net.connect(port, '127.0.0.1');
  s.pause();
  s.on('error', () => undefined);
  await new Promise<void>((r) => s.once('connect', () => r()));
  return s;
}

/**
 * Bind export `name`, then queue large reads whose replies the client never takes; resolves once
 * a 32 MiB reply went to the socket (far beyond the kernel's buffers: it is stuck in the send queue).
 */
async function stuckClient(srv: NbdServer, port: number, name: string): Promise<net.Socket> {
  const s = await connectPaused(port);
  const reqs = Array.from({ length: 8 }, (_, i) => encodeRequest({ type: Cmd.READ, cookie: BigInt(i), offset: 0, length: 32 * MiB }));
  s.write(Buffer.concat([clientFlags(), encodeOption(Opt.EXPORT_NAME, Buffer.from(name)), ...reqs]));
  await until(() => (srv.stats().find((e) => e.name === name)?.bytesRead ?? 0) >= 32 * MiB, 'a read answered into the stuck socket');
  return s;
}

test('close() finishes when a client stopped reading its replies (destroyed after closeGraceMs, not before)', { timeout: 15_000 }, async (t) => {
  const logs: NbdLogEntry[] = [];
  const srv = new NbdServer({ log: (e) => logs.push(e), closeGraceMs: 300 });
  srv.addExport('e', new MemoryBlockDevice({ size: 64 * MiB }));
  const ep = await srv.listen({ tcp: { host: '127.0.0.1', port: 0 } });
  const s = await stuckClient(srv, (ep as { tcp: { port: number } }).tcp.port, 'e');
  t.mock.timers.enable({ apis: ['setTimeout'] });
  try {
    const closing = track(srv.close());
    t.mock.timers.tick(299);
    await turns(20);
    assert.equal(closing.done, false, 'the client gets its grace before the hard close');
    assert.equal(s.destroyed, false);
    t.mock.timers.tick(1);
    await until(() => closing.done, 'server.close() after the grace');
    await closing.promise;
    assert.ok(logs.some((e) => /did not take its last/.test(e.msg)), 'the hard close is logged');
  } finally {
    t.mock.timers.reset();
    s.destroy();
  }
});

test('removeExport() finishes when a client of the export stopped reading', { timeout: 15_000 }, async () => {
  const srv = new NbdServer({ log: () => undefined, closeGraceMs: 300 });
  srv.addExport('a', new MemoryBlockDevice({ size: 64 * MiB }));
  srv.addExport('b', new MemoryBlockDevice({ size: 1 * MiB }));
  const ep = await srv.listen({ tcp: { host: '127.0.0.1', port: 0 } });
  const s = await stuckClient(srv, (ep as { tcp: { port: number } }).tcp.port, 'a');
  await srv.removeExport('a'); // a hang here fails the test by its timeout

  assert.deepEqual(srv.exportNames(), ['b']);
  s.destroy();
  await srv.close();
});

/** Read option replies (magic u64, option u32, type u32, length u32, data) until `done` or close. */
function collectOptionReplies(s: net.Socket, done: (types: number[]) => boolean): Promise<{ types: number[]; closed: boolean }> {
  return new Promise((resolve) => {
    let buf: Buffer = Buffer.alloc(0);
    let greeted = false;
    const types: number[] = [];
    let finished = false;
    const finish = (closed: boolean): void => {
      if (finished) return;
      finished = true;
      s.off('data', onData);
      resolve({ types, closed });
    };
    const onData = (d: Buffer): void => {
      buf = buf.length === 0 ? d : Buffer.concat([buf, d]);
      if (!greeted) {
        if (buf.length < 18) return;
        buf = buf.subarray(18); // NBDMAGIC, IHAVEOPT, handshake flags
        greeted = true;
      }
      while (buf.length >= 20) {
        const len = buf.readUInt32BE(16);
        if (buf.length < 20 + len) break;
        types.push(buf.readUInt32BE(12));
        buf = buf.subarray(20 + len);
      }
      if (done(types)) finish(false);
    };
    s.on('data', onData);
    s.once('close', () => finish(true));
    s.resume();
  });
}

const REP_ACK = 1;
const REP_ERR_POLICY = 2 ** 31 + 2;

test('handshake: a client flooding LIST without reading cannot grow the unsent output past ~1 MiB; answers resume when it reads', { timeout: 20_000 }, async () => {
  const srv = new NbdServer({ log: () => undefined });
  // 32 exports with long descriptions: one LIST answer is ≈ 130 KiB.
  for (let i = 0; i < 32; i++) srv.addExport(`export-${i}`, new MemoryBlockDevice({ size: MiB }), { description: 'd'.repeat(4000) });
  let serverSide: net.Socket | undefined;
  const front = net.createServer((sock) => {
    serverSide = sock;
    srv.serveSocket(sock);
  });
  await new Promise<void>((r) => front.listen(0, '127.0.0.1', r));
  const s = await connectPaused((front.address() as net.AddressInfo).port);
  const N = 300; // ≈ 39 MB of answers: far beyond the kernel's socket buffers
  s.write(Buffer.concat([clientFlags(), ...Array.from({ length: N }, () => encodeOption(Opt.LIST))]));
  // The server stops reading options (pauses the socket) once its unsent output passes the
  // limit; with 39 MB of answers owed it must get there, and hold little when it does.
  await until(() => serverSide?.isPaused() === true, 'the server paused reading options');
  const unsent = serverSide?.writableLength ?? 0;
  assert.ok(unsent > 0, 'the server had output queued');
  assert.ok(unsent < 2 * MiB, `server held ${(unsent / MiB).toFixed(1)} MiB of unsent handshake replies`);
  // The client reads now: every LIST is answered (32 SERVER replies + ACK each).
  const r = await collectOptionReplies(s, (t) => t.filter((x) => x === REP_ACK).length >= N);
  assert.equal(r.closed, false);
  assert.equal(r.types.filter((x) => x === REP_ACK).length, N);
  assert.equal(r.types.length, N * 33);
  s.destroy();
  await srv.close();
  await new Promise<void>((res) => front.close(() => res()));
});

test('handshake: more than 1024 options → ERR_POLICY, closed, logged NBD_ERR_TOO_MANY_OPTIONS', { timeout: 15_000 }, async () => {
  const logs: NbdLogEntry[] = [];
  const srv = new NbdServer({ log: (e) => logs.push(e) });
  srv.addExport('e', new MemoryBlockDevice({ size: MiB }));
  const ep = await srv.listen({ tcp: { host: '127.0.0.1', port: 0 } });
  const s = await connectPaused((ep as { tcp: { port: number } }).tcp.port);
  s.write(Buffer.concat([clientFlags(), ...Array.from({ length: 1100 }, () => encodeOption(Opt.LIST))]));
  const r = await collectOptionReplies(s, () => false); // until the server closes
  assert.equal(r.closed, true);
  assert.equal(r.types.filter((x) => x === REP_ACK).length, 1024);
  assert.equal(r.types[r.types.length - 1], REP_ERR_POLICY);
  assert.ok(logs.some((e) => e.code === 'NBD_ERR_TOO_MANY_OPTIONS'));
  await srv.close();
});

test('TRIM with FUA is flushed before its reply (NBD: a FUA trim is persistent when answered)', { timeout: 10_000 }, async () => {
  const { NbdTestClient } = await import('../helpers/nbd-test-client');
  const mem = new MemoryBlockDevice({ size: MiB });
  const events: string[] = [];
  // A device whose flush finishes only a few event-loop turns later, so a reply sent before it finished would show.
  const dev = Object.assign(Object.create(mem) as MemoryBlockDevice, {
    trim: async (o: number, l: number): Promise<void> => { await mem.trim(o, l); events.push('trim'); },
    flush: async (): Promise<void> => { await turns(20); await mem.flush(); events.push('flush'); },
  });
  const srv = new NbdServer({ log: () => undefined });
  srv.addExport('e', dev);
  const ep = await srv.listen({ tcp: { host: '127.0.0.1', port: 0 } });
  const c = await NbdTestClient.connect({ port: (ep as { tcp: { port: number } }).tcp.port }, 'e');
  try {
    const plain = await c.request(Cmd.TRIM, 0, 4096);
    assert.equal(plain.error, 0);
    assert.deepEqual(events, ['trim'], 'a TRIM without FUA needs no flush');
    const fua = await c.request(Cmd.TRIM, 4096, 4096, { flags: CmdFlag.FUA });
    events.push('reply');
    assert.equal(fua.error, 0);
    assert.deepEqual(events, ['trim', 'trim', 'flush', 'reply']);
  } finally {
    c.destroy();
    await srv.close();
  }
});
