/**
 * Log pages other than discovery (NVMe Base 2.0 §5.16.1), little-endian, one encoder and one
 * decoder each: the embedded target encodes them, hosts and tests decode them. Pure: no I/O.
 *
 * - Error Information (LID 01h, Figure 206): 64-byte entries.
 * - SMART / Health Information (LID 02h, Figure 207): 512 bytes.
 * - Firmware Slot Information (LID 03h, Figure 209): 512 bytes.
 * - Changed Namespace List (LID 04h, Figure 210): the layout of an Active Namespace ID list
 *   (decode it with `parseNamespaceList`); more than 1024 changes → FFFFFFFFh in entry 0 alone.
 */
import { ErrorCode, NvmfNbdError } from '../errors';
import { encodeNamespaceList } from './identify';

/** Size of one Error Information log entry. */
export const ERROR_LOG_ENTRY_SIZE = 64;
/** Size of the SMART / Health Information log. */
export const SMART_LOG_SIZE = 512;
/** Size of the Firmware Slot Information log. */
export const FIRMWARE_LOG_SIZE = 512;
/** Entry 0 of a Changed Namespace List that overflowed (more than 1024 changes). */
export const CHANGED_NS_OVERFLOW = 0xffffffff;

function need(b: Buffer, n: number, what: string): void {
  if (b.length < n) throw new NvmfNbdError(ErrorCode.INVALID_ARGUMENT, `${what}: ${b.length} bytes, expected ${n}`);
}

function u128(b: Buffer, at: number): bigint {
  return b.readBigUInt64LE(at) | (b.readBigUInt64LE(at + 8) << 64n);
}

function putU128(b: Buffer, at: number, v: bigint | undefined): void {
  const x = BigInt.asUintN(128, v ?? 0n);
  b.writeBigUInt64LE(x & 0xffffffffffffffffn, at);
  b.writeBigUInt64LE(x >> 64n, at + 8);
}

/**
 * One Error Information entry: error count u64 @0, SQID u16 @8, CID u16 @10, status field u16 @12
 * (phase bit 0, status 15:1), parameter error location u16 @14, LBA u64 @16, NSID u32 @24,
 * vendor specific log page u8 @28, transport type u8 @29, command specific u64 @32, transport
 * type specific u16 @40.
 */
export interface ErrorLogEntry {
  errorCount: bigint;
  sqid: number;
  cid: number;
  status: number;
  parameterLocation: number;
  lba: bigint;
  nsid: number;
  vendorLog: number;
  trtype: number;
  commandSpecific: bigint;
  transportSpecific: number;
}

/** Encode Error Information entries (64 bytes each; fields not given are zero). */
export function encodeErrorLog(entries: ReadonlyArray<Partial<ErrorLogEntry>>): Buffer {
  const b = Buffer.alloc(ERROR_LOG_ENTRY_SIZE * entries.length);
  entries.forEach((e, i) => {
    const at = i * ERROR_LOG_ENTRY_SIZE;
    b.writeBigUInt64LE(BigInt.asUintN(64, e.errorCount ?? 0n), at);
    b.writeUInt16LE(e.sqid ?? 0, at + 8);
    b.writeUInt16LE(e.cid ?? 0, at + 10);
    b.writeUInt16LE(e.status ?? 0, at + 12);
    b.writeUInt16LE(e.parameterLocation ?? 0, at + 14);
    b.writeBigUInt64LE(BigInt.asUintN(64, e.lba ?? 0n), at + 16);
    b.writeUInt32LE((e.nsid ?? 0) >>> 0, at + 24);
    b[at + 28] = e.vendorLog ?? 0;
    b[at + 29] = e.trtype ?? 0;
    b.writeBigUInt64LE(BigInt.asUintN(64, e.commandSpecific ?? 0n), at + 32);
    b.writeUInt16LE(e.transportSpecific ?? 0, at + 40);
  });
  return b;
}

/** Decode the whole entries of an Error Information log (a partial trailing entry is ignored). */
export function parseErrorLog(b: Buffer): ErrorLogEntry[] {
  const out: ErrorLogEntry[] = [];
  for (let at = 0; at + ERROR_LOG_ENTRY_SIZE <= b.length; at += ERROR_LOG_ENTRY_SIZE) {
    out.push({
      errorCount: b.readBigUInt64LE(at),
      sqid: b.readUInt16LE(at + 8),
      cid: b.readUInt16LE(at + 10),
      status: b.readUInt16LE(at + 12),
      parameterLocation: b.readUInt16LE(at + 14),
      lba: b.readBigUInt64LE(at + 16),
      nsid: b.readUInt32LE(at + 24),
      vendorLog: b[at + 28]!,
      trtype: b[at + 29]!,
      commandSpecific: b.readBigUInt64LE(at + 32),
      transportSpecific: b.readUInt16LE(at + 40),
    });
  }
  return out;
}

/**
 * SMART / Health Information: critical warning u8 @0, composite temperature (kelvin) u16 @1,
 * available spare % u8 @3, spare threshold % u8 @4, percentage used u8 @5, then u128 counters:
 * data units read @32 / written @48 (units of 1000 × 512 bytes), host read @64 / write @80
 * commands, controller busy time @96, power cycles @112, power-on hours @128, unsafe shutdowns
 * @144, media errors @160, error log entries @176.
 */
export interface SmartLog {
  criticalWarning: number;
  temperature: number;
  availableSpare: number;
  spareThreshold: number;
  percentageUsed: number;
  dataUnitsRead: bigint;
  dataUnitsWritten: bigint;
  hostReadCommands: bigint;
  hostWriteCommands: bigint;
  busyTime: bigint;
  powerCycles: bigint;
  powerOnHours: bigint;
  unsafeShutdowns: bigint;
  mediaErrors: bigint;
  errorLogEntries: bigint;
}

/** Encode the SMART / Health log (512 bytes; fields not given are zero). */
export function encodeSmartLog(s: Partial<SmartLog>): Buffer {
  const b = Buffer.alloc(SMART_LOG_SIZE);
  b[0] = s.criticalWarning ?? 0;
  b.writeUInt16LE(s.temperature ?? 0, 1);
  b[3] = s.availableSpare ?? 0;
  b[4] = s.spareThreshold ?? 0;
  b[5] = s.percentageUsed ?? 0;
  putU128(b, 32, s.dataUnitsRead);
  putU128(b, 48, s.dataUnitsWritten);
  putU128(b, 64, s.hostReadCommands);
  putU128(b, 80, s.hostWriteCommands);
  putU128(b, 96, s.busyTime);
  putU128(b, 112, s.powerCycles);
  putU128(b, 128, s.powerOnHours);
  putU128(b, 144, s.unsafeShutdowns);
  putU128(b, 160, s.mediaErrors);
  putU128(b, 176, s.errorLogEntries);
  return b;
}

/** Decode the SMART / Health log. @throws INVALID_ARGUMENT when shorter than 512 bytes */
export function parseSmartLog(b: Buffer): SmartLog {
  need(b, SMART_LOG_SIZE, 'SMART log');
  return {
    criticalWarning: b[0]!,
    temperature: b.readUInt16LE(1),
    availableSpare: b[3]!,
    spareThreshold: b[4]!,
    percentageUsed: b[5]!,
    dataUnitsRead: u128(b, 32),
    dataUnitsWritten: u128(b, 48),
    hostReadCommands: u128(b, 64),
    hostWriteCommands: u128(b, 80),
    busyTime: u128(b, 96),
    powerCycles: u128(b, 112),
    powerOnHours: u128(b, 128),
    unsafeShutdowns: u128(b, 144),
    mediaErrors: u128(b, 160),
    errorLogEntries: u128(b, 176),
  };
}

/**
 * Firmware Slot Information: active firmware info u8 @0 (bits 2:0 the active slot, 6:4 the slot
 * for the next reset), then FRS1..FRS7, 8 ASCII bytes each (space padded) @8, @16, … @56.
 */
export interface FirmwareLog {
  afi: number;
  /** Revisions of slots 1..7 (at most 7; missing slots are blank), trimmed. */
  slots: string[];
}

/** Encode the Firmware Slot log (512 bytes). Revisions longer than 8 bytes are cut. */
export function encodeFirmwareLog(f: Partial<FirmwareLog>): Buffer {
  const b = Buffer.alloc(FIRMWARE_LOG_SIZE);
  b[0] = f.afi ?? 0;
  (f.slots ?? []).slice(0, 7).forEach((fr, i) => {
    const at = 8 + i * 8;
    b.fill(0x20, at, at + 8);
    b.write(fr.slice(0, 8), at, 8, 'latin1');
  });
  return b;
}

/** Decode the Firmware Slot log; `slots` keeps the non-empty revisions up to the last one. */
export function parseFirmwareLog(b: Buffer): FirmwareLog {
  need(b, 64, 'firmware slot log');
  const slots: string[] = [];
  for (let i = 0; i < 7; i++) slots.push(b.subarray(8 + i * 8, 16 + i * 8).toString('latin1').replace(/[\0 ]+$/, ''));
  while (slots.length > 0 && slots[slots.length - 1] === '') slots.pop();
  return { afi: b[0]!, slots };
}

/**
 * Encode the Changed Namespace List (4096 bytes): the NSIDs as given, or {@link CHANGED_NS_OVERFLOW}
 * alone when there are more than 1024.
 */
export function encodeChangedNsList(nsids: readonly number[]): Buffer {
  return encodeNamespaceList(nsids.length > 1024 ? [CHANGED_NS_OVERFLOW] : nsids);
}
