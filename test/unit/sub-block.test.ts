/**
 * The sub-block path (src/block/sub-block.ts, src/block/range-lock.ts) on a MemoryBlockDevice
 * with 4096-byte blocks: RMW merges, FUA reaches the merged write, unaligned TRIM covers only
 * whole blocks, unaligned WRITE_ZEROES zeroes the partial blocks, FAST_ZERO on a partial block is
 * ENOTSUP, the lock serializes an RMW against overlapping requests and nothing else.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MemoryBlockDevice } from '../../src/block/memory-device';
import { SubBlockDevice } from '../../src/block/sub-block';
import { RangeLock } from '../../src/block/range-lock';
import { NbdErrno } from '../../src/block/errno';
import type { NvmfNbdError } from '../../src/errors';

const BS = 4096;
const dev = (): MemoryBlockDevice => new MemoryBlockDevice({ size: 64 * BS, blockSize: BS });

test('sub-block writes merge into their blocks; FUA reaches the rewrite; counted', async () => {
  const m = dev();
  const s = new SubBlockDevice(m);
  await m.write(0, Buffer.alloc(4 * BS, 0xaa), false);
  await s.write(BS - 512, Buffer.alloc(1024, 0x11), true); // straddles blocks 0 and 1
  await s.write(3 * BS + 1024, Buffer.alloc(1024, 0x22), false); // inside block 3
  const all = await m.read(0, 4 * BS);
  const want = Buffer.alloc(4 * BS, 0xaa);
  want.fill(0x11, BS - 512, BS + 512);
  want.fill(0x22, 3 * BS + 1024, 3 * BS + 2048);
  assert.ok(all.equals(want));
  assert.ok(m.counters.fuaWrites >= 2, 'both merged blocks written with FUA');
  assert.deepEqual(s.counters, { rmw: 2, rmwBlocksRead: 3, unaligned: 2 });
  // A sub-block read needs no RMW.
  assert.ok((await s.read(BS - 512, 1024)).equals(Buffer.alloc(1024, 0x11)));
  assert.equal(s.counters.rmw, 2);
});

test('unaligned TRIM deallocates only whole blocks; unaligned WRITE_ZEROES zeroes partial ones; FAST_ZERO partial → ENOTSUP', async () => {
  const m = dev();
  const s = new SubBlockDevice(m);
  await m.write(0, Buffer.alloc(8 * BS, 0xcc), false);
  await s.trim(512, BS); // no whole block inside
  assert.equal(m.counters.trims, 0);
  await s.trim(512, 3 * BS); // block 1 and 2 whole
  assert.equal(m.counters.trims, 1);
  assert.ok((await m.read(0, 512)).equals(Buffer.alloc(512, 0xcc)), 'partial head untouched');
  assert.ok((await m.read(3 * BS, 512)).equals(Buffer.alloc(512, 0xcc)), 'partial tail untouched');
  await s.writeZeroes(4 * BS + 512, 2 * BS, { mayDeallocate: false, fua: false, fastOnly: false });
  const z = await m.read(4 * BS, 3 * BS);
  const want = Buffer.alloc(3 * BS, 0xcc);
  want.fill(0, 512, 512 + 2 * BS);
  assert.ok(z.equals(want));
  await assert.rejects(s.writeZeroes(512, 512, { mayDeallocate: true, fua: false, fastOnly: true }), (e: NvmfNbdError) => e.errno === NbdErrno.ENOTSUP);
});

test('range lock: shared holders overlap freely; an exclusive one waits for overlapping holders and blocks later overlapping requests, FIFO', async () => {
  const l = new RangeLock();
  const r1 = l.acquire(0, 100, false);
  const r2 = l.acquire(50, 150, false);
  assert.equal(typeof r1, 'function');
  assert.equal(typeof r2, 'function');
  const x = l.acquire(90, 200, true);
  assert.ok(x instanceof Promise);
  const elsewhere = l.acquire(500, 600, false);
  assert.equal(typeof elsewhere, 'function', 'no overlap: granted at once');
  const later = l.acquire(180, 190, false);
  assert.ok(later instanceof Promise, 'overlaps a waiting exclusive: waits behind it');
  const order: string[] = [];
  void x.then(() => order.push('x'));
  void (later as Promise<unknown>).then(() => order.push('later'));
  (r1 as () => void)();
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(order, [], 'still one overlapping holder');
  (r2 as () => void)();
  const rx = await x;
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(order, ['x']);
  rx();
  (await later)();
  (elsewhere as () => void)();
  assert.equal(l.size, 0);
});
