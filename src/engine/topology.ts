/**
 * Multipath bookkeeping of the engine (issue 12 item 1), pure: what makes two connects paths of
 * one subsystem, how a discovery log's entries group into subsystems, and the JSON shape of
 * `show-topology -o json` (and of the `paths` that `list` adds per export).
 *
 * Controllers of the same subsystem NQN reached by the same host NQN are paths of one
 * subsystem (one export per namespace, whatever the number of paths), as Linux native multipath
 * groups controllers into one `nvme-subsysN`. A different host NQN is another host as far as the
 * target is concerned (its own controllers, ACLs, reservations): another subsystem here too.
 */

/** The key two connects share when they are paths of one subsystem. */
export function subsystemKey(nqn: string, hostnqn: string): string {
  return JSON.stringify([nqn, hostnqn]);
}

/** One subsystem of a grouped list: its NQN, host NQN, and the connect options of each path. */
export interface SubsystemGroup<T> {
  readonly nqn: string;
  readonly hostnqn: string;
  readonly paths: T[];
}

/**
 * Group connect options (one per discovery-log entry or config entry) by subsystem, in the order
 * subsystems first appear; within one, paths keep their order and a repeated path (same
 * `pathKey`) is dropped. With `separate(o)` true an entry makes a subsystem of its own (connect
 * `-D/--duplicate-connect`: a second association, a second disk).
 * @param hostnqnOf the host NQN the entry connects with (its `hostnqn`, else the default identity)
 * @param pathKey what makes two entries the same path (subsystem, address, host, source)
 */
export function groupBySubsystem<T extends { readonly nqn?: unknown }>(
  list: readonly T[], hostnqnOf: (o: T) => string, pathKey: (o: T) => string, separate: (o: T) => boolean = () => false,
): Array<SubsystemGroup<T>> {
  const groups: Array<SubsystemGroup<T>> = [];
  const byKey = new Map<string, SubsystemGroup<T>>();
  const seen = new Set<string>();
  for (const o of list) {
    const nqn = String(o.nqn);
    const hostnqn = hostnqnOf(o);
    if (separate(o)) {
      groups.push({ nqn, hostnqn, paths: [o] });
      continue;
    }
    const p = pathKey(o);
    if (seen.has(p)) continue;
    seen.add(p);
    const key = subsystemKey(nqn, hostnqn);
    let g = byKey.get(key);
    if (g === undefined) {
      g = { nqn, hostnqn, paths: [] };
      byKey.set(key, g);
      groups.push(g);
    }
    g.paths.push(o);
  }
  return groups;
}

/** One path (controller) of a subsystem, as `show-topology` and `list` report it. */
export interface TopologyPath {
  /** Its controller name (`nvme1`): `disconnect -d nvme1` removes this path only. */
  readonly name: string;
  readonly traddr: string;
  readonly trsvcid: number;
  /** Source address (`-w`), when one was given. */
  readonly hostTraddr?: string;
  /** Controller id of its current (or last) association; null before the first one. */
  readonly cntlid: number | null;
  /** Controller state: live, connecting, deleting, dead. */
  readonly state: string;
  /** Successful reconnects of this path. */
  readonly reconnects: number;
  /** Why its last association ended, if one did. */
  readonly lastError?: { readonly code: string; readonly message: string };
  /** Commands in flight on this path now (all its namespaces). */
  readonly queueDepth?: number;
  /** I/O this path carried: commands by kind, bytes, requests moved off it (failovers), path statuses seen. */
  readonly io?: { readonly reads: number; readonly writes: number; readonly other: number; readonly bytesRead: number; readonly bytesWritten: number; readonly failovers: number; readonly pathErrors: number };
  /** ANA state of each ANA group as this controller reports it. */
  readonly anaGroups?: ReadonlyArray<{ readonly grpid: number; readonly state: string }>;
}

/** One path of one namespace: its ANA state there and the I/O it carried. */
export interface TopologyNamespacePath {
  /** The path's controller name (a {@link TopologyPath}). */
  readonly path: string;
  /** ANA group of the namespace on this path (null: the controller reports no ANA). */
  readonly anaGroup: number | null;
  /** optimized, non-optimized, inaccessible, persistent-loss, change (Linux sysfs names). */
  readonly anaState: string;
  /** Is this the path new I/O goes to now (numa: the first usable optimized one)? */
  readonly current: boolean;
  /** Could I/O of this namespace go to the path now (live, accessible ANA state, same identifiers)? */
  readonly usable?: boolean;
  /** Commands in flight on the path (its queue depth, all namespaces). */
  readonly inFlight: number;
  /** Commands the path carried (read / write / the other kinds). */
  readonly reads: number;
  readonly writes: number;
  readonly other?: number;
}

/** One namespace of a subsystem: its export and its paths. */
export interface TopologyNamespace {
  readonly nsid: number;
  /** The NBD export (`nvme0n1`): one per namespace whatever the number of paths. */
  readonly export: string;
  readonly device: string | null;
  readonly size: number;
  readonly stableId?: string;
  /** Writes held until a failed path's association can no longer execute them (the write-hold rule). */
  readonly heldWrites?: number;
  readonly paths: TopologyNamespacePath[];
}

/** One subsystem: what `show-topology -o json` prints per entry of `subsystems`. */
export interface TopologySubsystem {
  /** The session's name (`nvme0`): its exports are `<name>n<nsid>`. */
  readonly name: string;
  readonly nqn: string;
  readonly hostnqn: string;
  readonly iopolicy: string;
  /** The session's state: live while any path is, else its best path's state. */
  readonly state: string;
  readonly paths: TopologyPath[];
  readonly namespaces: TopologyNamespace[];
}
