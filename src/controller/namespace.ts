/**
 * One NVMe namespace as the {@link BlockDevice} the NBD server exports (issue 9 item 1).
 *
 * The namespace is the unit: one object per namespace *format*, created and owned by the
 * resilient controller (`ResilientController.namespace(nsid)`), and exported as it is. It does,
 * once and only here:
 * - the byte ↔ LBA math and the bounds / alignment / mode checks (EINVAL, ENOSPC, EPERM);
 * - the NBD errno of every failure, at its edge ({@link Namespace} → `block/errno.ts`): an NVMe
 *   status by the table, an error whose errno the controller layer already decided (ESHUTDOWN
 *   while deleting, EIO after ctrl_loss_tmo) kept as it is, never overwritten;
 * - the in-flight count, for the drain before an export is withdrawn.
 *
 * It talks to "a path" through the narrow {@link NamespacePath} interface: today the one
 * resilient controller (or a plain `Controller`); multipath will hang several paths under it.
 *
 * Retirement: when the namespace is removed, or reformatted to another block size (its LBA math
 * would hit the wrong blocks), the owner calls {@link Namespace.retire}: from then on new
 * requests, requests held by the path during an outage, and requests in flight that fail are
 * answered EIO with a stable code (NAMESPACE_NOT_FOUND when removed, NAMESPACE_UNSUPPORTED when
 * reformatted). A reformatted namespace gets a NEW object (the session exports it anew); the old
 * object never serves again.
 */
import { ErrorCode, NvmfNbdError, type ErrorCodeValue } from '../errors';
import type { BlockDevice } from '../block/types';
import { NbdErrno, withErrno, type BlockOp } from '../block/errno';
import type { NamespaceInfo } from './controller';

/** Largest request the NBD layer may hand us (the kernel sends up to 32 MiB). */
export const NAMESPACE_MAX_REQUEST = 32 << 20;
/** Zero buffer used when Write Zeroes is missing and the caller allows slow zeroing. */
const ZERO_CHUNK = 1 << 20;
/** Block ranges passed to deallocate per call (the controller splits further). */
const TRIM_CHUNK_BLOCKS = 1 << 24;
/** ONCS bits (Identify Controller @520). */
const Oncs = { DSM: 1 << 2, WRITE_ZEROES: 1 << 3 } as const;

/**
 * What a {@link Namespace} needs from the path it runs on: the controller's capabilities and the
 * NVM commands, addressed by NSID and LBA. The `ns` argument names the issuing object, so a path
 * that holds requests (during an outage) can fail them once that object is retired.
 */
export interface NamespacePath {
  /** Optional NVM Command Support (Identify Controller ONCS). */
  readonly oncs: number;
  readonly volatileWriteCache: boolean;
  /** `into` (exactly nlb·lbaSize bytes): where the data lands; resolves with it. */
  read(nsid: number, slba: bigint, nlb: number, into?: Buffer, ns?: Namespace): Promise<Buffer>;
  write(nsid: number, slba: bigint, data: Buffer, o: { fua?: boolean }, ns?: Namespace): Promise<void>;
  flush(nsid: number, ns?: Namespace): Promise<void>;
  deallocate(nsid: number, ranges: ReadonlyArray<{ slba: bigint; nlb: number }>, ns?: Namespace): Promise<void>;
  writeZeroes(nsid: number, slba: bigint, nlb: number, o: { deallocate?: boolean; fua?: boolean }, ns?: Namespace): Promise<void>;
}

/** Options of a {@link Namespace}. */
export interface NamespaceOptions {
  /** Serve it read-only (writes, trims and zeroing fail with EPERM). */
  readonly readOnly?: boolean;
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
 * written). Contents are uninitialised: the controller writes every byte before completing.
 */
export function readBuffer(n: number): Buffer {
  if (n > SLAB_READ_MAX) return Buffer.allocUnsafe(n);
  if (slabUsed + n > slab.length) {
    slab = Buffer.allocUnsafeSlow(SLAB_SIZE);
    slabUsed = 0;
  }
  const b = slab.subarray(slabUsed, slabUsed + n);
  slabUsed += n;
  return b;
}

/** One namespace of a controller, served as a block device. See the module comment. */
export class Namespace implements BlockDevice {
  readonly nsid: number;
  readonly size: number;
  readonly blockSize: number;
  /** Size in logical blocks when this object was made (a later capacity change keeps it). */
  readonly blocks: bigint;
  readonly maxRequest = NAMESPACE_MAX_REQUEST;
  readonly readOnly: boolean;
  readonly canFlush: boolean;
  readonly canFua: boolean;
  readonly canTrim: boolean;
  readonly canWriteZeroes: boolean;
  readonly canFastZero: boolean;
  private retiredError: NvmfNbdError | undefined;
  private inflight = 0;
  private onIdle: (() => void) | undefined;

  /**
   * @param path the controller (or any compatible path) the commands run on
   * @param info the namespace as identified (must be usable)
   * @throws NAMESPACE_UNSUPPORTED (errno ENOTSUP) for a namespace the host cannot serve
   */
  constructor(private readonly path: NamespacePath, info: NamespaceInfo | { readonly nsid: number; readonly lbaSize: number; readonly nsze: bigint; readonly usable: boolean; readonly reasonIfNot?: string }, o: NamespaceOptions = {}) {
    const nsid = info.nsid;
    if (!info.usable) throw new NvmfNbdError(ErrorCode.NAMESPACE_UNSUPPORTED, `namespace ${nsid}: ${info.reasonIfNot ?? 'unsupported'}`, { errno: NbdErrno.ENOTSUP });
    const bytes = info.nsze * BigInt(info.lbaSize);
    if (bytes > BigInt(Number.MAX_SAFE_INTEGER)) throw new NvmfNbdError(ErrorCode.NAMESPACE_UNSUPPORTED, `namespace ${nsid} is larger than 2^53 bytes`, { errno: NbdErrno.ENOTSUP });
    this.nsid = nsid;
    this.size = Number(bytes);
    this.blockSize = info.lbaSize;
    this.blocks = info.nsze;
    this.readOnly = o.readOnly === true;
    // Without a volatile write cache every completed write is durable: flush and FUA are no-ops.
    this.canFlush = path.volatileWriteCache;
    this.canFua = path.volatileWriteCache;
    this.canTrim = (path.oncs & Oncs.DSM) !== 0;
    this.canWriteZeroes = true; // emulated with zero writes when ONCS lacks Write Zeroes
    this.canFastZero = (path.oncs & Oncs.WRITE_ZEROES) !== 0;
  }

  // ---- lifecycle ------------------------------------------------------------------------------

  /** True once the namespace was removed or reformatted: this object serves nothing any more. */
  get retired(): boolean {
    return this.retiredError !== undefined;
  }

  /** The error every request of a retired namespace gets (EIO). */
  get retiredReason(): NvmfNbdError | undefined {
    return this.retiredError;
  }

  /**
   * The namespace is gone (`removed`) or has another block size (`reformatted`): new, held and
   * failing in-flight requests are answered EIO from now on. Idempotent (the first reason stays).
   */
  retire(why: 'removed' | 'reformatted'): void {
    if (this.retiredError !== undefined) return;
    const code: ErrorCodeValue = why === 'removed' ? ErrorCode.NAMESPACE_NOT_FOUND : ErrorCode.NAMESPACE_UNSUPPORTED;
    const msg = why === 'removed' ? `namespace ${this.nsid} was removed` : `namespace ${this.nsid} changed its block size; its export must be rebuilt`;
    this.retiredError = new NvmfNbdError(code, msg, { errno: NbdErrno.EIO });
  }

  /** Requests running on the path. */
  get inFlight(): number {
    return this.inflight;
  }

  /**
   * Resolves when no request is running (bounded by `ms`): an export is withdrawn only then,
   * so requests running at removal are answered EIO by us, not ESHUTDOWN by the NBD server.
   */
  drained(ms: number): Promise<void> {
    if (this.inflight === 0) return Promise.resolve();
    return new Promise((resolve) => {
      const t = setTimeout(done, ms);
      const self = this;
      function done(): void {
        clearTimeout(t);
        self.onIdle = undefined;
        // The NBD connection answers in a callback queued after ours: let it run first.
        setImmediate(resolve);
      }
      this.onIdle = done;
    });
  }

  // ---- the edge: checks in, errno out ---------------------------------------------------------

  private lba(offset: number, length: number, op: BlockOp): bigint {
    if (offset % this.blockSize !== 0 || length % this.blockSize !== 0) {
      throw new NvmfNbdError(ErrorCode.INVALID_ARGUMENT, `${op} ${offset}+${length} not aligned to ${this.blockSize}`, { errno: NbdErrno.EINVAL });
    }
    if (offset < 0 || offset + length > this.size) {
      throw new NvmfNbdError(ErrorCode.INVALID_ARGUMENT, `${op} ${offset}+${length} beyond the device (${this.size} bytes)`,
        { errno: op === 'write' || op === 'zeroes' ? NbdErrno.ENOSPC : NbdErrno.EINVAL });
    }
    return BigInt(offset / this.blockSize);
  }

  private checkWritable(): void {
    if (this.readOnly) throw new NvmfNbdError(ErrorCode.INVALID_ARGUMENT, 'device is read-only', { errno: NbdErrno.EPERM });
  }

  /** The one errno decision for a failed request (see the module comment). */
  private failure(err: unknown, op: BlockOp): NvmfNbdError {
    return this.retiredError ?? withErrno(err, op);
  }

  private begin(): void {
    if (this.retiredError !== undefined) throw this.retiredError;
    this.inflight++;
  }

  private settled(): void {
    if (--this.inflight === 0) this.onIdle?.();
  }

  /** Run `f` as one request: counted in flight, its failure mapped once. */
  private run<T>(op: BlockOp, f: () => Promise<T>): Promise<T> {
    try {
      this.begin();
    } catch (err) {
      return Promise.reject(err);
    }
    let p: Promise<T>;
    try {
      p = f();
    } catch (err) {
      this.settled();
      return Promise.reject(this.failure(err, op));
    }
    return p.then(
      (v) => {
        this.settled();
        return v;
      },
      (err: unknown) => {
        this.settled();
        throw this.failure(err, op);
      },
    );
  }

  // ---- BlockDevice ----------------------------------------------------------------------------

  read(offset: number, length: number): Promise<Buffer> {
    if (this.retiredError !== undefined) return Promise.reject(this.retiredError);
    if (length === 0) return Promise.resolve(Buffer.alloc(0));
    let slba: bigint;
    try {
      slba = this.lba(offset, length, 'read');
    } catch (err) {
      return Promise.reject(err);
    }
    const nlb = length / this.blockSize;
    return this.run('read', () => this.path.read(this.nsid, slba, nlb, readBuffer(length), this));
  }

  write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    if (this.retiredError !== undefined) return Promise.reject(this.retiredError);
    let slba: bigint;
    try {
      this.checkWritable();
      if (data.length === 0) return Promise.resolve();
      slba = this.lba(offset, data.length, 'write');
    } catch (err) {
      return Promise.reject(err);
    }
    return this.run('write', () => this.path.write(this.nsid, slba, data, { fua: fua && this.canFua }, this));
  }

  flush(): Promise<void> {
    if (this.retiredError !== undefined) return Promise.reject(this.retiredError);
    if (!this.canFlush) return Promise.resolve();
    return this.run('flush', () => this.path.flush(this.nsid, this));
  }

  trim(offset: number, length: number): Promise<void> {
    if (this.retiredError !== undefined) return Promise.reject(this.retiredError);
    let slba: bigint;
    try {
      this.checkWritable();
      if (!this.canTrim) throw new NvmfNbdError(ErrorCode.UNSUPPORTED, 'deallocate is not supported by the controller', { errno: NbdErrno.ENOTSUP });
      if (length === 0) return Promise.resolve();
      slba = this.lba(offset, length, 'trim');
    } catch (err) {
      return Promise.reject(err);
    }
    const nlb = length / this.blockSize;
    const ranges: Array<{ slba: bigint; nlb: number }> = [];
    for (let done = 0; done < nlb; done += TRIM_CHUNK_BLOCKS) ranges.push({ slba: slba + BigInt(done), nlb: Math.min(TRIM_CHUNK_BLOCKS, nlb - done) });
    return this.run('trim', () => this.path.deallocate(this.nsid, ranges, this));
  }

  writeZeroes(offset: number, length: number, opts: { mayDeallocate: boolean; fua: boolean; fastOnly: boolean }): Promise<void> {
    if (this.retiredError !== undefined) return Promise.reject(this.retiredError);
    let slba: bigint;
    try {
      this.checkWritable();
      if (length === 0) return Promise.resolve();
      slba = this.lba(offset, length, 'zeroes');
      if (!this.canFastZero && opts.fastOnly) {
        throw new NvmfNbdError(ErrorCode.UNSUPPORTED, 'Write Zeroes is not supported by the controller', { errno: NbdErrno.ENOTSUP });
      }
    } catch (err) {
      return Promise.reject(err);
    }
    const nlb = length / this.blockSize;
    const fua = opts.fua && this.canFua;
    if (this.canFastZero) return this.run('zeroes', () => this.path.writeZeroes(this.nsid, slba, nlb, { deallocate: opts.mayDeallocate, fua }, this));
    return this.run('zeroes', async () => {
      const zeroes = Buffer.alloc(Math.min(ZERO_CHUNK, length));
      for (let done = 0; done < length; done += zeroes.length) {
        const n = Math.min(zeroes.length, length - done);
        await this.path.write(this.nsid, slba + BigInt(done / this.blockSize), zeroes.subarray(0, n), { fua }, this);
      }
    });
  }
}
