/**
 * The plain-text part of an NBD handshake when TLS is required (proto.md "TLS support",
 * FORCEDTLS mode): greeting, client flags, then options until NBD_OPT_STARTTLS. Every other
 * option is answered NBD_REP_ERR_TLS_REQD (ABORT: ACK and close; EXPORT_NAME cannot be answered
 * with an error, so the connection is closed). After STARTTLS is acknowledged the TLS handshake
 * runs on the same socket and the option haggling continues on the secure socket (no second
 * greeting, no client flags), handed to an {@link NbdConnection} by the server.
 *
 * Nothing but STARTTLS is interpreted here, so nothing negotiated before TLS can leak into the
 * secure session (proto.md: state from before TLS is discarded).
 */
import type { Duplex } from 'node:stream';
import type * as tls from 'node:tls';
import { ErrorCode, NvmfNbdError, type ErrorCodeValue } from '../errors';
import {
  ClientFlag,
  KNOWN_CLIENT_FLAGS,
  NbdOptionParser,
  Opt,
  Rep,
  encodeGreeting,
  encodeRepAck,
  encodeRepError,
} from '../wire/nbd';
import type { NbdTlsServer } from '../tls/nbd-tls';

/** A secure socket ready for option haggling, and the client flags read before TLS. */
export interface TlsGateResult {
  readonly socket: tls.TLSSocket;
  readonly clientFlags: number;
  /** True when the client set NBD_FLAG_C_NO_ZEROES. */
  readonly noZeroes: boolean;
}

/** Options of {@link runTlsGate}. */
export interface TlsGateOptions {
  readonly tls: NbdTlsServer;
  /** Whole gate (plain options + TLS handshake) must finish within this (0 = never). */
  readonly timeoutMs: number;
  /** Plain options answered before the connection is closed (ERR_POLICY). */
  readonly maxOptions?: number;
  readonly log: (level: 'debug' | 'info' | 'warn', msg: string, code?: ErrorCodeValue) => void;
}

/** Counters of what the gate refused (for tests and logs). */
export interface TlsGateCounters {
  /** Options answered NBD_REP_ERR_TLS_REQD. */
  tlsRequired: number;
}

/**
 * Run the plain part of the handshake on `raw`. Resolves with the secure socket after a
 * successful STARTTLS + TLS handshake, or undefined when the connection ended (refused,
 * aborted, TLS failed — logged with its code; `raw` is destroyed or ended then).
 */
export function runTlsGate(raw: Duplex, o: TlsGateOptions, counters: TlsGateCounters = { tlsRequired: 0 }): Promise<TlsGateResult | undefined> {
  return new Promise((resolve) => {
    const parser = new NbdOptionParser();
    let flags = -1;
    let options = 0;
    let done = false;
    const maxOptions = o.maxOptions ?? 1024;
    const timer = o.timeoutMs > 0 ? setTimeout(() => finish(ErrorCode.NBD_HANDSHAKE_TIMEOUT, `no TLS within ${o.timeoutMs} ms; closing`), o.timeoutMs) : undefined;
    timer?.unref?.();
    const detach = (): void => {
      raw.off('data', onData);
      raw.off('end', onEnd);
      raw.off('error', onError);
      raw.off('close', onEnd);
    };
    /** End the connection (after the replies written so far) and resolve undefined. */
    function finish(code: ErrorCodeValue | undefined, msg: string, level: 'debug' | 'info' | 'warn' = 'warn', hard = false): void {
      if (done) return;
      done = true;
      if (timer !== undefined) clearTimeout(timer);
      detach();
      raw.on('error', () => undefined);
      if (code !== undefined || level !== 'debug') o.log(level, msg, code);
      if (hard) raw.destroy();
      else {
        raw.end();
        // A client that never reads our last reply must not keep the socket.
        setTimeout(() => raw.destroy(), 5000).unref?.();
      }
      resolve(undefined);
    }
    const onEnd = (): void => finish(undefined, 'client left before TLS', 'debug', true);
    const onError = (err: Error): void => finish(ErrorCode.CONNECTION_CLOSED, `socket error before TLS: ${err.message}`, 'warn', true);
    const startTls = (): void => {
      done = true;
      detach();
      // Out of flowing mode before the ACK leaves: the client's ClientHello (sent after it) must
      // stay unread for the TLS layer, which takes over the socket and what it buffered.
      raw.pause();
      raw.write(encodeRepAck(Opt.STARTTLS));
      const left = o.timeoutMs > 0 ? o.timeoutMs : 30_000;
      o.tls.accept(raw, left).then(
        (socket) => {
          if (timer !== undefined) clearTimeout(timer);
          resolve({ socket, clientFlags: flags, noZeroes: (flags & ClientFlag.NO_ZEROES) !== 0 });
        },
        (err: unknown) => {
          if (timer !== undefined) clearTimeout(timer);
          const e = err instanceof NvmfNbdError ? err : new NvmfNbdError(ErrorCode.TLS_HANDSHAKE, String(err));
          o.log('warn', e.message, e.code);
          raw.destroy();
          resolve(undefined);
        },
      );
    };
    function onData(chunk: Buffer): void {
      parser.push(chunk);
      for (;;) {
        if (done) return;
        let ev;
        try {
          ev = parser.next();
        } catch (err) {
          if (err instanceof NvmfNbdError && err.code === ErrorCode.NBD_OPTION_TOO_LARGE) {
            raw.write(encodeRepError(0, Rep.ERR_TOO_BIG, 'option too large'));
            finish(err.code, err.message);
            return;
          }
          finish(err instanceof NvmfNbdError ? err.code : ErrorCode.NBD_PROTOCOL, (err as Error).message, 'warn', true);
          return;
        }
        if (ev === undefined) return;
        if (ev.kind === 'clientFlags') {
          if ((ev.flags & ~KNOWN_CLIENT_FLAGS) !== 0) {
            finish(ErrorCode.NBD_BAD_FLAGS, `unknown client flags 0x${ev.flags.toString(16)}`, 'warn', true);
            return;
          }
          flags = ev.flags;
          continue;
        }
        if (++options > maxOptions) {
          raw.write(encodeRepError(ev.option, Rep.ERR_POLICY, 'too many options'));
          finish(ErrorCode.NBD_TOO_MANY_OPTIONS, `more than ${maxOptions} options before TLS; closing`);
          return;
        }
        switch (ev.option) {
          case Opt.STARTTLS:
            if (ev.data.length !== 0) {
              raw.write(encodeRepError(ev.option, Rep.ERR_INVALID, 'STARTTLS carries no data'));
              continue;
            }
            if (parser.buffered !== 0) {
              // Bytes after STARTTLS, before our ACK: a client must wait; injected plain text
              // must never be taken as part of the secure session.
              finish(ErrorCode.NBD_PROTOCOL, 'data after NBD_OPT_STARTTLS before its reply; closing', 'warn', true);
              return;
            }
            startTls();
            return;
          case Opt.ABORT:
            raw.write(encodeRepAck(ev.option));
            finish(undefined, 'client aborted before TLS', 'debug');
            return;
          case Opt.EXPORT_NAME:
            // No error reply exists for EXPORT_NAME: hang up (proto.md).
            counters.tlsRequired++;
            finish(ErrorCode.NBD_TLS_REQUIRED, 'NBD_OPT_EXPORT_NAME without TLS; closing (TLS is required)', 'info');
            return;
          default:
            counters.tlsRequired++;
            if (counters.tlsRequired === 1) o.log('info', `option ${ev.option} before STARTTLS: TLS required`, ErrorCode.NBD_TLS_REQUIRED);
            raw.write(encodeRepError(ev.option, Rep.ERR_TLS_REQD, 'TLS is required: send NBD_OPT_STARTTLS first'));
        }
      }
    }
    raw.on('data', onData);
    raw.on('end', onEnd);
    raw.on('close', onEnd);
    raw.on('error', onError);
    raw.write(encodeGreeting());
  });
}
