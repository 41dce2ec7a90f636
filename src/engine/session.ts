/**
 * A controller session: one connected NVMe controller, its namespaces served as NBD exports
 * (`nvme0n1`, `nvme0n2`, …) on private endpoints, and optionally each export attached to a kernel
 * `/dev/nbdX`. The foreground `connect` verb, the demo and the daemon all build on this.
 *
 * Closing order matters for data: detach the kernel devices first (the kernel flushes and sends
 * NBD_CMD_DISC), then drain and close the NBD server, then shut the controller down (CC.SHN).
 */
import * as path from 'node:path';
import { Controller } from '../controller/controller';
import type { ControllerOptions, NamespaceInfo } from '../controller/controller';
import { NvmeNamespaceDevice } from '../block/nvme-device';
import { NbdServer } from '../nbd/server';
import type { NbdEndpoint, NbdExportStats, NbdServerOptions } from '../nbd/server';
import { attach, detach } from '../attach/nbd-client';
import { ErrorCode, NvmfNbdError } from '../errors';

/** Where a session serves NBD: a private directory of Unix sockets, or loopback TCP. */
export type NbdSpec = { unixDir: string } | { tcp: { host: string; port: number } };

/** Parse the `--nbd` option: `unix:DIR` or `tcp:HOST:PORT`. */
export function parseNbdSpec(s: string): NbdSpec {
  if (s.startsWith('unix:') && s.length > 5) return { unixDir: s.slice(5) };
  const m = /^tcp:(\[[^\]]+\]|[^:]+):(\d{1,5})$/.exec(s);
  if (m !== null) {
    const port = Number(m[2]);
    if (port > 65535) throw new NvmfNbdError(ErrorCode.CLI_USAGE, `--nbd ${s}: port out of range`);
    return { tcp: { host: (m[1] as string).replace(/^\[|\]$/g, ''), port } };
  }
  throw new NvmfNbdError(ErrorCode.CLI_USAGE, `--nbd '${s}': expected unix:DIR or tcp:HOST:PORT`);
}

/** Options of {@link ControllerSession.open}. */
export interface SessionOptions {
  /** Controller name, e.g. `nvme0`; exports are named `<name>n<nsid>`. */
  readonly name: string;
  readonly controller: ControllerOptions;
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
}

/** A namespace that is not served, and why. */
export interface SkippedNamespace {
  readonly nsid: number;
  readonly reason: string;
}

/** A connected controller serving its namespaces over NBD. */
export class ControllerSession {
  readonly exports: SessionExport[] = [];
  readonly skipped: SkippedNamespace[] = [];
  private closed: Promise<void> | undefined;

  private constructor(
    readonly name: string,
    readonly controller: Controller,
    readonly server: NbdServer,
    private readonly o: SessionOptions,
  ) {}

  /** Connect the controller, export its usable namespaces, and attach them when asked. */
  static async open(o: SessionOptions): Promise<ControllerSession> {
    const log = o.log ?? (() => undefined);
    const controller = await Controller.connect(o.controller);
    const server = new NbdServer(o.nbdServer);
    const s = new ControllerSession(o.name, controller, server, o);
    try {
      const namespaces = [...controller.namespaces.values()].sort((a, b) => a.nsid - b.nsid);
      for (const ns of namespaces) s.addNamespace(ns);
      await s.listen();
      for (const sk of s.skipped) log(`${o.name}: namespace ${sk.nsid} not exported: ${sk.reason}`);
      if (o.attach === true) await s.attachAll();
      return s;
    } catch (err) {
      await s.close().catch(() => undefined);
      throw err;
    }
  }

  private addNamespace(ns: NamespaceInfo): void {
    if (!ns.usable) {
      this.skipped.push({ nsid: ns.nsid, reason: ns.reasonIfNot ?? 'unsupported format' });
      return;
    }
    const device = new NvmeNamespaceDevice(this.controller, ns.nsid, { readOnly: this.o.readOnly });
    const name = `${this.name}n${ns.nsid}`;
    const ctrl = this.controller.identify;
    this.server.addExport(name, device, { description: `${ctrl.mn} ${ctrl.sn} nsid ${ns.nsid}` });
    // The endpoint is filled in by listen().
    this.exports.push({ name, nsid: ns.nsid, size: device.size, blockSize: device.blockSize, endpoint: { unix: '' } });
  }

  private async listen(): Promise<void> {
    const spec = this.o.nbd;
    if ('tcp' in spec) {
      const ep = await this.server.listen({ tcp: spec.tcp });
      for (let i = 0; i < this.exports.length; i++) this.exports[i] = { ...(this.exports[i] as SessionExport), endpoint: ep };
      return;
    }
    // One socket per export in a private directory (0700 dir, 0600 sockets): every socket
    // serves every export, but a per-namespace path is what tools and nbd-client are given.
    const dir = path.join(spec.unixDir, this.name);
    for (let i = 0; i < this.exports.length; i++) {
      const e = this.exports[i] as SessionExport;
      const ep = await this.server.listen({ unix: path.join(dir, `${e.name}.sock`) });
      this.exports[i] = { ...e, endpoint: ep };
    }
  }

  /** Attach every export that is not attached yet. */
  async attachAll(): Promise<void> {
    for (const e of this.exports) {
      if (e.device !== undefined) continue;
      const where = 'unix' in e.endpoint ? { socketPath: e.endpoint.unix } : { host: e.endpoint.tcp.host, port: e.endpoint.tcp.port };
      e.device = await attach({ ...where, exportName: e.name, blockSize: e.blockSize, connections: this.o.connections ?? 1 });
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

  /** NBD counters per export. */
  stats(): NbdExportStats[] {
    return this.server.stats();
  }

  /** A JSON-friendly description, as `list -o json` prints it. */
  describe(): Record<string, unknown> {
    const c = this.controller;
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
      exports: this.exports.map((e) => ({
        name: e.name,
        nsid: e.nsid,
        size: e.size,
        blockSize: e.blockSize,
        endpoint: 'unix' in e.endpoint ? `unix:${e.endpoint.unix}` : `tcp:${e.endpoint.tcp.host}:${e.endpoint.tcp.port}`,
        device: e.device ?? null,
      })),
      skipped: this.skipped,
      nbd: this.stats(),
      queues: c.stats(),
    };
  }

  /** Detach, drain and close the NBD server, shut the controller down. Safe to call twice. */
  close(): Promise<void> {
    this.closed ??= (async () => {
      let first: unknown;
      await this.detachAll().catch((err: unknown) => { first ??= err; });
      await this.server.close().catch((err: unknown) => { first ??= err; });
      await this.controller.close().catch((err: unknown) => { first ??= err; });
      if (first !== undefined) throw first;
    })();
    return this.closed;
  }
}
