/**
 * MemoryBlockDevice: sparse allocation, holes read as zeroes, trim/zero free whole chunks,
 * range and read-only errors carry the NBD errno.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { NvmfNbdError } from '../../src/errors';
import { MemoryBlockDevice } from '../../src/block/memory-device';

const KiB = 1024;

test('chunks are allocated on first write; holes read as zeroes', async () => {
  const d = new MemoryBlockDevice({ size: 1 << 30, chunkSize: 64 * KiB });
  assert.equal(d.allocatedBytes, 0);
  const data = Buffer.alloc(8 * KiB, 0xa5);
  await d.write(60 * KiB, data, false); // spans chunks 0 and 1
  assert.equal(d.allocatedBytes, 128 * KiB);
  const r = await d.read(56 * KiB, 16 * KiB);
  assert.ok(r.subarray(0, 4 * KiB).every((b) => b === 0));
  assert.ok(r.subarray(4 * KiB, 12 * KiB).equals(data));
  assert.ok(r.subarray(12 * KiB).every((b) => b === 0));
  const far = await d.read((1 << 30) - 4 * KiB, 4 * KiB);
  assert.ok(far.every((b) => b === 0));
  assert.equal(d.allocatedBytes, 128 * KiB, 'reads allocate nothing');
});

test('read returns a buffer the caller owns', async () => {
  const d = new MemoryBlockDevice({ size: 64 * KiB });
  await d.write(0, Buffer.alloc(512, 1), false);
  const r = await d.read(0, 512);
  r.fill(9);
  assert.ok((await d.read(0, 512)).every((b) => b === 1));
});

test('trim and writeZeroes free fully covered chunks and zero partial ones', async () => {
  const d = new MemoryBlockDevice({ size: 1 << 20, chunkSize: 4 * KiB });
  await d.write(0, Buffer.alloc(16 * KiB, 0xff), false);
  assert.equal(d.allocatedBytes, 16 * KiB);
  await d.trim(4 * KiB, 4 * KiB);
  assert.equal(d.allocatedBytes, 12 * KiB);
  await d.writeZeroes(512, 1024, { mayDeallocate: true, fua: false, fastOnly: true });
  assert.equal(d.allocatedBytes, 12 * KiB, 'partial chunk kept');
  const r = await d.read(0, 16 * KiB);
  assert.ok(r.subarray(0, 512).every((b) => b === 0xff));
  assert.ok(r.subarray(512, 1536).every((b) => b === 0));
  assert.ok(r.subarray(1536, 4 * KiB).every((b) => b === 0xff));
  assert.ok(r.subarray(4 * KiB, 8 * KiB).every((b) => b === 0));
  assert.ok(r.subarray(8 * KiB).every((b) => b === 0xff));
});

test('out-of-range and read-only writes reject with ENOSPC / EPERM errno', async () => {
  const d = new MemoryBlockDevice({ size: 8 * KiB });
  await assert.rejects(d.write(8 * KiB, Buffer.alloc(512), false), (e: NvmfNbdError) => e.errno === 28);
  const ro = new MemoryBlockDevice({ size: 8 * KiB, readOnly: true });
  await assert.rejects(ro.write(0, Buffer.alloc(512), false), (e: NvmfNbdError) => e.errno === 1);
  assert.equal((await ro.read(0, 512)).length, 512);
});

test('size is rounded down to the block size; capabilities default on and can be turned off', () => {
  const d = new MemoryBlockDevice({ size: 10_000, blockSize: 4096 });
  assert.equal(d.size, 8192);
  assert.equal(d.maxRequest, 32 * 1024 * 1024);
  assert.deepEqual([d.canFlush, d.canFua, d.canTrim, d.canWriteZeroes, d.canFastZero], [true, true, true, true, true]);
  const e = new MemoryBlockDevice({ size: 4096, canTrim: false, canFua: false });
  assert.deepEqual([e.canTrim, e.canFua], [false, false]);
});
