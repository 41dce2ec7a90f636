/**
 * One command as a queue pair runs it ({@link QueueCommand}), its promise wrapper and the
 * deferred failure helpers: the record the submit side hands to `QueuePair.submitCommand`
 * (issue 9 item 2). Split from queue-pair.ts, which keeps the connection and the wire work.
 */
import type { NvmfNbdError } from '../errors';
import type { Cqe } from '../wire/cqe';

const EMPTY = Buffer.alloc(0);

/** What a successful command resolves with. */
export interface Completion {
  readonly cqe: Cqe;
  /** The read data (exactly `dataInLength` bytes) when the command read data. */
  readonly data?: Buffer;
}

/**
 * One command as the queue pair runs it: what the submitter fills in (SQE, data, options) and
 * the queue's own per-command state, in one object the submitter owns and may reuse once
 * completed (a pooled request record, issue 9 item 2). Completion is a method call on the
 * command itself — no promise and no closure per command. {@link QueuePair.submit} wraps one in
 * a promise for the admin path, the CLI and tests.
 */
export abstract class QueueCommand {
  /** The 64-byte SQE; the queue sets its cid and SGL at issue. */
  sqe: Buffer = EMPTY;
  /** Host-to-controller data (writes), sent as views, never copied. */
  dataOut: Buffer | undefined = undefined;
  /**
   * Controller-to-host destination (reads): C2HData payloads are copied straight from the socket
   * chunks into it. When undefined and {@link dataInLength} > 0, the queue asks
   * {@link allocDataIn} for it at issue (not at submit: a command waiting for a slot holds none).
   */
  dataIn: Buffer | undefined = undefined;
  dataInLength = 0;
  /** Per-command timeout in ms; negative: the queue's default; `Infinity`: none (AER). */
  timeoutMs = -1;
  /** Force in-capsule data whatever its size (Fabrics Connect). */
  inCapsule = false;
  /** Complete with the CQE even when its status is an error (the caller decodes DW0). */
  acceptErrorStatus = false;

  // ---- the queue's state of the command (set at submit / issue) ----
  /** @internal */ cid = 0;
  /** @internal */ opcode = 0;
  /** @internal Data still to be sent on R2T (undefined when none or in-capsule). */
  r2tData: Buffer | undefined = undefined;
  /** @internal Next offset the controller may ask for in an R2T. */
  h2cNext = 0;
  /** @internal Bytes of C2HData received so far (= next expected datao). */
  received = 0;
  /** @internal LAST_PDU seen: no more C2HData may arrive for this command. */
  c2hDone = false;
  /** @internal */ digestError = false;
  /**
   * @internal Absolute deadline (ms), fixed at submit: time spent waiting for a slot counts, so a
   * queue whose SQ looks full (a slow or lying target) cannot hold a command past its timeout.
   */
  deadline = 0;
  /** @internal Already retried after a re-authentication. */
  authRetried = false;
  /** @internal Submission sequence number (see QueuePair.sqIssued): the SQ entry this command took. */
  sqSeq = 0;

  /**
   * @internal The destination of {@link dataInLength} bytes, asked for when the queue issues a
   * command whose {@link dataIn} is undefined. Overridden by request records that pool their
   * read buffers or share one among the parts of a split read.
   */
  allocDataIn(): Buffer {
    return Buffer.allocUnsafe(this.dataInLength);
  }

  /**
   * The controller completed the command successfully (or with an accepted error status). `cqe`
   * is valid only during the call (the queue refills the same object for its next completion).
   */
  abstract onQpComplete(cqe: Cqe): void;
  /** The command failed: an NVMe status, a digest / short read, or the queue's end. */
  abstract onQpError(err: NvmfNbdError): void;
}

/** A {@link QueueCommand} settling a promise ({@link QueuePair.submit}). */
export class PromiseCommand extends QueueCommand {
  constructor(
    private readonly resolve: (c: Completion) => void,
    private readonly reject: (e: Error) => void,
  ) {
    super();
  }

  onQpComplete(cqe: Cqe): void {
    // The queue reuses its CQE object for the next completion: the promise keeps a copy.
    const own: Cqe = { dw0: cqe.dw0, dw1: cqe.dw1, sqhd: cqe.sqhd, sqid: cqe.sqid, cid: cqe.cid, status: cqe.status, ok: cqe.ok };
    this.resolve(this.dataIn === undefined ? { cqe: own } : { cqe: own, data: this.dataIn });
  }

  onQpError(err: NvmfNbdError): void {
    this.reject(err);
  }
}

/** Fail `cmd` outside the submitter's call (completion is never synchronous). */
export function failLater(cmd: QueueCommand, err: NvmfNbdError): void {
  process.nextTick(failNow, cmd, err);
}

function failNow(cmd: QueueCommand, err: NvmfNbdError): void {
  cmd.onQpError(err);
}
