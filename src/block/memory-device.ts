/**
 * A sparse in-memory {@link BlockDevice} for tests and benchmarks.
 *
 * Storage is a map of fixed-size chunks allocated on first write; reading a hole gives zeroes,
 * and trim / write-zeroes free every chunk they cover completely. So a 1 GiB export costs only
 * what was written.
 */
import { ErrorCode, NvmfNbdError } from '../errors';
import { SimpleBlockRequest, submitViaPromises, type BlockDevice, type BlockRequest } from './types';

/** Options of {@link MemoryBlockDevice}. Capabilities default to "everything supported". */
export interface MemoryBlockDeviceOptions {
  /** Size in bytes; rounded down to a multiple of blockSize. */
  size: number;
  blockSize?: number;
  /** Largest request, default 32 MiB. */
  maxRequest?: number;
  readOnly?: boolean;
  canFlush?: boolean;
  canFua?: boolean;
  canTrim?: boolean;
  canWriteZeroes?: boolean;
  canFastZero?: boolean;
  /** Allocation unit, a power of two ≥ blockSize (default 64 KiB). */
  chunkSize?: number;
}

const ENOSPC = 28;
const EPERM = 1;

/** Sparse RAM-backed block device. */
export class MemoryBlockDevice implements BlockDevice {
  readonly size: number;
  readonly blockSize: number;
  readonly maxRequest: number;
  readonly readOnly: boolean;
  readonly canFlush: boolean;
  readonly canFua: boolean;
  readonly canTrim: boolean;
  readonly canWriteZeroes: boolean;
  readonly canFastZero: boolean;
  private readonly chunkSize: number;
  private readonly chunks = new Map<number, Buffer>();
  /** Counters, for tests. */
  readonly counters = { reads: 0, writes: 0, flushes: 0, trims: 0, zeroes: 0, fuaWrites: 0 };

  constructor(o: MemoryBlockDeviceOptions) {
    this.blockSize = o.blockSize ?? 512;
    if (!Number.isSafeInteger(o.size) || o.size < 0) {
      throw new NvmfNbdError(ErrorCode.INVALID_ARGUMENT, `bad device size ${o.size}`);
    }
    this.size = o.size - (o.size % this.blockSize);
    this.maxRequest = o.maxRequest ?? 32 * 1024 * 1024;
    this.readOnly = o.readOnly ?? false;
    this.canFlush = o.canFlush ?? true;
    this.canFua = o.canFua ?? true;
    this.canTrim = o.canTrim ?? true;
    this.canWriteZeroes = o.canWriteZeroes ?? true;
    this.canFastZero = o.canFastZero ?? true;
    this.chunkSize = o.chunkSize ?? 64 * 1024;
    if (this.chunkSize < this.blockSize || (this.chunkSize & (this.chunkSize - 1)) !== 0) {
      throw new NvmfNbdError(ErrorCode.INVALID_ARGUMENT, `chunk size ${this.chunkSize} must be a power of two ≥ the block size`);
    }
  }

  createRequest(): BlockRequest {
    return new SimpleBlockRequest();
  }

  submit(req: BlockRequest): void {
    submitViaPromises(this, req);
  }

  /** Bytes of RAM held by written chunks. */
  get allocatedBytes(): number {
    return this.chunks.size * this.chunkSize;
  }

  async read(offset: number, length: number): Promise<Buffer> {
    this.check(offset, length, false);
    this.counters.reads++;
    const out = Buffer.alloc(length);
    this.forEachPiece(offset, length, (idx, inChunk, outOff, n) => {
      const c = this.chunks.get(idx);
      if (c !== undefined) c.copy(out, outOff, inChunk, inChunk + n);
    });
    return out;
  }

  async write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    this.check(offset, data.length, true);
    this.counters.writes++;
    if (fua) this.counters.fuaWrites++;
    this.forEachPiece(offset, data.length, (idx, inChunk, srcOff, n) => {
      let c = this.chunks.get(idx);
      if (c === undefined) {
        c = Buffer.alloc(this.chunkSize);
        this.chunks.set(idx, c);
      }
      data.copy(c, inChunk, srcOff, srcOff + n);
    });
  }

  async flush(): Promise<void> {
    this.counters.flushes++;
  }

  async trim(offset: number, length: number): Promise<void> {
    this.check(offset, length, true);
    this.counters.trims++;
    this.zero(offset, length);
  }

  async writeZeroes(offset: number, length: number, _opts: { mayDeallocate: boolean; fua: boolean; fastOnly: boolean }): Promise<void> {
    this.check(offset, length, true);
    this.counters.zeroes++;
    // Zeroing RAM is always "fast", so fastOnly never fails here.
    this.zero(offset, length);
  }

  private zero(offset: number, length: number): void {
    this.forEachPiece(offset, length, (idx, inChunk, _o, n) => {
      const c = this.chunks.get(idx);
      if (c === undefined) return;
      if (n === this.chunkSize) this.chunks.delete(idx);
      else c.fill(0, inChunk, inChunk + n);
    });
  }

  private check(offset: number, length: number, write: boolean): void {
    if (write && this.readOnly) throw new NvmfNbdError(ErrorCode.INVALID_ARGUMENT, 'device is read-only', { errno: EPERM });
    if (offset < 0 || length < 0 || offset + length > this.size) {
      throw new NvmfNbdError(ErrorCode.INVALID_ARGUMENT, `range ${offset}+${length} beyond ${this.size}`, { errno: ENOSPC });
    }
  }

  /** Walk [offset, offset+length) chunk by chunk, skipping all-hole chunks cheaply. */
  private forEachPiece(offset: number, length: number, fn: (idx: number, inChunk: number, bufOff: number, n: number) => void): void {
    let done = 0;
    while (done < length) {
      const abs = offset + done;
      const idx = Math.floor(abs / this.chunkSize);
      const inChunk = abs - idx * this.chunkSize;
      const n = Math.min(this.chunkSize - inChunk, length - done);
      fn(idx, inChunk, done, n);
      done += n;
    }
  }
}
