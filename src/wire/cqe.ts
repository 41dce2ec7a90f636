/**
 * NVMe completion queue entries (NVMe Base 2.0 §4.2.1), 16 bytes, little-endian:
 * dw0 u32 @0, dw1 u32 @4, sqhd u16 @8, sqid u16 @10, cid u16 @12, status u16 @14
 * (DW3 bits 31:16: phase bit 16, SC 24:17, SCT 27:25, CRD 29:28, M 30, DNR 31).
 */
import { ErrorCode, NvmfNbdError, type NvmeStatus } from '../errors';

export const CQE_SIZE = 16;

/** A decoded completion. `ok` is true for sct 0 / sc 0. */
export interface Cqe {
  dw0: number;
  dw1: number;
  sqhd: number;
  sqid: number;
  cid: number;
  status: NvmeStatus;
  ok: boolean;
}

/** Decode the status half-word (CQE bytes 14–15) into its fields. */
export function decodeStatusField(s: number): NvmeStatus {
  return {
    sc: (s >>> 1) & 0xff,
    sct: (s >>> 9) & 0x7,
    crd: (s >>> 12) & 0x3,
    more: (s & 0x4000) !== 0,
    dnr: (s & 0x8000) !== 0,
  };
}

/** Decode a 16-byte CQE. Throws INVALID_ARGUMENT if shorter. */
export function parseCqe(b: Buffer): Cqe {
  if (b.length < CQE_SIZE) throw new NvmfNbdError(ErrorCode.INVALID_ARGUMENT, `CQE ${b.length} bytes, expected 16`);
  const status = decodeStatusField(b.readUInt16LE(14));
  return {
    dw0: b.readUInt32LE(0),
    dw1: b.readUInt32LE(4),
    sqhd: b.readUInt16LE(8),
    sqid: b.readUInt16LE(10),
    cid: b.readUInt16LE(12),
    status,
    ok: status.sct === 0 && status.sc === 0,
  };
}

/** Encode a CQE (the target side). Phase bit is 0 (meaningless over fabrics). */
export function encodeCqe(c: {
  dw0?: number; dw1?: number; sqhd: number; sqid?: number; cid: number;
  sct?: number; sc?: number; dnr?: boolean; more?: boolean; crd?: number;
}): Buffer {
  const b = Buffer.alloc(CQE_SIZE);
  b.writeUInt32LE((c.dw0 ?? 0) >>> 0, 0);
  b.writeUInt32LE((c.dw1 ?? 0) >>> 0, 4);
  b.writeUInt16LE(c.sqhd & 0xffff, 8);
  b.writeUInt16LE((c.sqid ?? 0) & 0xffff, 10);
  b.writeUInt16LE(c.cid & 0xffff, 12);
  const s = (((c.sc ?? 0) & 0xff) << 1) | (((c.sct ?? 0) & 7) << 9) | (((c.crd ?? 0) & 3) << 12) |
    (c.more ? 0x4000 : 0) | (c.dnr ? 0x8000 : 0);
  b.writeUInt16LE(s, 14);
  return b;
}
