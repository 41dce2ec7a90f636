/**
 * Controller properties (NVMe Base 2.0 §3.1.3, read/written with Fabrics Property Get/Set).
 * Field helpers for CAP, VS, CC and CSTS; bit positions are in each function's TSDoc.
 */

/** Property offsets. CAP is 8 bytes, the rest 4. */
export const Property = { CAP: 0x00, VS: 0x08, CC: 0x14, CSTS: 0x1c, NSSR: 0x20 } as const;

/** CC.SHN values. */
export const Shn = { NONE: 0, NORMAL: 1, ABRUPT: 2 } as const;
/** CSTS.SHST values. */
export const Shst = { NORMAL: 0, OCCURRING: 1, COMPLETE: 2 } as const;

/** Controller Capabilities. */
export interface Cap {
  /** Max queue entries supported, 0-based (bits 15:0). */ mqes: number;
  /** Contiguous queues required (bit 16). */ cqr: boolean;
  /** Arbitration mechanisms supported (bits 18:17). */ ams: number;
  /** Worst-case time to ready, in 500 ms units (bits 31:24). */ to: number;
  /** `to` in milliseconds. */ timeoutMs: number;
  /** Doorbell stride (bits 35:32). */ dstrd: number;
  /** NVM subsystem reset supported (bit 36). */ nssrs: boolean;
  /** Command sets supported (bits 44:37; bit 0 NVM, bit 6 I/O sets, bit 7 admin only). */ css: number;
  /** Boot partition support (bit 45). */ bps: boolean;
  /** Controller power scope (bits 47:46). */ cps: number;
  /** Minimum memory page size, 2^(12+mpsmin) (bits 51:48). */ mpsmin: number;
  /** Maximum memory page size, 2^(12+mpsmax) (bits 55:52). */ mpsmax: number;
  /** Persistent memory region supported (bit 56). */ pmrs: boolean;
  /** Controller memory buffer supported (bit 57). */ cmbs: boolean;
  /** NVM subsystem shutdown supported (bit 58). */ nsss: boolean;
  /** Controller ready modes supported (bits 60:59). */ crms: number;
}

function bits(v: bigint, lo: number, width: number): number {
  return Number((v >> BigInt(lo)) & ((1n << BigInt(width)) - 1n));
}

/** Decode CAP (8 bytes). */
export function parseCap(v: bigint): Cap {
  const to = bits(v, 24, 8);
  return {
    mqes: bits(v, 0, 16),
    cqr: bits(v, 16, 1) === 1,
    ams: bits(v, 17, 2),
    to,
    timeoutMs: to * 500,
    dstrd: bits(v, 32, 4),
    nssrs: bits(v, 36, 1) === 1,
    css: bits(v, 37, 8),
    bps: bits(v, 45, 1) === 1,
    cps: bits(v, 46, 2),
    mpsmin: bits(v, 48, 4),
    mpsmax: bits(v, 52, 4),
    pmrs: bits(v, 56, 1) === 1,
    cmbs: bits(v, 57, 1) === 1,
    nsss: bits(v, 58, 1) === 1,
    crms: bits(v, 59, 2),
  };
}

/** Encode CAP (the target side). Missing fields are 0 / false. */
export function encodeCap(c: Partial<Omit<Cap, 'timeoutMs'>>): bigint {
  const f = (val: number | boolean | undefined, lo: number, width: number): bigint =>
    (BigInt(Number(val ?? 0)) & ((1n << BigInt(width)) - 1n)) << BigInt(lo);
  return f(c.mqes, 0, 16) | f(c.cqr, 16, 1) | f(c.ams, 17, 2) | f(c.to, 24, 8) | f(c.dstrd, 32, 4) |
    f(c.nssrs, 36, 1) | f(c.css, 37, 8) | f(c.bps, 45, 1) | f(c.cps, 46, 2) | f(c.mpsmin, 48, 4) |
    f(c.mpsmax, 52, 4) | f(c.pmrs, 56, 1) | f(c.cmbs, 57, 1) | f(c.nsss, 58, 1) | f(c.crms, 59, 2);
}

/** Controller Configuration. */
export interface Cc {
  /** Enable (bit 0). */ en: boolean;
  /** I/O command set selected (bits 6:4; 0 NVM). */ css: number;
  /** Memory page size 2^(12+mps) (bits 10:7). */ mps: number;
  /** Arbitration mechanism (bits 13:11). */ ams: number;
  /** Shutdown notification (bits 15:14), {@link Shn}. */ shn: number;
  /** I/O SQ entry size, log2 (bits 19:16; 6 = 64 bytes). */ iosqes: number;
  /** I/O CQ entry size, log2 (bits 23:20; 4 = 16 bytes). */ iocqes: number;
}

/** Decode CC (4 bytes). */
export function decodeCc(v: number): Cc {
  return {
    en: (v & 1) !== 0,
    css: (v >>> 4) & 7,
    mps: (v >>> 7) & 0xf,
    ams: (v >>> 11) & 7,
    shn: (v >>> 14) & 3,
    iosqes: (v >>> 16) & 0xf,
    iocqes: (v >>> 20) & 0xf,
  };
}

/** Encode CC. */
export function encodeCc(c: Cc): number {
  return ((c.en ? 1 : 0) | ((c.css & 7) << 4) | ((c.mps & 0xf) << 7) | ((c.ams & 7) << 11) |
    ((c.shn & 3) << 14) | ((c.iosqes & 0xf) << 16) | ((c.iocqes & 0xf) << 20)) >>> 0;
}

/** Controller Status. */
export interface Csts {
  /** Ready (bit 0). */ rdy: boolean;
  /** Controller fatal status (bit 1). */ cfs: boolean;
  /** Shutdown status (bits 3:2), {@link Shst}. */ shst: number;
  /** NVM subsystem reset occurred (bit 4). */ nssro: boolean;
  /** Processing paused (bit 5). */ pp: boolean;
}

/** Decode CSTS (4 bytes). */
export function decodeCsts(v: number): Csts {
  return {
    rdy: (v & 1) !== 0,
    cfs: (v & 2) !== 0,
    shst: (v >>> 2) & 3,
    nssro: (v & 0x10) !== 0,
    pp: (v & 0x20) !== 0,
  };
}

/** Encode CSTS (the target side). */
export function encodeCsts(c: Partial<Csts>): number {
  return ((c.rdy ? 1 : 0) | (c.cfs ? 2 : 0) | (((c.shst ?? 0) & 3) << 2) | (c.nssro ? 0x10 : 0) | (c.pp ? 0x20 : 0)) >>> 0;
}

/** Version: major (31:16), minor (15:8), tertiary (7:0). */
export interface Vs { major: number; minor: number; tertiary: number }

/** Decode VS (also the format of Identify Controller VER). */
export function decodeVs(v: number): Vs {
  return { major: (v >>> 16) & 0xffff, minor: (v >>> 8) & 0xff, tertiary: v & 0xff };
}

/** Encode VS. */
export function encodeVs(v: Vs): number {
  return (((v.major & 0xffff) << 16) | ((v.minor & 0xff) << 8) | (v.tertiary & 0xff)) >>> 0;
}

/** "2.0" or "1.4.1" style text for a VS value. */
export function formatVs(v: number): string {
  const d = decodeVs(v);
  return d.tertiary ? `${d.major}.${d.minor}.${d.tertiary}` : `${d.major}.${d.minor}`;
}
