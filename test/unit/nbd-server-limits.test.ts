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

const MiB = 1024 * 1024;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

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

/** Bind export `name`, then queue large reads whose replies the client never takes. */
async function stuckClient(port: number, name: string): Promise<net.Socket> {
  const s = await connectPaused(port);
  const reqs = Array.from({ length: 8 }, (_, i) => encodeRequest({ type: Cmd.READ, cookie: BigInt(i), offset: 0, length: 32 * MiB }));
  s.write(Buffer.concat([clientFlags(), encodeOption(Opt.EXPORT_NAME, Buffer.from(name)), ...reqs]));
  await sleep(500); // the server has answered what it could: replies are stuck in its send queue
  return s;
}

async function settlesWithin<T>(p: Promise<T>, ms: number): Promise<'settled' | 'pending'> {
  let timer: NodeJS.Timeout | undefined;
  const r = await Promise.race([p.then(() => 'settled' as const), new Promise<'pending'>((res) => { timer = setTimeout(() => res('pending'), ms); })]);
  clearTimeout(timer);
  return r;
}

test('close() finishes when a client stopped reading its replies (destroyed after closeGraceMs)', { timeout: 15_000 }, async () => {
  const logs: NbdLogEntry[] = [];
  const srv = new NbdServer({ log: (e) => logs.push(e), closeGraceMs: 300 });
  srv.addExport('e', new MemoryBlockDevice({ size: 64 * MiB }));
  const ep = await srv.listen({ tcp: { host: '127.0.0.1', port: 0 } });
  const s = await stuckClient((ep as { tcp: { port: number } }).tcp.port, 'e');
  const t0 = Date.now();
  const closing = srv.close();
  assert.equal(await settlesWithin(closing, 4000), 'settled', 'server.close() still pending after 4 s');
  assert.ok(Date.now() - t0 >= 250, 'the client got its grace before the hard close');
  s.destroy();
});

test('removeExport() finishes when a client of the export stopped reading', { timeout: 15_000 }, async () => {
  const srv = new NbdServer({ log: () => undefined, closeGraceMs: 300 });
  srv.addExport('a', new MemoryBlockDevice({ size: 64 * MiB }));
  srv.addExport('b', new MemoryBlockDevice({ size: 1 * MiB }));
  const ep = await srv.listen({ tcp: { host: '127.0.0.1', port: 0 } });
  const s = await stuckClient((ep as { tcp: { port: number } }).tcp.port, 'a');
  assert.equal(await settlesWithin(srv.removeExport('a'), 4000), 'settled', 'removeExport() still pending after 4 s');
  assert.deepEqual(srv.exportNames(), ['b']);
  s.destroy();
  await srv.close();
});
