/**
 * One NBD client connection: fixed-newstyle handshake, then the transmission phase with
 * pipelining and out-of-order replies.
 *
 * Flow control: requests are parsed only while fewer than `maxInFlight` requests and
 * `maxInFlightBytes` bytes are in flight and the reply queue is below `maxInFlightBytes`;
 * otherwise the socket is paused and parsing resumes as replies complete. Unparsed bytes stay
 * in the parser's queue (nothing is parsed twice).
 *
 * Teardown has one path, {@link NbdConnection.destroy}; running it twice is harmless.
 */
import type { Duplex } from 'node:stream';
import { ErrorCode, NvmfNbdError, type ErrorCodeValue } from '../errors';
import type { BlockDevice } from '../block/types';
import { SUB_BLOCK_MAX_REQUEST, type SubBlockDevice } from '../block/sub-block';
import {
  BASE_ALLOCATION,
  ClientFlag,
  Cmd,
  CmdFlag,
  InfoType,
  KNOWN_CLIENT_FLAGS,
  NbdErrno,
  NbdOptionParser,
  NbdRequestParser,
  Opt,
  Rep,
  ReplyFlag,
  TransmissionFlag,
  encodeBlockStatus,
  encodeChunkError,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoBlockSize,
  encodeInfoDescription,
  encodeInfoExport,
  encodeInfoName,
  encodeOffsetDataHeader,
  encodeRepAck,
  encodeRepError,
  encodeRepMetaContext,
  encodeRepServer,
  encodeSimpleReply,
  nbdErrno,
  parseInfoRequest,
  parseMetaContextRequest,
  type HandshakeEvent,
  type NbdRequest,
} from '../wire/nbd';
import { WriteBatcher } from '../transport/write-batcher';

/** One log record. `code` is a stable error code when the record reports a failure. */
export interface NbdLogEntry {
  level: 'debug' | 'info' | 'warn' | 'error';
  code?: ErrorCodeValue;
  msg: string;
  /** Connection number (server-wide sequence). */
  conn?: number;
  export?: string;
}

/** Per-export counters, shared by all connections of the export. */
export interface NbdExportCounters {
  reads: number;
  writes: number;
  bytesRead: number;
  bytesWritten: number;
  flushes: number;
  trims: number;
  zeroes: number;
  /** Requests answered with a nonzero error. */
  errors: number;
}

/** An export as the connection sees it (owned by the server). */
export interface NbdExportEntry {
  readonly name: string;
  readonly device: BlockDevice;
  /**
   * The same device behind the export's range lock: every request of every connection goes
   * through it, so read-modify-writes of partial blocks are serialized against everything.
   */
  readonly sub: SubBlockDevice;
  readonly description: string;
  readonly counters: NbdExportCounters;
  readonly connections: Set<NbdConnection>;
  removed: boolean;
}

/** What a connection needs from its server. */
export interface NbdConnectionHost {
  /** The export called `name`; the empty name selects the default (first) export. */
  findExport(name: string): NbdExportEntry | undefined;
  listExports(): NbdExportEntry[];
  log(e: NbdLogEntry): void;
  readonly shuttingDown: boolean;
  readonly maxInFlight: number;
  readonly maxInFlightBytes: number;
  readonly handshakeTimeoutMs: number;
  /** After our FIN, how long a client that does not read may keep the socket (then destroyed). */
  readonly closeGraceMs: number;
  /** Connections in transmission on one export at most; GO beyond → ERR_POLICY. */
  readonly maxConnectionsPerExport: number;
  /** Transmission phase: close a connection that sent nothing for this long with nothing in flight (0 = never). */
  readonly idleTimeoutMs: number;
  /**
   * The server-wide budget of request bytes in flight plus reply bytes not yet taken by clients,
   * shared by every connection: true when it is used up. A connection holding bytes then stops
   * reading (those that do not read their replies keep holding them); one holding nothing may
   * still take one request, so a well-behaved client always makes progress.
   */
  budgetExhausted(): boolean;
  /** Call `resume` once when some connection released budget. */
  waitBudget(resume: () => void): void;
  /** A connection released budget (a reply was taken, a request ended). */
  budgetReleased(): void;
}

const Phase = { HANDSHAKE: 0, TRANSMISSION: 1, CLOSED: 2 } as const;
type PhaseValue = (typeof Phase)[keyof typeof Phase];

/** Context id we hand out for `base:allocation` on SET_META_CONTEXT. */
const BASE_ALLOCATION_ID = 1;
/** Handshake replies not yet taken by the client before we stop reading options (a client that
 *  sends LIST in a loop and reads nothing would otherwise grow the server without bound). */
export const HANDSHAKE_MAX_UNSENT = 1 << 20;
/** Options per connection: real clients send a handful; beyond this the client is haggling
 *  forever → ERR_POLICY and close (NBD_ERR_TOO_MANY_OPTIONS). */
export const MAX_HANDSHAKE_OPTIONS = 1024;

/**
 * Server side of one NBD connection. Created by `NbdServer`; call {@link start} once.
 */
export class NbdConnection {
  private phase: PhaseValue = Phase.HANDSHAKE;
  private readonly opts = new NbdOptionParser();
  private rq: NbdRequestParser | undefined;
  private exp: NbdExportEntry | undefined;
  private noZeroes = false;
  private structured = false;
  /**
   * The client asked for NBD_INFO_BLOCK_SIZE in GO: it agreed to our minimum (the LBA size) and
   * maximum (32 MiB), and gets EINVAL/EOVERFLOW outside them. Otherwise (GO without it, or
   * EXPORT_NAME) it agreed to no minimum: unaligned requests are served by read-modify-write and
   * requests up to SUB_BLOCK_MAX_REQUEST are taken.
   */
  private strictSizes = false;
  /** Export name the meta context was negotiated for, when `base:allocation` is selected. */
  private metaExport: string | undefined;
  private metaActive = false;
  private inFlight = 0;
  private inFlightBytes = 0;
  private pumping = false;
  /** Client sent DISC, or the server is shutting this connection down: stop taking work. */
  private draining = false;
  /** The client half-closed: finish what it sent, then close. */
  private peerEnded = false;
  /** Server shutdown / export removal: answer everything with ESHUTDOWN. */
  private shutdownErrno = 0;
  /** Export removed: even requests already running are answered ESHUTDOWN. */
  private failInFlight = false;
  private paused = false;
  /** Handshake: reading stopped until the client takes our replies (HANDSHAKE_MAX_UNSENT). */
  private handshakePaused = false;
  private optionCount = 0;
  private handshakeTimer: NodeJS.Timeout | undefined;
  /** Transmission idle timer (host.idleTimeoutMs), refreshed on every chunk received. */
  private idleTimer: NodeJS.Timeout | undefined;
  /** Waiting for the server-wide budget (registered with host.waitBudget). */
  private budgetWait = false;
  private resolveClosed!: () => void;
  /** Resolves once the socket is closed and all state released. */
  readonly closed: Promise<void> = new Promise((r) => {
    this.resolveClosed = r;
  });

  /** Replies produced in one tick leave in one writev (see write-batcher.ts). */
  private readonly out: WriteBatcher;

  constructor(
    private readonly host: NbdConnectionHost,
    private readonly socket: Duplex,
    readonly id: number,
  ) {
    this.out = new WriteBatcher(socket);
  }

  /** The export this connection is bound to (after GO / EXPORT_NAME). */
  get exportName(): string | undefined {
    return this.exp?.name;
  }

  /** True once the handshake has finished. */
  get inTransmission(): boolean {
    return this.phase === Phase.TRANSMISSION;
  }

  /** Send the greeting and start reading. */
  start(): void {
    const s = this.socket;
    s.on('data', (chunk: Buffer) => this.onData(chunk));
    s.on('end', () => this.onEnd());
    s.on('error', (err: Error) => this.destroy(ErrorCode.CONNECTION_CLOSED, `socket error: ${err.message}`, 'warn'));
    s.on('close', () => this.onClose());
    s.on('drain', () => {
      if (this.phase === Phase.TRANSMISSION) {
        this.pump();
        // Queued replies were taken: others waiting for the shared budget may go on.
        this.host.budgetReleased();
      } else if (this.phase === Phase.HANDSHAKE) {
        this.resumeHandshake();
      }
    });
    if (this.host.handshakeTimeoutMs > 0) {
      this.handshakeTimer = setTimeout(
        () => this.destroy(ErrorCode.NBD_HANDSHAKE_TIMEOUT, `no export chosen within ${this.host.handshakeTimeoutMs} ms`, 'warn'),
        this.host.handshakeTimeoutMs,
      );
      this.handshakeTimer.unref();
    }
    s.write(encodeGreeting());
  }

  /**
   * Stop taking work: requests already running finish (with ESHUTDOWN when `failInFlight`),
   * later ones are answered ESHUTDOWN, and the connection closes once nothing is in flight.
   * A connection still in the handshake is closed at once.
   */
  shutdown(failInFlight: boolean): void {
    if (this.phase === Phase.CLOSED) return;
    if (this.phase === Phase.HANDSHAKE) {
      this.endSocket();
      return;
    }
    this.shutdownErrno = NbdErrno.ESHUTDOWN;
    if (failInFlight) this.failInFlight = true;
    this.pump();
    this.maybeFinish();
  }

  /** Bytes this connection holds against the server-wide budget: requests in flight plus unsent replies. */
  get heldBytes(): number {
    return this.phase === Phase.CLOSED ? 0 : this.inFlightBytes + this.socket.writableLength;
  }

  /** The one teardown path: log (when given a code), destroy the socket. */
  destroy(code?: ErrorCodeValue, msg?: string, level: NbdLogEntry['level'] = 'warn'): void {
    if (this.phase === Phase.CLOSED) return;
    if (code !== undefined) this.log(level, msg ?? code, code);
    this.phase = Phase.CLOSED;
    this.clearHandshakeTimer();
    // Replies already produced this tick still go out (destroy would drop corked data).
    this.out.flush();
    this.socket.destroy();
  }

  // -------------------------------------------------------------------------------------------
  // Socket events
  // -------------------------------------------------------------------------------------------

  private onData(chunk: Buffer): void {
    switch (this.phase) {
      case Phase.HANDSHAKE:
        this.opts.push(chunk);
        this.handshake();
        return;
      case Phase.TRANSMISSION:
        this.idleTimer?.refresh();
        // After DISC the client must send nothing more; ignore whatever comes.
        if (this.draining && this.shutdownErrno === 0) return;
        (this.rq as NbdRequestParser).push(chunk);
        this.pump();
        return;
      case Phase.CLOSED:
        return;
      default: {
        const never: never = this.phase;
        throw new Error(`unreachable phase ${String(never)}`);
      }
    }
  }

  private onEnd(): void {
    if (this.phase === Phase.CLOSED) return;
    if (this.phase === Phase.HANDSHAKE) {
      if (this.opts.partial) this.destroy(ErrorCode.NBD_TRUNCATED, 'client closed in the middle of an option', 'warn');
      else this.endSocket();
      return;
    }
    // Complete requests may still be queued behind backpressure: run and answer them; pump()
    // reports a truncated tail once everything before it has been parsed.
    this.peerEnded = true;
    this.pump();
    this.maybeFinish();
  }

  private onClose(): void {
    const wasOpen = this.phase !== Phase.CLOSED;
    this.phase = Phase.CLOSED;
    this.clearHandshakeTimer();
    if (this.exp !== undefined) this.exp.connections.delete(this);
    if (wasOpen) this.log('debug', 'connection closed');
    this.resolveClosed();
  }

  private endSocket(): void {
    if (this.phase === Phase.CLOSED) return;
    this.phase = Phase.CLOSED;
    this.clearHandshakeTimer();
    const s = this.socket;
    s.end(() => s.destroy());
    // end() waits until every queued reply is written; a client that stopped reading would hold
    // the connection (and server.close()/removeExport()) forever. Grace, then hard close.
    const grace = setTimeout(() => {
      if (s.destroyed) return;
      this.log('warn', `client did not take its last ${s.writableLength} bytes within ${this.host.closeGraceMs} ms; closing`, ErrorCode.CONNECTION_CLOSED);
      s.destroy();
    }, this.host.closeGraceMs);
    grace.unref();
    s.once('close', () => clearTimeout(grace));
  }

  private clearHandshakeTimer(): void {
    if (this.handshakeTimer !== undefined) {
      clearTimeout(this.handshakeTimer);
      this.handshakeTimer = undefined;
    }
    if (this.idleTimer !== undefined) {
      clearTimeout(this.idleTimer);
      this.idleTimer = undefined;
    }
  }

  /** The idle timer fired: nothing received for idleTimeoutMs. Requests still running keep it alive. */
  private onIdle(): void {
    if (this.phase !== Phase.TRANSMISSION) return;
    if (this.inFlight > 0) {
      this.idleTimer?.refresh();
      return;
    }
    this.log('info', `idle for ${this.host.idleTimeoutMs} ms; closing`, ErrorCode.NBD_IDLE_TIMEOUT);
    this.endSocket();
  }

  private log(level: NbdLogEntry['level'], msg: string, code?: ErrorCodeValue): void {
    const e: NbdLogEntry = { level, msg, conn: this.id };
    if (code !== undefined) e.code = code;
    if (this.exp !== undefined) e.export = this.exp.name;
    this.host.log(e);
  }

  // -------------------------------------------------------------------------------------------
  // Handshake (option haggling)
  // -------------------------------------------------------------------------------------------

  private handshake(): void {
    const out = this.socket;
    out.cork();
    try {
      while (this.phase === Phase.HANDSHAKE) {
        if (out.writableLength > HANDSHAKE_MAX_UNSENT) {
          // Options stay queued in the parser; 'drain' resumes (backpressure, STYLE.md §6).
          if (!this.handshakePaused) {
            this.handshakePaused = true;
            out.pause();
          }
          return;
        }
        let ev: HandshakeEvent | undefined;
        try {
          ev = this.opts.next();
        } catch (err) {
          this.handshakeError(err);
          return;
        }
        if (ev === undefined) return;
        this.onHandshakeEvent(ev);
      }
    } finally {
      out.uncork();
    }
  }

  /** The client took our handshake replies: read and answer options again. */
  private resumeHandshake(): void {
    if (!this.handshakePaused || this.phase !== Phase.HANDSHAKE) return;
    this.handshakePaused = false;
    this.socket.resume();
    this.handshake();
  }

  private handshakeError(err: unknown): void {
    if (err instanceof NvmfNbdError && err.code === ErrorCode.NBD_OPTION_TOO_LARGE) {
      // We will not read that much data to skip it; say why, then hang up once it is sent.
      this.log('warn', err.message, err.code);
      this.socket.write(encodeRepError(0, Rep.ERR_TOO_BIG, 'option too large'));
      this.endSocket();
      return;
    }
    const code = err instanceof NvmfNbdError ? err.code : ErrorCode.NBD_PROTOCOL;
    this.destroy(code, (err as Error).message, 'warn');
  }

  private onHandshakeEvent(ev: HandshakeEvent): void {
    if (ev.kind === 'clientFlags') {
      if ((ev.flags & ~KNOWN_CLIENT_FLAGS) !== 0) {
        this.destroy(ErrorCode.NBD_BAD_FLAGS, `unknown client flags 0x${ev.flags.toString(16)}`, 'warn');
        return;
      }
      this.noZeroes = (ev.flags & ClientFlag.NO_ZEROES) !== 0;
      return;
    }
    const { option, data } = ev;
    const w = (b: Buffer): void => {
      this.socket.write(b);
    };
    if (++this.optionCount > MAX_HANDSHAKE_OPTIONS) {
      this.log('warn', `more than ${MAX_HANDSHAKE_OPTIONS} handshake options; closing`, ErrorCode.NBD_TOO_MANY_OPTIONS);
      w(encodeRepError(option, Rep.ERR_POLICY, 'too many options'));
      this.endSocket();
      return;
    }
    if (this.host.shuttingDown && option !== Opt.ABORT) {
      w(encodeRepError(option, Rep.ERR_SHUTDOWN, 'server shutting down'));
      return;
    }
    switch (option) {
      case Opt.EXPORT_NAME: {
        const name = data.toString('utf8');
        const exp = this.host.findExport(name);
        if (exp === undefined) {
          // EXPORT_NAME cannot fail politely: proto.md says terminate the session.
          this.destroy(ErrorCode.NBD_UNKNOWN_EXPORT, `unknown export '${name}'`, 'warn');
          return;
        }
        if (exp.connections.size >= this.host.maxConnectionsPerExport) {
          // No polite refusal exists for EXPORT_NAME either.
          this.destroy(ErrorCode.NBD_TOO_MANY_CONNECTIONS, `export '${name}' already has ${exp.connections.size} connections (maximum ${this.host.maxConnectionsPerExport})`, 'warn');
          return;
        }
        w(encodeExportNameReply(exp.device.size, this.transmissionFlags(exp.device), this.noZeroes));
        this.enterTransmission(exp);
        return;
      }
      case Opt.ABORT:
        w(encodeRepAck(option));
        this.endSocket();
        return;
      case Opt.LIST:
        if (data.length !== 0) {
          w(encodeRepError(option, Rep.ERR_INVALID, 'LIST takes no data'));
          return;
        }
        for (const e of this.host.listExports()) w(encodeRepServer(option, e.name, e.description));
        w(encodeRepAck(option));
        return;
      case Opt.INFO:
      case Opt.GO: {
        const found = this.requestedExport(option, data, parseInfoRequest, w);
        if (found === undefined) return;
        const { req, exp } = found;
        const dev = exp.device;
        if (option === Opt.GO && exp.connections.size >= this.host.maxConnectionsPerExport) {
          this.log('warn', `export '${exp.name}' already has ${exp.connections.size} connections (maximum ${this.host.maxConnectionsPerExport}); GO refused`, ErrorCode.NBD_TOO_MANY_CONNECTIONS);
          w(encodeRepError(option, Rep.ERR_POLICY, `export '${exp.name}' has too many connections`));
          return;
        }
        w(encodeInfoExport(option, dev.size, this.transmissionFlags(dev)));
        for (const t of req.infos) {
          if (t === InfoType.NAME) w(encodeInfoName(option, exp.name));
          else if (t === InfoType.DESCRIPTION && exp.description !== '') w(encodeInfoDescription(option, exp.description));
        }
        // Block sizes are sent even when not requested (proto.md allows it); a client that did
        // not ask has not agreed to them, though (see strictSizes).
        const { min, preferred, max } = blockSizes(dev);
        w(encodeInfoBlockSize(option, min, preferred, max));
        w(encodeRepAck(option));
        if (option === Opt.GO) {
          this.strictSizes = req.infos.includes(InfoType.BLOCK_SIZE);
          this.enterTransmission(exp);
        }
        return;
      }
      case Opt.STRUCTURED_REPLY:
        if (data.length !== 0) {
          w(encodeRepError(option, Rep.ERR_INVALID, 'STRUCTURED_REPLY takes no data'));
          return;
        }
        this.structured = true;
        w(encodeRepAck(option));
        return;
      case Opt.LIST_META_CONTEXT:
      case Opt.SET_META_CONTEXT:
        this.metaContextOption(option, data, w);
        return;
      default:
        // STARTTLS included: this server runs in NOTLS mode.
        w(encodeRepError(option, Rep.ERR_UNSUP, `option ${option} not supported`));
        return;
    }
  }

  /**
   * Parse an option that names an export (INFO, GO, LIST/SET_META_CONTEXT) and look the export
   * up; on a malformed option or an unknown name, answer the error and return undefined.
   */
  private requestedExport<R extends { name: string }>(
    option: number, data: Buffer, parse: (d: Buffer) => R, w: (b: Buffer) => void,
  ): { req: R; exp: NbdExportEntry } | undefined {
    let req: R;
    try {
      req = parse(data);
    } catch (err) {
      w(encodeRepError(option, Rep.ERR_INVALID, (err as Error).message));
      return undefined;
    }
    const exp = this.host.findExport(req.name);
    if (exp === undefined) {
      w(encodeRepError(option, Rep.ERR_UNKNOWN, `unknown export '${req.name}'`));
      return undefined;
    }
    return { req, exp };
  }

  private metaContextOption(option: number, data: Buffer, w: (b: Buffer) => void): void {
    if (!this.structured) {
      w(encodeRepError(option, Rep.ERR_INVALID, 'negotiate structured replies first'));
      return;
    }
    const found = this.requestedExport(option, data, parseMetaContextRequest, w);
    if (found === undefined) return;
    const { req, exp } = found;
    const list = option === Opt.LIST_META_CONTEXT;
    // LIST with no query lists everything; `base:` (namespace only) is a LIST-only wildcard.
    const match = req.queries.some((q) => q === BASE_ALLOCATION || (list && q === 'base:')) || (list && req.queries.length === 0);
    if (!list) {
      this.metaActive = match;
      this.metaExport = match ? exp.name : undefined;
    }
    if (match) w(encodeRepMetaContext(option, list ? 0 : BASE_ALLOCATION_ID, BASE_ALLOCATION));
    w(encodeRepAck(option));
  }

  /** Transmission flags for `dev`, given what this connection negotiated. */
  private transmissionFlags(dev: BlockDevice): number {
    let f = TransmissionFlag.HAS_FLAGS | TransmissionFlag.SEND_CACHE | TransmissionFlag.CAN_MULTI_CONN;
    // Multi-conn is safe: every connection of an export reaches the same backend, and flush
    // on it (NVMe Flush) covers writes from all connections.
    if (dev.readOnly) f |= TransmissionFlag.READ_ONLY;
    if (dev.canFlush) f |= TransmissionFlag.SEND_FLUSH;
    if (dev.canFua) f |= TransmissionFlag.SEND_FUA;
    if (!dev.readOnly && dev.canTrim) f |= TransmissionFlag.SEND_TRIM;
    if (!dev.readOnly && dev.canWriteZeroes) {
      f |= TransmissionFlag.SEND_WRITE_ZEROES;
      if (dev.canFastZero) f |= TransmissionFlag.SEND_FAST_ZERO;
    }
    if (this.structured) f |= TransmissionFlag.SEND_DF;
    return f;
  }

  private enterTransmission(exp: NbdExportEntry): void {
    this.clearHandshakeTimer();
    this.exp = exp;
    exp.connections.add(this);
    this.phase = Phase.TRANSMISSION;
    // Meta contexts negotiated for another export do not carry over (proto.md).
    if (this.metaExport !== exp.name) this.metaActive = false;
    this.rq = new NbdRequestParser(this.maxRequest(exp.device));
    for (const c of this.opts.drain()) this.rq.push(c);
    this.log('debug', `transmission on export '${exp.name}'`);
    if (this.host.idleTimeoutMs > 0) {
      this.idleTimer = setTimeout(() => this.onIdle(), this.host.idleTimeoutMs);
      this.idleTimer.unref();
    }
    if (exp.removed || this.host.shuttingDown) this.shutdownErrno = NbdErrno.ESHUTDOWN;
    // Defer: pump() may reply, and we are inside the handshake's cork.
    process.nextTick(() => {
      this.pump();
      this.maybeFinish();
    });
  }

  // -------------------------------------------------------------------------------------------
  // Transmission
  // -------------------------------------------------------------------------------------------

  private pump(): void {
    if (this.pumping || this.phase !== Phase.TRANSMISSION) return;
    const rq = this.rq as NbdRequestParser;
    const maxN = this.host.maxInFlight;
    const maxB = this.host.maxInFlightBytes;
    let overBudget = false;
    this.pumping = true;
    try {
      while (
        this.phase === Phase.TRANSMISSION &&
        !this.draining &&
        this.inFlight < maxN &&
        this.inFlightBytes < maxB &&
        this.socket.writableLength < maxB
      ) {
        if (this.heldBytes > 0 && this.host.budgetExhausted()) {
          overBudget = true;
          break;
        }
        let req: NbdRequest | undefined;
        try {
          req = rq.next();
        } catch (err) {
          const code = err instanceof NvmfNbdError ? err.code : ErrorCode.NBD_PROTOCOL;
          this.destroy(code, (err as Error).message, 'warn');
          return;
        }
        if (req === undefined) {
          if (this.peerEnded && rq.partial) {
            this.destroy(ErrorCode.NBD_TRUNCATED, 'client closed in the middle of a request', 'warn');
            return;
          }
          break;
        }
        this.dispatch(req);
      }
    } finally {
      this.pumping = false;
    }
    if (this.phase !== Phase.TRANSMISSION) return;
    if (overBudget && !this.budgetWait) {
      this.budgetWait = true;
      this.host.waitBudget(() => {
        this.budgetWait = false;
        this.pump();
      });
    }
    const blocked = overBudget || this.inFlight >= maxN || this.inFlightBytes >= maxB || this.socket.writableLength >= maxB;
    if (blocked && !this.paused) {
      this.paused = true;
      this.socket.pause();
    } else if (!blocked && this.paused) {
      this.paused = false;
      this.socket.resume();
    }
  }

  /** Close after DISC / shutdown once every reply is out. */
  private maybeFinish(): void {
    if (this.phase !== Phase.TRANSMISSION || this.inFlight !== 0) return;
    if (this.draining || this.shutdownErrno !== 0 || (this.peerEnded && !(this.rq as NbdRequestParser).partial)) {
      this.endSocket();
    }
  }

  /** Largest request this connection takes (payloads beyond it end the connection). */
  private maxRequest(dev: BlockDevice): number {
    return this.strictSizes ? dev.maxRequest : Math.max(dev.maxRequest, SUB_BLOCK_MAX_REQUEST);
  }

  /** errno for a request that cannot run, or 0 when it is valid. */
  private validate(req: NbdRequest, dev: BlockDevice): number {
    const t = req.type;
    let allowed: number = CmdFlag.FUA;
    switch (t) {
      case Cmd.READ:
        if (this.structured) allowed |= CmdFlag.DF;
        break;
      case Cmd.WRITE:
      case Cmd.CACHE:
        break;
      case Cmd.FLUSH:
        // offset and length are reserved for FLUSH; tolerate junk there.
        if (!dev.canFlush) return NbdErrno.EINVAL;
        return (req.flags & ~allowed) !== 0 ? NbdErrno.EINVAL : 0;
      case Cmd.TRIM:
        if (!dev.canTrim && !dev.readOnly) return NbdErrno.EINVAL;
        break;
      case Cmd.WRITE_ZEROES:
        if (!dev.canWriteZeroes && !dev.readOnly) return NbdErrno.EINVAL;
        allowed |= CmdFlag.NO_HOLE;
        if (dev.canFastZero) allowed |= CmdFlag.FAST_ZERO;
        break;
      case Cmd.BLOCK_STATUS:
        if (!this.metaActive) return NbdErrno.EINVAL;
        allowed |= CmdFlag.REQ_ONE;
        break;
      default:
        return NbdErrno.EINVAL;
    }
    if ((req.flags & ~allowed) !== 0) return NbdErrno.EINVAL;
    const writes = t === Cmd.WRITE || t === Cmd.TRIM || t === Cmd.WRITE_ZEROES;
    if (writes && dev.readOnly) return NbdErrno.EPERM;
    if (req.length === 0) return NbdErrno.EINVAL;
    // READ replies are buffered whole: refuse what exceeds the advertised maximum block size.
    if (t === Cmd.READ && req.length > this.maxRequest(dev)) return NbdErrno.EOVERFLOW;
    if (req.offset + req.length > dev.size) return t === Cmd.WRITE || t === Cmd.WRITE_ZEROES ? NbdErrno.ENOSPC : NbdErrno.EINVAL;
    const bs = dev.blockSize;
    if (this.strictSizes && (req.offset % bs !== 0 || req.length % bs !== 0)) return NbdErrno.EINVAL;
    return 0;
  }

  private dispatch(req: NbdRequest): void {
    const exp = this.exp as NbdExportEntry;
    const dev = exp.device;
    const sub = exp.sub;
    if (req.type === Cmd.DISC) {
      this.draining = true;
      this.log('debug', 'client sent DISC');
      this.maybeFinish();
      return;
    }
    if (this.shutdownErrno !== 0) {
      this.replyError(req, this.shutdownErrno);
      return;
    }
    const bad = this.validate(req, dev);
    if (bad !== 0) {
      this.replyError(req, bad);
      return;
    }
    const c = exp.counters;
    let p: Promise<unknown>;
    let bytes = 0;
    try {
      switch (req.type) {
        case Cmd.READ: {
          bytes = req.length;
          c.reads++;
          c.bytesRead += req.length;
          this.begin(bytes);
          sub.read(req.offset, req.length).then(
            (data) => this.finishRead(req, bytes, data),
            (err: unknown) => this.finish(req, bytes, err),
          );
          return;
        }
        case Cmd.WRITE: {
          const data = req.data as Buffer;
          bytes = data.length;
          c.writes++;
          c.bytesWritten += bytes;
          this.begin(bytes);
          p = sub.write(req.offset, data, (req.flags & CmdFlag.FUA) !== 0);
          break;
        }
        case Cmd.FLUSH:
          c.flushes++;
          this.begin(0);
          p = sub.flush();
          break;
        case Cmd.TRIM:
          c.trims++;
          this.begin(0);
          p = sub.trim(req.offset, req.length);
          // proto.md: a FUA trim must be persistent before the reply. BlockDevice.trim has no
          // FUA (NVMe Deallocate has none either), so flush the device after it.
          if ((req.flags & CmdFlag.FUA) !== 0 && dev.canFlush) p = p.then(() => dev.flush());
          break;
        case Cmd.WRITE_ZEROES:
          c.zeroes++;
          this.begin(0);
          p = sub.writeZeroes(req.offset, req.length, {
            mayDeallocate: (req.flags & CmdFlag.NO_HOLE) === 0,
            fua: (req.flags & CmdFlag.FUA) !== 0,
            fastOnly: (req.flags & CmdFlag.FAST_ZERO) !== 0,
          });
          break;
        case Cmd.CACHE:
          // A prefetch hint; the backend has no cache worth warming.
          this.replyOk(req);
          return;
        case Cmd.BLOCK_STATUS:
          // The backend cannot tell holes from data (NVMe has no cheap "is allocated" query
          // we rely on), so every range is reported as allocated data: status 0 is always
          // a correct answer for base:allocation.
          this.out.write(
            encodeBlockStatus(ReplyFlag.DONE, req.cookieHi, req.cookieLo, BASE_ALLOCATION_ID, [{ length: req.length, flags: 0 }]),
          );
          return;
        default:
          this.replyError(req, NbdErrno.EINVAL);
          return;
      }
    } catch (err) {
      // A device that throws synchronously fails only this request.
      this.finish(req, bytes, err);
      return;
    }
    p.then(
      () => this.finish(req, bytes, undefined),
      (err: unknown) => this.finish(req, bytes, err),
    );
  }

  private begin(bytes: number): void {
    this.inFlight++;
    this.inFlightBytes += bytes;
  }

  private end(bytes: number): boolean {
    this.inFlight--;
    this.inFlightBytes -= bytes;
    return this.phase === Phase.TRANSMISSION;
  }

  private after(): void {
    this.pump();
    this.maybeFinish();
    this.host.budgetReleased();
  }

  private finishRead(req: NbdRequest, bytes: number, data: Buffer): void {
    if (!this.end(bytes)) return;
    if (this.failInFlight) {
      this.replyError(req, NbdErrno.ESHUTDOWN);
    } else if (data.length !== req.length) {
      this.log('error', `device returned ${data.length} bytes for a ${req.length}-byte read`, ErrorCode.SHORT_READ);
      this.replyError(req, NbdErrno.EIO);
    } else {
      const o = this.out;
      if (this.structured) o.write(encodeOffsetDataHeader(ReplyFlag.DONE, req.cookieHi, req.cookieLo, req.offset, data.length));
      else o.write(encodeSimpleReply(0, req.cookieHi, req.cookieLo));
      o.write(data);
    }
    this.after();
  }

  private finish(req: NbdRequest, bytes: number, err: unknown): void {
    if (!this.end(bytes)) return;
    if (this.failInFlight) this.replyError(req, NbdErrno.ESHUTDOWN);
    else if (err === undefined) this.replyOk(req);
    else {
      const errno = nbdErrno(err instanceof NvmfNbdError ? err.errno : undefined);
      this.log('debug', `request type ${req.type} failed: ${(err as Error)?.message ?? String(err)} (errno ${errno})`);
      this.replyError(req, errno);
    }
    this.after();
  }

  private replyOk(req: NbdRequest): void {
    this.out.write(encodeSimpleReply(0, req.cookieHi, req.cookieLo));
  }

  private replyError(req: NbdRequest, errno: number): void {
    const exp = this.exp;
    if (exp !== undefined) exp.counters.errors++;
    // With structured replies a READ must not get a simple reply; errors go in an error chunk.
    if (this.structured) this.out.write(encodeChunkError(ReplyFlag.DONE, req.cookieHi, req.cookieLo, errno));
    else this.out.write(encodeSimpleReply(errno, req.cookieHi, req.cookieLo));
  }
}

/** NBD block-size constraints of a device: min = blockSize, preferred = max(4096, blockSize),
 *  max = maxRequest (the BlockDevice contract makes it at least 32 MiB). */
export function blockSizes(dev: BlockDevice): { min: number; preferred: number; max: number } {
  return { min: dev.blockSize, preferred: Math.max(4096, dev.blockSize), max: dev.maxRequest };
}
