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
import * as fs from 'node:fs';
import { promises as fsp } from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { ErrorCode, NvmfNbdError } from '../errors';
import type { OptionSpec } from '../cli/args';
import { ControllerSession, parseNbdSpec } from './session';
import type { NbdSpec, SessionOptions } from './session';
import { ControlVerb, LineDecoder, encodeResponse, errorResponse, parseRequest, requestIdOf } from './control';
import type { ControlRequest, ControlResponse } from './control';
import { allocateName, readState, withoutSecrets, writeState } from './state-file';
import type { StateController, StateDevice } from './state-file';
import { AdminOpcode, Cns, sqeGetLogPage, sqeIdentify } from '../wire';

/** Where the daemon serves NBD by default: a directory of Unix sockets, or TCP from a base port. */
export type DaemonNbdSpec = { unixDir: string } | { tcp: { host: string; basePort: number } };

/** Parse the daemon's `--nbd`: `unix:DIR` or `tcp:HOST:BASEPORT` (nvmeN listens on BASEPORT+N). */
export function parseDaemonNbdSpec(s: string): DaemonNbdSpec {
  const n = parseNbdSpec(s);
  return 'unixDir' in n ? n : { tcp: { host: n.tcp.host, basePort: n.tcp.port } };
}

/** The NBD endpoint spec of controller `name` (`nvmeN`) under the daemon's default. */
export function endpointFor(name: string, spec: DaemonNbdSpec): NbdSpec {
  if ('unixDir' in spec) return { unixDir: spec.unixDir };
  const index = Number(name.slice(4));
  return { tcp: { host: spec.tcp.host, port: spec.tcp.basePort === 0 ? 0 : spec.tcp.basePort + index } };
}

/** What the daemon needs from the connect verb: its options and the args → controller mapping. */
export interface ConnectBinding {
  /** The connect verb's option specs (requests are checked against them). */
  readonly specs: readonly OptionSpec[];
  /** Controller options (Linux defaults filled in) from connect's parsed options. */
  controllerOptions(args: Record<string, unknown>): SessionOptions['controller'];
  /** Human and JSON renderings of a new session, as the foreground connect prints them. */
  render(s: ControllerSession): { text: string; json: unknown };
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
  /** Is this kernel device still held (by a persist-mode nbd-client)? Default: sysfs + /proc. */
  readonly deviceInUse?: (device: string) => Promise<boolean>;
  readonly log?: (msg: string) => void;
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

interface Entry {
  readonly name: string;
  readonly args: Record<string, unknown>;
  state: EntryStateValue;
  session: ControllerSession | undefined;
  /** Devices from the state file (or a lost session) to adopt when the session comes back. */
  adopt: StateDevice[];
  lastError: { code: string; message: string } | undefined;
  attempts: number;
  since: number;
  timer: NodeJS.Timeout | undefined;
  closing: boolean;
}

/** Default reconnect delay (Linux `reconnect_delay`), seconds. */
const DEFAULT_RECONNECT_DELAY_S = 10;
/** Default controller loss timeout (Linux `ctrl_loss_tmo`), seconds. */
const DEFAULT_CTRL_LOSS_TMO_S = 600;
/** Largest data transfer of get-log / admin-passthru over the control socket (base64 must fit a line). */
export const MAX_PASSTHRU_DATA = 512 * 1024;
/** Requests queued per control connection before the daemon stops reading it. */
const MAX_QUEUED_REQUESTS = 16;

/** True when something listens on the Unix socket `p`. */
export function socketAlive(p: string, timeoutMs = 1000): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(p);
    const t = setTimeout(() => { s.destroy(); resolve(false); }, timeoutMs);
    s.once('connect', () => { clearTimeout(t); s.destroy(); resolve(true); });
    s.once('error', () => { clearTimeout(t); resolve(false); });
  });
}

/**
 * Default device check: the kernel still has a receiver on it (`/sys/block/nbdX/pid`), or an
 * `nbd-client` process for it is alive (persist mode, between reconnects).
 */
export async function kernelDeviceInUse(device: string, sysfsRoot = '/sys', procRoot = '/proc'): Promise<boolean> {
  const name = path.basename(device);
  try {
    await fsp.access(path.join(sysfsRoot, 'block', name, 'pid'));
    return true;
  } catch {
    // not connected right now; maybe reconnecting
  }
  let pids: string[];
  try {
    pids = (await fsp.readdir(procRoot)).filter((p) => /^\d+$/.test(p));
  } catch {
    return false;
  }
  for (const pid of pids) {
    try {
      const argv = (await fsp.readFile(path.join(procRoot, pid, 'cmdline'), 'utf8')).split('\0');
      if (argv.some((a) => path.basename(a) === 'nbd-client') && argv.includes(device)) return true;
    } catch {
      // gone meanwhile
    }
  }
  return false;
}

/** Check `args` against option specs: known names, right types, bounds. @throws CLI_ERR_USAGE */
export function checkArgs(args: Record<string, unknown>, specs: readonly OptionSpec[]): void {
  const byLong = new Map(specs.map((s) => [s.long, s]));
  for (const [k, v] of Object.entries(args)) {
    const spec = byLong.get(k);
    if (spec === undefined) throw new NvmfNbdError(ErrorCode.CLI_USAGE, `unknown connect option '${k.slice(0, 64)}'`);
    if (v === undefined || v === null) continue;
    const values = spec.repeat === true && Array.isArray(v) ? (v as unknown[]) : [v];
    for (const x of values) {
      const ok = spec.type === 'boolean' ? typeof x === 'boolean'
        : spec.type === 'string' ? typeof x === 'string'
          : typeof x === 'number' && Number.isSafeInteger(x) && (spec.min === undefined || x >= spec.min) && (spec.max === undefined || x <= spec.max);
      if (!ok) throw new NvmfNbdError(ErrorCode.CLI_USAGE, `connect option --${k}: bad value ${JSON.stringify(x)?.slice(0, 64) ?? ''}`);
    }
  }
}

function argString(args: Record<string, unknown>, k: string): string | undefined {
  const v = args[k];
  return typeof v === 'string' ? v : undefined;
}

function argInt(args: Record<string, unknown>, k: string, min: number, max: number, def?: number): number {
  const v = args[k] ?? def;
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) {
    throw new NvmfNbdError(ErrorCode.CLI_USAGE, `${k}: expected an integer in ${min}..${max}`);
  }
  return v;
}

/** The long-running engine. */
export class Daemon {
  private readonly entries = new Map<string, Entry>();
  private readonly conns = new Set<net.Socket>();
  private server: net.Server | undefined;
  private running = true;
  private stateWrite: Promise<void> = Promise.resolve();
  private shutdownPromise: Promise<void> | undefined;
  readonly controlPath: string;
  readonly stateFile: string;
  readonly nbd: DaemonNbdSpec;
  private readonly log: (msg: string) => void;
  private readonly openSession: (o: SessionOptions) => Promise<ControllerSession>;
  private readonly deviceInUse: (device: string) => Promise<boolean>;

  private constructor(private readonly o: DaemonOptions) {
    this.controlPath = o.controlPath ?? path.join(o.stateDir, 'control.sock');
    this.stateFile = o.stateFile ?? path.join(o.stateDir, 'state.json');
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
    await fsp.mkdir(o.stateDir, { recursive: true, mode: 0o700 });
    await d.prepareControlPath();
    const state = await readState(d.stateFile);
    // Names are reserved before the socket opens, so a CLI connect cannot take one of them.
    for (const c of state.controllers) d.entries.set(c.name, d.newEntry(c.name, c.args, c.devices));
    await d.listen();
    for (const e of d.entries.values()) {
      d.log(`${e.name}: reconnecting ${String(e.args.nqn)} at ${String(e.args.traddr)}:${String(e.args.trsvcid)} from the state file`);
      void d.tryOpen(e);
    }
    return d;
  }

  private newEntry(name: string, args: Record<string, unknown>, adopt: StateDevice[] = []): Entry {
    return { name, args, state: EntryState.CONNECTING, session: undefined, adopt, lastError: undefined, attempts: 0, since: Date.now(), timer: undefined, closing: false };
  }

  private async prepareControlPath(): Promise<void> {
    await fsp.mkdir(path.dirname(this.controlPath), { recursive: true, mode: 0o700 });
    let st: fs.Stats;
    try {
      st = await fsp.lstat(this.controlPath);
    } catch {
      return;
    }
    if (!st.isSocket()) throw new NvmfNbdError(ErrorCode.CFG_INVALID, `${this.controlPath} exists and is not a socket`);
    if (await socketAlive(this.controlPath)) throw new NvmfNbdError(ErrorCode.DAEMON_RUNNING, `a daemon already answers on ${this.controlPath}`);
    // A stale socket from a killed daemon.
    await fsp.unlink(this.controlPath);
  }

  private async listen(): Promise<void> {
    const server = net.createServer((sock) => this.serveControl(sock));
    // The bind happens inside listen(): under umask 0177 the socket never exists with looser mode.
    const old = process.umask(0o177);
    try {
      server.listen(this.controlPath);
    } finally {
      process.umask(old);
    }
    await new Promise<void>((resolve, reject) => {
      server.once('listening', resolve);
      server.once('error', reject);
    });
    await fsp.chmod(this.controlPath, 0o600);
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
    const decoder = new LineDecoder();
    let queued = 0;
    let chain = Promise.resolve();
    const reply = (r: ControlResponse): void => {
      if (!sock.destroyed) sock.write(encodeResponse(r));
    };
    sock.on('data', (chunk: Buffer) => {
      try {
        decoder.push(chunk);
      } catch (err) {
        // Oversized line: answer once and hang up; the stream cannot be resynchronised.
        sock.end(encodeResponse(errorResponse(0, err)));
        sock.destroySoon();
        return;
      }
      for (let line = decoder.next(); line !== undefined; line = decoder.next()) {
        const l = line;
        queued++;
        if (queued >= MAX_QUEUED_REQUESTS) sock.pause();
        // Requests of one connection are answered in order.
        chain = chain.then(async () => {
          reply(await this.handleLine(l));
          queued--;
          if (queued < MAX_QUEUED_REQUESTS && sock.isPaused()) sock.resume();
        });
      }
    });
    sock.on('error', () => undefined);
    sock.on('close', () => this.conns.delete(sock));
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
      case ControlVerb.DISCONNECT_ALL:
        return { disconnected: await this.closeEntries([...this.entries.values()]) };
      case ControlVerb.LIST:
        return { controllers: [...this.entries.values()].sort((x, y) => Number(x.name.slice(4)) - Number(y.name.slice(4))).map((e) => this.describe(e)) };
      case ControlVerb.ID_CTRL:
        return this.idCtrl(a);
      case ControlVerb.ID_NS:
        return this.idNs(a);
      case ControlVerb.GET_LOG:
        return this.getLog(a);
      case ControlVerb.ADMIN_PASSTHRU:
        return this.adminPassthru(a);
      default: {
        const never: never = req.verb;
        throw new NvmfNbdError(ErrorCode.CONTROL_UNKNOWN_VERB, `unknown verb ${String(never)}`);
      }
    }
  }

  // -------------------------------------------------------------------------------------------
  // Connect, reconnect, disconnect
  // -------------------------------------------------------------------------------------------

  private async connect(raw: Record<string, unknown>): Promise<unknown> {
    if (!this.running) throw new NvmfNbdError(ErrorCode.DAEMON_UNAVAILABLE, 'the daemon is shutting down');
    const args = withoutSecrets(raw);
    checkArgs(args, this.o.connect.specs);
    // Validates the required flags before a name is taken.
    this.o.connect.controllerOptions(args);
    if (typeof args.nbd === 'string') parseNbdSpec(args.nbd);
    for (const e of this.entries.values()) {
      if (e.args.nqn === args.nqn && e.args.traddr === args.traddr && e.args.trsvcid === args.trsvcid && e.args.hostnqn === args.hostnqn) {
        throw new NvmfNbdError(ErrorCode.ALREADY_CONNECTED, `${String(args.nqn)} at ${String(args.traddr)}:${String(args.trsvcid)} is already connected as ${e.name}`);
      }
    }
    const name = allocateName(this.entries.keys());
    const e = this.newEntry(name, args);
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

  /** Open the session of `e`, adopt still-held devices, attach the rest when asked. */
  private async open(e: Entry): Promise<void> {
    e.attempts++;
    const args = e.args;
    const session = await this.openSession({
      name: e.name,
      controller: this.o.connect.controllerOptions(args),
      nbd: typeof args.nbd === 'string' ? parseNbdSpec(args.nbd) : endpointFor(e.name, this.nbd),
      attach: false,
      connections: typeof args.connections === 'number' ? args.connections : 1,
      readOnly: args['read-only'] === true,
      log: (m) => this.log(m),
    });
    if (e.closing || !this.running) {
      await session.close().catch(() => undefined);
      throw new NvmfNbdError(ErrorCode.ABORTED, `${e.name}: disconnected while connecting`);
    }
    try {
      for (const d of e.adopt) {
        const x = session.exports.find((y) => y.name === d.export);
        if (x !== undefined && (await this.deviceInUse(d.device))) {
          x.device = d.device;
          this.log(`${x.name}: ${d.device} is still attached; serving it again`);
        }
      }
      e.adopt = [];
      if (args.attach === true) await session.attachAll();
    } catch (err) {
      await session.close().catch(() => undefined);
      throw err;
    }
    e.session = session;
    e.state = EntryState.LIVE;
    e.lastError = undefined;
    this.watch(e, session);
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

  private disconnect(a: Record<string, unknown>): Promise<unknown> {
    const name = argString(a, 'name');
    const nqn = argString(a, 'nqn');
    const device = argString(a, 'device');
    let match: Entry[];
    if (name !== undefined) match = [...this.entries.values()].filter((e) => e.name === name);
    else if (nqn !== undefined) match = [...this.entries.values()].filter((e) => e.args.nqn === nqn);
    else if (device !== undefined) match = [...this.entries.values()].filter((e) => e.session?.exports.some((x) => x.device === device) === true || e.adopt.some((d) => d.device === device));
    else throw new NvmfNbdError(ErrorCode.CLI_USAGE, 'disconnect needs name, nqn or device');
    if (match.length === 0) throw new NvmfNbdError(ErrorCode.NO_SUCH_CONTROLLER, `no controller matches ${name ?? nqn ?? device ?? ''}`);
    return this.closeEntries(match).then((disconnected) => ({ disconnected }));
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
    const s = e.session;
    if (s === undefined) return;
    if (keepAttached) for (const x of s.exports) x.device = undefined;
    await s.close();
  }

  private saveState(): Promise<void> {
    const controllers: StateController[] = [...this.entries.values()].filter((e) => !e.closing).map((e) => ({
      name: e.name,
      args: e.args,
      devices: e.session !== undefined
        ? e.session.exports.filter((x) => x.device !== undefined).map((x) => ({ export: x.name, device: x.device as string }))
        : e.adopt,
    }));
    // Writes are serialised: the last one always reflects the latest state.
    this.stateWrite = this.stateWrite.catch(() => undefined).then(() => writeState(this.stateFile, { version: 1, controllers }));
    return this.stateWrite.catch((err: unknown) => this.log(`cannot write ${this.stateFile}: ${(err as Error).message}`));
  }

  // -------------------------------------------------------------------------------------------
  // Listing and admin pass-through
  // -------------------------------------------------------------------------------------------

  private describe(e: Entry): Record<string, unknown> {
    const base: Record<string, unknown> = {
      name: e.name,
      state: e.state,
      attempts: e.attempts,
      lastError: e.lastError ?? null,
      subnqn: e.args.nqn,
      traddr: e.args.traddr,
      trsvcid: e.args.trsvcid,
    };
    const s = e.session;
    if (s === undefined) return { ...base, exports: e.adopt.map((d) => ({ name: d.export, device: d.device })) };
    // The session's description carries the controller's own state (live, connecting while
    // it reconnects, deleting, dead), reconnects, attempts and last error.
    return { ...base, ...s.describe(), ...(e.closing ? { state: EntryState.CLOSING } : {}) };
  }

  private live(a: Record<string, unknown>): ControllerSession {
    const name = argString(a, 'name');
    if (name === undefined) throw new NvmfNbdError(ErrorCode.CLI_USAGE, 'a controller name (nvmeX) is required');
    const e = this.entries.get(name);
    if (e === undefined) throw new NvmfNbdError(ErrorCode.NO_SUCH_CONTROLLER, `no controller ${name}`);
    if (e.session === undefined) throw new NvmfNbdError(ErrorCode.CONNECTION_CLOSED, `${name} is ${e.state}${e.lastError !== undefined ? `: ${e.lastError.message}` : ''}`);
    return e.session;
  }

  private async idCtrl(a: Record<string, unknown>): Promise<unknown> {
    const s = this.live(a);
    const r = await s.controller.adminCommand(sqeIdentify(Cns.CONTROLLER), { dataInLength: 4096 });
    return { name: s.name, cntlid: s.controller.cntlid, raw: (r.data as Buffer).toString('base64') };
  }

  private async idNs(a: Record<string, unknown>): Promise<unknown> {
    const s = this.live(a);
    const nsid = argInt(a, 'nsid', 1, 0xfffffffe);
    // As the direct id-ns: an inactive namespace is an error, not a page of zeroes.
    if (!s.controller.namespaces.has(nsid)) throw new NvmfNbdError(ErrorCode.NAMESPACE_NOT_FOUND, `namespace ${nsid} is not active on ${s.name}`);
    const r = await s.controller.adminCommand(sqeIdentify(Cns.NAMESPACE, nsid), { dataInLength: 4096 });
    return { name: s.name, nsid, raw: (r.data as Buffer).toString('base64') };
  }

  private async getLog(a: Record<string, unknown>): Promise<unknown> {
    const s = this.live(a);
    const lid = argInt(a, 'lid', 0, 255);
    const len = argInt(a, 'len', 4, MAX_PASSTHRU_DATA);
    if (len % 4 !== 0) throw new NvmfNbdError(ErrorCode.CLI_USAGE, 'log length must be a multiple of 4');
    const nsid = argInt(a, 'nsid', 0, 0xffffffff, 0xffffffff);
    const offset = argInt(a, 'offset', 0, Number.MAX_SAFE_INTEGER, 0);
    const lsp = argInt(a, 'lsp', 0, 127, 0);
    const r = await s.controller.adminCommand(sqeGetLogPage(lid, len, nsid, offset, lsp, a.rae === true), { dataInLength: len });
    return { name: s.name, lid, data: (r.data as Buffer).toString('base64') };
  }

  private async adminPassthru(a: Record<string, unknown>): Promise<unknown> {
    const s = this.live(a);
    const opcode = argInt(a, 'opcode', 0, 255);
    // These would break the session itself: Fabrics commands change properties/queues, and an
    // extra Asynchronous Event Request never completes.
    if (opcode === AdminOpcode.FABRICS || opcode === AdminOpcode.ASYNC_EVENT_REQUEST) {
      throw new NvmfNbdError(ErrorCode.INVALID_ARGUMENT, `opcode 0x${opcode.toString(16)} is reserved for the daemon's own use`);
    }
    const dataLen = argInt(a, 'dataLen', 0, MAX_PASSTHRU_DATA, 0);
    const sqe = Buffer.alloc(64);
    sqe[0] = opcode;
    sqe.writeUInt32LE(argInt(a, 'nsid', 0, 0xffffffff, 0), 4);
    sqe.writeUInt32LE(argInt(a, 'cdw2', 0, 0xffffffff, 0), 8);
    sqe.writeUInt32LE(argInt(a, 'cdw3', 0, 0xffffffff, 0), 12);
    for (let i = 10; i <= 15; i++) sqe.writeUInt32LE(argInt(a, `cdw${i}`, 0, 0xffffffff, 0), 40 + (i - 10) * 4);
    // Direction: as asked (`direction`: read|write|none), else from opcode bits 1:0.
    const dir = a.direction === 'write' ? 1 : a.direction === 'read' ? 2 : a.direction === 'none' ? 0 : opcode & 3;
    const o: { dataOut?: Buffer; dataInLength?: number; timeoutMs?: number } = {};
    if (typeof a.timeoutMs === 'number' && a.timeoutMs > 0) o.timeoutMs = a.timeoutMs;
    if (dir === 3) throw new NvmfNbdError(ErrorCode.UNSUPPORTED, 'bidirectional opcodes are not supported');
    if (dir === 1) {
      const data = typeof a.data === 'string' ? Buffer.from(a.data, 'base64') : Buffer.alloc(dataLen);
      if (data.length === 0 || data.length > MAX_PASSTHRU_DATA) throw new NvmfNbdError(ErrorCode.CLI_USAGE, 'a host-to-controller opcode needs 1..512 KiB of data');
      o.dataOut = data;
    } else if (dir === 2) {
      if (dataLen === 0) throw new NvmfNbdError(ErrorCode.CLI_USAGE, 'a controller-to-host opcode needs --data-len');
      o.dataInLength = dataLen;
    } else if (dataLen !== 0 || a.data !== undefined) {
      throw new NvmfNbdError(ErrorCode.CLI_USAGE, `opcode 0x${opcode.toString(16)} transfers no data (bits 1:0 are 00b)`);
    }
    const r = await s.controller.adminCommand(sqe, o);
    return {
      name: s.name,
      dw0: r.cqe.dw0,
      dw1: r.cqe.dw1,
      status: r.cqe.status,
      data: r.data !== undefined ? r.data.toString('base64') : null,
    };
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
      let first: unknown;
      for (const e of this.entries.values()) {
        await this.closeEntry(e, this.o.keepAttached === true).catch((err: unknown) => {
          first ??= err;
          this.log(`${e.name}: ${(err as Error).message}`);
        });
      }
      await this.stateWrite.catch(() => undefined);
      await closed;
      await fsp.unlink(this.controlPath).catch(() => undefined);
      if (first !== undefined) throw first;
    })();
    return this.shutdownPromise;
  }
}
