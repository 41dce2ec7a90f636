/**
 * Data structures the embedded target returns to hosts (pure encoders, no I/O): Identify
 * Controller / Namespace / lists / descriptors, and the log pages a Linux host asks for.
 * Layouts follow NVMe Base 2.0 and NVMe-oF 1.1; byte offsets are written next to each field.
 */
import { createHash } from 'node:crypto';
import { AEN_CFG_ANA_CHANGE, Cmic } from '../wire/ana';

/** Size of every Identify data structure. */
export const IDENTIFY_SIZE = 4096;

/** Controller types (Identify Controller CNTRLTYPE). */
export const ControllerType = { IO: 1, DISCOVERY: 2 } as const;

/** NVMe version we report: 1.4 (2.0 would make Linux ask for CNS 06h/08h first). */
export const NVME_VERSION = 0x00010400;

/** PCI vendor id reported in VID/SSVID: 0 (no PCI vendor: a software target). */
const VID = 0x0000;

/** Fields of Identify Controller that vary per target/controller. */
export interface IdentifyControllerFields {
  serial: string;
  model: string;
  firmware: string;
  /** MDTS: max transfer = 2^mdts × 4 KiB (0 = unlimited). */
  mdts: number;
  cntlid: number;
  type: (typeof ControllerType)[keyof typeof ControllerType];
  /** KAS: keep-alive granularity in 100 ms units. */
  kas: number;
  /** Max outstanding commands per queue. */
  maxcmd: number;
  /** Number of namespaces (largest valid NSID). */
  nn: number;
  /** AERL: 0-based number of outstanding AERs. */
  aerl: number;
  subnqn: string;
  /** IOCCSZ in 16-byte units. */
  ioccsz: number;
  /**
   * Asymmetric Namespace Access (I/O controllers): CMIC gets multi-port and ANA reporting, OAES
   * the ANA change notice, and ANATT (s), ANACAP, ANAGRPMAX = NANAGRPID are filled in.
   */
  ana?: { anatt: number; anacap: number; maxGroups: number };
  /** CQT: command quiesce time in ms (0 = not reported). */
  cqt?: number;
}

function putString(b: Buffer, at: number, len: number, s: string, pad = 0x20): void {
  // Identify strings are ASCII, space padded, not NUL terminated.
  b.fill(pad, at, at + len);
  b.write(s.slice(0, len), at, len, 'latin1');
}

/**
 * Identify Controller (CNS 01h), NVMe Base 2.0 Figure 275 + NVMe-oF 1.1 §4.1 fabrics fields.
 * What the Linux host checks: CNTLID matches Connect, KAS non-zero for I/O controllers, SGLS
 * bits 1:0 non-zero, ICDOFF 0, IOCCSZ for the in-capsule size, OAES bit 8 for namespace AENs.
 */
export function encodeIdentifyController(f: IdentifyControllerFields): Buffer {
  const b = Buffer.alloc(IDENTIFY_SIZE);
  const io = f.type === ControllerType.IO;
  b.writeUInt16LE(VID, 0); // VID
  b.writeUInt16LE(VID, 2); // SSVID
  putString(b, 4, 20, f.serial); // SN
  putString(b, 24, 40, f.model); // MN
  putString(b, 64, 8, f.firmware); // FR
  b[72] = 0; // RAB
  // CMIC bit 1: the subsystem may have several controllers; with ANA also bit 0 (several ports)
  // and bit 3 (ANA reporting), which is what turns on the Linux host's native multipath ANA code.
  b[76] = io ? (f.ana !== undefined ? Cmic.MULTI_PORT | Cmic.MULTI_CTRL | Cmic.ANA : Cmic.MULTI_CTRL) : 0;
  b[77] = f.mdts; // MDTS
  b.writeUInt16LE(f.cntlid, 78); // CNTLID
  b.writeUInt32LE(NVME_VERSION, 80); // VER
  // OAES bit 8: Namespace Attribute Notices (I/O); bit 31: Discovery Log Page Change (discovery).
  // Bit 11: ANA Change Notices.
  b.writeUInt32LE(io ? (1 << 8) | (f.ana !== undefined ? AEN_CFG_ANA_CHANGE : 0) : 0x80000000, 92);
  b.writeUInt32LE(0, 96); // CTRATT
  b[111] = f.type; // CNTRLTYPE
  b.writeUInt16LE(0, 256); // OACS: no optional admin commands
  b[258] = 3; // ACL: 0-based, abort limit (Abort is accepted, never aborts)
  b[259] = f.aerl; // AERL
  b[260] = 0x03; // FRMW: slot 1 read-only, one slot
  b[261] = 0x04; // LPA bit 2: extended data / offset for Get Log Page
  b[262] = 0; // ELPE: one error log entry
  b.writeUInt16LE(0x0157, 266); // WCTEMP 343 K
  b.writeUInt16LE(0x0173, 268); // CCTEMP 371 K
  b.writeUInt16LE(f.kas, 320); // KAS
  if (io && f.ana !== undefined) {
    b[342] = f.ana.anatt; // ANATT (s)
    b[343] = f.ana.anacap; // ANACAP
    b.writeUInt32LE(f.ana.maxGroups, 344); // ANAGRPMAX
    b.writeUInt32LE(f.ana.maxGroups, 348); // NANAGRPID
  }
  b.writeUInt16LE(f.cqt ?? 0, 386); // CQT (ms)
  b[512] = 0x66; // SQES: 64 bytes required and max
  b[513] = 0x44; // CQES: 16 bytes
  b.writeUInt16LE(f.maxcmd, 514); // MAXCMD
  b.writeUInt32LE(f.nn, 516); // NN
  b.writeUInt16LE(io ? (1 << 2) | (1 << 3) : 0, 520); // ONCS: DSM, Write Zeroes
  b[525] = io ? 0x07 : 0; // VWC present; bits 2:1 = 11b flush with NSID FFFFFFFFh supported
  b.writeUInt32LE((1 << 0) | (1 << 20), 536); // SGLS: SGLs supported, offset addressing in-capsule
  b.writeUInt32LE(io ? f.nn : 0, 540); // MNAN
  b.write(f.subnqn.slice(0, 255), 768, 255, 'utf8'); // SUBNQN, NUL padded
  b.writeUInt32LE(f.ioccsz, 1792); // IOCCSZ
  b.writeUInt32LE(1, 1796); // IORCSZ: 16-byte response capsules
  b.writeUInt16LE(0, 1800); // ICDOFF
  b[1802] = 0; // FCATT: dynamic controller model
  b[1803] = 1; // MSDBD: one SGL descriptor
  b.writeUInt16LE(25, 2048); // PSD0 MP: 0.25 W (in 0.01 W units), any non-zero value
  return b;
}

/** Per-namespace identity derived from the subsystem NQN and NSID (stable across restarts). */
export interface NamespaceIds {
  nguid: Buffer;
  uuid: Buffer;
  eui64: Buffer;
}

/** Stable, globally distinct NGUID/UUID/EUI-64 for namespace `nsid` of `subnqn`. */
export function namespaceIds(subnqn: string, nsid: number): NamespaceIds {
  const h = createHash('sha256').update(`nvmf-nbd:${subnqn}:${nsid}`).digest();
  const uuid = Buffer.from(h.subarray(16, 32));
  uuid[6] = (uuid[6]! & 0x0f) | 0x50; // version 5-style (name based)
  uuid[8] = (uuid[8]! & 0x3f) | 0x80; // RFC 4122 variant
  const eui64 = Buffer.from(h.subarray(0, 8));
  eui64[0] = eui64[0]! | 0x02; // locally administered
  return { nguid: Buffer.from(h.subarray(0, 16)), uuid, eui64 };
}

/** Fields of Identify Namespace. */
export interface IdentifyNamespaceFields {
  /** Size in logical blocks. */
  nsze: bigint;
  /** log2 of the LBA size: 9 or 12. */
  lbads: number;
  ids: NamespaceIds;
  /** ANAGRPID (0 = none). */
  anagrpid?: number;
}

/**
 * Identify Namespace (CNS 00h), NVM Command Set Figure 97: NSZE/NCAP/NUSE @0/8/16, NSFEAT @24,
 * NLBAF @25 (0-based), FLBAS @26, NMIC @30, DLFEAT @33, NGUID @104, EUI64 @120, LBAF0 @128.
 */
export function encodeIdentifyNamespace(f: IdentifyNamespaceFields): Buffer {
  const b = Buffer.alloc(IDENTIFY_SIZE);
  b.writeBigUInt64LE(f.nsze, 0);
  b.writeBigUInt64LE(f.nsze, 8);
  b.writeBigUInt64LE(f.nsze, 16);
  b[24] = 0x08; // NSFEAT bit 3: NGUID/EUI64 never reused
  b[25] = 0; // NLBAF: one format
  b[26] = 0; // FLBAS: format 0, no metadata
  b[30] = 0x01; // NMIC: may be attached to several controllers
  b[33] = 0x09; // DLFEAT: deallocated blocks read as zeroes (001b), Write Zeroes may deallocate (bit 3)
  b.writeUInt32LE(f.anagrpid ?? 0, 92); // ANAGRPID
  f.ids.nguid.copy(b, 104);
  f.ids.eui64.copy(b, 120);
  b.writeUInt32LE((f.lbads & 0xff) << 16, 128); // LBAF0: MS 0, LBADS, RP 0
  return b;
}

/** Active Namespace ID list (CNS 02h): up to 1024 NSIDs greater than `after`, ascending. */
export function encodeActiveNamespaceList(nsids: readonly number[], after: number): Buffer {
  const b = Buffer.alloc(IDENTIFY_SIZE);
  let i = 0;
  for (const id of [...nsids].sort((x, y) => x - y)) {
    if (id <= after) continue;
    if (i === 1024) break;
    b.writeUInt32LE(id, i * 4);
    i++;
  }
  return b;
}

/** Namespace Identification Descriptor list (CNS 03h): EUI64 (1), NGUID (2), UUID (3), CSI (4). */
export function encodeNsDescriptors(ids: NamespaceIds): Buffer {
  const b = Buffer.alloc(IDENTIFY_SIZE);
  let o = 0;
  const put = (nidt: number, v: Buffer): void => {
    b[o] = nidt;
    b[o + 1] = v.length;
    v.copy(b, o + 4);
    o += 4 + v.length;
  };
  put(1, ids.eui64);
  put(2, ids.nguid);
  put(3, ids.uuid);
  put(4, Buffer.from([0])); // CSI 0: NVM command set
  return b;
}

/** One discovery log entry (NVMe-oF 1.1 Figure 38). */
export interface DiscoveryEntry {
  subnqn: string;
  traddr: string;
  trsvcid: string;
  /** 1 IPv4, 2 IPv6. */
  adrfam: number;
  portid: number;
  /** Max admin SQ size (asqsz). */
  asqsz: number;
  /** 2 NVM subsystem (default), 1 referral to another discovery service. */
  subtype?: number;
  /** Secure channel: TREQ bits 1:0 (1 required, 2 not required) and TSAS sectype 2 (TLS 1.3); absent = none. */
  tls?: 'required' | 'optional';
}

/**
 * Discovery log page (LID 70h): 1024-byte header (genctr u64 @0, numrec u64 @8, recfmt u16 @16),
 * then 1024-byte entries: trtype @0 (3 TCP), adrfam @1, subtype @2 (2 NVM subsystem), treq @3,
 * portid u16 @4, cntlid u16 @6 (FFFFh dynamic), asqsz u16 @8, trsvcid[32] @32, subnqn[256] @256,
 * traddr[256] @512, tsas @768 (TCP: sectype 0 = none).
 */
export function encodeDiscoveryLog(genctr: bigint, entries: readonly DiscoveryEntry[]): Buffer {
  const b = Buffer.alloc(1024 * (1 + entries.length));
  b.writeBigUInt64LE(genctr, 0);
  b.writeBigUInt64LE(BigInt(entries.length), 8);
  b.writeUInt16LE(0, 16);
  entries.forEach((e, i) => {
    const o = 1024 * (i + 1);
    b[o] = 3; // TRTYPE TCP
    b[o + 1] = e.adrfam;
    b[o + 2] = e.subtype ?? 2; // SUBTYPE: 2 NVMe subsystem, 1 discovery referral
    // TREQ bits 1:0 secure channel (0 not specified, 1 required, 2 not required); bit 2: SQ flow
    // control disable supported. TSAS byte 0 for TCP: sectype (2 = TLS 1.3).
    b[o + 3] = 0x04 | (e.tls === 'required' ? 0x01 : e.tls === 'optional' ? 0x02 : 0);
    if (e.tls !== undefined) b[o + 768] = 2;
    b.writeUInt16LE(e.portid, o + 4);
    b.writeUInt16LE(0xffff, o + 6);
    b.writeUInt16LE(e.asqsz, o + 8);
    b.write(e.trsvcid.slice(0, 32), o + 32, 32, 'latin1');
    b.write(e.subnqn.slice(0, 255), o + 256, 255, 'utf8');
    b.write(e.traddr.slice(0, 255), o + 512, 255, 'latin1');
  });
  return b;
}

/** Error Information log (LID 01h): one 64-byte entry, error count 0 (nothing recorded). */
export function encodeErrorLog(): Buffer {
  return Buffer.alloc(64);
}

/** SMART / Health log (LID 02h), 512 bytes: temperature, spare, data units and command counts. */
export function encodeSmartLog(s: { unitsRead: bigint; unitsWritten: bigint; readCmds: bigint; writeCmds: bigint }): Buffer {
  const b = Buffer.alloc(512);
  b[0] = 0; // critical warning
  b.writeUInt16LE(300, 1); // composite temperature, kelvin
  b[3] = 100; // available spare %
  b[4] = 10; // available spare threshold %
  b[5] = 0; // percentage used
  b.writeBigUInt64LE(s.unitsRead, 32); // data units read (1000 × 512 bytes), low 64 of 128 bits
  b.writeBigUInt64LE(s.unitsWritten, 48);
  b.writeBigUInt64LE(s.readCmds, 64); // host read commands
  b.writeBigUInt64LE(s.writeCmds, 80);
  return b;
}

/** Firmware Slot Information log (LID 03h), 512 bytes: slot 1 active with revision `fr`. */
export function encodeFirmwareLog(fr: string): Buffer {
  const b = Buffer.alloc(512);
  b[0] = 0x01; // AFI: slot 1 active
  putString(b, 8, 8, fr);
  return b;
}

/** Changed Namespace List log (LID 04h): up to 1024 NSIDs; more than that → FFFFFFFFh alone. */
export function encodeChangedNsLog(nsids: readonly number[]): Buffer {
  const b = Buffer.alloc(4096);
  if (nsids.length > 1024) {
    b.writeUInt32LE(0xffffffff, 0);
    return b;
  }
  nsids.forEach((id, i) => b.writeUInt32LE(id, i * 4));
  return b;
}
