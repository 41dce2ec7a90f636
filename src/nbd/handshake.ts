/**
 * The handshake phase of one NBD connection (fixed newstyle): the option haggling from the
 * client flags to GO / EXPORT_NAME. It owns the option parser and what the client negotiated;
 * on success it hands the connection a {@link Negotiated} and the bytes it has not parsed.
 *
 * Backpressure: a client that sends options and reads no replies stops being read once
 * {@link HANDSHAKE_MAX_UNSENT} reply bytes are queued; {@link NbdHandshake.resume} goes on.
 */
import type { Duplex } from 'node:stream';
import { ErrorCode, NvmfNbdError, type ErrorCodeValue } from '../errors';
import type { BlockDevice } from '../block/types';
import {
  BASE_ALLOCATION,
  ClientFlag,
  InfoType,
  KNOWN_CLIENT_FLAGS,
  NbdOptionParser,
  Opt,
  Rep,
  TransmissionFlag,
  encodeExportNameReply,
  encodeInfoBlockSize,
  encodeInfoDescription,
  encodeInfoExport,
  encodeInfoName,
  encodeRepAck,
  encodeRepError,
  encodeRepMetaContext,
  encodeRepServer,
  parseInfoRequest,
  parseMetaContextRequest,
  type HandshakeEvent,
} from '../wire/nbd';
import { blockSizes, type NbdConnectionHost, type NbdExportEntry, type NbdLogEntry } from './types';

/** Context id we hand out for `base:allocation` on SET_META_CONTEXT. */
export const BASE_ALLOCATION_ID = 1;
/** Handshake replies not yet taken by the client before we stop reading options (a client that
 *  sends LIST in a loop and reads nothing would otherwise grow the server without bound). */
export const HANDSHAKE_MAX_UNSENT = 1 << 20;
/** Options per connection: real clients send a handful; beyond this the client is haggling
 *  forever → ERR_POLICY and close (NBD_ERR_TOO_MANY_OPTIONS). */
export const MAX_HANDSHAKE_OPTIONS = 1024;

/** What the client agreed to in the handshake; the transmission phase obeys it. */
export interface Negotiated {
  /** NBD_OPT_STRUCTURED_REPLY was acked. */
  readonly structured: boolean;
  /**
   * The client asked for NBD_INFO_BLOCK_SIZE in GO: it agreed to our minimum (the LBA size) and
   * maximum (32 MiB), and gets EINVAL/EOVERFLOW outside them. Otherwise (GO without it, or
   * EXPORT_NAME) it agreed to no minimum: unaligned requests are served by read-modify-write and
   * requests up to SUB_BLOCK_MAX_REQUEST are taken.
   */
  readonly strictSizes: boolean;
  /** `base:allocation` is selected for the chosen export (BLOCK_STATUS allowed). */
  readonly metaActive: boolean;
}

/** What the handshake needs from its connection. */
export interface HandshakeOwner {
  readonly socket: Duplex;
  readonly host: NbdConnectionHost;
  /** Still in the handshake phase (not closed, not in transmission). */
  readonly inHandshake: boolean;
  log(level: NbdLogEntry['level'], msg: string, code?: ErrorCodeValue): void;
  destroy(code?: ErrorCodeValue, msg?: string, level?: NbdLogEntry['level']): void;
  /** Send what is queued, then close. */
  endSocket(): void;
  /** GO / EXPORT_NAME succeeded: `leftover` are bytes received after the option. */
  enterTransmission(exp: NbdExportEntry, negotiated: Negotiated, leftover: Buffer[]): void;
}

/** Server side of the option haggling of one connection. */
export class NbdHandshake {
  private readonly opts: NbdOptionParser;
  private noZeroes = false;
  private structured = false;
  /** Export name the meta context was negotiated for, when `base:allocation` is selected. */
  private metaExport: string | undefined;
  private metaActive = false;
  /** Reading stopped until the client takes our replies (HANDSHAKE_MAX_UNSENT). */
  private paused = false;
  private optionCount = 0;

  /**
   * @param afterTls set when the STARTTLS gate (tls-gate.ts) ran the plain part on the raw
   *   socket: the owner's socket is the secure one, the client flags are known, and haggling
   *   continues with an option header.
   */
  constructor(private readonly owner: HandshakeOwner, private readonly afterTls?: { readonly noZeroes: boolean }) {
    this.opts = new NbdOptionParser(undefined, afterTls !== undefined);
    if (afterTls !== undefined) this.noZeroes = afterTls.noZeroes;
  }

  /** The client is in the middle of an option (for a truncation report at EOF). */
  get partial(): boolean {
    return this.opts.partial;
  }

  /** Bytes received: parse and answer the options they complete. */
  push(chunk: Buffer): void {
    this.opts.push(chunk);
    this.run();
  }

  /** The client took our replies: read and answer options again. */
  resume(): void {
    if (!this.paused || !this.owner.inHandshake) return;
    this.paused = false;
    this.owner.socket.resume();
    this.run();
  }

  private run(): void {
    const out = this.owner.socket;
    out.cork();
    try {
      while (this.owner.inHandshake) {
        if (out.writableLength > HANDSHAKE_MAX_UNSENT) {
          // Options stay queued in the parser; 'drain' resumes (backpressure, STYLE.md §6).
          if (!this.paused) {
            this.paused = true;
            out.pause();
          }
          return;
        }
        let ev: HandshakeEvent | undefined;
        try {
          ev = this.opts.next();
        } catch (err) {
          this.error(err);
          return;
        }
        if (ev === undefined) return;
        this.onEvent(ev);
      }
    } finally {
      out.uncork();
    }
  }

  private error(err: unknown): void {
    if (err instanceof NvmfNbdError && err.code === ErrorCode.NBD_OPTION_TOO_LARGE) {
      // We will not read that much data to skip it; say why, then hang up once it is sent.
      this.owner.log('warn', err.message, err.code);
      this.owner.socket.write(encodeRepError(0, Rep.ERR_TOO_BIG, 'option too large'));
      this.owner.endSocket();
      return;
    }
    const code = err instanceof NvmfNbdError ? err.code : ErrorCode.NBD_PROTOCOL;
    this.owner.destroy(code, (err as Error).message, 'warn');
  }

  private onEvent(ev: HandshakeEvent): void {
    const owner = this.owner;
    const host = owner.host;
    if (ev.kind === 'clientFlags') {
      if ((ev.flags & ~KNOWN_CLIENT_FLAGS) !== 0) {
        owner.destroy(ErrorCode.NBD_BAD_FLAGS, `unknown client flags 0x${ev.flags.toString(16)}`, 'warn');
        return;
      }
      this.noZeroes = (ev.flags & ClientFlag.NO_ZEROES) !== 0;
      return;
    }
    const { option, data } = ev;
    const w = (b: Buffer): void => {
      owner.socket.write(b);
    };
    if (++this.optionCount > MAX_HANDSHAKE_OPTIONS) {
      owner.log('warn', `more than ${MAX_HANDSHAKE_OPTIONS} handshake options; closing`, ErrorCode.NBD_TOO_MANY_OPTIONS);
      w(encodeRepError(option, Rep.ERR_POLICY, 'too many options'));
      owner.endSocket();
      return;
    }
    if (host.shuttingDown && option !== Opt.ABORT) {
      w(encodeRepError(option, Rep.ERR_SHUTDOWN, 'server shutting down'));
      return;
    }
    switch (option) {
      case Opt.EXPORT_NAME: {
        const name = data.toString('utf8');
        const exp = host.findExport(name);
        if (exp === undefined) {
          // EXPORT_NAME cannot fail politely: proto.md says terminate the session.
          owner.destroy(ErrorCode.NBD_UNKNOWN_EXPORT, `unknown export '${name}'`, 'warn');
          return;
        }
        if (exp.connections.size >= host.maxConnectionsPerExport) {
          // No polite refusal exists for EXPORT_NAME either.
          owner.destroy(ErrorCode.NBD_TOO_MANY_CONNECTIONS, `export '${name}' already has ${exp.connections.size} connections (maximum ${host.maxConnectionsPerExport})`, 'warn');
          return;
        }
        w(encodeExportNameReply(exp.device.size, this.transmissionFlags(exp.device), this.noZeroes));
        this.finish(exp, false);
        return;
      }
      case Opt.ABORT:
        w(encodeRepAck(option));
        owner.endSocket();
        return;
      case Opt.LIST:
        if (data.length !== 0) {
          w(encodeRepError(option, Rep.ERR_INVALID, 'LIST takes no data'));
          return;
        }
        for (const e of host.listExports()) w(encodeRepServer(option, e.name, e.description));
        w(encodeRepAck(option));
        return;
      case Opt.INFO:
      case Opt.GO: {
        const found = this.requestedExport(option, data, parseInfoRequest, w);
        if (found === undefined) return;
        const { req, exp } = found;
        const dev = exp.device;
        if (option === Opt.GO && exp.connections.size >= host.maxConnectionsPerExport) {
          owner.log('warn', `export '${exp.name}' already has ${exp.connections.size} connections (maximum ${host.maxConnectionsPerExport}); GO refused`, ErrorCode.NBD_TOO_MANY_CONNECTIONS);
          w(encodeRepError(option, Rep.ERR_POLICY, `export '${exp.name}' has too many connections`));
          return;
        }
        w(encodeInfoExport(option, dev.size, this.transmissionFlags(dev)));
        for (const t of req.infos) {
          if (t === InfoType.NAME) w(encodeInfoName(option, exp.name));
          else if (t === InfoType.DESCRIPTION && exp.description !== '') w(encodeInfoDescription(option, exp.description));
        }
        // Block sizes are sent even when not requested (proto.md allows it); a client that did
        // not ask has not agreed to them, though (see Negotiated.strictSizes).
        const { min, preferred, max } = blockSizes(dev);
        w(encodeInfoBlockSize(option, min, preferred, max));
        w(encodeRepAck(option));
        if (option === Opt.GO) this.finish(exp, req.infos.includes(InfoType.BLOCK_SIZE));
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
      case Opt.STARTTLS:
        // proto.md: STARTTLS once TLS is up → ERR_INVALID; without TLS configured we are NOTLS.
        if (this.afterTls !== undefined) w(encodeRepError(option, Rep.ERR_INVALID, 'TLS already negotiated'));
        else w(encodeRepError(option, Rep.ERR_UNSUP, 'TLS is not configured on this server'));
        return;
      default:
        w(encodeRepError(option, Rep.ERR_UNSUP, `option ${option} not supported`));
        return;
    }
  }

  /** GO / EXPORT_NAME done: hand over to the transmission phase. */
  private finish(exp: NbdExportEntry, strictSizes: boolean): void {
    // Meta contexts negotiated for another export do not carry over (proto.md).
    const metaActive = this.metaActive && this.metaExport === exp.name;
    this.owner.enterTransmission(exp, { structured: this.structured, strictSizes, metaActive }, this.opts.drain());
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
    const exp = this.owner.host.findExport(req.name);
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
}
