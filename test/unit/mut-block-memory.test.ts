/**
 * src/block/memory-device.ts and src/block/types.ts (issue 15 item 2, block survivors):
 * MemoryBlockDevice bounds (first / last block, one past the end, negative offsets and lengths),
 * read-only on every write path, options one at a time, counters exact, chunk arithmetic across
 * several chunks; submitViaPromises maps each op to its method with every argument, asynchronously.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ErrorCode, NvmfNbdError } from '../../src/errors';
import { MemoryBlockDevice } from '../../src/block/memory-device';
import { BlockOpCode, SimpleBlockRequest, submitViaPromises, type BlockDevice, type BlockHandler, type BlockRequest } from '../../src/block/types';
import { NbdErrno } from '../../src/block/errno';
import { rejectsCode, throwsCode } from '../helpers/assert-code';

const KiB = 1024;
const Z = { mayDeallocate: false, fua: false, fastOnly: false };

test('memory device: the constructor refuses sizes that are not safe non-negative integers, and bad chunk sizes', () => {
  for (const size of [-1, 1.5, Number.NaN, Number.POSITIVE_INFINITY, 2 ** 53]) {
    const e = throwsCode(() => new MemoryBlockDevice({ size }), ErrorCode.INVALID_ARGUMENT, String(size));
    assert.equal(e.message, `bad device size ${size}`);
  }
  assert.equal(new MemoryBlockDevice({ size: 0 }).size, 0);
  const small = throwsCode(() => new MemoryBlockDevice({ size: 8192, blockSize: 4096, chunkSize: 2048 }), ErrorCode.INVALID_ARGUMENT);
  assert.equal(small.message, 'chunk size 2048 must be a power of two ≥ the block size');
  throwsCode(() => new MemoryBlockDevice({ size: 8192, chunkSize: 3 * 512 }), ErrorCode.INVALID_ARGUMENT, 'not a power of two');
  throwsCode(() => new MemoryBlockDevice({ size: 8192, chunkSize: 6 * KiB }), ErrorCode.INVALID_ARGUMENT, 'even, not a power of two');
  // Equal to the block size is allowed.
  const eq = new MemoryBlockDevice({ size: 8192, blockSize: 4096, chunkSize: 4096 });
  assert.equal(eq.blockSize, 4096);
});

test('memory device: defaults (512-byte blocks, 32 MiB requests, 64 KiB chunks, writable) and each option on its own', async () => {
  const d = new MemoryBlockDevice({ size: 1000 });
  assert.equal(d.blockSize, 512);
  assert.equal(d.size, 512, 'rounded down to the default block size');
  assert.equal(d.maxRequest, 32 * 1024 * 1024);
  assert.equal(d.readOnly, false);
  const big = new MemoryBlockDevice({ size: 1 << 20 });
  await big.write(0, Buffer.alloc(512, 1), false);
  assert.equal(big.allocatedBytes, 64 * KiB, 'one default chunk');
  await big.write(64 * KiB - 512, Buffer.alloc(1024, 1), false);
  assert.equal(big.allocatedBytes, 128 * KiB, 'the second chunk starts at 64 KiB');
  assert.equal(new MemoryBlockDevice({ size: 4096, maxRequest: 8192 }).maxRequest, 8192);
  assert.equal(new MemoryBlockDevice({ size: 4096, readOnly: true }).readOnly, true);
  const caps = ['canFlush', 'canFua', 'canTrim', 'canWriteZeroes', 'canFastZero'] as const;
  for (const off of caps) {
    const dev = new MemoryBlockDevice({ size: 4096, [off]: false });
    for (const c of caps) assert.equal(dev[c], c !== off, `${off}: false leaves ${c}`);
  }
});

test('memory device: the first and the last block are inside, one byte past the end is ENOSPC, on every op', async () => {
  const size = 16 * KiB;
  const d = new MemoryBlockDevice({ size, chunkSize: 4 * KiB });
  await d.write(0, Buffer.alloc(512, 1), false);
  await d.write(size - 512, Buffer.alloc(512, 2), false);
  assert.ok((await d.read(size - 512, 512)).equals(Buffer.alloc(512, 2)));
  assert.ok((await d.read(0, 512)).equals(Buffer.alloc(512, 1)));
  assert.equal((await d.read(0, size)).length, size, 'the whole device at once');
  assert.equal((await d.read(size, 0)).length, 0, 'an empty read at the end');
  await d.trim(size - 512, 512);
  await d.writeZeroes(size - 512, 512, Z);
  const past = async (p: Promise<unknown>, what: string, offset: number, length: number): Promise<void> => {
    const e = await rejectsCode(p, ErrorCode.INVALID_ARGUMENT, what);
    assert.equal(e.errno, NbdErrno.ENOSPC, what);
    assert.equal(e.message, `range ${offset}+${length} beyond ${size}`);
  };
  await past(d.read(size - 512, 513), 'read', size - 512, 513);
  await past(d.read(size, 1), 'read at the end', size, 1);
  await past(d.write(size - 511, Buffer.alloc(512), false), 'write', size - 511, 512);
  await past(d.trim(size - 512, 1024), 'trim', size - 512, 1024);
  await past(d.writeZeroes(size, 512, Z), 'zeroes', size, 512);
  await past(d.read(-1, 1), 'negative offset', -1, 1);
  await past(d.read(0, -1), 'negative length', 0, -1);
  await past(d.trim(-512, 512), 'negative trim', -512, 512);
  assert.deepEqual(d.counters, { reads: 4, writes: 2, flushes: 0, trims: 1, zeroes: 1, fuaWrites: 0 }, 'refused requests are not counted');
});

test('memory device: read-only refuses write, trim and zeroes with EPERM (before the range check), reads and flushes work', async () => {
  const d = new MemoryBlockDevice({ size: 8 * KiB, readOnly: true });
  for (const [what, p] of [
    ['write', () => d.write(0, Buffer.alloc(512), false)],
    ['write past the end', () => d.write(8 * KiB, Buffer.alloc(512), false)],
    ['trim', () => d.trim(0, 512)],
    ['zeroes', () => d.writeZeroes(0, 512, Z)],
  ] as const) {
    const e = await rejectsCode(p, ErrorCode.INVALID_ARGUMENT, what);
    assert.equal(e.errno, NbdErrno.EPERM, what);
    assert.equal(e.message, 'device is read-only');
  }
  assert.equal((await d.read(8 * KiB - 512, 512)).length, 512);
  await d.flush();
  assert.deepEqual(d.counters, { reads: 1, writes: 0, flushes: 1, trims: 0, zeroes: 0, fuaWrites: 0 });
});

test('memory device: counters count each op once, FUA writes also as fuaWrites', async () => {
  const d = new MemoryBlockDevice({ size: 64 * KiB });
  await d.write(0, Buffer.alloc(512), true);
  await d.write(512, Buffer.alloc(512), false);
  await d.write(1024, Buffer.alloc(512), true);
  await d.read(0, 512);
  await d.flush();
  await d.flush();
  await d.trim(0, 512);
  await d.writeZeroes(0, 512, { mayDeallocate: true, fua: true, fastOnly: true });
  assert.deepEqual(d.counters, { reads: 1, writes: 3, flushes: 2, trims: 1, zeroes: 1, fuaWrites: 2 });
});

test('memory device: data crossing three chunks at odd offsets reads back byte for byte', async () => {
  const d = new MemoryBlockDevice({ size: 64 * KiB, chunkSize: 4 * KiB });
  const data = Buffer.alloc(9 * KiB);
  for (let i = 0; i < data.length; i++) data[i] = (i * 7 + 3) & 0xff;
  await d.write(3 * KiB + 512, data, false); // chunks 0 (last 512 B), 1, 2, 3 (first 512 B)
  assert.equal(d.allocatedBytes, 16 * KiB);
  const r = await d.read(3 * KiB, 10 * KiB);
  assert.ok(r.subarray(0, 512).every((b) => b === 0));
  assert.ok(r.subarray(512, 512 + data.length).equals(data));
  assert.ok(r.subarray(512 + data.length).every((b) => b === 0));
  for (let off = 0; off < data.length; off += 1536) {
    assert.ok((await d.read(3 * KiB + 512 + off, 512)).equals(data.subarray(off, off + 512)), `at ${off}`);
  }
});

test('memory device: zeroing frees whole chunks, fills partial ones, and passes over holes', async () => {
  const d = new MemoryBlockDevice({ size: 64 * KiB, chunkSize: 4 * KiB });
  await d.writeZeroes(512, 1024, Z); // partial piece of a hole: nothing to do, nothing allocated
  await d.trim(4 * KiB, 8 * KiB); // whole holes
  assert.equal(d.allocatedBytes, 0);
  await d.write(0, Buffer.alloc(16 * KiB, 0xee), false);
  await d.writeZeroes(2 * KiB, 8 * KiB, Z); // half of chunk 0, all of chunk 1, half of chunk 2
  assert.equal(d.allocatedBytes, 12 * KiB, 'only chunk 1 freed');
  const r = await d.read(0, 16 * KiB);
  const want = Buffer.alloc(16 * KiB, 0xee);
  want.fill(0, 2 * KiB, 10 * KiB);
  assert.ok(r.equals(want));
  await d.trim(0, 16 * KiB);
  assert.equal(d.allocatedBytes, 0);
  assert.ok((await d.read(0, 16 * KiB)).every((b) => b === 0));
});

/** A device whose promise methods record their calls (and can fail, synchronously or not). */
class CallDevice implements BlockDevice {
  readonly size = 1 << 20;
  readonly blockSize = 512;
  readonly maxRequest = 1 << 20;
  readonly readOnly = false;
  readonly canFlush = true;
  readonly canFua = true;
  readonly canTrim = true;
  readonly canWriteZeroes = true;
  readonly canFastZero = true;
  calls: unknown[][] = [];
  fail: 'no' | 'reject' | 'throw' = 'no';
  readonly err = new NvmfNbdError(ErrorCode.NVME_STATUS, 'failed', { errno: NbdErrno.EIO });
  private done<T>(v: T): Promise<T> {
    if (this.fail === 'throw') throw this.err;
    return this.fail === 'reject' ? Promise.reject(this.err) : Promise.resolve(v);
  }
  read(offset: number, length: number): Promise<Buffer> { this.calls.push(['read', offset, length]); return this.done(Buffer.alloc(length, 0x5a)); }
  write(offset: number, data: Buffer, fua: boolean): Promise<void> { this.calls.push(['write', offset, data, fua]); return this.done(undefined); }
  flush(): Promise<void> { this.calls.push(['flush']); return this.done(undefined); }
  trim(offset: number, length: number): Promise<void> { this.calls.push(['trim', offset, length]); return this.done(undefined); }
  writeZeroes(offset: number, length: number, opts: { mayDeallocate: boolean; fua: boolean; fastOnly: boolean }): Promise<void> {
    this.calls.push(['zeroes', offset, length, { ...opts }]);
    return this.done(undefined);
  }
  createRequest(): BlockRequest { return new SimpleBlockRequest(); }
  submit(req: BlockRequest): void { submitViaPromises(this, req); }
}

class Handler implements BlockHandler {
  events: Array<['ok' | 'err', BlockRequest, unknown]> = [];
  onBlockComplete(req: BlockRequest): void { this.events.push(['ok', req, undefined]); }
  onBlockError(req: BlockRequest, err: NvmfNbdError): void { this.events.push(['err', req, err]); }
}

const settle = (): Promise<void> => new Promise((r) => setImmediate(r));

test('SimpleBlockRequest starts as an empty READ; BlockOpCode values are distinct and fixed', () => {
  const r = new SimpleBlockRequest();
  assert.deepEqual({ ...r }, {
    op: 0, offset: 0, length: 0, data: undefined, fua: false, mayDeallocate: false, fastOnly: false,
    handler: undefined, upstream: undefined, cookieHi: 0, cookieLo: 0, kind: 0,
  });
  assert.deepEqual(BlockOpCode, { READ: 0, WRITE: 1, FLUSH: 2, TRIM: 3, ZEROES: 4 });
});

test('submitViaPromises: each op calls its method with every field of the request, and completes later, never inside submit', async () => {
  const d = new CallDevice();
  const h = new Handler();
  const mk = (o: Partial<BlockRequest>): BlockRequest => Object.assign(d.createRequest(), { handler: h }, o);
  const data = Buffer.alloc(1024, 3);
  const reqs = [
    mk({ op: BlockOpCode.READ, offset: 1024, length: 2048 }),
    mk({ op: BlockOpCode.WRITE, offset: 4096, length: 1, data, fua: true }),
    mk({ op: BlockOpCode.WRITE, offset: 512, data, fua: false }),
    mk({ op: BlockOpCode.FLUSH }),
    mk({ op: BlockOpCode.TRIM, offset: 8192, length: 512 }),
    mk({ op: BlockOpCode.ZEROES, offset: 512, length: 1536, mayDeallocate: true, fua: false, fastOnly: false }),
    mk({ op: BlockOpCode.ZEROES, offset: 0, length: 512, mayDeallocate: false, fua: true, fastOnly: false }),
    mk({ op: BlockOpCode.ZEROES, offset: 0, length: 512, mayDeallocate: false, fua: false, fastOnly: true }),
  ];
  for (const r of reqs) d.submit(r);
  assert.equal(h.events.length, 0, 'nothing completes synchronously');
  assert.deepEqual(d.calls, [
    ['read', 1024, 2048],
    ['write', 4096, data, true],
    ['write', 512, data, false],
    ['flush'],
    ['trim', 8192, 512],
    ['zeroes', 512, 1536, { mayDeallocate: true, fua: false, fastOnly: false }],
    ['zeroes', 0, 512, { mayDeallocate: false, fua: true, fastOnly: false }],
    ['zeroes', 0, 512, { mayDeallocate: false, fua: false, fastOnly: true }],
  ]);
  await settle();
  // (READ completes one step later: its data is stored first.)
  assert.deepEqual(h.events.map(([k, r]) => [k, reqs.indexOf(r)]).sort((a, b) => (a[1] as number) - (b[1] as number)), reqs.map((_, i) => ['ok', i]));
  const read = reqs[0] as BlockRequest;
  assert.ok(read.data?.equals(Buffer.alloc(2048, 0x5a)), 'READ: the data read is in the record');
  assert.equal(reqs[3]?.data, undefined, 'FLUSH sets no data');
});

test('submitViaPromises: a rejected promise and a synchronous throw both reach onBlockError with the error, asynchronously', async () => {
  for (const fail of ['reject', 'throw'] as const) {
    const d = new CallDevice();
    d.fail = fail;
    const h = new Handler();
    for (const op of [BlockOpCode.READ, BlockOpCode.WRITE, BlockOpCode.FLUSH, BlockOpCode.TRIM, BlockOpCode.ZEROES]) {
      const r = Object.assign(d.createRequest(), { handler: h, op, length: 512, data: Buffer.alloc(512) });
      d.submit(r);
      assert.equal(h.events.length, 0, `${fail} op ${op}: not synchronous`);
      await settle();
      assert.equal(h.events.length, 1, `${fail} op ${op}`);
      const [kind, req, err] = h.events.pop() as [string, BlockRequest, unknown];
      assert.equal(kind, 'err');
      assert.equal(req, r);
      assert.equal(err, d.err);
      if (op === BlockOpCode.READ) assert.ok(r.data?.equals(Buffer.alloc(512)), 'a failed READ leaves data alone');
    }
  }
});
