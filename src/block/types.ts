import type { NvmfNbdError } from '../errors';

/** What a {@link BlockRequest} does. */
export const BlockOpCode = { READ: 0, WRITE: 1, FLUSH: 2, TRIM: 3, ZEROES: 4 } as const;
export type BlockOpCodeValue = (typeof BlockOpCode)[keyof typeof BlockOpCode];

/**
 * Receives the completion of {@link BlockRequest}s, as a method call (one handler object serves
 * many requests, like undici's dispatch handlers): no closure or promise per request.
 */
export interface BlockHandler {
  /** Done; for a READ, `req.data` holds exactly `req.length` bytes. */
  onBlockComplete(req: BlockRequest): void;
  /** Failed; `err.errno` is the NBD error to report (EIO when absent). */
  onBlockError(req: BlockRequest, err: NvmfNbdError): void;
}

/**
 * One request to a {@link BlockDevice}: a record the caller takes from
 * {@link BlockDevice.createRequest} once and reuses (pooled), fills, and hands to
 * {@link BlockDevice.submit}. The device may carry its own state in it (an NVMe namespace keeps
 * the whole NVMe command there), so the record must not be reused before its handler was called.
 */
export interface BlockRequest {
  op: BlockOpCodeValue;
  /** Byte offset and length (TRIM / ZEROES / READ; a WRITE's length is its data's). */
  offset: number;
  length: number;
  /** WRITE: the payload. READ: set by the device to the data read (owned by the caller after completion). */
  data: Buffer | undefined;
  /** WRITE / ZEROES: durable before completion. */
  fua: boolean;
  /** ZEROES: the device may deallocate (no NBD NO_HOLE). */
  mayDeallocate: boolean;
  /** ZEROES: fail with ENOTSUP rather than write zeroes slowly (NBD FAST_ZERO). */
  fastOnly: boolean;
  /** Called once when the request completes. */
  handler: BlockHandler | undefined;
  /**
   * A layer in front of the device that must see the completion first (the sub-block range
   * lock) puts itself in `handler` and keeps the caller's handler here until it passes it on.
   */
  upstream: BlockHandler | undefined;
  /** The caller's own: a 64-bit cookie (two u32) and a kind, opaque to devices. */
  cookieHi: number;
  cookieLo: number;
  kind: number;
}

/** A plain {@link BlockRequest} (devices that keep no state of their own in requests). */
export class SimpleBlockRequest implements BlockRequest {
  op: BlockOpCodeValue = BlockOpCode.READ;
  offset = 0;
  length = 0;
  data: Buffer | undefined = undefined;
  fua = false;
  mayDeallocate = false;
  fastOnly = false;
  handler: BlockHandler | undefined = undefined;
  upstream: BlockHandler | undefined = undefined;
  cookieHi = 0;
  cookieLo = 0;
  kind = 0;
}

/**
 * The byte-addressed block device the NBD server serves. The NVMe namespace mapping
 * (`src/controller/namespace.ts`) and the in-memory device used in tests both implement it, so the
 * NBD layer knows nothing of NVMe.
 *
 * Offsets and lengths are in bytes and are already checked by the caller to be inside the device
 * and multiples of `blockSize`. Implementations split requests larger than what the backend
 * accepts in one command. Failures are `NvmfNbdError`s whose `errno` is the NBD error to report.
 */
export interface BlockDevice {
  /** Size in bytes (a multiple of blockSize). */
  readonly size: number;
  /** Logical block size in bytes (512 or 4096 typically): the NBD minimum block size. */
  readonly blockSize: number;
  /** Largest single request accepted, in bytes (the NBD maximum block size, at least 32 MiB). */
  readonly maxRequest: number;
  readonly readOnly: boolean;
  /** The device honours flush (NBD SEND_FLUSH). */
  readonly canFlush: boolean;
  /** The device honours force-unit-access writes (NBD SEND_FUA). */
  readonly canFua: boolean;
  /** Deallocate is supported (NBD SEND_TRIM). */
  readonly canTrim: boolean;
  /** Write Zeroes is supported (NBD SEND_WRITE_ZEROES). */
  readonly canWriteZeroes: boolean;
  /** Zeroing can be done without writing data (NBD SEND_FAST_ZERO). */
  readonly canFastZero: boolean;

  /** Read `length` bytes at `offset`. The returned buffer is owned by the caller. */
  read(offset: number, length: number): Promise<Buffer>;
  /** Write `data` at `offset`; with `fua` the data is durable when the promise resolves. */
  write(offset: number, data: Buffer, fua: boolean): Promise<void>;
  /** Make every completed write durable. */
  flush(): Promise<void>;
  /** Deallocate the range; reads afterwards may return anything (NVMe: often zeroes). */
  trim(offset: number, length: number): Promise<void>;
  /**
   * Zero the range. `mayDeallocate` (NBD without NO_HOLE) lets the backend punch a hole;
   * `fastOnly` (NBD FAST_ZERO) asks to fail with ENOTSUP rather than fall back to writing zeroes.
   */
  writeZeroes(offset: number, length: number, opts: { mayDeallocate: boolean; fua: boolean; fastOnly: boolean }): Promise<void>;

  /** A new request record for {@link submit} (callers pool them). */
  createRequest(): BlockRequest;
  /**
   * Run `req` (made by {@link createRequest}); completes exactly once through `req.handler`,
   * never synchronously inside this call. The record path of the promise methods above: what
   * the NBD server uses for every request.
   */
  submit(req: BlockRequest): void;
}

/**
 * {@link BlockDevice.submit} for a device whose work is its promise methods (memory device,
 * test devices): each request becomes one call, its settlement the handler call.
 */
export function submitViaPromises(dev: BlockDevice, req: BlockRequest): void {
  let p: Promise<unknown>;
  try {
    switch (req.op) {
      case BlockOpCode.READ:
        p = dev.read(req.offset, req.length).then((d) => { req.data = d; });
        break;
      case BlockOpCode.WRITE:
        p = dev.write(req.offset, req.data as Buffer, req.fua);
        break;
      case BlockOpCode.FLUSH:
        p = dev.flush();
        break;
      case BlockOpCode.TRIM:
        p = dev.trim(req.offset, req.length);
        break;
      default:
        p = dev.writeZeroes(req.offset, req.length, { mayDeallocate: req.mayDeallocate, fua: req.fua, fastOnly: req.fastOnly });
        break;
    }
  } catch (err) {
    p = Promise.reject(err);
  }
  p.then(
    () => (req.handler as BlockHandler).onBlockComplete(req),
    (err: unknown) => (req.handler as BlockHandler).onBlockError(req, err as NvmfNbdError),
  );
}
