/**
 * The reconnect state machine (issue 4, items 2–4): a controller that survives the loss of its
 * association, as the Linux and FreeBSD hosts do.
 *
 * ```
 *            connect() ok                 association lost (any queue: socket, TermReq,
 *   ────────────────────────▶ LIVE ─────  protocol error, timeout, keep-alive, watchdog)
 *                              ▲    \                     │
 *          reconnected, old    │     \ close()            ▼
 *          sockets gone and    │      ▼             CONNECTING ── every reconnect_delay: admin queue,
 *          quiesce time over   │   DELETING ──▶ DEAD     │         enable, Identify, I/O queues
 *                              └──────────────────────────┘
 *                                  ctrl_loss_tmo expired / subsystem changed / DNR ──▶ DELETING ──▶ DEAD
 * ```
 *
 * Hold and re-drive happen at the block level: each request (one NBD request — its
 * {@link IoRequest} record itself is what is held and re-driven — or one deallocate / write
 * zeroes / admin call, which the controller may split into several NVMe commands) is one
 * operation. While
 * CONNECTING new operations wait in a FIFO bounded in bytes; operations that were in flight on
 * the lost association join that FIFO in their original submission order. Reads and writes
 * are idempotent at the block level, so running an operation again is safe — but only once the
 * old association can no longer execute anything: every socket of it is closed, and the quiesce
 * time has passed since the loss was detected: 2·KATO + the target's keep-alive grace
 * (default max(5 s, KATO/2)) + the controller's Command Quiesce Time. A write of the old
 * association may still reach the target after we closed our socket (the kernel keeps
 * retransmitting unsent bytes; a healed partition delivers them) or sit queued in the target's
 * backend; re-driven at once it would land AFTER the re-driven copy or after a newer write to
 * the same block — the stale-write corruption SPDK hit when it retried on another path at once,
 * and the reason NVMe added CQT (TP 4129). A target drops an association whose host is silent
 * for KATO plus its own grace: Linux nvmet with traffic-based keep-alive up to 2·KATO, our
 * embedded target KATO + max(5 s, KATO/2). After that the stale bytes meet a closed connection.
 * Hence KATO 0 (never expire) is refused: with it no wait is long enough.
 */
import { EventEmitter } from 'node:events';
import type { AuthOutcome } from './auth';
import { ErrorCode, NvmfNbdError } from '../errors';
import { NbdErrno } from '../block/errno';
import type { Completion } from '../transport/queue-pair';
import { AdminOpcode } from '../wire';
import type { AnaLog, IdentifyController } from '../wire';
import { Controller } from './controller';
import type { ControllerOptions, ControllerStats, NamespaceChanges, NamespaceInfo } from './controller';
import { Namespace, type NamespacePath } from './namespace';
import { BlockOpCode } from '../block/types';
import { IoRequest, PromiseIoOwner, ioDoneLater, type IoOwner } from './io-request';

/** States of a {@link ResilientController} (`list` shows them). */
export const CtrlState = { LIVE: 'live', CONNECTING: 'connecting', DELETING: 'deleting', DEAD: 'dead' } as const;
export type CtrlStateValue = (typeof CtrlState)[keyof typeof CtrlState];

/** Recovery policy, after Linux's nvme-fabrics options of the same names. */
export interface ResilienceOptions {
  /** Delay between reconnect attempts (Linux reconnect_delay). Default 10000. */
  readonly reconnectDelayMs?: number;
  /** Give up this long after the association was lost (Linux ctrl_loss_tmo); −1 = never. Default 600000. */
  readonly ctrlLossTmoMs?: number;
  /** Fail held I/O with EIO this long after the loss while reconnecting goes on; −1 = off (default). */
  readonly fastIoFailTmoMs?: number;
  /** Bytes of held operations (read lengths + write payloads) before new ones fail with EIO. Default 256 MiB. */
  readonly holdLimitBytes?: number;
  /**
   * How long the target keeps a silent association beyond its KATO (default max(5000, KATO/2):
   * covers Linux nvmet and the embedded target's default `keepAliveGraceMs`).
   */
  readonly targetKeepAliveGraceMs?: number;
  /** Override the whole quiesce time before re-driving (tests; default {@link quiesceTimeMs}). */
  readonly quiesceMs?: number;
  /** Serve every namespace read-only (the {@link Namespace} objects refuse writes with EPERM). */
  readonly readOnlyNamespaces?: boolean;
}

/**
 * Time after a detected loss before held I/O may be re-driven: 2·KATO + the target's keep-alive
 * grace (default max(5000, KATO/2)) + CQT. By then every target we know has dropped the old
 * association (nvmet with TBKAS waits up to 2·KATO; the embedded target KATO + max(5 s, KATO/2)).
 */
export function quiesceTimeMs(kato: number, cqtMs: number, targetGraceMs?: number): number {
  return 2 * kato + (targetGraceMs ?? Math.max(5000, Math.floor(kato / 2))) + cqtMs;
}

/** Defaults of {@link ResilienceOptions}. */
export const RESILIENCE_DEFAULTS = {
  reconnectDelayMs: 10_000,
  ctrlLossTmoMs: 600_000,
  fastIoFailTmoMs: -1,
  holdLimitBytes: 256 << 20,
} as const;

/** `describeState()`: what `list` prints. */
export interface CtrlStateDescription {
  state: CtrlStateValue;
  /** Successful reconnects since connect. */
  reconnects: number;
  /** Reconnect attempts in the current outage (0 when live). */
  attempts: number;
  lastError?: { code: string; message: string };
  /** When the current state was entered (ISO 8601). */
  since: string;
}

/** One block-level operation: run on an association, held and re-driven when that fails. */
interface Op {
  readonly seq: number;
  /** The namespace of an I/O operation (undefined for admin commands). */
  readonly nsid: number | undefined;
  /** The namespace object that issued it: once retired, the held operation fails with its error. */
  readonly ns: Namespace | undefined;
  readonly bytes: number;
  /** Safe to run again after its association died (block I/O, idempotent admin reads). */
  readonly redrive: boolean;
  readonly run: (c: Controller) => Promise<unknown>;
  resolve(v: unknown): void;
  reject(e: Error): void;
}

/** Admin opcodes that only read, so running one again after a lost association is harmless. */
const IDEMPOTENT_ADMIN: ReadonlySet<number> = new Set([AdminOpcode.IDENTIFY, AdminOpcode.GET_LOG_PAGE, AdminOpcode.GET_FEATURES]);

/** Errors that make reconnecting pointless (the Linux host removes the controller too). */
function isFatalReconnectError(err: unknown): boolean {
  if (!(err instanceof NvmfNbdError)) return false;
  if (err.code === ErrorCode.SUBSYSTEM_CHANGED) return true;
  // A Connect refused with Do Not Retry (unknown subsystem, host not allowed…).
  return err.code === ErrorCode.CONNECT_FAILED && err.status !== undefined && err.status.dnr;
}

function asError(err: unknown, fallback: string): NvmfNbdError {
  return err instanceof NvmfNbdError ? err : new NvmfNbdError(ErrorCode.CONNECTION_CLOSED, `${fallback}: ${String(err)}`, { cause: err });
}

/**
 * A controller that reconnects, and the owner of one {@link Namespace} object per usable
 * namespace ({@link namespace}): the block devices the NBD exports serve, which keep working
 * across reconnects. A namespace removed or reformatted to another block size has its object
 * retired (its I/O fails with EIO, held I/O included) before `namespaces` is emitted; a
 * reformatted or new one gets a new object. Events: `state` (CtrlStateValue), `namespaces`
 * ({@link NamespaceChanges}, from an AEN or found after a reconnect), `dead` (NvmfNbdError:
 * ctrl_loss_tmo expired or the subsystem changed), `close` (err?) once at the end (DEAD).
 */
export class ResilientController extends EventEmitter implements NamespacePath, IoOwner {
  readonly options: ControllerOptions & ResilienceOptions;
  private ctrl: Controller;
  private readonly subsystemNqn: string;
  private stateValue: CtrlStateValue = CtrlState.LIVE;
  private stateSince = new Date();
  private reconnectCount = 0;
  private attemptCount = 0;
  private lastErr: NvmfNbdError | undefined;
  private deadErr: NvmfNbdError | undefined;
  /** Operations waiting for a new association, in submission order (records and closures). */
  private readonly held: Array<Op | IoRequest> = [];
  private heldBytes = 0;
  private seq = 0;
  private failFast = false;
  private lossTimer: NodeJS.Timeout | undefined;
  private fastFailTimer: NodeJS.Timeout | undefined;
  private wake: (() => void) | undefined;
  private recovering: Promise<void> | undefined;
  private closing: Promise<void> | undefined;
  /** The block device of each usable namespace (see {@link namespace}). */
  private readonly nsObjects = new Map<number, Namespace>();
  /** Pass-back mode (see {@link setPassBack}). */
  private passBack = false;

  private constructor(ctrl: Controller, o: ControllerOptions & ResilienceOptions) {
    super();
    this.options = o;
    this.ctrl = ctrl;
    this.subsystemNqn = ctrl.identify.subnqn;
    for (const info of ctrl.namespaces.values()) this.makeNamespace(info);
    this.adopt(ctrl);
  }

  /**
   * Connect the first association; failing here is an error, as with {@link Controller.connect}.
   * @throws NVMF_ERR_INVALID_ARGUMENT for `kato: 0`: keep-alive is what makes the target drop a
   * lost association, without it a re-driven write could be overtaken by a stale copy.
   */
  static async connect(o: ControllerOptions & ResilienceOptions): Promise<ResilientController> {
    if (o.kato === 0 && o.discovery !== true) {
      throw new NvmfNbdError(ErrorCode.INVALID_ARGUMENT,
        'keep-alive is required for safe reconnects: KATO 0 lets the target keep a lost association forever, so held writes could never be re-driven safely');
    }
    const ctrl = await Controller.connect(o);
    return new ResilientController(ctrl, o);
  }

  // ---- state --------------------------------------------------------------------------------

  get state(): CtrlStateValue {
    return this.stateValue;
  }
  /**
   * Whether I/O submitted now would be held for a reconnect (CONNECTING, fast_io_fail_tmo not
   * expired) — a multipath subsystem prefers such a path over one that would fail it.
   */
  get holdsIo(): boolean {
    return this.stateValue === CtrlState.CONNECTING && !this.failFast;
  }
  /** Successful reconnects since connect. */
  get reconnects(): number {
    return this.reconnectCount;
  }
  /** Reconnect attempts in the current outage. */
  get attempts(): number {
    return this.attemptCount;
  }
  /** The error that ended the last association (or the last failed attempt). */
  get lastError(): NvmfNbdError | undefined {
    return this.lastErr;
  }
  /** Bytes of operations waiting for a new association. */
  get heldOps(): { count: number; bytes: number } {
    return { count: this.held.length, bytes: this.heldBytes };
  }

  /** What `list` shows. */
  describeState(): CtrlStateDescription {
    const e = this.lastErr;
    return {
      state: this.stateValue,
      reconnects: this.reconnectCount,
      attempts: this.attemptCount,
      ...(e !== undefined ? { lastError: { code: e.code, message: e.message } } : {}),
      since: this.stateSince.toISOString(),
    };
  }

  private setState(s: CtrlStateValue): void {
    if (this.stateValue === s) return;
    this.stateValue = s;
    this.stateSince = new Date();
    this.emit('state', s);
  }

  // ---- the current association's facts ------------------------------------------------------

  get cntlid(): number { return this.ctrl.cntlid; }
  /** DH-HMAC-CHAP outcome of the current association's admin queue (undefined without one). */
  get authentication(): AuthOutcome | undefined { return this.ctrl.authentication; }
  get identify(): IdentifyController { return this.ctrl.identify; }
  get identifyRaw(): Buffer { return this.ctrl.identifyRaw; }
  get namespaces(): ReadonlyMap<number, NamespaceInfo> { return this.ctrl.namespaces; }
  /** Active namespaces beyond maxNamespaces, not served. */
  get namespacesOverLimit(): number { return this.ctrl.namespacesOverLimit; }
  get ioQueueCount(): number { return this.ctrl.ioQueueCount; }
  get maxTransfer(): number { return this.ctrl.maxTransfer; }
  get version(): number { return this.ctrl.version; }
  get oncs(): number { return this.ctrl.oncs; }
  /** The ANA log of the current (or last) association; undefined without ANA reporting. */
  get anaLog(): AnaLog | undefined { return this.ctrl.anaLog; }
  /** The current association reports ANA (CMIC bit 3). */
  get anaReporting(): boolean { return this.ctrl.anaReporting; }
  /** Re-read the ANA log on the live association (emits `ana`); rejects when not live. */
  refreshAnaLog(): Promise<AnaLog> {
    if (this.stateValue !== CtrlState.LIVE) return Promise.reject(new NvmfNbdError(ErrorCode.CONTROLLER_LOST, 'not live'));
    return this.ctrl.refreshAnaLog();
  }
  get volatileWriteCache(): boolean { return this.ctrl.volatileWriteCache; }
  /** Queue counters of the current (or last) association. */
  stats(): ControllerStats { return this.ctrl.stats(); }

  // ---- namespaces -----------------------------------------------------------------------------

  /**
   * The block device of namespace `nsid` (what an NBD export serves), or undefined when the
   * namespace is not active or not usable. The same object until the namespace is removed or
   * reformatted; then it is retired and (reformatted) replaced by a new one.
   */
  namespace(nsid: number): Namespace | undefined {
    return this.nsObjects.get(nsid);
  }

  private makeNamespace(info: NamespaceInfo): void {
    if (!info.usable) return;
    try {
      this.nsObjects.set(info.nsid, new Namespace(this, info, { readOnly: this.options.readOnlyNamespaces === true }));
    } catch {
      // Not servable (e.g. beyond 2^53 bytes): no object; the session reports the reason.
    }
  }

  /**
   * Keep the namespace objects in step with the controller's namespace map: retire removed and
   * reformatted ones (before anything is re-driven), make objects for new and reformatted ones.
   * A capacity change keeps the object (an NBD export cannot change size under its clients).
   */
  private syncNamespaces(ch: NamespaceChanges): void {
    for (const nsid of ch.removed) {
      this.nsObjects.get(nsid)?.retire('removed');
      this.nsObjects.delete(nsid);
    }
    for (const nsid of [...ch.added, ...ch.resized]) {
      const info = this.ctrl.namespaces.get(nsid);
      const old = this.nsObjects.get(nsid);
      if (old !== undefined && info !== undefined && info.usable && info.lbaSize === old.blockSize) continue;
      if (old !== undefined) {
        old.retire(info === undefined ? 'removed' : 'reformatted');
        this.nsObjects.delete(nsid);
      }
      if (info !== undefined) this.makeNamespace(info);
    }
  }

  // ---- multipath: pass-back mode ---------------------------------------------------------------

  /**
   * Pass-back mode, for a path of a multipath subsystem (`multipath.ts`): an I/O request whose
   * association died while it was outstanding is NOT held and re-driven here — the record is
   * handed back to its submitter with `pathLost` set (deallocate / write zeroes reject with
   * NVMF_ERR_PATH_LOST), which decides where and when it runs again (reads elsewhere at once,
   * writes after the write-hold time). New requests submitted while reconnecting are still held
   * here, and {@link takeHeldRecords} gives those back. Off (the default): today's single-path
   * behaviour, unchanged.
   */
  setPassBack(on: boolean): void {
    this.passBack = on;
  }

  /**
   * Remove every held READ / WRITE / FLUSH record (none was sent on the lost association in
   * pass-back mode) and return them with their submitter as owner again, in submission order.
   */
  takeHeldRecords(): IoRequest[] {
    const out: IoRequest[] = [];
    for (let i = 0; i < this.held.length;) {
      const op = this.held[i] as Op | IoRequest;
      if (op instanceof IoRequest) {
        this.held.splice(i, 1);
        this.heldBytes -= op.bytes;
        op.owner = op.upper;
        op.upper = undefined;
        op.ctrl = undefined;
        out.push(op);
      } else {
        i++;
      }
    }
    return out;
  }

  // ---- operations -----------------------------------------------------------------------------

  /**
   * The record path (NamespacePath): `req` (READ / WRITE / FLUSH, set up as for
   * Controller.submitIo) runs on the current association; while reconnecting the record itself
   * is held and re-driven. Completes once through the owner it had when submitted, never
   * synchronously. `req.ns` (default: the current object of `req.nsid`) retired → its error.
   */
  submitIo(req: IoRequest): void {
    req.upper = req.owner;
    req.owner = this;
    req.seq = this.seq++;
    req.bytes = req.payloadBytes;
    req.ns ??= this.nsObjects.get(req.nsid);
    this.dispatchIo(req);
  }

  private dispatchIo(req: IoRequest): void {
    switch (this.stateValue) {
      case CtrlState.LIVE: {
        const retired = req.ns?.retiredReason;
        if (retired !== undefined) {
          this.finishIoLater(req, retired);
          return;
        }
        req.ctrl = this.ctrl;
        this.ctrl.submitIo(req);
        return;
      }
      case CtrlState.CONNECTING:
        if (this.failFast) this.finishIoLater(req, this.eio(ErrorCode.CONTROLLER_LOST, 'fast_io_fail_tmo expired while reconnecting'));
        else this.hold(req);
        return;
      case CtrlState.DELETING:
        this.finishIoLater(req, new NvmfNbdError(ErrorCode.CONTROLLER_DELETED, 'controller is being deleted', { errno: NbdErrno.ESHUTDOWN }));
        return;
      case CtrlState.DEAD:
        this.finishIoLater(req, this.eio(this.deadErr?.code ?? ErrorCode.CONTROLLER_DELETED, this.deadErr?.message ?? 'controller deleted'));
        return;
      default: {
        const never: never = this.stateValue;
        throw new Error(`unknown state ${String(never)}`);
      }
    }
  }

  /**
   * A record came back from the association (IoOwner). The association is gone: the error says
   * nothing about the request itself (the queue teardown failed it), so it is held and
   * re-driven. Otherwise (NVMe status, digest, short read on a live association) it is the answer.
   */
  onIoDone(req: IoRequest, err: NvmfNbdError | undefined): void {
    if (err === undefined) {
      this.finishIo(req, undefined);
      return;
    }
    // A queue fails its commands before its 'close' reaches the controller: decide once that
    // synchronous teardown has run (errors only; a tick, as the promise path had).
    process.nextTick(ioFailed, this, req, err);
  }

  /** @internal See {@link onIoDone}. */
  ioFailedAfterTeardown(req: IoRequest, err: NvmfNbdError): void {
    if (req.ctrl !== undefined && !req.ctrl.alive) {
      req.ctrl = undefined;
      if (this.passBack) {
        req.pathLost = true;
        this.finishIo(req, err);
        return;
      }
      this.dispatchIo(req);
      return;
    }
    this.finishIo(req, err);
  }

  /** Hand the record back to the owner it was submitted by. */
  private finishIo(req: IoRequest, err: NvmfNbdError | undefined): void {
    req.owner = req.upper;
    req.upper = undefined;
    req.ctrl = undefined;
    (req.owner as IoOwner).onIoDone(req, err);
  }

  private finishIoLater(req: IoRequest, err: NvmfNbdError): void {
    req.owner = req.upper;
    req.upper = undefined;
    req.ctrl = undefined;
    ioDoneLater(req, err);
  }

  /** A record for the promise API by NSID; `ns` as in {@link submitIo}. */
  private promiseIo(op: (typeof BlockOpCode)['READ' | 'WRITE' | 'FLUSH'], nsid: number, slba: bigint, nlb: number, data: Buffer | undefined, fua: boolean, ns: Namespace | undefined): Promise<Buffer | undefined> {
    return new Promise((resolve, reject) => {
      const req = new IoRequest();
      req.op = op;
      req.nsid = nsid;
      req.slba = slba;
      req.nlb = nlb;
      req.data = data;
      req.fua = fua;
      req.ns = ns;
      req.owner = new PromiseIoOwner(resolve, reject);
      this.submitIo(req);
    });
  }

  /** `into`: the destination (see Controller.read); a re-driven read rewrites it whole. */
  read(nsid: number, slba: bigint, nlb: number, into?: Buffer, ns?: Namespace): Promise<Buffer> {
    const lba = this.ctrl.namespaces.get(nsid)?.lbaSize;
    const dest = into ?? Buffer.allocUnsafe(lba === undefined ? 0 : nlb * lba);
    return this.promiseIo(BlockOpCode.READ, nsid, slba, nlb, dest, false, ns) as Promise<Buffer>;
  }
  async write(nsid: number, slba: bigint, data: Buffer, o: { fua?: boolean } = {}, ns?: Namespace): Promise<void> {
    const lba = this.ctrl.namespaces.get(nsid)?.lbaSize;
    if (data.length === 0) return;
    // A length that is not a whole number of blocks fails in the controller (INVALID_ARGUMENT).
    await this.promiseIo(BlockOpCode.WRITE, nsid, slba, lba === undefined ? 0 : data.length / lba, data, o.fua === true, ns);
  }
  async flush(nsid: number, ns?: Namespace): Promise<void> {
    await this.promiseIo(BlockOpCode.FLUSH, nsid, 0n, 0, undefined, false, ns);
  }
  deallocate(nsid: number, ranges: ReadonlyArray<{ slba: bigint; nlb: number }>, ns?: Namespace): Promise<void> {
    return this.submit(nsid, ns, 0, (c) => c.deallocate(nsid, ranges));
  }
  writeZeroes(nsid: number, slba: bigint, nlb: number, o: { deallocate?: boolean; fua?: boolean } = {}, ns?: Namespace): Promise<void> {
    return this.submit(nsid, ns, 0, (c) => c.writeZeroes(nsid, slba, nlb, o));
  }
  /**
   * An admin command. Held while reconnecting like I/O; but once sent, it is re-driven after a
   * lost association only when it is one of the idempotent reads the host issues itself
   * (Identify, Get Log Page, Get Features) and not a user pass-through (`passthru: true`):
   * the target may have executed it before the association died, and running e.g. a Format
   * or a vendor command twice is not harmless. Those fail with CONTROLLER_LOST (EIO) instead.
   * The SQE's cid is rewritten per attempt.
   */
  adminCommand(sqe: Buffer, o: { dataOut?: Buffer; dataInLength?: number; timeoutMs?: number; passthru?: boolean } = {}): Promise<Completion> {
    const { passthru, ...qo } = o;
    const redrive = passthru !== true && IDEMPOTENT_ADMIN.has(sqe[0] as number);
    return this.submit(undefined, undefined, (o.dataOut?.length ?? 0) + (o.dataInLength ?? 0), (c) => c.adminCommand(sqe, qo), redrive);
  }

  /**
   * `ns`: the namespace object issuing the operation (default: the current one of `nsid`), so
   * an operation held across a removal or reformat fails with that object's EIO.
   */
  private submit<T>(nsid: number | undefined, ns: Namespace | undefined, bytes: number, run: (c: Controller) => Promise<T>, redrive = true): Promise<T> {
    const owner = ns ?? (nsid !== undefined ? this.nsObjects.get(nsid) : undefined);
    return new Promise<T>((resolve, reject) => {
      this.dispatch({ seq: this.seq++, nsid, ns: owner, bytes, redrive, run, resolve: resolve as (v: unknown) => void, reject });
    });
  }

  private dispatch(op: Op): void {
    switch (this.stateValue) {
      case CtrlState.LIVE: {
        const retired = op.ns?.retiredReason;
        if (retired !== undefined) {
          // Removed, or its LBA math was done for the old block size: running it would hit the
          // wrong blocks (or another namespace that took the NSID).
          op.reject(retired);
          return;
        }
        this.execute(op, this.ctrl);
        return;
      }
      case CtrlState.CONNECTING:
        if (this.failFast) op.reject(this.eio(ErrorCode.CONTROLLER_LOST, 'fast_io_fail_tmo expired while reconnecting'));
        else this.hold(op);
        return;
      case CtrlState.DELETING:
        op.reject(new NvmfNbdError(ErrorCode.CONTROLLER_DELETED, 'controller is being deleted', { errno: NbdErrno.ESHUTDOWN }));
        return;
      case CtrlState.DEAD:
        op.reject(this.eio(this.deadErr?.code ?? ErrorCode.CONTROLLER_DELETED, this.deadErr?.message ?? 'controller deleted'));
        return;
      default: {
        const never: never = this.stateValue;
        throw new Error(`unknown state ${String(never)}`);
      }
    }
  }

  private execute(op: Op, ctrl: Controller): void {
    op.run(ctrl).then(op.resolve, (err: unknown) => {
      // The association is gone: the error says nothing about the operation itself (the queue
      // teardown rejected it), so it is held and re-driven. Otherwise (NVMe status, digest,
      // short read on a live association) the error is the operation's answer.
      if (ctrl.alive) op.reject(err as Error);
      else if (op.redrive && this.passBack && op.nsid !== undefined) {
        op.reject(new NvmfNbdError(ErrorCode.PATH_LOST, `association lost while the command was outstanding: ${(err as Error)?.message ?? String(err)}`, { cause: err }));
      } else if (op.redrive) this.dispatch(op);
      else {
        op.reject(new NvmfNbdError(ErrorCode.CONTROLLER_LOST,
          `association lost while the command was outstanding; not re-sent (the target may have executed it): ${(err as Error)?.message ?? String(err)}`,
          { errno: NbdErrno.EIO, cause: err }));
      }
    });
  }

  /** Insert in submission order (ops bounced from the lost association arrive late). */
  private hold(op: Op | IoRequest): void {
    const limit = this.options.holdLimitBytes ?? RESILIENCE_DEFAULTS.holdLimitBytes;
    if (this.heldBytes + op.bytes > limit) {
      this.fail(op, this.eio(ErrorCode.HOLD_QUEUE_FULL, `reconnecting: ${this.heldBytes} bytes of I/O already held (limit ${limit})`), true);
      return;
    }
    let i = this.held.length;
    while (i > 0 && (this.held[i - 1] as Op | IoRequest).seq > op.seq) i--;
    this.held.splice(i, 0, op);
    this.heldBytes += op.bytes;
  }

  /** Fail a held or holding operation (`later`: we may be inside its submitter's call). */
  private fail(op: Op | IoRequest, err: NvmfNbdError, later: boolean): void {
    if (!(op instanceof IoRequest)) op.reject(err);
    else if (later) this.finishIoLater(op, err);
    else this.finishIo(op, err);
  }

  private failHeld(err: NvmfNbdError): void {
    const ops = this.held.splice(0);
    this.heldBytes = 0;
    for (const op of ops) this.fail(op, err, false);
  }

  private eio(code: NvmfNbdError['code'], message: string): NvmfNbdError {
    return new NvmfNbdError(code, message, { errno: NbdErrno.EIO, cause: this.lastErr });
  }

  // ---- recovery -------------------------------------------------------------------------------

  private adopt(ctrl: Controller): void {
    this.ctrl = ctrl;
    ctrl.on('close', (err?: NvmfNbdError) => this.onAssociationLost(ctrl, err));
    ctrl.on('namespaces', (ch: NamespaceChanges) => this.noteNamespaceChanges(ch));
    ctrl.on('warning', (err: unknown) => this.emit('warning', err));
    ctrl.on('ana', (log: AnaLog) => this.emit('ana', log));
  }

  /** Retire / make namespace objects, then tell listeners. */
  private noteNamespaceChanges(ch: NamespaceChanges): void {
    this.syncNamespaces(ch);
    this.emit('namespaces', ch);
  }

  private onAssociationLost(ctrl: Controller, err: NvmfNbdError | undefined): void {
    if (ctrl !== this.ctrl || this.stateValue !== CtrlState.LIVE) return;
    this.lastErr = err ?? new NvmfNbdError(ErrorCode.CONNECTION_CLOSED, 'association closed');
    this.attemptCount = 0;
    this.failFast = false;
    this.setState(CtrlState.CONNECTING);
    const lossTmo = this.options.ctrlLossTmoMs ?? RESILIENCE_DEFAULTS.ctrlLossTmoMs;
    if (lossTmo >= 0) {
      this.lossTimer = setTimeout(() => {
        this.die(new NvmfNbdError(ErrorCode.CONTROLLER_LOST,
          `controller ${this.subsystemNqn}: not reconnected within ctrl_loss_tmo (${lossTmo} ms); last error: ${this.lastErr?.message ?? 'none'}`,
          { cause: this.lastErr, errno: NbdErrno.EIO }));
      }, lossTmo);
    }
    const fastTmo = this.options.fastIoFailTmoMs ?? RESILIENCE_DEFAULTS.fastIoFailTmoMs;
    if (fastTmo >= 0 && (lossTmo < 0 || fastTmo < lossTmo)) {
      this.fastFailTimer = setTimeout(() => {
        this.failFast = true;
        const err = this.eio(ErrorCode.CONTROLLER_LOST, `fast_io_fail_tmo (${fastTmo} ms) expired while reconnecting`);
        this.handBack(err);
        this.failHeld(err);
      }, fastTmo);
    }
    // recover() handles its own failures; a throwing event listener must not become an
    // unhandled rejection that kills the process.
    this.recovering = this.recover(ctrl).catch((err: unknown) => { this.emit('warning', err); });
  }

  /** Sleep that {@link close} and {@link die} cut short. */
  private pause(ms: number): Promise<void> {
    // close()/die() may have run before this sleep began (their wake found nothing to cut short).
    if (this.stateValue !== CtrlState.CONNECTING) return Promise.resolve();
    return new Promise((resolve) => {
      const t = setTimeout(done, Math.max(0, ms));
      const self = this;
      function done(): void {
        clearTimeout(t);
        if (self.wake === done) self.wake = undefined;
        resolve();
      }
      this.wake = done;
    });
  }

  private quiesceMs(old: Controller, next: Controller): number {
    if (this.options.quiesceMs !== undefined) return this.options.quiesceMs;
    const cqt = Math.max(old.commandQuiesceTimeMs, next.commandQuiesceTimeMs);
    return quiesceTimeMs(this.options.kato ?? 5000, cqt, this.options.targetKeepAliveGraceMs);
  }

  private async recover(old: Controller): Promise<void> {
    // The target's keep-alive clock last restarted no later than now (the loss was just
    // detected and our sockets close): the quiesce time counts from here.
    const lostAt = Date.now();
    // Nothing may be re-driven while a socket of the old association could still carry a command.
    await old.whenClosed();
    if (this.stateValue !== CtrlState.CONNECTING) return;
    const delay = this.options.reconnectDelayMs ?? RESILIENCE_DEFAULTS.reconnectDelayMs;
    for (;;) {
      await this.pause(delay);
      if (this.stateValue !== CtrlState.CONNECTING) return;
      this.attemptCount++;
      let next: Controller;
      try {
        next = await Controller.connect(this.options);
      } catch (err) {
        this.lastErr = asError(err, 'reconnect failed');
        if (isFatalReconnectError(err)) {
          this.die(this.lastErr);
          return;
        }
        continue;
      }
      if (this.stateValue !== CtrlState.CONNECTING) {
        await next.close();
        return;
      }
      if (next.identify.subnqn !== this.subsystemNqn) {
        next.destroy();
        this.lastErr = new NvmfNbdError(ErrorCode.SUBSYSTEM_CHANGED,
          `reconnect reached subsystem '${next.identify.subnqn}', not '${this.subsystemNqn}': giving up`);
        this.die(this.lastErr);
        return;
      }
      const wait = lostAt + this.quiesceMs(old, next) - Date.now();
      if (wait > 0) await this.pause(wait);
      if (this.stateValue !== CtrlState.CONNECTING) {
        await next.close();
        return;
      }
      if (!next.alive) {
        this.lastErr = new NvmfNbdError(ErrorCode.CONNECTION_CLOSED, 'new association lost before I/O resumed');
        continue;
      }
      this.resume(old, next);
      return;
    }
  }

  private resume(old: Controller, next: Controller): void {
    this.clearTimers();
    this.adopt(next);
    this.reconnectCount++;
    this.attemptCount = 0;
    this.failFast = false;
    this.setState(CtrlState.LIVE);
    const changes = diffNamespaces(old.namespaces, next.namespaces);
    // Before the re-drive below, so held I/O of a removed or reformatted namespace fails (EIO).
    if (changes.added.length + changes.removed.length + changes.resized.length > 0) this.noteNamespaceChanges(changes);
    // FIFO re-drive: dispatch issues synchronously, so submission order is kept.
    const ops = this.held.splice(0);
    this.heldBytes = 0;
    for (const op of ops) {
      if (op instanceof IoRequest) this.dispatchIo(op);
      else this.dispatch(op);
    }
  }

  private clearTimers(): void {
    if (this.lossTimer !== undefined) clearTimeout(this.lossTimer);
    if (this.fastFailTimer !== undefined) clearTimeout(this.fastFailTimer);
    this.lossTimer = undefined;
    this.fastFailTimer = undefined;
  }

  /**
   * Pass-back mode, giving up on held records (fast_io_fail_tmo, ctrl_loss_tmo): none of them
   * was sent, so they go back to the multipath subsystem (`handback` event with the error they
   * would fail with), which runs them on another path if one can — the single-path timeouts
   * apply to the namespace as a whole, not to whichever path happened to hold a request.
   */
  private handBack(err: NvmfNbdError): void {
    if (!this.passBack || this.listenerCount('handback') === 0) return;
    // Emitted even with no records: the subsystem's route choice changes with holdsIo.
    this.emit('handback', this.takeHeldRecords(), err);
  }

  /** Give up: fail held I/O with EIO, remove the controller (DELETING → DEAD). */
  private die(err: NvmfNbdError): void {
    if (this.stateValue === CtrlState.DEAD || this.stateValue === CtrlState.DELETING) return;
    this.clearTimers();
    this.deadErr = err;
    this.lastErr = err;
    this.setState(CtrlState.DELETING);
    this.wake?.();
    const eio = this.eio(err.code, err.message);
    this.handBack(eio);
    this.failHeld(eio);
    this.ctrl.destroy(err);
    this.setState(CtrlState.DEAD);
    this.emit('dead', err);
    this.emit('close', err);
  }

  /**
   * DELETING → orderly shutdown (CC.SHN) of a live association → DEAD. Held I/O fails with
   * ESHUTDOWN; a reconnect attempt in progress is waited for and closed. Never throws.
   */
  close(): Promise<void> {
    this.closing ??= (async () => {
      if (this.stateValue === CtrlState.DEAD) return;
      const wasLive = this.stateValue === CtrlState.LIVE;
      this.setState(CtrlState.DELETING);
      this.clearTimers();
      this.wake?.();
      this.failHeld(new NvmfNbdError(ErrorCode.CONTROLLER_DELETED, 'controller closed while reconnecting', { errno: NbdErrno.ESHUTDOWN }));
      if (wasLive) await this.ctrl.close();
      else this.ctrl.destroy();
      await this.recovering?.catch(() => undefined);
      this.setState(CtrlState.DEAD);
      this.emit('close', undefined);
    })();
    return this.closing;
  }
}

function ioFailed(rc: ResilientController, req: IoRequest, err: NvmfNbdError): void {
  rc.ioFailedAfterTeardown(req, err);
}

/** Namespaces added, removed or resized between two associations. */
export function diffNamespaces(before: ReadonlyMap<number, NamespaceInfo>, after: ReadonlyMap<number, NamespaceInfo>): NamespaceChanges {
  const out: NamespaceChanges = { added: [], removed: [], resized: [] };
  for (const [nsid, ns] of after) {
    const old = before.get(nsid);
    if (old === undefined) out.added.push(nsid);
    else if (old.nsze !== ns.nsze || old.lbaSize !== ns.lbaSize) out.resized.push(nsid);
  }
  for (const nsid of before.keys()) if (!after.has(nsid)) out.removed.push(nsid);
  out.added.sort((a, b) => a - b);
  out.removed.sort((a, b) => a - b);
  out.resized.sort((a, b) => a - b);
  return out;
}
