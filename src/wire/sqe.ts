/**
 * NVMe submission queue entries (NVMe Base 2.0 §4.2, Fabrics 1.1 §3.3 / §6), 64 bytes, little-endian.
 *
 * Layout: opcode u8 @0, flags u8 @1 (FUSE bits 1:0, PSDT bits 7:6), cid u16 @2, nsid u32 @4,
 * cdw2 @8, cdw3 @12, mptr u64 @16, DPTR/SGL1 @24..39 (addr u64 @24, length u32 @32, type u8 @39),
 * cdw10 @40, cdw11 @44, cdw12 @48, cdw13 @52, cdw14 @56, cdw15 @60.
 * Fabrics commands (opcode 0x7F) put fctype at byte 4 instead of nsid.
 *
 * Builders return a fresh SQE with cid 0 and an empty SGL; the transport sets both
 * ({@link setCid}, {@link setSgl}).
 */
import { ErrorCode, NvmfNbdError } from '../errors';

export const SQE_SIZE = 64;

/** Admin command opcodes used by the host. */
export const AdminOpcode = {
  DELETE_IO_SQ: 0x00,
  GET_LOG_PAGE: 0x02,
  IDENTIFY: 0x06,
  ABORT: 0x08,
  SET_FEATURES: 0x09,
  GET_FEATURES: 0x0a,
  ASYNC_EVENT_REQUEST: 0x0c,
  KEEP_ALIVE: 0x18,
  FABRICS: 0x7f,
} as const;

/** NVM command set I/O opcodes. */
export const IoOpcode = { FLUSH: 0x00, WRITE: 0x01, READ: 0x02, WRITE_ZEROES: 0x08, DATASET_MANAGEMENT: 0x09 } as const;

/** Fabrics command types (byte 4 of a Fabrics SQE). */
export const FabricsType = { PROPERTY_SET: 0x00, CONNECT: 0x01, PROPERTY_GET: 0x04 } as const;

/** SGL descriptor type bytes (byte 15 of the descriptor: type in bits 7:4, subtype in 3:0). */
export const SglType = { DATA_BLOCK_OFFSET: 0x01, TRANSPORT_DATA_BLOCK: 0x5a } as const;

/** Data transfer direction of a command (opcode bits 1:0). */
export const DataDirection = { NONE: 0, HOST_TO_CTRL: 1, CTRL_TO_HOST: 2 } as const;
export type DataDirectionValue = (typeof DataDirection)[keyof typeof DataDirection];

/** Identify CNS values used here. */
export const Cns = { NAMESPACE: 0x00, CONTROLLER: 0x01, ACTIVE_NS_LIST: 0x02, NS_ID_DESCRIPTORS: 0x03 } as const;

/** Log page identifiers used here. */
export const LogPage = { ERROR: 0x01, SMART: 0x02, FIRMWARE: 0x03, CHANGED_NS: 0x04, DISCOVERY: 0x70 } as const;

/** Feature identifiers used here. */
export const FeatureId = { NUMBER_OF_QUEUES: 0x07, ASYNC_EVENT_CONFIG: 0x0b, KEEP_ALIVE_TIMER: 0x0f } as const;

/** Connect command CATTR bit 2: the host asks the controller to disable SQ flow control. */
export const CONNECT_CATTR_DISABLE_SQ_FC = 0x04;

function newSqe(opcode: number, nsid = 0): Buffer {
  // allocUnsafe + fill: a slice of Node's shared pool instead of a fresh zeroed ArrayBuffer per
  // command (the I/O hot path builds one SQE per read/write).
  const b = Buffer.allocUnsafe(SQE_SIZE).fill(0);
  b[0] = opcode;
  b.writeUInt32LE(nsid >>> 0, 4);
  return b;
}

function newFabrics(fctype: number): Buffer {
  const b = Buffer.alloc(SQE_SIZE);
  b[0] = AdminOpcode.FABRICS;
  b[4] = fctype;
  return b;
}

/** 2^53 − 1 as a bigint: LBAs up to it take the number path of {@link writeSlba}. */
const SAFE_LBA = BigInt(Number.MAX_SAFE_INTEGER);

/**
 * SLBA u64 @40. Every real LBA is below 2^53, so the usual case is two u32 writes of a number:
 * `writeBigUInt64LE` makes four or five temporary bigints (the mask and shift of each half) per
 * command on the I/O path. Negative or larger values keep the bigint path (modulo 2^64).
 */
function writeSlba(b: Buffer, slba: bigint): void {
  if (slba >= 0n && slba <= SAFE_LBA) {
    const n = Number(slba);
    b.writeUInt32LE(n % 0x100000000, 40);
    b.writeUInt32LE(Math.floor(n / 0x100000000), 44);
    return;
  }
  b.writeBigUInt64LE(BigInt.asUintN(64, slba), 40);
}

function checkNlb(nlb: number): void {
  if (!Number.isInteger(nlb) || nlb < 1 || nlb > 0x10000) {
    throw new NvmfNbdError(ErrorCode.INVALID_ARGUMENT, `nlb ${nlb} out of range 1..65536`);
  }
}

/** Identify (admin 0x06): cdw10 = cns (7:0) | cntid (31:16). Transfers 4096 bytes to the host. */
export function sqeIdentify(cns: number, nsid = 0, cntid = 0): Buffer {
  const b = newSqe(AdminOpcode.IDENTIFY, nsid);
  b.writeUInt32LE(((cns & 0xff) | ((cntid & 0xffff) << 16)) >>> 0, 40);
  return b;
}

/**
 * Get Log Page (admin 0x02): cdw10 = lid (7:0) | lsp (14:8) | rae (15) | numdl (31:16),
 * cdw11 = numdu (15:0), cdw12/13 = byte offset (lpol/lpou). NUMD is 0-based dwords.
 * @param numBytes bytes to read, a non-zero multiple of 4
 */
export function sqeGetLogPage(lid: number, numBytes: number, nsid = 0xffffffff, offset = 0, lsp = 0, rae = false): Buffer {
  if (!Number.isInteger(numBytes) || numBytes < 4 || numBytes % 4 !== 0 || numBytes / 4 > 0x100000000) {
    throw new NvmfNbdError(ErrorCode.INVALID_ARGUMENT, `log page length ${numBytes} must be a non-zero multiple of 4`);
  }
  const b = newSqe(AdminOpcode.GET_LOG_PAGE, nsid);
  const numd = numBytes / 4 - 1;
  b.writeUInt32LE(((lid & 0xff) | ((lsp & 0x7f) << 8) | (rae ? 0x8000 : 0) | ((numd & 0xffff) << 16)) >>> 0, 40);
  b.writeUInt32LE(Math.floor(numd / 0x10000) & 0xffff, 44);
  b.writeUInt32LE(offset % 0x100000000, 48);
  b.writeUInt32LE(Math.floor(offset / 0x100000000), 52);
  return b;
}

/** Set Features (admin 0x09): cdw10 = fid (7:0), cdw11/cdw12 feature specific. */
export function sqeSetFeatures(fid: number, cdw11: number, cdw12 = 0): Buffer {
  const b = newSqe(AdminOpcode.SET_FEATURES);
  b.writeUInt32LE(fid & 0xff, 40);
  b.writeUInt32LE(cdw11 >>> 0, 44);
  b.writeUInt32LE(cdw12 >>> 0, 48);
  return b;
}

/** Get Features (admin 0x0A): cdw10 = fid (7:0), sel 0 (current); cdw11 feature specific. */
export function sqeGetFeatures(fid: number, cdw11 = 0): Buffer {
  const b = newSqe(AdminOpcode.GET_FEATURES);
  b.writeUInt32LE(fid & 0xff, 40);
  b.writeUInt32LE(cdw11 >>> 0, 44);
  return b;
}

/** Keep Alive (admin 0x18), no data. */
export function sqeKeepAlive(): Buffer {
  return newSqe(AdminOpcode.KEEP_ALIVE);
}

/** Asynchronous Event Request (admin 0x0C), no data; completes when an event occurs. */
export function sqeAsyncEventRequest(): Buffer {
  return newSqe(AdminOpcode.ASYNC_EVENT_REQUEST);
}

/** Read (I/O 0x02): slba u64 @40, cdw12 nlb 0-based (15:0). `nlb` is 1-based here. */
export function sqeRead(nsid: number, slba: bigint, nlb: number): Buffer {
  checkNlb(nlb);
  const b = newSqe(IoOpcode.READ, nsid);
  writeSlba(b, slba);
  b.writeUInt32LE(nlb - 1, 48);
  return b;
}

/** Write (I/O 0x01): slba u64 @40, cdw12 nlb 0-based (15:0) | FUA (bit 30). */
export function sqeWrite(nsid: number, slba: bigint, nlb: number, fua: boolean): Buffer {
  checkNlb(nlb);
  const b = newSqe(IoOpcode.WRITE, nsid);
  writeSlba(b, slba);
  b.writeUInt32LE(((nlb - 1) | (fua ? 1 << 30 : 0)) >>> 0, 48);
  return b;
}

/**
 * Rewrite `b` (64 bytes, reused per request record) as a Read, Write (optionally FUA) or Flush
 * of the NVM command set: the same encoding as {@link sqeRead} / {@link sqeWrite} /
 * {@link sqeFlush}, without allocating. `nlb` is 1-based and ignored for Flush.
 */
export function fillSqeIo(b: Buffer, opcode: number, nsid: number, slba: bigint, nlb: number, fua: boolean): void {
  b.fill(0);
  b[0] = opcode;
  b.writeUInt32LE(nsid >>> 0, 4);
  if (opcode === IoOpcode.FLUSH) return;
  checkNlb(nlb);
  writeSlba(b, slba);
  b.writeUInt32LE(((nlb - 1) | (fua ? 1 << 30 : 0)) >>> 0, 48);
}

/** Flush (I/O 0x00), no data. */
export function sqeFlush(nsid: number): Buffer {
  return newSqe(IoOpcode.FLUSH, nsid);
}

/**
 * Dataset Management (I/O 0x09): cdw10 nr 0-based (7:0), cdw11 AD (bit 2) = deallocate.
 * Data: `nr` 16-byte ranges ({@link encodeDsmRanges}), host to controller.
 */
export function sqeDatasetManagement(nsid: number, nr: number, deallocate: boolean): Buffer {
  if (!Number.isInteger(nr) || nr < 1 || nr > 256) {
    throw new NvmfNbdError(ErrorCode.INVALID_ARGUMENT, `DSM range count ${nr} out of range 1..256`);
  }
  const b = newSqe(IoOpcode.DATASET_MANAGEMENT, nsid);
  b.writeUInt32LE(nr - 1, 40);
  b.writeUInt32LE(deallocate ? 0x04 : 0, 44);
  return b;
}

/** DSM ranges (NVM Command Set §3.2.3): context attributes u32 @0, nlb u32 @4 (1-based), slba u64 @8. */
export function encodeDsmRanges(ranges: ReadonlyArray<{ slba: bigint; nlb: number }>): Buffer {
  const b = Buffer.alloc(16 * ranges.length);
  ranges.forEach((r, i) => {
    b.writeUInt32LE(r.nlb >>> 0, i * 16 + 4);
    b.writeBigUInt64LE(BigInt.asUintN(64, r.slba), i * 16 + 8);
  });
  return b;
}

/** Write Zeroes (I/O 0x08): slba u64 @40, cdw12 nlb 0-based (15:0) | DEAC (bit 25) | FUA (bit 30). */
export function sqeWriteZeroes(nsid: number, slba: bigint, nlb: number, o: { deallocate: boolean; fua: boolean }): Buffer {
  checkNlb(nlb);
  const b = newSqe(IoOpcode.WRITE_ZEROES, nsid);
  writeSlba(b, slba);
  b.writeUInt32LE(((nlb - 1) | (o.deallocate ? 1 << 25 : 0) | (o.fua ? 1 << 30 : 0)) >>> 0, 48);
  return b;
}

/**
 * Fabrics Connect (fctype 0x01, Fabrics 1.1 §3.3): recfmt u16 @40 (0), qid u16 @42,
 * sqsize u16 @44 (0-based), cattr u8 @46, kato u32 @48 (ms). Data: 1024 bytes in-capsule.
 */
export function sqeConnect(o: { qid: number; sqsize: number; kato: number; disableSqFlowControl: boolean }): Buffer {
  const b = newFabrics(FabricsType.CONNECT);
  b.writeUInt16LE(0, 40);
  b.writeUInt16LE(o.qid, 42);
  b.writeUInt16LE(o.sqsize, 44);
  b[46] = o.disableSqFlowControl ? CONNECT_CATTR_DISABLE_SQ_FC : 0;
  b.writeUInt32LE(o.kato >>> 0, 48);
  return b;
}

/** Size of the Connect command's data. */
export const CONNECT_DATA_SIZE = 1024;

function writeNqn(b: Buffer, at: number, nqn: string, what: string): void {
  const bytes = Buffer.from(nqn, 'utf8');
  // 256-byte field, NUL-terminated: at most 255 bytes of name.
  if (bytes.length > 255) throw new NvmfNbdError(ErrorCode.INVALID_ARGUMENT, `${what} longer than 255 bytes`);
  bytes.copy(b, at);
}

/** Read a NUL-padded string field, stopping at the first NUL. */
export function readFixedString(b: Buffer, at: number, len: number): string {
  const f = b.subarray(at, at + len);
  const nul = f.indexOf(0);
  return f.subarray(0, nul < 0 ? f.length : nul).toString('utf8');
}

/** Connect data (Fabrics 1.1 Figure 20): hostid[16] @0, cntlid u16 @16, subnqn[256] @256, hostnqn[256] @512. */
export function encodeConnectData(o: { hostid: Buffer; cntlid: number; subnqn: string; hostnqn: string }): Buffer {
  if (o.hostid.length !== 16) throw new NvmfNbdError(ErrorCode.INVALID_ARGUMENT, 'hostid must be 16 bytes');
  const b = Buffer.alloc(CONNECT_DATA_SIZE);
  o.hostid.copy(b, 0);
  b.writeUInt16LE(o.cntlid, 16);
  writeNqn(b, 256, o.subnqn, 'subnqn');
  writeNqn(b, 512, o.hostnqn, 'hostnqn');
  return b;
}

/** Parse Connect data (the target side). Throws INVALID_ARGUMENT when shorter than 1024 bytes. */
export function parseConnectData(b: Buffer): { hostid: Buffer; cntlid: number; subnqn: string; hostnqn: string } {
  if (b.length < CONNECT_DATA_SIZE) {
    throw new NvmfNbdError(ErrorCode.INVALID_ARGUMENT, `connect data ${b.length} bytes, expected ${CONNECT_DATA_SIZE}`);
  }
  return {
    hostid: Buffer.from(b.subarray(0, 16)),
    cntlid: b.readUInt16LE(16),
    subnqn: readFixedString(b, 256, 256),
    hostnqn: readFixedString(b, 512, 256),
  };
}

/** Property Get (fctype 0x04): attrib u8 @40 (bit0: 8-byte property), offset u32 @44. Value in CQE DW0-DW1. */
export function sqePropertyGet(offset: number, size8: boolean): Buffer {
  const b = newFabrics(FabricsType.PROPERTY_GET);
  b[40] = size8 ? 1 : 0;
  b.writeUInt32LE(offset >>> 0, 44);
  return b;
}

/** Property Set (fctype 0x00): attrib u8 @40, offset u32 @44, value u64 @48. */
export function sqePropertySet(offset: number, size8: boolean, value: bigint): Buffer {
  const b = newFabrics(FabricsType.PROPERTY_SET);
  b[40] = size8 ? 1 : 0;
  b.writeUInt32LE(offset >>> 0, 44);
  b.writeBigUInt64LE(BigInt.asUintN(64, value), 48);
  return b;
}

/** Set the command identifier (u16 @2). */
export function setCid(sqe: Buffer, cid: number): void {
  sqe.writeUInt16LE(cid & 0xffff, 2);
}

/**
 * Set SGL1 to a single descriptor: addr 0 (offset addressing for in-capsule data), `length`
 * bytes, descriptor type byte @39; sets PSDT=01b (SGL, CDW0 bits 15:14) as TP 8000 requires.
 */
export function setSgl(sqe: Buffer, type: number, length: number): void {
  sqe[1] = (sqe[1]! & 0x3f) | 0x40;
  sqe.writeBigUInt64LE(0n, 24);
  sqe.writeUInt32LE(length >>> 0, 32);
  sqe[36] = 0;
  sqe[37] = 0;
  sqe[38] = 0;
  sqe[39] = type;
}

/**
 * Data direction from opcode bits 1:0 (for Fabrics commands, from fctype bits 1:0).
 * Bidirectional (11b) cannot be carried by one NVMe/TCP SGL: throws UNSUPPORTED.
 */
export function dataDirection(sqe: Buffer): DataDirectionValue {
  const op = sqe[0]!;
  const bits = (op === AdminOpcode.FABRICS ? sqe[4]! : op) & 3;
  switch (bits) {
    case 0:
      return DataDirection.NONE;
    case 1:
      return DataDirection.HOST_TO_CTRL;
    case 2:
      return DataDirection.CTRL_TO_HOST;
    default:
      throw new NvmfNbdError(ErrorCode.UNSUPPORTED, `bidirectional command opcode 0x${op.toString(16)}`);
  }
}

/** A decoded SQE (the target side, and tests). */
export interface ParsedSqe {
  opcode: number;
  fuse: number;
  psdt: number;
  cid: number;
  nsid: number;
  sgl: { addr: bigint; length: number; type: number };
  cdw10: number;
  cdw11: number;
  cdw12: number;
  cdw13: number;
  cdw14: number;
  cdw15: number;
  /** Fabrics command type (byte 4), only when opcode is 0x7F. */
  fctype?: number;
}

/** Decode a 64-byte SQE. */
export function parseSqe(sqe: Buffer): ParsedSqe {
  if (sqe.length < SQE_SIZE) throw new NvmfNbdError(ErrorCode.INVALID_ARGUMENT, `SQE ${sqe.length} bytes, expected 64`);
  const opcode = sqe[0]!;
  const p: ParsedSqe = {
    opcode,
    fuse: sqe[1]! & 3,
    psdt: sqe[1]! >>> 6,
    cid: sqe.readUInt16LE(2),
    nsid: sqe.readUInt32LE(4),
    sgl: { addr: sqe.readBigUInt64LE(24), length: sqe.readUInt32LE(32), type: sqe[39]! },
    cdw10: sqe.readUInt32LE(40),
    cdw11: sqe.readUInt32LE(44),
    cdw12: sqe.readUInt32LE(48),
    cdw13: sqe.readUInt32LE(52),
    cdw14: sqe.readUInt32LE(56),
    cdw15: sqe.readUInt32LE(60),
  };
  if (opcode === AdminOpcode.FABRICS) p.fctype = sqe[4]!;
  return p;
}
