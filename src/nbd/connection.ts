/**
 * One NBD client connection: the socket, its phase, its timers and its one teardown path.
 * The work of each phase lives in its own module: {@link NbdHandshake} (handshake.ts, the
 * fixed-newstyle option haggling) and {@link NbdTransmission} (transmission.ts, requests with
 * pipelining and out-of-order replies).
 *
 * Teardown has one path, {@link NbdConnection.destroy}; running it twice is harmless.
 */
import type { Duplex } from 'node:stream';
import { ErrorCode, type ErrorCodeValue } from '../errors';
import { encodeGreeting } from '../wire/nbd';
import { WriteBatcher } from '../net/write-batcher';
import { NbdHandshake, type HandshakeOwner, type Negotiated } from './handshake';
import { NbdTransmission, type TransmissionOwner } from './transmission';
import type { NbdConnectionHost, NbdExportEntry, NbdLogEntry } from './types';

export type { NbdConnectionHost, NbdExportCounters, NbdExportEntry, NbdLogEntry } from './types';
export { blockSizes } from './types';
export { HANDSHAKE_MAX_UNSENT, MAX_HANDSHAKE_OPTIONS } from './handshake';

const Phase = { HANDSHAKE: 0, TRANSMISSION: 1, CLOSED: 2 } as const;
type PhaseValue = (typeof Phase)[keyof typeof Phase];

/**
 * Server side of one NBD connection. Created by `NbdServer`; call {@link start} once.
 */
export class NbdConnection implements HandshakeOwner, TransmissionOwner {
  private phase: PhaseValue = Phase.HANDSHAKE;
  private readonly hs: NbdHandshake;
  private tx: NbdTransmission | undefined;
  private exp: NbdExportEntry | undefined;
  private handshakeTimer: NodeJS.Timeout | undefined;
  /** Transmission idle timer (host.idleTimeoutMs), refreshed on every chunk received. */
  private idleTimer: NodeJS.Timeout | undefined;
  private resolveClosed!: () => void;
  /** Resolves once the socket is closed and all state released. */
  readonly closed: Promise<void> = new Promise((r) => {
    this.resolveClosed = r;
  });

  /** Replies produced in one tick leave in one writev (see write-batcher.ts). */
  readonly out: WriteBatcher;

  constructor(
    readonly host: NbdConnectionHost,
    readonly socket: Duplex,
    readonly id: number,
    /** Set when the STARTTLS gate ran on the plain socket: `socket` is the secure one, the
     *  greeting and client flags are done, option haggling continues. */
    private readonly afterTls?: { readonly noZeroes: boolean },
  ) {
    this.out = new WriteBatcher(socket);
    this.hs = new NbdHandshake(this, afterTls);
  }

  /** The export this connection is bound to (after GO / EXPORT_NAME). */
  get exportName(): string | undefined {
    return this.exp?.name;
  }

  /** True once the handshake has finished (and until the connection closes). */
  get inTransmission(): boolean {
    return this.phase === Phase.TRANSMISSION;
  }

  /** True until GO / EXPORT_NAME succeeds or the connection closes. */
  get inHandshake(): boolean {
    return this.phase === Phase.HANDSHAKE;
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
        (this.tx as NbdTransmission).pump();
        // Queued replies were taken: others waiting for the shared budget may go on.
        this.host.budgetReleased();
      } else if (this.phase === Phase.HANDSHAKE) {
        this.hs.resume();
      }
    });
    if (this.host.handshakeTimeoutMs > 0) {
      this.handshakeTimer = setTimeout(
        () => this.destroy(ErrorCode.NBD_HANDSHAKE_TIMEOUT, `no export chosen within ${this.host.handshakeTimeoutMs} ms`, 'warn'),
        this.host.handshakeTimeoutMs,
      );
      this.handshakeTimer.unref();
    }
    if (this.afterTls === undefined) s.write(encodeGreeting());
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
    (this.tx as NbdTransmission).shutdown(failInFlight);
  }

  /** Bytes this connection holds against the server-wide budget: requests in flight plus unsent replies. */
  get heldBytes(): number {
    return this.phase === Phase.CLOSED ? 0 : (this.tx?.inFlightBytes ?? 0) + this.socket.writableLength;
  }

  /** The one teardown path: log (when given a code), destroy the socket. */
  destroy(code?: ErrorCodeValue, msg?: string, level: NbdLogEntry['level'] = 'warn'): void {
    if (this.phase === Phase.CLOSED) return;
    if (code !== undefined) this.log(level, msg ?? code, code);
    this.phase = Phase.CLOSED;
    this.clearTimers();
    // Replies already produced this tick still go out (destroy would drop corked data).
    this.out.flush();
    this.socket.destroy();
  }

  /** Send what is queued, then close (with a grace period for clients that do not read). */
  endSocket(): void {
    if (this.phase === Phase.CLOSED) return;
    this.phase = Phase.CLOSED;
    this.clearTimers();
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

  /** One log record tagged with this connection (and its export). */
  log(level: NbdLogEntry['level'], msg: string, code?: ErrorCodeValue): void {
    const e: NbdLogEntry = { level, msg, conn: this.id };
    if (code !== undefined) e.code = code;
    if (this.exp !== undefined) e.export = this.exp.name;
    this.host.log(e);
  }

  /** The handshake chose `exp` (HandshakeOwner). */
  enterTransmission(exp: NbdExportEntry, negotiated: Negotiated, leftover: Buffer[]): void {
    this.clearTimers();
    this.exp = exp;
    exp.connections.add(this);
    this.phase = Phase.TRANSMISSION;
    const tx = new NbdTransmission(this, exp, negotiated, leftover);
    this.tx = tx;
    this.log('debug', `transmission on export '${exp.name}'`);
    if (this.host.idleTimeoutMs > 0) {
      this.idleTimer = setTimeout(() => this.onIdle(), this.host.idleTimeoutMs);
      this.idleTimer.unref();
    }
    // Defer: pump() may reply, and we are inside the handshake's cork.
    process.nextTick(() => {
      tx.pump();
      tx.maybeFinish();
    });
  }

  // -------------------------------------------------------------------------------------------
  // Socket events
  // -------------------------------------------------------------------------------------------

  private onData(chunk: Buffer): void {
    switch (this.phase) {
      case Phase.HANDSHAKE:
        this.hs.push(chunk);
        return;
      case Phase.TRANSMISSION:
        this.idleTimer?.refresh();
        (this.tx as NbdTransmission).push(chunk);
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
      if (this.hs.partial) this.destroy(ErrorCode.NBD_TRUNCATED, 'client closed in the middle of an option', 'warn');
      else this.endSocket();
      return;
    }
    (this.tx as NbdTransmission).end();
  }

  private onClose(): void {
    const wasOpen = this.phase !== Phase.CLOSED;
    this.phase = Phase.CLOSED;
    this.clearTimers();
    if (this.exp !== undefined) this.exp.connections.delete(this);
    if (wasOpen) this.log('debug', 'connection closed');
    this.resolveClosed();
  }

  private clearTimers(): void {
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
    if ((this.tx as NbdTransmission).requestsInFlight > 0) {
      this.idleTimer?.refresh();
      return;
    }
    this.log('info', `idle for ${this.host.idleTimeoutMs} ms; closing`, ErrorCode.NBD_IDLE_TIMEOUT);
    this.endSocket();
  }
}
