/**
 * The request record (issue 9 item 2): ONE object per NBD request that travels down —
 * namespace → resilient controller → controller → queue pair — and back up by method calls, no
 * per-request promise or closure. It is at once
 * - the {@link BlockRequest} the NBD connection filled (offset, length, data, its cookie),
 * - the NVMe I/O (nsid, slba, nlb, its own 64-byte SQE, reused),
 * - the resilient controller's held / re-driven operation (seq, bytes),
 * - the queue pair's {@link QueueCommand} (cid, R2T / C2HData progress, deadline).
 * The caller (the NBD connection) pools records per connection; a record is reused only after
 * its handler was called.
 *
 * Completion climbs one owner at a time: the queue pair calls `onQpComplete/onQpError`, which
 * call `owner.onIoDone(req, err)`. Whoever submits a record to the next layer down and wants its
 * completion first sets itself as `owner` (the {@link Namespace} before the path; the multipath
 * layer interposes keeping the previous owner in `outer`, then the resilient controller keeping
 * it in `upper`); the controller's MDTS split uses part records of its own (a counter on the
 * parent, no promises).
 */
import { QueueCommand } from '../transport/queue-command';
import type { Cqe } from '../wire/cqe';
import type { NvmfNbdError } from '../errors';
import { BlockOpCode, type BlockHandler, type BlockOpCodeValue, type BlockRequest } from '../block/types';
import { ioBuffer } from '../block/io-buffers';

/** Receives an {@link IoRequest}'s completion from the layer below. */
export interface IoOwner {
  onIoDone(req: IoRequest, err: NvmfNbdError | undefined): void;
}

/** The namespace object that issued a request, as the path sees it (retired → fail held I/O). */
export interface IssuingNamespace {
  readonly retiredReason: NvmfNbdError | undefined;
}

/** See the module comment. */
export class IoRequest extends QueueCommand implements BlockRequest {
  // ---- BlockRequest (filled by the caller) ----
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

  // ---- NVMe I/O (filled by the namespace) ----
  nsid = 0;
  slba = 0n;
  /** Blocks (1-based); for READ / WRITE `data` holds exactly nlb · block size bytes. */
  nlb = 0;
  /** The namespace object that issued it. */
  ns: IssuingNamespace | undefined = undefined;

  // ---- routing ----
  /** Gets the completion from the layer below. */
  owner: IoOwner | undefined = undefined;
  /** The owner an interposing layer (the resilient controller) hands the completion on to. */
  upper: IoOwner | undefined = undefined;

  // ---- multipath (controller/multipath.ts) ----
  /** The owner the multipath layer hands the completion on to (the namespace). */
  outer: IoOwner | undefined = undefined;
  /** The path it was last sent on (a `MultipathPathState`), for per-path counters and failover. */
  mpPath: object | undefined = undefined;
  /** Times it was sent again after a path status or a lost path (bounded). */
  mpRetries = 0;
  /** Set by a resilient controller in pass-back mode: the association it ran on is gone and the
   * record was handed back instead of held (the multipath layer decides where it runs again). */
  pathLost = false;
  /** Submission order across paths (the multipath layer's own counter). */
  mpSeq = 0;

  // ---- resilient controller ----
  /** Submission order (held requests are re-driven in it). */
  seq = 0;
  /** Bytes counted against the hold limit. */
  bytes = 0;
  /** The association it was last sent on (its `alive` tells a teardown from an answer). */
  ctrl: { readonly alive: boolean } | undefined = undefined;

  // ---- controller: MDTS split ----
  /** For a part: the request it is part of. */
  parent: IoRequest | undefined = undefined;
  /** For a split request: parts not completed yet. */
  partsPending = 0;
  /** For a split request: the first part's error. */
  partError: NvmfNbdError | undefined = undefined;
  /** For a part of a read: where its bytes start in the parent's destination. */
  partOffset = 0;

  constructor() {
    super();
    // Every use rewrites it whole (fillSqeIo zero-fills): a slice of the shared pool is enough.
    this.sqe = Buffer.allocUnsafe(64);
  }

  /**
   * A read's destination, made when the queue issues it (a read waiting for a queue slot holds no
   * buffer: with 4 exports × QD128 over 2 queues of 128, half the reads wait). A whole request
   * takes a {@link ioBuffer} of its length; a part of a split read takes its view of the
   * parent's, which the first part to be issued makes. Issued again (a reconnect, another path),
   * the request keeps the buffer it has.
   */
  override allocDataIn(): Buffer {
    const p = this.parent;
    if (p === undefined) return (this.data ??= ioBuffer(this.dataInLength));
    const whole = (p.data ??= ioBuffer(p.dataInLength));
    return whole.subarray(this.partOffset, this.partOffset + this.dataInLength);
  }

  /** Bytes of data it moves: a write's payload, a read's destination (made or still to be). */
  get payloadBytes(): number {
    if (this.op === BlockOpCode.FLUSH) return 0;
    return this.data?.length ?? (this.op === BlockOpCode.READ ? this.dataInLength : 0);
  }

  onQpComplete(_cqe: Cqe): void {
    (this.owner as IoOwner).onIoDone(this, undefined);
  }

  onQpError(err: NvmfNbdError): void {
    (this.owner as IoOwner).onIoDone(this, err);
  }
}

/** Hand `err` (or success) to `req.owner` outside the caller's stack (completion is never synchronous). */
export function ioDoneLater(req: IoRequest, err: NvmfNbdError | undefined): void {
  process.nextTick(ioDoneNow, req, err);
}

function ioDoneNow(req: IoRequest, err: NvmfNbdError | undefined): void {
  (req.owner as IoOwner).onIoDone(req, err);
}

/** An {@link IoOwner} settling a promise: the public promise API over the record path. */
export class PromiseIoOwner implements IoOwner {
  constructor(
    private readonly resolve: (data: Buffer | undefined) => void,
    private readonly reject: (e: Error) => void,
  ) {}

  onIoDone(req: IoRequest, err: NvmfNbdError | undefined): void {
    if (err !== undefined) this.reject(err);
    else this.resolve(req.op === BlockOpCode.READ ? req.data : undefined);
  }
}
