/**
 * src/block/sub-block.ts and src/block/range-lock.ts (issue 15 item 2, block survivors), on a
 * recording device: which device calls each request becomes (offsets, lengths, FUA, zero
 * options), the record path's fast lane and its boundaries (maxRequest exactly, one block more,
 * a WRITE's length from its data), splits with a short last part, RMW of head only / tail only /
 * both / inside one block, trims with no / one whole block, the lock released on every outcome;
 * RangeLock adjacency, counted holders, FIFO and double release.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MemoryBlockDevice } from '../../src/block/memory-device';
import { SubBlockDevice, SUB_BLOCK_MAX_REQUEST } from '../../src/block/sub-block';
import { RangeLock, type Release } from '../../src/block/range-lock';
import { NbdErrno } from '../../src/block/errno';
import { BlockOpCode, type BlockHandler, type BlockRequest } from '../../src/block/types';
import { ErrorCode, NvmfNbdError } from '../../src/errors';
import { rejectsCode } from '../helpers/assert-code';
import { turns } from '../helpers/clock';

const BS = 512;
type ZeroOpts = { mayDeallocate: boolean; fua: boolean; fastOnly: boolean };

/** A MemoryBlockDevice that records every call and can hold them at a gate or fail them. */
class RecDevice extends MemoryBlockDevice {
  calls: unknown[][] = [];
  gate: Promise<void> | undefined;
  failNext: 'reject' | 'throw' | undefined;
  readonly err = new NvmfNbdError(ErrorCode.NVME_STATUS, 'media', { errno: NbdErrno.EIO });
  constructor(maxRequest = 1 << 20, size = 1 << 20) {
    super({ size, blockSize: BS, maxRequest, chunkSize: 4096 });
  }
  private failure(): Promise<never> | undefined {
    const f = this.failNext;
    this.failNext = undefined;
    if (f === 'throw') throw this.err;
    return f === 'reject' ? Promise.reject(this.err) : undefined;
  }
  override read(offset: number, length: number): Promise<Buffer> {
    this.calls.push(['read', offset, length]);
    return this.failure() ?? this.after(() => super.read(offset, length));
  }
  override write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    this.calls.push(['write', offset, data.length, fua]);
    return this.failure() ?? this.after(() => super.write(offset, data, fua));
  }
  override trim(offset: number, length: number): Promise<void> {
    this.calls.push(['trim', offset, length]);
    return this.failure() ?? this.after(() => super.trim(offset, length));
  }
  override writeZeroes(offset: number, length: number, opts: ZeroOpts): Promise<void> {
    this.calls.push(['zeroes', offset, length, { ...opts }]);
    return this.failure() ?? this.after(() => super.writeZeroes(offset, length, opts));
  }
  override flush(): Promise<void> {
    this.calls.push(['flush']);
    return this.failure() ?? this.after(() => super.flush());
  }
  override submit(req: BlockRequest): void {
    this.calls.push(['submit', req.op, req.offset, req.handler, req.upstream]);
    super.submit(req);
  }
  private async after<T>(f: () => Promise<T>): Promise<T> {
    if (this.gate !== undefined) await this.gate;
    return f();
  }
  /** Calls without the data-carrying 'submit' entries' handler fields. */
  ops(): unknown[][] {
    return this.calls.map((c) => (c[0] === 'submit' ? c.slice(0, 3) : c));
  }
}

class Handler implements BlockHandler {
  events: Array<['ok' | 'err', BlockRequest, unknown]> = [];
  onBlockComplete(req: BlockRequest): void { this.events.push(['ok', req, undefined]); }
  onBlockError(req: BlockRequest, err: NvmfNbdError): void { this.events.push(['err', req, err]); }
}

function pattern(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed) & 0xff;
  return b;
}

function gated(d: RecDevice): () => void {
  let open!: () => void;
  d.gate = new Promise<void>((r) => { open = r; });
  return () => { d.gate = undefined; open(); };
}

async function waitFor(cond: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 1000 && !cond(); i++) await turns(1);
  assert.ok(cond(), what);
}

function req(s: SubBlockDevice, h: BlockHandler, o: Partial<BlockRequest>): BlockRequest {
  return Object.assign(s.createRequest(), { handler: h }, o);
}

test('sub-block: SUB_BLOCK_MAX_REQUEST is 64 MiB; createRequest is the device\'s record', () => {
  assert.equal(SUB_BLOCK_MAX_REQUEST, 64 * 1024 * 1024);
  const d = new RecDevice();
  const s = new SubBlockDevice(d);
  assert.equal(s.device, d);
  const r = s.createRequest();
  assert.equal(r.op, BlockOpCode.READ);
  assert.equal(r.handler, undefined);
});

test('sub-block submit: FLUSH goes to the device as it is, with no lock', async () => {
  const d = new RecDevice();
  const s = new SubBlockDevice(d);
  const h = new Handler();
  const release = gated(d);
  const r = req(s, h, { op: BlockOpCode.FLUSH });
  s.submit(r);
  assert.deepEqual(d.calls[0], ['submit', BlockOpCode.FLUSH, 0, h, undefined], 'the caller stays the handler');
  assert.equal(s.pending, 0, 'no range held');
  release();
  await waitFor(() => h.events.length === 1, 'flush done');
  assert.deepEqual(h.events, [['ok', r, undefined]]);
  assert.equal(d.counters.flushes, 1);
});

test('sub-block submit: an aligned READ / WRITE within maxRequest is the fast lane — the device\'s submit, the lock counted, the caller\'s handler restored', async () => {
  const d = new RecDevice(4096);
  const s = new SubBlockDevice(d);
  const h = new Handler();
  const data = pattern(4096, 1);
  await d.write(8192, data, false);
  d.calls = [];
  const release = gated(d);
  const r = req(s, h, { op: BlockOpCode.READ, offset: 8192, length: 4096 }); // exactly maxRequest
  s.submit(r);
  assert.deepEqual(d.calls[0], ['submit', BlockOpCode.READ, 8192, s, h], 'sub-block is the handler, the caller upstream');
  assert.equal(s.pending, 1, 'counted');
  assert.equal(h.events.length, 0);
  release();
  await waitFor(() => h.events.length === 1, 'read done');
  assert.deepEqual(h.events, [['ok', r, undefined]]);
  assert.equal(r.handler, h);
  assert.equal(r.upstream, undefined);
  assert.equal(s.pending, 0);
  assert.ok(r.data?.equals(data));
  // A WRITE's length is its data's, whatever req.length says.
  const w = req(s, h, { op: BlockOpCode.WRITE, offset: 0, length: 100, data: pattern(1024, 2), fua: true });
  s.submit(w);
  assert.deepEqual(d.calls.slice(-2).map((c) => c.slice(0, 3)), [['submit', BlockOpCode.WRITE, 0], ['write', 0, 1024]]);
  await waitFor(() => h.events.length === 2, 'write done');
  assert.deepEqual(d.calls.at(-1), ['write', 0, 1024, true], 'FUA kept');
  assert.deepEqual(s.counters, { rmw: 0, rmwBlocksRead: 0, unaligned: 0 });
});

test('sub-block submit: a fast-lane failure reaches the caller\'s onBlockError and releases the lock', async () => {
  const d = new RecDevice();
  const s = new SubBlockDevice(d);
  const h = new Handler();
  d.failNext = 'reject';
  const r = req(s, h, { op: BlockOpCode.WRITE, offset: 512, data: Buffer.alloc(512) });
  s.submit(r);
  assert.equal(s.pending, 1);
  await waitFor(() => h.events.length === 1, 'failed');
  assert.deepEqual(h.events, [['err', r, d.err]]);
  assert.equal(r.handler, h);
  assert.equal(r.upstream, undefined);
  assert.equal(s.pending, 0);
  // The lock is really free: an RMW after it is granted.
  await s.write(1, Buffer.alloc(1), false);
});

test('sub-block submit: not the fast lane — one block over maxRequest, an unaligned offset or length, TRIM, ZEROES', async () => {
  const d = new RecDevice(2048);
  const s = new SubBlockDevice(d);
  const h = new Handler();
  const big = pattern(2048 + BS, 3);
  await d.write(0, big.subarray(0, 2048), false);
  await d.write(2048, big.subarray(2048), false);
  d.calls = [];
  const rBig = req(s, h, { op: BlockOpCode.READ, offset: 0, length: 2048 + BS });
  s.submit(rBig);
  await waitFor(() => h.events.length === 1, 'big read');
  assert.deepEqual(d.ops(), [['read', 0, 2048], ['read', 2048, BS]], 'split, no device submit');
  assert.ok(rBig.data?.equals(big));
  d.calls = [];
  const rOff = req(s, h, { op: BlockOpCode.READ, offset: 100, length: 512 });
  s.submit(rOff);
  await waitFor(() => h.events.length === 2, 'unaligned offset');
  assert.deepEqual(d.ops(), [['read', 0, 1024]]);
  assert.ok(rOff.data?.equals(big.subarray(100, 612)));
  d.calls = [];
  const rLen = req(s, h, { op: BlockOpCode.READ, offset: 512, length: 100 });
  s.submit(rLen);
  await waitFor(() => h.events.length === 3, 'unaligned length');
  assert.deepEqual(d.ops(), [['read', 512, 512]]);
  assert.ok(rLen.data?.equals(big.subarray(512, 612)));
  d.calls = [];
  const wLen = req(s, h, { op: BlockOpCode.WRITE, offset: 1024, length: 512, data: Buffer.alloc(100, 0xab), fua: false });
  s.submit(wLen);
  await waitFor(() => h.events.length === 4, 'unaligned write');
  assert.deepEqual(d.ops(), [['read', 1024, 512], ['write', 1024, 512, false]], 'RMW by the data length');
  d.calls = [];
  s.submit(req(s, h, { op: BlockOpCode.TRIM, offset: 1024, length: 1024 }));
  s.submit(req(s, h, { op: BlockOpCode.ZEROES, offset: 2048, length: 512, mayDeallocate: true, fua: true, fastOnly: false }));
  await waitFor(() => h.events.length === 6, 'trim and zeroes');
  assert.deepEqual(d.ops(), [['trim', 1024, 1024], ['zeroes', 2048, 512, { mayDeallocate: true, fua: true, fastOnly: false }]]);
  assert.ok(h.events.every(([k]) => k === 'ok'));
  assert.deepEqual(s.counters, { rmw: 1, rmwBlocksRead: 1, unaligned: 3 });
  assert.equal(s.pending, 0);
});

test('sub-block submit: the slow paths report failures through onBlockError, for every op', async () => {
  const d = new RecDevice();
  const s = new SubBlockDevice(d);
  const h = new Handler();
  const cases: Array<Partial<BlockRequest>> = [
    { op: BlockOpCode.READ, offset: 1, length: 10 },
    { op: BlockOpCode.WRITE, offset: 0, data: Buffer.alloc(512) },
    { op: BlockOpCode.TRIM, offset: 0, length: 512 },
    { op: BlockOpCode.ZEROES, offset: 0, length: 512 },
  ];
  // Hold the fast lane closed for the aligned WRITE: an RMW waiting on the gate holds its range.
  for (const c of cases) {
    const r = req(s, h, c);
    if (c.op === BlockOpCode.WRITE) {
      const release = gated(d);
      const rmw = s.write(4096 + 1, Buffer.alloc(1), false);
      await waitFor(() => d.calls.length > 0 && d.calls.at(-1)?.[0] === 'read', 'rmw started');
      d.failNext = 'reject';
      s.submit(r);
      assert.ok(d.calls.at(-1)?.[0] !== 'submit', 'not the fast lane while an RMW holds');
      release();
      await rmw;
    } else {
      d.failNext = 'reject';
      s.submit(r);
    }
    await waitFor(() => h.events.length > 0, `op ${c.op}`);
    assert.deepEqual(h.events.pop(), ['err', r, d.err], `op ${c.op}`);
    assert.equal(s.pending, 0);
  }
});

test('sub-block submit: while an RMW holds a range, an aligned READ over it waits for the merged block (not the fast lane)', async () => {
  const d = new RecDevice();
  const s = new SubBlockDevice(d);
  const h = new Handler();
  await d.write(0, Buffer.alloc(1024, 0x11), false);
  d.calls = [];
  const release = gated(d);
  const rmw = s.write(100, Buffer.alloc(10, 0x22), false);
  await turns(3);
  const r = req(s, h, { op: BlockOpCode.READ, offset: 0, length: 1024 });
  s.submit(r);
  assert.equal(s.pending, 2, 'the RMW and the waiting read');
  release();
  await rmw;
  await waitFor(() => h.events.length === 1, 'read done');
  const want = Buffer.alloc(1024, 0x11);
  want.fill(0x22, 100, 110);
  assert.ok(r.data?.equals(want), 'the read saw the merged block');
  assert.ok(!d.calls.some((c) => c[0] === 'submit'));
  assert.equal(s.pending, 0);
});

test('sub-block: requests other than an RMW share their ranges — none waits for a read in flight over the same blocks', async () => {
  const d = new RecDevice();
  const s = new SubBlockDevice(d);
  const release = gated(d);
  const inFlight = s.read(0, 4 * BS);
  const others = [
    s.read(100, 200),
    s.write(0, Buffer.alloc(2 * BS, 1), true),
    s.trim(BS, BS),
    s.writeZeroes(2 * BS, BS, { mayDeallocate: false, fua: false, fastOnly: false }),
  ];
  assert.deepEqual(d.calls, [
    ['read', 0, 4 * BS], ['read', 0, BS], ['write', 0, 2 * BS, true], ['trim', BS, BS],
    ['zeroes', 2 * BS, BS, { mayDeallocate: false, fua: false, fastOnly: false }],
  ], 'every one reached the device before the first completed');
  assert.equal(s.pending, 5);
  release();
  await Promise.all([inFlight, ...others]);
  assert.equal(s.pending, 0);
});

test('sub-block: an RMW write and an RMW zeroes hold their whole block-rounded range exclusively until their writes completed', async () => {
  for (const kind of ['write', 'zeroes'] as const) {
    const d = new RecDevice();
    const s = new SubBlockDevice(d);
    const h = new Handler();
    await d.write(0, Buffer.alloc(4 * BS, 0x11), false);
    d.calls = [];
    const release = gated(d);
    // [BS + 100, BS + 1100): blocks 1 to 3, longer than its offset.
    const op = kind === 'write'
      ? s.write(BS + 100, Buffer.alloc(1000, 0x22), false)
      : s.writeZeroes(BS + 100, 1000, { mayDeallocate: false, fua: false, fastOnly: false });
    await turns(2);
    const before = d.calls.length;
    const r = req(s, h, { op: BlockOpCode.READ, offset: 3 * BS, length: BS }); // the tail block only
    s.submit(r);
    const r0 = req(s, h, { op: BlockOpCode.READ, offset: 0, length: BS }); // outside: goes at once
    s.submit(r0);
    assert.deepEqual(d.calls.slice(before), [['read', 0, BS]], `${kind}: the read of block 3 waits, block 0 does not`);
    release();
    await op;
    await waitFor(() => h.events.length === 2, `${kind}: reads done`);
    const want = Buffer.alloc(BS, 0x11);
    want.fill(kind === 'write' ? 0x22 : 0, 0, BS + 1100 - 3 * BS);
    assert.ok(r.data?.equals(want), `${kind}: the read saw the merged tail block`);
    assert.equal(s.pending, 0);
  }
});

test('sub-block read/write: splits at maxRequest with a short last part, FUA on every part, bytes in place', async () => {
  const d = new RecDevice(1024);
  const s = new SubBlockDevice(d);
  const data = pattern(3 * 1024 + BS, 5);
  await s.write(2048, data, true);
  assert.deepEqual(d.calls, [['write', 2048, 1024, true], ['write', 3072, 1024, true], ['write', 4096, 1024, true], ['write', 5120, 512, true]]);
  d.calls = [];
  await s.write(0, Buffer.alloc(2048, 9), false); // an exact multiple
  assert.deepEqual(d.calls, [['write', 0, 1024, false], ['write', 1024, 1024, false]]);
  d.calls = [];
  const back = await s.read(2048, data.length);
  assert.deepEqual(d.calls, [['read', 2048, 1024], ['read', 3072, 1024], ['read', 4096, 1024], ['read', 5120, 512]]);
  assert.ok(back.equals(data));
  d.calls = [];
  const inner = await s.read(2048 + 1000, 1500); // unaligned, rounded to [2560, 4608): split too
  assert.deepEqual(d.calls, [['read', 2560, 1024], ['read', 3584, 1024]]);
  assert.ok(inner.equals(data.subarray(1000, 2500)));
  assert.equal(s.counters.unaligned, 1);
  assert.equal(s.counters.rmw, 0, 'reads need no RMW');
  d.calls = [];
  const tailAligned = await s.read(2048 + 100, 412); // unaligned start, aligned end: counted too
  assert.deepEqual(d.calls, [['read', 2048, 512]]);
  assert.ok(tailAligned.equals(data.subarray(100, 512)));
  assert.equal(s.counters.unaligned, 2);
  d.calls = [];
  const exact = await s.read(0, 1024);
  assert.deepEqual(d.calls, [['read', 0, 1024]]);
  assert.ok(exact.equals(Buffer.alloc(1024, 9)));
  assert.equal(s.counters.unaligned, 2, 'aligned read not counted');
});

test('sub-block write: RMW of the head only, the tail only, both, and inside one block — blocks read, merged, written with FUA', async () => {
  const base = pattern(8 * BS, 7);
  const check = async (offset: number, len: number, fua: boolean, calls: unknown[][], rmwBlocksRead: number): Promise<void> => {
    const d = new RecDevice();
    const s = new SubBlockDevice(d);
    await d.write(0, base, false);
    d.calls = [];
    const data = pattern(len, 99);
    await s.write(offset, data, fua);
    const sorted = (c: unknown[][]): unknown[][] => [...c].sort((a, b) => JSON.stringify(a).localeCompare(JSON.stringify(b)));
    assert.deepEqual(sorted(d.calls), sorted(calls), `${offset}+${len}`);
    const want = Buffer.from(base);
    data.copy(want, offset);
    assert.ok((await d.read(0, 8 * BS)).equals(want), `${offset}+${len} bytes`);
    assert.deepEqual(s.counters, { rmw: 1, rmwBlocksRead, unaligned: 1 }, `${offset}+${len} counters`);
    assert.equal(s.pending, 0);
  };
  // Inside one block.
  await check(BS + 100, 200, true, [['read', BS, BS], ['write', BS, BS, true]], 1);
  // Inside one block, ending on its last-but-one byte (end + 1 is still inside it).
  await check(BS + 1, BS - 2, false, [['read', BS, BS], ['write', BS, BS, false]], 1);
  // Starts aligned, ends on the last-but-one byte of its block.
  await check(BS, BS - 1, true, [['read', BS, BS], ['write', BS, BS, true]], 1);
  // Starts aligned, ends inside the same block (the head is partial at its end).
  await check(BS, 100, false, [['read', BS, BS], ['write', BS, BS, false]], 1);
  // Head partial, aligned end: the rest written straight from the data.
  await check(BS + 100, 3 * BS - 100, true, [['read', BS, BS], ['write', BS, BS, true], ['write', 2 * BS, 2 * BS, true]], 1);
  // Aligned start, tail partial.
  await check(BS, 2 * BS + 10, false, [['write', BS, 2 * BS, false], ['read', 3 * BS, BS], ['write', 3 * BS, BS, false]], 1);
  // Both partial, whole blocks between.
  await check(BS + 1, 3 * BS, true, [['read', BS, BS], ['write', BS, BS, true], ['write', 2 * BS, 2 * BS, true], ['read', 4 * BS, BS], ['write', 4 * BS, BS, true]], 2);
  // Both partial, adjacent blocks, nothing between.
  await check(BS + 500, 24, false, [['read', BS, BS], ['write', BS, BS, false], ['read', 2 * BS, BS], ['write', 2 * BS, BS, false]], 2);
});

test('sub-block trim: only whole blocks inside; none, one at either edge, aligned', async () => {
  const d = new RecDevice();
  const s = new SubBlockDevice(d);
  await s.trim(BS + 1, BS - 1); // up to the end of block 1: no whole block
  await s.trim(BS + 1, BS - 2); // inside block 1
  await s.trim(BS, BS - 1); // block 1 but its last byte
  assert.deepEqual(d.calls, [], 'nothing whole');
  assert.equal(s.counters.unaligned, 3);
  await s.trim(BS - 1, BS + 1); // ends at 2·BS: block 1 whole
  await s.trim(3 * BS, BS + 1); // starts aligned: block 3
  await s.trim(5 * BS, 2 * BS); // aligned: not counted
  assert.deepEqual(d.calls, [['trim', BS, BS], ['trim', 3 * BS, BS], ['trim', 5 * BS, 2 * BS]]);
  assert.deepEqual(s.counters, { rmw: 0, rmwBlocksRead: 0, unaligned: 5 });
  assert.equal(s.pending, 0);
});

test('sub-block zeroes: aligned passes every option through; partial blocks by RMW with FUA, the whole middle by the device', async () => {
  const base = Buffer.alloc(8 * BS, 0xcc);
  const run = async (offset: number, len: number, opts: ZeroOpts): Promise<{ d: { calls: unknown[][] }; s: SubBlockDevice }> => {
    const d = new RecDevice();
    const s = new SubBlockDevice(d);
    await d.write(0, base, false);
    d.calls = [];
    await s.writeZeroes(offset, len, opts);
    const calls = d.calls.slice();
    const want = Buffer.from(base);
    want.fill(0, offset, offset + len);
    assert.ok((await d.read(0, 8 * BS)).equals(want), `${offset}+${len}`);
    assert.equal(s.pending, 0);
    return { d: { calls }, s };
  };
  const a = await run(BS, 2 * BS, { mayDeallocate: true, fua: false, fastOnly: true });
  assert.deepEqual(a.d.calls, [['zeroes', BS, 2 * BS, { mayDeallocate: true, fua: false, fastOnly: true }]]);
  assert.deepEqual(a.s.counters, { rmw: 0, rmwBlocksRead: 0, unaligned: 0 });
  const sortCalls = (c: unknown[][]): string[] => c.map((x) => JSON.stringify(x)).sort();
  const b = await run(BS + 10, 3 * BS, { mayDeallocate: false, fua: true, fastOnly: false });
  assert.deepEqual(sortCalls(b.d.calls), sortCalls([
    ['zeroes', 2 * BS, 2 * BS, { mayDeallocate: false, fua: true, fastOnly: false }],
    ['read', BS, BS], ['write', BS, BS, true], ['read', 4 * BS, BS], ['write', 4 * BS, BS, true],
  ]));
  assert.deepEqual(b.s.counters, { rmw: 1, rmwBlocksRead: 2, unaligned: 1 });
  const c = await run(BS + 10, 100, { mayDeallocate: true, fua: false, fastOnly: false });
  assert.deepEqual(c.d.calls, [['read', BS, BS], ['write', BS, BS, false]], 'inside one block: no device zeroing');
  const e = await run(BS + 10, 2 * BS - 10, { mayDeallocate: true, fua: false, fastOnly: false }); // head partial, aligned end
  assert.deepEqual(sortCalls(e.d.calls), sortCalls([['read', BS, BS], ['write', BS, BS, false], ['zeroes', 2 * BS, BS, { mayDeallocate: true, fua: false, fastOnly: false }]]));
  const g = await run(BS + 10, BS - 10, { mayDeallocate: true, fua: true, fastOnly: false }); // to the end of one block
  assert.deepEqual(g.d.calls, [['read', BS, BS], ['write', BS, BS, true]], 'no whole block: no device zeroing');
  const f = await run(BS, BS + 10, { mayDeallocate: false, fua: false, fastOnly: false }); // aligned start, tail partial
  assert.deepEqual(sortCalls(f.d.calls), sortCalls([['zeroes', BS, BS, { mayDeallocate: false, fua: false, fastOnly: false }], ['read', 2 * BS, BS], ['write', 2 * BS, BS, false]]));
  assert.deepEqual(f.s.counters, { rmw: 1, rmwBlocksRead: 1, unaligned: 1 });
});

test('sub-block zeroes: FAST_ZERO of a partial block is ENOTSUP at once, touching nothing, counted as unaligned', async () => {
  const d = new RecDevice();
  const s = new SubBlockDevice(d);
  for (const [o, l] of [[10, 100], [BS, BS + 1], [BS - 1, 2 * BS + 1]] as const) {
    const e = await rejectsCode(s.writeZeroes(o, l, { mayDeallocate: true, fua: false, fastOnly: true }), ErrorCode.UNSUPPORTED);
    assert.equal(e.errno, NbdErrno.ENOTSUP);
    assert.equal(e.message, `fast zero of a partial block (${o}+${l}, block size ${BS})`);
  }
  assert.deepEqual(d.calls, []);
  assert.deepEqual(s.counters, { rmw: 0, rmwBlocksRead: 0, unaligned: 3 });
  assert.equal(s.pending, 0);
});

test('sub-block: the lock is released when the device fails or throws synchronously, on every path', async () => {
  const d = new RecDevice();
  const s = new SubBlockDevice(d);
  const attempts: Array<[string, () => Promise<unknown>]> = [
    ['aligned read', () => s.read(0, BS)],
    ['unaligned read', () => s.read(1, 1)],
    ['aligned write', () => s.write(0, Buffer.alloc(BS), false)],
    ['rmw read', () => s.write(1, Buffer.alloc(1), false)],
    ['trim', () => s.trim(0, BS)],
    ['aligned zeroes', () => s.writeZeroes(0, BS, { mayDeallocate: false, fua: false, fastOnly: false })],
  ];
  d.failNext = 'reject';
  await assert.rejects(s.flush(), (e) => e === d.err, 'flush');
  for (const mode of ['reject', 'throw'] as const) {
    for (const [what, f] of attempts) {
      d.failNext = mode;
      await assert.rejects(f(), (e) => e === d.err, `${mode} ${what}`);
      assert.equal(s.pending, 0, `${mode} ${what}: released`);
    }
  }
  // And the lock still grants an exclusive range afterwards.
  await s.write(1, Buffer.alloc(1, 1), false);
  assert.equal((await d.read(0, BS))[1], 1);
});

test('range lock: exclusive ranges are half-open — touching ranges do not conflict, one byte of overlap does', async () => {
  const l = new RangeLock();
  const x = l.acquire(100, 200, true);
  assert.equal(typeof x, 'function');
  assert.equal(typeof l.acquire(0, 100, false), 'function', 'ends where x starts');
  assert.equal(typeof l.acquire(200, 300, true), 'function', 'starts where x ends');
  assert.ok(l.acquire(0, 101, false) instanceof Promise, 'last byte before x + first of x');
  assert.ok(l.acquire(199, 250, false) instanceof Promise, 'last byte of x');
  assert.ok(l.acquire(120, 130, false) instanceof Promise, 'inside x');
  assert.ok(l.acquire(50, 250, false) instanceof Promise, 'around x');
  assert.equal(l.size, 7);
});

test('range lock: shared entries never conflict with each other, even while an exclusive one is held', () => {
  const l = new RangeLock();
  const x = l.acquire(0, 10, true) as Release;
  const a = l.acquire(50, 60, false);
  const b = l.acquire(55, 65, false);
  assert.equal(typeof a, 'function');
  assert.equal(typeof b, 'function');
  assert.equal(l.tryShared(), false, 'an exclusive is held: no counted lane');
  x();
  assert.equal(l.tryShared(), true);
  assert.equal(l.size, 3);
  (a as Release)();
  (b as Release)();
  l.releaseShared();
  assert.equal(l.size, 0);
});

test('range lock: counted holders — an exclusive waits for all of them (any range), a shared entry for none', async () => {
  const l = new RangeLock();
  assert.equal(l.tryShared(), true);
  assert.equal(l.tryShared(), true);
  assert.equal(l.size, 2);
  const x = l.acquire(1000, 2000, true);
  assert.ok(x instanceof Promise, 'waits for counted holders, overlapping or not');
  assert.equal(l.tryShared(), false, 'an exclusive is waiting');
  const s = l.acquire(5000, 6000, false);
  assert.equal(typeof s, 'function', 'a shared entry does not wait for counted holders');
  let granted = false;
  void x.then(() => { granted = true; });
  l.releaseShared();
  await turns(2);
  assert.equal(granted, false, 'one counted holder left');
  l.releaseShared();
  const rx = await x;
  assert.equal(granted, true);
  assert.equal(l.size, 2);
  rx();
  (s as Release)();
  assert.equal(l.size, 0);
  assert.equal(l.tryShared(), true, 'no exclusive left');
  l.releaseShared();
});

test('range lock: a waiter that no holder and no earlier waiter blocks is granted past a blocked one; FIFO otherwise', async () => {
  const l = new RangeLock();
  const x = l.acquire(0, 10, true) as Release;
  const y = l.acquire(20, 30, false) as Release;
  const order: string[] = [];
  const w1 = l.acquire(5, 6, false) as Promise<Release>; // behind x
  const w2 = l.acquire(20, 30, true) as Promise<Release>; // behind y
  const w3 = l.acquire(25, 26, false) as Promise<Release>; // behind w2 (FIFO)
  assert.ok(w1 instanceof Promise && w2 instanceof Promise && w3 instanceof Promise);
  const free = l.acquire(100, 200, true);
  assert.equal(typeof free, 'function', 'conflicts with nothing held or waiting');
  void w1.then(() => order.push('w1'));
  void w2.then(() => order.push('w2'));
  void w3.then(() => order.push('w3'));
  y();
  await turns(3);
  assert.deepEqual(order, ['w2'], 'w2 granted past w1, which x still blocks; w3 waits for w2');
  (await w2)();
  await turns(3);
  assert.deepEqual(order, ['w2', 'w3']);
  x();
  await turns(3);
  assert.deepEqual(order, ['w2', 'w3', 'w1']);
  (await w1)();
  (await w3)();
  (free as Release)();
  assert.equal(l.size, 0);
});

test('range lock: a second call of a release changes nothing', async () => {
  const l = new RangeLock();
  const x = l.acquire(0, 10, true) as Release;
  x();
  x();
  assert.equal(l.size, 0);
  const x2 = l.acquire(0, 10, true) as Release;
  assert.equal(l.tryShared(), false, 'the exclusive count was not decremented twice');
  const w = l.acquire(0, 5, false);
  assert.ok(w instanceof Promise, 'overlaps the held exclusive');
  x2();
  const rw = await w;
  x2();
  assert.equal(l.size, 1, 'the granted waiter is still held');
  const x3 = l.acquire(4, 8, true);
  assert.ok(x3 instanceof Promise, 'waits for the shared holder');
  rw();
  (await x3)();
  assert.equal(l.size, 0);
  assert.equal(l.tryShared(), true);
  l.releaseShared();
});
