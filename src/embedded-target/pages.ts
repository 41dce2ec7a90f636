/**
 * What the embedded target reports to hosts: the values of its Identify Controller / Namespace /
 * lists / descriptors and of the log pages a Linux host asks for. The layouts (byte offsets) are
 * `src/wire/`'s — one encoder per structure, shared with the host's decoders; this file only
 * chooses the values (capabilities the target has, identities, policy such as list order).
 */
import { createHash } from 'node:crypto';
import { AEN_CFG_ANA_CHANGE, Cmic } from '../wire/ana';
import {
  AdrFam, IDENTIFY_SIZE, SubType, TcpSecType, Treq, encodeDiscoveryLog as encodeDiscoveryLogPage, encodeIdentifyController as encodeIdCtrl,
  encodeIdentifyNamespace as encodeIdNs, encodeNamespaceList,
} from '../wire';
import { encodeNsIdDescriptors } from '../wire/ns-descriptors';
import { encodeChangedNsList, encodeErrorLog as encodeErrorEntries, encodeFirmwareLog as encodeFirmwareSlots, encodeSmartLog as encodeSmart } from '../wire/log-pages';

export { IDENTIFY_SIZE };

/** Controller types (Identify Controller CNTRLTYPE). */
export const ControllerType = { IO: 1, DISCOVERY: 2 } as const;

/** NVMe version we report: 1.4 (2.0 would make Linux ask for CNS 06h/08h first). */
export const NVME_VERSION = 0x00010400;

/** PCI vendor id reported in VID/SSVID: 0 (no PCI vendor: a software target). */
const VID = 0x0000;
/** OAES bit 8: Namespace Attribute Notices. */
const OAES_NS_ATTR = 1 << 8;
/** OAES bit 31: Discovery Log Page Change notices. */
const OAES_DISCOVERY_LOG = 0x80000000;

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

/**
 * Identify Controller (CNS 01h), NVMe Base 2.0 Figure 275 + NVMe-oF 1.1 §4.1 fabrics fields.
 * What the Linux host checks: CNTLID matches Connect, KAS non-zero for I/O controllers, SGLS
 * bits 1:0 non-zero, ICDOFF 0, IOCCSZ for the in-capsule size, OAES bit 8 for namespace AENs.
 */
export function encodeIdentifyController(f: IdentifyControllerFields): Buffer {
  const io = f.type === ControllerType.IO;
  const ana = io ? f.ana : undefined;
  return encodeIdCtrl({
    vid: VID,
    ssvid: VID,
    sn: f.serial,
    mn: f.model,
    fr: f.firmware,
    rab: 0,
    // CMIC bit 1: the subsystem may have several controllers; with ANA also bit 0 (several ports)
    // and bit 3 (ANA reporting), which is what turns on the Linux host's native multipath ANA code.
    cmic: io ? (ana !== undefined ? Cmic.MULTI_PORT | Cmic.MULTI_CTRL | Cmic.ANA : Cmic.MULTI_CTRL) : 0,
    mdts: f.mdts,
    cntlid: f.cntlid,
    ver: NVME_VERSION,
    oaes: io ? OAES_NS_ATTR | (ana !== undefined ? AEN_CFG_ANA_CHANGE : 0) : OAES_DISCOVERY_LOG,
    ctratt: 0,
    cntrltype: f.type,
    oacs: 0, // no optional admin commands
    acl: 3, // 0-based abort limit (Abort is accepted, never aborts)
    aerl: f.aerl,
    frmw: 0x03, // slot 1 read-only, one slot
    lpa: 0x04, // bit 2: extended data / offset for Get Log Page
    elpe: 0, // one error log entry
    wctemp: 0x0157, // 343 K
    cctemp: 0x0173, // 371 K
    kas: f.kas,
    ...(ana !== undefined ? { anatt: ana.anatt, anacap: ana.anacap, anagrpmax: ana.maxGroups, nanagrpid: ana.maxGroups } : {}),
    cqt: f.cqt ?? 0, // ms
    sqes: 0x66, // 64 bytes required and max
    cqes: 0x44, // 16 bytes
    maxcmd: f.maxcmd,
    nn: f.nn,
    oncs: io ? (1 << 2) | (1 << 3) : 0, // DSM, Write Zeroes
    vwc: io ? 0x07 : 0, // present; bits 2:1 = 11b flush with NSID FFFFFFFFh supported
    sgls: (1 << 0) | (1 << 20), // SGLs supported, offset addressing in-capsule
    mnan: io ? f.nn : 0,
    subnqn: f.subnqn,
    ioccsz: f.ioccsz,
    iorcsz: 1, // 16-byte response capsules
    icdoff: 0,
    fcatt: 0, // dynamic controller model
    msdbd: 1, // one SGL descriptor
    psd0mp: 25, // 0.25 W (in 0.01 W units), any non-zero value
  });
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

/** Identify Namespace (CNS 00h): one LBA format, identifiers never reused, shareable, zeroes on deallocate. */
export function encodeIdentifyNamespace(f: IdentifyNamespaceFields): Buffer {
  return encodeIdNs({
    nsze: f.nsze,
    ncap: f.nsze,
    nuse: f.nsze,
    nsfeat: 0x08, // bit 3: NGUID/EUI64 never reused
    nlbaf: 0, // one format
    flbas: 0, // format 0, no metadata
    nmic: 0x01, // may be attached to several controllers
    dlfeat: 0x09, // deallocated blocks read as zeroes (001b), Write Zeroes may deallocate (bit 3)
    anagrpid: f.anagrpid ?? 0,
    nguid: f.ids.nguid,
    eui64: f.ids.eui64,
    lbaf: [{ ms: 0, lbads: f.lbads & 0xff, rp: 0 }],
  });
}

/** Active Namespace ID list (CNS 02h): up to 1024 NSIDs greater than `after`, ascending. */
export function encodeActiveNamespaceList(nsids: readonly number[], after: number): Buffer {
  return encodeNamespaceList([...nsids].sort((x, y) => x - y).filter((id) => id > after).slice(0, 1024));
}

/** Namespace Identification Descriptor list (CNS 03h): EUI64, NGUID, UUID, CSI 0 (NVM). */
export function encodeNsDescriptors(ids: NamespaceIds): Buffer {
  return encodeNsIdDescriptors({ eui64: ids.eui64, nguid: ids.nguid, uuid: ids.uuid, csi: 0 });
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
 * Discovery log page (LID 70h): TCP entries with dynamic controllers; TREQ says SQ flow control
 * disable is supported, plus the secure channel requirement (TSAS sectype TLS 1.3) when TLS is on.
 */
export function encodeDiscoveryLog(genctr: bigint, entries: readonly DiscoveryEntry[]): Buffer {
  return encodeDiscoveryLogPage(genctr, entries.map((e) => {
    const tsas = Buffer.alloc(256);
    if (e.tls !== undefined) tsas[0] = TcpSecType.TLS13;
    return {
      adrfam: e.adrfam === 2 ? AdrFam.IPV6 : AdrFam.IPV4,
      subtype: e.subtype ?? SubType.NVM,
      treq: Treq.DISABLE_SQ_FC | (e.tls === 'required' ? Treq.REQUIRED : e.tls === 'optional' ? Treq.NOT_REQUIRED : Treq.NOT_SPECIFIED),
      portid: e.portid,
      cntlid: 0xffff,
      asqsz: e.asqsz,
      trsvcid: e.trsvcid,
      subnqn: e.subnqn,
      traddr: e.traddr,
      tsas,
    };
  }));
}

/** Error Information log (LID 01h): one entry, error count 0 (nothing recorded). */
export function encodeErrorLog(): Buffer {
  return encodeErrorEntries([{}]);
}

/** SMART / Health log (LID 02h): a healthy device at 300 K, with the target's data and command counts. */
export function encodeSmartLog(s: { unitsRead: bigint; unitsWritten: bigint; readCmds: bigint; writeCmds: bigint }): Buffer {
  return encodeSmart({
    criticalWarning: 0,
    temperature: 300,
    availableSpare: 100,
    spareThreshold: 10,
    percentageUsed: 0,
    dataUnitsRead: s.unitsRead,
    dataUnitsWritten: s.unitsWritten,
    hostReadCommands: s.readCmds,
    hostWriteCommands: s.writeCmds,
  });
}

/** Firmware Slot Information log (LID 03h): slot 1 active with revision `fr`. */
export function encodeFirmwareLog(fr: string): Buffer {
  return encodeFirmwareSlots({ afi: 0x01, slots: [fr] });
}

/** Changed Namespace List log (LID 04h): up to 1024 NSIDs; more than that → FFFFFFFFh alone. */
export function encodeChangedNsLog(nsids: readonly number[]): Buffer {
  return encodeChangedNsList(nsids);
}
