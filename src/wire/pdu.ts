/**
 * NVMe/TCP PDU codecs (NVM Express TCP Transport Specification, TP 8000 / NVMe-oF 1.1 §7.4).
 *
 * Pure: no sockets, no timers. `PduParser` is incremental (a cursor over each pushed chunk,
 * header copied only when it spans chunks, data handed out as subarray views when contiguous);
 * encoders return `Buffer[]` for one corked writev, with the caller's data Buffer never copied.
 *
 * Common header (8 bytes, little-endian): type u8 @0, flags u8 @1, hlen u8 @2, pdo u8 @3, plen u32 @4.
 * A PDU is: header (hlen) [HDGST 4] [pad to pdo] [data] [DDGST 4].
 */
import { crc32c } from './crc32c';
import { ErrorCode, NvmfNbdError, type ErrorCodeValue } from '../errors';

/** PDU types (TP 8000 §7.4.1 Figure 19). */
export const PduType = {
  IC_REQ: 0x00,
  IC_RESP: 0x01,
  H2C_TERM_REQ: 0x02,
  C2H_TERM_REQ: 0x03,
  CAPSULE_CMD: 0x04,
  CAPSULE_RESP: 0x05,
  H2C_DATA: 0x06,
  C2H_DATA: 0x07,
  R2T: 0x09,
} as const;
export type PduTypeValue = (typeof PduType)[keyof typeof PduType];

/** Common-header flag bits. SUCCESS is defined for C2HData only. */
export const PduFlag = { HDGSTF: 0x01, DDGSTF: 0x02, LAST_PDU: 0x04, SUCCESS: 0x08 } as const;

/** Fatal Error Status carried in a TermReq (TP 8000 §7.4.7). */
export const Fes = {
  INVALID_HEADER_FIELD: 1,
  PDU_SEQUENCE_ERROR: 2,
  HEADER_DIGEST_ERROR: 3,
  DATA_OUT_OF_RANGE: 4,
  DATA_LIMIT_EXCEEDED: 5,
  UNSUPPORTED_PARAMETER: 6,
} as const;

/** Fixed header lengths (hlen) per PDU type. */
export const PduHeaderLength = {
  IC: 128,
  TERM_REQ: 24,
  CAPSULE_CMD: 72,
  CAPSULE_RESP: 24,
  DATA: 24,
  R2T: 24,
} as const;

/** Largest data section of a TermReq: the offending PDU header (TP 8000 allows up to 152 bytes). */
export const TERM_REQ_MAX_DATA = 152;

/** A parsed PDU. `data` and `sqe`/`cqe` are views into the pushed chunks when contiguous. */
export type Pdu =
  | { type: 0x00; pfv: number; hpda: number; hdgst: boolean; ddgst: boolean; maxr2t: number }
  | { type: 0x01; pfv: number; cpda: number; hdgst: boolean; ddgst: boolean; maxh2cdata: number }
  | { type: 0x02 | 0x03; fes: number; fei: number; header: Buffer }
  | { type: 0x04; sqe: Buffer /* 64 bytes */; data: Buffer | undefined; dataDigestOk: boolean }
  | { type: 0x05; cqe: Buffer /* 16 bytes */ }
  | { type: 0x06; cccid: number; ttag: number; datao: number; last: boolean; data: Buffer; dataDigestOk: boolean }
  | { type: 0x07; cccid: number; datao: number; last: boolean; success: boolean; data: Buffer; dataDigestOk: boolean }
  | { type: 0x09; cccid: number; ttag: number; r2to: number; r2tl: number };

/** Digest and alignment settings of one direction, fixed by the ICReq/ICResp exchange. */
export interface PduOptions {
  hdgst: boolean;
  ddgst: boolean;
  /** receiver's PDA (cpda or hpda), data aligned to (pda+1)*4 */
  pda: number;
}

/** Options of {@link PduParser}. */
export interface PduParserOptions {
  /** 'host' parses controller→host PDUs (ICResp, C2HTermReq, CapsuleResp, C2HData, R2T);
   *  'controller' parses host→controller PDUs (ICReq, H2CTermReq, CapsuleCmd, H2CData). */
  role: 'host' | 'controller';
  /** Largest data section accepted in one PDU; larger plen → error before buffering. */
  maxData: number;
  /**
   * Optional: the PDA this side announced (hpda for a host, cpda for a controller). When given,
   * the pdo of every data-carrying PDU must be a multiple of (pda+1)*4; otherwise only of 4.
   */
  pda?: number;
  /**
   * Optional: the final destination of a data PDU's payload (H2CData on the controller side,
   * C2HData on the host side). Called once per data PDU as soon as its header is complete and
   * checked (digest, datal), before any payload byte is consumed, with `ttag` 0 for C2HData.
   * Return a Buffer of exactly `datal` bytes: the parser copies the payload straight from the
   * pushed chunks into it (piece by piece when the PDU spans chunks; never assembled in an
   * intermediate buffer) and delivers the PDU with `data` = that Buffer. Return undefined for
   * the default delivery (a view, or one fresh Buffer when the PDU spans chunks). A throw (an
   * `NvmfNbdError` with fes/fei: unknown cccid, datao out of order) fails the parser like its
   * own errors, before the payload is read.
   */
  placeData?: PlaceData;
  /**
   * Optional: the caller reuses the memory of a pushed chunk once `push` returns (a socket reading
   * into one buffer, `net.Socket` `onread`). The parser then copies what it still holds of the
   * chunk (a header whose data follows, a payload awaiting its digest) before returning, and the
   * views in delivered PDUs (sqe, cqe, unplaced data) are valid only during `onPdu`.
   */
  reusesChunks?: boolean;
  /**
   * Optional (host role): the two PDUs of every I/O, CapsuleResp and C2HData, go to this sink
   * instead of `onPdu`, decoded into numbers — no `Pdu` object, header view or CQE view per PDU.
   * Every other PDU still goes to `onPdu`.
   */
  sink?: HostPduSink;
}

/**
 * The host's per-I/O PDUs without objects ({@link PduParserOptions.sink}). Same checks as for
 * `onPdu` delivery; a throw fails the parser the same way.
 */
export interface HostPduSink {
  /** A CapsuleResp: its 16-byte CQE is `buf[off, off + 16)`, valid only during the call. */
  onCapsuleResp(buf: Buffer, off: number): void;
  /**
   * A C2HData: `flags` is the common header's (LAST_PDU, SUCCESS); `data` the payload — the
   * `placeData` destination when one was returned, else a view valid only during the call.
   */
  onC2HData(cccid: number, datao: number, flags: number, data: Buffer, dataDigestOk: boolean): void;
}

/** See {@link PduParserOptions.placeData}. */
export type PlaceData = (type: 0x06 | 0x07, cccid: number, ttag: number, datao: number, datal: number) => Buffer | undefined;

/** Largest header we ever hold: ICReq/ICResp (128) or CapsuleCmd + HDGST (76). */
const MAX_HEADER = 132;
const CH_LEN = 8;

const State = { HEADER: 0, PAD: 1, DATA: 2, DDGST: 3 } as const;
type StateValue = (typeof State)[keyof typeof State];

/** What the common header told us about the PDU being parsed. */
interface Current {
  type: PduTypeValue;
  flags: number;
  hlen: number;
  /** hlen + 4 when the header is digested. */
  headerLen: number;
  /** Offset of the data section from the PDU start (pdo, or hlen for TermReq). */
  dataStart: number;
  dataLen: number;
  /** True when a DDGST trails the data. */
  dd: boolean;
}

function fatal(code: ErrorCodeValue, msg: string, fes: number, fei: number): NvmfNbdError {
  return new NvmfNbdError(code, msg, { fes, fei });
}

/** A common-header error (module-level, not a closure per parsed header). */
function badHeader(type: number, fei: number, what: string, code: ErrorCodeValue = ErrorCode.PDU_INVALID_HEADER,
  fes: number = Fes.INVALID_HEADER_FIELD): NvmfNbdError {
  return fatal(code, `PDU type 0x${type.toString(16)}: ${what}`, fes, fei);
}

function roleAccepts(role: 'host' | 'controller', type: number): type is PduTypeValue {
  if (role === 'host') {
    return type === PduType.IC_RESP || type === PduType.C2H_TERM_REQ || type === PduType.CAPSULE_RESP ||
      type === PduType.C2H_DATA || type === PduType.R2T;
  }
  return type === PduType.IC_REQ || type === PduType.H2C_TERM_REQ || type === PduType.CAPSULE_CMD ||
    type === PduType.H2C_DATA;
}

function expectedHlen(type: PduTypeValue): number {
  switch (type) {
    case PduType.IC_REQ:
    case PduType.IC_RESP:
      return PduHeaderLength.IC;
    case PduType.H2C_TERM_REQ:
    case PduType.C2H_TERM_REQ:
      return PduHeaderLength.TERM_REQ;
    case PduType.CAPSULE_CMD:
      return PduHeaderLength.CAPSULE_CMD;
    case PduType.CAPSULE_RESP:
      return PduHeaderLength.CAPSULE_RESP;
    case PduType.H2C_DATA:
    case PduType.C2H_DATA:
      return PduHeaderLength.DATA;
    case PduType.R2T:
      return PduHeaderLength.R2T;
    default: {
      const never: never = type;
      return never;
    }
  }
}

/**
 * Incremental NVMe/TCP PDU parser for one direction of one connection.
 *
 * Header-level checks (type for the role, hlen, flags vs negotiated digests, pdo, plen, maxData)
 * run as soon as the 8-byte common header is in, before any data is buffered. Checks that need
 * per-command state (unknown cccid, datao order, data past the command's length) belong to the
 * transport. Any thrown error leaves the parser failed: further `push` calls rethrow it.
 *
 * Pushed chunks must not be reused by the caller: delivered PDUs may hold views into them.
 */
export class PduParser {
  private readonly role: 'host' | 'controller';
  private readonly maxData: number;
  private readonly align: number;
  private readonly placeData: PlaceData | undefined;
  private readonly reusesChunks: boolean;
  private readonly sink: HostPduSink | undefined;
  /** C2HData header fields of the PDU being parsed, for the sink (read once from its header). */
  private c2hCccid = 0;
  private c2hDatao = 0;
  /** True while `dataBuf` is a destination returned by `placeData` (not parser memory). */
  private placed = false;
  private hdgst = false;
  private ddgst = false;
  private failed: unknown = undefined;

  private state: StateValue = State.HEADER;
  /** The PDU being parsed (= curObj once its common header is checked), else undefined. */
  private cur: Current | undefined = undefined;
  private readonly curObj: Current = { type: PduType.IC_REQ, flags: 0, hlen: 0, headerLen: 0, dataStart: 0, dataLen: 0, dd: false };
  /** Header bytes gathered across chunks (fresh per PDU, since the delivered sqe/cqe may view it). */
  private hdrBuf: Buffer | undefined = undefined;
  private hdrHave = 0;
  private header: Buffer | undefined = undefined;
  private padLeft = 0;
  /** Data gathered across chunks, exactly dataLen bytes. */
  private dataBuf: Buffer | undefined = undefined;
  private data: Buffer | undefined = undefined;
  private dataHave = 0;
  private ddBuf: Buffer | undefined = undefined;
  private ddHave = 0;
  /** With `reusesChunks`: the one header buffer (delivered views are only valid during onPdu). */
  private ownHdr: Buffer | undefined = undefined;

  constructor(opts: PduParserOptions) {
    this.role = opts.role;
    this.maxData = opts.maxData;
    this.align = opts.pda === undefined ? 4 : (opts.pda + 1) * 4;
    this.placeData = opts.placeData;
    this.reusesChunks = opts.reusesChunks === true;
    this.sink = opts.role === 'host' ? opts.sink : undefined;
  }

  /** Switch digests on after ICReq/ICResp (both directions use the same negotiated digests). */
  setDigests(hdgst: boolean, ddgst: boolean): void {
    this.hdgst = hdgst;
    this.ddgst = ddgst;
  }

  /** Bytes currently held in internal buffers for a PDU that spans chunks (for memory bounds). */
  get buffered(): number {
    return (this.hdrBuf ? this.hdrHave : 0) + (this.dataBuf && !this.placed ? this.dataHave : 0) + (this.ddBuf ? this.ddHave : 0);
  }

  /** Feed bytes; calls onPdu for each complete PDU (data as subarray views when contiguous).
   *  Throws NvmfNbdError with `fes`/`fei` set on a fatal error (the caller sends TermReq, closes).
   *  An exception thrown by `onPdu` propagates too and also leaves the parser failed, since the
   *  rest of the chunk was not consumed. `len` (default: all of it): only `chunk[0, len)` is
   *  fed, so a caller reading into one big buffer needs no view per read. */
  push(chunk: Buffer, onPdu: (pdu: Pdu) => void, len: number = chunk.length): void {
    if (this.failed !== undefined) throw this.failed;
    try {
      this.run(chunk, len, onPdu);
    } catch (err) {
      // The stream position is lost either way (ours or the callback's error): stay failed.
      this.failed = err;
      throw err;
    }
  }

  /**
   * Where the next bytes of the stream may be written directly (e.g. by the kernel, as a socket's
   * read buffer): the unfilled rest of a payload's `placeData` destination, when at least `min`
   * bytes of it are missing; else undefined. The bytes must then be fed with {@link pushDirect}.
   * Reading a large payload this way skips the user-space copy from a socket chunk.
   */
  directTarget(min: number): Buffer | undefined {
    if (this.failed !== undefined || this.state !== State.DATA || !this.placed) return undefined;
    const buf = this.dataBuf!;
    const rest = buf.length - this.dataHave;
    if (rest < min) return undefined;
    return this.dataHave === 0 ? buf : buf.subarray(this.dataHave);
  }

  /** `n` bytes (1..rest) of the stream were written into the buffer {@link directTarget} returned. */
  pushDirect(n: number, onPdu: (pdu: Pdu) => void): void {
    if (this.failed !== undefined) throw this.failed;
    try {
      const cur = this.cur!;
      if (this.state !== State.DATA || !this.placed || n <= 0 || this.dataHave + n > cur.dataLen) {
        throw new Error(`pushDirect(${n}) without a direct target`);
      }
      this.dataHave += n;
      if (this.dataHave === cur.dataLen) this.dataDone(cur, onPdu);
    } catch (err) {
      this.failed = err;
      throw err;
    }
  }

  private run(chunk: Buffer, len: number, onPdu: (pdu: Pdu) => void): void {
    let off = 0;
    while (off < len) {
      switch (this.state) {
        case State.HEADER: {
          if (this.hdrHave === 0) {
            // Fast path: header contiguous in this chunk → view, no copy.
            if (this.cur === undefined && len - off >= CH_LEN) this.cur = this.checkCommonHeader(chunk, off);
            if (this.cur !== undefined && len - off >= this.cur.headerLen) {
              const ho = off;
              off += this.cur.headerLen;
              this.onHeader(chunk, ho, onPdu);
              break;
            }
          }
          const buf = (this.hdrBuf ??= this.reusesChunks ? (this.ownHdr ??= Buffer.allocUnsafeSlow(MAX_HEADER)) : Buffer.allocUnsafe(MAX_HEADER));
          const need = this.cur === undefined ? CH_LEN : this.cur.headerLen;
          const n = Math.min(need - this.hdrHave, len - off);
          chunk.copy(buf, this.hdrHave, off, off + n);
          this.hdrHave += n;
          off += n;
          if (this.hdrHave === need) {
            if (this.cur === undefined) {
              this.cur = this.checkCommonHeader(buf, 0);
            } else {
              this.hdrBuf = undefined;
              this.hdrHave = 0;
              this.onHeader(buf, 0, onPdu);
            }
          }
          break;
        }
        case State.PAD: {
          const n = Math.min(this.padLeft, len - off);
          off += n;
          this.padLeft -= n;
          if (this.padLeft === 0) this.state = State.DATA;
          break;
        }
        case State.DATA: {
          const cur = this.cur!;
          if (this.dataBuf === undefined && len - off >= cur.dataLen) {
            this.data = chunk.subarray(off, off + cur.dataLen);
            off += cur.dataLen;
          } else {
            const buf = (this.dataBuf ??= Buffer.allocUnsafe(cur.dataLen));
            const n = Math.min(cur.dataLen - this.dataHave, len - off);
            chunk.copy(buf, this.dataHave, off, off + n);
            this.dataHave += n;
            off += n;
            if (this.dataHave < cur.dataLen) break;
            this.dataDone(cur, onPdu);
            break;
          }
          if (cur.dd) this.state = State.DDGST;
          else this.emit(true, onPdu);
          break;
        }
        case State.DDGST: {
          let dd: Buffer;
          if (this.ddBuf === undefined && len - off >= 4) {
            dd = chunk.subarray(off, off + 4);
            off += 4;
          } else {
            const buf = (this.ddBuf ??= Buffer.allocUnsafe(4));
            const n = Math.min(4 - this.ddHave, len - off);
            chunk.copy(buf, this.ddHave, off, off + n);
            this.ddHave += n;
            off += n;
            if (this.ddHave < 4) break;
            dd = buf;
            this.ddBuf = undefined;
            this.ddHave = 0;
          }
          this.emit(crc32c(this.data!) === dd.readUInt32LE(0), onPdu);
          break;
        }
        default: {
          const never: never = this.state;
          throw new Error(`unreachable state ${String(never)}`);
        }
      }
    }
    if (this.reusesChunks && this.state !== State.HEADER) this.detach(chunk);
  }

  /** The gathered payload is complete (copied or placed): on to its digest, or deliver. */
  private dataDone(cur: Current, onPdu: (pdu: Pdu) => void): void {
    this.data = this.dataBuf;
    this.dataBuf = undefined;
    this.placed = false;
    this.dataHave = 0;
    if (cur.dd) this.state = State.DDGST;
    else this.emit(true, onPdu);
  }

  /**
   * A PDU continues past this chunk, whose memory the caller reuses: copy what still views it
   * (its header; a contiguous payload awaiting DDGST) into parser memory. Rare for small PDUs;
   * for a large one it is the header (≤ 132 bytes) once.
   */
  private detach(chunk: Buffer): void {
    const h = this.header;
    if (h !== undefined && h.buffer === chunk.buffer) {
      const own = (this.ownHdr ??= Buffer.allocUnsafeSlow(MAX_HEADER));
      // The header may already be in ownHdr's memory only via hdrBuf, which is never a chunk view.
      h.copy(own, 0);
      this.header = own.subarray(0, h.length);
    }
    const d = this.data;
    if (d !== undefined && d.buffer === chunk.buffer) this.data = Buffer.from(d);
  }

  /**
   * Validate the 8-byte common header before buffering anything else (STYLE.md §3).
   * FEI is the byte offset of the offending field in the PDU header.
   */
  private checkCommonHeader(b: Buffer, o: number): Current {
    const type = b[o]!;
    const flags = b[o + 1]!;
    const hlen = b[o + 2]!;
    const pdo = b[o + 3]!;
    const plen = b.readUInt32LE(o + 4);
    if (!roleAccepts(this.role, type)) {
      throw fatal(ErrorCode.PDU_INVALID_TYPE, `PDU type 0x${type.toString(16)} not valid for ${this.role}`,
        Fes.INVALID_HEADER_FIELD, 0);
    }

    const want = expectedHlen(type);
    if (hlen !== want) throw badHeader(type, 2, `hlen ${hlen}, expected ${want}`);

    const digestible = type !== PduType.IC_REQ && type !== PduType.IC_RESP &&
      type !== PduType.H2C_TERM_REQ && type !== PduType.C2H_TERM_REQ;
    const hasHdgstF = (flags & PduFlag.HDGSTF) !== 0;
    const hasDdgstF = (flags & PduFlag.DDGSTF) !== 0;
    const hd = digestible && this.hdgst;
    if (hasHdgstF !== hd) throw badHeader(type, 1, hd ? 'HDGSTF missing' : 'unexpected HDGSTF');
    const headerLen = hlen + (hd ? 4 : 0);

    let dataStart = 0;
    let dataLen = 0;
    let maxLen = this.maxData;
    switch (type) {
      case PduType.IC_REQ:
      case PduType.IC_RESP:
      case PduType.CAPSULE_RESP:
      case PduType.R2T:
        if (pdo !== 0) throw badHeader(type, 3, `pdo ${pdo}, expected 0`);
        if (plen !== headerLen) throw badHeader(type, 4, `plen ${plen}, expected ${headerLen}`);
        break;
      case PduType.H2C_TERM_REQ:
      case PduType.C2H_TERM_REQ:
        if (pdo !== 0) throw badHeader(type, 3, `pdo ${pdo}, expected 0`);
        if (plen < hlen || plen > hlen + TERM_REQ_MAX_DATA) throw badHeader(type, 4, `plen ${plen} out of range`);
        dataStart = hlen;
        dataLen = plen - hlen;
        maxLen = TERM_REQ_MAX_DATA;
        break;
      case PduType.CAPSULE_CMD:
      case PduType.H2C_DATA:
      case PduType.C2H_DATA: {
        if (type === PduType.CAPSULE_CMD && pdo === 0) {
          // No in-capsule data.
          if (plen !== headerLen) throw badHeader(type, 4, `plen ${plen}, expected ${headerLen} without data`);
          break;
        }
        if (pdo < headerLen || pdo % this.align !== 0) throw badHeader(type, 3, `pdo ${pdo} invalid`);
        const dd = this.ddgst ? 4 : 0;
        if (plen <= pdo + dd) throw badHeader(type, 4, `plen ${plen} leaves no data`);
        dataStart = pdo;
        dataLen = plen - pdo - dd;
        break;
      }
      default: {
        const never: never = type;
        throw new Error(`unreachable type ${String(never)}`);
      }
    }
    const carries = dataLen > 0 && digestible;
    const ddExpected = carries && this.ddgst;
    if (hasDdgstF !== ddExpected) throw badHeader(type, 1, ddExpected ? 'DDGSTF missing' : 'unexpected DDGSTF');
    if (dataLen > maxLen) {
      throw badHeader(type, 4, `data ${dataLen} exceeds limit ${maxLen}`, ErrorCode.PDU_TOO_LARGE, Fes.DATA_LIMIT_EXCEEDED);
    }
    if (type === PduType.C2H_DATA && (flags & PduFlag.SUCCESS) !== 0 && (flags & PduFlag.LAST_PDU) === 0) {
      throw badHeader(type, 1, 'SUCCESS without LAST_PDU');
    }
    // One Current per parser, refilled per PDU (only one PDU is ever being parsed).
    const c = this.curObj;
    c.type = type;
    c.flags = flags;
    c.hlen = hlen;
    c.headerLen = headerLen;
    c.dataStart = dataStart;
    c.dataLen = dataLen;
    c.dd = ddExpected;
    return c;
  }

  /**
   * The full header (and HDGST) is in at `b[o, o + headerLen)`: verify the digest, check datal,
   * go to pad/data or emit. A view of it is kept only for PDUs that become `Pdu` objects.
   */
  private onHeader(b: Buffer, o: number, onPdu: (pdu: Pdu) => void): void {
    const cur = this.cur!;
    if (cur.headerLen > cur.hlen) {
      const got = b.readUInt32LE(o + cur.hlen);
      const want = crc32c(b.subarray(o, o + cur.hlen));
      if (got !== want) {
        throw fatal(ErrorCode.HEADER_DIGEST, `header digest mismatch on PDU type 0x${cur.type.toString(16)}`,
          Fes.HEADER_DIGEST_ERROR, cur.hlen);
      }
    }
    const sink = this.sink;
    if (cur.type === PduType.H2C_DATA || cur.type === PduType.C2H_DATA) {
      const datal = b.readUInt32LE(o + 16);
      if (datal !== cur.dataLen) {
        throw fatal(ErrorCode.PDU_INVALID_HEADER, `datal ${datal} does not match plen (data ${cur.dataLen})`,
          Fes.INVALID_HEADER_FIELD, 16);
      }
      const cccid = b.readUInt16LE(o + 8);
      const datao = b.readUInt32LE(o + 12);
      this.c2hCccid = cccid;
      this.c2hDatao = datao;
      if (this.placeData !== undefined) {
        const ttag = cur.type === PduType.H2C_DATA ? b.readUInt16LE(o + 10) : 0;
        const dest = this.placeData(cur.type, cccid, ttag, datao, datal);
        if (dest !== undefined) {
          if (dest.length !== datal) throw new Error(`placeData returned ${dest.length} bytes for a ${datal}-byte payload`);
          // The DATA state copies into dataBuf piece by piece, whatever the chunking.
          this.dataBuf = dest;
          this.dataHave = 0;
          this.placed = true;
        }
      }
    } else if (cur.type === PduType.CAPSULE_RESP && sink !== undefined) {
      this.cur = undefined;
      this.state = State.HEADER;
      sink.onCapsuleResp(b, o + 8);
      return;
    }
    // The sink's C2HData needs only the fields read above.
    this.header = sink !== undefined && cur.type === PduType.C2H_DATA ? undefined : b.subarray(o, o + cur.headerLen);
    if (cur.dataLen === 0) {
      this.emit(true, onPdu);
      return;
    }
    this.padLeft = cur.dataStart - cur.headerLen;
    this.state = this.padLeft > 0 ? State.PAD : State.DATA;
  }

  /** Build the PDU object, reset for the next PDU, then hand it out. */
  private emit(dataDigestOk: boolean, onPdu: (pdu: Pdu) => void): void {
    const cur = this.cur!;
    const h = this.header;
    const data = this.data;
    this.cur = undefined;
    this.header = undefined;
    this.data = undefined;
    this.state = State.HEADER;
    if (h === undefined) {
      // Only a sink's C2HData keeps no header (onHeader).
      (this.sink as HostPduSink).onC2HData(this.c2hCccid, this.c2hDatao, cur.flags, data!, dataDigestOk);
      return;
    }
    onPdu(decodeHeader(cur.type, cur.flags, h, data, dataDigestOk));
  }
}

function decodeHeader(type: PduTypeValue, flags: number, h: Buffer, data: Buffer | undefined, dataDigestOk: boolean): Pdu {
  switch (type) {
    case PduType.IC_REQ:
      return { type, pfv: h.readUInt16LE(8), hpda: h[10]!, hdgst: (h[11]! & 1) !== 0, ddgst: (h[11]! & 2) !== 0, maxr2t: h.readUInt32LE(12) };
    case PduType.IC_RESP:
      return { type, pfv: h.readUInt16LE(8), cpda: h[10]!, hdgst: (h[11]! & 1) !== 0, ddgst: (h[11]! & 2) !== 0, maxh2cdata: h.readUInt32LE(12) };
    case PduType.H2C_TERM_REQ:
    case PduType.C2H_TERM_REQ:
      return { type, fes: h.readUInt16LE(8), fei: h.readUInt32LE(10), header: data ?? Buffer.alloc(0) };
    case PduType.CAPSULE_CMD:
      return { type, sqe: h.subarray(8, 72), data, dataDigestOk };
    case PduType.CAPSULE_RESP:
      return { type, cqe: h.subarray(8, 24) };
    case PduType.H2C_DATA:
      return { type, cccid: h.readUInt16LE(8), ttag: h.readUInt16LE(10), datao: h.readUInt32LE(12),
        last: (flags & PduFlag.LAST_PDU) !== 0, data: data!, dataDigestOk };
    case PduType.C2H_DATA:
      return { type, cccid: h.readUInt16LE(8), datao: h.readUInt32LE(12), last: (flags & PduFlag.LAST_PDU) !== 0,
        success: (flags & PduFlag.SUCCESS) !== 0, data: data!, dataDigestOk };
    case PduType.R2T:
      return { type, cccid: h.readUInt16LE(8), ttag: h.readUInt16LE(10), r2to: h.readUInt32LE(12), r2tl: h.readUInt32LE(16) };
    default: {
      const never: never = type;
      throw new Error(`unreachable type ${String(never)}`);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Encoders

function commonHeader(b: Buffer, type: number, flags: number, hlen: number, pdo: number, plen: number): void {
  b[0] = type;
  b[1] = flags;
  b[2] = hlen;
  b[3] = pdo;
  b.writeUInt32LE(plen, 4);
}

/**
 * ICReq (TP 8000 §7.4.4), 128 bytes: CH, pfv u16 @8 (=0), hpda u8 @10, dgst u8 @11
 * (bit0 HDGST, bit1 DDGST), maxr2t u32 @12 (0-based), reserved to 128. Never digested.
 */
export function encodeIcReq(o: { hpda: number; hdgst: boolean; ddgst: boolean; maxr2t: number }): Buffer {
  const b = Buffer.alloc(PduHeaderLength.IC);
  commonHeader(b, PduType.IC_REQ, 0, PduHeaderLength.IC, 0, PduHeaderLength.IC);
  b.writeUInt16LE(0, 8);
  b[10] = o.hpda;
  b[11] = (o.hdgst ? 1 : 0) | (o.ddgst ? 2 : 0);
  b.writeUInt32LE(o.maxr2t >>> 0, 12);
  return b;
}

/**
 * ICResp (TP 8000 §7.4.5), 128 bytes: CH, pfv u16 @8, cpda u8 @10, dgst u8 @11,
 * maxh2cdata u32 @12. Never digested.
 */
export function encodeIcResp(o: { cpda: number; hdgst: boolean; ddgst: boolean; maxh2cdata: number }): Buffer {
  const b = Buffer.alloc(PduHeaderLength.IC);
  commonHeader(b, PduType.IC_RESP, 0, PduHeaderLength.IC, 0, PduHeaderLength.IC);
  b.writeUInt16LE(0, 8);
  b[10] = o.cpda;
  b[11] = (o.hdgst ? 1 : 0) | (o.ddgst ? 2 : 0);
  b.writeUInt32LE(o.maxh2cdata >>> 0, 12);
  return b;
}

/**
 * H2CTermReq / C2HTermReq (TP 8000 §7.4.6/7): CH (hlen 24, pdo 0), fes u16 @8, fei u32 @10,
 * reserved to 24, then up to 152 bytes of the offending PDU header. Never digested. The header
 * bytes are copied (small, and the PDU is the last thing sent on the connection).
 */
export function encodeTermReq(type: 0x02 | 0x03, fes: number, fei: number, header?: Buffer): Buffer {
  const extra = header === undefined ? 0 : Math.min(header.length, TERM_REQ_MAX_DATA);
  const b = Buffer.alloc(PduHeaderLength.TERM_REQ + extra);
  commonHeader(b, type, 0, PduHeaderLength.TERM_REQ, 0, b.length);
  b.writeUInt16LE(fes, 8);
  b.writeUInt32LE(fei >>> 0, 10);
  if (header !== undefined && extra > 0) header.copy(b, PduHeaderLength.TERM_REQ, 0, extra);
  return b;
}

/** Round `n` up to a multiple of (pda+1)*4. */
function alignUp(n: number, pda: number): number {
  const a = (pda + 1) * 4;
  return Math.ceil(n / a) * a;
}

/**
 * Allocate the header part of a PDU (header [HDGST] [pad to PDO]) and write its common header.
 * `Buffer.allocUnsafe`: small sizes come from Node's shared pool (no ArrayBuffer and no memset
 * per PDU); {@link finishFrame} zeroes what the encoder does not write (reserved bytes, padding).
 */
function frameHeader(type: number, flags: number, hlen: number, dataLen: number, o: PduOptions): Buffer {
  const hd = o.hdgst ? 4 : 0;
  const hasData = dataLen > 0;
  const dd = hasData && o.ddgst ? 4 : 0;
  const pdo = hasData ? alignUp(hlen + hd, o.pda) : 0;
  const headLen = hasData ? pdo : hlen + hd;
  const plen = headLen + dataLen + dd;
  const f = flags | (o.hdgst ? PduFlag.HDGSTF : 0) | (dd ? PduFlag.DDGSTF : 0);
  const h = Buffer.allocUnsafe(headLen);
  commonHeader(h, type, f, hlen, pdo, plen);
  return h;
}

/**
 * Complete a header from {@link frameHeader} whose fields are written up to `written`: zero the
 * reserved rest of the header and the padding, add HDGST, then the data view itself (never
 * copied) and DDGST.
 */
function finishFrame(h: Buffer, hlen: number, written: number, data: Buffer | undefined, o: PduOptions): Buffer[] {
  if (written < hlen) h.fill(0, written, hlen);
  const hd = o.hdgst ? 4 : 0;
  if (hd) h.writeUInt32LE(crc32c(h.subarray(0, hlen)), hlen);
  if (h.length > hlen + hd) h.fill(0, hlen + hd);
  if (data === undefined || data.length === 0) return [h];
  if (!o.ddgst) return [h, data];
  const d = Buffer.allocUnsafe(4);
  d.writeUInt32LE(crc32c(data), 0);
  return [h, data, d];
}

/**
 * CapsuleCmd (TP 8000 §7.4.2): CH (hlen 72), 64-byte SQE @8, [HDGST], [pad to PDO]
 * [in-capsule data] [DDGST]. pdo = 0 without data.
 */
export function encodeCapsuleCmd(sqe: Buffer, data: Buffer | undefined, o: PduOptions): Buffer[] {
  const h = frameHeader(PduType.CAPSULE_CMD, 0, PduHeaderLength.CAPSULE_CMD, data?.length ?? 0, o);
  sqe.copy(h, 8, 0, 64);
  return finishFrame(h, PduHeaderLength.CAPSULE_CMD, 72, data, o);
}

/** CapsuleResp (TP 8000 §7.4.3): CH (hlen 24), 16-byte CQE @8, [HDGST]. */
export function encodeCapsuleResp(cqe: Buffer, o: PduOptions): Buffer[] {
  const h = frameHeader(PduType.CAPSULE_RESP, 0, PduHeaderLength.CAPSULE_RESP, 0, o);
  cqe.copy(h, 8, 0, 16);
  return finishFrame(h, PduHeaderLength.CAPSULE_RESP, 24, undefined, o);
}

/**
 * H2CData (TP 8000 §7.4.8): CH (hlen 24), cccid u16 @8, ttag u16 @10, datao u32 @12,
 * datal u32 @16, reserved to 24, [HDGST] [pad] data [DDGST]. LAST_PDU on the R2T's final PDU.
 */
export function encodeH2CData(h: { cccid: number; ttag: number; datao: number; last: boolean }, data: Buffer, o: PduOptions): Buffer[] {
  const b = frameHeader(PduType.H2C_DATA, h.last ? PduFlag.LAST_PDU : 0, PduHeaderLength.DATA, data.length, o);
  b.writeUInt16LE(h.cccid, 8);
  b.writeUInt16LE(h.ttag, 10);
  b.writeUInt32LE(h.datao >>> 0, 12);
  b.writeUInt32LE(data.length, 16);
  return finishFrame(b, PduHeaderLength.DATA, 20, data, o);
}

/**
 * C2HData (TP 8000 §7.4.9): CH (hlen 24), cccid u16 @8, datao u32 @12, datal u32 @16,
 * [HDGST] [pad] data [DDGST]. SUCCESS (only with LAST_PDU) replaces the CapsuleResp.
 */
export function encodeC2HData(h: { cccid: number; datao: number; last: boolean; success: boolean }, data: Buffer, o: PduOptions): Buffer[] {
  const flags = (h.last ? PduFlag.LAST_PDU : 0) | (h.success ? PduFlag.SUCCESS : 0);
  const b = frameHeader(PduType.C2H_DATA, flags, PduHeaderLength.DATA, data.length, o);
  b.writeUInt16LE(h.cccid, 8);
  b.writeUInt16LE(0, 10);
  b.writeUInt32LE(h.datao >>> 0, 12);
  b.writeUInt32LE(data.length, 16);
  return finishFrame(b, PduHeaderLength.DATA, 20, data, o);
}

/** R2T (TP 8000 §7.4.10): CH (hlen 24), cccid u16 @8, ttag u16 @10, r2to u32 @12, r2tl u32 @16, [HDGST]. */
export function encodeR2T(h: { cccid: number; ttag: number; r2to: number; r2tl: number }, o: PduOptions): Buffer[] {
  const b = frameHeader(PduType.R2T, 0, PduHeaderLength.R2T, 0, o);
  b.writeUInt16LE(h.cccid, 8);
  b.writeUInt16LE(h.ttag, 10);
  b.writeUInt32LE(h.r2to >>> 0, 12);
  b.writeUInt32LE(h.r2tl >>> 0, 16);
  return finishFrame(b, PduHeaderLength.R2T, 20, undefined, o);
}
