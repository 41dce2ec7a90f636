/**
 * What the daemon keeps per subsystem (an {@link Entry} with its paths) and how `list` and
 * `show-topology` render one; plus where the daemon serves NBD by default. Pure: no sockets, no
 * files, no timers are started here (the daemon owns those fields).
 */
import * as path from 'node:path';
import { ErrorCode, NvmfNbdError } from '../errors';
import { parseNbdSpec } from './session';
import type { ControllerSession, NbdSpec } from './session';
import { withoutSecrets } from './state-file';
import type { StateDevice } from './state-file';
import type { TopologyPath, TopologySubsystem } from './topology';
import type { IoPolicyValue } from '../config/option-spec';
import { holderEndpoint } from './holder-file';
import type { HolderRecord } from './daemon-sticky';

/** Where the daemon serves NBD by default: a directory of Unix sockets, or TCP from a base port. */
export type DaemonNbdSpec = { unixDir: string } | { tcp: { host: string; basePort: number } };

/** Parse the daemon's `--nbd`: `unix:DIR` or `tcp:HOST:BASEPORT` (nvmeN listens on BASEPORT+N). */
export function parseDaemonNbdSpec(s: string): DaemonNbdSpec {
  const n = parseNbdSpec(s);
  if ('unixDir' in n) return n;
  if ('tcp' in n) return { tcp: { host: n.tcp.host, basePort: n.tcp.port } };
  throw new NvmfNbdError(ErrorCode.CLI_USAGE, `daemon --nbd '${s}': the daemon serves many controllers: use unix:DIR or tcp:HOST:BASEPORT`);
}

/** The NBD endpoint spec of controller `name` (`nvmeN`) under the daemon's default. */
export function endpointFor(name: string, spec: DaemonNbdSpec): NbdSpec {
  if ('unixDir' in spec) return { unixDir: spec.unixDir };
  const index = Number(name.slice(4));
  return { tcp: { host: spec.tcp.host, port: spec.tcp.basePort === 0 ? 0 : spec.tcp.basePort + index } };
}

/** Controller states as `list` shows them. */
export const EntryState = {
  /** Not connected yet (restored from the state file; retrying every reconnect delay). */
  CONNECTING: 'connecting',
  /** A session exists; its controller's own state (live/connecting/deleting/dead) is shown. */
  LIVE: 'live',
  /** The controller gave up (ctrl_loss_tmo, subsystem changed): I/O fails with EIO. */
  DEAD: 'dead',
  CLOSING: 'closing',
} as const;
export type EntryStateValue = (typeof EntryState)[keyof typeof EntryState];

/** One path (controller) of a subsystem entry. */
export interface PathEntry {
  /** Its controller name (`nvme1`); the entry's first path has the entry's name. */
  readonly name: string;
  /** The connect options of this path. */
  readonly args: Record<string, unknown>;
  /** Restored from the state file but not part of the session yet: retried every reconnect delay. */
  pending: boolean;
  timer: NodeJS.Timeout | undefined;
  lastError: { code: string; message: string } | undefined;
}

/**
 * One subsystem (one session, its exports `<name>n<nsid>`) with its paths: controllers of the
 * same subsystem NQN reached by the same host NQN (issue 12). `-D/--duplicate-connect` makes an
 * entry of its own (a second association, a second disk), which later connects do not join.
 */
export interface Entry {
  readonly name: string;
  /** The options of the connect that made the entry: its session-level settings (nbd, attach, read-only, iopolicy…). */
  readonly args: Record<string, unknown>;
  /** Subsystem NQN + resolved host NQN ({@link subsystemKey}); undefined for a -D entry. */
  readonly key: string | undefined;
  readonly paths: PathEntry[];
  state: EntryStateValue;
  session: ControllerSession | undefined;
  /** Devices from the state file (or a lost session) to adopt when the session comes back. */
  adopt: StateDevice[];
  lastError: { code: string; message: string } | undefined;
  attempts: number;
  since: number;
  timer: NodeJS.Timeout | undefined;
  closing: boolean;
  /** Sticky mode: the holder's public endpoint and pid. */
  holder: HolderRecord | undefined;
}

/** The paths of `e` that are not part of its session (all of them while it has none): connecting. */
export function pendingPaths(e: Entry): TopologyPath[] {
  return e.paths.filter((p) => p.pending || e.session === undefined).map((p) => ({
    name: p.name, traddr: String(p.args.traddr), trsvcid: Number(p.args.trsvcid),
    ...(typeof p.args['host-traddr'] === 'string' ? { hostTraddr: p.args['host-traddr'] } : {}),
    cntlid: null, state: 'connecting', reconnects: 0, ...(p.lastError !== undefined ? { lastError: p.lastError } : {}),
  }));
}

/**
 * `show-topology` of one entry: the session's, or its recorded paths while it connects, with
 * the host NQN and iopolicy its options resolve to (`defaults`: the daemon's resolution).
 */
export function entryTopology(e: Entry, defaults: { hostnqn(args: Record<string, unknown>): string; iopolicy(args: Record<string, unknown>): IoPolicyValue }): TopologySubsystem {
  const s = e.session;
  const pending = pendingPaths(e);
  if (s !== undefined) {
    const t = s.topology();
    return { ...t, ...(e.closing ? { state: EntryState.CLOSING } : e.state === EntryState.DEAD ? { state: EntryState.DEAD } : {}), paths: [...t.paths, ...pending] };
  }
  return {
    name: e.name, nqn: String(e.args.nqn), hostnqn: typeof e.args.hostnqn === 'string' ? e.args.hostnqn : defaults.hostnqn(e.args),
    iopolicy: defaults.iopolicy(e.args), state: e.state, paths: pending,
    namespaces: e.adopt.map((d) => ({ nsid: Number(/n(\d+)$/.exec(d.export)?.[1] ?? 0), export: d.export, device: d.device, size: 0, paths: [] })),
  };
}

/** `list` of one entry (no secrets: its connect options go through withoutSecrets); by-id links under `byIdDir`. */
export function describeEntry(e: Entry, byIdDir: string): Record<string, unknown> {
  const base: Record<string, unknown> = {
    name: e.name,
    state: e.state,
    attempts: e.attempts,
    lastError: e.lastError ?? null,
    subnqn: e.args.nqn,
    traddr: e.args.traddr,
    trsvcid: e.args.trsvcid,
    // The connect options it was made with (no secrets): for --dump-config and a CSI driver.
    args: withoutSecrets(e.args),
  };
  const s = e.session;
  if (s === undefined) return { ...base, paths: pendingPaths(e), exports: e.adopt.map((d) => ({ name: d.export, device: d.device })) };
  // The session's description carries the controller's own state (live, connecting while
  // it reconnects, deleting, dead), reconnects, attempts and last error.
  const d = s.describe();
  if (Array.isArray(d.exports)) {
    d.exports = (d.exports as Array<Record<string, unknown>>).map((x) => (typeof x.stableId === 'string' && x.device !== null
      ? { ...x, link: path.join(byIdDir, `nvmf-nbd-${x.stableId}`) } : x));
  }
  const h = e.holder;
  if (h !== undefined && Array.isArray(d.exports)) {
    d.exports = (d.exports as Array<Record<string, unknown>>).map((x) => ({ ...x, endpoint: holderEndpoint(h), backend: x.endpoint, holderPid: h.pid }));
  }
  // Paths not (yet) in the session: restored ones still retrying.
  const pending = pendingPaths(e);
  if (pending.length > 0 && Array.isArray(d.paths)) d.paths = [...(d.paths as unknown[]), ...pending];
  return { ...base, ...d, ...(e.closing ? { state: EntryState.CLOSING } : {}) };
}
