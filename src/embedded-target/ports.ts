/**
 * NVMe ports of the embedded target: one TCP listener each, with its own port id (PORTID in
 * the discovery log) and its own ANA state per ANA group (as Linux nvmet's
 * `ports/N/ana_groups/G/ana_state`). Every subsystem is reachable through every port; a
 * controller belongs to the port its admin queue connected on, and its I/O queues must connect
 * there too. The listener itself (accept, TLS sniffing) is run by target.ts.
 */
import type * as net from 'node:net';
import { AnaState, isAnaState, parseAnaState } from '../wire/ana';
import { ErrorCode, NvmfNbdError } from '../errors';
import type { TargetController } from './target-controller';

/** Largest ANA group id (ANAGRPMAX = NANAGRPID), as Linux nvmet. */
export const MAX_ANA_GROUPS = 128;
/** The ANA group of a namespace that names none. */
export const DEFAULT_ANA_GROUP = 1;

/** An ANA state as a number (`AnaState`) or its Linux name (`optimized`, `inaccessible`, …). */
export type AnaStateInput = AnaState | 'optimized' | 'non-optimized' | 'inaccessible' | 'persistent-loss' | 'change';

/** One listener of {@link NvmeTarget}. */
export interface TargetPortConfig {
  /** Port id, 1..65519 (discovery log PORTID); default the lowest free one. */
  id?: number;
  /** Address to listen on, default 127.0.0.1. */
  host?: string;
  /** TCP port; 0 picks a free one. */
  port: number;
  /** traddr/trsvcid put in the discovery log for this port instead of the bound address. */
  advertise?: { host: string; port: number };
  /** Initial ANA state per group on this port; groups not named are optimized. */
  ana?: Array<{ group: number; state: AnaStateInput }>;
}

/** A port as reported by `NvmeTarget.ports()`. */
export interface TargetPortInfo {
  id: number;
  /** The bound address once listening, else the configured one. */
  host: string;
  port: number;
  advertise?: { host: string; port: number };
  /** Groups whose state is not optimized, and groups set explicitly. */
  ana: Array<{ group: number; state: AnaState }>;
  /** Live controllers on this port. */
  controllers: number;
  /** Reads and writes executed through this port (which path carried the I/O). */
  io: { readCommands: number; writeCommands: number; bytesRead: number; bytesWritten: number };
}

function configError(msg: string): NvmfNbdError {
  return new NvmfNbdError(ErrorCode.CFG_INVALID, msg);
}

/** Validate an ANA group id (1..{@link MAX_ANA_GROUPS}); CFG_ERR_INVALID otherwise. */
export function checkAnaGroup(group: number): number {
  if (!Number.isInteger(group) || group < 1 || group > MAX_ANA_GROUPS) throw configError(`ANA group ${group} out of range 1..${MAX_ANA_GROUPS}`);
  return group;
}

/** An {@link AnaStateInput} as its number; CFG_ERR_INVALID for anything else. */
export function toAnaState(s: AnaStateInput | number | string): AnaState {
  const v = typeof s === 'number' ? (isAnaState(s) ? s : undefined) : parseAnaState(s);
  if (v === undefined) throw configError(`ANA state '${String(s)}' must be optimized, non-optimized, inaccessible, persistent-loss or change`);
  return v;
}

/** One port: listener state, its controllers and connections, ANA state per group. */
export class TargetPort {
  readonly id: number;
  readonly want: { host: string; port: number };
  readonly advertise: { host: string; port: number } | undefined;
  server: net.Server | undefined;
  bound: { host: string; port: number } | undefined;
  /** Controllers whose admin queue connected on this port. */
  readonly controllers = new Set<TargetController>();
  /** Open connections accepted on this port (closed when the port is removed). */
  readonly connections = new Set<{ destroy(reason: string): void }>();
  /** Reads and writes executed through this port. */
  readonly io = { readCommands: 0, writeCommands: 0, bytesRead: 0, bytesWritten: 0 };
  private readonly states = new Map<number, AnaState>();
  /** Target-wide ANA change count when each group's state on this port last changed. */
  private readonly changedAt = new Map<number, bigint>();

  constructor(id: number, cfg: TargetPortConfig) {
    this.id = id;
    this.want = { host: cfg.host ?? '127.0.0.1', port: cfg.port };
    this.advertise = cfg.advertise === undefined ? undefined : { ...cfg.advertise };
    for (const a of cfg.ana ?? []) this.states.set(checkAnaGroup(a.group), toAnaState(a.state));
  }

  /** ANA state of `group` on this port (optimized unless set). */
  anaState(group: number): AnaState {
    return this.states.get(group) ?? AnaState.OPTIMIZED;
  }

  /** Set the state; false when it already was that (nothing changes then). */
  setAnaState(group: number, state: AnaState, changeCount: bigint): boolean {
    if (this.anaState(group) === state) return false;
    this.states.set(group, state);
    this.changedAt.set(group, changeCount);
    return true;
  }

  /** Change count of `group`'s state on this port (0 when never changed). */
  anaChangedAt(group: number): bigint {
    return this.changedAt.get(group) ?? 0n;
  }

  /** The address hosts are told about (discovery log). */
  advertised(): { host: string; port: number } {
    return this.advertise ?? this.bound ?? this.want;
  }

  info(): TargetPortInfo {
    const where = this.bound ?? this.want;
    const ana = [...this.states.entries()].sort((a, b) => a[0] - b[0]).map(([group, state]) => ({ group, state }));
    return {
      id: this.id, host: where.host, port: where.port,
      ...(this.advertise !== undefined ? { advertise: { ...this.advertise } } : {}),
      ana, controllers: this.controllers.size, io: { ...this.io },
    };
  }
}
