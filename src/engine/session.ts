/**
 * A controller session: one connected NVMe controller, its namespaces served as NBD exports
 * (`nvme0n1`, `nvme0n2`, …) on private endpoints, and optionally each export attached to a kernel
 * `/dev/nbdX`. The foreground `connect` verb, the demo and the daemon all build on this.
 *
 * Closing order matters for data: detach the kernel devices first (the kernel flushes and sends
 * NBD_CMD_DISC), then drain and close the NBD server, then shut the controller down (CC.SHN).
 *
 * The controller is a {@link ResilientController}: a lost association is repaired while the NBD
 * connections stay open and their requests wait. Namespace changes reported by the controller
 * (AEN or found after a reconnect) change the exports. Each export serves the controller's
 * {@link Namespace} object of its namespace: a new namespace gets an export (and a /dev/nbdX when
 * the session attaches); a removed one (its object already retired by the controller: I/O fails
 * with EIO) is drained, detached and its export withdrawn; a reformatted one (another block size)
 * is withdrawn the same way and its NEW object exported under the same name; a capacity change
 * is logged and recorded (`capacityChanged`), because the
 * size of an NBD export cannot change under a connected client (NBD has no resize notice): the
 * client sees the new size after it reconnects.
 *
 * When the controller gives up (ctrl_loss_tmo, subsystem changed) the session stays as it is —
 * every request fails with EIO — and emits `dead`; its owner decides what to close or keep
 * (the connect verb exits, the daemon keeps the kernel devices for a later session).
 */
import { EventEmitter } from 'node:events';
import * as path from 'node:path';
import type { ControllerOptions, NamespaceChanges, NamespaceInfo } from '../controller/controller';
import { DEFAULT_MAX_NAMESPACES } from '../controller/controller';
import type { CtrlStateValue, ResilienceOptions } from '../controller/resilient';
import { MultipathController } from '../controller/multipath';
import type { MultipathOptions } from '../controller/multipath';
import type { Namespace } from '../controller/namespace';
import { Duplex } from 'node:stream';
import { NbdServer, formatEndpoint } from '../nbd/server';
import type { NbdEndpoint, NbdExportStats, NbdServerOptions } from '../nbd/server';
import { attach, detach } from '../attach/nbd-client';
import { formatUuid, nbdBackendIdentifier, parseNsIdDescriptors, stableNamespaceId } from '../wire/ns-descriptors';
import type { NamespaceIdentifiers } from '../wire/ns-descriptors';
import { ErrorCode, NvmfNbdError } from '../errors';
import { Cns, sqeIdentify } from '../wire';
import { DEFAULT_IOPOLICY } from '../config/option-spec';
import type { IoPolicyValue } from '../config/option-spec';
import type { TopologyPath, TopologySubsystem } from './topology';

/**
 * Where a session serves NBD: a private directory of Unix sockets, loopback TCP, an inherited
 * listening socket (systemd socket activation: `LISTEN_FDS`), or one connection on stdin/stdout
 * (`--stdio`, as libnbd's `nbd_connect_command` and `nbdinfo -- CMD` start a server).
 */
export type NbdSpec = { unixDir: string } | { tcp: { host: string; port: number } } | { fd: number } | { stdio: true };

/** Parse the `--nbd` option: `unix:DIR`, `tcp:HOST:PORT`, `fd:N` or `stdio`. */
export function parseNbdSpec(s: string): NbdSpec {
  if (s.startsWith('unix:') && s.length > 5) return { unixDir: s.slice(5) };
  if (s === 'stdio') return { stdio: true };
  const fd = /^fd:(\d{1,4})$/.exec(s);
  if (fd !== null) return { fd: Number(fd[1]) };
  const m = /^tcp:(\[[^\]]+\]|[^:]+):(\d{1,5})$/.exec(s);
  if (m !== null) {
    const port = Number(m[2]);
    if (port > 65535) throw new NvmfNbdError(ErrorCode.CLI_USAGE, `--nbd ${s}: port out of range`);
    return { tcp: { host: (m[1] as string).replace(/^\[|\]$/g, ''), port } };
  }
  throw new NvmfNbdError(ErrorCode.CLI_USAGE, `--nbd '${s}': expected unix:DIR, tcp:HOST:PORT, fd:N or stdio`);
}

/**
 * The socket systemd (or libnbd's socket activation) handed to this process, if any:
 * `LISTEN_PID` names this process and `LISTEN_FDS` ≥ 1, so the first one is fd 3.
 */
export function socketActivationFd(env: NodeJS.ProcessEnv = process.env, pid = process.pid): number | undefined {
  if (env.LISTEN_PID !== String(pid)) return undefined;
  const n = Number(env.LISTEN_FDS);
  return Number.isInteger(n) && n >= 1 ? 3 : undefined;
}

/**
 * Unix sockets of one session at most: the first exports get their own `<export>.sock`, later
 * ones share the controller's `<name>.sock` (the NBD export name selects the namespace).
 */
export const MAX_EXPORT_SOCKETS = 16;

/** Options of {@link ControllerSession.open}. */
export interface SessionOptions {
  /** Controller name, e.g. `nvme0`; exports are named `<name>n<nsid>`. */
  readonly name: string;
  /** Controller options of the first path plus the recovery policy (reconnect delay, ctrl_loss_tmo, fast_io_fail_tmo). */
  readonly controller: ControllerOptions & ResilienceOptions;
  /** Controller name of the first path (default `name`); later paths get theirs in {@link ControllerSession.addPath}. */
  readonly pathName?: string;
  /** Path selection among the subsystem's paths (default numa, as Linux). */
  readonly iopolicy?: IoPolicyValue;
  /** More multipath options (tests: an injected clock, a write-hold override). */
  readonly multipath?: Omit<MultipathOptions, 'iopolicy'>;
  readonly nbd: NbdSpec;
  /** Attach every export to a /dev/nbdX with nbd-client. */
  readonly attach?: boolean;
  /** nbd-client connections per device (`-C`). */
  readonly connections?: number;
  /** Serve every namespace read-only. */
  readonly readOnly?: boolean;
  readonly nbdServer?: NbdServerOptions;
  /** Progress and warnings (default: nothing). */
  readonly log?: (msg: string) => void;
}

/** One exported namespace. */
export interface SessionExport {
  readonly name: string;
  readonly nsid: number;
  readonly size: number;
  readonly blockSize: number;
  /** The endpoint a client uses for this export. */
  readonly endpoint: NbdEndpoint;
  /** The kernel device, once attached. */
  device?: string;
  /** New size in bytes after a capacity change (connected NBD clients keep seeing `size`). */
  capacityChanged?: number;
  /** NGUID / EUI-64 (hex) and UUID (text) of the namespace, as it reports them. */
  ids?: { nguid?: string; eui64?: string; uuid?: string };
  /** The stable name part: UUID, else NGUID, else EUI-64 (`/dev/disk/by-id/nvmf-nbd-<id>`). */
  stableId?: string;
}

/** A namespace that is not served, and why. */
export interface SkippedNamespace {
  readonly nsid: number;
  readonly reason: string;
}

/**
 * A connected subsystem serving its namespaces over NBD: one export per namespace whatever the
 * number of paths (controllers of the subsystem over other addresses, {@link addPath}; issue 12).
 * Events: `state` (CtrlStateValue, of the subsystem: live while any path is), `namespaces`
 * (NamespaceChanges, after the exports were updated), `dead` (NvmfNbdError: the last path gave
 * up), `path-removed` (a path's name: it gave up while others remained, and was dropped).
 */
export class ControllerSession extends EventEmitter {
  readonly exports: SessionExport[] = [];
  readonly skipped: SkippedNamespace[] = [];
  private closed: Promise<void> | undefined;
  /** The namespace object each export serves (the controller owns them). */
  private readonly devices = new Map<number, Namespace>();
  /** Endpoints already listened on (TCP: one for all; Unix: one per export path). */
  private tcpEndpoint: NbdEndpoint | undefined;
  private sharedEndpoint: NbdEndpoint | undefined;
  /** With `--stdio`: resolves when the one NBD connection has ended. */
  stdioClosed: Promise<void> | undefined;
  private readonly unixEndpoints = new Map<string, NbdEndpoint>();
  /** Namespace changes are applied one at a time, in order. */
  private nsWork: Promise<void> = Promise.resolve();
  /** Path (controller) name → the multipath layer's path id (`traddr:trsvcid[@src]`), in the order added. */
  private readonly pathIds = new Map<string, string>();
  /** Ids being removed on request (their `paths` removal event is ours, not a loss). */
  private readonly removing = new Set<string>();

  private constructor(
    readonly name: string,
    readonly controller: MultipathController,
    readonly server: NbdServer,
    private readonly o: SessionOptions,
  ) {
    super();
    const first = controller.paths[0];
    if (first !== undefined) this.pathIds.set(o.pathName ?? name, first.id);
  }

  /** Connect the controller, export its usable namespaces, and attach them when asked. */
  static async open(o: SessionOptions): Promise<ControllerSession> {
    const log = o.log ?? (() => undefined);
    const controller = await MultipathController.connect(o.readOnly === true ? { ...o.controller, readOnlyNamespaces: true } : o.controller, {
      ...o.multipath, iopolicy: o.iopolicy ?? DEFAULT_IOPOLICY,
    });
    const server = new NbdServer(o.nbdServer);
    const s = new ControllerSession(o.name, controller, server, o);
    try {
      const namespaces = [...controller.namespaces.values()].sort((a, b) => a.nsid - b.nsid);
      for (const ns of namespaces) s.addNamespace(ns);
      await s.identifyAll();
      await s.listen();
      for (const sk of s.skipped) log(`${o.name}: namespace ${sk.nsid} not exported: ${sk.reason}`);
      if (controller.namespacesOverLimit > 0) {
        log(`${o.name}: ${controller.namespacesOverLimit} more active namespaces not exported: more than ${o.controller.maxNamespaces ?? DEFAULT_MAX_NAMESPACES} (--max-namespaces) (${ErrorCode.TOO_MANY_NAMESPACES})`);
      }
      if (o.attach === true) await s.attachAll();
      s.watchController();
      return s;
    } catch (err) {
      await s.close().catch(() => undefined);
      throw err;
    }
  }

  /** Controller state: live, connecting, deleting, dead. */
  get state(): CtrlStateValue {
    return this.controller.state;
  }

  /** Successful reconnects since the session opened. */
  get reconnects(): number {
    return this.controller.reconnects;
  }

  /** The error that ended the last association, if any. */
  get lastError(): NvmfNbdError | undefined {
    return this.controller.lastError;
  }

  private watchController(): void {
    const c = this.controller;
    const log = this.o.log ?? (() => undefined);
    c.on('state', (st: CtrlStateValue) => {
      const d = c.describeState();
      log(`${this.name}: ${st}${st === 'connecting' && d.lastError !== undefined ? ` (${d.lastError.message})` : ''}${st === 'live' && d.reconnects > 0 ? ` (reconnect ${d.reconnects})` : ''}`);
      this.emit('state', st);
    });
    c.on('dead', (err: NvmfNbdError) => {
      log(`${this.name}: controller removed: ${err.message} (${err.code})`);
      this.emit('dead', err);
    });
    c.on('warning', (err: Error & { code?: string }) => log(`${this.name}: ${err.message}${err.code !== undefined ? ` (${err.code})` : ''}`));
    c.on('ana', (a: { path: string; groups: ReadonlyArray<{ grpid: number; state: string }> }) => {
      log(`${this.name}: path ${this.nameOf(a.path)}: ANA ${a.groups.map((g) => `group ${g.grpid} ${g.state}`).join(', ') || 'no groups'}`);
    });
    c.on('paths', (ev: { added?: string; removed?: string; state?: { id: string; state: string } }) => {
      if (ev.state !== undefined && this.pathIds.size > 1) log(`${this.name}: path ${this.nameOf(ev.state.id)} ${ev.state.state}`);
      if (ev.removed === undefined || this.removing.has(ev.removed)) return;
      // A path that gave up (ctrl_loss_tmo) while others remained: dropped, as Linux deletes that controller.
      const name = this.nameOf(ev.removed);
      this.pathIds.delete(name);
      log(`${this.name}: path ${name} (${ev.removed}) dropped; ${this.pathIds.size} left`);
      this.emit('path-removed', name);
    });
    c.on('namespaces', (ch: NamespaceChanges) => {
      // The controller retired the objects of removed and reformatted namespaces (their I/O
      // fails with EIO from this moment on). A reformatted one (another block size: its old
      // object was replaced) is withdrawn and exported again, like remove + add.
      const reformatted = ch.resized.filter((nsid) => {
        const d = this.devices.get(nsid);
        return d !== undefined && d.retired;
      });
      this.nsWork = this.nsWork.then(() => this.applyNamespaceChanges(ch, reformatted)).catch((err: unknown) => {
        log(`${this.name}: namespace change not fully applied: ${(err as Error).message}`);
      });
    });
  }

  /** Update exports after a namespace change; then emit `namespaces`. */
  private async applyNamespaceChanges(ch: NamespaceChanges, reformatted: readonly number[]): Promise<void> {
    const log = this.o.log ?? (() => undefined);
    if (this.closed !== undefined) return;
    for (const nsid of [...ch.removed, ...reformatted]) await this.withdraw(nsid, ch.removed.includes(nsid) ? 'namespace removed' : 'block size changed');
    for (const nsid of ch.resized) {
      if (reformatted.includes(nsid)) continue;
      const e = this.exports.find((x) => x.nsid === nsid);
      const ns = this.controller.namespaces.get(nsid);
      if (e === undefined || ns === undefined) continue;
      e.capacityChanged = Number(ns.nsze) * ns.lbaSize;
      log(`${this.name}: namespace ${nsid} capacity changed from ${e.size} to ${e.capacityChanged} bytes; connected NBD clients keep the old size until they reconnect`);
    }
    for (const nsid of [...ch.added, ...reformatted]) {
      const ns = this.controller.namespaces.get(nsid);
      if (ns === undefined || this.exports.some((x) => x.nsid === nsid)) continue;
      const sk = this.skipped.findIndex((x) => x.nsid === nsid);
      if (sk >= 0) this.skipped.splice(sk, 1);
      const before = this.exports.length;
      this.addNamespace(ns);
      if (this.exports.length === before) {
        log(`${this.name}: namespace ${nsid} added but not exported: ${this.skipped.find((x) => x.nsid === nsid)?.reason ?? ''}`);
        continue;
      }
      await this.identifyAll();
      await this.listen();
      const e = this.exports[this.exports.length - 1] as SessionExport;
      log(`${this.name}: namespace ${nsid} added: export ${e.name}`);
      if (this.o.attach === true) await this.attachAll();
    }
    this.emit('namespaces', ch);
  }

  /** Drain, detach and withdraw the export of `nsid` (its retired namespace object fails I/O with EIO). */
  private async withdraw(nsid: number, why: string): Promise<void> {
    const log = this.o.log ?? (() => undefined);
    const sk = this.skipped.findIndex((x) => x.nsid === nsid);
    if (sk >= 0) this.skipped.splice(sk, 1);
    const e = this.exports.find((x) => x.nsid === nsid);
    if (e === undefined) return;
    await this.devices.get(nsid)?.drained(5000);
    if (e.device !== undefined) {
      await detach(e.device).catch((err: unknown) => log(`${e.name}: detach of ${e.device ?? ''} failed: ${(err as Error).message}`));
      log(`${e.name} detached from ${e.device}: ${why}`);
      e.device = undefined;
    }
    await this.server.removeExport(e.name).catch(() => undefined);
    this.exports.splice(this.exports.indexOf(e), 1);
    this.devices.delete(nsid);
    log(`${this.name}: namespace ${nsid}: export ${e.name} withdrawn (${why})`);
  }

  private addNamespace(ns: NamespaceInfo): void {
    if (!ns.usable) {
      this.skipped.push({ nsid: ns.nsid, reason: ns.reasonIfNot ?? 'unsupported format' });
      return;
    }
    const device = this.controller.namespace(ns.nsid);
    if (device === undefined || device.retired) {
      // A namespace the bridge cannot serve is skipped with its reason; it never fails the others.
      this.skipped.push({ nsid: ns.nsid, reason: `namespace ${ns.nsid} cannot be served (larger than 2^53 bytes)` });
      return;
    }
    const name = `${this.name}n${ns.nsid}`;
    const ctrl = this.controller.identify;
    this.server.addExport(name, device, { description: `${ctrl.mn} ${ctrl.sn} nsid ${ns.nsid}` });
    this.devices.set(ns.nsid, device);
    // The endpoint is filled in by listen().
    this.exports.push({ name, nsid: ns.nsid, size: device.size, blockSize: device.blockSize, endpoint: { unix: '' } });
  }

  /**
   * Learn each new export's identifiers: the Namespace Identification Descriptors (CNS 03h),
   * else NGUID/EUI64 of Identify Namespace (a controller may not support CNS 03h).
   */
  private async identifyAll(): Promise<void> {
    for (let i = 0; i < this.exports.length; i++) {
      const e = this.exports[i] as SessionExport;
      if (e.ids !== undefined) continue;
      let ids: NamespaceIdentifiers = {};
      try {
        const r = await this.controller.adminCommand(sqeIdentify(Cns.NS_ID_DESCRIPTORS, e.nsid), { dataInLength: 4096 });
        ids = parseNsIdDescriptors(r.data as Buffer);
      } catch {
        // Not supported (NVMe < 1.3) or refused: Identify Namespace still has NGUID and EUI64.
      }
      const idns = this.controller.namespaces.get(e.nsid)?.identify;
      if (ids.nguid === undefined && idns !== undefined && idns.nguid.some((x) => x !== 0)) ids.nguid = idns.nguid;
      if (ids.eui64 === undefined && idns !== undefined && idns.eui64.some((x) => x !== 0)) ids.eui64 = idns.eui64;
      const text = {
        ...(ids.nguid !== undefined ? { nguid: ids.nguid.toString('hex') } : {}),
        ...(ids.eui64 !== undefined ? { eui64: ids.eui64.toString('hex') } : {}),
        ...(ids.uuid !== undefined ? { uuid: formatUuid(ids.uuid) } : {}),
      };
      const stableId = stableNamespaceId(ids);
      this.exports[i] = { ...e, ids: text, ...(stableId !== undefined ? { stableId } : {}) };
    }
  }

  /** Give every export without an endpoint one (listening on what is missing). */
  private async listen(): Promise<void> {
    const spec = this.o.nbd;
    if ('stdio' in spec || 'fd' in spec) {
      // One endpoint serves every export; stdio carries exactly one connection.
      if (this.sharedEndpoint === undefined) {
        if ('fd' in spec) {
          this.sharedEndpoint = await this.server.listen({ fd: spec.fd });
        } else {
          const conn = this.server.serveSocket(Duplex.from({ readable: process.stdin, writable: process.stdout }));
          this.stdioClosed = conn.closed.then(() => undefined);
          this.sharedEndpoint = { stdio: true };
        }
      }
      const ep = this.sharedEndpoint;
      for (let i = 0; i < this.exports.length; i++) this.exports[i] = { ...(this.exports[i] as SessionExport), endpoint: ep };
      return;
    }
    if ('tcp' in spec) {
      this.tcpEndpoint ??= await this.server.listen({ tcp: spec.tcp });
      const ep = this.tcpEndpoint;
      for (let i = 0; i < this.exports.length; i++) this.exports[i] = { ...(this.exports[i] as SessionExport), endpoint: ep };
      return;
    }
    // One socket per export in a private directory (0700 dir, 0600 sockets): every socket
    // serves every export, but a per-namespace path is what tools and nbd-client are given.
    // A withdrawn export's socket stays (it serves the other exports); a namespace that comes
    // back reuses it. Per-export sockets are bounded (MAX_EXPORT_SOCKETS): further exports
    // share one controller socket, `<name>.sock`, where the export name (nbd-client -N)
    // selects the namespace — a target with thousands of namespaces costs one descriptor, not
    // thousands (issue 14 finding 4).
    const dir = path.join(spec.unixDir, this.name);
    for (let i = 0; i < this.exports.length; i++) {
      const e = this.exports[i] as SessionExport;
      if ('unix' in e.endpoint && e.endpoint.unix !== '') continue;
      let p = path.join(dir, `${e.name}.sock`);
      if (!this.unixEndpoints.has(p) && this.unixEndpoints.size >= MAX_EXPORT_SOCKETS) p = path.join(dir, `${this.name}.sock`);
      let ep = this.unixEndpoints.get(p);
      if (ep === undefined) {
        ep = await this.server.listen({ unix: p });
        this.unixEndpoints.set(p, ep);
      }
      this.exports[i] = { ...e, endpoint: ep };
    }
  }

  /**
   * Attach every export that is not attached yet, through `via` when given (the sticky holder's
   * public endpoint, which outlives this process) instead of the export's own endpoint.
   */
  async attachAll(via?: NbdEndpoint): Promise<void> {
    for (const e of this.exports) {
      if (e.device !== undefined) continue;
      const ep = via ?? e.endpoint;
      if (!('unix' in ep) && !('tcp' in ep)) {
        throw new NvmfNbdError(ErrorCode.CLI_USAGE, `cannot attach ${e.name}: it is served on ${formatEndpoint(ep)}, not on a socket nbd-client can dial`);
      }
      const where = 'unix' in ep ? { socketPath: ep.unix } : { host: ep.tcp.host, port: ep.tcp.port };
      e.device = await attach({
        ...where, exportName: e.name, blockSize: e.blockSize, connections: this.o.connections ?? 1,
        ...(e.stableId !== undefined ? { identifier: nbdBackendIdentifier(e.stableId) } : {}),
      });
      this.o.log?.(`${e.name} attached as ${e.device}`);
    }
  }

  /** Detach every attached export (errors are collected, every device is tried). */
  async detachAll(): Promise<void> {
    const errors: unknown[] = [];
    for (const e of this.exports) {
      if (e.device === undefined) continue;
      try {
        await detach(e.device);
        this.o.log?.(`${e.name} detached from ${e.device}`);
        e.device = undefined;
      } catch (err) {
        errors.push(err);
      }
    }
    if (errors.length > 0) throw errors[0];
  }

  /** The subsystem's path (controller) names, in the order added. */
  pathNames(): string[] {
    return [...this.pathIds.keys()];
  }

  /** The controller name of a path id (the id itself for a path this session did not name). */
  private nameOf(id: string): string {
    for (const [n, i] of this.pathIds) if (i === id) return n;
    return id;
  }

  /**
   * Connect one more path to this subsystem under controller name `name` (the same subsystem
   * NQN over another address): its namespaces keep their exports and devices; namespaces only
   * this path reaches get theirs.
   * @throws CLI_ERR_ALREADY_CONNECTED (that name or address), NVMF_ERR_MULTIPATH_SUBSYSTEM_MISMATCH,
   *         NVMF_ERR_MULTIPATH_NS_MISMATCH, the connect's own errors (nothing is kept then)
   */
  async addPath(name: string, o: ControllerOptions & ResilienceOptions): Promise<void> {
    if (this.pathIds.has(name)) throw new NvmfNbdError(ErrorCode.ALREADY_CONNECTED, `${this.name} has a path ${name} already`);
    const p = await this.controller.addPath(this.o.readOnly === true ? { ...o, readOnlyNamespaces: true } : o);
    this.pathIds.set(name, p.id);
    this.o.log?.(`${this.name}: path ${name} (${p.id}) added; ${this.pathIds.size} paths`);
  }

  /**
   * Remove path `name`: its in-flight reads go to the other paths at once, its writes after the
   * write-hold time; the exports stay. The last path goes with {@link close}.
   * @throws CLI_ERR_NO_SUCH_CONTROLLER, CLI_ERR_USAGE for the last path
   */
  async removePath(name: string): Promise<void> {
    const id = this.pathIds.get(name);
    if (id === undefined) throw new NvmfNbdError(ErrorCode.NO_SUCH_CONTROLLER, `${this.name} has no path ${name}`);
    if (this.pathIds.size === 1) throw new NvmfNbdError(ErrorCode.CLI_USAGE, `${name} is the last path of ${this.name}: disconnect the subsystem`);
    this.removing.add(id);
    try {
      await this.controller.removePath(id);
    } finally {
      this.removing.delete(id);
    }
    this.pathIds.delete(name);
  }

  /** The subsystem, its paths and each namespace's paths (`show-topology`, `list`). */
  topology(): TopologySubsystem {
    const t = this.controller.topology();
    const o = this.controller.options;
    const byId = new Map(t.paths.map((p) => [p.id, p]));
    const paths: TopologyPath[] = t.paths.map((p) => ({
      name: this.nameOf(p.id), traddr: p.traddr, trsvcid: p.trsvcid, ...(p.hostTraddr !== undefined ? { hostTraddr: p.hostTraddr } : {}),
      cntlid: p.cntlid, state: p.state, reconnects: p.reconnects, ...(p.lastError !== undefined ? { lastError: p.lastError } : {}),
      queueDepth: p.queueDepth, io: p.io, anaGroups: p.anaGroups,
    }));
    const nsTopo = new Map(t.namespaces.map((n) => [n.nsid, n]));
    return {
      name: this.name, nqn: t.subnqn, hostnqn: o.hostnqn, iopolicy: t.iopolicy, state: t.state, paths,
      namespaces: this.exports.map((e) => {
        const n = nsTopo.get(e.nsid);
        return {
          nsid: e.nsid, export: e.name, device: e.device ?? null, size: e.size, ...(e.stableId !== undefined ? { stableId: e.stableId } : {}),
          heldWrites: n?.heldWrites ?? 0,
          paths: (n?.paths ?? []).map((np) => {
            const p = byId.get(np.id);
            return {
              path: this.nameOf(np.id), anaGroup: np.anaGroup, anaState: np.anaState, usable: np.usable, current: np.current,
              inFlight: p?.queueDepth ?? 0, reads: p?.io.reads ?? 0, writes: p?.io.writes ?? 0, other: p?.io.other ?? 0,
            };
          }),
        };
      }),
    };
  }

  /** NBD counters per export. */
  stats(): NbdExportStats[] {
    return this.server.stats();
  }

  /** A JSON-friendly description, as `list -o json` prints it. */
  describe(): Record<string, unknown> {
    const c = this.controller;
    const t = this.topology();
    const nsPaths = new Map(t.namespaces.map((n) => [n.nsid, n.paths]));
    return {
      name: this.name,
      subnqn: this.o.controller.subnqn,
      traddr: this.o.controller.traddr,
      trsvcid: this.o.controller.trsvcid,
      cntlid: c.cntlid,
      model: c.identify.mn,
      serial: c.identify.sn,
      firmware: c.identify.fr,
      ioQueues: c.ioQueueCount,
      ...c.describeState(),
      exports: this.exports.map((e) => ({
        name: e.name,
        nsid: e.nsid,
        size: e.size,
        blockSize: e.blockSize,
        endpoint: formatEndpoint(e.endpoint),
        device: e.device ?? null,
        ...(e.ids !== undefined ? { ids: e.ids } : {}),
        ...(e.stableId !== undefined ? { stableId: e.stableId, udevLink: `/dev/disk/by-id/nvmf-nbd-${e.stableId}` } : {}),
        ...(e.capacityChanged !== undefined ? { capacityChanged: e.capacityChanged } : {}),
        // This namespace on each path: ANA state, in flight, I/O counts, the current choice.
        paths: nsPaths.get(e.nsid) ?? [],
      })),
      iopolicy: t.iopolicy,
      paths: t.paths,
      skipped: this.skipped,
      ...(c.namespacesOverLimit > 0 ? { namespacesOverLimit: c.namespacesOverLimit } : {}),
      nbd: this.stats(),
      queues: c.stats(),
    };
  }

  /**
   * Detach, drain and close the NBD server, shut the controller down. Safe to call twice.
   * While the controller is reconnecting nothing can be flushed and draining would wait for
   * ctrl_loss_tmo: the controller is closed first then, failing the held requests.
   */
  close(): Promise<void> {
    this.closed ??= (async () => {
      let first: unknown;
      const giveUp = (): void => {
        if (this.controller.state === 'connecting') void this.controller.close();
      };
      giveUp();
      this.controller.on('state', giveUp);
      try {
        await this.detachAll().catch((err: unknown) => { first ??= err; });
        await this.server.close().catch((err: unknown) => { first ??= err; });
        await this.nsWork;
        await this.controller.close().catch((err: unknown) => { first ??= err; });
      } finally {
        this.controller.off('state', giveUp);
      }
      if (first !== undefined) throw first;
    })();
    return this.closed;
  }
}
