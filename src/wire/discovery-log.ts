/**
 * Discovery Log Page (log id 70h, NVMe-oF 1.1 §5.4 Figures 30-31), little-endian.
 *
 * Header, 1024 bytes: genctr u64 @0, numrec u64 @8, recfmt u16 @16, reserved.
 * Entry i, 1024 bytes at 1024 + 1024*i: trtype u8 @0, adrfam u8 @1, subtype u8 @2, treq u8 @3,
 * portid u16 @4, cntlid u16 @6, asqsz u16 @8, eflags u16 @10, trsvcid[32] @32, subnqn[256] @256,
 * traddr[256] @512 (all three NUL padded; the parser also trims spaces), tsas[256] @768.
 */
import { ErrorCode, NvmfNbdError } from '../errors';

export const DISCOVERY_LOG_HEADER_SIZE = 1024;
export const DISCOVERY_LOG_ENTRY_SIZE = 1024;
/** The well-known discovery subsystem NQN. */
export const DISCOVERY_NQN = 'nqn.2014-08.org.nvmexpress.discovery';

/** Transport type. */
export const TrType = { RDMA: 1, FC: 2, TCP: 3, LOOP: 254 } as const;
/** Address family. */
export const AdrFam = { IPV4: 1, IPV6: 2, IB: 3, FC: 4, LOOP: 254 } as const;
/** Subsystem type of an entry. */
export const SubType = { REFERRAL: 1, NVM: 2, CURRENT_DISCOVERY: 3 } as const;
/** Transport requirements: secure channel (bits 1:0) and bit 2 "SQ flow control disable supported". */
export const Treq = { NOT_SPECIFIED: 0, REQUIRED: 1, NOT_REQUIRED: 2, DISABLE_SQ_FC: 4 } as const;
/** Entry flags (eflags). */
export const EFlags = { DUPLICATE_RETURN_INFO: 1, EXPLICIT_PERSISTENT_CONNECTION: 2, NO_CDC_CONNECTIVITY: 4 } as const;
/** TCP TSAS security type (tsas byte 0). */
export const TcpSecType = { NONE: 0, TLS12: 1, TLS13: 2 } as const;

/** Discovery log header. */
export interface DiscoveryLogHeader {
  /** Generation counter: changes whenever the log changes; re-read when it moved. */
  genctr: bigint;
  /** Number of records. A u64 on the wire; values above 2^53 lose precision (they are bogus anyway). */
  numrec: number;
  /** Record format (0). */
  recfmt: number;
}

/** One discovery log entry; strings trimmed of NUL/space padding. */
export interface DiscoveryLogEntry {
  trtype: number;
  adrfam: number;
  subtype: number;
  treq: number;
  portid: number;
  cntlid: number;
  /** Admin max SQ size. */
  asqsz: number;
  eflags: number;
  /** Transport service id: the TCP port, as text. */
  trsvcid: string;
  subnqn: string;
  /** Transport address as the target sees itself (may need an override behind NAT). */
  traddr: string;
  /** Transport specific address subtype, 256 bytes (TCP: sectype at byte 0). */
  tsas: Buffer;
}

function readTrimmed(b: Buffer, at: number, len: number): string {
  const f = b.subarray(at, at + len);
  const nul = f.indexOf(0);
  return f.subarray(0, nul < 0 ? len : nul).toString('utf8').replace(/[ \0]+$/, '').replace(/^[ \0]+/, '');
}

/** Parse the 1024-byte header (only the first 18 bytes are needed). */
export function parseDiscoveryLogHeader(b: Buffer): DiscoveryLogHeader {
  if (b.length < 18) throw new NvmfNbdError(ErrorCode.INVALID_ARGUMENT, `discovery log header ${b.length} bytes`);
  return { genctr: b.readBigUInt64LE(0), numrec: Number(b.readBigUInt64LE(8)), recfmt: b.readUInt16LE(16) };
}

/** Parse one 1024-byte entry starting at `at`. */
export function parseDiscoveryLogEntry(b: Buffer, at = 0): DiscoveryLogEntry {
  if (b.length - at < DISCOVERY_LOG_ENTRY_SIZE) {
    throw new NvmfNbdError(ErrorCode.INVALID_ARGUMENT, 'discovery log entry truncated');
  }
  return {
    trtype: b[at]!,
    adrfam: b[at + 1]!,
    subtype: b[at + 2]!,
    treq: b[at + 3]!,
    portid: b.readUInt16LE(at + 4),
    cntlid: b.readUInt16LE(at + 6),
    asqsz: b.readUInt16LE(at + 8),
    eflags: b.readUInt16LE(at + 10),
    trsvcid: readTrimmed(b, at + 32, 32),
    subnqn: readTrimmed(b, at + 256, 256),
    traddr: readTrimmed(b, at + 512, 256),
    tsas: Buffer.from(b.subarray(at + 768, at + 1024)),
  };
}

/**
 * Parse up to `n` entries of a log page read from offset 0 (`b` starts with the header).
 * The count is bounded by the buffer: entries that are not fully in `b` are not returned.
 */
export function parseDiscoveryLogEntries(b: Buffer, n: number): DiscoveryLogEntry[] {
  const fit = Math.max(0, Math.floor((b.length - DISCOVERY_LOG_HEADER_SIZE) / DISCOVERY_LOG_ENTRY_SIZE));
  const count = Math.min(Math.max(0, Math.floor(n)), fit);
  const out: DiscoveryLogEntry[] = [];
  for (let i = 0; i < count; i++) {
    out.push(parseDiscoveryLogEntry(b, DISCOVERY_LOG_HEADER_SIZE + i * DISCOVERY_LOG_ENTRY_SIZE));
  }
  return out;
}

/** Input of {@link encodeDiscoveryLog}: strings are required, numbers default to 0 except as noted. */
export type DiscoveryLogEntryInput = Partial<DiscoveryLogEntry> & { trsvcid: string; subnqn: string; traddr: string };

function writeField(b: Buffer, at: number, len: number, s: string, pad: number): void {
  b.fill(pad, at, at + len);
  b.write(s, at, len, 'utf8');
}

/**
 * Build a whole discovery log page (header + entries) for the target. Defaults: trtype TCP,
 * adrfam IPv4, subtype NVM, treq NOT_SPECIFIED, cntlid 0xFFFF (dynamic), asqsz 32, no tsas.
 * Strings are NUL padded, as Linux nvmet fills them (configfs strings in zeroed fields); subnqn
 * keeps its terminating NUL.
 */
export function encodeDiscoveryLog(genctr: bigint, entries: ReadonlyArray<DiscoveryLogEntryInput>): Buffer {
  const b = Buffer.alloc(DISCOVERY_LOG_HEADER_SIZE + entries.length * DISCOVERY_LOG_ENTRY_SIZE);
  b.writeBigUInt64LE(BigInt.asUintN(64, genctr), 0);
  b.writeBigUInt64LE(BigInt(entries.length), 8);
  b.writeUInt16LE(0, 16);
  entries.forEach((e, i) => {
    const at = DISCOVERY_LOG_HEADER_SIZE + i * DISCOVERY_LOG_ENTRY_SIZE;
    b[at] = e.trtype ?? TrType.TCP;
    b[at + 1] = e.adrfam ?? AdrFam.IPV4;
    b[at + 2] = e.subtype ?? SubType.NVM;
    b[at + 3] = e.treq ?? Treq.NOT_SPECIFIED;
    b.writeUInt16LE(e.portid ?? 0, at + 4);
    b.writeUInt16LE(e.cntlid ?? 0xffff, at + 6);
    b.writeUInt16LE(e.asqsz ?? 32, at + 8);
    b.writeUInt16LE(e.eflags ?? 0, at + 10);
    writeField(b, at + 32, 32, e.trsvcid, 0);
    writeField(b, at + 256, 255, e.subnqn, 0);
    writeField(b, at + 512, 256, e.traddr, 0);
    if (e.tsas) e.tsas.copy(b, at + 768, 0, 256);
  });
  return b;
}
