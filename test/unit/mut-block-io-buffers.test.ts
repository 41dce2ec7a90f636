/**
 * Mutation-driven pins for the I/O buffer slab and pool (src/block/io-buffers.ts, issue 15):
 * the SLAB_MAX boundary (16 KiB is a slab view, 16 KiB + 1 a buffer of its own), consecutive
 * views of one 256 KiB slab that fill it exactly and roll over to a new one when a view does not
 * fit, reuse by exact length only, every released buffer of a size coming back once (none lost,
 * none twice), the IO_POOL_MAX_BYTES cap (a release reaching the cap exactly is taken, one more of
 * that size is not), only the pool's own buffers taken back (views, foreign and slab-sized buffers are
 * ignored), no double release, and ioPoolIdleBytes accounting throughout.
 *
 * Module state (the slab, the pool) is shared by the whole file: each test starts from an empty
 * pool (checked) and drains what it released; slab tests first move to a fresh slab.
 */
import { afterEach, beforeEach, test } from 'node:test';
import assert from 'node:assert/strict';
import { IO_POOL_MAX_BYTES, SLAB_MAX, ioBuffer, ioPoolIdleBytes, releaseIoBuffer } from '../../src/block/io-buffers';

const KiB = 1024;
const MiB = 1024 * KiB;
const SLAB = 256 * KiB;
/** The smallest buffer that is pooled rather than carved from the slab. */
const LARGE = 16 * KiB + 1;

/** Sizes released in the current test, drained afterwards. */
const released = new Set<number>();

function release(b: Buffer): boolean {
  released.add(b.length);
  return releaseIoBuffer(b);
}

/** Take every idle buffer of the sizes this test released out of the pool again. */
function drain(): void {
  for (const n of released) {
    for (let i = 0; i < 1000 && ioPoolIdleBytes() > 0; i++) {
      const before = ioPoolIdleBytes();
      ioBuffer(n);
      if (ioPoolIdleBytes() === before) break;
    }
  }
  released.clear();
}

/** Allocate slab views until one starts a new slab (byteOffset 0); returns it. */
function freshSlab(): Buffer {
  for (let i = 0; i < 64; i++) {
    const b = ioBuffer(SLAB_MAX);
    if (b.byteOffset === 0) return b;
  }
  assert.fail('no new slab after 64 views of SLAB_MAX bytes');
}

beforeEach(() => {
  assert.equal(ioPoolIdleBytes(), 0, 'the pool is empty when a test starts');
});
afterEach(() => {
  drain();
  assert.equal(ioPoolIdleBytes(), 0, 'the test drained the pool');
});

test('the limits: SLAB_MAX 16 KiB, IO_POOL_MAX_BYTES 64 MiB', () => {
  assert.equal(SLAB_MAX, 16 * KiB);
  assert.equal(IO_POOL_MAX_BYTES, 64 * MiB);
});

test('SLAB_MAX bytes is a slab view; SLAB_MAX + 1 is a buffer of its own and does not use the slab', () => {
  const first = freshSlab();
  assert.equal(first.length, SLAB_MAX);
  assert.equal(first.buffer.byteLength, SLAB, 'a 256 KiB slab');
  const large = ioBuffer(LARGE);
  assert.equal(large.length, LARGE);
  assert.equal(large.byteOffset, 0);
  assert.equal(large.buffer.byteLength, LARGE, 'its own ArrayBuffer, exactly its size');
  assert.notEqual(large.buffer, first.buffer);
  const next = ioBuffer(100);
  assert.equal(next.buffer, first.buffer, 'the large buffer took nothing from the slab');
  assert.equal(next.byteOffset, SLAB_MAX);
  assert.equal(next.length, 100);
  assert.equal(release(first), false, 'a SLAB_MAX view is never pooled');
  assert.equal(release(next), false, 'a small view is never pooled');
  assert.equal(ioPoolIdleBytes(), 0);
  assert.equal(release(large), true, 'SLAB_MAX + 1 is pooled');
  assert.equal(ioPoolIdleBytes(), LARGE);
});

test('small buffers are consecutive views that fill the 256 KiB slab exactly, then a new slab starts', () => {
  const first = freshSlab();
  const views = [first];
  for (let i = 1; i < SLAB / SLAB_MAX; i++) views.push(ioBuffer(SLAB_MAX));
  for (const [i, v] of views.entries()) {
    assert.equal(v.buffer, first.buffer, `view ${i} is in the first slab`);
    assert.equal(v.byteOffset, i * SLAB_MAX, `view ${i} follows the one before`);
    assert.equal(v.length, SLAB_MAX);
  }
  assert.equal(views.at(-1)!.byteOffset + SLAB_MAX, SLAB, 'the last view ends at the end of the slab');
  // The slab is full: one byte more starts a new one.
  const one = ioBuffer(1);
  assert.notEqual(one.buffer, first.buffer);
  assert.equal(one.byteOffset, 0);
  assert.equal(one.length, 1);
  assert.equal(one.buffer.byteLength, SLAB);
  const two = ioBuffer(7);
  assert.equal(two.buffer, one.buffer);
  assert.equal(two.byteOffset, 1);
  assert.equal(two.length, 7);
  // Views do not overlap: writing one leaves its neighbour alone.
  one.fill(0xaa);
  two.fill(0x55);
  assert.deepEqual([...one], [0xaa]);
  assert.deepEqual([...two], Array(7).fill(0x55));
});

test('a view that does not fit in what is left of the slab starts a new slab', () => {
  const first = freshSlab();
  for (let i = 1; i < SLAB / SLAB_MAX - 1; i++) ioBuffer(SLAB_MAX);
  const tail = ioBuffer(SLAB_MAX - 100);
  assert.equal(tail.buffer, first.buffer);
  assert.equal(tail.byteOffset, SLAB - SLAB_MAX);
  // 100 bytes are left: 101 do not fit.
  const over = ioBuffer(101);
  assert.notEqual(over.buffer, first.buffer, '101 bytes with 100 left: a new slab');
  assert.equal(over.byteOffset, 0);
  assert.equal(over.length, 101);
  // The new slab is the current one: the rest of the old one is not used again.
  const after = ioBuffer(100);
  assert.equal(after.buffer, over.buffer);
  assert.equal(after.byteOffset, 101);
});

test('exact-length reuse: only a read of the same length gets a released buffer, and once', () => {
  const a = ioBuffer(LARGE + 1);
  const b = ioBuffer(LARGE + 1);
  assert.notEqual(a, b);
  assert.equal(ioPoolIdleBytes(), 0, 'allocating adds nothing to the pool');
  assert.equal(release(a), true);
  assert.equal(ioPoolIdleBytes(), LARGE + 1);
  const longer = ioBuffer(LARGE + 2);
  assert.notEqual(longer, a);
  assert.equal(longer.length, LARGE + 2);
  const shorter = ioBuffer(LARGE);
  assert.notEqual(shorter, a);
  assert.equal(shorter.length, LARGE);
  assert.equal(ioPoolIdleBytes(), LARGE + 1, 'other lengths left the idle buffer alone');
  assert.equal(ioBuffer(LARGE + 1), a, 'the same length takes it');
  assert.equal(ioPoolIdleBytes(), 0);
  const fresh = ioBuffer(LARGE + 1);
  assert.ok(Buffer.isBuffer(fresh));
  assert.equal(fresh.length, LARGE + 1);
  assert.notEqual(fresh, a, 'taken once only');
  assert.notEqual(fresh, b);
  assert.equal(ioPoolIdleBytes(), 0);
});

test('a buffer taken from the pool can be released again after its I/O', () => {
  const a = ioBuffer(64 * KiB);
  assert.equal(release(a), true);
  assert.equal(ioBuffer(64 * KiB), a);
  assert.equal(release(a), true, 'back in use, so a release takes it again');
  assert.equal(ioPoolIdleBytes(), 64 * KiB);
  assert.equal(release(a), false, 'but not twice');
  assert.equal(ioBuffer(64 * KiB), a);
  assert.equal(ioPoolIdleBytes(), 0);
});

test('every released buffer of a length comes back exactly once; then fresh ones', () => {
  const n = 32 * KiB;
  const bufs = [ioBuffer(n), ioBuffer(n), ioBuffer(n)];
  for (const [i, b] of bufs.entries()) {
    assert.equal(release(b), true);
    assert.equal(ioPoolIdleBytes(), (i + 1) * n);
  }
  const got = [ioBuffer(n), ioBuffer(n), ioBuffer(n)];
  assert.equal(ioPoolIdleBytes(), 0);
  assert.equal(new Set(got).size, 3, 'three different buffers');
  for (const b of bufs) assert.ok(got.includes(b), 'each released buffer came back');
  const fresh = ioBuffer(n);
  assert.ok(Buffer.isBuffer(fresh), 'an empty pool allocates a buffer');
  assert.equal(fresh.length, n);
  assert.ok(!bufs.includes(fresh));
  assert.equal(ioPoolIdleBytes(), 0);
});

test('ioPoolIdleBytes counts every length: mixed releases and takes', () => {
  const a = ioBuffer(20 * KiB);
  const b = ioBuffer(48 * KiB);
  const c = ioBuffer(20 * KiB);
  assert.equal(release(a), true);
  assert.equal(release(b), true);
  assert.equal(ioPoolIdleBytes(), 68 * KiB);
  assert.equal(release(c), true);
  assert.equal(ioPoolIdleBytes(), 88 * KiB);
  assert.equal(ioBuffer(48 * KiB), b);
  assert.equal(ioPoolIdleBytes(), 40 * KiB);
  const x = ioBuffer(20 * KiB);
  assert.ok(x === a || x === c);
  assert.equal(ioPoolIdleBytes(), 20 * KiB);
  const y = ioBuffer(20 * KiB);
  assert.ok((y === a || y === c) && y !== x);
  assert.equal(ioPoolIdleBytes(), 0);
});

test('IO_POOL_MAX_BYTES: a release reaching the cap exactly is taken, one more of that size is not', () => {
  const cap = IO_POOL_MAX_BYTES;
  const n = cap / MiB;
  const bufs = Array.from({ length: n + 1 }, () => ioBuffer(MiB));
  const extra = bufs.pop() as Buffer;
  for (const b of bufs) assert.equal(release(b), true);
  assert.equal(ioPoolIdleBytes(), cap, 'exactly at the cap');
  assert.equal(release(extra), false, 'the pool is full of this size: refused, nothing evicted');
  assert.equal(ioPoolIdleBytes(), cap);
  assert.equal(ioBuffer(MiB + 1) === extra, false, 'the refused buffer is not in the pool');
  const taken = ioBuffer(MiB);
  assert.ok(bufs.includes(taken));
  assert.equal(ioPoolIdleBytes(), cap - MiB);
  assert.equal(release(extra), true, 'once there is room a refused buffer is taken (it was not marked idle)');
  assert.equal(ioPoolIdleBytes(), cap, 'back to the cap exactly');
  drain();
  assert.equal(ioPoolIdleBytes(), 0);
});

test('only the pool\'s own buffers are taken back: foreign buffers and views are ignored', () => {
  const mine = ioBuffer(64 * KiB);
  assert.equal(release(Buffer.allocUnsafe(64 * KiB)), false, 'a foreign buffer (a device\'s storage)');
  assert.equal(release(Buffer.allocUnsafeSlow(LARGE)), false, 'a foreign buffer of a pooled size');
  assert.equal(release(mine.subarray(0)), false, 'a whole view of a pool buffer');
  assert.equal(release(mine.subarray(1)), false, 'a partial view');
  assert.equal(release(Buffer.from(mine.buffer, mine.byteOffset, mine.length)), false, 'another Buffer over its memory');
  assert.equal(ioPoolIdleBytes(), 0);
  assert.notEqual(ioBuffer(64 * KiB), mine, 'nothing foreign was handed out');
  assert.equal(release(mine), true, 'the buffer itself is taken');
  assert.equal(ioPoolIdleBytes(), 64 * KiB);
});

test('a double release is refused and counted once: one buffer never goes to two I/Os', () => {
  const a = ioBuffer(40 * KiB);
  assert.equal(release(a), true);
  assert.equal(release(a), false);
  assert.equal(ioPoolIdleBytes(), 40 * KiB);
  assert.equal(ioBuffer(40 * KiB), a);
  const y = ioBuffer(40 * KiB);
  assert.notEqual(y, a);
  assert.equal(ioPoolIdleBytes(), 0);
});
