/**
 * A Fabrics controller over NVMe/TCP: admin queue bring-up (Connect, CAP/CC/CSTS), Identify,
 * namespace scan, I/O queue setup, keep-alive, the I/O API split at MDTS, and CC.SHN shutdown.
 *
 * Every failure of a queue ends in {@link Controller.destroy}, the single teardown path; the
 * reconnect state machine (`resilient.ts`) listens for its `close` event and builds a new
 * association. Failure detection here: keep-alive (KATO/2, or KATO/4 skipping when the
 * controller has Traffic Based Keep Alive and traffic flowed), a receive watchdog per queue,
 * per-command timeouts (queue pair), socket errors, TermReq and protocol errors.
 * Asynchronous events: one AER kept outstanding; a namespace-attribute notice reads the Changed
 * Namespace List and emits `namespaces` ({ added, removed, resized }); an ANA change notice
 * re-reads the ANA log page (LID 0Ch, also read at bring-up when CMIC bit 3) and emits `ana`.
 */
import type { TlsPsk } from '../tls/psk';
import { EventEmitter } from 'node:events';
import * as os from 'node:os';
import { ErrorCode, NvmfNbdError } from '../errors';
import {
  AdminOpcode,
  Cns,
  FeatureId,
  LogPage,
  encodeDsmRanges,
  parseCap,
  parseIdentifyController,
  parseNamespaceList,
  sqeAsyncEventRequest,
  sqeDatasetManagement,
  sqeGetLogPage,
  sqeIdentify,
  sqeKeepAlive,
  sqePropertyGet,
  sqePropertySet,
  sqeSetFeatures,
  sqeWriteZeroes,
  AEN_CFG_ANA_CHANGE,
  AER_NOTICE_ANA_CHANGE,
  Cmic,
  LID_ANA,
  parseAnaLog,
} from '../wire';
import type { AnaLog } from '../wire';
// The per-I/O ones straight from their module: the barrel's CommonJS re-exports are getters, a
// call per use on the hot path.
import { IoOpcode, fillSqeIo } from '../wire/sqe';
import type { Cqe, IdentifyController } from '../wire';
import { classifyNamespace, readActiveNamespaceIds } from './namespace-info';
import type { NamespaceInfo } from './namespace-info';
import { ADMIN_QUEUE_SIZE, QueuePair } from '../transport/queue-pair';
import type { Completion, QueueStats } from '../transport/queue-pair';
import { authenticateQueue, type AuthOutcome, type DhchapHostOptions } from './auth';
import { BlockOpCode } from '../block/types';
import { IoRequest, PromiseIoOwner, ioDoneLater, type IoOwner } from './io-request';

export { DISCOVERY_NQN } from '../wire';

/** Property offsets (NVMe-oF §3.5 / base spec §3.1.4). */
const Prop = { CAP: 0x00, VS: 0x08, CC: 0x14, CSTS: 0x1c } as const;

/** Our own cap on one command's data when MDTS is 0 (unlimited) or larger. */
export const HOST_MAX_TRANSFER = 1 << 20;
/** NLB is a 16-bit 0-based field: 65536 blocks per Read/Write/Write Zeroes. */
export const MAX_NLB = 65536;
/** Timeout of each admin command during shutdown. */
const SHUTDOWN_COMMAND_TIMEOUT_MS = 5000;
/** Dataset Management carries at most 256 ranges. */
export const MAX_DSM_RANGES = 256;
/** CTRATT bit 6: Traffic Based Keep Alive Support (NVMe 1.4+ Identify Controller @96; Linux NVME_CTRL_ATTR_TBKAS). */
export const CTRATT_TBKAS = 1 << 6;
/** OAES bit 8 / Async Event Configuration bit 8: Namespace Attribute Notices. */
export const AEN_NS_ATTR = 1 << 8;
/** OAES bit 31 / Async Event Configuration bit 31: Discovery Log Page Change notices (discovery controllers). */
export const AEN_DISCOVERY_LOG = 0x80000000;
/** The Discovery Log Page Change event: type Notice (2), info F0h, log page 70h. */
export const AEN_INFO_DISCOVERY_LOG_CHANGED = 0xf0;
/** Asynchronous event type Notice (CQE DW0 bits 2:0) and its info "namespace attribute changed". */
const AsyncEvent = { TYPE_NOTICE: 2, INFO_NS_ATTR_CHANGED: 0 } as const;

/** What changed in the namespace set (`namespaces` event). */
export interface NamespaceChanges {
  added: number[];
  removed: number[];
  resized: number[];
}

/** Options of {@link Controller.connect}. */
export interface ControllerOptions {
  readonly traddr: string;
  readonly trsvcid: number;
  /** Local (source) address every queue's socket binds to (nvme-cli `-w/--host-traddr`). */
  readonly hostTraddr?: string;
  readonly subnqn: string;
  readonly hostnqn: string;
  /** 16 bytes, or a UUID string. */
  readonly hostid: Buffer | string;
  /** I/O queues to create (default CPU count, capped by the controller); 0 for admin only. */
  readonly nrIoQueues?: number;
  /** I/O queue depth (default 128, capped by CAP.MQES+1). */
  readonly queueSize?: number;
  /** Keep Alive Timeout in ms (default 5000; 0 = off, as for discovery). */
  readonly kato?: number;
  readonly hdgst?: boolean;
  readonly ddgst?: boolean;
  /** Ask to disable SQ flow control on every queue. */
  readonly disableSqFlowControl?: boolean;
  /** Budget per queue connect (default 10 s). */
  readonly connectTimeoutMs?: number;
  /** Per-command timeout (default 30 s). */
  readonly ioTimeoutMs?: number;
  /**
   * Budget for the whole bring-up (every queue connect, Identify, namespace scan), default
   * {@link DEFAULT_BRING_UP_TIMEOUT_MS}: each command is bounded by `ioTimeoutMs`, but a target
   * answering thousands of them slowly must not stretch one connect without end
   * (`NVMF_ERR_TIMEOUT`, issue 14 finding 15).
   */
  readonly bringUpTimeoutMs?: number;
  /**
   * Namespaces served per controller at most, default {@link DEFAULT_MAX_NAMESPACES}: the lowest
   * active NSIDs up to this count are identified and served, the rest are skipped (counted in
   * {@link Controller.namespacesOverLimit}, a `warning` with NVMF_ERR_TOO_MANY_NAMESPACES), so a
   * target reporting up to 2^20 namespaces cannot exhaust memory or descriptors.
   */
  readonly maxNamespaces?: number;
  /** Skip namespace scan and I/O queues (discovery controllers). */
  readonly discovery?: boolean;
  /**
   * Receive watchdog: a queue with commands awaiting a reply that receives nothing for this
   * long fails the association (`NVMF_ERR_TARGET_UNRESPONSIVE`). Default 2·KATO; 0 = off
   * (also off when KATO is 0).
   */
  readonly watchdogMs?: number;
  /** Enable namespace-attribute AENs and keep an AER outstanding (default true when OAES bit 8). */
  readonly asyncEvents?: boolean;
  /**
   * DH-HMAC-CHAP in-band authentication (`controller/auth.ts`): every queue authenticates after
   * its Connect when the controller asks (always when a controller secret is given), and again
   * when the controller answers a command with Authentication Required.
   */
  readonly dhchap?: DhchapHostOptions;
  /**
   * Discovery controllers: enable Discovery Log Page Change notices (Async Event Config bit 31)
   * when the controller offers them (OAES bit 31) and keep an AER outstanding; each one is
   * emitted as `aen` with info F0h. Used by persistent discovery.
   */
  readonly discoveryLogEvents?: boolean;
  /** NVMe/TCP secure channel: TLS 1.3 with this PSK on every queue (reconnects too). Never logged. */
  readonly tls?: TlsPsk;
}

/** Per-controller counters. */
export interface ControllerStats {
  cntlid: number;
  admin: QueueStats;
  io: QueueStats[];
}

/** Default {@link ControllerOptions.maxNamespaces}. */
export const DEFAULT_MAX_NAMESPACES = 4096;

/** Default {@link ControllerOptions.bringUpTimeoutMs}. */
export const DEFAULT_BRING_UP_TIMEOUT_MS = 60_000;

/** The CAP register fields used here. */
interface CapFields { mqes: number; to: number; mpsmin: number; css: number }

function hostidBuffer(h: Buffer | string): Buffer {
  if (Buffer.isBuffer(h)) {
    if (h.length !== 16) throw new NvmfNbdError(ErrorCode.INVALID_ARGUMENT, `host ID must be 16 bytes, got ${h.length}`);
    return h;
  }
  const hex = h.replace(/-/g, '');
  if (!/^[0-9a-fA-F]{32}$/.test(hex)) throw new NvmfNbdError(ErrorCode.INVALID_ARGUMENT, `host ID '${h}' is not a UUID`);
  return Buffer.from(hex, 'hex');
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * A connected NVMe-oF controller. Events: `error(err)` when a queue fails, `close(err?)` once.
 */
export class Controller extends EventEmitter implements IoOwner {
  readonly options: ControllerOptions;
  /** Controller ID from the admin Connect. */
  cntlid = 0xffff;
  /** Parsed Identify Controller. */
  identify!: IdentifyController;
  /** Raw Identify Controller data (4096 bytes). */
  identifyRaw!: Buffer;
  /** Active namespaces by NSID. */
  readonly namespaces = new Map<number, NamespaceInfo>();
  /** Version register (VS). */
  version = 0;
  /** Active namespaces beyond {@link ControllerOptions.maxNamespaces}, not served (latest scan). */
  namespacesOverLimit = 0;
  /** Largest data transfer of one command in bytes (MDTS, capped by HOST_MAX_TRANSFER). */
  maxTransfer = HOST_MAX_TRANSFER;
  cap!: CapFields;
  /** What the admin queue's (latest) DH-HMAC-CHAP authentication agreed on; undefined without one. */
  authentication: AuthOutcome | undefined;
  /**
   * The ANA log page (LID 0Ch) as last read: at bring-up when the controller reports ANA
   * (CMIC bit 3), again on every ANA change notice and {@link refreshAnaLog}; undefined without
   * ANA reporting (or when the read failed: a `warning` says why).
   */
  anaLog: AnaLog | undefined;

  private admin!: QueuePair;
  private readonly ioQueues: QueuePair[] = [];
  private rr = 0;
  private kaTimer: NodeJS.Timeout | undefined;
  /** When the outstanding keep-alive was sent (one at a time). */
  private kaSentAt: number | undefined;
  /** Sum of the queues' rxEvents at the previous keep-alive tick (traffic detection). */
  private lastRx = -1;
  /** Receive watchdog state per queue: rxEvents seen and since when nothing moved. */
  private readonly silence = new Map<QueuePair, { rx: number; since: number }>();
  /** Namespace change handling, serialized. */
  /**
   * Namespace changes waiting to be applied (a set of NSIDs, 'all' for a full rescan) and
   * whether a run is going: an AER storm coalesces into one running and one pending rescan
   * (issue 14 finding 7).
   */
  private nsPending: Set<number> | 'all' | undefined;
  private nsRunning = false;
  private closed = false;
  private closing = false;
  /** DH-HMAC-CHAP transaction identifiers: one per authentication of a queue of this association. */
  private nextTid = 0;
  /** Part records of MDTS splits, reused. */
  private readonly parts: IoRequest[] = [];

  private constructor(opts: ControllerOptions) {
    super();
    this.options = opts;
  }

  /** Number of connected I/O queues. */
  get ioQueueCount(): number {
    return this.ioQueues.length;
  }

  /**
   * Connect the admin queue, enable the controller, identify it, scan namespaces and connect
   * the I/O queues. Rejects with a typed error (`NVMF_ERR_CONNECT_FAILED` carries the NVMe
   * status when the target refused the Connect) and leaves nothing open.
   */
  static async connect(opts: ControllerOptions): Promise<Controller> {
    const c = new Controller(opts);
    const budget = opts.bringUpTimeoutMs ?? DEFAULT_BRING_UP_TIMEOUT_MS;
    let expired: NvmfNbdError | undefined;
    // The overall deadline: destroying the controller fails whatever command or queue connect
    // bring-up is waiting for, and bringUp() stops at its next step.
    const timer = setTimeout(() => {
      expired = new NvmfNbdError(ErrorCode.TIMEOUT, `controller ${opts.subnqn} at ${opts.traddr}:${opts.trsvcid}: bring-up did not finish within ${budget} ms`);
      c.destroy(expired);
    }, Math.min(budget, 2 ** 31 - 1));
    try {
      await c.bringUp();
      if (expired !== undefined) throw expired;
      return c;
    } catch (err) {
      const e = expired ?? err;
      c.destroy(e instanceof NvmfNbdError ? e : new NvmfNbdError(ErrorCode.CONNECT_FAILED, String(e), { cause: e }));
      throw e;
    } finally {
      clearTimeout(timer);
    }
  }

  /** After an await in bringUp: a queue that connected after the controller was destroyed is closed at once. */
  private adopt(qp: QueuePair): QueuePair {
    if (this.closed || this.closing) {
      qp.destroy();
      throw new NvmfNbdError(ErrorCode.CONNECTION_CLOSED, `controller ${this.options.subnqn}: closed during bring-up`);
    }
    return qp;
  }

  private queueCommon(): {
    host: string; port: number; localAddress: string | undefined; subnqn: string; hostnqn: string; hostid: Buffer; hdgst: boolean; ddgst: boolean; disableSqFlowControl: boolean;
    connectTimeoutMs: number | undefined; timeoutMs: number | undefined; authenticate?: (qp: QueuePair) => Promise<unknown>; authenticateAlways?: boolean; tls: TlsPsk | undefined;
  } {
    const o = this.options;
    const dhchap = o.dhchap;
    return {
      tls: o.tls,
      host: o.traddr, port: o.trsvcid, localAddress: o.hostTraddr, subnqn: o.subnqn, hostnqn: o.hostnqn, hostid: hostidBuffer(o.hostid),
      hdgst: o.hdgst === true, ddgst: o.ddgst === true, disableSqFlowControl: o.disableSqFlowControl === true,
      connectTimeoutMs: o.connectTimeoutMs, timeoutMs: o.ioTimeoutMs,
      ...(dhchap === undefined ? {} : {
        // With a controller secret the controller must prove itself even if it does not ask (not
        // for discovery controllers, which Linux never authenticates).
        authenticateAlways: dhchap.ctrlSecret !== undefined && o.discovery !== true,
        authenticate: async (qp: QueuePair): Promise<unknown> => {
          const outcome = await authenticateQueue(qp, { hostnqn: o.hostnqn, subnqn: o.subnqn, tid: this.nextTid++ & 0xffff, dhchap });
          if (qp.qid === 0) this.authentication = outcome;
          const e = { qid: qp.qid, ...outcome };
          this.emit('authenticated', e);
          dhchap.onAuthenticated?.(e);
          return outcome;
        },
      }),
    };
  }

  private async bringUp(): Promise<void> {
    const o = this.options;
    const kato = o.kato ?? (o.discovery === true ? 0 : 5000);
    this.admin = this.adopt(await QueuePair.connect({
      ...this.queueCommon(), qid: 0, queueSize: ADMIN_QUEUE_SIZE, cntlid: 0xffff, kato,
      maxTransfer: HOST_MAX_TRANSFER,
    }));
    this.cntlid = this.admin.cntlid;
    this.watch(this.admin);

    const capRaw = await this.propertyGet(Prop.CAP, true);
    const cap = parseCap(capRaw);
    this.cap = { mqes: cap.mqes, to: cap.to, mpsmin: cap.mpsmin, css: cap.css };
    this.version = Number(await this.propertyGet(Prop.VS, false));
    await this.enable();

    const id = await this.adminCommand(sqeIdentify(Cns.CONTROLLER), { dataInLength: 4096 });
    this.identifyRaw = id.data as Buffer;
    this.identify = parseIdentifyController(this.identifyRaw);
    // Identify Controller offsets (base spec 2.0 Figure 275): MDTS @77, IOCCSZ @1792, RTD3E @88.
    const mdts = this.identifyRaw[77] as number;
    if (mdts > 0) {
      const mpsminBytes = 2 ** (12 + this.cap.mpsmin);
      this.maxTransfer = Math.min(HOST_MAX_TRANSFER, mpsminBytes * 2 ** mdts);
    }
    if (kato > 0) this.startKeepAlive(kato, o.watchdogMs ?? 2 * kato);
    if (o.discovery === true) {
      if (o.discoveryLogEvents === true && this.discoveryLogEventsSupported) {
        await this.adminCommand(sqeSetFeatures(FeatureId.ASYNC_EVENT_CONFIG, AEN_DISCOVERY_LOG));
        this.postAer();
      }
      return;
    }

    await this.rescanNamespaces();
    if (this.anaReporting) {
      try {
        this.anaLog = await this.readAnaLog();
      } catch (err) {
        // A malformed log is the target's fault, not a reason to refuse the association: the
        // multipath layer then treats every group of this path as optimized until a good read.
        if (!this.alive) throw err;
        this.emit('warning', err);
      }
    }

    const wanted = o.nrIoQueues ?? os.cpus().length;
    if (wanted > 0) {
      const res = await this.adminCommand(sqeSetFeatures(FeatureId.NUMBER_OF_QUEUES, ((wanted - 1) & 0xffff) | (((wanted - 1) & 0xffff) << 16)));
      const nsqa = (res.cqe.dw0 & 0xffff) + 1;
      const ncqa = (res.cqe.dw0 >>> 16) + 1;
      const count = Math.min(wanted, nsqa, ncqa);
      const queueSize = Math.max(2, Math.min(o.queueSize ?? 128, this.cap.mqes + 1));
      const ioccsz = this.identifyRaw.readUInt32LE(1792);
      // IOCCSZ is in 16-byte units and includes the 64-byte SQE (NVMe-oF §4.1).
      const inCapsuleMax = ioccsz > 4 ? ioccsz * 16 - 64 : 0;
      for (let qid = 1; qid <= count; qid++) {
        const qp = this.adopt(await QueuePair.connect({
          ...this.queueCommon(), qid, queueSize, cntlid: this.cntlid, inCapsuleMax,
          maxTransfer: this.maxTransfer,
        }));
        this.ioQueues.push(qp);
        this.watch(qp);
      }
    }
    const aec = this.identify.oaes & (AEN_NS_ATTR | (this.anaReporting ? AEN_CFG_ANA_CHANGE : 0));
    if (o.asyncEvents !== false && aec !== 0) {
      // Async Event Configuration: namespace attribute and ANA change notices (the events we act on).
      await this.adminCommand(sqeSetFeatures(FeatureId.ASYNC_EVENT_CONFIG, aec));
      this.postAer();
    }
  }

  /** True until the association is closed or destroyed. */
  get alive(): boolean {
    return !this.closed && !this.closing;
  }

  /** The (discovery) controller can send Discovery Log Page Change notices (OAES bit 31). */
  get discoveryLogEventsSupported(): boolean {
    return this.identify !== undefined && (this.identify.oaes & AEN_DISCOVERY_LOG) !== 0;
  }

  /** The controller reports Asymmetric Namespace Access (CMIC bit 3): it has an ANA log page. */
  get anaReporting(): boolean {
    return this.identify !== undefined && (this.identify.cmic & Cmic.ANA) !== 0;
  }

  /**
   * Bytes to read of the ANA log: the header, one descriptor per group the controller supports
   * (NANAGRPID) and one NSID per namespace (NN), both capped — a target claiming 2^32 groups must
   * not make us ask for gigabytes; a log that does not fit fails to parse (ANA_LOG_INVALID).
   */
  private anaLogBytes(): number {
    const groups = Math.min(Math.max(1, this.identify.nanagrpid), 1024);
    const nsids = Math.min(this.identify.nn > 0 ? this.identify.nn : 1024, this.options.maxNamespaces ?? DEFAULT_MAX_NAMESPACES);
    return Math.max(4096, 16 + 32 * groups + 4 * nsids);
  }

  /** Read and parse the ANA log page (RAE clear: re-arms the ANA change notice). */
  async readAnaLog(): Promise<AnaLog> {
    const n = this.anaLogBytes();
    const { data } = await this.adminCommand(sqeGetLogPage(LID_ANA, n, 0xffffffff, 0, 0, false), { dataInLength: n });
    return parseAnaLog(data as Buffer);
  }

  /** Re-read the ANA log now (a path status told us it moved); emits `ana` with it. */
  async refreshAnaLog(): Promise<AnaLog> {
    const log = await this.readAnaLog();
    this.anaLog = log;
    this.emit('ana', log);
    return log;
  }

  /** The controller reports Traffic Based Keep Alive Support (CTRATT bit 6). */
  get trafficBasedKeepAlive(): boolean {
    return this.identify !== undefined && (this.identify.ctratt & CTRATT_TBKAS) !== 0;
  }

  /**
   * Command Quiesce Time in ms (Identify Controller CQT, bytes 387:386, NVMe 2.0; 0 when not
   * reported): how long the controller may still execute commands of a lost association.
   */
  get commandQuiesceTimeMs(): number {
    return this.identifyRaw !== undefined ? this.identifyRaw.readUInt16LE(386) : 0;
  }

  /** Resolves when every socket of this association is fully closed (after destroy/close). */
  whenClosed(): Promise<void> {
    const qs = [this.admin, ...this.ioQueues].filter((q): q is QueuePair => q !== undefined);
    return Promise.all(qs.map((q) => q.socketClosed)).then(() => undefined);
  }

  /**
   * Keep one Asynchronous Event Request outstanding; it has no deadline. After a namespace
   * notice it is re-posted only once the Changed Namespace List was read (see
   * {@link onAsyncEvent}): a target completing AERs as fast as they are posted then paces
   * itself at one log read per event instead of building a backlog.
   */
  private postAer(): void {
    if (!this.alive) return;
    this.adminCommand(sqeAsyncEventRequest(), { timeoutMs: Infinity }).then((c) => {
      this.onAsyncEvent(c.cqe.dw0);
    }, () => {
      // Closed (nothing to do) or refused with a status (e.g. AER limit): stop posting rather
      // than spin; keep-alive and reconnect rescans still notice namespace changes.
    });
  }

  private onAsyncEvent(dw0: number): void {
    const type = dw0 & 0x7;
    const info = (dw0 >>> 8) & 0xff;
    this.emit('aen', { type, info, lid: (dw0 >>> 16) & 0xff });
    if (type === AsyncEvent.TYPE_NOTICE && info === AER_NOTICE_ANA_CHANGE && this.anaReporting) {
      // Read the log (RAE clear re-arms the notice), then listen again: one read per notice.
      this.refreshAnaLog().catch((err: unknown) => {
        if (this.alive) this.emit('warning', err);
      }).finally(() => this.postAer());
      return;
    }
    if (type !== AsyncEvent.TYPE_NOTICE || info !== AsyncEvent.INFO_NS_ATTR_CHANGED) {
      // Not acted upon: keep listening (one AER outstanding at a time, nothing accumulates).
      this.postAer();
      return;
    }
    this.onNamespaceNotice().catch((err: unknown) => {
      // A lost association rescans on reconnect; anything else is worth a warning.
      if (this.alive) this.emit('warning', err);
    });
  }

  /**
   * Read the Changed Namespace List (RAE cleared, which re-arms the event), re-post the AER,
   * then queue the change: at most one rescan runs and one waits, later notices merge into it.
   */
  private async onNamespaceNotice(): Promise<void> {
    let list: number[] | undefined;
    try {
      const { data } = await this.adminCommand(sqeGetLogPage(LogPage.CHANGED_NS, 4096, 0xffffffff, 0, 0, false), { dataInLength: 4096 });
      list = parseNamespaceList(data as Buffer);
    } finally {
      this.postAer();
    }
    // FFFFFFFFh in the first entry: more than 1024 changed, rescan everything.
    this.queueNamespaceChanges(list[0] === 0xffffffff ? undefined : list);
  }

  /** Merge `changed` (undefined: everything) into the pending rescan and start it unless one runs. */
  private queueNamespaceChanges(changed: readonly number[] | undefined): void {
    if (changed === undefined || this.nsPending === 'all') {
      this.nsPending = 'all';
    } else {
      const p = this.nsPending ?? new Set<number>();
      for (const n of changed) p.add(n);
      this.nsPending = p;
    }
    if (this.nsRunning) return;
    this.nsRunning = true;
    void (async () => {
      try {
        while (this.nsPending !== undefined && this.alive) {
          const p = this.nsPending;
          this.nsPending = undefined;
          await this.applyNamespaceChanges(p === 'all' ? undefined : [...p]).catch((err: unknown) => {
            if (this.alive) this.emit('warning', err);
          });
        }
      } finally {
        this.nsRunning = false;
      }
    })();
  }

  /** Rescans started by namespace notices that are running or waiting (0, 1 or 2): for tests and `list`. */
  get pendingRescans(): number {
    return (this.nsRunning ? 1 : 0) + (this.nsPending !== undefined ? 1 : 0);
  }

  /**
   * Re-read the active namespace list; identify `changed` (all active ones when undefined) and
   * any newly active namespace; update {@link namespaces}; report what was added, removed,
   * resized (size or block size). The map is updated and `namespaces` emitted in one
   * synchronous step, so no I/O ever sees a new block size without its listeners knowing.
   */
  async applyNamespaceChanges(changed?: readonly number[]): Promise<NamespaceChanges> {
    const active = new Set(this.capNamespaces(await this.activeNamespaceIds()));
    const out: NamespaceChanges = { added: [], removed: [], resized: [] };
    const check = new Set<number>(changed === undefined ? active : changed.filter((n) => active.has(n)));
    for (const nsid of active) if (!this.namespaces.has(nsid)) check.add(nsid);
    const infos: NamespaceInfo[] = [];
    for (const nsid of [...check].sort((a, b) => a - b)) infos.push(await this.identifyNamespace(nsid));
    for (const nsid of [...this.namespaces.keys()]) {
      if (active.has(nsid)) continue;
      this.namespaces.delete(nsid);
      out.removed.push(nsid);
    }
    for (const info of infos) {
      const old = this.namespaces.get(info.nsid);
      this.namespaces.set(info.nsid, info);
      if (old === undefined) out.added.push(info.nsid);
      else if (old.nsze !== info.nsze || old.lbaSize !== info.lbaSize) out.resized.push(info.nsid);
    }
    out.removed.sort((a, b) => a - b);
    if (out.added.length + out.removed.length + out.resized.length > 0) this.emit('namespaces', out);
    return out;
  }

  private watch(qp: QueuePair): void {
    qp.on('close', (err?: NvmfNbdError) => {
      if (this.closing || this.closed) return;
      const e = err ?? new NvmfNbdError(ErrorCode.CONNECTION_CLOSED, `queue ${qp.qid} closed`);
      this.destroy(new NvmfNbdError(ErrorCode.CONTROLLER_LOST, `controller ${this.cntlid}: queue ${qp.qid} lost: ${e.message}`, { cause: e }));
    });
  }

  /** CC.EN=1 then wait CSTS.RDY, bounded by CAP.TO (500 ms units). */
  private async enable(): Promise<void> {
    const cc = Number(await this.propertyGet(Prop.CC, false));
    if (cc & 1) return; // already enabled (a shared controller); nothing to do.
    // IOCQES=4 (16 B) bits 23:20, IOSQES=6 (64 B) bits 19:16, MPS bits 10:7, CSS 0, AMS 0, EN.
    const newCc = (4 << 20) | (6 << 16) | ((this.cap.mpsmin & 0xf) << 7) | 1;
    await this.propertySet(Prop.CC, false, BigInt(newCc));
    await this.waitCsts((csts) => (csts & 1) === 1, Math.max(500, this.cap.to * 500), 'CSTS.RDY');
  }

  private async waitCsts(done: (csts: number) => boolean, budgetMs: number, what: string): Promise<void> {
    const deadline = Date.now() + budgetMs;
    for (let delay = 5; ; delay = Math.min(100, delay * 2)) {
      const csts = Number(await this.propertyGet(Prop.CSTS, false, Math.max(1000, budgetMs)));
      if (csts & 2) throw new NvmfNbdError(ErrorCode.CONTROLLER_FATAL, `controller ${this.cntlid}: CSTS.CFS set while waiting for ${what}`);
      if (done(csts)) return;
      if (Date.now() >= deadline) throw new NvmfNbdError(ErrorCode.ENABLE_TIMEOUT, `controller ${this.cntlid}: ${what} not reached within ${budgetMs} ms`);
      await sleep(delay);
    }
  }

  /** Fabrics Property Get; returns the register value. */
  async propertyGet(offset: number, size8: boolean, timeoutMs?: number): Promise<bigint> {
    const { cqe } = await this.adminCommand(sqePropertyGet(offset, size8), { timeoutMs });
    return size8 ? BigInt(cqe.dw0 >>> 0) | (BigInt(cqe.dw1 >>> 0) << 32n) : BigInt(cqe.dw0 >>> 0);
  }

  /** Fabrics Property Set. */
  async propertySet(offset: number, size8: boolean, value: bigint, timeoutMs?: number): Promise<void> {
    await this.adminCommand(sqePropertySet(offset, size8, value), { timeoutMs });
  }

  /**
   * Keep-alive and receive watchdog, one timer. Without TBKAS a Keep Alive goes out every
   * KATO/2, so one late reply never lets the target's timer expire. With TBKAS the target
   * restarts its timer on any command, so the tick runs at KATO/4 and skips the Keep Alive when
   * traffic was received since the previous tick (as Linux: one completion can postpone the
   * next Keep Alive by up to two periods). A Keep Alive unanswered for KATO fails the
   * association (`KEEPALIVE_TIMEOUT`).
   */
  private startKeepAlive(kato: number, watchdogMs: number): void {
    const period = Math.max(50, Math.floor(kato / (this.trafficBasedKeepAlive ? 4 : 2)));
    this.kaTimer = setInterval(() => this.keepAliveTick(kato, watchdogMs), period);
    this.kaTimer.unref();
  }

  private keepAliveTick(kato: number, watchdogMs: number): void {
    if (!this.alive) return;
    const now = Date.now();
    if (this.kaSentAt !== undefined && now - this.kaSentAt > kato) {
      this.destroy(new NvmfNbdError(ErrorCode.KEEPALIVE_TIMEOUT, `controller ${this.cntlid}: keep-alive not answered within ${kato} ms`));
      return;
    }
    let rx = 0;
    for (const q of [this.admin, ...this.ioQueues]) {
      rx += q.rxEvents;
      if (watchdogMs <= 0) continue;
      const w = this.silence.get(q);
      if (w === undefined || q.awaitingReply === 0 || w.rx !== q.rxEvents) {
        this.silence.set(q, { rx: q.rxEvents, since: now });
      } else if (now - w.since > watchdogMs) {
        // A stalled link or target: commands wait and nothing at all arrives on this queue.
        this.destroy(new NvmfNbdError(ErrorCode.TARGET_UNRESPONSIVE,
          `controller ${this.cntlid}: queue ${q.qid} received nothing for ${now - w.since} ms with ${q.awaitingReply} commands outstanding`));
        return;
      }
    }
    const traffic = rx !== this.lastRx;
    this.lastRx = rx;
    if (this.kaSentAt !== undefined) return;
    if (traffic && this.trafficBasedKeepAlive) return;
    this.kaSentAt = now;
    // The tick above enforces KATO; the queue's own deadline is only a backstop.
    this.adminCommand(sqeKeepAlive(), { timeoutMs: 2 * kato }).then(() => {
      this.kaSentAt = undefined;
    }, (err: unknown) => {
      if (!this.alive) return;
      this.destroy(new NvmfNbdError(ErrorCode.KEEPALIVE_TIMEOUT, `controller ${this.cntlid}: keep-alive failed: ${(err as Error).message}`, { cause: err }));
    });
  }

  /** Run one admin command. */
  adminCommand(sqe: Buffer, o: { dataOut?: Buffer; dataInLength?: number; timeoutMs?: number } = {}): Promise<Completion> {
    if (this.closed) return Promise.reject(new NvmfNbdError(ErrorCode.CONNECTION_CLOSED, 'controller closed'));
    return this.admin.submit(sqe, o);
  }

  /** Run one I/O command on the least-loaded I/O queue (round-robin among equals). */
  ioCommand(sqe: Buffer, o: { dataOut?: Buffer; dataInLength?: number; dataIn?: Buffer; timeoutMs?: number } = {}): Promise<Completion> {
    const n = this.ioQueues.length;
    if (this.closed || n === 0) {
      return Promise.reject(new NvmfNbdError(this.closed ? ErrorCode.CONNECTION_CLOSED : ErrorCode.UNSUPPORTED, this.closed ? 'controller closed' : 'controller has no I/O queues'));
    }
    return this.pickQueue(n).submit(sqe, o);
  }

  /** The least-loaded I/O queue (round-robin among equals); `n` > 0 queues. */
  private pickQueue(n: number): QueuePair {
    let best = this.ioQueues[this.rr % n] as QueuePair;
    for (let i = 1; i < n; i++) {
      const q = this.ioQueues[(this.rr + i) % n] as QueuePair;
      if (q.load < best.load) best = q;
    }
    this.rr = (this.rr + 1) % n;
    return best;
  }

  /**
   * The record path of Read, Write and Flush (issue 9 item 2): `req.op`, `nsid`, `slba`, `nlb`,
   * `data` (READ: the destination, exactly nlb · block size bytes; WRITE: the payload) and
   * `fua` are set by the caller; completes once through `req.owner.onIoDone`, never
   * synchronously. A transfer above MDTS is split into part records of this controller (one
   * counter on the request, no promise); the parts spread over the I/O queues, and their C2HData
   * land straight in views of `data`.
   */
  submitIo(req: IoRequest): void {
    const n = this.ioQueues.length;
    if (this.closed || n === 0) {
      ioDoneLater(req, new NvmfNbdError(this.closed ? ErrorCode.CONNECTION_CLOSED : ErrorCode.UNSUPPORTED, this.closed ? 'controller closed' : 'controller has no I/O queues'));
      return;
    }
    let ns: NamespaceInfo;
    try {
      ns = this.ns(req.nsid);
    } catch (err) {
      ioDoneLater(req, err as NvmfNbdError);
      return;
    }
    const op = req.op;
    if (op === BlockOpCode.FLUSH) {
      fillSqeIo(req.sqe, IoOpcode.FLUSH, req.nsid, 0n, 0, false);
      req.dataIn = undefined;
      req.dataOut = undefined;
      req.dataInLength = 0;
      this.pickQueue(n).submitCommand(req);
      return;
    }
    const data = req.data;
    const bytes = req.nlb * ns.lbaSize;
    const read = op === BlockOpCode.READ;
    // A read may come without a destination (the namespace path): then dataInLength says its
    // size and the queue makes it at issue (IoRequest.allocDataIn).
    const lazy = read && data === undefined;
    const size = lazy ? req.dataInLength : data?.length ?? 0;
    if ((op !== BlockOpCode.READ && op !== BlockOpCode.WRITE) || (data === undefined && !lazy) || size !== bytes || req.nlb < 1 || !Number.isInteger(req.nlb)) {
      ioDoneLater(req, new NvmfNbdError(ErrorCode.INVALID_ARGUMENT,
        `${read ? 'read destination' : 'write'} of ${size} bytes for ${req.nlb} blocks of ${ns.lbaSize}`));
      return;
    }
    const opcode = read ? IoOpcode.READ : IoOpcode.WRITE;
    const fua = !read && req.fua;
    const per = this.maxBlocks(ns);
    if (req.nlb <= per) {
      fillSqeIo(req.sqe, opcode, req.nsid, req.slba, req.nlb, fua);
      req.dataIn = read ? data : undefined;
      req.dataOut = read ? undefined : data;
      req.dataInLength = lazy ? bytes : 0;
      this.pickQueue(n).submitCommand(req);
      return;
    }
    // Split: with a lazy read the parent keeps the total in dataInLength, the first part issued
    // makes the whole destination and every part reads into its view of it.
    req.dataInLength = lazy ? bytes : 0;
    req.partsPending = Math.ceil(req.nlb / per);
    req.partError = undefined;
    for (let done = 0; done < req.nlb; done += per) {
      const k = Math.min(per, req.nlb - done);
      const part = this.parts.pop() ?? new IoRequest();
      part.parent = req;
      part.owner = this;
      fillSqeIo(part.sqe, opcode, req.nsid, req.slba + BigInt(done), k, fua);
      const view = data?.subarray(done * ns.lbaSize, (done + k) * ns.lbaSize);
      part.dataIn = read ? view : undefined;
      part.dataOut = read ? undefined : view;
      part.dataInLength = lazy ? k * ns.lbaSize : 0;
      part.partOffset = done * ns.lbaSize;
      this.pickQueue(n).submitCommand(part);
    }
  }

  /** A part of a split request completed (IoOwner of part records). */
  onIoDone(part: IoRequest, err: NvmfNbdError | undefined): void {
    const req = part.parent as IoRequest;
    part.parent = undefined;
    part.owner = undefined;
    part.dataIn = undefined;
    part.dataOut = undefined;
    part.dataInLength = 0;
    this.parts.push(part);
    if (err !== undefined && req.partError === undefined) req.partError = err;
    if (--req.partsPending === 0) (req.owner as IoOwner).onIoDone(req, req.partError);
  }

  /** Run `req` through {@link submitIo} as a promise (the public API). */
  private runIo(req: IoRequest): Promise<Buffer | undefined> {
    return new Promise((resolve, reject) => {
      req.owner = new PromiseIoOwner(resolve, reject);
      this.submitIo(req);
    });
  }

  /** Identify Namespace (CNS 0) for `nsid`, classified as usable or not. */
  async identifyNamespace(nsid: number): Promise<NamespaceInfo> {
    const { data } = await this.adminCommand(sqeIdentify(Cns.NAMESPACE, nsid), { dataInLength: 4096 });
    const raw = data as Buffer;
    return classifyNamespace(nsid, raw, this.maxTransfer);
  }

  /** Re-read the active namespace list and Identify each namespace. */
  async rescanNamespaces(): Promise<Map<number, NamespaceInfo>> {
    const ids = this.capNamespaces(await this.activeNamespaceIds());
    this.namespaces.clear();
    for (const nsid of ids) this.namespaces.set(nsid, await this.identifyNamespace(nsid));
    return this.namespaces;
  }

  /** The first maxNamespaces of the (increasing) active NSIDs; the rest are counted and reported. */
  private capNamespaces(ids: number[]): number[] {
    const max = this.options.maxNamespaces ?? DEFAULT_MAX_NAMESPACES;
    const over = Math.max(0, ids.length - max);
    if (over > 0 && over !== this.namespacesOverLimit) {
      this.emit('warning', new NvmfNbdError(ErrorCode.TOO_MANY_NAMESPACES,
        `controller ${this.options.subnqn}: ${ids.length} active namespaces, serving the first ${max}; NSIDs ${ids[max] ?? ''}..${ids[ids.length - 1] ?? ''} skipped (raise --max-namespaces)`));
    }
    this.namespacesOverLimit = over;
    return over > 0 ? ids.slice(0, max) : ids;
  }

  /** The active namespace list, paged and checked ({@link readActiveNamespaceIds}). */
  private activeNamespaceIds(): Promise<number[]> {
    return readActiveNamespaceIds((sqe) => this.adminCommand(sqe, { dataInLength: 4096 }), this.identify.nn);
  }

  private ns(nsid: number): NamespaceInfo {
    const ns = this.namespaces.get(nsid);
    if (ns === undefined) throw new NvmfNbdError(ErrorCode.NAMESPACE_NOT_FOUND, `namespace ${nsid} is not active on controller ${this.cntlid}`);
    if (!ns.usable) throw new NvmfNbdError(ErrorCode.NAMESPACE_UNSUPPORTED, `namespace ${nsid}: ${ns.reasonIfNot ?? 'unsupported'}`);
    return ns;
  }

  /** Blocks per command for data transfers of this namespace. */
  private maxBlocks(ns: NamespaceInfo): number {
    return Math.max(1, Math.min(MAX_NLB, Math.floor(this.maxTransfer / ns.lbaSize)));
  }

  /**
   * Read `nlb` blocks at `slba`, split at MDTS and spread over the I/O queues. With `into`
   * (exactly nlb·lbaSize bytes) the data lands there: each command gets a view of its part and
   * its C2HData payloads are copied straight from the socket into it (no reassembly copy).
   */
  read(nsid: number, slba: bigint, nlb: number, into?: Buffer): Promise<Buffer> {
    const lba = this.namespaces.get(nsid)?.lbaSize;
    const req = new IoRequest();
    req.op = BlockOpCode.READ;
    req.nsid = nsid;
    req.slba = slba;
    req.nlb = nlb;
    // An unknown namespace fails in submitIo (the destination is not needed then).
    req.data = into ?? Buffer.allocUnsafe(lba === undefined ? 0 : nlb * lba);
    return this.runIo(req) as Promise<Buffer>;
  }

  /** Write `data` (a multiple of the block size) at `slba`; FUA per command. */
  async write(nsid: number, slba: bigint, data: Buffer, o: { fua?: boolean } = {}): Promise<void> {
    const ns = this.ns(nsid);
    if (data.length % ns.lbaSize !== 0) throw new NvmfNbdError(ErrorCode.INVALID_ARGUMENT, `write of ${data.length} bytes is not a multiple of ${ns.lbaSize}`);
    if (data.length === 0) return;
    const req = new IoRequest();
    req.op = BlockOpCode.WRITE;
    req.nsid = nsid;
    req.slba = slba;
    req.nlb = data.length / ns.lbaSize;
    req.data = data;
    req.fua = o.fua === true;
    await this.runIo(req);
  }

  /** NVMe Flush of the namespace (the volatile write cache, when there is one). */
  async flush(nsid: number): Promise<void> {
    const req = new IoRequest();
    req.op = BlockOpCode.FLUSH;
    req.nsid = nsid;
    await this.runIo(req);
  }

  /** Dataset Management / deallocate; ranges are split to ≤ 65536 blocks and ≤ 256 per command. */
  async deallocate(nsid: number, ranges: ReadonlyArray<{ slba: bigint; nlb: number }>): Promise<void> {
    this.ns(nsid);
    const split: Array<{ slba: bigint; nlb: number }> = [];
    for (const r of ranges) {
      // DSM range length is 32-bit; keep each well below that.
      for (let done = 0; done < r.nlb; done += MAX_NLB) split.push({ slba: r.slba + BigInt(done), nlb: Math.min(MAX_NLB, r.nlb - done) });
    }
    const parts: Promise<unknown>[] = [];
    for (let i = 0; i < split.length; i += MAX_DSM_RANGES) {
      const group = split.slice(i, i + MAX_DSM_RANGES);
      parts.push(this.ioCommand(sqeDatasetManagement(nsid, group.length, true), { dataOut: encodeDsmRanges(group) }));
    }
    await settleAll(parts);
  }

  /** Write Zeroes, split at 65536 blocks per command. */
  async writeZeroes(nsid: number, slba: bigint, nlb: number, o: { deallocate?: boolean; fua?: boolean } = {}): Promise<void> {
    this.ns(nsid);
    const parts: Promise<unknown>[] = [];
    for (let done = 0; done < nlb; done += MAX_NLB) {
      const n = Math.min(MAX_NLB, nlb - done);
      parts.push(this.ioCommand(sqeWriteZeroes(nsid, slba + BigInt(done), n, { deallocate: o.deallocate === true, fua: o.fua === true })));
    }
    await settleAll(parts);
  }

  /** Optional NVM Command Support (ONCS, Identify Controller @520). */
  get oncs(): number {
    return this.identifyRaw.readUInt16LE(520);
  }

  /** A volatile write cache is present (VWC bit 0, Identify Controller @525). */
  get volatileWriteCache(): boolean {
    return ((this.identifyRaw[525] as number) & 1) === 1;
  }

  /** Counters of every queue. */
  stats(): ControllerStats {
    return { cntlid: this.cntlid, admin: this.admin.stats(), io: this.ioQueues.map((q) => q.stats()) };
  }

  /**
   * Orderly shutdown: CC.SHN=01b, wait CSTS.SHST=10b bounded by RTD3E (or 5 s), then close
   * every queue. Never throws; a failure during shutdown just closes the sockets.
   */
  async close(): Promise<void> {
    if (this.closed || this.closing) return;
    this.closing = true;
    if (this.kaTimer !== undefined) clearInterval(this.kaTimer);
    try {
      for (const q of this.ioQueues) q.destroy();
      if (this.admin !== undefined && this.admin.connected && this.options.discovery !== true) {
        // Bounded: an unresponsive target must not hold Ctrl-C for a full I/O timeout.
        const cc = Number(await this.propertyGet(Prop.CC, false, SHUTDOWN_COMMAND_TIMEOUT_MS));
        await this.propertySet(Prop.CC, false, BigInt(((cc & ~(3 << 14)) | (1 << 14)) >>> 0), SHUTDOWN_COMMAND_TIMEOUT_MS);
        const rtd3e = this.identifyRaw !== undefined ? this.identifyRaw.readUInt32LE(88) : 0;
        const budget = rtd3e > 0 ? Math.min(60_000, Math.ceil(rtd3e / 1000)) : 5000;
        await this.waitCsts((csts) => ((csts >>> 2) & 3) === 2, budget, 'CSTS.SHST complete');
      }
    } catch {
      // Shutdown is best effort: the sockets close below whatever happened.
    }
    this.finish(undefined);
  }

  /** The single teardown path: stop timers, close every queue, emit `error` (if any) and `close`. */
  destroy(err?: NvmfNbdError): void {
    if (this.closed) return;
    this.closing = true;
    if (this.kaTimer !== undefined) clearInterval(this.kaTimer);
    if (err !== undefined && this.listenerCount('error') > 0) this.emit('error', err);
    this.finish(err);
  }

  private finish(err: NvmfNbdError | undefined): void {
    if (this.closed) return;
    this.closed = true;
    if (this.kaTimer !== undefined) clearInterval(this.kaTimer);
    for (const q of this.ioQueues) q.destroy(err);
    this.admin?.destroy(err);
    this.emit('close', err);
  }
}

/** Wait for every part; reject with the first error only after all settled (no stray rejections). */
async function settleAll(parts: ReadonlyArray<Promise<unknown>>): Promise<void> {
  const res = await Promise.allSettled(parts);
  for (const r of res) if (r.status === 'rejected') throw r.reason;
}

export { classifyNamespace } from './namespace-info';
export type { NamespaceInfo } from './namespace-info';
export { AdminOpcode };
export type { Cqe };
