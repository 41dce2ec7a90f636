/**
 * NBD wire codecs: fixed-newstyle handshake, option haggling and transmission messages.
 *
 * Pure: no sockets, no timers (STYLE.md §1). Everything is big-endian. The layouts follow
 * `doc/proto.md` of the NetworkBlockDevice/nbd repository; each encoder/decoder names the
 * section it implements.
 *
 * Parsers are pull-style: the connection `push()`es socket chunks and calls `next()` while it
 * has room for more work. Stopping early keeps the bytes queued, which is how the server applies
 * backpressure (and how the handshake hands the bytes that follow NBD_OPT_GO to the request
 * parser without re-parsing anything).
 */
import { ErrorCode, NvmfNbdError } from '../errors';

// ---------------------------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------------------------

/** 'NBDMAGIC', first 8 bytes of the server greeting. */
export const NBD_MAGIC = 0x4e42444d41474943n;
/** 'IHAVEOPT': second greeting word and the prefix of every client option. */
export const NBD_IHAVEOPT = 0x49484156454f5054n;
/** Prefix of every option reply. */
export const NBD_OPT_REPLY_MAGIC = 0x3e889045565a9n;
/** Prefix of every transmission request. */
export const NBD_REQUEST_MAGIC = 0x25609513;
/** Prefix of a simple reply. */
export const NBD_SIMPLE_REPLY_MAGIC = 0x67446698;
/** Prefix of a structured reply chunk. */
export const NBD_STRUCTURED_REPLY_MAGIC = 0x668e33ef;

/** Server handshake flags (u16). */
export const HandshakeFlag = { FIXED_NEWSTYLE: 1 << 0, NO_ZEROES: 1 << 1 } as const;
/** Client flags (u32); any other bit makes the server drop the connection. */
export const ClientFlag = { FIXED_NEWSTYLE: 1 << 0, NO_ZEROES: 1 << 1 } as const;
/** Every client flag this server understands. */
export const KNOWN_CLIENT_FLAGS = ClientFlag.FIXED_NEWSTYLE | ClientFlag.NO_ZEROES;

/** Option types (client → server during haggling). */
export const Opt = {
  EXPORT_NAME: 1,
  ABORT: 2,
  LIST: 3,
  STARTTLS: 5,
  INFO: 6,
  GO: 7,
  STRUCTURED_REPLY: 8,
  LIST_META_CONTEXT: 9,
  SET_META_CONTEXT: 10,
} as const;

const REP_ERR = 0x80000000;
/** Option reply types. Errors have bit 31 set. */
export const Rep = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  META_CONTEXT: 4,
  ERR_UNSUP: REP_ERR + 1,
  ERR_POLICY: REP_ERR + 2,
  ERR_INVALID: REP_ERR + 3,
  ERR_PLATFORM: REP_ERR + 4,
  ERR_TLS_REQD: REP_ERR + 5,
  ERR_UNKNOWN: REP_ERR + 6,
  ERR_SHUTDOWN: REP_ERR + 7,
  ERR_BLOCK_SIZE_REQD: REP_ERR + 8,
  ERR_TOO_BIG: REP_ERR + 9,
} as const;

/** NBD_REP_INFO item types (also the u16 values a client lists in INFO/GO). */
export const InfoType = { EXPORT: 0, NAME: 1, DESCRIPTION: 2, BLOCK_SIZE: 3 } as const;

/** Transmission flags (u16), sent with the export size. */
export const TransmissionFlag = {
  HAS_FLAGS: 1 << 0,
  READ_ONLY: 1 << 1,
  SEND_FLUSH: 1 << 2,
  SEND_FUA: 1 << 3,
  ROTATIONAL: 1 << 4,
  SEND_TRIM: 1 << 5,
  SEND_WRITE_ZEROES: 1 << 6,
  SEND_DF: 1 << 7,
  CAN_MULTI_CONN: 1 << 8,
  SEND_CACHE: 1 << 10,
  SEND_FAST_ZERO: 1 << 11,
} as const;

/** Request types. */
export const Cmd = {
  READ: 0,
  WRITE: 1,
  DISC: 2,
  FLUSH: 3,
  TRIM: 4,
  CACHE: 5,
  WRITE_ZEROES: 6,
  BLOCK_STATUS: 7,
} as const;
export type CmdValue = (typeof Cmd)[keyof typeof Cmd];

/** Request (command) flags. */
export const CmdFlag = { FUA: 1 << 0, NO_HOLE: 1 << 1, DF: 1 << 2, REQ_ONE: 1 << 3, FAST_ZERO: 1 << 4 } as const;

/** Structured reply chunk flags. */
export const ReplyFlag = { DONE: 1 << 0 } as const;

/** Structured reply chunk types. Error types have bit 15 set. */
export const ReplyType = {
  NONE: 0,
  OFFSET_DATA: 1,
  OFFSET_HOLE: 2,
  BLOCK_STATUS: 5,
  ERROR: 0x8000 + 1,
  ERROR_OFFSET: 0x8000 + 2,
} as const;

/** Error values of the transmission phase (proto.md "Error values"). */
export const NbdErrno = {
  EPERM: 1,
  EIO: 5,
  ENOMEM: 12,
  EINVAL: 22,
  ENOSPC: 28,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
} as const;
const VALID_ERRNOS: ReadonlySet<number> = new Set(Object.values(NbdErrno));

/** Map any errno to one NBD allows on the wire (EIO for the rest). */
export function nbdErrno(errno: number | undefined): number {
  return errno !== undefined && VALID_ERRNOS.has(errno) ? errno : NbdErrno.EIO;
}

/** `base:allocation` status flags. */
export const StateFlag = { HOLE: 1 << 0, ZERO: 1 << 1 } as const;

/** The one metadata context this server knows. */
export const BASE_ALLOCATION = 'base:allocation';

/** Largest option payload we buffer. The longest legal option (GO with a 4 KiB name and
 *  a handful of info requests, or SET_META_CONTEXT with a few queries) is far below this. */
export const MAX_OPTION_LENGTH = 64 * 1024;
/** proto.md: strings (export names, queries) MUST be no longer than 4096 bytes. */
export const MAX_STRING_LENGTH = 4096;

/** Size of the fixed request header. */
export const REQUEST_HEADER_SIZE = 28;
/** Size of a simple reply header. */
export const SIMPLE_REPLY_SIZE = 16;
/** Size of a structured reply chunk header. */
export const STRUCTURED_HEADER_SIZE = 20;

// ---------------------------------------------------------------------------------------------
// Byte queue with a cursor
// ---------------------------------------------------------------------------------------------

/**
 * FIFO of received chunks with a read cursor. Hands out views of a chunk when the bytes are
 * contiguous and copies only what spans chunks (STYLE.md §2).
 */
export class ChunkQueue {
  private chunks: Buffer[] = [];
  /** Read position inside chunks[0]. */
  private pos = 0;
  /** Unread bytes over all chunks. */
  length = 0;

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.length += chunk.length;
  }

  /** The head chunk and cursor when at least `n` bytes are contiguous there, else undefined. */
  contiguous(n: number): { buf: Buffer; pos: number } | undefined {
    const head = this.chunks[0];
    if (head === undefined || head.length - this.pos < n) return undefined;
    return { buf: head, pos: this.pos };
  }

  /** Bytes available contiguously at the head. */
  headAvailable(): number {
    const head = this.chunks[0];
    return head === undefined ? 0 : head.length - this.pos;
  }

  /** Peek at the head chunk without consuming. */
  headView(): { buf: Buffer; pos: number } | undefined {
    const head = this.chunks[0];
    return head === undefined ? undefined : { buf: head, pos: this.pos };
  }

  /** Drop `n` bytes (n ≤ length). */
  skip(n: number): void {
    this.length -= n;
    while (n > 0) {
      const head = this.chunks[0] as Buffer;
      const avail = head.length - this.pos;
      if (n < avail) {
        this.pos += n;
        return;
      }
      n -= avail;
      this.chunks.shift();
      this.pos = 0;
    }
  }

  /** Copy `n` bytes (n ≤ length) into `dst` at `dstOff` and consume them. */
  copyOut(dst: Buffer, dstOff: number, n: number): void {
    this.length -= n;
    while (n > 0) {
      const head = this.chunks[0] as Buffer;
      const avail = head.length - this.pos;
      const take = n < avail ? n : avail;
      head.copy(dst, dstOff, this.pos, this.pos + take);
      dstOff += take;
      n -= take;
      if (take === avail) {
        this.chunks.shift();
        this.pos = 0;
      } else {
        this.pos += take;
      }
    }
  }

  /** Consume `n` bytes (n ≤ length): a view when contiguous, otherwise one copy. */
  take(n: number): Buffer {
    const head = this.chunks[0];
    if (head !== undefined && head.length - this.pos >= n) {
      const view = head.subarray(this.pos, this.pos + n);
      this.skip(n);
      return view;
    }
    const out = Buffer.allocUnsafe(n);
    this.copyOut(out, 0, n);
    return out;
  }

  /** Remove and return every unread byte as chunks (views, no copies). */
  drain(): Buffer[] {
    const out = this.chunks;
    const head = out[0];
    if (head !== undefined && this.pos > 0) out[0] = head.subarray(this.pos);
    this.chunks = [];
    this.pos = 0;
    this.length = 0;
    return out;
  }
}

// ---------------------------------------------------------------------------------------------
// Handshake: greeting and option haggling (proto.md "Fixed newstyle negotiation")
// ---------------------------------------------------------------------------------------------

/**
 * Server greeting, 18 bytes:
 * `NBDMAGIC u64 | IHAVEOPT u64 | handshake flags u16`.
 */
export function encodeGreeting(flags: number = HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES): Buffer {
  const b = Buffer.allocUnsafe(18);
  b.writeBigUInt64BE(NBD_MAGIC, 0);
  b.writeBigUInt64BE(NBD_IHAVEOPT, 8);
  b.writeUInt16BE(flags, 16);
  return b;
}

/** What the option parser hands out. */
export type HandshakeEvent =
  | { kind: 'clientFlags'; flags: number }
  | { kind: 'option'; option: number; data: Buffer };

const HsState = { CLIENT_FLAGS: 0, OPTION_HEADER: 1, OPTION_DATA: 2 } as const;
type HsStateValue = (typeof HsState)[keyof typeof HsState];

/**
 * Incremental parser of what a client sends during the handshake:
 * `client flags u32`, then options `IHAVEOPT u64 | option u32 | length u32 | data`.
 *
 * Throws `NBD_ERR_BAD_MAGIC` on a wrong option magic and `NBD_ERR_OPTION_TOO_LARGE` when the
 * announced length exceeds {@link MAX_OPTION_LENGTH} — before buffering any of the data.
 * Client flag validation is the caller's (it knows what it advertised).
 */
export class NbdOptionParser {
  private readonly q = new ChunkQueue();
  private state: HsStateValue = HsState.CLIENT_FLAGS;
  private option = 0;
  private optLength = 0;

  /**
   * @param afterClientFlags the client flags were already read (by the STARTTLS gate, on the
   *   plain socket): after TLS the option haggling continues with an option header, no flags.
   */
  constructor(private readonly maxOptionLength = MAX_OPTION_LENGTH, afterClientFlags = false) {
    if (afterClientFlags) this.state = HsState.OPTION_HEADER;
  }

  push(chunk: Buffer): void {
    this.q.push(chunk);
  }

  /** Unread bytes (the bytes that follow the final option belong to transmission). */
  get buffered(): number {
    return this.q.length;
  }

  /** Next complete event, or undefined until more bytes arrive. */
  next(): HandshakeEvent | undefined {
    for (;;) {
      switch (this.state) {
        case HsState.CLIENT_FLAGS: {
          if (this.q.length < 4) return undefined;
          const flags = this.readU32();
          this.state = HsState.OPTION_HEADER;
          return { kind: 'clientFlags', flags };
        }
        case HsState.OPTION_HEADER: {
          if (this.q.length < 16) return undefined;
          const h = this.q.take(16);
          if (h.readBigUInt64BE(0) !== NBD_IHAVEOPT) {
            throw new NvmfNbdError(ErrorCode.NBD_BAD_MAGIC, 'option does not start with IHAVEOPT');
          }
          this.option = h.readUInt32BE(8);
          this.optLength = h.readUInt32BE(12);
          if (this.optLength > this.maxOptionLength) {
            throw new NvmfNbdError(
              ErrorCode.NBD_OPTION_TOO_LARGE,
              `option ${this.option} announces ${this.optLength} bytes (limit ${this.maxOptionLength})`,
            );
          }
          this.state = HsState.OPTION_DATA;
          break;
        }
        case HsState.OPTION_DATA: {
          if (this.q.length < this.optLength) return undefined;
          const data = this.q.take(this.optLength);
          this.state = HsState.OPTION_HEADER;
          return { kind: 'option', option: this.option, data };
        }
        default: {
          const never: never = this.state;
          throw new Error(`unreachable state ${String(never)}`);
        }
      }
    }
  }

  /** True when a partial message is buffered (a close now truncates it). */
  get partial(): boolean {
    return this.q.length > 0 || this.state === HsState.OPTION_DATA;
  }

  /** Hand over the unread bytes (after GO / EXPORT_NAME they are transmission requests). */
  drain(): Buffer[] {
    return this.q.drain();
  }

  private readU32(): number {
    const c = this.q.contiguous(4);
    if (c !== undefined) {
      const v = c.buf.readUInt32BE(c.pos);
      this.q.skip(4);
      return v;
    }
    return this.q.take(4).readUInt32BE(0);
  }
}

/** An `NBD_OPT_INFO` / `NBD_OPT_GO` request: `name len u32 | name | n u16 | n × info u16`. */
export interface InfoRequest {
  name: string;
  infos: number[];
}

function badOption(msg: string): NvmfNbdError {
  return new NvmfNbdError(ErrorCode.NBD_PROTOCOL, msg);
}

function readString(data: Buffer, off: number, len: number, what: string): string {
  if (len > MAX_STRING_LENGTH) throw badOption(`${what} longer than ${MAX_STRING_LENGTH} bytes`);
  if (off + len > data.length) throw badOption(`${what} overruns the option`);
  return data.toString('utf8', off, off + len);
}

/** Decode INFO/GO option data. Throws `NBD_ERR_PROTOCOL` (→ NBD_REP_ERR_INVALID) when malformed. */
export function parseInfoRequest(data: Buffer): InfoRequest {
  if (data.length < 6) throw badOption('INFO/GO option shorter than 6 bytes');
  const nameLen = data.readUInt32BE(0);
  const name = readString(data, 4, nameLen, 'export name');
  let off = 4 + nameLen;
  if (off + 2 > data.length) throw badOption('INFO/GO option lacks the info count');
  const n = data.readUInt16BE(off);
  off += 2;
  if (off + 2 * n !== data.length) throw badOption('INFO/GO info count does not match the option length');
  const infos: number[] = [];
  for (let i = 0; i < n; i++) infos.push(data.readUInt16BE(off + 2 * i));
  return { name, infos };
}

/** Encode INFO/GO option data (for tests and clients). */
export function encodeInfoRequest(name: string, infos: readonly number[] = []): Buffer {
  const nb = Buffer.from(name, 'utf8');
  const b = Buffer.allocUnsafe(4 + nb.length + 2 + 2 * infos.length);
  b.writeUInt32BE(nb.length, 0);
  nb.copy(b, 4);
  b.writeUInt16BE(infos.length, 4 + nb.length);
  infos.forEach((t, i) => b.writeUInt16BE(t, 6 + nb.length + 2 * i));
  return b;
}

/** A LIST_META_CONTEXT / SET_META_CONTEXT request:
 *  `name len u32 | name | n u32 | n × (len u32 | query)`. */
export interface MetaContextRequest {
  name: string;
  queries: string[];
}

/** Decode LIST/SET_META_CONTEXT option data. Throws `NBD_ERR_PROTOCOL` when malformed. */
export function parseMetaContextRequest(data: Buffer): MetaContextRequest {
  if (data.length < 8) throw badOption('META_CONTEXT option shorter than 8 bytes');
  const nameLen = data.readUInt32BE(0);
  const name = readString(data, 4, nameLen, 'export name');
  let off = 4 + nameLen;
  if (off + 4 > data.length) throw badOption('META_CONTEXT option lacks the query count');
  const n = data.readUInt32BE(off);
  off += 4;
  const queries: string[] = [];
  for (let i = 0; i < n; i++) {
    if (off + 4 > data.length) throw badOption('META_CONTEXT query overruns the option');
    const len = data.readUInt32BE(off);
    off += 4;
    queries.push(readString(data, off, len, 'query'));
    off += len;
  }
  if (off !== data.length) throw badOption('META_CONTEXT option has trailing bytes');
  return { name, queries };
}

/** Encode LIST/SET_META_CONTEXT option data (for tests and clients). */
export function encodeMetaContextRequest(name: string, queries: readonly string[]): Buffer {
  const parts: Buffer[] = [];
  const nb = Buffer.from(name, 'utf8');
  const head = Buffer.allocUnsafe(4);
  head.writeUInt32BE(nb.length, 0);
  parts.push(head, nb);
  const cnt = Buffer.allocUnsafe(4);
  cnt.writeUInt32BE(queries.length, 0);
  parts.push(cnt);
  for (const q of queries) {
    const qb = Buffer.from(q, 'utf8');
    const l = Buffer.allocUnsafe(4);
    l.writeUInt32BE(qb.length, 0);
    parts.push(l, qb);
  }
  return Buffer.concat(parts);
}

/** Encode a client option (for tests and clients): `IHAVEOPT | option | length | data`. */
export function encodeOption(option: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.allocUnsafe(16 + data.length);
  b.writeBigUInt64BE(NBD_IHAVEOPT, 0);
  b.writeUInt32BE(option, 8);
  b.writeUInt32BE(data.length, 12);
  data.copy(b, 16);
  return b;
}

/**
 * Option reply: `magic u64 | option u32 | reply type u32 | length u32 | data`.
 * (proto.md "Fixed newstyle negotiation"; 20-byte header.)
 */
export function encodeOptionReply(option: number, type: number, data?: Buffer): Buffer {
  const len = data === undefined ? 0 : data.length;
  const b = Buffer.allocUnsafe(20 + len);
  b.writeBigUInt64BE(NBD_OPT_REPLY_MAGIC, 0);
  b.writeUInt32BE(option, 8);
  b.writeUInt32BE(type >>> 0, 12);
  b.writeUInt32BE(len, 16);
  if (data !== undefined) data.copy(b, 20);
  return b;
}

/** `NBD_REP_ACK`. */
export function encodeRepAck(option: number): Buffer {
  return encodeOptionReply(option, Rep.ACK);
}

/** Error reply (bit 31 set) with an optional human-readable message. */
export function encodeRepError(option: number, type: number, message?: string): Buffer {
  return encodeOptionReply(option, type, message === undefined ? undefined : Buffer.from(message, 'utf8'));
}

/** `NBD_REP_SERVER`: `name len u32 | name | description (rest)`. */
export function encodeRepServer(option: number, name: string, description = ''): Buffer {
  const nb = Buffer.from(name, 'utf8');
  const db = Buffer.from(description, 'utf8');
  const data = Buffer.allocUnsafe(4 + nb.length + db.length);
  data.writeUInt32BE(nb.length, 0);
  nb.copy(data, 4);
  db.copy(data, 4 + nb.length);
  return encodeOptionReply(option, Rep.SERVER, data);
}

/** `NBD_REP_INFO` / `NBD_INFO_EXPORT`: `type u16 = 0 | size u64 | transmission flags u16`. */
export function encodeInfoExport(option: number, size: number, flags: number): Buffer {
  const data = Buffer.allocUnsafe(12);
  data.writeUInt16BE(InfoType.EXPORT, 0);
  data.writeBigUInt64BE(BigInt(size), 2);
  data.writeUInt16BE(flags, 10);
  return encodeOptionReply(option, Rep.INFO, data);
}

function infoString(option: number, type: number, s: string): Buffer {
  const sb = Buffer.from(s, 'utf8');
  const data = Buffer.allocUnsafe(2 + sb.length);
  data.writeUInt16BE(type, 0);
  sb.copy(data, 2);
  return encodeOptionReply(option, Rep.INFO, data);
}

/** `NBD_INFO_NAME`: `type u16 = 1 | name`. */
export function encodeInfoName(option: number, name: string): Buffer {
  return infoString(option, InfoType.NAME, name);
}

/** `NBD_INFO_DESCRIPTION`: `type u16 = 2 | description`. */
export function encodeInfoDescription(option: number, description: string): Buffer {
  return infoString(option, InfoType.DESCRIPTION, description);
}

/** `NBD_INFO_BLOCK_SIZE`: `type u16 = 3 | minimum u32 | preferred u32 | maximum u32`. */
export function encodeInfoBlockSize(option: number, min: number, preferred: number, max: number): Buffer {
  const data = Buffer.allocUnsafe(14);
  data.writeUInt16BE(InfoType.BLOCK_SIZE, 0);
  data.writeUInt32BE(min, 2);
  data.writeUInt32BE(preferred, 6);
  data.writeUInt32BE(max, 10);
  return encodeOptionReply(option, Rep.INFO, data);
}

/** `NBD_REP_META_CONTEXT`: `context id u32 | name`. */
export function encodeRepMetaContext(option: number, id: number, name: string): Buffer {
  const nb = Buffer.from(name, 'utf8');
  const data = Buffer.allocUnsafe(4 + nb.length);
  data.writeUInt32BE(id, 0);
  nb.copy(data, 4);
  return encodeOptionReply(option, Rep.META_CONTEXT, data);
}

/**
 * Reply to `NBD_OPT_EXPORT_NAME`: `size u64 | transmission flags u16 | 124 zero bytes` — the
 * zeroes are left out when the client set NO_ZEROES.
 */
export function encodeExportNameReply(size: number, flags: number, noZeroes: boolean): Buffer {
  const b = Buffer.alloc(noZeroes ? 10 : 134);
  b.writeBigUInt64BE(BigInt(size), 0);
  b.writeUInt16BE(flags, 8);
  return b;
}

// ---------------------------------------------------------------------------------------------
// Transmission (proto.md "Transmission")
// ---------------------------------------------------------------------------------------------

/**
 * One request. The 64-bit cookie ("handle") is kept as two u32 halves so parsing allocates
 * nothing; replies echo them back. Offsets above 2^53 lose precision but are then far beyond
 * any device size, so the range check still rejects them.
 */
export interface NbdRequest {
  flags: number;
  type: number;
  cookieHi: number;
  cookieLo: number;
  offset: number;
  length: number;
  /** WRITE payload: a view of the socket chunk when contiguous, else one copy. */
  data: Buffer | undefined;
}

/** The 64-bit cookie of a request as a bigint (logging, tests). */
export function cookieOf(r: { cookieHi: number; cookieLo: number }): bigint {
  return (BigInt(r.cookieHi) << 32n) | BigInt(r.cookieLo);
}

/** Encode a request (for tests and clients): 28-byte header, then the payload if any. */
export function encodeRequest(r: { flags?: number; type: number; cookie: bigint; offset: number | bigint; length: number; data?: Buffer }): Buffer {
  const dl = r.data === undefined ? 0 : r.data.length;
  const b = Buffer.allocUnsafe(REQUEST_HEADER_SIZE + dl);
  b.writeUInt32BE(NBD_REQUEST_MAGIC, 0);
  b.writeUInt16BE(r.flags ?? 0, 4);
  b.writeUInt16BE(r.type, 6);
  b.writeBigUInt64BE(r.cookie, 8);
  b.writeBigUInt64BE(BigInt(r.offset), 16);
  b.writeUInt32BE(r.length, 24);
  if (r.data !== undefined) r.data.copy(b, REQUEST_HEADER_SIZE);
  return b;
}

const RqState = { HEADER: 0, PAYLOAD: 1 } as const;
type RqStateValue = (typeof RqState)[keyof typeof RqState];

/**
 * Incremental parser of transmission requests:
 * `magic u32 | flags u16 | type u16 | cookie u64 | offset u64 | length u32 | [WRITE payload]`.
 *
 * The header is read in place from the socket chunk (a 28-byte scratch only when it spans
 * chunks). A WRITE payload is a view when it lies in one chunk; otherwise its buffer is
 * allocated once when the header arrives and filled as chunks come, so a 32 MiB write never
 * sits in memory twice.
 *
 * Fatal errors (throw, the caller disconnects): bad magic → `NBD_ERR_BAD_MAGIC`; a WRITE whose
 * length exceeds `maxWritePayload` → `NBD_ERR_REQUEST_TOO_LARGE`, raised on the header, before
 * buffering any payload: we cannot answer it and stay in sync without reading it all.
 */
export class NbdRequestParser {
  private readonly q = new ChunkQueue();
  private readonly scratch = Buffer.allocUnsafe(REQUEST_HEADER_SIZE);
  private state: RqStateValue = RqState.HEADER;
  /** The one request object {@link nextShared} refills (a WRITE awaiting its payload waits in it). */
  private readonly cur: NbdRequest = { flags: 0, type: 0, cookieHi: 0, cookieLo: 0, offset: 0, length: 0, data: undefined };
  private pending: NbdRequest | undefined;
  private payload: Buffer | undefined;
  private filled = 0;

  /**
   * @param allocPayload makes the buffer of a WRITE payload that spans chunks (the NBD server
   *   passes its pool, block/io-buffers.ts, and gives the buffer back when the write is done).
   */
  constructor(
    private readonly maxWritePayload: number,
    private readonly allocPayload: (n: number) => Buffer = (n) => Buffer.allocUnsafe(n),
  ) {}

  push(chunk: Buffer): void {
    this.q.push(chunk);
  }

  /** Bytes received and not yet returned (includes a partly assembled payload). */
  get buffered(): number {
    return this.q.length + this.filled;
  }

  /** True when a partial request is held (a close now truncates it). */
  get partial(): boolean {
    return this.q.length > 0 || this.state === RqState.PAYLOAD;
  }

  /** Next complete request (a new object), or undefined until more bytes arrive. */
  next(): NbdRequest | undefined {
    const r = this.nextShared();
    return r === undefined ? undefined : { ...r };
  }

  /**
   * Like {@link next}, but the returned object is the parser's own, refilled by the next call:
   * the hot path copies what it needs out of it and allocates nothing per request.
   */
  nextShared(): NbdRequest | undefined {
    for (;;) {
      switch (this.state) {
        case RqState.HEADER: {
          if (this.q.length < REQUEST_HEADER_SIZE) return undefined;
          let buf: Buffer;
          let p: number;
          const c = this.q.contiguous(REQUEST_HEADER_SIZE);
          if (c !== undefined) {
            buf = c.buf;
            p = c.pos;
            this.q.skip(REQUEST_HEADER_SIZE);
          } else {
            this.q.copyOut(this.scratch, 0, REQUEST_HEADER_SIZE);
            buf = this.scratch;
            p = 0;
          }
          if (buf.readUInt32BE(p) !== NBD_REQUEST_MAGIC) {
            throw new NvmfNbdError(ErrorCode.NBD_BAD_MAGIC, `bad request magic 0x${buf.readUInt32BE(p).toString(16)}`);
          }
          const req = this.cur;
          req.flags = buf.readUInt16BE(p + 4);
          req.type = buf.readUInt16BE(p + 6);
          req.cookieHi = buf.readUInt32BE(p + 8);
          req.cookieLo = buf.readUInt32BE(p + 12);
          req.offset = buf.readUInt32BE(p + 16) * 4294967296 + buf.readUInt32BE(p + 20);
          req.length = buf.readUInt32BE(p + 24);
          req.data = undefined;
          if (req.type !== Cmd.WRITE || req.length === 0) return req;
          if (req.length > this.maxWritePayload) {
            throw new NvmfNbdError(
              ErrorCode.NBD_REQUEST_TOO_LARGE,
              `WRITE of ${req.length} bytes exceeds the ${this.maxWritePayload}-byte limit`,
              { errno: NbdErrno.EOVERFLOW },
            );
          }
          const view = this.q.contiguous(req.length);
          if (view !== undefined) {
            req.data = view.buf.subarray(view.pos, view.pos + req.length);
            this.q.skip(req.length);
            return req;
          }
          this.pending = req;
          this.payload = this.allocPayload(req.length);
          this.filled = 0;
          this.state = RqState.PAYLOAD;
          break;
        }
        case RqState.PAYLOAD: {
          const req = this.pending as NbdRequest;
          const payload = this.payload as Buffer;
          const want = req.length - this.filled;
          const n = want < this.q.length ? want : this.q.length;
          if (n > 0) {
            this.q.copyOut(payload, this.filled, n);
            this.filled += n;
          }
          if (this.filled < req.length) return undefined;
          req.data = payload;
          this.pending = undefined;
          this.payload = undefined;
          this.filled = 0;
          this.state = RqState.HEADER;
          return req;
        }
        default: {
          const never: never = this.state;
          throw new Error(`unreachable state ${String(never)}`);
        }
      }
    }
  }
}

/** Simple reply header, 16 bytes: `magic u32 | error u32 | cookie u64` (READ data follows). */
export function encodeSimpleReply(error: number, cookieHi: number, cookieLo: number): Buffer {
  const b = Buffer.allocUnsafe(SIMPLE_REPLY_SIZE);
  b.writeUInt32BE(NBD_SIMPLE_REPLY_MAGIC, 0);
  b.writeUInt32BE(error, 4);
  b.writeUInt32BE(cookieHi, 8);
  b.writeUInt32BE(cookieLo, 12);
  return b;
}

function chunkHeader(b: Buffer, flags: number, type: number, cookieHi: number, cookieLo: number, length: number): void {
  b.writeUInt32BE(NBD_STRUCTURED_REPLY_MAGIC, 0);
  b.writeUInt16BE(flags, 4);
  b.writeUInt16BE(type, 6);
  b.writeUInt32BE(cookieHi, 8);
  b.writeUInt32BE(cookieLo, 12);
  b.writeUInt32BE(length, 16);
}

/** Structured chunk header, 20 bytes: `magic u32 | flags u16 | type u16 | cookie u64 | length u32`. */
export function encodeChunkHeader(flags: number, type: number, cookieHi: number, cookieLo: number, length: number): Buffer {
  const b = Buffer.allocUnsafe(STRUCTURED_HEADER_SIZE);
  chunkHeader(b, flags, type, cookieHi, cookieLo, length);
  return b;
}

/** `NBD_REPLY_TYPE_NONE` with DONE: the 20-byte header alone. */
export function encodeChunkNone(cookieHi: number, cookieLo: number): Buffer {
  return encodeChunkHeader(ReplyFlag.DONE, ReplyType.NONE, cookieHi, cookieLo, 0);
}

/**
 * Header of an `NBD_REPLY_TYPE_OFFSET_DATA` chunk, 28 bytes: chunk header (length = 8 + data)
 * then `offset u64`. The data itself is written after it, uncopied.
 */
export function encodeOffsetDataHeader(flags: number, cookieHi: number, cookieLo: number, offset: number, dataLength: number): Buffer {
  const b = Buffer.allocUnsafe(STRUCTURED_HEADER_SIZE + 8);
  chunkHeader(b, flags, ReplyType.OFFSET_DATA, cookieHi, cookieLo, 8 + dataLength);
  b.writeUInt32BE(Math.floor(offset / 4294967296), 20);
  b.writeUInt32BE(offset >>> 0, 24);
  return b;
}

/** `NBD_REPLY_TYPE_OFFSET_HOLE`, 32 bytes: header (length 12) | `offset u64 | hole size u32`. */
export function encodeOffsetHole(flags: number, cookieHi: number, cookieLo: number, offset: number, size: number): Buffer {
  const b = Buffer.allocUnsafe(STRUCTURED_HEADER_SIZE + 12);
  chunkHeader(b, flags, ReplyType.OFFSET_HOLE, cookieHi, cookieLo, 12);
  b.writeUInt32BE(Math.floor(offset / 4294967296), 20);
  b.writeUInt32BE(offset >>> 0, 24);
  b.writeUInt32BE(size, 28);
  return b;
}

/** One `base:allocation` style extent. */
export interface Extent {
  length: number;
  flags: number;
}

/**
 * `NBD_REPLY_TYPE_BLOCK_STATUS`: header (length 4 + 8n) | `context id u32` |
 * n × `(length u32 | status flags u32)`.
 */
export function encodeBlockStatus(flags: number, cookieHi: number, cookieLo: number, contextId: number, extents: readonly Extent[]): Buffer {
  const len = 4 + 8 * extents.length;
  const b = Buffer.allocUnsafe(STRUCTURED_HEADER_SIZE + len);
  chunkHeader(b, flags, ReplyType.BLOCK_STATUS, cookieHi, cookieLo, len);
  b.writeUInt32BE(contextId, 20);
  extents.forEach((e, i) => {
    b.writeUInt32BE(e.length, 24 + 8 * i);
    b.writeUInt32BE(e.flags, 28 + 8 * i);
  });
  return b;
}

/** `NBD_REPLY_TYPE_ERROR`: header (length 6 + m) | `error u32 | message length u16 | message`. */
export function encodeChunkError(flags: number, cookieHi: number, cookieLo: number, error: number, message = ''): Buffer {
  const mb = Buffer.from(message, 'utf8');
  const len = 6 + mb.length;
  const b = Buffer.allocUnsafe(STRUCTURED_HEADER_SIZE + len);
  chunkHeader(b, flags, ReplyType.ERROR, cookieHi, cookieLo, len);
  b.writeUInt32BE(error, 20);
  b.writeUInt16BE(mb.length, 24);
  mb.copy(b, 26);
  return b;
}
