/**
 * The daemon's discovery controllers (`discover -p`, `connect-all -p`, config-file discovery
 * entries): each is a {@link PersistentDiscovery} whose log drives the I/O controllers. Every
 * NVM entry of a log is handed to the daemon's connect (which answers with the controller
 * already connected over that path, adds a path to a subsystem already connected over another
 * address, or makes a new one) and is then owned by the discovery controller; with
 * `disconnectRemoved`, an owned path whose entry left the log is disconnected. Persistent ones
 * are kept in `discovery.json` (no secrets) and restored at start.
 */
import { ErrorCode, NvmfNbdError } from '../errors';
import type { OptionSpec } from '../config/option-spec';
import { DISCOVERY_NQN } from '../wire';
import type { DiscoveryEntry } from '../controller/discovery';
import { PersistentDiscovery } from './persistent-discovery';
import type { SessionOptions } from './session';
import { withoutSecrets } from './state-file';
import { allocateDiscoveryName, checkArgs, isRecordArg, pathKey, splitDiscoveryArgs, withoutOverrides, withoutUndefined } from './daemon-args';
import { readDiscoveryFile, writeDiscoveryFile } from './discovery-file';

/** Default reconnect delay (Linux `reconnect_delay`), seconds. */
export const DEFAULT_RECONNECT_DELAY_S = 10;

/** What the discovery controllers need from the daemon. */
export interface DiscoveryHost {
  /** The connect verb's option specs. */
  readonly specs: readonly OptionSpec[];
  /** Controller options from connect options (validates them). */
  controllerOptions(args: Record<string, unknown>): SessionOptions['controller'];
  /** False once the daemon shuts down. */
  running(): boolean;
  /**
   * The path connected (or being connected) for these connect options: its name, and the first
   * attempt when a new one was started. `why` prefixes the log line of a new one.
   */
  connectFromLog(args: Record<string, unknown>, why: string): { name: string; opening?: Promise<void> };
  /** The connect options of path `name`, while it exists. */
  pathArgs(name: string): Record<string, unknown> | undefined;
  /** Disconnect these paths (a subsystem whose last path goes is removed). */
  disconnectPaths(names: readonly string[]): Promise<unknown>;
  log(msg: string): void;
}

interface DiscoveryRecord {
  readonly name: string;
  readonly discovery: Record<string, unknown>;
  readonly connect: Record<string, unknown>;
  readonly persistent: boolean;
  readonly disconnectRemoved: boolean;
  /** Kept in discovery.json (connect-all -p); config-file entries are re-read at each start instead. */
  readonly saved: boolean;
  /** `discover -p`: keep the discovery controller and its log current, connect nothing. */
  readonly watchOnly: boolean;
  /** Paths this discovery connected (or found connected) for entries of its log. */
  readonly owned: Set<string>;
  pd: PersistentDiscovery;
}

/** The daemon's discovery controllers, by name (disc0, …). */
export class DaemonDiscoveries {
  private readonly records = new Map<string, DiscoveryRecord>();
  private write: Promise<void> = Promise.resolve();

  constructor(private readonly host: DiscoveryHost, readonly file: string) {}

  /** Names in use. */
  names(): string[] {
    return [...this.records.keys()];
  }

  /** Is `name` one of ours? */
  has(name: string): boolean {
    return this.records.has(name);
  }

  /** Restore the persistent discovery controllers of {@link file}. */
  async restore(): Promise<void> {
    for (const r of await readDiscoveryFile(this.file)) {
      this.host.log(`${r.name}: persistent discovery at ${String(r.discovery.traddr)}:${String(r.discovery.trsvcid)} from ${this.file}`);
      try {
        this.check(r.discovery, r.connect);
        this.start(r.name, r.discovery, r.connect, { persistent: true, disconnectRemoved: r.disconnectRemoved, watchOnly: r.watchOnly });
      } catch (err) {
        this.host.log(`${r.name}: not restored: ${(err as Error).message}`);
      }
    }
  }

  /** `list`'s `discovery[]`. */
  describe(): Array<Record<string, unknown>> {
    return [...this.records.values()].map((r) => ({ ...r.pd.describe(), persistent: r.persistent, disconnectRemoved: r.disconnectRemoved, watchOnly: r.watchOnly, controllers: [...r.owned].sort() }));
  }

  /**
   * `add-discovery`: `{ discovery: <connect options of the discovery controller>, connect:
   * <connect options for every subsystem found>, persistent, disconnectRemoved }`. Waits for the
   * first read of the log and the first connect attempt of every subsystem in it, then answers
   * with the discovery controller and its controllers. A discovery controller already known for
   * that address answers as it is (idempotent). A first connect that fails is an error and
   * nothing is kept (the CLI exits non-zero; a boot unit retries).
   */
  async add(a: Record<string, unknown>): Promise<unknown> {
    // Secrets stay in memory (the subsystems found need them); discovery.json gets withoutSecrets().
    const dargs = isRecordArg(a.discovery) ? withoutUndefined(a.discovery) : undefined;
    const cargs = isRecordArg(a.connect) ? withoutUndefined(a.connect) : {};
    if (dargs === undefined) throw new NvmfNbdError(ErrorCode.CLI_USAGE, 'add-discovery needs discovery (the discovery controller\'s options)');
    this.check(dargs, cargs);
    const known = this.known(dargs);
    if (known !== undefined) return { name: known.name, existing: true, discovery: known.pd.describe(), controllers: [...known.owned].sort() };
    const name = allocateDiscoveryName(this.records.keys());
    const persistent = a.persistent === true;
    const r = this.start(name, dargs, cargs, { persistent, disconnectRemoved: a.disconnectRemoved === true, once: !persistent, watchOnly: a.watchOnly === true });
    await new Promise<void>((resolve, reject) => {
      const onRefresh = (): void => { r.pd.off('state', onState); resolve(); };
      const onState = (st: string): void => {
        if (st !== 'connecting' && st !== 'dead') return;
        r.pd.off('refresh', onRefresh);
        r.pd.off('state', onState);
        reject(new NvmfNbdError((r.pd.lastError?.code ?? ErrorCode.CONNECT_FAILED) as typeof ErrorCode.CONNECT_FAILED, `${name}: ${r.pd.lastError?.message ?? 'discovery failed'}`));
      };
      r.pd.once('refresh', onRefresh);
      r.pd.on('state', onState);
    }).catch(async (err: unknown) => {
      await r.pd.close();
      this.records.delete(name);
      await this.save();
      throw err;
    });
    const out = { name, discovery: r.pd.describe(), controllers: [...r.owned].sort() };
    if (!persistent) {
      await r.pd.close();
      this.records.delete(name);
    }
    return out;
  }

  /**
   * A config file's discovery entry at start: a discovery controller unless one is known for
   * that address (persistent ones stay, the others do one read, retrying until it works).
   */
  fromConfig(args: Record<string, unknown>, persistent: boolean, where: string): void {
    const { dargs, cargs } = splitDiscoveryArgs(args, this.host.specs);
    this.check(dargs, cargs);
    if (this.known(dargs) !== undefined) return;
    const name = allocateDiscoveryName(this.records.keys());
    this.host.log(`${name}: discovery at ${String(dargs.traddr)}:${String(dargs.trsvcid)} from ${where}${persistent ? ' (persistent)' : ''}`);
    this.start(name, dargs, cargs, { persistent, disconnectRemoved: false, once: !persistent, saved: false });
  }

  private known(dargs: Record<string, unknown>): DiscoveryRecord | undefined {
    for (const r of this.records.values()) {
      if (r.discovery.traddr === dargs.traddr && r.discovery.trsvcid === dargs.trsvcid && r.discovery.hostnqn === dargs.hostnqn) return r;
    }
    return undefined;
  }

  /** Validate the discovery controller's options and the template (as connect would). */
  check(dargs: Record<string, unknown>, cargs: Record<string, unknown>): void {
    const specs = [...this.host.specs, { long: 'override-traddr', type: 'string' as const, help: '' }, { long: 'override-trsvcid', type: 'string' as const, help: '' }];
    checkArgs(dargs, specs);
    checkArgs(cargs, this.host.specs);
    this.host.controllerOptions({ ...withoutOverrides(dargs), nqn: typeof dargs.nqn === 'string' ? dargs.nqn : DISCOVERY_NQN });
    this.host.controllerOptions({ traddr: '127.0.0.1', nqn: 'nqn.2014-08.org.nvmf-nbd:check', ...cargs });
  }

  /**
   * Start a discovery controller whose log drives the controllers: every NVM entry is connected
   * (unless one for that subsystem and path exists) and owned; with disconnectRemoved, an owned
   * path whose entry left the log is disconnected.
   */
  private start(name: string, dargs: Record<string, unknown>, cargs: Record<string, unknown>, o: { persistent: boolean; disconnectRemoved: boolean; once?: boolean; saved?: boolean; watchOnly?: boolean }): DiscoveryRecord {
    const base = this.host.controllerOptions({ ...withoutOverrides(dargs), nqn: typeof dargs.nqn === 'string' ? dargs.nqn : DISCOVERY_NQN });
    const katoS = typeof dargs['keep-alive-tmo'] === 'number' ? dargs['keep-alive-tmo'] : undefined;
    const rec: DiscoveryRecord = {
      name, discovery: dargs, connect: cargs, persistent: o.persistent, disconnectRemoved: o.disconnectRemoved, owned: new Set(),
      saved: o.saved ?? o.persistent, watchOnly: o.watchOnly === true,
      pd: undefined as unknown as PersistentDiscovery,
    };
    rec.pd = new PersistentDiscovery({
      name,
      controller: {
        traddr: base.traddr, trsvcid: base.trsvcid, subnqn: base.subnqn, hostnqn: base.hostnqn, hostid: base.hostid,
        hdgst: base.hdgst, ddgst: base.ddgst, ...(base.hostTraddr !== undefined ? { hostTraddr: base.hostTraddr } : {}),
        ...(base.dhchap !== undefined ? { dhchap: base.dhchap } : {}),
        ...(katoS !== undefined ? { kato: katoS * 1000 } : {}),
      },
      ...(typeof dargs['override-traddr'] === 'string' ? { overrideTraddr: dargs['override-traddr'] } : {}),
      ...(typeof dargs['override-trsvcid'] === 'string' ? { overrideTrsvcid: dargs['override-trsvcid'] } : {}),
      reconnectDelayMs: (typeof dargs['reconnect-delay'] === 'number' ? dargs['reconnect-delay'] : DEFAULT_RECONNECT_DELAY_S) * 1000,
      ctrlLossTmoMs: typeof dargs['ctrl-loss-tmo'] === 'number' ? (dargs['ctrl-loss-tmo'] < 0 ? -1 : dargs['ctrl-loss-tmo'] * 1000) : -1,
      once: o.once === true,
      onLog: (entries) => this.applyLog(rec, entries),
      log: (m) => this.host.log(m),
    });
    this.records.set(name, rec);
    // A one-shot discovery leaves the list once it has done its read.
    if (o.once === true) rec.pd.on('state', (st: string) => { if (st === 'closed' && this.records.get(name) === rec) this.records.delete(name); });
    if (rec.saved) void this.save();
    rec.pd.start();
    return rec;
  }

  private async applyLog(rec: DiscoveryRecord, entries: readonly DiscoveryEntry[]): Promise<void> {
    if (!this.host.running() || rec.watchOnly) return;
    const want = new Set<string>();
    const opening: Array<Promise<void>> = [];
    for (const e of entries) {
      const port = Number(e.trsvcid);
      if (!Number.isInteger(port) || port < 1 || port > 65535) continue;
      const args: Record<string, unknown> = { ...rec.connect, transport: 'tcp', traddr: e.traddr, trsvcid: port, nqn: e.subnqn };
      if (rec.discovery.hostnqn !== undefined && args.hostnqn === undefined) args.hostnqn = rec.discovery.hostnqn;
      if (rec.discovery.hostid !== undefined && args.hostid === undefined) args.hostid = rec.discovery.hostid;
      try {
        checkArgs(args, this.host.specs);
        this.host.controllerOptions(args);
      } catch (err) {
        this.host.log(`${rec.name}: skipping ${e.subnqn.slice(0, 223)}: ${(err as Error).message}`);
        continue;
      }
      want.add(pathKey(args));
      // Entries of one subsystem at several addresses are paths of one subsystem (the daemon's
      // connect groups them by subsystem NQN and host NQN).
      const r = this.host.connectFromLog(args, `${rec.name}: subsystem ${e.subnqn} at ${e.traddr}:${e.trsvcid}`);
      rec.owned.add(r.name);
      if (r.opening !== undefined) opening.push(r.opening);
    }
    await Promise.all(opening);
    if (rec.disconnectRemoved) {
      const gone: string[] = [];
      for (const n of [...rec.owned]) {
        const a = this.host.pathArgs(n);
        if (a === undefined) rec.owned.delete(n);
        else if (!want.has(pathKey(a))) {
          rec.owned.delete(n);
          gone.push(n);
          this.host.log(`${rec.name}: ${String(a.nqn)} at ${String(a.traddr)}:${String(a.trsvcid)} left the discovery log: disconnecting ${n}`);
        }
      }
      if (gone.length > 0) await this.host.disconnectPaths(gone).catch((err: unknown) => this.host.log(`${rec.name}: ${(err as Error).message}`));
    }
  }

  /** Close these discovery controllers (by name; all when undefined) and forget them. */
  async close(names?: readonly string[]): Promise<string[]> {
    const list = [...this.records.values()].filter((r) => names === undefined || names.includes(r.name));
    for (const r of list) {
      await r.pd.close();
      this.records.delete(r.name);
    }
    await this.save();
    return list.map((r) => r.name);
  }

  /** Daemon shutdown: close every discovery controller, keep discovery.json. */
  async stop(): Promise<void> {
    for (const r of this.records.values()) await r.pd.close();
  }

  private save(): Promise<void> {
    const list = [...this.records.values()].filter((r) => r.saved).map((r) => ({
      name: r.name, discovery: withoutSecrets(r.discovery), connect: withoutSecrets(r.connect), disconnectRemoved: r.disconnectRemoved, watchOnly: r.watchOnly,
    }));
    this.write = this.write.catch(() => undefined).then(() => writeDiscoveryFile(this.file, list));
    return this.write.catch((err: unknown) => this.host.log(`cannot write ${this.file}: ${(err as Error).message}`));
  }
}
