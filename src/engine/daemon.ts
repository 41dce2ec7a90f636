/**
 * The daemon: owns every controller (one {@link ControllerSession} each, named nvme0, nvme1, …),
 * answers the CLI on a Unix control socket (0600 in a 0700 directory), and keeps a state file so
 * a restarted daemon reconnects what was connected and serves the same NBD endpoints.
 *
 * Restart after a crash (SIGKILL): every state entry is reconnected in the background (retrying
 * every reconnect delay while the target is down, up to ctrl_loss_tmo). An export whose kernel
 * device is still held (a persist-mode `nbd-client -p`) is served again at the same socket path /
 * TCP port, and the device is adopted rather than attached twice.
 *
 * Shutdown (SIGTERM/SIGINT → {@link Daemon.shutdown}): stop accepting control connections, then
 * per controller detach the kernel devices (unless keepAttached), drain NBD, CC.SHN; remove the
 * control socket. The state file stays: it says what a restarted daemon should reconnect.
 */
import { promises as fsp } from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { ErrorCode, NvmfNbdError } from '../errors';
import { ensurePrivateDir } from '../net/private-dir';
import type { OptionSpec } from '../config/option-spec';
import { ControllerSession } from './session';
import type { NbdSpec, SessionOptions } from './session';
import { ControlVerb, errorResponse, parseRequest, requestIdOf } from '../wire/control';
import { serveControlConnection } from './daemon-control';
import type { ControlRequest, ControlResponse } from '../wire/control';
import { allocateName, readState, statePaths, writeState } from './state-file';
import type { StateController, StateDevice } from './state-file';
import { daemonAdminPassthru, daemonGetLog, daemonIdCtrl, daemonIdNs } from './daemon-admin';
import { DEFAULT_RECONNECT_DELAY_S, DaemonDiscoveries } from './daemon-discovery';
import { syncByIdLinks } from './by-id';
import type { ByIdWant } from './by-id';
import { listenPrivate, preparePrivateSocket } from '../net/private-socket';
import { kernelDeviceInUse } from './device-in-use';
import { argString, checkArgs, parseConnectNbdSpec, withoutUndefined } from './daemon-args';
import { subsystemKey } from './topology';
import { isIoPolicy } from '../config/option-spec';
import type { IoPolicyValue } from '../config/option-spec';
import { ensureHolder, stopHolder } from './daemon-sticky';
import { EntryState, describeEntry, endpointFor, entryTopology } from './daemon-entry';
import type { DaemonNbdSpec, Entry, PathEntry } from './daemon-entry';
import type { NbdAccessPolicy } from '../nbd/access';

/**
 * NBD TLS with sticky endpoints: the holder must read the NBD stream (to hold and replay
 * requests across a daemon restart), which TLS hides from it, and a TLS session cannot survive
 * the daemon that holds its keys. Refused, never silently served in the clear.
 */
function stickyTlsError(): NvmfNbdError {
  return new NvmfNbdError(ErrorCode.NBD_STICKY_TLS_UNSUPPORTED, '--sticky-nbd cannot serve NBD over TLS (the holder relays plain NBD to hold requests across restarts): use --nbd-tls without --sticky-nbd, or a Unix socket');
}

/** What the daemon needs from the connect verb: its options and the args → controller mapping. */
export interface ConnectBinding {
  /** The connect verb's option specs (requests are checked against them). */
  readonly specs: readonly OptionSpec[];
  /** Controller options (Linux defaults filled in) from connect's parsed options. */
  controllerOptions(args: Record<string, unknown>): SessionOptions['controller'];
  /** Human and JSON renderings of a new session, as the foreground connect prints them. */
  render(s: ControllerSession): { text: string; json: unknown };
  /**
   * NBD server options of a connect (`--nbd-idle-timeout`, and its own `--nbd-tls*` /
   * `--nbd-allow-any-local-user` / `--nbd-insecure` when it has any: `access` is then set and
   * wins over the daemon's). Loads the TLS key files. Absent: idle timeout only.
   */
  nbdServerOptions?(args: Record<string, unknown>): { idleTimeoutMs?: number; access?: NbdAccessPolicy };
}

/** Options of {@link Daemon.start}. */
export interface DaemonOptions {
  readonly stateDir: string;
  /** Control socket path (default `<stateDir>/control.sock`). */
  readonly controlPath?: string;
  /** State file (default `<stateDir>/state.json`). */
  readonly stateFile?: string;
  /** Default NBD endpoints (default `unix:<stateDir>/nbd`). */
  readonly nbd?: DaemonNbdSpec;
  /** On shutdown, leave kernel devices attached (a restarted daemon will adopt them). */
  readonly keepAttached?: boolean;
  readonly connect: ConnectBinding;
  /** Session factory (tests inject fakes). Default {@link ControllerSession.open}. */
  readonly openSession?: (o: SessionOptions) => Promise<ControllerSession>;
  /**
   * Sticky NBD endpoints (see {@link NbdHolder}): each controller's public TCP endpoint belongs to
   * a holder process that outlives the daemon. Needs `nbd` tcp with a fixed base port.
   * `command` starts the CLI (`[node, main.js]`); `holdMs` bounds how long a holder keeps a client
   * connection without a daemon.
   */
  readonly sticky?: { readonly command: readonly string[]; readonly holdMs: number };
  /** `daemon --iopolicy`: the path selection of subsystems whose connect gives none (recorded with them). */
  readonly iopolicy?: IoPolicyValue;
  /** Access policy of the daemon's NBD endpoints (its own `--nbd-tls*`, `--nbd-allow-any-local-user`, `--nbd-insecure`). */
  readonly nbdAccess?: NbdAccessPolicy;
  /** sysfs root for partition lookups of the by-id links (tests). Default /sys. */
  readonly sysfsRoot?: string;
  /** Is this kernel device still held (by a persist-mode nbd-client)? Default: sysfs + /proc. */
  readonly deviceInUse?: (device: string) => Promise<boolean>;
  readonly log?: (msg: string) => void;
}

/** Default controller loss timeout (Linux `ctrl_loss_tmo`), seconds. */
const DEFAULT_CTRL_LOSS_TMO_S = 600;

/** Connect options that belong to the subsystem's export, not to one path (see checkPathOptions). */
const SUBSYSTEM_OPTIONS = [
  'nbd', 'attach', 'connections', 'read-only', 'iopolicy', 'nbd-idle-timeout',
  'nbd-tls', 'nbd-tls-psk', 'nbd-tls-cert', 'nbd-tls-key', 'nbd-tls-ca', 'nbd-insecure', 'nbd-allow-any-local-user',
] as const;

/** The long-running engine. */
export class Daemon {
  private readonly entries = new Map<string, Entry>();
  /** Discovery controllers (persistent, or one-shot ones still retrying), by name (disc0, …). */
  private readonly discoveries: DaemonDiscoveries;
  private readonly conns = new Set<net.Socket>();
  private server: net.Server | undefined;
  private running = true;
  private stateWrite: Promise<void> = Promise.resolve();
  private linkWrite: Promise<void> = Promise.resolve();
  private shutdownPromise: Promise<void> | undefined;
  readonly controlPath: string;
  readonly stateFile: string;
  /** Persistent discovery controllers to restore at start (next to the state file). */
  readonly discoveryFile: string;
  readonly nbd: DaemonNbdSpec;
  private readonly log: (msg: string) => void;
  private readonly openSession: (o: SessionOptions) => Promise<ControllerSession>;
  private readonly deviceInUse: (device: string) => Promise<boolean>;

  private constructor(private readonly o: DaemonOptions) {
    this.controlPath = o.controlPath ?? path.join(o.stateDir, 'control.sock');
    this.stateFile = o.stateFile ?? path.join(o.stateDir, 'state.json');
    this.discoveryFile = path.join(path.dirname(this.stateFile), 'discovery.json');
    this.discoveries = new DaemonDiscoveries({
      specs: o.connect.specs,
      controllerOptions: (a) => o.connect.controllerOptions(a),
      running: () => this.running,
      connectFromLog: (a, why) => this.connectFromLog(a, why),
      pathArgs: (n) => this.findPath(n)?.path.args,
      disconnectPaths: (names) => this.disconnectPaths(names),
      log: (m) => this.log(m),
    }, this.discoveryFile);
    this.nbd = o.nbd ?? { unixDir: path.join(o.stateDir, 'nbd') };
    this.log = o.log ?? (() => undefined);
    this.openSession = o.openSession ?? ((so) => ControllerSession.open(so));
    this.deviceInUse = o.deviceInUse ?? ((d) => kernelDeviceInUse(d));
  }

  /**
   * Read the state file, start reconnecting its controllers in the background, and listen on
   * the control socket.
   * @throws CLI_ERR_DAEMON_RUNNING (another daemon answers on the socket),
   *         CFG_ERR_STATE_FILE_INVALID
   */
  static async start(o: DaemonOptions): Promise<Daemon> {
    const d = new Daemon(o);
    if (o.sticky !== undefined && 'tcp' in d.nbd && d.nbd.tcp.basePort === 0) {
      throw new NvmfNbdError(ErrorCode.CFG_INVALID, 'sticky NBD endpoints over TCP need --nbd tcp:HOST:BASEPORT with a fixed base port (or a Unix socket directory, the default)');
    }
    if (o.sticky !== undefined && o.nbdAccess?.tls !== undefined) throw stickyTlsError();
    await ensurePrivateDir(o.stateDir);
    await d.prepareControlPath();
    const state = await readState(d.stateFile);
    // Names are reserved before the socket opens, so a CLI connect cannot take one of them.
    // Restored arguments pass the same check as a control-socket connect: a bad entry is
    // dropped (and leaves the state file with the next write), the others are restored.
    let dropped = 0;
    for (const c of state.controllers) {
      let args: Record<string, unknown>;
      const paths: Array<{ name: string; args: Record<string, unknown> }> = [];
      try {
        args = d.validateConnectArgs(c.args);
        for (const x of statePaths(c)) paths.push({ name: x.name, args: x.name === c.name && x.args === c.args ? args : d.validateConnectArgs(x.args) });
      } catch (err) {
        dropped++;
        d.log(`${d.stateFile}: dropping ${c.name}: ${(err as Error).message} (${(err as { code?: string }).code ?? 'error'})`);
        continue;
      }
      d.entries.set(c.name, d.newEntry(c.name, args, c.devices, paths));
    }
    await d.listen();
    try {
      if (dropped > 0) await d.saveState();
      for (const e of d.entries.values()) {
        d.log(`${e.name}: reconnecting ${String(e.args.nqn)} at ${e.paths.map((x) => `${String(x.args.traddr)}:${String(x.args.trsvcid)}`).join(', ')} from the state file`);
        void d.tryOpen(e);
      }
      await d.discoveries.restore();
    } catch (err) {
      // Never a half-started daemon: no control socket left listening, the caller exits non-zero.
      await d.shutdown().catch(() => undefined);
      throw err;
    }
    return d;
  }

  private newEntry(name: string, args: Record<string, unknown>, adopt: StateDevice[] = [], paths: ReadonlyArray<{ name: string; args: Record<string, unknown> }> = [{ name, args }]): Entry {
    return {
      name, args, key: this.keyOf(args), paths: paths.map((x) => ({ name: x.name, args: x.args, pending: true, timer: undefined, lastError: undefined })),
      state: EntryState.CONNECTING, session: undefined, adopt, lastError: undefined, attempts: 0, since: Date.now(), timer: undefined, closing: false, holder: undefined,
    };
  }

  /** The subsystem key of connect options (NQN + resolved host NQN); undefined with -D. */
  private keyOf(args: Record<string, unknown>): string | undefined {
    if (args['duplicate-connect'] === true) return undefined;
    return subsystemKey(String(args.nqn), this.o.connect.controllerOptions(args).hostnqn);
  }

  /** Every controller name in use: subsystems and their paths. */
  private usedNames(): string[] {
    const out: string[] = [];
    for (const e of this.entries.values()) out.push(e.name, ...e.paths.map((x) => x.name));
    return out;
  }

  /** The path named `name` and its entry. */
  private findPath(name: string): { entry: Entry; path: PathEntry } | undefined {
    for (const e of this.entries.values()) {
      const p = e.paths.find((x) => x.name === name);
      if (p !== undefined) return { entry: e, path: p };
    }
    return undefined;
  }

  /** The iopolicy a subsystem made by a connect with `args` runs with (its own, the daemon's, numa). */
  private policyOf(args: Record<string, unknown>): IoPolicyValue {
    return isIoPolicy(args.iopolicy) ? args.iopolicy : this.o.iopolicy ?? 'numa';
  }

  /** How a subsystem's options resolve while it has no session (for `show-topology`). */
  private readonly entryDefaults = {
    hostnqn: (args: Record<string, unknown>): string => this.o.connect.controllerOptions(args).hostnqn,
    iopolicy: (args: Record<string, unknown>): IoPolicyValue => this.policyOf(args),
  };

  /** A new connect's options with the daemon's iopolicy filled in (so the state file keeps it). */
  private withIoPolicy(args: Record<string, unknown>): Record<string, unknown> {
    return args.iopolicy === undefined && this.o.iopolicy !== undefined ? { ...args, iopolicy: this.o.iopolicy } : args;
  }

  private async prepareControlPath(): Promise<void> {
    await preparePrivateSocket(this.controlPath, {
      notSocket: ErrorCode.CFG_INVALID, inUse: ErrorCode.DAEMON_RUNNING, inUseMessage: `a daemon already answers on ${this.controlPath}`,
    });
  }

  private async listen(): Promise<void> {
    const server = net.createServer((sock) => this.serveControl(sock));
    await listenPrivate(server, this.controlPath);
    this.server = server;
  }

  // -------------------------------------------------------------------------------------------
  // Control connections
  // -------------------------------------------------------------------------------------------

  private serveControl(sock: net.Socket): void {
    if (!this.running) {
      sock.destroy();
      return;
    }
    this.conns.add(sock);
    sock.on('close', () => this.conns.delete(sock));
    serveControlConnection(sock, (line) => this.handleLine(line));
  }

  /** Answer one request line (never throws). */
  async handleLine(line: string): Promise<ControlResponse> {
    let req: ControlRequest;
    try {
      req = parseRequest(line);
    } catch (err) {
      return errorResponse(requestIdOf(line), err);
    }
    try {
      return { id: req.id, ok: true, result: await this.handle(req) };
    } catch (err) {
      return errorResponse(req.id, err);
    }
  }

  /** Run one parsed request. */
  async handle(req: ControlRequest): Promise<unknown> {
    const a = req.args;
    switch (req.verb) {
      case ControlVerb.PING:
        return { pid: process.pid, controllers: this.entries.size, controlPath: this.controlPath, stateFile: this.stateFile };
      case ControlVerb.CONNECT:
        return this.connect(a);
      case ControlVerb.DISCONNECT:
        return this.disconnect(a);
      case ControlVerb.DISCONNECT_ALL: {
        const discs = await this.discoveries.close();
        return { disconnected: [...discs, ...await this.closeEntries([...this.entries.values()])] };
      }
      case ControlVerb.LIST:
        // Partitions made since the last change get their links now.
        await this.syncLinks();
        return {
          controllers: this.sorted().map((e) => describeEntry(e, this.byIdDir)),
          discovery: this.discoveries.describe(),
        };
      case ControlVerb.ID_CTRL:
        return daemonIdCtrl(this.live(a));
      case ControlVerb.ID_NS:
        return daemonIdNs(this.live(a), a);
      case ControlVerb.GET_LOG:
        return daemonGetLog(this.live(a), a);
      case ControlVerb.ADMIN_PASSTHRU:
        return daemonAdminPassthru(this.live(a), a);
      case ControlVerb.SHOW_TOPOLOGY:
        return { subsystems: this.sorted().map((e) => entryTopology(e, this.entryDefaults)) };
      case ControlVerb.ADD_DISCOVERY:
        if (!this.running) throw new NvmfNbdError(ErrorCode.DAEMON_UNAVAILABLE, 'the daemon is shutting down');
        return this.discoveries.add(a);
      default: {
        const never: never = req.verb;
        throw new NvmfNbdError(ErrorCode.CONTROL_UNKNOWN_VERB, `unknown verb ${String(never)}`);
      }
    }
  }

  // -------------------------------------------------------------------------------------------
  // Connect, reconnect, disconnect
  // -------------------------------------------------------------------------------------------

  /**
   * The one check of connect arguments, for control-socket connects and restored state alike:
   * known options of the right types (no nulls), the required flags, a daemon-servable `nbd`.
   * Secrets stay in memory (reconnects need them); the state file only gets withoutSecrets().
   * @returns the arguments without undefined values
   * @throws CLI_ERR_USAGE
   */
  private validateConnectArgs(raw: Record<string, unknown>): Record<string, unknown> {
    const args = withoutUndefined(raw);
    checkArgs(args, this.o.connect.specs);
    // Validates the required flags before a name is taken.
    this.o.connect.controllerOptions(args);
    if (typeof args.nbd === 'string') parseConnectNbdSpec(args.nbd);
    return args;
  }

  private async connect(raw: Record<string, unknown>): Promise<unknown> {
    if (!this.running) throw new NvmfNbdError(ErrorCode.DAEMON_UNAVAILABLE, 'the daemon is shutting down');
    const args = this.validateConnectArgs(raw);
    // Idempotent (nvme-cli): a subsystem already connected over this path answers with its
    // controller; -D/--duplicate-connect asks for a second association on purpose.
    const existing = args['duplicate-connect'] === true ? undefined : this.samePath(args)?.entry;
    if (existing !== undefined) {
      if (existing.session === undefined || existing.closing) {
        throw new NvmfNbdError(ErrorCode.ALREADY_CONNECTED, `${String(args.nqn)} at ${String(args.traddr)}:${String(args.trsvcid)} is already known as ${existing.name} (${existing.state})`);
      }
      return { name: existing.name, existing: true, ...this.o.connect.render(existing.session) };
    }
    // Another address of a subsystem already connected (same subsystem NQN and host NQN): a
    // new path of it, as nvme-cli does with native multipath; its namespaces keep their exports.
    const sub = this.sameSubsystem(args);
    if (sub !== undefined) {
      this.checkPathOptions(sub, args);
      const p = await this.addPath(sub, args);
      await this.saveState();
      return { name: sub.name, path: p.name, addedPath: true, paths: sub.paths.map((x) => x.name), ...this.o.connect.render(sub.session as ControllerSession) };
    }
    const name = allocateName(this.usedNames());
    const e = this.newEntry(name, this.withIoPolicy(args));
    this.entries.set(name, e);
    try {
      await this.open(e);
    } catch (err) {
      this.entries.delete(name);
      throw err;
    }
    await this.saveState();
    const session = e.session as ControllerSession;
    return { name, ...this.o.connect.render(session) };
  }

  /**
   * A new path's connect may repeat the subsystem's export-level options, not change them: they
   * belong to the one export and were set by the first connect (silently ignoring a different
   * `--iopolicy` or `--nbd` would leave the user believing it applied).
   */
  private checkPathOptions(e: Entry, args: Record<string, unknown>): void {
    const have: Record<string, unknown> = { connections: 1, ...e.args, iopolicy: this.policyOf(e.args) };
    const differ = SUBSYSTEM_OPTIONS.filter((k) => args[k] !== undefined && args[k] !== false && args[k] !== have[k]);
    if (differ.length === 0) return;
    // Values of file options are paths, never key material; still only the option names are shown.
    throw new NvmfNbdError(ErrorCode.PATH_OPTION_CONFLICT,
      `${e.name}: this connect adds a path to ${String(args.nqn)}, whose export was set up by its first connect; ${differ.map((k) => `--${k}`).join(', ')} differ from it (disconnect -n ${String(args.nqn)} and connect again to change them)`);
  }

  /** The path to the same subsystem over the same path (address, host, source) and its entry, if any. */
  private samePath(args: Record<string, unknown>): { entry: Entry; path: PathEntry } | undefined {
    const keys = ['nqn', 'traddr', 'trsvcid', 'hostnqn', 'host-traddr', 'host-iface'];
    for (const e of this.entries.values()) {
      const p = e.paths.find((x) => keys.every((k) => x.args[k] === args[k]));
      if (p !== undefined) return { entry: e, path: p };
    }
    return undefined;
  }

  /** The live entry of the same subsystem (NQN and host NQN) that a new path joins, if any (never a -D one). */
  private sameSubsystem(args: Record<string, unknown>): Entry | undefined {
    const key = this.keyOf(args);
    if (key === undefined) return undefined;
    for (const e of [...this.entries.values()].sort((x, y) => Number(x.name.slice(4)) - Number(y.name.slice(4)))) {
      if (e.key === key && !e.closing) return e;
    }
    return undefined;
  }

  /**
   * Add a path to `e` from a control connect: connected now (an error is the answer and nothing
   * is kept). While the subsystem's session is not up yet (restored, retrying) the path joins
   * its list and is tried with it.
   */
  private async addPath(e: Entry, args: Record<string, unknown>): Promise<PathEntry> {
    const p: PathEntry = { name: allocateName(this.usedNames()), args, pending: true, timer: undefined, lastError: undefined };
    e.paths.push(p);
    const s = e.session;
    if (s === undefined) {
      this.log(`${e.name}: path ${p.name} (${String(args.traddr)}:${String(args.trsvcid)}) recorded; the subsystem is ${e.state}`);
      return p;
    }
    try {
      await s.addPath(p.name, this.o.connect.controllerOptions(args));
    } catch (err) {
      e.paths.splice(e.paths.indexOf(p), 1);
      throw err;
    }
    p.pending = false;
    this.log(`${e.name}: path ${p.name} added (${String(args.traddr)}:${String(args.trsvcid)}; ${e.paths.length} paths)`);
    return p;
  }

  /** Open the session of `e` over its first path that connects, adopt still-held devices, attach the rest when asked, add its other paths. */
  private async open(e: Entry): Promise<void> {
    e.attempts++;
    const args = e.args;
    const sticky = this.o.sticky !== undefined && typeof args.nbd !== 'string';
    const own = this.o.connect.nbdServerOptions?.(args) ?? (typeof args['nbd-idle-timeout'] === 'number' ? { idleTimeoutMs: args['nbd-idle-timeout'] * 1000 } : {});
    const access = own.access ?? this.o.nbdAccess;
    if (sticky && access?.tls !== undefined) throw stickyTlsError();
    let session: ControllerSession | undefined;
    let first: PathEntry | undefined;
    let failure: unknown;
    // A restored subsystem comes back over whichever of its paths answers first.
    for (const p of e.paths) {
      try {
        session = await this.openSession({
          name: e.name,
          pathName: p.name,
          controller: this.o.connect.controllerOptions(p.args),
          iopolicy: this.policyOf(args),
          // Sticky: the session serves a private socket; the holder owns the public endpoint.
          nbd: sticky ? { unixDir: this.holdDir() } : typeof args.nbd === 'string' ? parseConnectNbdSpec(args.nbd) : endpointFor(e.name, this.nbd),
          attach: false,
          connections: typeof args.connections === 'number' ? args.connections : 1,
          readOnly: args['read-only'] === true,
          nbdServer: { ...(own.idleTimeoutMs !== undefined ? { idleTimeoutMs: own.idleTimeoutMs } : {}), ...(access !== undefined ? { access } : {}) },
          log: (m) => this.log(m),
        });
        first = p;
        break;
      } catch (err) {
        failure ??= err;
        p.lastError = { code: (err as { code?: string }).code ?? 'error', message: (err as Error).message };
        if (e.closing || !this.running) break;
      }
    }
    if (session === undefined || first === undefined) throw failure;
    if (e.closing || !this.running) {
      await session.close().catch(() => undefined);
      throw new NvmfNbdError(ErrorCode.ABORTED, `${e.name}: disconnected while connecting`);
    }
    first.pending = false;
    first.lastError = undefined;
    try {
      for (const d of e.adopt) {
        const x = session.exports.find((y) => y.name === d.export);
        if (x !== undefined && (await this.deviceInUse(d.device))) {
          x.device = d.device;
          this.log(`${x.name}: ${d.device} is still attached; serving it again`);
        }
      }
      e.adopt = [];
      if (sticky) await this.ensureHolder(e, session);
      // Sticky: the kernel dials the holder's public endpoint (nbd-client -unix for a socket), so
      // its device survives a daemon restart; otherwise the session's own endpoints.
      const h = e.holder;
      if (args.attach === true) await session.attachAll(h === undefined ? undefined : h.unix !== undefined ? { unix: h.unix } : { tcp: { host: h.host ?? '', port: h.port ?? 0 } });
    } catch (err) {
      await session.close().catch(() => undefined);
      throw err;
    }
    e.session = session;
    e.state = EntryState.LIVE;
    e.lastError = undefined;
    this.watch(e, session);
    for (const p of e.paths) if (p.pending) void this.tryPath(e, p);
  }

  /** A restored path that is not part of the session yet: add it, else retry every reconnect delay. */
  private async tryPath(e: Entry, p: PathEntry): Promise<void> {
    p.timer = undefined;
    const s = e.session;
    if (e.closing || !this.running || s === undefined || !e.paths.includes(p) || !p.pending) return;
    try {
      await s.addPath(p.name, this.o.connect.controllerOptions(p.args));
      p.pending = false;
      p.lastError = undefined;
      this.log(`${e.name}: path ${p.name} added (${String(p.args.traddr)}:${String(p.args.trsvcid)})`);
      await this.saveState();
    } catch (err) {
      p.lastError = { code: (err as { code?: string }).code ?? 'error', message: (err as Error).message };
      if (e.closing || !this.running || !e.paths.includes(p)) return;
      this.log(`${e.name}: path ${p.name} failed: ${p.lastError.message}`);
      const delayS = typeof p.args['reconnect-delay'] === 'number' ? p.args['reconnect-delay'] : DEFAULT_RECONNECT_DELAY_S;
      p.timer = setTimeout(() => void this.tryPath(e, p), Math.max(1, delayS) * 1000);
    }
  }

  /**
   * The session repairs lost connections itself (ResilientController). When its controller gives
   * up (ctrl_loss_tmo, subsystem changed) the entry is dead, as Linux deletes the controller: it
   * stays listed (I/O fails with EIO, the kernel devices stay) until `disconnect`.
   */
  private watch(e: Entry, session: ControllerSession): void {
    session.on('dead', (err: Error & { code?: string }) => {
      if (e.closing || e.session !== session) return;
      e.state = EntryState.DEAD;
      e.lastError = { code: err.code ?? 'error', message: err.message };
      this.log(`${e.name}: dead: ${err.message}; 'nvmf-nbd disconnect -d ${e.name}' removes it`);
    });
    // Changed namespaces change the exports (and attached devices): keep the state file current.
    session.on('namespaces', () => void this.saveState());
    // A path that gave up (ctrl_loss_tmo) while others remained is gone, as Linux deletes that
    // controller: a restart does not bring it back (connect its address again for that).
    session.on('path-removed', (name: string) => {
      const i = e.paths.findIndex((p) => p.name === name);
      if (i < 0 || e.session !== session) return;
      e.paths.splice(i, 1);
      void this.saveState();
    });
  }

  private async tryOpen(e: Entry): Promise<void> {
    e.timer = undefined;
    if (e.closing || !this.running) return;
    try {
      await this.open(e);
      this.log(`${e.name}: connected`);
      await this.saveState();
    } catch (err) {
      if (e.closing || !this.running) return;
      e.lastError = { code: (err as { code?: string }).code ?? 'error', message: (err as Error).message };
      this.log(`${e.name}: connect failed: ${e.lastError.message}`);
      this.scheduleRetry(e);
    }
  }

  private scheduleRetry(e: Entry): void {
    if (e.closing || !this.running) return;
    const delayS = typeof e.args['reconnect-delay'] === 'number' ? e.args['reconnect-delay'] : DEFAULT_RECONNECT_DELAY_S;
    const lossS = typeof e.args['ctrl-loss-tmo'] === 'number' ? e.args['ctrl-loss-tmo'] : DEFAULT_CTRL_LOSS_TMO_S;
    if (lossS >= 0 && Date.now() - e.since > lossS * 1000) {
      e.state = EntryState.DEAD;
      this.log(`${e.name}: giving up after ctrl-loss-tmo ${lossS} s`);
      return;
    }
    e.state = EntryState.CONNECTING;
    e.timer = setTimeout(() => void this.tryOpen(e), Math.max(1, delayS) * 1000);
  }

  /**
   * `disconnect`: `{name}` — a discovery controller, or a path (controller) of a subsystem: that
   * path only while others remain (its exports stay), the subsystem with its last one; a
   * subsystem name that is no longer a path name removes the subsystem. `{nqn}` — every
   * subsystem of that NQN with all its paths. `{device}` — the subsystem serving /dev/nbdX.
   * `{traddr, trsvcid?, nqn?, host-traddr?}` — the paths at that address.
   */
  private disconnect(a: Record<string, unknown>): Promise<unknown> {
    const name = argString(a, 'name');
    const nqn = argString(a, 'nqn');
    const device = argString(a, 'device');
    const traddr = argString(a, 'traddr');
    if (name !== undefined && this.discoveries.has(name)) return this.discoveries.close([name]).then((disconnected) => ({ disconnected }));
    if (traddr !== undefined) {
      const trsvcid = a.trsvcid;
      const hostTraddr = argString(a, 'host-traddr');
      const names: string[] = [];
      for (const e of this.entries.values()) {
        for (const p of e.paths) {
          if (p.args.traddr === traddr && (trsvcid === undefined || p.args.trsvcid === trsvcid) && (nqn === undefined || p.args.nqn === nqn)
            && (hostTraddr === undefined || p.args['host-traddr'] === hostTraddr)) names.push(p.name);
        }
      }
      if (names.length === 0) throw new NvmfNbdError(ErrorCode.NO_SUCH_CONTROLLER, `no path at ${traddr}${trsvcid !== undefined ? `:${String(trsvcid)}` : ''}${nqn !== undefined ? ` to ${nqn}` : ''}`);
      return this.disconnectPaths(names).then((disconnected) => ({ disconnected }));
    }
    if (name !== undefined && this.findPath(name) !== undefined) return this.disconnectPaths([name]).then((disconnected) => ({ disconnected }));
    let match: Entry[];
    if (name !== undefined) match = [...this.entries.values()].filter((e) => e.name === name);
    else if (nqn !== undefined) match = [...this.entries.values()].filter((e) => e.args.nqn === nqn);
    else if (device !== undefined) match = [...this.entries.values()].filter((e) => e.session?.exports.some((x) => x.device === device) === true || e.adopt.some((d) => d.device === device));
    else throw new NvmfNbdError(ErrorCode.CLI_USAGE, 'disconnect needs name, nqn, device or traddr');
    if (match.length === 0) throw new NvmfNbdError(ErrorCode.NO_SUCH_CONTROLLER, `no controller matches ${name ?? nqn ?? device ?? ''}`);
    return this.closeEntries(match).then((disconnected) => ({ disconnected }));
  }

  /**
   * Remove these paths; a subsystem whose last path goes is closed and forgotten (exports
   * withdrawn, devices detached), one that keeps a path keeps its exports and devices.
   * @returns the names disconnected (paths, and subsystems closed with their last path)
   */
  private async disconnectPaths(names: readonly string[]): Promise<string[]> {
    const byEntry = new Map<Entry, PathEntry[]>();
    for (const n of names) {
      const f = this.findPath(n);
      if (f === undefined) continue;
      byEntry.set(f.entry, [...byEntry.get(f.entry) ?? [], f.path]);
    }
    const out: string[] = [];
    const whole: Entry[] = [];
    let first: unknown;
    for (const [e, ps] of byEntry) {
      if (ps.length >= e.paths.length) {
        whole.push(e);
        continue;
      }
      for (const p of ps) {
        if (p.timer !== undefined) clearTimeout(p.timer);
        e.paths.splice(e.paths.indexOf(p), 1);
        try {
          if (!p.pending && e.session !== undefined) await e.session.removePath(p.name);
        } catch (err) {
          first ??= err;
        }
        this.log(`${e.name}: path ${p.name} (${String(p.args.traddr)}:${String(p.args.trsvcid)}) removed; ${e.paths.length} left`);
        out.push(p.name);
      }
    }
    if (whole.length > 0) out.push(...await this.closeEntries(whole).catch((err: unknown) => { first ??= err; return whole.map((e) => e.name); }));
    else await this.saveState();
    if (first !== undefined) throw first;
    return out;
  }

  /** Detach, drain, shut down and forget `list`; the state file is rewritten once. */
  private async closeEntries(list: Entry[]): Promise<string[]> {
    let first: unknown;
    const names: string[] = [];
    for (const e of list) {
      try {
        await this.closeEntry(e, false);
      } catch (err) {
        first ??= err;
      }
      this.entries.delete(e.name);
      names.push(e.name);
    }
    await this.saveState();
    if (first !== undefined) throw first;
    return names;
  }

  private async closeEntry(e: Entry, keepAttached: boolean): Promise<void> {
    e.closing = true;
    e.state = EntryState.CLOSING;
    if (e.timer !== undefined) clearTimeout(e.timer);
    e.timer = undefined;
    for (const p of e.paths) {
      if (p.timer !== undefined) clearTimeout(p.timer);
      p.timer = undefined;
    }
    const s = e.session;
    if (s !== undefined) {
      if (keepAttached) for (const x of s.exports) x.device = undefined;
      await s.close();
    }
    // A daemon that stops keeps its holders (they exist to outlive it); a disconnect ends them.
    if (!keepAttached && this.running) this.stopHolder(e);
  }

  private holdDir(): string {
    return path.join(this.o.stateDir, 'nbd-hold');
  }

  /** Reuse the controller's holder when one from before answers for the same endpoints, else start one. */
  private async ensureHolder(e: Entry, session: ControllerSession): Promise<void> {
    const sticky = this.o.sticky;
    const first = session.exports[0];
    if (sticky === undefined || first === undefined || !('unix' in first.endpoint)) return;
    e.holder = await ensureHolder({
      name: e.name, publicEndpoint: endpointFor(e.name, this.nbd), backend: first.endpoint.unix, holdDir: this.holdDir(),
      command: sticky.command, holdMs: sticky.holdMs, allowAnyLocalUser: this.o.nbdAccess?.allowAnyLocalUser === true, log: this.log,
    });
  }

  private stopHolder(e: Entry): void {
    const h = e.holder;
    if (h === undefined) return;
    e.holder = undefined;
    stopHolder(h);
  }

  private saveState(): Promise<void> {
    const controllers: StateController[] = this.sorted().filter((e) => !e.closing).map((e) => ({
      name: e.name,
      args: e.args,
      devices: e.session !== undefined
        ? e.session.exports.filter((x) => x.device !== undefined).map((x) => ({ export: x.name, device: x.device as string }))
        : e.adopt,
      // One path named like the entry, with its options: the layout from before multipath.
      ...(e.paths.length === 1 && e.paths[0]?.name === e.name && e.paths[0].args === e.args ? {} : { paths: e.paths.map((x) => ({ name: x.name, args: x.args })) }),
    }));
    const links = this.syncLinks();
    // Writes are serialised: the last one always reflects the latest state.
    this.stateWrite = this.stateWrite.catch(() => undefined).then(() => writeState(this.stateFile, { version: 1, controllers }));
    const state = this.stateWrite.catch((err: unknown) => this.log(`cannot write ${this.stateFile}: ${(err as Error).message}`));
    return Promise.all([state, links]).then(() => undefined);
  }

  // -------------------------------------------------------------------------------------------
  // Config files and discovery logs
  // -------------------------------------------------------------------------------------------

  /**
   * Apply config-file entries at start (nothing is awaited: each connects and retries in the
   * background like a state-file entry). I/O entries already connected over that path are left
   * alone; discovery entries become discovery controllers (persistent ones stay, the others do
   * one read, retrying until it works).
   */
  applyConfig(entries: ReadonlyArray<{ kind: 'io' | 'discovery'; args: Record<string, unknown>; persistent: boolean; where: string }>): void {
    for (const p of entries) {
      try {
        if (p.kind === 'io') {
          const args = withoutUndefined(p.args);
          checkArgs(args, this.o.connect.specs);
          this.o.connect.controllerOptions(args);
          this.connectFromLog(args, `${String(args.nqn)} at ${String(args.traddr)}:${String(args.trsvcid)} from ${p.where}`);
        } else {
          this.discoveries.fromConfig(p.args, p.persistent, p.where);
        }
      } catch (err) {
        this.log(`${p.where}: ${(err as Error).message}`);
      }
    }
  }

  /**
   * A config-file or discovery-log entry: the controller already connected over that path, or a
   * new one connecting in the background (its first attempt is `opening`).
   */
  private connectFromLog(args: Record<string, unknown>, why: string): { name: string; opening?: Promise<void> } {
    const existing = this.samePath(args);
    if (existing !== undefined) return { name: existing.path.name };
    // Another address of a subsystem already known: a path of it, tried (and retried every
    // reconnect delay) in the background like a restored one.
    const sub = this.sameSubsystem(args);
    if (sub !== undefined) {
      const p: PathEntry = { name: allocateName(this.usedNames()), args, pending: true, timer: undefined, lastError: undefined };
      sub.paths.push(p);
      this.log(`${why}: a path of ${sub.name} as ${p.name}`);
      return { name: p.name, opening: sub.session !== undefined ? this.tryPath(sub, p) : Promise.resolve() };
    }
    const name = allocateName(this.usedNames());
    const e = this.newEntry(name, this.withIoPolicy(args));
    this.entries.set(name, e);
    this.log(`${why}: connecting as ${name}`);
    return { name, opening: this.tryOpen(e) };
  }

  /** `<stateDir>/by-id`: the udev-less stable names of attached namespaces. */
  get byIdDir(): string {
    return path.join(this.o.stateDir, 'by-id');
  }

  /** Bring the by-id links in line with the attached devices (serialised; errors logged). */
  syncLinks(): Promise<void> {
    const wants: ByIdWant[] = [];
    for (const e of this.entries.values()) {
      for (const x of e.session?.exports ?? []) if (x.device !== undefined && x.stableId !== undefined) wants.push({ id: x.stableId, device: x.device });
    }
    this.linkWrite = this.linkWrite.catch(() => undefined).then(async () => { await syncByIdLinks(this.byIdDir, wants, this.o.sysfsRoot !== undefined ? { sysfsRoot: this.o.sysfsRoot } : {}); });
    return this.linkWrite.catch((err: unknown) => this.log(`cannot update ${this.byIdDir}: ${(err as Error).message}`));
  }

  // -------------------------------------------------------------------------------------------
  // Listing and admin pass-through
  // -------------------------------------------------------------------------------------------

  /** The entries in name order. */
  private sorted(): Entry[] {
    return [...this.entries.values()].sort((x, y) => Number(x.name.slice(4)) - Number(y.name.slice(4)));
  }

  private live(a: Record<string, unknown>): ControllerSession {
    const name = argString(a, 'name');
    if (name === undefined) throw new NvmfNbdError(ErrorCode.CLI_USAGE, 'a controller name (nvmeX) is required');
    const e = this.entries.get(name);
    if (e === undefined) throw new NvmfNbdError(ErrorCode.NO_SUCH_CONTROLLER, `no controller ${name}`);
    if (e.session === undefined) throw new NvmfNbdError(ErrorCode.CONNECTION_CLOSED, `${name} is ${e.state}${e.lastError !== undefined ? `: ${e.lastError.message}` : ''}`);
    return e.session;
  }

  // -------------------------------------------------------------------------------------------
  // Shutdown
  // -------------------------------------------------------------------------------------------

  /** Names currently held (for tests). */
  names(): string[] {
    return [...this.entries.keys()];
  }

  /**
   * Stop accepting, close every controller (detaching devices unless keepAttached), remove the
   * control socket. The state file is kept. Safe to call twice.
   */
  shutdown(): Promise<void> {
    this.shutdownPromise ??= (async () => {
      this.running = false;
      const closed = new Promise<void>((resolve) => {
        if (this.server === undefined) resolve();
        else this.server.close(() => resolve());
      });
      for (const c of this.conns) c.destroy();
      await this.discoveries.stop();
      let first: unknown;
      for (const e of this.entries.values()) {
        await this.closeEntry(e, this.o.keepAttached === true).catch((err: unknown) => {
          first ??= err;
          this.log(`${e.name}: ${(err as Error).message}`);
        });
      }
      await this.stateWrite.catch(() => undefined);
      // Detached devices lose their links; kept ones (--keep-attached) keep them.
      if (this.o.keepAttached !== true) await this.syncLinks();
      await closed;
      await fsp.unlink(this.controlPath).catch(() => undefined);
      if (first !== undefined) throw first;
    })();
    return this.shutdownPromise;
  }
}
