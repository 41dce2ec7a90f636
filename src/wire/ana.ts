/**
 * Asymmetric Namespace Access (ANA, NVMe Base 2.0 §8.1.3 / §5.16.1.12): the ANA log page
 * (LID 0Ch), ANA states, and the constants around them (CMIC/ANACAP bits in Identify
 * Controller, the ANA-change asynchronous event). Pure codecs: no sockets, no timers.
 *
 * ANA log page, little-endian:
 * ```
 * header (16 bytes)   chgcnt u64 @0, ngrps u16 @8, reserved @10..15
 * group descriptor    anagrpid u32 @0, nnsids u32 @4, chgcnt u64 @8, state u8 @16 (bits 3:0),
 *   (32 bytes + 4 ×   reserved @17..31, then nnsids × nsid u32 (ascending)
 *    nnsids each)
 * ```
 * With Get Log Page LSP bit 0 (RGO, Return Groups Only) every descriptor has nnsids 0 and no
 * NSID list.
 */
import { ErrorCode, NvmfNbdError } from '../errors';

/** Log page identifier of the ANA log. */
export const LID_ANA = 0x0c;
/** Get Log Page LSP bit 0 for LID 0Ch: Return Groups Only (CDW10 bit 8). */
export const ANA_LOG_RGO = 0x01;
/** Size of the ANA log header. */
export const ANA_LOG_HEADER_SIZE = 16;
/** Size of one ANA group descriptor without its NSID list. */
export const ANA_GROUP_DESC_SIZE = 32;

/** ANA states (group descriptor byte 16, bits 3:0). */
export const AnaState = {
  OPTIMIZED: 0x01,
  NON_OPTIMIZED: 0x02,
  INACCESSIBLE: 0x03,
  PERSISTENT_LOSS: 0x04,
  CHANGE: 0x0f,
} as const;
export type AnaState = (typeof AnaState)[keyof typeof AnaState];

/** The names Linux uses in sysfs `ana_state` and nvmet configfs, by state. */
const STATE_NAMES: Readonly<Record<AnaState, string>> = {
  [AnaState.OPTIMIZED]: 'optimized',
  [AnaState.NON_OPTIMIZED]: 'non-optimized',
  [AnaState.INACCESSIBLE]: 'inaccessible',
  [AnaState.PERSISTENT_LOSS]: 'persistent-loss',
  [AnaState.CHANGE]: 'change',
};

/** True for the five defined ANA states. */
export function isAnaState(v: number): v is AnaState {
  return Object.prototype.hasOwnProperty.call(STATE_NAMES, v);
}

/** `optimized`, `non-optimized`, `inaccessible`, `persistent-loss`, `change`; else `unknown (0xNN)`. */
export function anaStateName(v: number): string {
  return isAnaState(v) ? STATE_NAMES[v] : `unknown (0x${v.toString(16).padStart(2, '0')})`;
}

/**
 * An ANA state from its Linux name (as {@link anaStateName} prints it, case-insensitive; `_`
 * for `-` accepted) or its number (`1`, `0x0f`). Undefined when it is neither.
 */
export function parseAnaState(s: string): AnaState | undefined {
  const t = s.trim().toLowerCase().replace(/_/g, '-');
  for (const [k, name] of Object.entries(STATE_NAMES)) if (name === t) return Number(k) as AnaState;
  if (/^(?:0x[0-9a-f]+|\d+)$/.test(t)) {
    const n = Number(t);
    return isAnaState(n) ? n : undefined;
  }
  return undefined;
}

/**
 * Whether a namespace in this state can execute I/O through the controller reporting it:
 * optimized and non-optimized can; inaccessible, persistent loss and change cannot (§8.1.3.3–5).
 */
export function anaStateAccessible(v: number): boolean {
  return v === AnaState.OPTIMIZED || v === AnaState.NON_OPTIMIZED;
}

/** Identify Controller CMIC (byte 76) bits. */
export const Cmic = {
  /** The NVM subsystem may have two or more ports. */
  MULTI_PORT: 0x01,
  /** The NVM subsystem may have two or more controllers. */
  MULTI_CTRL: 0x02,
  /** SR-IOV virtual function. */
  SRIOV: 0x04,
  /** Asymmetric Namespace Access Reporting supported. */
  ANA: 0x08,
} as const;

/** Identify Controller ANACAP (byte 343) bits. */
export const Anacap = {
  OPTIMIZED: 0x01,
  NON_OPTIMIZED: 0x02,
  INACCESSIBLE: 0x04,
  PERSISTENT_LOSS: 0x08,
  CHANGE: 0x10,
  /** ANAGRPID of a namespace does not change while it is attached. */
  GRPID_STATIC: 0x40,
  /** A non-zero ANAGRPID may be given at Namespace Management create. */
  GRPID_NONZERO_NS_MGMT: 0x80,
} as const;

/** OAES (Identify Controller byte 92) bit 11 and Async Event Configuration bit 11: ANA change notices. */
export const AEN_CFG_ANA_CHANGE = 1 << 11;
/** Asynchronous event information (Notice type 2) for an ANA change. */
export const AER_NOTICE_ANA_CHANGE = 0x03;
/** AER completion DW0 of the ANA change notice: type 2 (notice), info 03h, log page 0Ch. */
export const AEN_ANA_CHANGE_DW0 = 0x02 | (AER_NOTICE_ANA_CHANGE << 8) | (LID_ANA << 16);

/** One ANA group descriptor. */
export interface AnaGroupDescriptor {
  /** ANA group id, ≥ 1. */
  grpid: number;
  /** Change count of this group's descriptor. */
  chgcnt: bigint;
  /** ANA state (an {@link AnaState} from a conforming controller; parsers keep what was sent). */
  state: number;
  /** NSIDs in the group (empty in an RGO log). */
  nsids: number[];
}

/** The ANA log page. */
export interface AnaLog {
  /** Change count of the whole log. */
  chgcnt: bigint;
  groups: AnaGroupDescriptor[];
}

/** Bytes the log takes for `groups` (with NSID lists unless `groupsOnly`). */
export function anaLogSize(groups: readonly Pick<AnaGroupDescriptor, 'nsids'>[], groupsOnly = false): number {
  let n = ANA_LOG_HEADER_SIZE + groups.length * ANA_GROUP_DESC_SIZE;
  if (!groupsOnly) for (const g of groups) n += 4 * g.nsids.length;
  return n;
}

/**
 * Encode an ANA log page. With `groupsOnly` (RGO) each descriptor has NNSIDS 0 and no list.
 * Throws INVALID_ARGUMENT for more than 65535 groups, a group id 0 or a state outside 4 bits.
 */
export function encodeAnaLog(log: AnaLog, o: { groupsOnly?: boolean } = {}): Buffer {
  const groupsOnly = o.groupsOnly === true;
  if (log.groups.length > 0xffff) throw new NvmfNbdError(ErrorCode.INVALID_ARGUMENT, `${log.groups.length} ANA groups, at most 65535`);
  const b = Buffer.alloc(anaLogSize(log.groups, groupsOnly));
  b.writeBigUInt64LE(BigInt.asUintN(64, log.chgcnt), 0);
  b.writeUInt16LE(log.groups.length, 8);
  let at = ANA_LOG_HEADER_SIZE;
  for (const g of log.groups) {
    if (!Number.isInteger(g.grpid) || g.grpid < 1 || g.grpid > 0xffffffff) throw new NvmfNbdError(ErrorCode.INVALID_ARGUMENT, `ANA group id ${g.grpid}`);
    if (!Number.isInteger(g.state) || g.state < 0 || g.state > 0x0f) throw new NvmfNbdError(ErrorCode.INVALID_ARGUMENT, `ANA state ${g.state}`);
    const ids = groupsOnly ? [] : g.nsids;
    b.writeUInt32LE(g.grpid, at);
    b.writeUInt32LE(ids.length, at + 4);
    b.writeBigUInt64LE(BigInt.asUintN(64, g.chgcnt), at + 8);
    b[at + 16] = g.state;
    at += ANA_GROUP_DESC_SIZE;
    for (const id of ids) {
      b.writeUInt32LE(id >>> 0, at);
      at += 4;
    }
  }
  return b;
}

/**
 * Parse an ANA log page read from offset 0 (`b` may be longer than the log: hosts read a buffer
 * sized from NANAGRPID and MNAN). Throws NVMF_ERR_ANA_LOG_INVALID when the header or a
 * descriptor runs past `b`, a group id is 0, or a group id repeats. States are returned as
 * sent (check {@link isAnaState}); bits 7:4 of the state byte are reserved and dropped.
 */
export function parseAnaLog(b: Buffer): AnaLog {
  if (b.length < ANA_LOG_HEADER_SIZE) throw invalid(`${b.length} bytes, the header alone is ${ANA_LOG_HEADER_SIZE}`);
  const chgcnt = b.readBigUInt64LE(0);
  const ngrps = b.readUInt16LE(8);
  const groups: AnaGroupDescriptor[] = [];
  const seen = new Set<number>();
  let at = ANA_LOG_HEADER_SIZE;
  for (let i = 0; i < ngrps; i++) {
    if (at + ANA_GROUP_DESC_SIZE > b.length) throw invalid(`descriptor ${i} of ${ngrps} at byte ${at} runs past the ${b.length}-byte buffer`);
    const grpid = b.readUInt32LE(at);
    const nnsids = b.readUInt32LE(at + 4);
    if (grpid === 0) throw invalid(`descriptor ${i} has ANA group id 0`);
    if (seen.has(grpid)) throw invalid(`ANA group ${grpid} listed twice`);
    seen.add(grpid);
    // Checked before any allocation: a peer's count can be anything.
    if (nnsids > (b.length - at - ANA_GROUP_DESC_SIZE) / 4) throw invalid(`group ${grpid}: ${nnsids} NSIDs run past the ${b.length}-byte buffer`);
    const nsids: number[] = [];
    for (let k = 0; k < nnsids; k++) nsids.push(b.readUInt32LE(at + ANA_GROUP_DESC_SIZE + 4 * k));
    groups.push({ grpid, chgcnt: b.readBigUInt64LE(at + 8), state: b[at + 16]! & 0x0f, nsids });
    at += ANA_GROUP_DESC_SIZE + 4 * nnsids;
  }
  return { chgcnt, groups };
}

function invalid(msg: string): NvmfNbdError {
  return new NvmfNbdError(ErrorCode.ANA_LOG_INVALID, `ANA log page: ${msg}`);
}
