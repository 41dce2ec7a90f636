/**
 * Identify data structures (NVMe Base 2.0 §5.17.2, NVM Command Set 1.0 §4.1.5), 4096 bytes each,
 * little-endian. Parsers read what the host needs; encoders build the same structures for the
 * embedded target (every field not given is zero).
 */
import { ErrorCode, NvmfNbdError } from '../errors';

export const IDENTIFY_SIZE = 4096;

/** Identify Controller (CNS 01h) fields used by this project. Offsets in the TSDoc of each. */
export interface IdentifyController {
  /** PCI vendor id, u16 @0. */ vid: number;
  /** Subsystem vendor id, u16 @2. */ ssvid: number;
  /** Serial number, 20 ASCII @4 (trimmed). */ sn: string;
  /** Model number, 40 ASCII @24 (trimmed). */ mn: string;
  /** Firmware revision, 8 ASCII @64 (trimmed). */ fr: string;
  /** Recommended arbitration burst, u8 @72. */ rab: number;
  /** IEEE OUI, 3 bytes @73 (little-endian). */ ieee: number;
  /** Multi-path I/O and namespace sharing capabilities, u8 @76. */ cmic: number;
  /** Max data transfer size as a power of two of CAP.MPSMIN pages (0 = no limit), u8 @77. */ mdts: number;
  /** Controller id, u16 @78. */ cntlid: number;
  /** Version (same format as the VS property), u32 @80. */ ver: number;
  /** RTD3 resume latency (µs), u32 @84. */ rtd3r: number;
  /** RTD3 entry latency (µs), u32 @88. */ rtd3e: number;
  /** Optional asynchronous events supported, u32 @92. */ oaes: number;
  /** Controller attributes, u32 @96. */ ctratt: number;
  /** Controller type (1 I/O, 2 discovery, 3 admin), u8 @111. */ cntrltype: number;
  /** FRU GUID, 16 bytes @112. */ fguid: Buffer;
  /** Command retry delay times (100 ms units), u16 @128, @130, @132. */ crdt1: number; crdt2: number; crdt3: number;
  /** Optional admin command support, u16 @256. */ oacs: number;
  /** Abort command limit (0-based), u8 @258. */ acl: number;
  /** Async event request limit (0-based), u8 @259. */ aerl: number;
  /** Firmware updates, u8 @260. */ frmw: number;
  /** Log page attributes, u8 @261. */ lpa: number;
  /** Error log page entries (0-based), u8 @262. */ elpe: number;
  /** Number of power states supported (0-based), u8 @263. */ npss: number;
  /** Warning / critical composite temperature thresholds (kelvin), u16 @266, @268. */ wctemp: number; cctemp: number;
  /** Keep alive support granularity (100 ms units; 0 = not supported), u16 @320. */ kas: number;
  /** ANA transition time (seconds; CMIC bit 3), u8 @342. */ anatt: number;
  /** ANA capabilities (see wire/ana.ts `Anacap`), u8 @343. */ anacap: number;
  /** Largest ANA group id, u32 @344. */ anagrpmax: number;
  /** Number of ANA group ids supported, u32 @348. */ nanagrpid: number;
  /** Persistent event log size (4 KiB units), u32 @352. */ pels: number;
  /** Command quiesce time (ms): how long commands may still execute after the controller lost the host (TP 4129), u16 @386. */ cqt: number;
  /** SQ entry size (max 7:4, required 3:0, log2), u8 @512. */ sqes: number;
  /** CQ entry size, u8 @513. */ cqes: number;
  /** Max outstanding commands (fabrics), u16 @514. */ maxcmd: number;
  /** Number of namespaces (largest NSID), u32 @516. */ nn: number;
  /** Optional NVM command support (bit 2 DSM, bit 3 Write Zeroes...), u16 @520. */ oncs: number;
  /** Fused operation support, u16 @522. */ fuses: number;
  /** Format NVM attributes, u8 @524. */ fna: number;
  /** Volatile write cache (bit 0 present), u8 @525. */ vwc: number;
  /** Atomic write unit normal (0-based blocks), u16 @526. */ awun: number;
  /** Atomic write unit power fail (0-based), u16 @528. */ awupf: number;
  /** SGL support, u32 @536. */ sgls: number;
  /** Max number of allowed namespaces, u32 @540. */ mnan: number;
  /** NVM subsystem NQN, 256 bytes @768 (NUL-padded). */ subnqn: string;
  /** I/O queue command capsule supported size (16-byte units), u32 @1792. */ ioccsz: number;
  /** I/O queue response capsule supported size (16-byte units), u32 @1796. */ iorcsz: number;
  /** In-capsule data offset (16-byte units; must be 0 for TCP), u16 @1800. */ icdoff: number;
  /** Fabrics controller attributes, u8 @1802. */ fcatt: number;
  /** Max SGL data block descriptors, u8 @1803. */ msdbd: number;
  /** Optional fabric commands supported, u16 @1804. */ ofcs: number;
  /** Power state 0 maximum power (0.01 W units; PSD0 MP), u16 @2048. */ psd0mp: number;
}

/** One LBA format descriptor (4 bytes @128 + 4*i): ms u16 @0, lbads u8 @2, rp bits 1:0 @3. */
export interface LbaFormat {
  /** Metadata bytes per block. */ ms: number;
  /** log2 of the data block size. */ lbads: number;
  /** Relative performance (0 best..3). */ rp: number;
}

/** Identify Namespace (CNS 00h, NVM command set) fields used by this project. */
export interface IdentifyNamespace {
  /** Namespace size in blocks, u64 @0. */ nsze: bigint;
  /** Capacity in blocks, u64 @8. */ ncap: bigint;
  /** Utilization in blocks, u64 @16. */ nuse: bigint;
  /** Features (bit 0 thin provisioning, bit 1 NAWUN.. valid, bit 4 NPWG.. valid), u8 @24. */ nsfeat: number;
  /** Number of LBA formats (0-based), u8 @25. */ nlbaf: number;
  /** Formatted LBA size (bits 3:0 index low, 4 metadata at end, 6:5 index high), u8 @26. */ flbas: number;
  /** Metadata capabilities, u8 @27. */ mc: number;
  /** End-to-end protection capabilities, u8 @28. */ dpc: number;
  /** End-to-end protection settings (bits 2:0 type), u8 @29. */ dps: number;
  /** Multi-path I/O and sharing (bit 0: may be attached to two or more controllers at once), u8 @30. */ nmic: number;
  /** Reservation capabilities, u8 @31. */ rescap: number;
  /** Deallocate logical block features (bits 2:0 what deallocated blocks read as), u8 @33. */ dlfeat: number;
  /** u16 @34, @36, @38, @40, @42, @44, @46. */
  nawun: number; nawupf: number; nacwu: number; nabsn: number; nabo: number; nabspf: number; noiob: number;
  /** NVM capacity in bytes, u128 @48. */ nvmcap: bigint;
  /** Preferred write granularity/alignment, deallocate granularity/alignment, optimal write size
   *  (0-based blocks), u16 @64, @66, @68, @70, @72. */
  npwg: number; npwa: number; npdg: number; npda: number; nows: number;
  /** ANA group id (0 = none; CMIC bit 3 controllers), u32 @92. */ anagrpid: number;
  /** Namespace GUID, 16 bytes @104. */ nguid: Buffer;
  /** IEEE EUI-64, 8 bytes @120. */ eui64: Buffer;
  /** LBA formats, nlbaf+1 entries (at most 64) @128. */ lbaf: LbaFormat[];
  /** Derived: index of the active format (FLBAS bits 3:0, plus bits 6:5 as bits 5:4 when nlbaf > 16). */
  formatIndex: number;
  /** Derived: block size in bytes of the active format; 0 when the format is missing or its size
   *  is not 512 B..2 GiB (the namespace is then unusable). */
  lbaSize: number;
  /** Derived: metadata bytes per block of the active format. */
  metadataSize: number;
  /** Derived: end-to-end protection is enabled (DPS bits 2:0 non-zero). */
  hasProtection: boolean;
}

function need4096(b: Buffer, what: string): void {
  if (b.length < IDENTIFY_SIZE) {
    throw new NvmfNbdError(ErrorCode.INVALID_ARGUMENT, `${what}: ${b.length} bytes, expected ${IDENTIFY_SIZE}`);
  }
}

/** ASCII field, trimmed of the trailing space (and NUL) padding. */
function readAscii(b: Buffer, at: number, len: number): string {
  return b.subarray(at, at + len).toString('latin1').replace(/[\0 ]+$/, '').replace(/^[\0 ]+/, '');
}

/** Space-padded ASCII field, as Identify strings are. Longer strings are cut. */
function writeAscii(b: Buffer, at: number, len: number, s: string): void {
  b.fill(0x20, at, at + len);
  b.write(s.slice(0, len), at, len, 'latin1');
}

/** NUL-padded string field (NQNs). Keeps room for the terminating NUL. */
function writeNulPadded(b: Buffer, at: number, len: number, s: string): void {
  b.fill(0, at, at + len);
  b.write(s, at, len - 1, 'utf8');
}

function readNulPadded(b: Buffer, at: number, len: number): string {
  const f = b.subarray(at, at + len);
  const nul = f.indexOf(0);
  return f.subarray(0, nul < 0 ? len : nul).toString('utf8').trim();
}

/** Parse Identify Controller data. Throws INVALID_ARGUMENT when shorter than 4096 bytes. */
export function parseIdentifyController(b: Buffer): IdentifyController {
  need4096(b, 'identify controller');
  return {
    vid: b.readUInt16LE(0),
    ssvid: b.readUInt16LE(2),
    sn: readAscii(b, 4, 20),
    mn: readAscii(b, 24, 40),
    fr: readAscii(b, 64, 8),
    rab: b[72]!,
    ieee: b.readUIntLE(73, 3),
    cmic: b[76]!,
    mdts: b[77]!,
    cntlid: b.readUInt16LE(78),
    ver: b.readUInt32LE(80),
    rtd3r: b.readUInt32LE(84),
    rtd3e: b.readUInt32LE(88),
    oaes: b.readUInt32LE(92),
    ctratt: b.readUInt32LE(96),
    cntrltype: b[111]!,
    fguid: Buffer.from(b.subarray(112, 128)),
    crdt1: b.readUInt16LE(128),
    crdt2: b.readUInt16LE(130),
    crdt3: b.readUInt16LE(132),
    oacs: b.readUInt16LE(256),
    acl: b[258]!,
    aerl: b[259]!,
    frmw: b[260]!,
    lpa: b[261]!,
    elpe: b[262]!,
    npss: b[263]!,
    wctemp: b.readUInt16LE(266),
    cctemp: b.readUInt16LE(268),
    kas: b.readUInt16LE(320),
    anatt: b[342]!,
    anacap: b[343]!,
    anagrpmax: b.readUInt32LE(344),
    nanagrpid: b.readUInt32LE(348),
    pels: b.readUInt32LE(352),
    cqt: b.readUInt16LE(386),
    sqes: b[512]!,
    cqes: b[513]!,
    maxcmd: b.readUInt16LE(514),
    nn: b.readUInt32LE(516),
    oncs: b.readUInt16LE(520),
    fuses: b.readUInt16LE(522),
    fna: b[524]!,
    vwc: b[525]!,
    awun: b.readUInt16LE(526),
    awupf: b.readUInt16LE(528),
    sgls: b.readUInt32LE(536),
    mnan: b.readUInt32LE(540),
    subnqn: readNulPadded(b, 768, 256),
    ioccsz: b.readUInt32LE(1792),
    iorcsz: b.readUInt32LE(1796),
    icdoff: b.readUInt16LE(1800),
    fcatt: b[1802]!,
    msdbd: b[1803]!,
    ofcs: b.readUInt16LE(1804),
    psd0mp: b.readUInt16LE(2048),
  };
}

/** Build Identify Controller data (4096 bytes); fields not given are zero (strings blank). */
export function encodeIdentifyController(o: Partial<IdentifyController>): Buffer {
  const b = Buffer.alloc(IDENTIFY_SIZE);
  const u8 = (at: number, v: number | undefined): void => { b[at] = (v ?? 0) & 0xff; };
  const u16 = (at: number, v: number | undefined): void => { b.writeUInt16LE((v ?? 0) & 0xffff, at); };
  const u32 = (at: number, v: number | undefined): void => { b.writeUInt32LE((v ?? 0) >>> 0, at); };
  u16(0, o.vid);
  u16(2, o.ssvid);
  writeAscii(b, 4, 20, o.sn ?? '');
  writeAscii(b, 24, 40, o.mn ?? '');
  writeAscii(b, 64, 8, o.fr ?? '');
  u8(72, o.rab);
  b.writeUIntLE((o.ieee ?? 0) & 0xffffff, 73, 3);
  u8(76, o.cmic);
  u8(77, o.mdts);
  u16(78, o.cntlid);
  u32(80, o.ver);
  u32(84, o.rtd3r);
  u32(88, o.rtd3e);
  u32(92, o.oaes);
  u32(96, o.ctratt);
  u8(111, o.cntrltype);
  if (o.fguid) o.fguid.copy(b, 112, 0, 16);
  u16(128, o.crdt1);
  u16(130, o.crdt2);
  u16(132, o.crdt3);
  u16(256, o.oacs);
  u8(258, o.acl);
  u8(259, o.aerl);
  u8(260, o.frmw);
  u8(261, o.lpa);
  u8(262, o.elpe);
  u8(263, o.npss);
  u16(266, o.wctemp);
  u16(268, o.cctemp);
  u16(320, o.kas);
  u8(342, o.anatt);
  u8(343, o.anacap);
  u32(344, o.anagrpmax);
  u32(348, o.nanagrpid);
  u32(352, o.pels);
  u16(386, o.cqt);
  u8(512, o.sqes);
  u8(513, o.cqes);
  u16(514, o.maxcmd);
  u32(516, o.nn);
  u16(520, o.oncs);
  u16(522, o.fuses);
  u8(524, o.fna);
  u8(525, o.vwc);
  u16(526, o.awun);
  u16(528, o.awupf);
  u32(536, o.sgls);
  u32(540, o.mnan);
  writeNulPadded(b, 768, 256, o.subnqn ?? '');
  u32(1792, o.ioccsz);
  u32(1796, o.iorcsz);
  u16(1800, o.icdoff);
  u8(1802, o.fcatt);
  u8(1803, o.msdbd);
  u16(1804, o.ofcs);
  u16(2048, o.psd0mp);
  return b;
}

/** Index of the active LBA format from FLBAS (NVM Command Set Figure 97). */
export function formatIndexOf(flbas: number, nlbaf: number): number {
  const low = flbas & 0x0f;
  return nlbaf > 16 ? low | (((flbas >>> 5) & 0x3) << 4) : low;
}

/** Parse Identify Namespace data. Throws INVALID_ARGUMENT when shorter than 4096 bytes. */
export function parseIdentifyNamespace(b: Buffer): IdentifyNamespace {
  need4096(b, 'identify namespace');
  const nlbaf = b[25]!;
  const flbas = b[26]!;
  const lbaf: LbaFormat[] = [];
  const count = Math.min(nlbaf + 1, 64);
  for (let i = 0; i < count; i++) {
    const at = 128 + 4 * i;
    lbaf.push({ ms: b.readUInt16LE(at), lbads: b[at + 2]!, rp: b[at + 3]! & 3 });
  }
  const formatIndex = formatIndexOf(flbas, nlbaf);
  const f = lbaf[formatIndex];
  // A peer can put anything in lbads: only 512 B..2 GiB is a block size we can do arithmetic on.
  const lbaSize = f !== undefined && f.lbads >= 9 && f.lbads <= 31 ? 2 ** f.lbads : 0;
  const dps = b[29]!;
  return {
    nsze: b.readBigUInt64LE(0),
    ncap: b.readBigUInt64LE(8),
    nuse: b.readBigUInt64LE(16),
    nsfeat: b[24]!,
    nlbaf,
    flbas,
    mc: b[27]!,
    dpc: b[28]!,
    dps,
    nmic: b[30]!,
    rescap: b[31]!,
    dlfeat: b[33]!,
    nawun: b.readUInt16LE(34),
    nawupf: b.readUInt16LE(36),
    nacwu: b.readUInt16LE(38),
    nabsn: b.readUInt16LE(40),
    nabo: b.readUInt16LE(42),
    nabspf: b.readUInt16LE(44),
    noiob: b.readUInt16LE(46),
    nvmcap: b.readBigUInt64LE(48) | (b.readBigUInt64LE(56) << 64n),
    npwg: b.readUInt16LE(64),
    npwa: b.readUInt16LE(66),
    npdg: b.readUInt16LE(68),
    npda: b.readUInt16LE(70),
    nows: b.readUInt16LE(72),
    anagrpid: b.readUInt32LE(92),
    nguid: Buffer.from(b.subarray(104, 120)),
    eui64: Buffer.from(b.subarray(120, 128)),
    lbaf,
    formatIndex,
    lbaSize,
    metadataSize: f?.ms ?? 0,
    hasProtection: (dps & 7) !== 0,
  };
}

/** Input of {@link encodeIdentifyNamespace}: the raw fields (derived ones are ignored). */
export type IdentifyNamespaceInput = Partial<Omit<IdentifyNamespace, 'formatIndex' | 'lbaSize' | 'metadataSize' | 'hasProtection'>>;

/**
 * Build Identify Namespace data (4096 bytes). `nlbaf` defaults to `lbaf.length - 1`; fields not
 * given are zero. An all-zero result is what a controller returns for an inactive NSID.
 */
export function encodeIdentifyNamespace(o: IdentifyNamespaceInput): Buffer {
  const b = Buffer.alloc(IDENTIFY_SIZE);
  const lbaf = (o.lbaf ?? []).slice(0, 64);
  b.writeBigUInt64LE(BigInt.asUintN(64, o.nsze ?? 0n), 0);
  b.writeBigUInt64LE(BigInt.asUintN(64, o.ncap ?? 0n), 8);
  b.writeBigUInt64LE(BigInt.asUintN(64, o.nuse ?? 0n), 16);
  b[24] = o.nsfeat ?? 0;
  b[25] = o.nlbaf ?? Math.max(lbaf.length - 1, 0);
  b[26] = o.flbas ?? 0;
  b[27] = o.mc ?? 0;
  b[28] = o.dpc ?? 0;
  b[29] = o.dps ?? 0;
  b[30] = o.nmic ?? 0;
  b[31] = o.rescap ?? 0;
  b[33] = o.dlfeat ?? 0;
  b.writeUInt16LE(o.nawun ?? 0, 34);
  b.writeUInt16LE(o.nawupf ?? 0, 36);
  b.writeUInt16LE(o.nacwu ?? 0, 38);
  b.writeUInt16LE(o.nabsn ?? 0, 40);
  b.writeUInt16LE(o.nabo ?? 0, 42);
  b.writeUInt16LE(o.nabspf ?? 0, 44);
  b.writeUInt16LE(o.noiob ?? 0, 46);
  const cap = BigInt.asUintN(128, o.nvmcap ?? 0n);
  b.writeBigUInt64LE(cap & 0xffffffffffffffffn, 48);
  b.writeBigUInt64LE(cap >> 64n, 56);
  b.writeUInt16LE(o.npwg ?? 0, 64);
  b.writeUInt16LE(o.npwa ?? 0, 66);
  b.writeUInt16LE(o.npdg ?? 0, 68);
  b.writeUInt16LE(o.npda ?? 0, 70);
  b.writeUInt16LE(o.nows ?? 0, 72);
  b.writeUInt32LE((o.anagrpid ?? 0) >>> 0, 92);
  if (o.nguid) o.nguid.copy(b, 104, 0, 16);
  if (o.eui64) o.eui64.copy(b, 120, 0, 8);
  lbaf.forEach((f, i) => {
    const at = 128 + 4 * i;
    b.writeUInt16LE(f.ms, at);
    b[at + 2] = f.lbads;
    b[at + 3] = f.rp & 3;
  });
  return b;
}

/** Active Namespace ID list (CNS 02h): up to 1024 u32 NSIDs, ascending, ended by the first 0. */
export function parseNamespaceList(b: Buffer): number[] {
  const ids: number[] = [];
  const n = Math.min(Math.floor(b.length / 4), 1024);
  for (let i = 0; i < n; i++) {
    const id = b.readUInt32LE(i * 4);
    if (id === 0) break;
    ids.push(id);
  }
  return ids;
}

/** Build an Active Namespace ID list (4096 bytes). Throws INVALID_ARGUMENT for more than 1024 ids. */
export function encodeNamespaceList(ids: readonly number[]): Buffer {
  if (ids.length > 1024) throw new NvmfNbdError(ErrorCode.INVALID_ARGUMENT, `${ids.length} namespace ids, at most 1024`);
  const b = Buffer.alloc(IDENTIFY_SIZE);
  ids.forEach((id, i) => b.writeUInt32LE(id >>> 0, i * 4));
  return b;
}
