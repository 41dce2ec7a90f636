/**
 * One path of a multipath subsystem (`multipath.ts`): a {@link ResilientController} (one
 * association, with its own reconnects) plus what the multipath layer knows about it — the ANA
 * state of each ANA group as this controller reports it (ANA log page LID 0Ch, updated on the
 * ANA change notice and corrected by path statuses), the ANATT timer of groups in `change`,
 * per-path I/O counters and queue depth, and the loss the write-hold rule counts from.
 *
 * Pure bookkeeping: no I/O is issued here.
 */
import type { EventEmitter } from 'node:events';
import { AnaState, anaStateAccessible, anaStateName, type AnaLog } from '../wire/ana';
import type { Completion } from '../transport/queue-command';
import type { AuthOutcome } from './auth';
import type { ControllerOptions, ControllerStats, NamespaceInfo } from './controller';
import type { IoRequest } from './io-request';
import type { Namespace } from './namespace';
import type { CtrlStateDescription, CtrlStateValue, ResilienceOptions } from './resilient';
import type { IdentifyController } from '../wire';
import type { NvmfNbdError } from '../errors';
import type { NamespaceIdentifiers } from '../wire/ns-descriptors';

/** Options of one path = exactly what `ResilientController.connect` takes. */
export type PathOptions = ControllerOptions & ResilienceOptions;

/**
 * What the multipath layer uses of a path's controller: the {@link ResilientController} surface
 * (tests may hand in a small fake with the same members).
 */
export interface PathController extends EventEmitter {
  readonly options: PathOptions;
  readonly state: CtrlStateValue;
  /** CONNECTING and would hold I/O (fast_io_fail_tmo not expired). */
  readonly holdsIo: boolean;
  readonly cntlid: number;
  readonly identify: IdentifyController;
  readonly identifyRaw: Buffer;
  readonly namespaces: ReadonlyMap<number, NamespaceInfo>;
  readonly namespacesOverLimit: number;
  readonly ioQueueCount: number;
  readonly maxTransfer: number;
  readonly version: number;
  readonly oncs: number;
  readonly volatileWriteCache: boolean;
  readonly reconnects: number;
  readonly lastError: NvmfNbdError | undefined;
  readonly authentication: AuthOutcome | undefined;
  readonly anaLog: AnaLog | undefined;
  readonly anaReporting: boolean;
  describeState(): CtrlStateDescription;
  stats(): ControllerStats;
  submitIo(req: IoRequest): void;
  deallocate(nsid: number, ranges: ReadonlyArray<{ slba: bigint; nlb: number }>, ns?: Namespace): Promise<void>;
  writeZeroes(nsid: number, slba: bigint, nlb: number, o: { deallocate?: boolean; fua?: boolean }, ns?: Namespace): Promise<void>;
  adminCommand(sqe: Buffer, o?: { dataOut?: Buffer; dataInLength?: number; timeoutMs?: number; passthru?: boolean }): Promise<Completion>;
  refreshAnaLog(): Promise<AnaLog>;
  setPassBack(on: boolean): void;
  takeHeldRecords(): IoRequest[];
  close(): Promise<void>;
}

/** The id of a path: `traddr:trsvcid`, plus `@hostTraddr` when a source address is given. */
export function pathId(o: Pick<ControllerOptions, 'traddr' | 'trsvcid' | 'hostTraddr'>): string {
  const addr = o.traddr.includes(':') ? `[${o.traddr}]` : o.traddr;
  return `${addr}:${o.trsvcid}${o.hostTraddr !== undefined ? `@${o.hostTraddr}` : ''}`;
}

/** A path as the multipath layer shows it. */
export interface MultipathPath {
  readonly id: string;
  readonly controller: PathController;
  readonly traddr: string;
  readonly trsvcid: number;
  readonly hostTraddr: string | undefined;
}

/** Per-path counters (`topology()`). */
export interface PathCounters {
  reads: number;
  writes: number;
  other: number;
  bytesRead: number;
  bytesWritten: number;
  /** Requests this path lost in flight (re-issued elsewhere). */
  failovers: number;
  /** Path / ANA statuses (SCT 3h) this path answered. */
  pathErrors: number;
}

/** See the module comment. */
export class PathEntry implements MultipathPath {
  readonly id: string;
  readonly traddr: string;
  readonly trsvcid: number;
  readonly hostTraddr: string | undefined;
  /** Requests in flight on this path now (queue depth). */
  inflight = 0;
  readonly io: PathCounters = { reads: 0, writes: 0, other: 0, bytesRead: 0, bytesWritten: 0, failovers: 0, pathErrors: 0 };
  /** When (multipath clock) and on which cntlid the last association loss happened. */
  lostAt: number | undefined;
  lostCntlid: number | undefined;
  /** Identifiers of namespaces read on this path (CNS 03h), by NSID. */
  readonly ids = new Map<number, NamespaceIdentifiers>();
  /** NSIDs this path reports with other identifiers than the subsystem's namespace: never used for them. */
  readonly mismatched = new Set<number>();
  /** ANA state per group (from the log, corrected by path statuses). */
  private readonly groups = new Map<number, number>();
  /** ANA group of each NSID the log lists. */
  private readonly nsGroup = new Map<number, number>();
  /** Groups whose `change` outlasted ANATT: treated as inaccessible until the next log says otherwise. */
  private readonly expired = new Set<number>();
  /** ANATT timers of groups in `change`. */
  readonly anattTimers = new Map<number, unknown>();
  /** A refresh of the ANA log is running (at most one per path). */
  refreshing = false;
  /** Listener removers (the path is dropped from the subsystem). */
  readonly unsubscribe: Array<() => void> = [];
  /** Removed from the subsystem (or being removed). */
  removed = false;

  constructor(readonly controller: PathController) {
    const o = controller.options;
    this.id = pathId(o);
    this.traddr = o.traddr;
    this.trsvcid = o.trsvcid;
    this.hostTraddr = o.hostTraddr;
    this.applyAnaLog(controller.anaLog);
  }

  /** Replace the group states with a freshly read log (`undefined`: no ANA reporting). */
  applyAnaLog(log: AnaLog | undefined): void {
    this.groups.clear();
    this.nsGroup.clear();
    this.expired.clear();
    if (log === undefined) return;
    for (const g of log.groups) {
      this.groups.set(g.grpid, g.state);
      for (const nsid of g.nsids) this.nsGroup.set(nsid, g.grpid);
    }
  }

  /** The ANA group of `nsid` on this path: the log's NSID list, else Identify Namespace ANAGRPID. */
  groupOf(nsid: number): number {
    return this.nsGroup.get(nsid) ?? this.controller.namespaces.get(nsid)?.identify.anagrpid ?? 0;
  }

  /** ANA state of `nsid` through this path (optimized without ANA reporting or for unknown groups). */
  anaState(nsid: number): number {
    const g = this.groupOf(nsid);
    if (this.expired.has(g)) return AnaState.INACCESSIBLE;
    return this.groups.get(g) ?? AnaState.OPTIMIZED;
  }

  /** A path status said the group of `nsid` is now in `state` (until the log says otherwise). */
  noteStatus(nsid: number, state: number): number {
    const g = this.groupOf(nsid);
    this.groups.set(g, state);
    this.expired.delete(g);
    return g;
  }

  /** ANATT passed with `grpid` still in change. */
  expireChange(grpid: number): boolean {
    if ((this.groups.get(grpid) ?? AnaState.OPTIMIZED) !== AnaState.CHANGE) return false;
    this.expired.add(grpid);
    return true;
  }

  /** Groups now in `change` (for ANATT). */
  groupsInChange(): number[] {
    const out: number[] = [];
    for (const [g, st] of this.groups) if (st === AnaState.CHANGE && !this.expired.has(g)) out.push(g);
    return out;
  }

  /** The group list for `topology()` (sorted by id). */
  groupList(): Array<{ grpid: number; state: string }> {
    return [...this.groups.entries()].sort((a, b) => a[0] - b[0]).map(([grpid, st]) => ({ grpid, state: this.expired.has(grpid) ? `${anaStateName(st)} (ANATT expired)` : anaStateName(st) }));
  }

  /** The path can carry I/O of `nsid` with this block size now (live, namespace present, same identity, accessible). */
  serves(nsid: number, blockSize: number): boolean {
    const info = this.controller.namespaces.get(nsid);
    return info !== undefined && info.usable && info.lbaSize === blockSize && !this.mismatched.has(nsid);
  }

  /** ANA state allows I/O. */
  accessible(nsid: number): boolean {
    return anaStateAccessible(this.anaState(nsid));
  }
}
