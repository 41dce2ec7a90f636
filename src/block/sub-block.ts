/**
 * Requests not aligned to the logical block size, served by read-modify-write, for NBD clients
 * that never agreed to a minimum block size (no NBD_INFO_BLOCK_SIZE request, or EXPORT_NAME: the
 * NBD spec's default minimum is then 1 byte, and such clients send 512- or 1024-byte requests to
 * a namespace with 4096-byte LBAs).
 *
 * One {@link SubBlockDevice} per export, in front of its {@link BlockDevice}, so that every
 * connection of the export (multi-conn clients share the namespace) goes through the same
 * {@link RangeLock}: an RMW holds its block-rounded range exclusively, every other request holds
 * its range shared, so no request that touches a block being read-modified-written can run in
 * between (a concurrent write would be lost, a concurrent read could see the old block).
 *
 * Semantics kept: a FUA sub-block write is written with FUA (durable when acknowledged); an RMW is
 * complete only once its write is, so a FLUSH sent after its reply covers it. TRIM covers only the
 * whole blocks inside its range (a partial block is left as it is: trimmed data may read as
 * anything); WRITE_ZEROES writes zeroes into the partial blocks by RMW.
 *
 * Requests above the inner device's maxRequest (up to {@link SUB_BLOCK_MAX_REQUEST}) are split.
 *
 * The record path ({@link SubBlockDevice.submit}): FLUSH, and an aligned READ / WRITE within the
 * device's maxRequest while no RMW holds or waits for a range — every request of a client that
 * negotiated block sizes, nearly every one of the others — goes straight to the device's
 * `submit` with the lock counted ({@link RangeLock.tryShared}); this object is the record's
 * handler until it completes (lock released, then the caller's handler). Everything else takes
 * the promise paths below.
 */
import { ErrorCode, NvmfNbdError } from '../errors';
import { NbdErrno } from './errno';
import { RangeLock, type Release } from './range-lock';
import { BlockOpCode, type BlockDevice, type BlockHandler, type BlockRequest } from './types';
import type { NvmfNbdError as NvmfNbdErrorType } from '../errors';

/** Largest request taken from a client that did not negotiate block sizes (nbdkit serves ~48 MiB ones). */
export const SUB_BLOCK_MAX_REQUEST = 64 << 20;

/** Counters of one export's sub-block path. */
export interface SubBlockCounters {
  /** Requests that needed a read-modify-write of at least one partial block. */
  rmw: number;
  /** Partial blocks read for those RMWs. */
  rmwBlocksRead: number;
  /** Requests not aligned to the block size (RMW or not: reads and trims need none). */
  unaligned: number;
}

type ZeroOpts = { mayDeallocate: boolean; fua: boolean; fastOnly: boolean };

/** Run `f` once the lock is granted; release when it settles. */
function locked<T>(l: Release | Promise<Release>, f: () => Promise<T>): Promise<T> {
  const run = (release: Release): Promise<T> => {
    let p: Promise<T>;
    try {
      p = f();
    } catch (err) {
      release();
      return Promise.reject(err);
    }
    return p.then((v) => { release(); return v; }, (err: unknown) => { release(); throw err; });
  };
  return typeof l === 'function' ? run(l) : l.then(run);
}

/** See the module comment. */
export class SubBlockDevice implements BlockHandler {
  readonly counters: SubBlockCounters = { rmw: 0, rmwBlocksRead: 0, unaligned: 0 };
  private readonly lock = new RangeLock();
  private readonly bs: number;

  constructor(readonly device: BlockDevice) {
    this.bs = device.blockSize;
  }

  /** A request record of the device (callers pool them). */
  createRequest(): BlockRequest {
    return this.device.createRequest();
  }

  /**
   * Run `req` (from {@link createRequest}); completes once through `req.handler`, never
   * synchronously. See the module comment.
   */
  submit(req: BlockRequest): void {
    const op = req.op;
    if (op === BlockOpCode.FLUSH) {
      // A flush covers completed writes only and touches no range: no lock (as flush()).
      this.device.submit(req);
      return;
    }
    const length = op === BlockOpCode.WRITE ? (req.data as Buffer).length : req.length;
    const fast = (op === BlockOpCode.READ || op === BlockOpCode.WRITE) && req.offset % this.bs === 0 && length % this.bs === 0 && length <= this.device.maxRequest;
    if (fast && this.lock.tryShared()) {
      req.upstream = req.handler;
      req.handler = this;
      this.device.submit(req);
      return;
    }
    this.submitSlow(req);
  }

  /** The record's completion on the fast path: release the lock, then tell the caller. */
  onBlockComplete(req: BlockRequest): void {
    const h = req.upstream as BlockHandler;
    req.handler = h;
    req.upstream = undefined;
    this.lock.releaseShared();
    h.onBlockComplete(req);
  }

  onBlockError(req: BlockRequest, err: NvmfNbdErrorType): void {
    const h = req.upstream as BlockHandler;
    req.handler = h;
    req.upstream = undefined;
    this.lock.releaseShared();
    h.onBlockError(req, err);
  }

  /** Unaligned, oversized, TRIM / ZEROES, or an RMW in the way: the promise paths. */
  private submitSlow(req: BlockRequest): void {
    let p: Promise<unknown>;
    switch (req.op) {
      case BlockOpCode.READ:
        p = this.read(req.offset, req.length).then((d) => { req.data = d; });
        break;
      case BlockOpCode.WRITE:
        p = this.write(req.offset, req.data as Buffer, req.fua);
        break;
      case BlockOpCode.FLUSH:
        p = this.flush();
        break;
      case BlockOpCode.TRIM:
        p = this.trim(req.offset, req.length);
        break;
      default:
        p = this.writeZeroes(req.offset, req.length, { mayDeallocate: req.mayDeallocate, fua: req.fua, fastOnly: req.fastOnly });
        break;
    }
    p.then(
      () => (req.handler as BlockHandler).onBlockComplete(req),
      (err: unknown) => (req.handler as BlockHandler).onBlockError(req, err as NvmfNbdErrorType),
    );
  }

  /** Requests holding or waiting for a range (0 when idle). */
  get pending(): number {
    return this.lock.size;
  }

  private down(n: number): number {
    return n - (n % this.bs);
  }

  private up(n: number): number {
    const r = n % this.bs;
    return r === 0 ? n : n + this.bs - r;
  }

  /** Read any byte range inside the device. */
  read(offset: number, length: number): Promise<Buffer> {
    const s = this.down(offset);
    const e = this.up(offset + length);
    if (s !== offset || e !== offset + length) this.counters.unaligned++;
    return locked(this.lock.acquire(s, e, false), async () => {
      const data = await this.readAligned(s, e - s);
      return s === offset && data.length === length ? data : data.subarray(offset - s, offset - s + length);
    });
  }

  /** Write any byte range inside the device; partial blocks are read, merged and rewritten. */
  write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    const end = offset + data.length;
    const s = this.down(offset);
    const e = this.up(end);
    if (s === offset && e === end) return locked(this.lock.acquire(s, e, false), () => this.writeAligned(s, data, fua));
    this.counters.unaligned++;
    return locked(this.lock.acquire(s, e, true), () => this.rmw(offset, data.length, data, fua));
  }

  /** Deallocate the whole blocks inside the range (none: nothing to do). */
  trim(offset: number, length: number): Promise<void> {
    const s = this.up(offset);
    const e = this.down(offset + length);
    if (s !== offset || e !== offset + length) this.counters.unaligned++;
    if (e <= s) return Promise.resolve();
    return locked(this.lock.acquire(s, e, false), () => this.device.trim(s, e - s));
  }

  /** Zero the range: whole blocks with the device's zeroing, partial ones by RMW. */
  writeZeroes(offset: number, length: number, opts: ZeroOpts): Promise<void> {
    const end = offset + length;
    const s = this.down(offset);
    const e = this.up(end);
    if (s === offset && e === end) return locked(this.lock.acquire(s, e, false), () => this.zeroAligned(s, e - s, opts));
    this.counters.unaligned++;
    // Zeroing a partial block means writing it: never "fast".
    if (opts.fastOnly) {
      return Promise.reject(new NvmfNbdError(ErrorCode.UNSUPPORTED, `fast zero of a partial block (${offset}+${length}, block size ${this.bs})`, { errno: NbdErrno.ENOTSUP }));
    }
    return locked(this.lock.acquire(s, e, true), async () => {
      const inS = this.up(offset);
      const inE = this.down(end);
      const whole = inE > inS ? this.zeroAligned(inS, inE - inS, opts) : Promise.resolve();
      await Promise.all([whole, this.rmw(offset, length, undefined, opts.fua)]);
    });
  }

  /** Flush the device: covers every RMW already acknowledged (their writes have completed). */
  flush(): Promise<void> {
    return this.device.flush();
  }

  /**
   * Rewrite the partial head and tail blocks of [offset, offset+length) with `data` (or zeroes
   * when undefined) merged in; for data, the aligned middle is written straight from `data`.
   * The caller holds [down(offset), up(end)) exclusively.
   */
  private async rmw(offset: number, length: number, data: Buffer | undefined, fua: boolean): Promise<void> {
    const bs = this.bs;
    const end = offset + length;
    const headS = this.down(offset);
    const tailS = this.down(end - 1);
    // The head block is partial when the range starts inside it or ends inside it.
    const headPartial = headS !== offset || end < headS + bs;
    const tailPartial = end % bs !== 0 && tailS !== headS;
    this.counters.rmw++;
    const writes: Array<Promise<void>> = [];
    const merge = async (blockS: number): Promise<void> => {
      const block = Buffer.from(await this.device.read(blockS, bs));
      this.counters.rmwBlocksRead++;
      const from = Math.max(offset, blockS);
      const to = Math.min(end, blockS + bs);
      if (data === undefined) block.fill(0, from - blockS, to - blockS);
      else data.copy(block, from - blockS, from - offset, to - offset);
      await this.device.write(blockS, block, fua);
    };
    if (headPartial) writes.push(merge(headS));
    if (tailPartial) writes.push(merge(tailS));
    if (data !== undefined) {
      const midS = headPartial ? headS + bs : headS;
      const midE = tailPartial ? tailS : this.down(end);
      if (midE > midS) writes.push(this.writeAligned(midS, data.subarray(midS - offset, midE - offset), fua));
    }
    await Promise.all(writes);
  }

  private async readAligned(offset: number, length: number): Promise<Buffer> {
    const max = this.device.maxRequest;
    if (length <= max) return this.device.read(offset, length);
    const out = Buffer.allocUnsafe(length);
    const parts: Array<Promise<void>> = [];
    for (let done = 0; done < length; done += max) {
      const n = Math.min(max, length - done);
      parts.push(this.device.read(offset + done, n).then((b) => { b.copy(out, done); }));
    }
    await Promise.all(parts);
    return out;
  }

  private async writeAligned(offset: number, data: Buffer, fua: boolean): Promise<void> {
    const max = this.device.maxRequest;
    if (data.length <= max) return this.device.write(offset, data, fua);
    const parts: Array<Promise<void>> = [];
    for (let done = 0; done < data.length; done += max) parts.push(this.device.write(offset + done, data.subarray(done, Math.min(data.length, done + max)), fua));
    await Promise.all(parts);
  }

  private async zeroAligned(offset: number, length: number, opts: ZeroOpts): Promise<void> {
    // The device splits zeroing itself (Write Zeroes limits, zero-filled writes).
    return this.device.writeZeroes(offset, length, opts);
  }
}
