/**
 * The NBD server: a set of named exports (any {@link BlockDevice}), listening on Unix sockets
 * and/or loopback TCP, or serving an already-connected stream (--stdio, systemd LISTEN_FDS).
 *
 * Private by default: Unix sockets are created with mode 0600 (bound under umask 0177, so no
 * window exists where others could connect) in a directory created 0700; TCP defaults to
 * 127.0.0.1, where a plain listener serves only peers of our uid or root (see `access.ts`);
 * with TLS every connection goes through the STARTTLS gate first.
 */
import * as net from 'node:net';
import type { Duplex } from 'node:stream';
import { ErrorCode, NvmfNbdError } from '../errors';
import { listenPrivate, preparePrivateSocket } from '../net/private-socket';
import { waitListening } from '../net/listen';
import type { BlockDevice } from '../block/types';
import { SubBlockDevice, type SubBlockCounters } from '../block/sub-block';
import { MAX_STRING_LENGTH } from '../wire/nbd';
import { NbdConnection } from './connection';
import type { NbdConnectionHost, NbdExportCounters, NbdExportEntry, NbdLogEntry } from './types';
import { checkTcpListenAllowed, needsPeerUidCheck, type NbdAccessPolicy } from './access';
import { runTlsGate } from './tls-gate';
import { checkLocalPeer } from '../net/loopback-guard';

export type { NbdLogEntry, NbdExportCounters } from './types';

/** Where to listen. TCP host defaults to 127.0.0.1; port 0 picks a free port. */
export type NbdListenSpec = { unix: string } | { tcp: { host?: string; port: number } } | { fd: number };
/** A bound endpoint (TCP with the actual port). */
export type NbdEndpoint = { unix: string } | { tcp: { host: string; port: number } } | { fd: number } | { stdio: true };

/** `unix:PATH`, `tcp:HOST:PORT`, `fd:N` (an inherited listening socket) or `stdio`. */
export function formatEndpoint(ep: NbdEndpoint): string {
  if ('unix' in ep) return `unix:${ep.unix}`;
  if ('tcp' in ep) return `tcp:${ep.tcp.host}:${ep.tcp.port}`;
  if ('fd' in ep) return `fd:${ep.fd}`;
  return 'stdio';
}

/** Options of {@link NbdServer}. */
export interface NbdServerOptions {
  /** Log sink; the default prints warnings and errors to stderr with their code. */
  log?: (e: NbdLogEntry) => void;
  /** Requests in flight per connection before the socket is paused (default 128). */
  maxInFlight?: number;
  /** Bytes in flight (read buffers, write payloads, queued replies) per connection before
   *  the socket is paused (default 64 MiB). */
  maxInFlightBytes?: number;
  /** Close connections that have not chosen an export after this long (default 30 s; 0 = never). */
  handshakeTimeoutMs?: number;
  /** When closing a connection, how long to wait for a client to read the last replies before
   *  the socket is destroyed (default 5000): close()/removeExport() finish even when a client
   *  stopped reading. */
  closeGraceMs?: number;
  /** Open connections at most (more are closed at accept, NBD_ERR_TOO_MANY_CONNECTIONS), default 256. */
  maxConnections?: number;
  /** Connections in transmission per export at most (GO beyond → NBD_REP_ERR_POLICY), default 64. */
  maxConnectionsPerExport?: number;
  /**
   * Request bytes in flight plus reply bytes not yet read, all connections together, before
   * connections that hold bytes stop reading (default 256 MiB): per-connection bounds alone
   * multiply with the number of connections.
   */
  maxTotalBytes?: number;
  /** After GO, close a connection that sent nothing for this long with nothing in flight (default 0 = never). */
  idleTimeoutMs?: number;
  /** Who may connect: TLS, the loopback peer-uid rule, non-loopback plain TCP (see access.ts). */
  access?: NbdAccessPolicy;
  /** The uid loopback peers must have (besides root); default our effective uid (tests). */
  peerUid?: number;
  /** Where /proc is (tests). */
  procRoot?: string;
}

/** Per-export statistics, as `list` shows them. */
export interface NbdExportStats extends NbdExportCounters, SubBlockCounters {
  name: string;
  description: string;
  size: number;
  blockSize: number;
  readOnly: boolean;
  /** Connections currently in transmission on this export. */
  connections: number;
}

/** Options of {@link NbdServer.addExport}. */
export interface NbdExportOptions {
  description?: string;
}

function defaultLog(e: NbdLogEntry): void {
  if (e.level !== 'warn' && e.level !== 'error') return;
  const where = `nbd${e.conn !== undefined ? ` conn ${e.conn}` : ''}${e.export !== undefined ? ` export '${e.export}'` : ''}`;
  process.stderr.write(`${where}: ${e.msg}${e.code !== undefined ? ` (${e.code})` : ''}\n`);
}

/** NBD server (fixed newstyle, structured replies, base:allocation, multi-conn). */
export class NbdServer {
  private readonly exportsByName = new Map<string, NbdExportEntry>();
  private readonly connections = new Set<NbdConnection>();
  private readonly listeners: Array<{ server: net.Server; endpoint: NbdEndpoint }> = [];
  private nextConnId = 1;
  private closing = false;
  private readonly host: NbdConnectionHost;
  private readonly logFn: (e: NbdLogEntry) => void;
  private readonly maxConnections: number;
  private readonly maxTotalBytes: number;
  /** Connections waiting for the shared budget (resumed in FIFO order when bytes are released). */
  private readonly budgetWaiters: Array<() => void> = [];
  private budgetWake = false;
  private readonly access: NbdAccessPolicy;
  private readonly peerOpts: { selfUid?: number; procRoot?: string };
  /** Sockets before their NbdConnection exists (peer check, STARTTLS gate): closed by close(). */
  private readonly pending = new Set<Duplex>();
  private readonly handshakeTimeoutMs: number;
  /** Connections refused by the loopback peer-uid rule (tests, stats). */
  peerRefused = 0;

  constructor(opts: NbdServerOptions = {}) {
    this.logFn = opts.log ?? defaultLog;
    this.access = opts.access ?? {};
    this.peerOpts = { ...(opts.peerUid !== undefined ? { selfUid: opts.peerUid } : {}), ...(opts.procRoot !== undefined ? { procRoot: opts.procRoot } : {}) };
    const maxInFlight = opts.maxInFlight ?? 128;
    const maxInFlightBytes = opts.maxInFlightBytes ?? 64 * 1024 * 1024;
    const handshakeTimeoutMs = opts.handshakeTimeoutMs ?? 30_000;
    this.handshakeTimeoutMs = handshakeTimeoutMs;
    const closeGraceMs = opts.closeGraceMs ?? 5000;
    this.maxConnections = opts.maxConnections ?? 256;
    this.maxTotalBytes = opts.maxTotalBytes ?? 256 * 1024 * 1024;
    const self = this;
    this.host = {
      findExport: (name) => this.findExport(name),
      listExports: () => [...this.exportsByName.values()],
      log: (e) => this.logFn(e),
      get shuttingDown() {
        return self.closing;
      },
      maxInFlight,
      maxInFlightBytes,
      handshakeTimeoutMs,
      closeGraceMs,
      maxConnectionsPerExport: opts.maxConnectionsPerExport ?? 64,
      idleTimeoutMs: opts.idleTimeoutMs ?? 0,
      budgetExhausted: () => this.heldBytes() >= this.maxTotalBytes,
      waitBudget: (resume) => {
        this.budgetWaiters.push(resume);
      },
      budgetReleased: () => this.budgetReleased(),
    };
  }

  /** Bytes held by all connections (requests in flight + replies not yet read). */
  heldBytes(): number {
    let n = 0;
    for (const c of this.connections) n += c.heldBytes;
    return n;
  }

  /** Wake the connections waiting for budget, once per tick (they re-check and may wait again). */
  private budgetReleased(): void {
    if (this.budgetWaiters.length === 0 || this.budgetWake) return;
    this.budgetWake = true;
    setImmediate(() => {
      this.budgetWake = false;
      if (this.heldBytes() >= this.maxTotalBytes) return;
      for (const resume of this.budgetWaiters.splice(0)) resume();
    });
  }

  /**
   * Serve `device` as export `name`. The first export added is the default one (empty name).
   * @throws NBD_ERR_EXPORT_EXISTS when the name is taken; CFG_ERR_INVALID for a bad name.
   */
  addExport(name: string, device: BlockDevice, opts: NbdExportOptions = {}): void {
    if (Buffer.byteLength(name, 'utf8') > MAX_STRING_LENGTH || name.includes('\0')) {
      throw new NvmfNbdError(ErrorCode.CFG_INVALID, `bad export name '${name}'`);
    }
    if (this.exportsByName.has(name)) throw new NvmfNbdError(ErrorCode.NBD_EXPORT_EXISTS, `export '${name}' already exists`);
    this.exportsByName.set(name, {
      name,
      device,
      sub: new SubBlockDevice(device),
      description: opts.description ?? '',
      counters: { reads: 0, writes: 0, bytesRead: 0, bytesWritten: 0, flushes: 0, trims: 0, zeroes: 0, errors: 0 },
      connections: new Set(),
      removed: false,
    });
  }

  /**
   * Withdraw export `name`: new clients no longer see it, its connections answer their
   * in-flight and later requests with ESHUTDOWN and are closed. Resolves when they are gone.
   * @throws NBD_ERR_UNKNOWN_EXPORT
   */
  async removeExport(name: string): Promise<void> {
    const e = this.exportsByName.get(name);
    if (e === undefined) throw new NvmfNbdError(ErrorCode.NBD_UNKNOWN_EXPORT, `no export '${name}'`);
    e.removed = true;
    this.exportsByName.delete(name);
    const conns = [...e.connections];
    for (const c of conns) c.shutdown(true);
    await Promise.all(conns.map((c) => c.closed));
  }

  /** Names of the exports, default first. */
  exportNames(): string[] {
    return [...this.exportsByName.keys()];
  }

  /** Counters of every export. */
  stats(): NbdExportStats[] {
    return [...this.exportsByName.values()].map((e) => ({
      name: e.name,
      description: e.description,
      size: e.device.size,
      blockSize: e.device.blockSize,
      readOnly: e.device.readOnly,
      connections: e.connections.size,
      ...e.counters,
      ...e.sub.counters,
    }));
  }

  /** The endpoints listened on so far. */
  get endpoints(): NbdEndpoint[] {
    return this.listeners.map((l) => l.endpoint);
  }

  /**
   * Listen on a Unix socket or loopback TCP. Several calls add several endpoints.
   * @throws NBD_ERR_LISTEN_FAILED (address in use, permission…).
   */
  async listen(spec: NbdListenSpec): Promise<NbdEndpoint> {
    if (this.closing) throw new NvmfNbdError(ErrorCode.NBD_LISTEN_FAILED, 'server is closing');
    // Decided once the address is known (an inherited fd may be loopback TCP too).
    let peerCheck = false;
    const server = net.createServer({ allowHalfOpen: true }, (sock) => {
      if (this.connections.size + this.pending.size >= this.maxConnections) {
        // Before the greeting: a flood of connections costs one descriptor each, briefly.
        this.logFn({ level: 'warn', msg: `connection refused: ${this.connections.size} open (maximum ${this.maxConnections})`, code: ErrorCode.NBD_TOO_MANY_CONNECTIONS });
        sock.destroy();
        return;
      }
      sock.setNoDelay(true);
      if (peerCheck) this.servePeerChecked(sock);
      else this.serveSocket(sock);
    });
    try {
      let endpoint: NbdEndpoint;
      if ('unix' in spec) {
        await preparePrivateSocket(spec.unix, { notSocket: ErrorCode.NBD_LISTEN_FAILED, inUse: ErrorCode.NBD_LISTEN_FAILED });
        await listenPrivate(server, spec.unix);
        endpoint = { unix: spec.unix };
      } else if ('fd' in spec) {
        // An already bound, listening socket handed over by systemd or libnbd (LISTEN_FDS).
        server.listen({ fd: spec.fd });
        await waitListening(server);
        const a = server.address();
        if (a !== null && typeof a === 'object') checkTcpListenAllowed(a.address, this.access);
        endpoint = { fd: spec.fd };
      } else {
        const host = spec.tcp.host ?? '127.0.0.1';
        checkTcpListenAllowed(host, this.access);
        server.listen({ host, port: spec.tcp.port });
        await waitListening(server);
        const addr = server.address() as net.AddressInfo;
        endpoint = { tcp: { host, port: addr.port } };
      }
      const bound = server.address();
      peerCheck = bound !== null && typeof bound === 'object' && needsPeerUidCheck(bound.address, this.access);
      this.listeners.push({ server, endpoint });
      this.logFn({ level: 'info', msg: `listening on ${formatEndpoint(endpoint)}` });
      return endpoint;
    } catch (err) {
      server.close();
      if (err instanceof NvmfNbdError) throw err;
      throw new NvmfNbdError(ErrorCode.NBD_LISTEN_FAILED, `cannot listen: ${(err as Error).message}`, { cause: err });
    }
  }

  /**
   * Serve one already-connected stream (a TCP/Unix socket from elsewhere, an inherited fd, or
   * `Duplex.from({ readable: process.stdin, writable: process.stdout })` for --stdio).
   */
  serveSocket(socket: Duplex): { readonly closed: Promise<void> } {
    if (this.access.tls === undefined) return this.serveConnection(socket);
    // TLS required: the plain part of the handshake runs in the gate, the rest on the secure socket.
    if (this.closing) {
      socket.destroy();
      return { closed: Promise.resolve() };
    }
    const id = this.nextConnId;
    this.pending.add(socket);
    const closed = runTlsGate(socket, {
      tls: this.access.tls,
      timeoutMs: this.handshakeTimeoutMs,
      log: (level, msg, code) => this.logFn({ level, msg, ...(code !== undefined ? { code } : {}), conn: id }),
    }).then((r) => {
      this.pending.delete(socket);
      if (r === undefined) return undefined;
      if (this.closing) {
        r.socket.destroy();
        return undefined;
      }
      return this.serveConnection(r.socket, { noZeroes: r.noZeroes }).closed;
    });
    return { closed: closed.then(() => undefined) };
  }

  /**
   * A plain loopback TCP connection: serve it only when its peer socket belongs to our uid or
   * root (issue 14, finding 1); reading waits for the verdict.
   */
  private servePeerChecked(sock: net.Socket): void {
    sock.pause();
    this.pending.add(sock);
    void checkLocalPeer(sock, this.peerOpts).then((v) => {
      this.pending.delete(sock);
      if (sock.destroyed) return;
      if (!v.allowed) {
        this.peerRefused++;
        const self = this.peerOpts.selfUid ?? process.geteuid?.() ?? 0;
        this.logFn({
          level: 'warn',
          code: ErrorCode.NBD_PEER_REFUSED,
          msg: `connection from ${sock.remoteAddress ?? '?'}:${sock.remotePort ?? '?'} refused: its socket belongs to ${v.uid === undefined ? 'an unknown user' : `uid ${v.uid}`}; loopback TCP serves only uid ${self} and root (use a Unix socket, --nbd-tls, or --nbd-allow-any-local-user)`,
        });
        sock.destroy();
        return;
      }
      sock.resume();
      this.serveSocket(sock);
    });
  }

  private serveConnection(socket: Duplex, afterTls?: { noZeroes: boolean }): NbdConnection {
    const conn = new NbdConnection(this.host, socket, this.nextConnId++, afterTls);
    this.connections.add(conn);
    void conn.closed.then(() => {
      this.connections.delete(conn);
      // Its held bytes are gone with it.
      this.budgetReleased();
    });
    if (this.closing) {
      socket.destroy();
      return conn;
    }
    conn.start();
    return conn;
  }

  /**
   * Stop accepting, let in-flight requests finish (later ones get ESHUTDOWN), close every
   * connection and remove Unix sockets. Resolves when everything is closed.
   */
  async close(): Promise<void> {
    this.closing = true;
    const closes = this.listeners.map(
      (l) =>
        new Promise<void>((resolve) => {
          l.server.close(() => resolve());
        }),
    );
    for (const s of this.pending) s.destroy();
    this.pending.clear();
    const conns = [...this.connections];
    for (const c of conns) c.shutdown(false);
    await Promise.all(conns.map((c) => c.closed));
    await Promise.all(closes);
    this.listeners.length = 0;
  }

  private findExport(name: string): NbdExportEntry | undefined {
    if (name === '') return this.exportsByName.values().next().value;
    return this.exportsByName.get(name);
  }
}
