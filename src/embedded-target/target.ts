/**
 * The embedded NVMe/TCP target: a TCP listener, the discovery subsystem and NVM subsystems
 * whose namespaces are backed by sparse memory or files, and a control API to add and remove
 * namespaces while hosts are connected (raising the namespace-attribute AEN).
 *
 * Several listeners (ports) may serve the same subsystems, each with its own ANA state per ANA
 * group (Asymmetric Namespace Access): a multipath host sees one namespace through several
 * controllers, and `setAnaState()` moves it between optimized / non-optimized / inaccessible /
 * persistent loss / change on one port (ANA change AEN to that port's controllers; I/O there is
 * answered with the matching path status).
 *
 * ```ts
 * const t = new NvmeTarget({ listen: { host: '127.0.0.1', port: 0 } });
 * const addr = await t.listen();            // one subsystem, one 1 GiB memory namespace
 * const nsid = await t.addNamespace(DEFAULT_TARGET_NQN, { sizeBytes: 64 << 20, backing: { memory: true } });
 * await t.close();
 * ```
 */
import * as net from 'node:net';
import * as tls from 'node:tls';
import { ErrorCode, NvmfNbdError } from '../errors';
import { tlsServerOptions } from '../tls/channel';
import type { StorageBackend } from './storage';
import { FileBackend } from './storage-file';
import { MemoryBackend } from './storage-memory';
import type { TargetConfig, TargetContext, TargetLogger, TargetLogLevel, TargetNamespace, TargetStats, TargetSubsystem } from './context';
import { C2hSuccessMode } from './context';
import type { TargetController } from './target-controller';
import { encodeDiscoveryLog, namespaceIds, type DiscoveryEntry } from './pages';
import { TargetQueue } from './queue';
import { DEFAULT_TARGET_AUTH_POLICY, type TargetAuthPolicy, type TargetHostKeys } from './target-auth';
import { parseDhchapKey, type DhchapKey } from '../wire/dhchap';
import { encodeAnaLog, type AnaGroupDescriptor, type AnaState } from '../wire/ana';
import {
  checkAnaGroup, DEFAULT_ANA_GROUP, TargetPort, toAnaState, type AnaStateInput, type TargetPortConfig, type TargetPortInfo,
} from './ports';
import { dhchapHashLength, type DhchapGroupId, type DhchapHashId } from '../wire/auth';

/** The well-known discovery subsystem NQN. */
export const DISCOVERY_NQN = 'nqn.2014-08.org.nvmexpress.discovery';
/** NQN of the subsystem served when none is configured. */
export const DEFAULT_TARGET_NQN = 'nqn.2014-08.org.nvmf-nbd:target';
/** Size of the namespace served when none is configured: 1 GiB. */
export const DEFAULT_NAMESPACE_SIZE = 1 << 30;
/** Default listening address. */
export const DEFAULT_LISTEN = { host: '127.0.0.1', port: 4420 } as const;

/** How a namespace stores its data. */
export type NamespaceBacking = { memory: true } | { file: string };

/** A namespace to serve. */
export interface NamespaceConfig {
  /** NSID; default: the lowest free one. */
  nsid?: number;
  /** Size in bytes (a multiple of lbaSize). Required for memory; for files default = file size. */
  sizeBytes?: number;
  /** Logical block size, default 512. */
  lbaSize?: 512 | 4096;
  backing: NamespaceBacking;
  /** ANA group (ANAGRPID, 1..128), default 1. Its state is set per port. */
  anaGroup?: number;
}

/** An NVM subsystem to serve. */
export interface SubsystemConfig {
  nqn: string;
  /** Serial number (20 ASCII chars max), default derived from the NQN. */
  serial?: string;
  /** Model number (40 chars max), default "nvmf-nbd target". */
  model?: string;
  namespaces?: NamespaceConfig[];
}

/** Options of {@link NvmeTarget}. */
export interface NvmeTargetOptions {
  /** Address to listen on; default 127.0.0.1:4420. Port 0 picks a free port. Port id 1. */
  listen?: { host: string; port: number };
  /**
   * Several listeners (NVMe ports) for the same subsystems, instead of `listen`/`advertise`:
   * each with a port id (default 1, 2, …), its own advertised address and ANA states.
   */
  ports?: TargetPortConfig[];
  /** ANATT advertised: seconds a group may stay in the ANA change state (1..255), default 10. */
  anatt?: number;
  /**
   * CQT advertised (ms, 0..65535): how long after the association is lost commands may still
   * execute. Default keepAliveGraceMs + 1000 (the target notices the loss KATO + grace after the
   * last command, then backend I/O already started finishes).
   */
  cqtMs?: number;
  /**
   * NVMe/TCP secure channel (TLS 1.3, PSK): `required` refuses plain connections, `optional`
   * accepts both (a connection starting with a TLS record is TLS). `lookup` gives the TLS PSK for
   * a client's PSK identity (see src/tls/target-keys.ts), or undefined to fail its handshake.
   */
  tls?: { mode: 'required' | 'optional'; lookup: (identity: string) => Buffer | undefined };
  /** traddr/trsvcid put in the discovery log instead of the listening address (NAT, forwards). */
  advertise?: { host: string; port: number };
  /**
   * Rewrite the ANA log page a controller on port `portId` is sent, as a misbehaving target
   * would (tests and interop work: a truncated or inconsistent page). Default: sent as built.
   */
  anaLogFilter?: (page: Buffer, portId: number) => Buffer;
  /** Subsystems; default one subsystem {@link DEFAULT_TARGET_NQN} with a 1 GiB memory namespace. */
  subsystems?: SubsystemConfig[];
  /** Host NQNs allowed to connect; default any host. */
  allowHosts?: string[];
  /**
   * DH-HMAC-CHAP secrets per host (`DHHC-1:…` strings or parsed keys). Such a host must
   * authenticate on every queue before any other command is accepted; when `allowHosts` is
   * given, these hosts are added to it.
   */
  hostKeys?: Array<{ hostnqn: string; key: string | DhchapKey; ctrlKey?: string | DhchapKey }>;
  /** Hash functions offered to authenticating hosts, in order of preference (default SHA-256, SHA-384, SHA-512). */
  dhchapHashes?: DhchapHashId[];
  /** DH groups offered, in order of preference (default ffdhe2048…ffdhe8192, then null). */
  dhchapGroups?: DhchapGroupId[];
  /** An authentication transaction must finish within this time, default 10000 ms. */
  authTimeoutMs?: number;
  /** I/O queues per controller, default 8. */
  maxIoQueues?: number;
  /** Largest queue (CAP.MQES + 1), default 128. */
  queueSize?: number;
  /** Max data transfer in 4 KiB pages (a power of two), default 32 (128 KiB). */
  mdtsPages?: number;
  /** In-capsule data size on I/O queues in bytes (multiple of 16), default 8192. */
  inCapsuleDataSize?: number;
  /** Alternative to inCapsuleDataSize: IOCCSZ in 16-byte units (≥ 4); in-capsule = ioccsz × 16 − 64. */
  ioccsz?: number;
  /** MAXH2CDATA announced in ICResp (≥ 4096, multiple of 4), default 128 KiB. */
  maxH2CData?: number;
  /**
   * When a successful read ends with C2HData SUCCESS instead of a CapsuleResp (see
   * {@link C2hSuccessMode}): default `spec` (only when the host disabled SQ flow control).
   */
  c2hSuccess?: C2hSuccessMode;
  /**
   * Hand queued answers (PDUs) to the socket after every this many within one event-loop
   * iteration, so the host can start on the first while the rest are produced; 0 = only once per
   * iteration. Default 8 (see `src/net/write-batcher.ts` for the measurement).
   */
  flushEvery?: number;
  /** Grace past KATO before an association is dropped, default 5000 ms. */
  keepAliveGraceMs?: number;
  /** Close connections that do not complete Connect within this time, default 30000 ms. */
  connectTimeoutMs?: number;
  /** Open connections at most (more are closed at accept), default 1024. */
  maxConnections?: number;
  /** Live controllers (associations) at most, default 256; more Connects get Controller Busy. */
  maxControllers?: number;
  /** Live controllers per host NQN at most, default 32 (the NQN is client-chosen: a bound, not an identity). */
  maxControllersPerHost?: number;
  /** Drop a controller with KATO 0 (keep-alive off) after this long without a command, default 300000 ms. */
  idleTimeoutMs?: number;
  /** Log sink; default: nothing. */
  log?: TargetLogger;
}

/** A namespace as reported by {@link NvmeTarget.subsystems}. */
export interface TargetNamespaceInfo {
  nsid: number;
  sizeBytes: number;
  lbaSize: number;
  backing: string;
}

/** A subsystem as reported by {@link NvmeTarget.subsystems}. */
export interface SubsystemInfo {
  nqn: string;
  serial: string;
  namespaces: TargetNamespaceInfo[];
}

/** Largest NSID served (Identify Controller NN). */
const MAX_NSID = 1024;

function configError(msg: string): NvmfNbdError {
  return new NvmfNbdError(ErrorCode.CFG_INVALID, msg);
}

function checkC2hSuccess(m: string): C2hSuccessMode {
  if (!(Object.values(C2hSuccessMode) as string[]).includes(m)) throw configError(`c2hSuccess '${m}' must be one of ${Object.values(C2hSuccessMode).join(', ')}`);
  return m as C2hSuccessMode;
}

function resolveConfig(o: NvmeTargetOptions): TargetConfig {
  const queueSize = o.queueSize ?? 128;
  if (!Number.isInteger(queueSize) || queueSize < 2 || queueSize > 65536) throw configError(`queueSize ${queueSize} out of range 2..65536`);
  const maxIoQueues = o.maxIoQueues ?? 8;
  if (!Number.isInteger(maxIoQueues) || maxIoQueues < 1 || maxIoQueues > 65534) throw configError(`maxIoQueues ${maxIoQueues} out of range`);
  const pages = o.mdtsPages ?? 32;
  const mdts = Math.log2(pages);
  if (!Number.isInteger(mdts) || mdts < 0 || mdts > 12) throw configError(`mdtsPages ${pages} must be a power of two up to 4096`);
  if (o.ioccsz !== undefined && (!Number.isInteger(o.ioccsz) || o.ioccsz < 4)) throw configError(`ioccsz ${o.ioccsz} must be an integer ≥ 4`);
  const icd = o.ioccsz !== undefined ? o.ioccsz * 16 - 64 : o.inCapsuleDataSize ?? 8192;
  if (!Number.isInteger(icd) || icd < 0 || icd % 16 !== 0 || icd > 1 << 20) throw configError(`inCapsuleDataSize ${icd} must be a multiple of 16 up to 1 MiB`);
  const maxH2CData = o.maxH2CData ?? 128 << 10;
  if (!Number.isInteger(maxH2CData) || maxH2CData < 4096 || maxH2CData % 4 !== 0 || maxH2CData > 16 << 20) {
    throw configError(`maxH2CData ${maxH2CData} must be ≥ 4096 and a multiple of 4`);
  }
  const flushEvery = o.flushEvery ?? 8;
  if (!Number.isInteger(flushEvery) || flushEvery < 0 || flushEvery > 65536) throw configError(`flushEvery ${flushEvery} out of range 0..65536`);
  const anatt = o.anatt ?? 10;
  if (!Number.isInteger(anatt) || anatt < 1 || anatt > 255) throw configError(`anatt ${anatt} out of range 1..255 s`);
  const keepAliveGraceMs = o.keepAliveGraceMs ?? 5000;
  const cqtMs = o.cqtMs ?? Math.min(0xffff, keepAliveGraceMs + 1000);
  if (!Number.isInteger(cqtMs) || cqtMs < 0 || cqtMs > 0xffff) throw configError(`cqtMs ${cqtMs} out of range 0..65535`);
  const limit = (name: string, v: number | undefined, def: number, max: number): number => {
    const n = v ?? def;
    if (!Number.isInteger(n) || n < 1 || n > max) throw configError(`${name} ${n} out of range 1..${max}`);
    return n;
  };
  return {
    maxConnections: limit('maxConnections', o.maxConnections, 1024, 1 << 20),
    maxControllers: limit('maxControllers', o.maxControllers, 256, 0xffef),
    maxControllersPerHost: limit('maxControllersPerHost', o.maxControllersPerHost, 32, 0xffef),
    idleTimeoutMs: limit('idleTimeoutMs', o.idleTimeoutMs, 300_000, 2 ** 31 - 1),
    queueSize,
    maxIoQueues,
    mdts,
    maxTransfer: pages * 4096,
    inCapsuleDataSize: icd,
    adminInCapsuleDataSize: 8192,
    maxH2CData,
    maxC2HData: 128 << 10,
    kas: 10,
    aerl: 3,
    nn: MAX_NSID,
    c2hSuccess: checkC2hSuccess(o.c2hSuccess ?? C2hSuccessMode.SPEC),
    flushEvery: flushEvery === 0 ? Infinity : flushEvery,
    keepAliveGraceMs,
    connectTimeoutMs: o.connectTimeoutMs ?? 30000,
    firmware: '1.0',
    anatt,
    cqtMs,
  };
}

function resolveHostKeys(o: NvmeTargetOptions): Map<string, TargetHostKeys> {
  const out = new Map<string, TargetHostKeys>();
  for (const h of o.hostKeys ?? []) {
    if (!h.hostnqn.startsWith('nqn.') || Buffer.byteLength(h.hostnqn) > 223) throw configError(`host NQN '${h.hostnqn}' with a DH-HMAC-CHAP key is not an NQN`);
    if (out.has(h.hostnqn)) throw configError(`two DH-HMAC-CHAP keys for host ${h.hostnqn}`);
    const key = typeof h.key === 'string' ? parseDhchapKey(h.key) : h.key;
    const ctrlKey = h.ctrlKey === undefined ? undefined : typeof h.ctrlKey === 'string' ? parseDhchapKey(h.ctrlKey) : h.ctrlKey;
    out.set(h.hostnqn, ctrlKey === undefined ? { hostnqn: h.hostnqn, key } : { hostnqn: h.hostnqn, key, ctrlKey });
  }
  return out;
}

function resolveAuthPolicy(o: NvmeTargetOptions): TargetAuthPolicy {
  const d = DEFAULT_TARGET_AUTH_POLICY;
  const hashes = o.dhchapHashes ?? d.hashes;
  const dhgroups = o.dhchapGroups ?? d.dhgroups;
  if (hashes.length === 0 || hashes.some((h) => dhchapHashLength(h) === 0)) throw configError(`DH-HMAC-CHAP hashes ${hashes.join(',')}: each must be 1..3`);
  if (dhgroups.length === 0 || dhgroups.some((g) => !Number.isInteger(g) || g < 0 || g > 5)) throw configError(`DH-HMAC-CHAP groups ${dhgroups.join(',')}: each must be 0..5`);
  const stepTimeoutMs = o.authTimeoutMs ?? d.stepTimeoutMs;
  if (!Number.isInteger(stepTimeoutMs) || stepTimeoutMs < 1) throw configError(`authTimeoutMs ${stepTimeoutMs}`);
  return { hashes, dhgroups, stepTimeoutMs };
}

/** Serial number derived from the NQN: stable, 20 characters max. */
function defaultSerial(nqn: string): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < nqn.length; i++) h = Math.imul(h ^ nqn.charCodeAt(i), 0x01000193) >>> 0;
  return `NVMFNBD${h.toString(16).padStart(8, '0')}`;
}

/** The embedded NVMe/TCP target. */
export class NvmeTarget {
  private readonly cfg: TargetConfig;
  private readonly opts: NvmeTargetOptions;
  private readonly subsys = new Map<string, TargetSubsystem>();
  private readonly pending: Array<{ nqn: string; ns: NamespaceConfig }> = [];
  private readonly controllers = new Map<number, TargetController>();
  private readonly queues = new Set<TargetQueue>();
  private readonly counters: TargetStats = {
    connections: 0, connectionsTotal: 0, controllers: 0, commands: 0, readCommands: 0, writeCommands: 0,
    bytesRead: 0, bytesWritten: 0, protocolErrors: 0, dataDigestErrors: 0, keepAliveTimeouts: 0, termReqsReceived: 0,
    authentications: 0, authFailures: 0,
    connectionsRefused: 0, controllersRefused: 0,
  };
  private readonly ctx: TargetContext;
  /** Listeners by port id, in the order they were configured. */
  private readonly portMap = new Map<number, TargetPort>();
  private listening = false;
  private lastCntlid = 0;
  /** ANA log change count (target-wide): bumped on every change of any ANA log. */
  private anaChgcnt = 1n;
  /** Change count when a group's membership (which namespaces it holds) last changed. */
  private readonly groupChangedAt = new Map<number, bigint>();
  private closed = false;
  private authPolicy: TargetAuthPolicy;
  /** Discovery log generation counter: bumped on every change of the log. */
  private genctr = 1n;
  private readonly referrals: Array<{ host: string; port: number }> = [];

  /** Validates the configuration (throws CFG_ERR_INVALID); namespaces are opened by {@link listen}. */
  constructor(opts: NvmeTargetOptions = {}) {
    this.opts = opts;
    this.cfg = resolveConfig(opts);
    if (opts.ports !== undefined && (opts.listen !== undefined || opts.advertise !== undefined)) {
      throw configError('give either ports or listen/advertise, not both');
    }
    const portCfgs = opts.ports ?? [{ ...(opts.listen ?? DEFAULT_LISTEN), ...(opts.advertise !== undefined ? { advertise: opts.advertise } : {}) }];
    if (portCfgs.length === 0) throw configError('at least one port');
    for (const p of portCfgs) this.newPort(p);
    this.addSubsystem({ nqn: DISCOVERY_NQN }, true);
    const subs = opts.subsystems ?? [{ nqn: DEFAULT_TARGET_NQN, namespaces: [{ sizeBytes: DEFAULT_NAMESPACE_SIZE, backing: { memory: true } }] }];
    for (const s of subs) {
      this.addSubsystem(s, false);
      for (const ns of s.namespaces ?? []) this.pending.push({ nqn: s.nqn, ns });
    }
    const keys = resolveHostKeys(opts);
    const allow = opts.allowHosts === undefined || opts.allowHosts.length === 0 ? undefined : new Set([...opts.allowHosts, ...keys.keys()]);
    this.authPolicy = resolveAuthPolicy(opts);
    const self = this;
    this.ctx = {
      hostKeys: (hostnqn) => keys.get(hostnqn),
      // Read at each queue's Connect, so setDhchapPolicy() applies to the next connections.
      get authPolicy(): TargetAuthPolicy { return self.authPolicy; },
      cfg: this.cfg,
      stats: this.counters,
      controllers: this.controllers,
      subsystem: (nqn) => this.subsys.get(nqn),
      hostAllowed: (hostnqn) => allow === undefined || allow.has(hostnqn),
      newCntlid: () => this.newCntlid(),
      discoveryLog: () => this.discoveryLog(),
      anaLog: (ctrl, groupsOnly) => this.anaLog(ctrl, groupsOnly),
      log: (level: TargetLogLevel, message: string) => opts.log?.(level, message),
    };
  }

  private addSubsystem(s: SubsystemConfig, discovery: boolean): void {
    if (s.nqn.length === 0 || Buffer.byteLength(s.nqn) > 223) throw configError(`subsystem NQN '${s.nqn}' must be 1..223 bytes`);
    if (this.subsys.has(s.nqn)) throw configError(`duplicate subsystem NQN ${s.nqn}`);
    const serial = s.serial ?? defaultSerial(s.nqn);
    if (serial.length > 20 || !/^[\x20-\x7e]*$/.test(serial)) throw configError(`serial '${serial}' must be at most 20 printable ASCII characters`);
    this.subsys.set(s.nqn, {
      nqn: s.nqn,
      serial,
      model: (s.model ?? (discovery ? 'nvmf-nbd discovery' : 'nvmf-nbd target')).slice(0, 40),
      discovery,
      namespaces: new Map(),
      controllers: new Set(),
    });
  }

  /** Create a port object (not bound yet); CFG_ERR_INVALID for a bad or duplicate id. */
  private newPort(cfg: TargetPortConfig): TargetPort {
    let id = cfg.id;
    if (id === undefined) {
      id = 1;
      while (this.portMap.has(id)) id++;
    }
    if (!Number.isInteger(id) || id < 1 || id > 0xffef) throw configError(`port id ${id} out of range 1..65519`);
    if (this.portMap.has(id)) throw configError(`duplicate port id ${id}`);
    if (!Number.isInteger(cfg.port) || cfg.port < 0 || cfg.port > 65535) throw configError(`port ${cfg.port} of port id ${id} out of range`);
    const p = new TargetPort(id, cfg);
    this.portMap.set(id, p);
    return p;
  }

  /** Bind one port's listener. */
  private async bindPort(p: TargetPort): Promise<void> {
    const want = p.want;
    const server = net.createServer((sock) => (this.opts.tls === undefined ? this.accept(sock, p) : this.acceptMaybeTls(sock, p)));
    // Set before listening: accept() refuses connections of a port without a server.
    p.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(want.port, want.host, () => {
        server.off('error', reject);
        resolve();
      });
    }).catch((err: unknown) => {
      p.server = undefined;
      throw new NvmfNbdError(ErrorCode.CFG_INVALID, `cannot listen on ${want.host}:${want.port}: ${(err as Error).message}`, { cause: err });
    });
    server.on('error', (err) => this.ctx.log('error', `port ${p.id}: listener error: ${err.message}`));
    const a = server.address() as net.AddressInfo;
    p.bound = { host: a.address, port: a.port };
    this.ctx.log('info', `port ${p.id}: listening on ${a.address}:${a.port}`);
  }

  /** Close one port's listener and drop its connections and controllers. */
  private async unbindPort(p: TargetPort, reason: string): Promise<void> {
    const server = p.server;
    p.server = undefined;
    const closing = server === undefined ? Promise.resolve() : new Promise<void>((resolve) => server.close(() => resolve()));
    for (const c of [...p.controllers]) c.destroy(reason);
    for (const q of [...p.connections]) q.destroy(reason);
    await closing;
  }

  /**
   * Open the configured namespaces and start listening on every port. Resolves with the first
   * port's bound address (the real port when 0 was asked); see {@link ports} for all of them.
   */
  async listen(): Promise<{ host: string; port: number }> {
    if (this.listening || this.closed) throw new NvmfNbdError(ErrorCode.INVALID_ARGUMENT, 'target already listening or closed');
    this.listening = true;
    try {
      for (const p of this.pending.splice(0)) await this.addNamespace(p.nqn, p.ns);
      for (const p of this.portMap.values()) await this.bindPort(p);
    } catch (err) {
      this.listening = false;
      for (const p of this.portMap.values()) await this.unbindPort(p, 'listen failed');
      await this.closeNamespaces();
      throw err;
    }
    return this.address() as { host: string; port: number };
  }

  /** The first port's bound address, once listening. */
  address(): { host: string; port: number } | undefined {
    const first = this.portMap.values().next().value as TargetPort | undefined;
    return first?.bound === undefined ? undefined : { ...first.bound };
  }

  /** Every port: id, bound (or configured) address, advertised address, ANA states set, live controllers. */
  ports(): TargetPortInfo[] {
    return [...this.portMap.values()].map((p) => p.info());
  }

  /**
   * Add a listener while running (or before {@link listen}); resolves with its info once bound.
   * The discovery log gains its entries. @throws CFG_ERR_INVALID (bad or duplicate id, bind failure)
   */
  async addPort(cfg: TargetPortConfig): Promise<TargetPortInfo> {
    if (this.closed) throw new NvmfNbdError(ErrorCode.INVALID_ARGUMENT, 'target closed');
    const p = this.newPort(cfg);
    if (this.listening) {
      try {
        await this.bindPort(p);
      } catch (err) {
        this.portMap.delete(p.id);
        throw err;
      }
      this.discoveryChanged();
    }
    return p.info();
  }

  /**
   * Remove a listener: it stops accepting, and its connections and controllers are dropped (as
   * unlinking an nvmet port). The discovery log loses its entries. @throws INVALID_ARGUMENT
   */
  async removePort(id: number): Promise<void> {
    const p = this.portMap.get(id);
    if (p === undefined) throw new NvmfNbdError(ErrorCode.INVALID_ARGUMENT, `no port ${id}`);
    this.portMap.delete(id);
    await this.unbindPort(p, `port ${id} removed`);
    this.ctx.log('info', `port ${id} removed`);
    this.discoveryChanged();
  }

  /**
   * Set the ANA state of `group` on port `portId` (1..128; names as Linux: optimized,
   * non-optimized, inaccessible, persistent-loss, change). When it changes, the ANA log of that
   * port's controllers changes and each that enabled it gets the ANA change notice; I/O to the
   * group's namespaces on that port is then answered per state (§8.1.3). Other ports are not
   * affected. Returns whether anything changed. @throws INVALID_ARGUMENT (no such port),
   * CFG_ERR_INVALID (bad group or state)
   */
  setAnaState(portId: number, group: number, state: AnaStateInput): boolean {
    const p = this.portMap.get(portId);
    if (p === undefined) throw new NvmfNbdError(ErrorCode.INVALID_ARGUMENT, `no port ${portId}`);
    const v = toAnaState(state);
    checkAnaGroup(group);
    if (!p.setAnaState(group, v, this.anaChgcnt + 1n)) return false;
    this.anaChgcnt++;
    this.ctx.log('info', `port ${portId}: ANA group ${group} is now ${String(state)}`);
    for (const c of p.controllers) c.anaChanged();
    return true;
  }

  /** The ANA state of `group` on port `portId`. @throws INVALID_ARGUMENT (no such port) */
  anaState(portId: number, group: number): AnaState {
    const p = this.portMap.get(portId);
    if (p === undefined) throw new NvmfNbdError(ErrorCode.INVALID_ARGUMENT, `no port ${portId}`);
    return p.anaState(checkAnaGroup(group));
  }

  /**
   * Move a namespace to another ANA group (nvmet's `namespaces/N/ana_grpid`): every controller of
   * the subsystem gets the ANA change notice. @throws NVMF_ERR_NAMESPACE_NOT_FOUND, CFG_ERR_INVALID
   */
  setNamespaceAnaGroup(subnqn: string, nsid: number, group: number): void {
    const ns = this.subsys.get(subnqn)?.namespaces.get(nsid);
    if (ns === undefined) throw new NvmfNbdError(ErrorCode.NAMESPACE_NOT_FOUND, `no namespace ${nsid} in ${subnqn}`);
    checkAnaGroup(group);
    if (ns.anaGroup === group) return;
    const old = ns.anaGroup;
    ns.anaGroup = group;
    this.groupsChanged(old, group);
    for (const c of this.subsys.get(subnqn)?.controllers ?? []) c.anaChanged();
  }

  /** Which namespaces groups hold changed. */
  private groupsChanged(...groups: number[]): void {
    this.anaChgcnt++;
    for (const g of groups) this.groupChangedAt.set(g, this.anaChgcnt);
  }

  /**
   * The ANA log of `ctrl`: one descriptor per ANA group holding namespaces of its subsystem
   * (ascending group id, NSIDs ascending), each with the group's state on the controller's port.
   */
  private anaLog(ctrl: TargetController, groupsOnly: boolean): Buffer {
    const byGroup = new Map<number, number[]>();
    for (const ns of ctrl.subsys.namespaces.values()) {
      const l = byGroup.get(ns.anaGroup);
      if (l === undefined) byGroup.set(ns.anaGroup, [ns.nsid]);
      else l.push(ns.nsid);
    }
    const groups: AnaGroupDescriptor[] = [...byGroup.entries()].sort((a, b) => a[0] - b[0]).map(([grpid, nsids]) => {
      const a = ctrl.port.anaChangedAt(grpid);
      const b = this.groupChangedAt.get(grpid) ?? 0n;
      return { grpid, chgcnt: a > b ? a : b, state: ctrl.port.anaState(grpid), nsids: nsids.sort((x, y) => x - y) };
    });
    const page = encodeAnaLog({ chgcnt: this.anaChgcnt, groups }, { groupsOnly });
    return this.opts.anaLogFilter === undefined ? page : this.opts.anaLogFilter(page, ctrl.port.id);
  }

  private accept(sock: net.Socket, port: TargetPort): void {
    if (this.closed || port.server === undefined) {
      sock.destroy();
      return;
    }
    this.counters.connectionsTotal++;
    if (this.queues.size >= this.cfg.maxConnections) {
      // Before any byte is read: a host opening connections without end costs one fd each, briefly.
      this.counters.connectionsRefused++;
      this.ctx.log('warn', `connection from ${sock.remoteAddress ?? '?'}:${sock.remotePort ?? '?'} refused: ${this.queues.size} open (maximum ${this.cfg.maxConnections})`);
      sock.destroy();
      return;
    }
    const q = new TargetQueue(this.ctx, sock, (done) => {
      this.queues.delete(done);
      port.connections.delete(done);
      this.counters.connections = this.queues.size;
    }, port);
    this.queues.add(q);
    port.connections.add(q);
    this.counters.connections = this.queues.size;
  }

  /**
   * A TLS port: the first byte tells a TLS record (0x16, handshake) from a plain ICReq (PDU type
   * 0). TLS connections are accepted once their handshake is done; plain ones only when TLS is
   * optional. Until then the socket is bounded by the Connect timeout.
   */
  private acceptMaybeTls(sock: net.Socket, port: TargetPort): void {
    const t = this.opts.tls as NonNullable<NvmeTargetOptions['tls']>;
    const timer = setTimeout(() => sock.destroy(), this.cfg.connectTimeoutMs);
    sock.once('error', () => undefined);
    sock.once('close', () => clearTimeout(timer));
    sock.once('readable', () => {
      const first = sock.read(1) as Buffer | null;
      if (first === null) return;
      sock.unshift(first);
      if (first[0] !== 0x16) {
        clearTimeout(timer);
        if (t.mode === 'required') {
          this.counters.connectionsRefused++;
          this.ctx.log('warn', `plain connection from ${sock.remoteAddress ?? '?'} refused: TLS is required on this port`);
          sock.destroy();
          return;
        }
        this.accept(sock, port);
        return;
      }
      const ts = new tls.TLSSocket(sock, { isServer: true, ...tlsServerOptions(t.lookup) } as tls.TLSSocketOptions);
      let secured = false;
      ts.once('error', (err) => {
        if (secured) return; // the queue's own handler reports errors after the handshake
        this.counters.connectionsRefused++;
        this.ctx.log('warn', `TLS handshake with ${sock.remoteAddress ?? '?'} failed: ${err.message}`);
        sock.destroy();
      });
      ts.once('secure', () => {
        secured = true;
        clearTimeout(timer);
        this.accept(ts, port);
      });
    });
  }

  private newCntlid(): number | undefined {
    // Dynamic controller model: 1..FFEFh, cycling so a recently freed id is not reused at once.
    for (let i = 0; i < 0xffef; i++) {
      this.lastCntlid = (this.lastCntlid % 0xffef) + 1;
      if (!this.controllers.has(this.lastCntlid)) return this.lastCntlid;
    }
    return undefined;
  }

  private discoveryLog(): Buffer {
    const entries: DiscoveryEntry[] = [];
    // Every subsystem through every port: a multipath host finds all paths in one log.
    for (const s of this.subsys.values()) {
      if (s.discovery) continue;
      for (const p of this.portMap.values()) {
        const where = p.advertised();
        entries.push({
          subnqn: s.nqn,
          traddr: where.host,
          trsvcid: String(where.port),
          adrfam: net.isIPv6(where.host) ? 2 : 1,
          portid: p.id,
          asqsz: 32,
          ...(this.opts.tls !== undefined ? { tls: this.opts.tls.mode } : {}),
        });
      }
    }
    for (const r of this.referrals) {
      entries.push({ subnqn: DISCOVERY_NQN, traddr: r.host, trsvcid: String(r.port), adrfam: net.isIPv6(r.host) ? 2 : 1, portid: 1, asqsz: 32, subtype: 1 });
    }
    return encodeDiscoveryLog(this.genctr, entries);
  }

  /**
   * The discovery log changed: bump the generation counter and send the Discovery Log Page
   * Change AEN to every discovery controller that enabled it (Async Event Config bit 31).
   */
  private discoveryChanged(): void {
    this.genctr++;
    const d = this.subsys.get(DISCOVERY_NQN);
    for (const c of d?.controllers ?? []) c.discoveryLogChanged();
  }

  /**
   * Add an NVM subsystem while running (its namespaces opened first); the discovery log gains
   * it and discovery controllers get the log-change AEN.
   */
  async addSubsystemAtRuntime(s: SubsystemConfig): Promise<void> {
    this.addSubsystem(s, false);
    try {
      for (const ns of s.namespaces ?? []) await this.addNamespace(s.nqn, ns);
    } catch (err) {
      await this.removeSubsystem(s.nqn).catch(() => undefined);
      throw err;
    }
    this.discoveryChanged();
  }

  /** Remove an NVM subsystem: its controllers are dropped, its namespaces closed, the log changes. */
  async removeSubsystem(nqn: string): Promise<void> {
    const sub = this.subsys.get(nqn);
    if (sub === undefined || sub.discovery) throw new NvmfNbdError(ErrorCode.INVALID_ARGUMENT, `no NVM subsystem ${nqn}`);
    this.subsys.delete(nqn);
    for (const c of [...sub.controllers]) c.destroy('subsystem removed');
    for (const ns of sub.namespaces.values()) {
      await ns.backend.flush().catch(() => undefined);
      await ns.backend.close().catch(() => undefined);
    }
    sub.namespaces.clear();
    this.discoveryChanged();
  }

  /** Add a referral to another discovery service (nvmet `ports/N/referrals/`). */
  addReferral(host: string, port: number): void {
    this.referrals.push({ host, port });
    this.discoveryChanged();
  }

  /** Remove a referral. */
  removeReferral(host: string, port: number): void {
    const i = this.referrals.findIndex((r) => r.host === host && r.port === port);
    if (i >= 0) this.referrals.splice(i, 1);
    this.discoveryChanged();
  }

  /**
   * Add a namespace to subsystem `subnqn` (before or while listening). Connected controllers of
   * the subsystem get a namespace-attribute-changed AEN. Resolves with the NSID.
   */
  async addNamespace(subnqn: string, ns: NamespaceConfig): Promise<number> {
    const sub = this.subsys.get(subnqn);
    if (sub === undefined || sub.discovery) throw new NvmfNbdError(ErrorCode.INVALID_ARGUMENT, `no NVM subsystem ${subnqn}`);
    const lbaSize = ns.lbaSize ?? 512;
    const anaGroup = checkAnaGroup(ns.anaGroup ?? DEFAULT_ANA_GROUP);
    if (lbaSize !== 512 && lbaSize !== 4096) throw configError(`LBA size ${String(lbaSize)} must be 512 or 4096`);
    let nsid = ns.nsid;
    if (nsid === undefined) {
      nsid = 1;
      while (sub.namespaces.has(nsid)) nsid++;
    }
    if (!Number.isInteger(nsid) || nsid < 1 || nsid > MAX_NSID) throw configError(`NSID ${nsid} out of range 1..${MAX_NSID}`);
    if (sub.namespaces.has(nsid)) throw new NvmfNbdError(ErrorCode.INVALID_ARGUMENT, `NSID ${nsid} already exists in ${subnqn}`);
    if (ns.sizeBytes !== undefined && (!Number.isSafeInteger(ns.sizeBytes) || ns.sizeBytes < lbaSize || ns.sizeBytes % lbaSize !== 0)) {
      throw configError(`namespace size ${ns.sizeBytes} must be a positive multiple of ${lbaSize}`);
    }
    let backend: StorageBackend;
    if ('memory' in ns.backing) {
      if (ns.sizeBytes === undefined) throw configError('a memory namespace needs a size');
      backend = new MemoryBackend(ns.sizeBytes);
    } else {
      backend = await FileBackend.open(ns.backing.file, ns.sizeBytes);
    }
    const blocks = Math.floor(backend.size / lbaSize);
    if (blocks < 1) {
      await backend.close();
      throw configError(`namespace smaller than one ${lbaSize}-byte block`);
    }
    if (sub.namespaces.has(nsid)) {
      // Raced with another add of the same NSID while the file was opening.
      await backend.close();
      throw new NvmfNbdError(ErrorCode.INVALID_ARGUMENT, `NSID ${nsid} already exists in ${subnqn}`);
    }
    const entry: TargetNamespace = { nsid, lbaSize, lbads: lbaSize === 512 ? 9 : 12, blocks, backend, ids: namespaceIds(subnqn, nsid), anaGroup };
    sub.namespaces.set(nsid, entry);
    this.groupsChanged(anaGroup);
    this.ctx.log('info', `${subnqn}: namespace ${nsid} added (${blocks * lbaSize} bytes, ${lbaSize}-byte blocks, ${backend.description})`);
    for (const c of sub.controllers) c.namespaceChanged(nsid);
    return nsid;
  }

  /** Remove a namespace; connected controllers get the namespace-attribute-changed AEN. */
  async removeNamespace(subnqn: string, nsid: number): Promise<void> {
    const sub = this.subsys.get(subnqn);
    const ns = sub?.namespaces.get(nsid);
    if (sub === undefined || ns === undefined) throw new NvmfNbdError(ErrorCode.NAMESPACE_NOT_FOUND, `no namespace ${nsid} in ${subnqn}`);
    sub.namespaces.delete(nsid);
    this.groupsChanged(ns.anaGroup);
    this.ctx.log('info', `${subnqn}: namespace ${nsid} removed`);
    for (const c of sub.controllers) c.namespaceChanged(nsid);
    await ns.backend.flush().catch(() => undefined);
    await ns.backend.close();
  }

  /** The NVM subsystems and their namespaces. */
  subsystems(): SubsystemInfo[] {
    const out: SubsystemInfo[] = [];
    for (const s of this.subsys.values()) {
      if (s.discovery) continue;
      const nss = [...s.namespaces.values()].sort((a, b) => a.nsid - b.nsid).map((n) => ({
        nsid: n.nsid, sizeBytes: n.blocks * n.lbaSize, lbaSize: n.lbaSize, backing: n.backend.description,
      }));
      const pend = this.pending.filter((p) => p.nqn === s.nqn).map((p) => ({
        nsid: p.ns.nsid ?? 0, sizeBytes: p.ns.sizeBytes ?? 0, lbaSize: p.ns.lbaSize ?? 512,
        backing: 'memory' in p.ns.backing ? 'memory' : `file:${p.ns.backing.file}`,
      }));
      out.push({ nqn: s.nqn, serial: s.serial, namespaces: [...nss, ...pend] });
    }
    return out;
  }

  /**
   * Change the DH-HMAC-CHAP hashes / groups offered (in order of preference) for connections
   * made from now on. @throws CFG_ERR_INVALID
   */
  setDhchapPolicy(o: { hashes?: DhchapHashId[]; dhgroups?: DhchapGroupId[] }): void {
    this.authPolicy = resolveAuthPolicy({
      dhchapHashes: o.hashes ?? [...this.authPolicy.hashes],
      dhchapGroups: o.dhgroups ?? [...this.authPolicy.dhgroups],
      authTimeoutMs: this.authPolicy.stepTimeoutMs,
    });
  }

  /**
   * Ask every authenticated queue to authenticate again (the controller side of
   * re-authentication): until a queue has, its commands complete with Authentication Required.
   * Returns how many queues were asked.
   */
  requireReauthentication(): number {
    let n = 0;
    for (const q of this.queues) if (q.requireReauthentication()) n++;
    return n;
  }

  /** A snapshot of the counters. */
  stats(): TargetStats {
    return { ...this.counters };
  }

  /** Stop listening, drop every connection and controller, flush and close the namespaces. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const closing = [...this.portMap.values()].map((p) => this.unbindPort(p, 'target closing'));
    for (const c of [...this.controllers.values()]) c.destroy('target closing');
    for (const q of [...this.queues]) q.destroy('target closing');
    await Promise.all(closing);
    await this.closeNamespaces();
  }

  private async closeNamespaces(): Promise<void> {
    for (const s of this.subsys.values()) {
      for (const ns of s.namespaces.values()) {
        await ns.backend.flush().catch(() => undefined);
        await ns.backend.close().catch(() => undefined);
      }
      s.namespaces.clear();
    }
  }
}
