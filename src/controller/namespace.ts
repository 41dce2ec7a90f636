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
 * The record path ({@link Namespace.submit}, issue 9 item 2): the NBD connection's request
 * record IS an {@link IoRequest} (made by {@link Namespace.createRequest}); the namespace fills
 * its NVMe part (nsid, slba, nlb, the read destination), makes itself the record's owner and
 * hands it to the path; the path's completion (`onIoDone`) decrements the in-flight count, maps
 * the errno and calls the record's handler. No promise or closure per request. The promise
 * methods (`read`, `write`, …) are the public API over the same path.
 *
 * Retirement: when the namespace is removed, or reformatted to another block size (its LBA math
 * would hit the wrong blocks), the owner calls {@link Namespace.retire}: from then on new
 * requests, requests held by the path during an outage, and requests in flight that fail are
 * answered EIO with a stable code (NAMESPACE_NOT_FOUND when removed, NAMESPACE_UNSUPPORTED when
 * reformatted). A reformatted namespace gets a NEW object (the session exports it anew); the old
 * object never serves again.
 */
import { ErrorCode, NvmfNbdError, type ErrorCodeValue } from '../errors';
import { BlockOpCode, submitViaPromises, type BlockDevice, type BlockHandler, type BlockRequest } from '../block/types';
import { NbdErrno, withErrno, type BlockOp } from '../block/errno';
import type { NamespaceInfo } from './controller';
import { IoRequest, PromiseIoOwner, type IoOwner } from './io-request';

/** Largest request the NBD layer may hand us (the kernel sends up to 32 MiB). */
export const NAMESPACE_MAX_REQUEST = 32 << 20;
/** Zero buffer used when Write Zeroes is missing and the caller allows slow zeroing. */
const ZERO_CHUNK = 1 << 20;
/** Block ranges passed to deallocate per call (the controller splits further). */
const TRIM_CHUNK_BLOCKS = 1 << 24;
/** ONCS bits (Identify Controller @520). */
const Oncs = { DSM: 1 << 2, WRITE_ZEROES: 1 << 3 } as const;

/**
 * What a {@link Namespace} needs from the path it runs on: the controller's capabilities, the
 * record path for Read / Write / Flush, and Deallocate / Write Zeroes (rare, promise-based),
 * addressed by NSID and LBA. `req.ns` / the `ns` argument name the issuing object, so a path
 * that holds requests (during an outage) can fail them once that object is retired.
 */
export interface NamespacePath {
  /** Optional NVM Command Support (Identify Controller ONCS). */
  readonly oncs: number;
  readonly volatileWriteCache: boolean;
  /**
   * Run a READ / WRITE / FLUSH record (`nsid`, `slba`, `nlb`, `data`: the payload, `fua`);
   * completes once through `req.owner.onIoDone`, never synchronously. A READ may come with
   * `data` undefined and its size in `dataInLength`: the path makes the destination when it sends
   * the read (`req.allocDataIn()`, as the queue pair does at issue) and `data` holds it after.
   */
  submitIo(req: IoRequest): void;
  deallocate(nsid: number, ranges: ReadonlyArray<{ slba: bigint; nlb: number }>, ns?: Namespace): Promise<void>;
  writeZeroes(nsid: number, slba: bigint, nlb: number, o: { deallocate?: boolean; fua?: boolean }, ns?: Namespace): Promise<void>;
}

/** Options of a {@link Namespace}. */
export interface NamespaceOptions {
  /** Serve it read-only (writes, trims and zeroing fail with EPERM). */
  readonly readOnly?: boolean;
}

const EMPTY = Buffer.alloc(0);
const OP_NAMES: readonly BlockOp[] = ['read', 'write', 'flush', 'trim', 'zeroes'];

/** Complete / fail a block request outside the submitter's call (never synchronously). */
function completeLater(req: BlockRequest): void {
  process.nextTick(completeNow, req);
}
function completeNow(req: BlockRequest): void {
  (req.handler as BlockHandler).onBlockComplete(req);
}
function failLater(req: BlockRequest, err: NvmfNbdError): void {
  process.nextTick(failNow, req, err);
}
function failNow(req: BlockRequest, err: NvmfNbdError): void {
  (req.handler as BlockHandler).onBlockError(req, err);
}

/** A {@link BlockHandler} settling a promise (the promise API over the record path). */
class PromiseBlockHandler implements BlockHandler {
  constructor(
    private readonly resolve: (data: Buffer | undefined) => void,
    private readonly reject: (e: Error) => void,
  ) {}

  onBlockComplete(req: BlockRequest): void {
    this.resolve(req.op === BlockOpCode.READ ? req.data : undefined);
  }

  onBlockError(_req: BlockRequest, err: NvmfNbdError): void {
    this.reject(err);
  }
}

/** One namespace of a controller, served as a block device. See the module comment. */
export class Namespace implements BlockDevice, IoOwner {
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

  // ---- the record path ----------------------------------------------------------------------

  /** A request record for {@link submit}: an {@link IoRequest} (the NBD connection pools them). */
  createRequest(): IoRequest {
    return new IoRequest();
  }

  /**
   * Run one request record (see the module comment). READ / WRITE / FLUSH go down the path as
   * the record itself; TRIM / ZEROES (rare) run the promise methods. Never completes
   * synchronously. A record not made by {@link createRequest} takes the promise methods.
   */
  submit(req: BlockRequest): void {
    if (!(req instanceof IoRequest)) {
      submitViaPromises(this, req);
      return;
    }
    if (this.retiredError !== undefined) {
      failLater(req, this.retiredError);
      return;
    }
    const op = req.op;
    switch (op) {
      case BlockOpCode.READ: {
        const length = req.length;
        if (length === 0) {
          req.data = EMPTY;
          completeLater(req);
          return;
        }
        try {
          req.slba = this.lba(req.offset, length, 'read');
        } catch (err) {
          failLater(req, err as NvmfNbdError);
          return;
        }
        req.nlb = length / this.blockSize;
        // The destination is made when the queue issues the read (IoRequest.allocDataIn).
        req.data = undefined;
        req.dataInLength = length;
        break;
      }
      case BlockOpCode.WRITE: {
        const data = req.data as Buffer;
        try {
          this.checkWritable();
          if (data.length === 0) {
            completeLater(req);
            return;
          }
          req.slba = this.lba(req.offset, data.length, 'write');
        } catch (err) {
          failLater(req, err as NvmfNbdError);
          return;
        }
        req.nlb = data.length / this.blockSize;
        req.fua = req.fua && this.canFua;
        break;
      }
      case BlockOpCode.FLUSH:
        if (!this.canFlush) {
          completeLater(req);
          return;
        }
        break;
      default:
        submitViaPromises(this, req);
        return;
    }
    req.nsid = this.nsid;
    req.ns = this;
    req.owner = this;
    this.inflight++;
    this.path.submitIo(req);
  }

  /** The path's completion of a record (IoOwner): in-flight count, the errno, the handler. */
  onIoDone(req: IoRequest, err: NvmfNbdError | undefined): void {
    req.owner = undefined;
    req.ns = undefined;
    this.settled();
    const h = req.handler as BlockHandler;
    if (err === undefined) h.onBlockComplete(req);
    else h.onBlockError(req, this.failure(err, OP_NAMES[req.op] as BlockOp));
  }

  /** The promise API over {@link submit}: one record per call. */
  private viaRecord(op: typeof BlockOpCode.READ | typeof BlockOpCode.WRITE | typeof BlockOpCode.FLUSH, offset: number, length: number, data: Buffer | undefined, fua: boolean): Promise<Buffer | undefined> {
    return new Promise((resolve, reject) => {
      const req = new IoRequest();
      req.op = op;
      req.offset = offset;
      req.length = length;
      req.data = data;
      req.fua = fua;
      req.handler = new PromiseBlockHandler(resolve, reject);
      this.submit(req);
    });
  }

  /** One WRITE record at an LBA, inside an operation already counted in flight (zero fill). */
  private writeBlocks(slba: bigint, data: Buffer, fua: boolean): Promise<void> {
    return new Promise<Buffer | undefined>((resolve, reject) => {
      const req = new IoRequest();
      req.op = BlockOpCode.WRITE;
      req.nsid = this.nsid;
      req.ns = this;
      req.slba = slba;
      req.nlb = data.length / this.blockSize;
      req.data = data;
      req.fua = fua;
      req.owner = new PromiseIoOwner(resolve, reject);
      this.path.submitIo(req);
    }).then(noValue);
  }

  // ---- BlockDevice promise API -----------------------------------------------------------------

  read(offset: number, length: number): Promise<Buffer> {
    return this.viaRecord(BlockOpCode.READ, offset, length, undefined, false) as Promise<Buffer>;
  }

  write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    return this.viaRecord(BlockOpCode.WRITE, offset, data.length, data, fua).then(noValue);
  }

  flush(): Promise<void> {
    return this.viaRecord(BlockOpCode.FLUSH, 0, 0, undefined, false).then(noValue);
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
        await this.writeBlocks(slba + BigInt(done / this.blockSize), zeroes.subarray(0, n), fua);
      }
    });
  }
}

function noValue(): void {
  // A promise of void from one of Buffer | undefined.
}
