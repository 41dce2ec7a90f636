/**
 * One NVMe namespace as a {@link BlockDevice}: byte ↔ LBA math, splitting (MDTS is handled by
 * the controller; Write Zeroes and DSM limits here), capabilities from ONCS/VWC, and NVMe
 * status → NBD errno (src/block/errno.ts).
 */
import { ErrorCode, NvmfNbdError } from '../errors';
import type { BlockDevice } from './types';
import { NbdErrno, withErrno } from './errno';
import type { BlockOp } from './errno';

/** Largest request the NBD layer may hand us (the kernel sends up to 32 MiB). */
export const NVME_DEVICE_MAX_REQUEST = 32 << 20;
/** Zero buffer used when Write Zeroes is missing and the caller allows slow zeroing. */
const ZERO_CHUNK = 1 << 20;
/** Block ranges passed to Controller.deallocate per call (the controller splits further). */
const TRIM_CHUNK_BLOCKS = 1 << 24;

/** The subset of {@link Controller} the device needs (so tests can pass a fake). */
export interface NamespaceBackend {
  readonly namespaces: ReadonlyMap<number, { readonly lbaSize: number; readonly nsze: bigint; readonly usable: boolean; readonly reasonIfNot?: string }>;
  /** Optional NVM Command Support (Identify Controller ONCS). */
  readonly oncs: number;
  readonly volatileWriteCache: boolean;
  /** `into` (optional, exactly nlb·lbaSize bytes): where the data should land; resolves with it. */
  read(nsid: number, slba: bigint, nlb: number, into?: Buffer): Promise<Buffer>;
  write(nsid: number, slba: bigint, data: Buffer, o: { fua?: boolean }): Promise<void>;
  flush(nsid: number): Promise<void>;
  deallocate(nsid: number, ranges: ReadonlyArray<{ slba: bigint; nlb: number }>): Promise<void>;
  writeZeroes(nsid: number, slba: bigint, nlb: number, o: { deallocate?: boolean; fua?: boolean }): Promise<void>;
}

/** Reads up to this size are carved from a shared slab (see {@link readBuffer}). */
const SLAB_READ_MAX = 16 * 1024;
/** Slab size: 64 reads of 4 KiB per allocation; small enough that a retained view pins little. */
const SLAB_SIZE = 256 * 1024;
let slab = Buffer.allocUnsafeSlow(0);
let slabUsed = 0;

/**
 * The destination of one read. Node pools only allocations below 4 KiB, so a 4 KiB
 * `allocUnsafe` is a malloc'd ArrayBuffer per read, later freed by the GC's sweeper; small reads
 * instead take consecutive views of a 256 KiB slab (the NBD reply holds its view only until
 * written). Contents are uninitialised: the controller writes every byte before resolving.
 */
function readBuffer(n: number): Buffer {
  if (n > SLAB_READ_MAX) return Buffer.allocUnsafe(n);
  if (slabUsed + n > slab.length) {
    slab = Buffer.allocUnsafeSlow(SLAB_SIZE);
    slabUsed = 0;
  }
  const b = slab.subarray(slabUsed, slabUsed + n);
  slabUsed += n;
  return b;
}

function readFailed(err: unknown): never {
  throw withErrno(err, 'read');
}

function writeFailed(err: unknown): never {
  throw withErrno(err, 'write');
}

/** ONCS bits (Identify Controller @520). */
const Oncs = { DSM: 1 << 2, WRITE_ZEROES: 1 << 3 } as const;

/** A namespace of a connected controller, served as a block device. */
export class NvmeNamespaceDevice implements BlockDevice {
  readonly size: number;
  readonly blockSize: number;
  readonly maxRequest = NVME_DEVICE_MAX_REQUEST;
  readonly readOnly: boolean;
  readonly canFlush: boolean;
  readonly canFua: boolean;
  readonly canTrim: boolean;
  readonly canWriteZeroes: boolean;
  readonly canFastZero: boolean;

  /**
   * @param ctrl  the controller (or a compatible backend)
   * @param nsid  an active, usable namespace
   * @param o.readOnly serve it read-only
   */
  constructor(private readonly ctrl: NamespaceBackend, readonly nsid: number, o: { readOnly?: boolean } = {}) {
    const ns = ctrl.namespaces.get(nsid);
    if (ns === undefined) throw new NvmfNbdError(ErrorCode.NAMESPACE_NOT_FOUND, `namespace ${nsid} is not active`);
    if (!ns.usable) throw new NvmfNbdError(ErrorCode.NAMESPACE_UNSUPPORTED, `namespace ${nsid}: ${ns.reasonIfNot ?? 'unsupported'}`, { errno: NbdErrno.ENOTSUP });
    const bytes = ns.nsze * BigInt(ns.lbaSize);
    if (bytes > BigInt(Number.MAX_SAFE_INTEGER)) throw new NvmfNbdError(ErrorCode.NAMESPACE_UNSUPPORTED, `namespace ${nsid} is larger than 2^53 bytes`);
    this.size = Number(bytes);
    this.blockSize = ns.lbaSize;
    this.readOnly = o.readOnly === true;
    // Without a volatile write cache every completed write is durable: flush and FUA are no-ops.
    this.canFlush = ctrl.volatileWriteCache;
    this.canFua = ctrl.volatileWriteCache;
    this.canTrim = (ctrl.oncs & Oncs.DSM) !== 0;
    this.canWriteZeroes = true; // emulated with zero writes when ONCS lacks Write Zeroes
    this.canFastZero = (ctrl.oncs & Oncs.WRITE_ZEROES) !== 0;
  }

  private lba(offset: number, length: number, op: BlockOp): { slba: bigint; nlb: number } {
    if (offset % this.blockSize !== 0 || length % this.blockSize !== 0) {
      throw new NvmfNbdError(ErrorCode.INVALID_ARGUMENT, `${op} ${offset}+${length} not aligned to ${this.blockSize}`, { errno: NbdErrno.EINVAL });
    }
    if (offset + length > this.size) {
      throw new NvmfNbdError(ErrorCode.INVALID_ARGUMENT, `${op} ${offset}+${length} beyond the device (${this.size} bytes)`,
        { errno: op === 'write' || op === 'zeroes' ? NbdErrno.ENOSPC : NbdErrno.EINVAL });
    }
    return { slba: BigInt(offset / this.blockSize), nlb: length / this.blockSize };
  }

  private async run<T>(op: BlockOp, f: () => Promise<T>): Promise<T> {
    try {
      return await f();
    } catch (err) {
      throw withErrno(err, op);
    }
  }

  // read/write are not async: the hot path keeps one promise hop (the error mapping) instead of
  // four; synchronous errors still become rejections.
  read(offset: number, length: number): Promise<Buffer> {
    if (length === 0) return Promise.resolve(Buffer.alloc(0));
    try {
      const { slba, nlb } = this.lba(offset, length, 'read');
      return this.ctrl.read(this.nsid, slba, nlb, readBuffer(length)).then(undefined, readFailed);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    try {
      if (this.readOnly) throw new NvmfNbdError(ErrorCode.INVALID_ARGUMENT, 'device is read-only', { errno: NbdErrno.EPERM });
      if (data.length === 0) return Promise.resolve();
      const { slba } = this.lba(offset, data.length, 'write');
      return this.ctrl.write(this.nsid, slba, data, { fua: fua && this.canFua }).then(undefined, writeFailed);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  async flush(): Promise<void> {
    if (!this.canFlush) return;
    await this.run('flush', () => this.ctrl.flush(this.nsid));
  }

  async trim(offset: number, length: number): Promise<void> {
    if (this.readOnly) throw new NvmfNbdError(ErrorCode.INVALID_ARGUMENT, 'device is read-only', { errno: NbdErrno.EPERM });
    if (!this.canTrim) throw new NvmfNbdError(ErrorCode.UNSUPPORTED, 'deallocate is not supported by the controller', { errno: NbdErrno.ENOTSUP });
    if (length === 0) return;
    const { slba, nlb } = this.lba(offset, length, 'trim');
    const ranges: Array<{ slba: bigint; nlb: number }> = [];
    for (let done = 0; done < nlb; done += TRIM_CHUNK_BLOCKS) ranges.push({ slba: slba + BigInt(done), nlb: Math.min(TRIM_CHUNK_BLOCKS, nlb - done) });
    await this.run('trim', () => this.ctrl.deallocate(this.nsid, ranges));
  }

  async writeZeroes(offset: number, length: number, opts: { mayDeallocate: boolean; fua: boolean; fastOnly: boolean }): Promise<void> {
    if (this.readOnly) throw new NvmfNbdError(ErrorCode.INVALID_ARGUMENT, 'device is read-only', { errno: NbdErrno.EPERM });
    if (length === 0) return;
    const { slba, nlb } = this.lba(offset, length, 'zeroes');
    if (this.canFastZero) {
      await this.run('zeroes', () => this.ctrl.writeZeroes(this.nsid, slba, nlb, { deallocate: opts.mayDeallocate, fua: opts.fua && this.canFua }));
      return;
    }
    if (opts.fastOnly) throw new NvmfNbdError(ErrorCode.UNSUPPORTED, 'Write Zeroes is not supported by the controller', { errno: NbdErrno.ENOTSUP });
    const zeroes = Buffer.alloc(Math.min(ZERO_CHUNK, length));
    for (let done = 0; done < length; done += zeroes.length) {
      const n = Math.min(zeroes.length, length - done);
      await this.run('zeroes', () => this.ctrl.write(this.nsid, slba + BigInt(done / this.blockSize), zeroes.subarray(0, n), { fua: opts.fua && this.canFua }));
    }
  }
}
