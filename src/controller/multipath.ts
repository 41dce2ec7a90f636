/**
 * Host multipath (issue 12 items 1–4): one subsystem reached over several paths, each path one
 * {@link ResilientController} (its own association, cntlid, reconnects), and one {@link Namespace}
 * per namespace on top — the exported block device, whatever the number of paths. This object is
 * that namespace's {@link NamespacePath}.
 *
 * **Path choice** per request: the live paths whose ANA state for the namespace's group is
 * optimized, by the I/O policy (`numa` = the first of them, as Linux's default on one node;
 * `round-robin`; `queue-depth` = the fewest requests in flight); non-optimized ones only when no
 * optimized one is usable; when a path is live but the group is inaccessible or in change, the
 * request waits here for an ANA change (ANATT bounds `change`); when no path is live at all the
 * request goes to a reconnecting path, whose resilient controller holds it under the single-path
 * rules (reconnect_delay, ctrl_loss_tmo, fast_io_fail_tmo). With one path nothing else changes:
 * the resilient controller does what it always did.
 *
 * **ANA**: each path's controller reads the ANA log at bring-up and on every ANA change notice;
 * a path status (SCT 3h: ANA inaccessible / persistent loss / transition, internal path error,
 * controller or host pathing error, command aborted by host) never reaches the NBD client: the
 * group state is corrected from the status, the log re-read, and the request sent again — on
 * another path when there is one. Such a command was answered, so it cannot execute later:
 * re-sending it at once is safe.
 *
 * **Failover and the write-hold rule** (two or more paths; the paths run in pass-back mode, so a
 * record lost with its association comes back here instead of waiting for that path's
 * reconnect): a READ in flight on a failed path is sent on a healthy path at once. A WRITE,
 * FLUSH, Write Zeroes or Deallocate in flight there is held until the failed association can no
 * longer execute it — the path reconnected with a new association (its resilient controller
 * does that only after its own quiesce time), or {@link writeHoldTimeMs} (KATO + CQT) passed
 * since the loss. Linux re-issues them at once; a copy still queued in the target behind the
 * lost connection can then land after the re-issued one or after a newer write (SPDK issue
 * 3593). New requests go to healthy paths meanwhile; a new write, write zeroes or deallocate
 * overlapping a held one waits behind it (and behind its re-issue), so the held copy can never
 * overwrite newer data.
 *
 * Namespaces are matched across paths by NSID plus NGUID / EUI-64 / UUID and block size: a
 * difference is {@link ErrorCode.MULTIPATH_NS_MISMATCH}, never a merge.
 */
import { EventEmitter } from 'node:events';
import { ErrorCode, NvmfNbdError } from '../errors';
import { NbdErrno } from '../block/errno';
import { BlockOpCode } from '../block/types';
import { AnaState, anaStateName, type AnaLog } from '../wire/ana';
import { Cns, PathStatus, Sct, sqeIdentify } from '../wire';
import type { IdentifyController } from '../wire';
import { formatUuid, parseNsIdDescriptors, type NamespaceIdentifiers } from '../wire/ns-descriptors';
import type { Completion } from '../transport/queue-command';
import type { AuthOutcome } from './auth';
import type { ControllerStats, NamespaceChanges, NamespaceInfo } from './controller';
import { Namespace, type NamespacePath } from './namespace';
import { IoRequest, ioDoneLater, type IoOwner } from './io-request';
import { CtrlState, RESILIENCE_DEFAULTS, ResilientController, type CtrlStateDescription, type CtrlStateValue } from './resilient';
import { PathEntry, pathId, type MultipathPath, type PathController, type PathOptions } from './multipath-path';

export { pathId, type MultipathPath, type PathController, type PathOptions } from './multipath-path';

/** I/O policies, Linux's names (sysfs `iopolicy` of an nvme-subsystem). */
export const IoPolicy = { NUMA: 'numa', ROUND_ROBIN: 'round-robin', QUEUE_DEPTH: 'queue-depth' } as const;
export type IoPolicyValue = (typeof IoPolicy)[keyof typeof IoPolicy];
/** As Linux: numa (here: the first optimized path). */
export const DEFAULT_IOPOLICY: IoPolicyValue = IoPolicy.NUMA;

/** An I/O policy from its name; CLI_ERR_USAGE otherwise. */
export function parseIoPolicy(s: string): IoPolicyValue {
  for (const v of Object.values(IoPolicy)) if (v === s) return v;
  throw new NvmfNbdError(ErrorCode.CLI_USAGE, `--iopolicy '${s}': expected numa, round-robin or queue-depth`);
}

/** Clock and timers of the multipath layer (injected by tests; default Date.now / setTimeout). */
export interface MultipathClock {
  now(): number;
  setTimer(fn: () => void, ms: number): unknown;
  clearTimer(t: unknown): void;
}

const REAL_CLOCK: MultipathClock = {
  now: () => Date.now(),
  setTimer: (fn, ms) => setTimeout(fn, Math.min(Math.max(0, ms), 2 ** 31 - 1)),
  clearTimer: (t) => clearTimeout(t as NodeJS.Timeout),
};

/** Options of {@link MultipathController}. */
export interface MultipathOptions {
  /** Path selection (default {@link DEFAULT_IOPOLICY}). */
  readonly iopolicy?: IoPolicyValue;
  /** Override of {@link writeHoldTimeMs} (tests). */
  readonly writeHoldMs?: number;
  /** Clock and timers (tests). */
  readonly clock?: MultipathClock;
  /** How a path is connected (tests hand in fakes; default `ResilientController.connect`). */
  readonly connectPath?: (o: PathOptions) => Promise<PathController>;
}

/**
 * How long after a path's association was lost a write that was outstanding on it may be
 * re-issued elsewhere: KATO + CQT (the target drops a silent association after KATO, and its
 * controller may still execute commands for CQT after that, NVMe 2.1 §9.6). A target that reports
 * no CQT is given KATO + the keep-alive grace (default max(5 s, KATO/2)) instead — Linux nvmet
 * with traffic-based keep-alive keeps a silent association up to 2·KATO. Counted from the moment
 * the loss was detected, which is no earlier than the last contact.
 */
export function writeHoldTimeMs(kato: number, cqtMs: number, targetGraceMs?: number): number {
  return kato + (cqtMs > 0 ? cqtMs : kato + (targetGraceMs ?? Math.max(5000, Math.floor(kato / 2))));
}

/** Sends of one request after path statuses before its status reaches the client. */
const MAX_PATH_RETRIES = 16;
/** ANATT when the controller reports 0 (seconds). */
const DEFAULT_ANATT_S = 10;

/** JSON-able topology of one subsystem (`list`, `show-topology`). */
export interface SubsystemTopology {
  subnqn: string;
  iopolicy: IoPolicyValue;
  state: CtrlStateValue;
  paths: PathTopology[];
  namespaces: NamespaceTopology[];
}
export interface PathTopology {
  id: string;
  traddr: string;
  trsvcid: number;
  hostTraddr?: string;
  cntlid: number;
  state: CtrlStateValue;
  reconnects: number;
  lastError?: { code: string; message: string };
  anaGroups: Array<{ grpid: number; state: string }>;
  queueDepth: number;
  io: { reads: number; writes: number; other: number; bytesRead: number; bytesWritten: number; failovers: number; pathErrors: number };
}
export interface NamespaceTopology {
  nsid: number;
  ids?: { nguid?: string; eui64?: string; uuid?: string };
  heldWrites: number;
  paths: Array<{ id: string; anaGroup: number; anaState: string; usable: boolean; current: boolean }>;
}

/** Candidate paths of one namespace, recomputed after any path / ANA / namespace change. */
interface Route {
  optimized: PathEntry[];
  nonOptimized: PathEntry[];
  /** Some live path may become usable by an ANA change: wait for it. */
  waitAna: boolean;
  /** No live path: the reconnecting (or last) path that holds the request under its own rules. */
  fallback: PathEntry | undefined;
  rr: number;
}

/** A range written by a request held after its path was lost (new overlapping writes wait). */
interface Fence {
  readonly nsid: number;
  readonly start: bigint;
  readonly end: bigint;
  /** The record (undefined for deallocate / write zeroes, which fence with their own entry). */
  readonly req: IoRequest | undefined;
  /** The path it was lost on and when it may run again. */
  path: PathEntry;
  deadline: number;
  timer: unknown;
  /** Re-issued (running again); the fence stays until it completes. */
  released: boolean;
  /** For promise operations: resume them. */
  wake: (() => void) | undefined;
}

function isPathStatus(err: NvmfNbdError): boolean {
  return err.code === ErrorCode.NVME_STATUS && err.status !== undefined && err.status.sct === Sct.PATH;
}

function idsEqual(a: NamespaceIdentifiers, b: NamespaceIdentifiers): boolean {
  const same = (x: Buffer | undefined, y: Buffer | undefined): boolean => (x === undefined ? y === undefined : y !== undefined && x.equals(y));
  return same(a.nguid, b.nguid) && same(a.eui64, b.eui64) && same(a.uuid, b.uuid);
}

/** NGUID / EUI-64 from Identify Namespace (no admin command): what can be compared synchronously. */
function identifyIds(info: NamespaceInfo | undefined): NamespaceIdentifiers {
  const out: NamespaceIdentifiers = {};
  if (info === undefined) return out;
  if (info.identify.nguid.some((x) => x !== 0)) out.nguid = info.identify.nguid;
  if (info.identify.eui64.some((x) => x !== 0)) out.eui64 = info.identify.eui64;
  return out;
}

function eio(code: NvmfNbdError['code'], message: string, cause?: unknown): NvmfNbdError {
  return new NvmfNbdError(code, message, { errno: NbdErrno.EIO, cause });
}

/** See the module comment. */
export class MultipathController extends EventEmitter implements NamespacePath, IoOwner {
  private readonly pathList: PathEntry[] = [];
  private policy: IoPolicyValue;
  private readonly clock: MultipathClock;
  private readonly connectPath: (o: PathOptions) => Promise<PathController>;
  private readonly writeHoldOverride: number | undefined;
  private readonly readOnly: boolean;
  private readonly subnqn: string;
  /** The exported block device of each namespace. */
  private readonly nsObjects = new Map<number, Namespace>();
  private readonly routes = new Map<number, Route>();
  /** Requests waiting for a usable path (ANA), in submission order. */
  private readonly waiting: IoRequest[] = [];
  private waitingBytes = 0;
  private waitTimer: unknown;
  /** Promise operations waiting for a usable path. */
  private readonly opWaiters: Array<() => void> = [];
  /** Held writes (and their re-issues), until they complete. */
  private readonly fences: Fence[] = [];
  /** New writes waiting behind an overlapping fence, in submission order. */
  private readonly blocked: IoRequest[] = [];
  private seq = 0;
  private stateValue: CtrlStateValue = CtrlState.LIVE;
  private stateSince = new Date();
  private closing: Promise<void> | undefined;
  /** close() was called (set before anything else it does). */
  private stopping = false;
  private closed = false;
  private closeEmitted = false;
  private deadErr: NvmfNbdError | undefined;
  /** Errors of paths removed after they died (their reconnects count on). */
  private removedReconnects = 0;

  private constructor(first: PathController, o: MultipathOptions) {
    super();
    this.policy = o.iopolicy ?? DEFAULT_IOPOLICY;
    this.clock = o.clock ?? REAL_CLOCK;
    this.connectPath = o.connectPath ?? ((p) => ResilientController.connect(p));
    this.writeHoldOverride = o.writeHoldMs;
    this.readOnly = first.options.readOnlyNamespaces === true;
    this.subnqn = first.identify.subnqn;
    const p = new PathEntry(first);
    this.pathList.push(p);
    for (const info of first.namespaces.values()) this.makeNamespace(info);
    this.watch(p);
    this.stateValue = this.aggregateState();
  }

  /** Connect the first path; failing is an error, as with `ResilientController.connect`. */
  static async connect(first: PathOptions, o: MultipathOptions = {}): Promise<MultipathController> {
    const connect = o.connectPath ?? ((p: PathOptions) => ResilientController.connect(p));
    return new MultipathController(await connect(first), o);
  }

  /** A subsystem over an already connected path (tests, or a caller that built the controller). */
  static fromPath(first: PathController, o: MultipathOptions = {}): MultipathController {
    return new MultipathController(first, o);
  }

  // ---- paths ----------------------------------------------------------------------------------

  /** The paths, in the order they were added. */
  get paths(): readonly MultipathPath[] {
    return this.pathList;
  }

  get iopolicy(): IoPolicyValue {
    return this.policy;
  }
  set iopolicy(v: IoPolicyValue) {
    this.policy = parseIoPolicy(v);
  }

  /**
   * Connect one more path to this subsystem and use it. Rejects, closing the new association,
   * with CLI_ERR_ALREADY_CONNECTED (same address), NVMF_ERR_MULTIPATH_SUBSYSTEM_MISMATCH (another
   * SUBNQN) or NVMF_ERR_MULTIPATH_NS_MISMATCH (an NSID with other identifiers or block size).
   */
  async addPath(o: PathOptions): Promise<MultipathPath> {
    if (this.stopping) throw new NvmfNbdError(ErrorCode.CONTROLLER_DELETED, 'subsystem is closing');
    const id = pathId(o);
    if (this.pathList.some((p) => p.id === id)) throw new NvmfNbdError(ErrorCode.ALREADY_CONNECTED, `path ${id} of ${this.subnqn} is already connected`);
    const rc = await this.connectPath(o);
    return this.attachPath(rc);
  }

  /** Add an already connected path (see {@link addPath}; the controller is closed on a mismatch). */
  async attachPath(rc: PathController): Promise<MultipathPath> {
    const p = new PathEntry(rc);
    try {
      if (this.stopping) throw new NvmfNbdError(ErrorCode.CONTROLLER_DELETED, 'subsystem is closing');
      if (this.pathList.some((q) => q.id === p.id)) throw new NvmfNbdError(ErrorCode.ALREADY_CONNECTED, `path ${p.id} of ${this.subnqn} is already connected`);
      if (rc.identify.subnqn !== this.subnqn) {
        throw new NvmfNbdError(ErrorCode.MULTIPATH_SUBSYSTEM_MISMATCH, `path ${p.id} reached subsystem '${rc.identify.subnqn}', not '${this.subnqn}'`);
      }
      await this.checkIdentities(p);
    } catch (err) {
      await rc.close().catch(() => undefined);
      throw err;
    }
    this.pathList.push(p);
    this.watch(p);
    this.updatePassBack();
    const added: number[] = [];
    for (const info of rc.namespaces.values()) {
      if (this.nsObjects.has(info.nsid) || !info.usable) continue;
      this.makeNamespace(info);
      if (this.nsObjects.has(info.nsid)) added.push(info.nsid);
    }
    this.changed();
    this.emit('paths', { added: p.id });
    if (added.length > 0) this.emit('namespaces', { added, removed: [], resized: [] } satisfies NamespaceChanges);
    return p;
  }

  /**
   * Close one path. Reads in flight on it go to the other paths at once, writes after the
   * write-hold time (an orderly shutdown does not prove the target dropped what it queued).
   * Removing the last path closes the subsystem. CLI_ERR_NO_SUCH_CONTROLLER for an unknown id.
   */
  async removePath(id: string): Promise<void> {
    const p = this.pathList.find((x) => x.id === id);
    if (p === undefined) throw new NvmfNbdError(ErrorCode.NO_SUCH_CONTROLLER, `no path ${id} of ${this.subnqn}`);
    if (this.pathList.length === 1) {
      await this.close();
      return;
    }
    p.lostAt ??= this.clock.now();
    p.lostCntlid ??= p.controller.cntlid;
    p.removed = true;
    this.changed();
    try {
      await p.controller.close();
    } finally {
      this.dropPath(p);
    }
  }

  /** Forget a path (closed or dead); its held writes stay fenced until their deadline. */
  private dropPath(p: PathEntry): void {
    const i = this.pathList.indexOf(p);
    if (i < 0) return;
    this.pathList.splice(i, 1);
    this.removedReconnects += p.controller.reconnects;
    for (const off of p.unsubscribe.splice(0)) off();
    for (const t of p.anattTimers.values()) this.clock.clearTimer(t);
    p.anattTimers.clear();
    this.updatePassBack();
    this.changed();
    this.emit('paths', { removed: p.id });
  }

  /** Pass-back mode on every path while there are two or more (one path: today's behaviour). */
  private updatePassBack(): void {
    const on = this.pathList.length > 1;
    for (const p of this.pathList) p.controller.setPassBack(on);
  }

  private watch(p: PathEntry): void {
    const rc = p.controller;
    const onState = (st: CtrlStateValue): void => this.onPathState(p, st);
    const onNs = (ch: NamespaceChanges): void => this.onPathNamespaces(p, ch);
    const onAna = (log: AnaLog): void => this.onPathAna(p, log);
    const onDead = (err: NvmfNbdError): void => this.onPathDead(p, err);
    const onWarning = (err: unknown): void => { this.emit('warning', err); };
    const onHandback = (records: IoRequest[], err: NvmfNbdError): void => this.onHandback(p, records, err);
    rc.on('state', onState);
    rc.on('handback', onHandback);
    rc.on('namespaces', onNs);
    rc.on('ana', onAna);
    rc.on('dead', onDead);
    rc.on('warning', onWarning);
    p.unsubscribe.push(() => {
      rc.off('state', onState);
      rc.off('handback', onHandback);
      rc.off('namespaces', onNs);
      rc.off('ana', onAna);
      rc.off('dead', onDead);
      rc.off('warning', onWarning);
    });
    this.armAnatt(p);
  }

  private onPathState(p: PathEntry, st: CtrlStateValue): void {
    if (st !== CtrlState.LIVE) {
      if (p.lostAt === undefined) {
        p.lostAt = this.clock.now();
        p.lostCntlid = p.controller.cntlid;
      }
    } else {
      // A new association: its bring-up read a fresh ANA log. The old one is proven gone when the
      // cntlid differs (the resilient controller resumes only after its own quiesce time).
      p.applyAnaLog(p.controller.anaLog);
      this.armAnatt(p);
      const provenGone = p.lostCntlid !== undefined && p.controller.cntlid !== p.lostCntlid;
      p.lostAt = undefined;
      p.lostCntlid = undefined;
      if (provenGone) for (const f of [...this.fences]) if (f.path === p && !f.released) this.releaseFence(f);
    }
    this.changed();
    if (st === CtrlState.LIVE && this.pathList.length > 1) this.pullHeld(p);
    this.emit('paths', { state: { id: p.id, state: st } });
  }

  /** A path came up: requests other reconnecting paths hold (never sent) may run on it now. */
  private pullHeld(live: PathEntry): void {
    for (const q of this.pathList) {
      if (q === live || q.controller.state !== CtrlState.CONNECTING) continue;
      for (const req of q.controller.takeHeldRecords()) {
        this.detach(req);
        this.route(req);
      }
    }
  }

  /**
   * A reconnecting path gave up on the records it held (fast_io_fail_tmo or ctrl_loss_tmo; none
   * was sent): run them on another path that is live or still holds I/O, else fail them with
   * the path's error — only when no path can take them does the namespace fail them.
   */
  private onHandback(p: PathEntry, records: IoRequest[], err: NvmfNbdError): void {
    this.changed();
    const elsewhere = this.canServeElsewhere(p);
    for (const req of records) {
      this.detach(req);
      if (elsewhere) this.route(req, p);
      else this.finishLater(req, err);
    }
  }

  /** A record a path gave back unsent: no longer counted in that path's queue depth. */
  private detach(req: IoRequest): void {
    const from = req.mpPath as PathEntry | undefined;
    if (from !== undefined) from.inflight--;
    req.mpPath = undefined;
  }

  /** Whether a path other than `p` is live or would hold I/O for its reconnect. */
  private canServeElsewhere(p: PathEntry): boolean {
    return this.pathList.some((q) => q !== p && !q.removed && (q.controller.state === CtrlState.LIVE || q.controller.holdsIo));
  }

  private onPathDead(p: PathEntry, err: NvmfNbdError): void {
    if (this.pathList.length > 1) {
      this.emit('warning', new NvmfNbdError(err.code, `path ${p.id} of ${this.subnqn} removed: ${err.message}`, { cause: err }));
      this.dropPath(p);
      return;
    }
    this.deadErr = err;
    this.changed();
  }

  private onPathAna(p: PathEntry, log: AnaLog): void {
    p.applyAnaLog(log);
    this.armAnatt(p);
    this.changed();
    this.emit('ana', { path: p.id, groups: p.groupList() });
  }

  /** ANATT for every group of `p` in change: still in change then → treated as inaccessible. */
  private armAnatt(p: PathEntry): void {
    const inChange = new Set(p.groupsInChange());
    for (const [g, t] of p.anattTimers) {
      if (inChange.has(g)) continue;
      this.clock.clearTimer(t);
      p.anattTimers.delete(g);
    }
    const anatt = (p.controller.identify.anatt || DEFAULT_ANATT_S) * 1000;
    for (const g of inChange) {
      if (p.anattTimers.has(g)) continue;
      p.anattTimers.set(g, this.clock.setTimer(() => {
        p.anattTimers.delete(g);
        if (!p.expireChange(g)) return;
        this.emit('warning', new NvmfNbdError(ErrorCode.NO_USABLE_PATH, `path ${p.id}: ANA group ${g} still in change after ANATT (${anatt} ms): treated as inaccessible`));
        this.refreshAna(p);
        this.changed();
      }, anatt));
    }
  }

  private refreshAna(p: PathEntry): void {
    if (p.refreshing || p.controller.state !== CtrlState.LIVE || !p.controller.anaReporting) return;
    p.refreshing = true;
    // The log arrives through the path's 'ana' event (onPathAna).
    p.controller.refreshAnaLog().catch((err: unknown) => { this.emit('warning', err); }).finally(() => { p.refreshing = false; });
  }

  // ---- namespaces -------------------------------------------------------------------------------

  /** The block device of namespace `nsid` (what an NBD export serves), as ResilientController.namespace. */
  namespace(nsid: number): Namespace | undefined {
    return this.nsObjects.get(nsid);
  }

  private makeNamespace(info: NamespaceInfo): void {
    if (!info.usable) return;
    try {
      this.nsObjects.set(info.nsid, new Namespace(this, info, { readOnly: this.readOnly }));
    } catch {
      // Not servable (e.g. beyond 2^53 bytes): no object; the session reports the reason.
    }
  }

  /**
   * Active namespaces of the subsystem: every path's, the primary path's info first; never a
   * path's info for an NSID that is another namespace there (mismatched), the primary's included.
   */
  get namespaces(): ReadonlyMap<number, NamespaceInfo> {
    const primary = this.primary();
    if (this.pathList.length === 1 && primary.mismatched.size === 0) return primary.controller.namespaces;
    const out = new Map<number, NamespaceInfo>();
    for (const p of [primary, ...this.pathList]) for (const [nsid, info] of p.controller.namespaces) if (!out.has(nsid) && !p.mismatched.has(nsid)) out.set(nsid, info);
    return out;
  }

  get namespacesOverLimit(): number {
    return this.primary().controller.namespacesOverLimit;
  }

  /** Identifiers of `nsid` on `p` (CNS 03h, cached; Identify Namespace NGUID / EUI-64 filled in). */
  private async readIds(p: PathEntry, nsid: number): Promise<NamespaceIdentifiers> {
    const cached = p.ids.get(nsid);
    if (cached !== undefined) return cached;
    let ids: NamespaceIdentifiers = {};
    try {
      const r = await p.controller.adminCommand(sqeIdentify(Cns.NS_ID_DESCRIPTORS, nsid), { dataInLength: 4096 });
      ids = parseNsIdDescriptors(r.data as Buffer);
    } catch {
      // CNS 03h is optional before NVMe 1.3: Identify Namespace still has NGUID and EUI-64.
    }
    const idns = identifyIds(p.controller.namespaces.get(nsid));
    ids.nguid ??= idns.nguid;
    ids.eui64 ??= idns.eui64;
    delete ids.csi;
    p.ids.set(nsid, ids);
    return ids;
  }

  /** Every NSID `p` shares with the subsystem must be the same namespace (ids, block size). */
  private async checkIdentities(p: PathEntry): Promise<void> {
    for (const [nsid, info] of p.controller.namespaces) {
      const ns = this.nsObjects.get(nsid);
      const other = this.pathList.find((q) => q.controller.namespaces.has(nsid) && !q.mismatched.has(nsid));
      if (ns === undefined && other === undefined) continue;
      const mine = await this.readIds(p, nsid);
      if (other !== undefined) {
        const theirs = await this.readIds(other, nsid);
        if (!idsEqual(mine, theirs)) {
          throw new NvmfNbdError(ErrorCode.MULTIPATH_NS_MISMATCH,
            `namespace ${nsid} on path ${p.id} has other identifiers (${describeIds(mine)}) than on path ${other.id} (${describeIds(theirs)}): not the same namespace, not merged`);
        }
      }
      if (ns !== undefined && info.usable && info.lbaSize !== ns.blockSize) {
        throw new NvmfNbdError(ErrorCode.MULTIPATH_NS_MISMATCH, `namespace ${nsid} on path ${p.id} has ${info.lbaSize}-byte blocks, the subsystem's has ${ns.blockSize}`);
      }
    }
  }

  /**
   * A path's namespace set changed (its AEN, or found after its reconnect). The subsystem's view
   * is the union: an object is retired only when no path has the namespace any more, or when its
   * block size changed (then a new object serves the new format; paths still on the old one are
   * not used for it). A namespace whose identifiers differ from the other paths' is not used on
   * this path (a warning with NVMF_ERR_MULTIPATH_NS_MISMATCH).
   */
  private onPathNamespaces(p: PathEntry, ch: NamespaceChanges): void {
    const out: NamespaceChanges = { added: [], removed: [], resized: [] };
    for (const nsid of [...ch.added, ...ch.resized, ...ch.removed]) p.ids.delete(nsid);
    for (const nsid of ch.removed) {
      p.mismatched.delete(nsid);
      if (this.pathList.some((q) => q.controller.namespaces.has(nsid))) continue;
      const old = this.nsObjects.get(nsid);
      if (old === undefined) continue;
      old.retire('removed');
      this.nsObjects.delete(nsid);
      out.removed.push(nsid);
    }
    for (const nsid of [...ch.added, ...ch.resized]) {
      const info = p.controller.namespaces.get(nsid);
      if (info === undefined) continue;
      const other = this.pathList.find((q) => q !== p && q.controller.namespaces.has(nsid) && !q.mismatched.has(nsid));
      if (other !== undefined && !idsEqual(identifyIds(info), identifyIds(other.controller.namespaces.get(nsid)))) {
        p.mismatched.add(nsid);
        this.emit('warning', new NvmfNbdError(ErrorCode.MULTIPATH_NS_MISMATCH, `namespace ${nsid} on path ${p.id} has other identifiers than on path ${other.id}: not used on ${p.id}`));
        continue;
      }
      p.mismatched.delete(nsid);
      const old = this.nsObjects.get(nsid);
      if (old === undefined) {
        this.makeNamespace(info);
        if (this.nsObjects.has(nsid)) out.added.push(nsid);
        continue;
      }
      if (ch.resized.includes(nsid)) {
        if (info.usable && info.lbaSize === old.blockSize) {
          out.resized.push(nsid);
        } else {
          old.retire(info.usable ? 'reformatted' : 'removed');
          this.nsObjects.delete(nsid);
          this.makeNamespace(info);
          out.resized.push(nsid);
        }
      }
    }
    this.changed();
    // One path: its change as it reported it (unusable namespaces included: the session lists them).
    if (this.pathList.length === 1) this.emit('namespaces', ch);
    else if (out.added.length + out.removed.length + out.resized.length > 0) this.emit('namespaces', out);
  }

  // ---- the primary path's facts (the session-facing surface of ResilientController) -------------

  /** The first live path, else the first path. */
  private primary(): PathEntry {
    for (const p of this.pathList) if (p.controller.state === CtrlState.LIVE) return p;
    return this.pathList[0] as PathEntry;
  }

  get options(): PathOptions { return this.primary().controller.options; }
  get cntlid(): number { return this.primary().controller.cntlid; }
  get identify(): IdentifyController { return this.primary().controller.identify; }
  get identifyRaw(): Buffer { return this.primary().controller.identifyRaw; }
  get ioQueueCount(): number { return this.primary().controller.ioQueueCount; }
  get maxTransfer(): number { return this.primary().controller.maxTransfer; }
  get version(): number { return this.primary().controller.version; }
  get oncs(): number { return this.primary().controller.oncs; }
  get volatileWriteCache(): boolean { return this.primary().controller.volatileWriteCache; }
  get authentication(): AuthOutcome | undefined { return this.primary().controller.authentication; }
  /** Queue counters of the primary path. */
  stats(): ControllerStats { return this.primary().controller.stats(); }

  /** Aggregate state: live if any path is, else connecting if any is, else deleting / dead. */
  get state(): CtrlStateValue {
    return this.stateValue;
  }
  /** Successful reconnects of every path (removed ones included). */
  get reconnects(): number {
    let n = this.removedReconnects;
    for (const p of this.pathList) n += p.controller.reconnects;
    return n;
  }
  /** The error of the primary path's last lost association (or of the path that died). */
  get lastError(): NvmfNbdError | undefined {
    return this.deadErr ?? this.primary().controller.lastError ?? this.pathList.find((p) => p.controller.lastError !== undefined)?.controller.lastError;
  }

  /** What `list` shows: the aggregate state, with the primary path's attempts. */
  describeState(): CtrlStateDescription {
    const d = this.primary().controller.describeState();
    const e = this.lastError;
    return {
      state: this.stateValue,
      reconnects: this.reconnects,
      attempts: d.attempts,
      ...(e !== undefined ? { lastError: { code: e.code, message: e.message } } : {}),
      since: this.stateSince.toISOString(),
    };
  }

  private aggregateState(): CtrlStateValue {
    if (this.closed) return CtrlState.DEAD;
    let connecting = false;
    let deleting = false;
    for (const p of this.pathList) {
      const st = p.controller.state;
      if (st === CtrlState.LIVE) return CtrlState.LIVE;
      if (st === CtrlState.CONNECTING) connecting = true;
      if (st === CtrlState.DELETING) deleting = true;
    }
    if (connecting) return CtrlState.CONNECTING;
    return deleting ? CtrlState.DELETING : CtrlState.DEAD;
  }

  /** Anything about paths changed: routes, waiting requests, the aggregate state. */
  private changed(): void {
    this.routes.clear();
    const st = this.aggregateState();
    if (st !== this.stateValue) {
      this.stateValue = st;
      this.stateSince = new Date();
      this.emit('state', st);
      if (st === CtrlState.DEAD && !this.stopping && !this.closeEmitted) {
        const err = this.deadErr ?? this.primary().controller.lastError ?? eio(ErrorCode.CONTROLLER_LOST, `subsystem ${this.subnqn}: every path is gone`);
        this.deadErr = err;
        this.failAllHeld(eio(err.code, err.message, err));
        this.closeEmitted = true;
        this.emit('dead', err);
        this.emit('close', err);
      }
    }
    this.drainWaiting();
  }

  // ---- path choice ------------------------------------------------------------------------------

  private routeFor(nsid: number): Route {
    let r = this.routes.get(nsid);
    if (r !== undefined) return r;
    const blockSize = this.nsObjects.get(nsid)?.blockSize ?? this.primary().controller.namespaces.get(nsid)?.lbaSize ?? 0;
    r = { optimized: [], nonOptimized: [], waitAna: false, fallback: undefined, rr: 0 };
    let connecting: PathEntry | undefined;
    let holding: PathEntry | undefined;
    let serving: PathEntry | undefined;
    let live = false;
    for (const p of this.pathList) {
      if (p.removed || !p.serves(nsid, blockSize)) continue;
      serving ??= p;
      const st = p.controller.state;
      if (st === CtrlState.CONNECTING) {
        connecting ??= p;
        if (p.controller.holdsIo) holding ??= p;
      }
      if (st !== CtrlState.LIVE) continue;
      live = true;
      const ana = p.anaState(nsid);
      if (ana === AnaState.OPTIMIZED) r.optimized.push(p);
      else if (ana === AnaState.NON_OPTIMIZED) r.nonOptimized.push(p);
      else if (ana !== AnaState.PERSISTENT_LOSS) r.waitAna = true;
    }
    // No live path at all: the single-path rules of a reconnecting path — one that still holds
    // I/O before one whose fast_io_fail_tmo expired — or the errors of a deleting / dead one.
    // Live paths all in persistent loss with none reconnecting: fail.
    if (!live || (!r.waitAna && r.optimized.length + r.nonOptimized.length === 0)) r.fallback = holding ?? connecting ?? (live ? undefined : serving ?? this.pathList.find((p) => !p.removed));
    this.routes.set(nsid, r);
    return r;
  }

  /** The path for a request of `nsid` now; 'wait' (ANA) or 'fail' (no path can serve it). */
  private choose(nsid: number, avoid?: PathEntry): PathEntry | 'wait' | 'fail' {
    const r = this.routeFor(nsid);
    const list = r.optimized.length > 0 ? r.optimized : r.nonOptimized;
    if (list.length > 0) return this.pick(r, list, avoid);
    if (r.waitAna) return 'wait';
    return r.fallback ?? 'fail';
  }

  private pick(r: Route, list: PathEntry[], avoid: PathEntry | undefined): PathEntry {
    const n = list.length;
    if (n === 1) return list[0] as PathEntry;
    let best: PathEntry;
    switch (this.policy) {
      case IoPolicy.ROUND_ROBIN:
        best = list[r.rr++ % n] as PathEntry;
        break;
      case IoPolicy.QUEUE_DEPTH: {
        best = list[0] as PathEntry;
        for (let i = 1; i < n; i++) {
          const p = list[i] as PathEntry;
          if (p.inflight < best.inflight) best = p;
        }
        break;
      }
      default:
        best = list[0] as PathEntry;
    }
    if (best === avoid) best = list[(list.indexOf(best) + 1) % n] as PathEntry;
    return best;
  }

  /** The path `numa` / the policy would pick now for `nsid` (topology's `current`). */
  private currentPath(nsid: number): PathEntry | undefined {
    const r = this.routeFor(nsid);
    const list = r.optimized.length > 0 ? r.optimized : r.nonOptimized;
    if (list.length === 0) return r.fallback;
    if (this.policy === IoPolicy.QUEUE_DEPTH) return list.reduce((a, b) => (b.inflight < a.inflight ? b : a));
    if (this.policy === IoPolicy.ROUND_ROBIN) return list[r.rr % list.length];
    return list[0];
  }

  // ---- the record path ------------------------------------------------------------------------

  /**
   * NamespacePath: run a READ / WRITE / FLUSH record on a path. Completes once through the owner
   * it had when submitted, never synchronously.
   */
  submitIo(req: IoRequest): void {
    req.outer = req.owner;
    req.owner = this;
    req.mpRetries = 0;
    req.pathLost = false;
    req.mpSeq = this.seq++;
    if (this.fences.length > 0 && req.op === BlockOpCode.WRITE && this.overlapsFence(req.nsid, req.slba, req.nlb)) {
      this.blocked.push(req);
      return;
    }
    this.route(req);
  }

  private route(req: IoRequest, avoid?: PathEntry): void {
    if (this.closed || this.stopping) {
      this.finishLater(req, new NvmfNbdError(ErrorCode.CONTROLLER_DELETED, 'subsystem is being closed', { errno: NbdErrno.ESHUTDOWN }));
      return;
    }
    const retired = req.ns?.retiredReason;
    if (retired !== undefined) {
      this.finishLater(req, retired);
      return;
    }
    const p = this.choose(req.nsid, avoid);
    if (p === 'wait') {
      this.wait(req);
      return;
    }
    if (p === 'fail') {
      this.finishLater(req, eio(ErrorCode.NO_USABLE_PATH, `namespace ${req.nsid} of ${this.subnqn}: no path can serve it (every path in persistent loss or gone)`));
      return;
    }
    req.mpPath = p;
    p.inflight++;
    p.controller.submitIo(req);
  }

  /** A path's completion of a record (IoOwner). */
  onIoDone(req: IoRequest, err: NvmfNbdError | undefined): void {
    const p = req.mpPath as PathEntry | undefined;
    req.mpPath = undefined;
    if (p !== undefined) p.inflight--;
    if (err === undefined) {
      if (p !== undefined) this.count(p, req);
      this.finish(req, undefined);
      return;
    }
    if (req.pathLost) {
      req.pathLost = false;
      if (p !== undefined) {
        p.io.failovers++;
        this.lostInFlight(p, req, err);
      } else {
        this.finish(req, err);
      }
      return;
    }
    if (isPathStatus(err) && p !== undefined && req.ns?.retiredReason === undefined && req.mpRetries < MAX_PATH_RETRIES && this.closing === undefined) {
      req.mpRetries++;
      this.notePathStatus(p, req.nsid, err);
      // Answered with a status: the command is over on that path, sending it again is safe.
      this.route(req, p);
      return;
    }
    this.finish(req, err);
  }

  private count(p: PathEntry, req: IoRequest): void {
    const io = p.io;
    if (req.op === BlockOpCode.READ) {
      io.reads++;
      io.bytesRead += req.payloadBytes;
    } else if (req.op === BlockOpCode.WRITE) {
      io.writes++;
      io.bytesWritten += req.payloadBytes;
    } else {
      io.other++;
    }
  }

  /** Correct the path's ANA view from a path status, and re-read its log. */
  private notePathStatus(p: PathEntry, nsid: number, err: NvmfNbdError): void {
    p.io.pathErrors++;
    const sc = err.status?.sc;
    const state = sc === PathStatus.ANA_INACCESSIBLE ? AnaState.INACCESSIBLE
      : sc === PathStatus.ANA_PERSISTENT_LOSS ? AnaState.PERSISTENT_LOSS
        : sc === PathStatus.ANA_TRANSITION ? AnaState.CHANGE : undefined;
    if (state !== undefined) {
      p.noteStatus(nsid, state);
      this.armAnatt(p);
      this.routes.clear();
    }
    this.refreshAna(p);
  }

  /** Hand the record back to the namespace. */
  private finish(req: IoRequest, err: NvmfNbdError | undefined): void {
    if (this.fences.length > 0 && req.op !== BlockOpCode.READ) this.unfence(req);
    req.owner = req.outer;
    req.outer = undefined;
    (req.owner as IoOwner).onIoDone(req, err);
  }

  private finishLater(req: IoRequest, err: NvmfNbdError): void {
    if (this.fences.length > 0 && req.op !== BlockOpCode.READ) this.unfence(req);
    req.owner = req.outer;
    req.outer = undefined;
    ioDoneLater(req, err);
  }

  // ---- waiting for a usable path (ANA) ---------------------------------------------------------

  private wait(req: IoRequest): void {
    const limit = this.primary().controller.options.holdLimitBytes ?? RESILIENCE_DEFAULTS.holdLimitBytes;
    const bytes = req.payloadBytes;
    if (this.waitingBytes + bytes > limit) {
      this.finishLater(req, eio(ErrorCode.HOLD_QUEUE_FULL, `no usable path: ${this.waitingBytes} bytes of I/O already waiting (limit ${limit})`));
      return;
    }
    this.waiting.push(req);
    this.waitingBytes += bytes;
    if (this.waitTimer === undefined) {
      // No path became usable within ctrl_loss_tmo: give up on what waits (as a lost controller would).
      const tmo = this.primary().controller.options.ctrlLossTmoMs ?? RESILIENCE_DEFAULTS.ctrlLossTmoMs;
      if (tmo >= 0) {
        this.waitTimer = this.clock.setTimer(() => {
          this.waitTimer = undefined;
          this.failWaiting(eio(ErrorCode.NO_USABLE_PATH, `subsystem ${this.subnqn}: no usable path (ANA) within ctrl_loss_tmo (${tmo} ms)`));
        }, tmo);
      }
    }
  }

  private drainWaiting(): void {
    if (this.waiting.length > 0) {
      const reqs = this.waiting.splice(0);
      this.waitingBytes = 0;
      for (const req of reqs) this.route(req);
    }
    if (this.waiting.length === 0 && this.waitTimer !== undefined) {
      this.clock.clearTimer(this.waitTimer);
      this.waitTimer = undefined;
    }
    if (this.opWaiters.length > 0) for (const w of this.opWaiters.splice(0)) w();
  }

  private failWaiting(err: NvmfNbdError): void {
    const reqs = this.waiting.splice(0);
    this.waitingBytes = 0;
    for (const req of reqs) this.finish(req, err);
  }

  // ---- the write-hold rule ------------------------------------------------------------------------

  /** The write-hold time of a path (see {@link writeHoldTimeMs}). */
  holdTimeMs(p: MultipathPath): number {
    if (this.writeHoldOverride !== undefined) return this.writeHoldOverride;
    const rc = p.controller;
    return writeHoldTimeMs(rc.options.kato ?? 5000, rc.identify.cqt, rc.options.targetKeepAliveGraceMs);
  }

  /** A record came back from a path whose association died while it was outstanding. */
  private lostInFlight(p: PathEntry, req: IoRequest, err: NvmfNbdError): void {
    if (this.stopping) {
      this.finish(req, new NvmfNbdError(ErrorCode.CONTROLLER_DELETED, 'subsystem is being closed', { errno: NbdErrno.ESHUTDOWN, cause: err }));
      return;
    }
    if (req.op === BlockOpCode.READ) {
      // A read cannot corrupt anything: again at once, on a healthy path if there is one.
      this.route(req, p);
      return;
    }
    const existing = this.fences.find((f) => f.req === req);
    const lostAt = p.lostAt ?? this.clock.now();
    const deadline = lostAt + this.holdTimeMs(p);
    if (existing !== undefined) {
      existing.path = p;
      existing.deadline = deadline;
      existing.released = false;
      this.armFence(existing);
      return;
    }
    const end = req.op === BlockOpCode.FLUSH ? 0n : req.slba + BigInt(req.nlb);
    const f: Fence = { nsid: req.nsid, start: req.op === BlockOpCode.FLUSH ? 0n : req.slba, end, req, path: p, deadline, timer: undefined, released: false, wake: undefined };
    this.fences.push(f);
    this.armFence(f);
  }

  private armFence(f: Fence): void {
    if (f.timer !== undefined) this.clock.clearTimer(f.timer);
    f.timer = this.clock.setTimer(() => {
      f.timer = undefined;
      this.releaseFence(f);
    }, f.deadline - this.clock.now());
  }

  /** The old copy can no longer execute: send the held request again (the fence stays until it completes). */
  private releaseFence(f: Fence): void {
    if (f.released) return;
    f.released = true;
    if (f.timer !== undefined) this.clock.clearTimer(f.timer);
    f.timer = undefined;
    if (f.req !== undefined) this.route(f.req, f.path);
    else f.wake?.();
  }

  private overlapsFence(nsid: number, slba: bigint, nlb: number): boolean {
    const end = slba + BigInt(nlb);
    for (const f of this.fences) if (f.nsid === nsid && f.start < end && slba < f.end) return true;
    return false;
  }

  /** `req` (a fenced write's re-issue) is done: drop its fence, let blocked writes go. */
  private unfence(req: IoRequest): void {
    const i = this.fences.findIndex((f) => f.req === req);
    if (i < 0) return;
    this.removeFence(i);
  }

  private removeFence(i: number): void {
    const f = this.fences[i] as Fence;
    if (f.timer !== undefined) this.clock.clearTimer(f.timer);
    this.fences.splice(i, 1);
    this.unblock();
    if (this.opWaiters.length > 0) for (const w of this.opWaiters.splice(0)) w();
  }

  private unblock(): void {
    if (this.blocked.length === 0) return;
    const still: IoRequest[] = [];
    for (const b of this.blocked.splice(0)) {
      if (this.overlapsFence(b.nsid, b.slba, b.nlb)) still.push(b);
      else this.route(b);
    }
    this.blocked.push(...still);
  }

  /** Writes held after a path loss (waiting for their deadline or running again), per namespace. */
  heldWrites(nsid?: number): number {
    let n = 0;
    for (const f of this.fences) if (nsid === undefined || f.nsid === nsid) n++;
    return n;
  }

  // ---- promise operations: deallocate, write zeroes --------------------------------------------

  deallocate(nsid: number, ranges: ReadonlyArray<{ slba: bigint; nlb: number }>, ns?: Namespace): Promise<void> {
    let start = -1n;
    let end = 0n;
    for (const r of ranges) {
      if (start < 0n || r.slba < start) start = r.slba;
      const e = r.slba + BigInt(r.nlb);
      if (e > end) end = e;
    }
    return this.runOp(nsid, start < 0n ? 0n : start, end, ns, (c) => c.deallocate(nsid, ranges, ns));
  }

  writeZeroes(nsid: number, slba: bigint, nlb: number, o: { deallocate?: boolean; fua?: boolean } = {}, ns?: Namespace): Promise<void> {
    return this.runOp(nsid, slba, slba + BigInt(nlb), ns, (c) => c.writeZeroes(nsid, slba, nlb, o, ns));
  }

  /**
   * A write-like operation as a promise, under the same rules as a WRITE record: it waits behind
   * overlapping held writes, runs on the chosen path, is retried after a path status, and — lost
   * with its path — fences its range until the write-hold deadline before it runs again.
   */
  private async runOp(nsid: number, start: bigint, end: bigint, ns: Namespace | undefined, run: (c: PathController) => Promise<void>): Promise<void> {
    while (this.overlapsFence(nsid, start, end > start ? Number(end - start) : 0)) await this.nextChange();
    let fence: Fence | undefined;
    let avoid: PathEntry | undefined;
    try {
      for (let tries = 0; ; tries++) {
        if (this.stopping) throw new NvmfNbdError(ErrorCode.CONTROLLER_DELETED, 'subsystem is being closed', { errno: NbdErrno.ESHUTDOWN });
        const retired = ns?.retiredReason;
        if (retired !== undefined) throw retired;
        const p = this.choose(nsid, avoid);
        if (p === 'wait') {
          await this.nextChange();
          continue;
        }
        if (p === 'fail') throw eio(ErrorCode.NO_USABLE_PATH, `namespace ${nsid} of ${this.subnqn}: no path can serve it`);
        p.inflight++;
        try {
          await run(p.controller);
          p.io.other++;
          return;
        } catch (err) {
          if (!(err instanceof NvmfNbdError)) throw err;
          if (err.code === ErrorCode.PATH_LOST) {
            p.io.failovers++;
            const deadline = (p.lostAt ?? this.clock.now()) + this.holdTimeMs(p);
            if (fence === undefined) {
              fence = { nsid, start, end, req: undefined, path: p, deadline, timer: undefined, released: false, wake: undefined };
              this.fences.push(fence);
            }
            fence.path = p;
            fence.deadline = deadline;
            fence.released = false;
            const f = fence;
            await new Promise<void>((resolve) => {
              f.wake = resolve;
              this.armFence(f);
            });
            avoid = p;
            continue;
          }
          if (isPathStatus(err) && tries < MAX_PATH_RETRIES) {
            this.notePathStatus(p, nsid, err);
            avoid = p;
            continue;
          }
          // Held by a reconnecting path until its fast_io_fail_tmo / ctrl_loss_tmo ended (never
          // sent: one lost in flight is PATH_LOST above): another path that holds I/O takes it.
          if (err.code === ErrorCode.CONTROLLER_LOST && p.controller.state !== CtrlState.LIVE && !p.controller.holdsIo && this.canServeElsewhere(p) && tries < MAX_PATH_RETRIES) {
            avoid = p;
            continue;
          }
          throw err;
        } finally {
          p.inflight--;
        }
      }
    } finally {
      if (fence !== undefined) {
        const i = this.fences.indexOf(fence);
        if (i >= 0) this.removeFence(i);
      }
    }
  }

  /** Resolves at the next path / ANA / fence change. */
  private nextChange(): Promise<void> {
    return new Promise((resolve) => { this.opWaiters.push(resolve); });
  }

  // ---- admin ------------------------------------------------------------------------------------

  /** An admin command on the primary path (see ResilientController.adminCommand). */
  adminCommand(sqe: Buffer, o: { dataOut?: Buffer; dataInLength?: number; timeoutMs?: number; passthru?: boolean } = {}): Promise<Completion> {
    return this.primary().controller.adminCommand(sqe, o);
  }

  // ---- topology -----------------------------------------------------------------------------------

  /** Paths, ANA states, queue depths, I/O counts and the current choice per namespace (JSON-able). */
  topology(): SubsystemTopology {
    const paths: PathTopology[] = this.pathList.map((p) => {
      const rc = p.controller;
      const e = rc.lastError;
      return {
        id: p.id, traddr: p.traddr, trsvcid: p.trsvcid,
        ...(p.hostTraddr !== undefined ? { hostTraddr: p.hostTraddr } : {}),
        cntlid: rc.cntlid, state: rc.state, reconnects: rc.reconnects,
        ...(e !== undefined ? { lastError: { code: e.code, message: e.message } } : {}),
        anaGroups: p.groupList(), queueDepth: p.inflight, io: { ...p.io },
      };
    });
    const namespaces: NamespaceTopology[] = [...this.nsObjects.values()].sort((a, b) => a.nsid - b.nsid).map((ns) => {
      const cur = this.currentPath(ns.nsid);
      const ids = this.pathList.map((p) => p.ids.get(ns.nsid)).find((x) => x !== undefined) ?? identifyIds(this.primary().controller.namespaces.get(ns.nsid));
      const text = {
        ...(ids.nguid !== undefined ? { nguid: ids.nguid.toString('hex') } : {}),
        ...(ids.eui64 !== undefined ? { eui64: ids.eui64.toString('hex') } : {}),
        ...(ids.uuid !== undefined ? { uuid: formatUuid(ids.uuid) } : {}),
      };
      return {
        nsid: ns.nsid,
        ...(Object.keys(text).length > 0 ? { ids: text } : {}),
        heldWrites: this.heldWrites(ns.nsid),
        paths: this.pathList.filter((p) => p.controller.namespaces.has(ns.nsid)).map((p) => ({
          id: p.id,
          anaGroup: p.groupOf(ns.nsid),
          anaState: anaStateName(p.anaState(ns.nsid)),
          usable: p.controller.state === CtrlState.LIVE && p.serves(ns.nsid, ns.blockSize) && p.accessible(ns.nsid),
          current: p === cur,
        })),
      };
    });
    return { subnqn: this.subnqn, iopolicy: this.policy, state: this.stateValue, paths, namespaces };
  }

  // ---- lifecycle ----------------------------------------------------------------------------------

  private failAllHeld(err: NvmfNbdError): void {
    this.failWaiting(err);
    for (const f of this.fences.splice(0)) {
      if (f.timer !== undefined) this.clock.clearTimer(f.timer);
      if (f.req !== undefined && !f.released) this.finish(f.req, err);
      else f.wake?.();
    }
    for (const b of this.blocked.splice(0)) this.finish(b, err);
    if (this.opWaiters.length > 0) for (const w of this.opWaiters.splice(0)) w();
  }

  /** Close every path; held and waiting requests fail (CONTROLLER_DELETED, ESHUTDOWN). Never throws. */
  close(): Promise<void> {
    this.stopping = true;
    this.closing ??= (async () => {
      this.failAllHeld(new NvmfNbdError(ErrorCode.CONTROLLER_DELETED, 'subsystem closed', { errno: NbdErrno.ESHUTDOWN }));
      if (this.waitTimer !== undefined) this.clock.clearTimer(this.waitTimer);
      this.waitTimer = undefined;
      this.changed();
      await Promise.all(this.pathList.map((p) => p.controller.close().catch(() => undefined)));
      for (const p of this.pathList) {
        for (const t of p.anattTimers.values()) this.clock.clearTimer(t);
        p.anattTimers.clear();
      }
      this.closed = true;
      this.changed();
      if (!this.closeEmitted) {
        this.closeEmitted = true;
        this.emit('close', undefined);
      }
    })();
    return this.closing;
  }
}

function describeIds(ids: NamespaceIdentifiers): string {
  const parts: string[] = [];
  if (ids.nguid !== undefined) parts.push(`NGUID ${ids.nguid.toString('hex')}`);
  if (ids.eui64 !== undefined) parts.push(`EUI-64 ${ids.eui64.toString('hex')}`);
  if (ids.uuid !== undefined) parts.push(`UUID ${formatUuid(ids.uuid)}`);
  return parts.length > 0 ? parts.join(', ') : 'none';
}
