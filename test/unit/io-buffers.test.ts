/**
 * I/O buffers (src/block/io-buffers.ts): large ones are reused once given back, only buffers the
 * pool made are taken back, a double release cannot hand one buffer to two I/Os, the idle bytes
 * stay bounded; the NBD server gives a READ's data back only after the socket has taken the reply
 * and a WRITE's payload once the device is done with it, so the next I/O of that size lands in
 * the same memory (issue 9: no fresh pages per 128 KiB / 1 MiB I/O); and a read waiting for a
 * queue slot holds no destination.
 *
 * The pool is module state shared by the whole file: each test drains what it released.
 */
import { mock, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { IO_POOL_IDLE_MS, IO_POOL_MAX_BYTES, SLAB_MAX, ioBuffer, ioPoolClear, ioPoolIdleBytes, releaseIoBuffer } from '../../src/block/io-buffers';
import { MemoryBlockDevice } from '../../src/block/memory-device';
import { NbdServer } from '../../src/nbd/server';
import { NbdTestClient } from '../helpers/nbd-test-client';
import { until } from '../helpers/clock';
import { NvmeTarget } from '../../src/embedded-target/target';
import { Controller } from '../../src/controller/controller';
import { Namespace } from '../../src/controller/namespace';
import { BlockOpCode, type BlockHandler, type BlockRequest } from '../../src/block/types';
import type { NvmfNbdError } from '../../src/errors';

const KiB = 1024;
const MiB = 1024 * KiB;

/** Take every idle buffer of `n` bytes out of the pool again (keeps the tests independent). */
function drain(n: number): void {
  while (ioPoolIdleBytes() > 0) {
    const before = ioPoolIdleBytes();
    ioBuffer(n);
    if (ioPoolIdleBytes() === before) break;
  }
}

test('a released large buffer is the next read of its size; other sizes do not take it', () => {
  const a = ioBuffer(64 * KiB);
  const b = ioBuffer(64 * KiB);
  assert.notEqual(a, b);
  assert.equal(a.length, 64 * KiB);
  assert.equal(ioPoolIdleBytes(), 0);
  assert.equal(releaseIoBuffer(a), true);
  assert.equal(ioPoolIdleBytes(), 64 * KiB);
  const other = ioBuffer(128 * KiB);
  assert.notEqual(other, a, 'a 128 KiB read does not get the 64 KiB buffer');
  assert.equal(ioPoolIdleBytes(), 64 * KiB);
  assert.equal(ioBuffer(64 * KiB), a, 'same length: the released buffer comes back');
  assert.equal(ioPoolIdleBytes(), 0);
  assert.notEqual(ioBuffer(64 * KiB), a, 'taken once only');
});

test('a double release is refused: one buffer is never handed to two reads', () => {
  const a = ioBuffer(32 * KiB);
  assert.equal(releaseIoBuffer(a), true);
  assert.equal(releaseIoBuffer(a), false);
  assert.equal(ioPoolIdleBytes(), 32 * KiB);
  const x = ioBuffer(32 * KiB);
  const y = ioBuffer(32 * KiB);
  assert.equal(x, a);
  assert.notEqual(y, a);
  assert.equal(ioPoolIdleBytes(), 0);
});

test('buffers the pool did not make are not taken: foreign, views, slab reads', () => {
  assert.equal(releaseIoBuffer(Buffer.allocUnsafe(64 * KiB)), false, 'a foreign buffer (could be a device\'s storage)');
  const mine = ioBuffer(64 * KiB);
  assert.equal(releaseIoBuffer(mine.subarray(0)), false, 'a view of a pool buffer is another object');
  const small = ioBuffer(SLAB_MAX);
  assert.equal(releaseIoBuffer(small), false, 'slab views are never recycled');
  assert.equal(ioPoolIdleBytes(), 0);
  const small2 = ioBuffer(4 * KiB);
  assert.equal(small2.buffer, small.buffer, 'small reads share the slab');
  assert.equal(small2.byteOffset, small.byteOffset + SLAB_MAX);
});

test('idle bytes stay at most IO_POOL_MAX_BYTES', () => {
  const n = 1 * MiB;
  const bufs = Array.from({ length: IO_POOL_MAX_BYTES / n + 2 }, () => ioBuffer(n));
  const taken = bufs.map((b) => releaseIoBuffer(b));
  assert.equal(taken.filter(Boolean).length, IO_POOL_MAX_BYTES / n);
  assert.deepEqual(taken.slice(-2), [false, false]);
  assert.equal(ioPoolIdleBytes(), IO_POOL_MAX_BYTES);
  drain(n);
  assert.equal(ioPoolIdleBytes(), 0);
});

test('a full pool makes room for the size in use by dropping idle buffers of other sizes', () => {
  ioPoolClear();
  const big = Array.from({ length: IO_POOL_MAX_BYTES / MiB }, () => ioBuffer(MiB));
  const extra = ioBuffer(MiB);
  for (const b of big) assert.equal(releaseIoBuffer(b), true);
  assert.equal(ioPoolIdleBytes(), IO_POOL_MAX_BYTES);
  assert.equal(releaseIoBuffer(extra), false, 'the same size at the cap: refused, nothing evicted');
  assert.equal(ioPoolIdleBytes(), IO_POOL_MAX_BYTES);
  const r = ioBuffer(128 * KiB);
  assert.equal(releaseIoBuffer(r), true, 'another size evicts what it needs');
  assert.equal(ioPoolIdleBytes(), IO_POOL_MAX_BYTES - MiB + 128 * KiB, 'exactly one 1 MiB buffer made room');
  assert.equal(ioBuffer(128 * KiB), r);
  const kept = Array.from({ length: IO_POOL_MAX_BYTES / MiB - 1 }, () => ioBuffer(MiB));
  assert.equal(new Set(kept).size, kept.length);
  for (const b of kept) assert.ok(big.includes(b), 'the other 1 MiB buffers were kept');
  assert.equal(ioPoolIdleBytes(), 0);
  const evicted = big.find((b) => !kept.includes(b)) as Buffer;
  assert.notEqual(ioBuffer(MiB), evicted, 'the evicted one is not handed out');
  ioPoolClear();
});

test('an unused pool drops its idle buffers after IO_POOL_IDLE_MS; a used one keeps them (mocked timers)', () => {
  ioPoolClear();
  mock.timers.enable({ apis: ['setTimeout'] });
  try {
    const a = ioBuffer(256 * KiB);
    const b = ioBuffer(256 * KiB);
    releaseIoBuffer(a);
    releaseIoBuffer(b);
    mock.timers.tick(IO_POOL_IDLE_MS - 1);
    assert.equal(ioBuffer(256 * KiB), b, 'used within the period');
    releaseIoBuffer(b);
    mock.timers.tick(1);
    assert.equal(ioPoolIdleBytes(), 512 * KiB, 'the pool was used: kept, looked at again later');
    mock.timers.tick(IO_POOL_IDLE_MS - 1);
    assert.equal(ioPoolIdleBytes(), 512 * KiB);
    mock.timers.tick(1);
    assert.equal(ioPoolIdleBytes(), 0, 'a whole period unused: dropped');
    const c = ioBuffer(256 * KiB);
    assert.ok(c !== a && c !== b, 'dropped buffers are not handed out again');
    assert.equal(releaseIoBuffer(c), true, 'the next release starts a new period');
    mock.timers.tick(IO_POOL_IDLE_MS);
    assert.equal(ioPoolIdleBytes(), 0);
  } finally {
    mock.timers.reset();
    ioPoolClear();
  }
});

/** A memory device whose reads land in pool buffers, as the namespace's do; records each buffer. */
class PooledReads extends MemoryBlockDevice {
  readonly given: Buffer[] = [];
  readonly written: Buffer[] = [];
  override async write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    this.written.push(data);
    return super.write(offset, data, fua);
  }
  override async read(offset: number, length: number): Promise<Buffer> {
    const d = await super.read(offset, length);
    const b = ioBuffer(length);
    d.copy(b);
    this.given.push(b);
    return b;
  }
}

/** An NBD server over a {@link PooledReads} device and a client connected to it. */
async function serve(): Promise<{ dev: PooledReads; srv: NbdServer; c: NbdTestClient }> {
  const dev = new PooledReads({ size: 4 * MiB });
  const srv = new NbdServer({ log: () => undefined });
  srv.addExport('e', dev);
  const ep = await srv.listen({ tcp: { host: '127.0.0.1', port: 0 } });
  const c = await NbdTestClient.connect({ port: (ep as { tcp: { port: number } }).tcp.port }, 'e');
  return { dev, srv, c };
}

test('the NBD server gives a READ\'s data back after the reply is written; the next read reuses it', { timeout: 20_000 }, async () => {
  const { dev, srv, c } = await serve();
  try {
    const p1 = randomBytes(128 * KiB);
    const p2 = randomBytes(128 * KiB);
    await c.write(0, p1);
    await c.write(128 * KiB, p2);
    assert.deepEqual(await c.read(0, 128 * KiB), p1);
    await until(() => ioPoolIdleBytes() === 128 * KiB, 'the first read\'s buffer went back to the pool');
    assert.deepEqual(await c.read(128 * KiB, 128 * KiB), p2, 'the reused buffer carries the second read\'s data');
    assert.equal(dev.given.length, 2);
    assert.equal(dev.given[1], dev.given[0], 'the second read landed in the first one\'s memory');
    // Small reads are slab views and are not queued for release.
    await c.read(0, 4 * KiB);
    await until(() => ioPoolIdleBytes() === 128 * KiB, 'the second read\'s buffer went back');
  } finally {
    await c.disconnect();
    await srv.close();
    drain(128 * KiB);
  }
});

/** Collects record completions (BlockHandler). */
class Collect implements BlockHandler {
  done = 0;
  errors: Error[] = [];
  onBlockComplete(): void { this.done++; }
  onBlockError(_r: BlockRequest, err: NvmfNbdError): void { this.errors.push(err); }
}

test('a read waiting for a queue slot holds no destination; split reads share one; all data arrives', { timeout: 30_000 }, async () => {
  const NQN = 'nqn.2026-12.io.nvmf-nbd:read-buffers';
  const target = new NvmeTarget({
    listen: { host: '127.0.0.1', port: 0 },
    subsystems: [{ nqn: NQN, namespaces: [{ nsid: 1, sizeBytes: 8 * MiB, backing: { memory: true } }] }],
    // 32 KiB per command: a 128 KiB read is split into 4 parts.
    mdtsPages: 8,
    log: () => undefined,
  });
  const { port } = await target.listen();
  // 1 I/O queue of 4 entries: 3 commands in flight, the rest wait in the queue pair.
  const ctrl = await Controller.connect({ traddr: '127.0.0.1', trsvcid: port, subnqn: NQN, hostnqn: 'nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-000000000001', hostid: Buffer.alloc(16, 1), nrIoQueues: 1, queueSize: 4, kato: 5000 });
  try {
    const info = ctrl.namespaces.get(1);
    assert.ok(info !== undefined);
    const ns = new Namespace(ctrl, info);
    const pattern = randomBytes(1 * MiB);
    await ns.write(0, pattern, false);
    const h = new Collect();
    const small = Array.from({ length: 12 }, (_, i) => {
      const r = ns.createRequest();
      r.op = BlockOpCode.READ;
      r.offset = i * 16 * KiB;
      r.length = 16 * KiB;
      r.handler = h;
      return r;
    });
    for (const r of small) ns.submit(r);
    const withData = small.filter((r) => r.data !== undefined).length;
    assert.equal(withData, 3, 'only the 3 issued reads have a destination; 9 wait without one');
    await until(() => h.done + h.errors.length === small.length, 'the small reads completed');
    assert.deepEqual(h.errors, []);
    for (const [i, r] of small.entries()) assert.deepEqual(r.data, pattern.subarray(i * 16 * KiB, (i + 1) * 16 * KiB), `read ${i}`);
    // A split read (128 KiB over 32 KiB MDTS): its parts land in views of one destination.
    const big = ns.createRequest();
    big.op = BlockOpCode.READ;
    big.offset = 256 * KiB;
    big.length = 128 * KiB;
    big.handler = h;
    ns.submit(big);
    await until(() => h.done + h.errors.length === small.length + 1, 'the split read completed');
    assert.deepEqual(h.errors, []);
    assert.equal(big.data?.length, 128 * KiB);
    assert.deepEqual(big.data, pattern.subarray(256 * KiB, 384 * KiB));
  } finally {
    await ctrl.close();
    await target.close();
  }
});

test('the NBD server gives a WRITE\'s payload back once the device is done; the next write reuses it', { timeout: 20_000 }, async () => {
  const { dev, srv, c } = await serve();
  try {
    const p1 = randomBytes(256 * KiB);
    const p2 = randomBytes(256 * KiB);
    await c.write(0, p1);
    await until(() => ioPoolIdleBytes() === 256 * KiB, 'the first payload went back to the pool');
    await c.write(256 * KiB, p2);
    assert.equal(dev.written.length, 2);
    // 256 KiB spans socket chunks (at most 64 KiB each): the parser assembled it in a pool buffer.
    assert.equal(dev.written[1], dev.written[0], 'the second payload was assembled in the first one\'s memory');
    assert.deepEqual(await c.read(0, 256 * KiB), p1, 'the device kept the first write (it copies)');
    assert.deepEqual(await c.read(256 * KiB, 256 * KiB), p2);
  } finally {
    await c.disconnect();
    await srv.close();
    drain(256 * KiB);
  }
});
