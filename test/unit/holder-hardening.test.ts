/**
 * Security findings against the sticky-endpoint holder (issue 14): a request pipelined right
 * after NBD_OPT_GO (9), typed errors only from its stream parsers under seeded mutation (16), and
 * its bounds (2): backpressure through the relay, READ lengths counted as held bytes, a cap on
 * connections.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { NbdClientStream, NbdServerStream } from '../../src/wire/nbd-relay';
import { NbdHolder } from '../../src/engine/holder';
import { NbdServer } from '../../src/nbd/server';
import { MemoryBlockDevice } from '../../src/block/memory-device';
import {
  Cmd, InfoType, Opt, Rep, encodeGreeting, encodeInfoBlockSize, encodeInfoExport, encodeInfoRequest, encodeOption, encodeRepAck,
  encodeRepError, encodeRepServer, encodeRequest, encodeSimpleReply,
} from '../../src/wire/nbd';
import { NvmfNbdError } from '../../src/errors';
import { until } from '../helpers/clock';

const SIZE = 64 * 1024 * 1024;

function u32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v >>> 0, 0);
  return b;
}

const go = (name: string): Buffer => encodeOption(Opt.GO, encodeInfoRequest(name, [InfoType.BLOCK_SIZE]));
const goAck = Buffer.concat([encodeInfoExport(Opt.GO, SIZE, 1), encodeInfoBlockSize(Opt.GO, 512, 4096, 32 << 20), encodeRepAck(Opt.GO)]);
const read = (cookie: bigint, length: number): Buffer => encodeRequest({ type: Cmd.READ, cookie, offset: 0, length });

test('finding 9: a request pipelined right after GO waits for the answer, then is a request', () => {
  const hs = Buffer.concat([u32(3), go('nvme0n1')]);
  for (let cut = 0; cut <= hs.length + 28; cut++) {
    const all = Buffer.concat([hs, read(7n, 4096)]);
    const c = new NbdClientStream();
    const s = new NbdServerStream(c, () => ({ type: Cmd.READ, length: 4096 }));
    assert.deepEqual([...c.push(all.subarray(0, cut)), ...c.push(all.subarray(cut))], [], 'no request before the answer');
    assert.deepEqual(Buffer.concat(c.handshake), hs, 'the request is not part of the recorded handshake');
    assert.equal(c.awaitingAnswer, true);
    assert.equal(s.push(Buffer.concat([encodeGreeting(), goAck])).done, true);
    const rs = c.push(Buffer.alloc(0));
    assert.deepEqual(rs.map((r) => [r.cookie, r.type, r.length, r.cost]), [[7n, Cmd.READ, 4096, 28 + 4096]], `cut ${cut}`);
  }
  // A refused GO: what was pipelined after it is options again.
  const c = new NbdClientStream();
  const s = new NbdServerStream(c, () => undefined);
  c.push(Buffer.concat([u32(3), go('nope'), go('nvme0n1')]));
  assert.equal(c.options.length, 1);
  assert.equal(s.push(Buffer.concat([encodeGreeting(), encodeRepError(Opt.GO, Rep.ERR_UNKNOWN, 'no such export')])).done, false);
  c.push(Buffer.alloc(0));
  assert.deepEqual(c.options, [Opt.GO, Opt.GO]);
  assert.equal(s.push(goAck).done, true);
});

/** mulberry32: a small seeded PRNG (no dependencies). */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Mutate `b`: byte flips, interesting u32s, dictionary tokens inserted, cuts, duplicated spans. */
function mutate(b: Buffer, rnd: () => number, dict: readonly Buffer[]): Buffer {
  let out = Buffer.from(b);
  const n = 1 + Math.floor(rnd() * 4);
  for (let i = 0; i < n; i++) {
    const at = Math.floor(rnd() * (out.length + 1));
    switch (Math.floor(rnd() * 5)) {
      case 0:
        if (out.length > 0) { const k = Math.min(at, out.length - 1); out[k] = (out[k] as number) ^ (1 << Math.floor(rnd() * 8)); }
        break;
      case 1: {
        const v = [0, 1, 0x7fffffff, 0x80000000, 0xffffffff, 0x10000, 0x2000000][Math.floor(rnd() * 7)] as number;
        if (at + 4 <= out.length) out.writeUInt32BE(v, at);
        break;
      }
      case 2: {
        const tok = dict[Math.floor(rnd() * dict.length)] as Buffer;
        const part = tok.subarray(0, Math.floor(rnd() * (tok.length + 1)));
        out = Buffer.concat([out.subarray(0, at), part, out.subarray(at)]);
        break;
      }
      case 3:
        out = out.subarray(0, at);
        break;
      default: {
        const len = Math.floor(rnd() * 40);
        out = Buffer.concat([out.subarray(0, at), out.subarray(at, at + len), out.subarray(at)]);
      }
    }
  }
  return out;
}

test('finding 16: the holder stream parsers fail only with typed errors (seeded mutation, both directions)', () => {
  const clientSeed = Buffer.concat([
    u32(3), encodeOption(Opt.LIST), go('nvme0n1'),
    encodeRequest({ type: Cmd.WRITE, cookie: 1n, offset: 0, length: 512, data: Buffer.alloc(512, 1) }), read(2n, 4096),
    encodeRequest({ type: Cmd.FLUSH, cookie: 3n, offset: 0, length: 0 }),
  ]);
  const serverSeed = Buffer.concat([
    encodeGreeting(), encodeRepServer(Opt.LIST, 'nvme0n1'), encodeRepAck(Opt.LIST), goAck,
    encodeSimpleReply(0, 0, 2), Buffer.alloc(4096, 2), encodeSimpleReply(0, 0, 1), encodeSimpleReply(5, 0, 3),
  ]);
  const dict = [
    encodeOption(Opt.GO, Buffer.alloc(8)), encodeOption(Opt.EXPORT_NAME, Buffer.from('x')), encodeOption(Opt.STRUCTURED_REPLY),
    encodeRepAck(Opt.GO), encodeRepAck(Opt.STRUCTURED_REPLY), encodeRepError(Opt.GO, Rep.ERR_UNKNOWN, 'x'), read(9n, 512),
    encodeSimpleReply(0, 0, 9), u32(0x49484156), Buffer.alloc(124),
  ];
  const rnd = prng(0x14a);
  const untyped: string[] = [];
  let typed = 0;
  const ITER = 6000;
  for (let i = 0; i < ITER; i++) {
    const cb = mutate(clientSeed, rnd, dict);
    const sb = mutate(serverSeed, rnd, dict);
    const inflight = new Map<bigint, { type: number; length: number }>();
    const c = new NbdClientStream(1 << 20);
    const s = new NbdServerStream(c, (k) => inflight.get(k), rnd() < 0.2);
    let ci = 0;
    let si = 0;
    try {
      // Interleave the two directions in random chunks, as a relay sees them.
      while (ci < cb.length || si < sb.length) {
        if (ci < cb.length && (rnd() < 0.5 || si >= sb.length)) {
          const n = 1 + Math.floor(rnd() * 64);
          for (const r of c.push(cb.subarray(ci, ci + n))) inflight.set(r.cookie, r);
          ci += n;
        } else {
          const n = 1 + Math.floor(rnd() * 64);
          const r = s.push(sb.subarray(si, si + n));
          si += n;
          if (r.done) for (const q of c.push(Buffer.alloc(0))) inflight.set(q.cookie, q);
          for (const rep of [...r.replies, ...(r.done ? s.push(Buffer.alloc(0)).replies : [])]) inflight.delete(rep.cookie);
        }
      }
    } catch (err) {
      if (err instanceof NvmfNbdError) typed++;
      else if (untyped.length < 5) untyped.push(`input ${i}: ${String(err)}`);
      else untyped.push('');
    }
  }
  assert.deepEqual(untyped.filter((x) => x !== '').slice(0, 5), [], `${untyped.length} untyped errors in ${ITER} inputs`);
  assert.ok(typed > ITER / 10, `mutations reach the error paths (${typed} typed errors)`);
});

interface Rig { dir: string; server: NbdServer; holder: NbdHolder; close(): Promise<void> }

async function rig(o: { maxHeldBytes?: number; maxClientBacklog?: number; maxConnections?: number } = {}): Promise<Rig> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'holder-hard-'));
  const server = new NbdServer({ log: () => undefined });
  server.addExport('nvme0n1', new MemoryBlockDevice({ size: SIZE }));
  const backend = path.join(dir, 'b', 'nvme0n1.sock');
  await server.listen({ unix: backend });
  const holder = await NbdHolder.start({ listen: { host: '127.0.0.1', port: 0 }, backend, holdMs: 60_000, ...o });
  return {
    dir, server, holder,
    async close() {
      await holder.close();
      await server.close();
      await fsp.rm(dir, { recursive: true, force: true });
    },
  };
}

/** Connect through the holder and finish the GO handshake (reading the server's answer). */
async function handshake(port: number): Promise<net.Socket> {
  const sock = net.connect({ host: '127.0.0.1', port });
  const c = new NbdClientStream();
  const s = new NbdServerStream(c, () => undefined);
  const hs = Buffer.concat([u32(3), go('nvme0n1')]);
  c.push(hs);
  sock.write(hs);
  await new Promise<void>((resolve, reject) => {
    const on = (d: Buffer): void => {
      if (s.push(d).done) {
        sock.off('data', on);
        sock.pause();
        resolve();
      }
    };
    sock.on('data', on);
    sock.once('error', reject);
  });
  return sock;
}

test('finding 9 (relay): a READ pipelined in the same write as the GO is answered through the holder', { timeout: 20_000 }, async () => {
  const r = await rig();
  const sock = net.connect({ host: '127.0.0.1', port: r.holder.port });
  try {
    const c = new NbdClientStream();
    const inflight = new Map<bigint, { type: number; length: number }>([[5n, { type: Cmd.READ, length: 4096 }]]);
    const s = new NbdServerStream(c, (k) => inflight.get(k));
    const all = Buffer.concat([u32(3), go('nvme0n1'), read(5n, 4096)]);
    c.push(all);
    sock.write(all);
    const reply = await new Promise<bigint>((resolve, reject) => {
      sock.on('data', (d: Buffer) => {
        let x = s.push(d);
        if (x.done) x = { done: true, replies: [...x.replies, ...s.push(Buffer.alloc(0)).replies] };
        const first = x.replies[0];
        if (first !== undefined) resolve(first.cookie);
      });
      sock.once('close', () => reject(new Error('the holder closed the connection')));
    });
    assert.equal(reply, 5n);
  } finally {
    sock.destroy();
    await r.close();
  }
});

test('finding 2: a client that sends READs and never reads is not buffered without bound', { timeout: 60_000 }, async () => {
  const MiB = 1024 * 1024;
  const r = await rig({ maxHeldBytes: 8 * MiB, maxClientBacklog: 2 * MiB });
  const sock = await handshake(r.holder.port);
  try {
    const N = 128;
    const reqs: Buffer[] = [];
    for (let i = 0; i < N; i++) reqs.push(read(BigInt(i + 1), MiB));
    sock.write(Buffer.concat(reqs));
    // Wait until the holder reads neither side: the client (requests wait for held bytes) and
    // the daemon (the client's backlog of replies is over its limit); only the client reading
    // can change that.
    const reads = (): number => r.server.stats()[0]?.reads ?? 0;
    type Held = { waiting: unknown[]; backend?: net.Socket };
    const conn = (): Held | undefined => [...(r.holder as unknown as { conns: Set<Held> }).conns][0];
    await until(() => { const h = conn(); return h !== undefined && h.waiting.length > 0 && h.backend?.isPaused() === true; }, 'the holder stopped reading both sides');
    // Bounded by the held-bytes limit (8 × 1 MiB READs) plus the daemon's own window; without
    // READ lengths counted and backpressure through the relay, all 128 MiB were read.
    assert.ok(reads() <= 16, `the server served ${reads()} of ${N} 1 MiB READs for a client that reads nothing`);
    // Reading again lets everything through: every READ is answered whole.
    const c = new NbdClientStream();
    c.push(Buffer.concat([u32(3), go('nvme0n1')]));
    c.startTransmission();
    const inflight = new Map(c.push(Buffer.concat(reqs)).map((q) => [q.cookie, q] as const));
    const s = new NbdServerStream(c, (k) => inflight.get(k));
    s.push(Buffer.concat([encodeGreeting(), goAck]));
    let got = 0;
    await new Promise<void>((resolve) => {
      sock.on('data', (d: Buffer) => {
        got += s.push(d).replies.length;
        if (got === N) resolve();
      });
      sock.resume();
    });
  } finally {
    sock.destroy();
    await r.close();
  }
});

test('finding 2: connections per holder are capped', { timeout: 20_000 }, async () => {
  const r = await rig({ maxConnections: 2 });
  const a = await handshake(r.holder.port);
  const b = await handshake(r.holder.port);
  const c = net.connect({ host: '127.0.0.1', port: r.holder.port });
  try {
    await new Promise<void>((resolve) => c.once('close', () => resolve()));
    assert.equal(r.holder.connections, 2);
  } finally {
    for (const s of [a, b, c]) s.destroy();
    await r.close();
  }
});
