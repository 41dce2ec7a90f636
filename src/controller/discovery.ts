/**
 * Discovery: connect to the discovery controller (KATO 0), read the Discovery Log Page (0x70)
 * header, then all entries, and retry when the generation counter changed meanwhile
 * (NVMe-oF §5.3 / base spec 2.0 §5.16.1.23).
 */
import type { TlsPsk } from '../tls/psk';
import { ErrorCode, NvmfNbdError } from '../errors';
import { DISCOVERY_NQN, parseDiscoveryLogEntry, parseDiscoveryLogHeader, sqeGetLogPage } from '../wire';
import type { DiscoveryLogEntry } from '../wire';
import { Controller } from './controller';
import type { DhchapHostOptions } from './auth';

/** Log page identifier of the Discovery log. */
const DISCOVERY_LOG_ID = 0x70;
const HEADER_LEN = 1024;
const ENTRY_LEN = 1024;
/** A discovery log longer than this is refused (bounded memory against a broken target). */
export const MAX_DISCOVERY_ENTRIES = 1024;
const MAX_ATTEMPTS = 5;
/** Default {@link DiscoverOptions.timeoutMs}: the whole discovery, connect to disconnect. */
export const DEFAULT_DISCOVERY_TIMEOUT_MS = 60_000;

/** One discovery log entry (the wire codec's parse). */
export type DiscoveryEntry = DiscoveryLogEntry;

/** Options of {@link discover}. */
export interface DiscoverOptions {
  traddr: string;
  trsvcid: number;
  hostnqn: string;
  hostid: Buffer | string;
  hdgst?: boolean;
  ddgst?: boolean;
  connectTimeoutMs?: number;
  /** Local address to connect from (nvme-cli `-w/--host-traddr`). */
  hostTraddr?: string;
  /** Discovery subsystem NQN (default the well-known one; unique discovery NQNs, TP 8013). */
  subnqn?: string;
  /** Per-command timeout (default 30 s). */
  ioTimeoutMs?: number;
  /**
   * Budget for the whole discovery (connect, every log page read, all generation retries),
   * default {@link DEFAULT_DISCOVERY_TIMEOUT_MS}. Each command is bounded by `ioTimeoutMs`; this
   * bounds the sequence, which a slow target with many records and a tiny MDTS could stretch to
   * hours (`NVMF_ERR_TIMEOUT`, issue 14 finding 15).
   */
  timeoutMs?: number;
  /** Replace every entry's advertised traddr (behind NAT / port forwarding). */
  overrideTraddr?: string;
  /** Replace every entry's advertised trsvcid. */
  overrideTrsvcid?: string;
  /** DH-HMAC-CHAP, when the discovery controller requires in-band authentication. */
  dhchap?: DhchapHostOptions;
  /** TLS PSK for the discovery controller (derived for the discovery NQN). */
  tls?: TlsPsk;
}

/** Result of a discovery. */
export interface DiscoveryLog {
  genctr: bigint;
  entries: DiscoveryEntry[];
  /** The log page as read: the 1024-byte header then the entries (for `-r/--raw FILE`). */
  raw?: Buffer;
}

/** Read the discovery log from a connected discovery controller. */
export async function readDiscoveryLog(ctrl: Controller): Promise<DiscoveryLog> {
  for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
    const head = await ctrl.adminCommand(sqeGetLogPage(DISCOVERY_LOG_ID, HEADER_LEN, 0), { dataInLength: HEADER_LEN });
    const h = parseDiscoveryLogHeader(head.data as Buffer);
    const numrec = h.numrec;
    if (!Number.isSafeInteger(numrec) || numrec < 0 || numrec > MAX_DISCOVERY_ENTRIES) {
      throw new NvmfNbdError(ErrorCode.INVALID_ARGUMENT, `discovery log has ${String(h.numrec)} entries (more than ${MAX_DISCOVERY_ENTRIES})`);
    }
    const entries: DiscoveryEntry[] = [];
    const pieces: Buffer[] = [head.data as Buffer];
    // Read the entries in pieces that fit one command's transfer.
    const perRead = Math.max(1, Math.floor(ctrl.maxTransfer / ENTRY_LEN));
    for (let i = 0; i < numrec; i += perRead) {
      const n = Math.min(perRead, numrec - i);
      const r = await ctrl.adminCommand(sqeGetLogPage(DISCOVERY_LOG_ID, n * ENTRY_LEN, 0, HEADER_LEN + i * ENTRY_LEN), { dataInLength: n * ENTRY_LEN });
      for (let k = 0; k < n; k++) entries.push(parseDiscoveryLogEntry(r.data as Buffer, k * ENTRY_LEN));
      pieces.push(r.data as Buffer);
    }
    const again = await ctrl.adminCommand(sqeGetLogPage(DISCOVERY_LOG_ID, HEADER_LEN, 0), { dataInLength: HEADER_LEN });
    const h2 = parseDiscoveryLogHeader(again.data as Buffer);
    if (h2.genctr === h.genctr) return { genctr: h.genctr, entries, raw: Buffer.concat(pieces) };
  }
  throw new NvmfNbdError(ErrorCode.DISCOVERY_LOG_CHANGED, `discovery log kept changing over ${MAX_ATTEMPTS} reads`);
}

/** Connect to the discovery controller at traddr:trsvcid, read the log, disconnect. */
export async function discover(o: DiscoverOptions): Promise<DiscoveryLog> {
  const budget = o.timeoutMs ?? DEFAULT_DISCOVERY_TIMEOUT_MS;
  const start = Date.now();
  const ctrl = await Controller.connect({
    traddr: o.traddr, trsvcid: o.trsvcid, subnqn: o.subnqn ?? DISCOVERY_NQN, hostnqn: o.hostnqn, hostid: o.hostid,
    ...(o.hostTraddr !== undefined ? { hostTraddr: o.hostTraddr } : {}),
    kato: 0, nrIoQueues: 0, discovery: true, hdgst: o.hdgst, ddgst: o.ddgst, connectTimeoutMs: o.connectTimeoutMs,
    ...(o.ioTimeoutMs !== undefined ? { ioTimeoutMs: o.ioTimeoutMs } : {}),
    bringUpTimeoutMs: budget,
    ...(o.dhchap !== undefined ? { dhchap: o.dhchap } : {}),
    ...(o.tls !== undefined ? { tls: o.tls } : {}),
  });
  let expired: NvmfNbdError | undefined;
  // What is left of the budget bounds the log reads: destroying the controller fails the
  // command in flight with this error.
  const timer = setTimeout(() => {
    expired = new NvmfNbdError(ErrorCode.TIMEOUT, `discovery at ${o.traddr}:${o.trsvcid} did not finish within ${budget} ms`);
    ctrl.destroy(expired);
  }, Math.max(0, Math.min(2 ** 31 - 1, budget - (Date.now() - start))));
  try {
    const log = await readDiscoveryLog(ctrl).catch((err: unknown) => { throw expired ?? err; });
    for (const e of log.entries) {
      if (o.overrideTraddr !== undefined) e.traddr = o.overrideTraddr;
      if (o.overrideTrsvcid !== undefined) e.trsvcid = o.overrideTrsvcid;
    }
    return log;
  } finally {
    clearTimeout(timer);
    await ctrl.close();
  }
}

/** Names for the numeric fields of an entry (for the human table). */
export const TRTYPE_NAMES: Readonly<Record<number, string>> = { 1: 'rdma', 2: 'fc', 3: 'tcp', 254: 'loop' };
export const ADRFAM_NAMES: Readonly<Record<number, string>> = { 1: 'ipv4', 2: 'ipv6', 3: 'ib', 4: 'fc', 254: 'loop' };
export const SUBTYPE_NAMES: Readonly<Record<number, string>> = { 1: 'discovery subsystem referral', 2: 'nvme subsystem', 3: 'current discovery subsystem' };
