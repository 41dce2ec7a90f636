/**
 * Sticky NBD endpoints: a holder process that keeps NBD client connections open across a
 * daemon restart or crash (the `daemon --holder` mode; `daemon --sticky-nbd` starts one per
 * controller).
 *
 * Why: a kernel NBD device dies with its connection. nbd-client 3.24 on Linux 6.1 does not
 * reconnect (netlink mode: I/O fails with EIO at once; ioctl mode with -persist: NBD_DO_IT
 * returns 0, "Kernel call returned.", and the client exits), and only netlink
 * NBD_CMD_RECONFIGURE (with a dead-connection timeout) could hand the kernel a new socket, which
 * nbd-client does not do. So with `daemon --sticky-nbd` the public endpoint of each controller
 * belongs to a small holder process that outlives the daemon: it relays every connection to
 * the daemon's private Unix socket, and when that goes away it keeps the client connection,
 * holds its requests, reconnects to the restarted daemon, replays the client's handshake, checks
 * the export size, and re-sends every request that had no reply (NBD reads and writes are
 * idempotent; this is the NVMe host's own re-drive, one layer up).
 */
import { promises as fsp } from 'node:fs';
import * as net from 'node:net';
import { checkLocalPeer, isLoopbackHost } from '../net/loopback-guard';
import { ErrorCode, NvmfNbdError } from '../errors';
import { Cmd as NbdCmd, REQUEST_HEADER_SIZE, encodeRequest } from '../wire/nbd';
import { NbdClientStream, NbdServerStream } from '../wire/nbd-relay';
import type { HeldRequest } from '../wire/nbd-relay';
import { socketAlive } from '../net/probe';
import { waitListening } from '../net/listen';
import { listenPrivate, preparePrivateSocket } from '../net/private-socket';
import { holderEndpoint, readHolderFile, startTimeField, writeHolderFile } from './holder-file';

/** Bytes of held requests (READ data counted) per connection before the holder stops reading the client. */
export const MAX_HELD_BYTES = 256 * 1024 * 1024;
/** Reply bytes queued towards a client that does not read before the holder stops reading the daemon. */
export const MAX_CLIENT_BACKLOG = 8 * 1024 * 1024;
/** Client connections per holder (nbd-client -C allows 16 per device; a few devices share a holder). */
export const MAX_HOLDER_CONNECTIONS = 64;

/** Where a holder listens and whom it relays to. */
export interface HolderOptions {
  /**
   * The public endpoint: a Unix socket (0600 in a 0700 directory: the default, issue 14
   * finding 1) or TCP. A loopback TCP holder serves only peers of our uid or root unless
   * `allowAnyLocalUser`.
   */
  readonly listen: { host: string; port: number } | { unix: string };
  /** Loopback TCP: serve every local user (--nbd-allow-any-local-user). */
  readonly allowAnyLocalUser?: boolean;
  /** The daemon's private Unix socket for this controller. */
  readonly backend: string;
  /** Give a held connection up (close it: the kernel fails its I/O) after this long. */
  readonly holdMs: number;
  /** Held bytes per connection before the client is not read (default {@link MAX_HELD_BYTES}). */
  readonly maxHeldBytes?: number;
  /** Unread reply bytes per client before the daemon side is not read (default {@link MAX_CLIENT_BACKLOG}). */
  readonly maxClientBacklog?: number;
  /** Client connections at once (default {@link MAX_HOLDER_CONNECTIONS}); more are closed at accept. */
  readonly maxConnections?: number;
  readonly log?: (msg: string) => void;
}

/** One client connection through the holder. */
class HeldConnection {
  private backend: net.Socket | undefined;
  private readonly c = new NbdClientStream();
  private s: NbdServerStream;
  private readonly inflight = new Map<bigint, HeldRequest>();
  private heldBytes = 0;
  /** Requests parsed but not yet in flight (the held-bytes bound); `sent`: relayed already. */
  private readonly waiting: Array<{ r: HeldRequest; relayed: boolean }> = [];
  /** Handshake bytes from the client before the first dial connected. */
  private readonly early: Buffer[] = [];
  private state: 'handshake' | 'relay' | 'holding' | 'replaying' | 'closed' = 'handshake';
  private size: bigint | undefined;
  private lostAt = 0;
  private retry: NodeJS.Timeout | undefined;
  private disc = false;
  private noHold = false;

  constructor(private readonly client: net.Socket, private readonly o: HolderOptions, private readonly onClose: () => void) {
    this.s = this.serverStream();
    client.setNoDelay?.(true);
    client.on('data', (d: Buffer) => this.fromClient(d));
    client.on('error', () => undefined);
    client.on('close', () => this.close('client closed'));
    // Backpressure through the relay: replies wait in the daemon (its own bounds), not here.
    client.on('drain', () => this.flowBackend());
    this.dial(false);
  }

  private serverStream(replay = false): NbdServerStream {
    return new NbdServerStream(this.c, (cookie) => this.inflight.get(cookie), replay);
  }

  private log(m: string): void {
    this.o.log?.(m);
  }

  /** Read the client only while held bytes fit and the handshake is not waiting for an answer. */
  private flowClient(): void {
    if (this.state === 'closed') return;
    const stop = this.waiting.length > 0 || this.c.awaitingAnswer;
    if (stop) this.client.pause();
    else if (this.client.isPaused()) this.client.resume();
  }

  /** Read the daemon only while the client takes our replies. */
  private flowBackend(): void {
    const b = this.backend;
    if (b === undefined) return;
    if (this.client.writableLength > (this.o.maxClientBacklog ?? MAX_CLIENT_BACKLOG)) b.pause();
    else if (b.isPaused()) b.resume();
  }

  private fromClient(d: Buffer): void {
    try {
      if (this.noHold) {
        this.backend?.write(d);
        return;
      }
      if (this.state === 'handshake') {
        // Relayed as is; parsed only to be able to replay it. Bytes after a GO wait (unparsed)
        // for the server's answer: they are requests after an ACK, options after a refusal.
        this.c.push(d);
        // Before the daemon answers the dial, bytes wait here (a client may send its flags
        // without waiting for the greeting).
        if (this.backend === undefined) this.early.push(d);
        else this.backend.write(d);
        this.flowClient();
        return;
      }
      this.track(this.c.push(d), false);
    } catch (err) {
      this.log(`holder: client: ${(err as Error).message}`);
      this.close('client protocol error');
    }
  }

  /**
   * Take requests from the client. Each waits in `waiting` until the held bytes (READ data
   * counted) leave room, then is in flight (sent now when relaying, else re-sent after a
   * reconnect) until its reply. `relayed`: the bytes went to the daemon already (pipelined
   * after the GO): in flight at once, a reply may follow.
   */
  private track(rs: readonly HeldRequest[], relayed: boolean): void {
    for (const r of rs) this.waiting.push({ r, relayed });
    this.admit();
  }

  /** Move waiting requests in flight while the held-bytes bound allows (one at least). */
  private admit(): void {
    const limit = this.o.maxHeldBytes ?? MAX_HELD_BYTES;
    const out: HeldRequest[] = [];
    while (this.waiting.length > 0) {
      const w = this.waiting[0] as { r: HeldRequest; relayed: boolean };
      if (!w.relayed && this.inflight.size > 0 && this.heldBytes + w.r.cost > limit) break;
      this.waiting.shift();
      if (w.r.type === NbdCmd.DISC) {
        // The client is leaving: nothing to reply; sent after everything before it.
        this.disc = true;
      } else {
        this.inflight.set(w.r.cookie, w.r);
        this.heldBytes += w.r.cost;
      }
      if (!w.relayed) out.push(w.r);
    }
    if (this.state === 'relay' && out.length > 0) this.send(out);
    this.flowClient();
  }

  private send(rs: readonly HeldRequest[]): void {
    const b = this.backend;
    if (b === undefined) return;
    b.cork();
    for (const r of rs) for (const x of r.bytes) b.write(x);
    b.uncork();
  }

  private dial(replay: boolean): void {
    const b = net.connect(this.o.backend);
    b.setNoDelay?.(true);
    b.on('connect', () => {
      this.backend = b;
      for (const x of this.early.splice(0)) b.write(x);
      if (replay) {
        this.state = 'replaying';
        this.s = this.serverStream(true);
        b.cork();
        for (const x of this.c.handshake) b.write(x);
        b.uncork();
      }
      this.flowBackend();
    });
    b.on('data', (d: Buffer) => this.fromBackend(b, d));
    b.on('error', () => undefined);
    b.on('close', () => this.backendClosed(b));
  }

  private fromBackend(b: net.Socket, d: Buffer): void {
    if (b !== this.backend) return;
    if (this.noHold) {
      this.client.write(d);
      this.flowBackend();
      return;
    }
    try {
      let r = this.s.push(d);
      if (this.state === 'handshake') {
        if (!r.done) {
          this.client.write(d);
          // A refused GO lets the client go on with options: parse what it pipelined.
          if (!this.c.awaitingAnswer) this.c.push(Buffer.alloc(0));
          this.flowClient();
          return;
        }
        this.size = this.s.info.size;
        // Chunked (structured) replies are not parsed: such a connection is relayed, not held.
        // The kernel client never asks for them.
        this.noHold = this.s.info.structured;
        this.state = 'relay';
        // Everything up to the end of the handshake is relayed as it came; replies after it
        // go out whole, below.
        this.client.write(d.subarray(0, d.length - this.s.buffered));
        if (this.noHold) {
          this.client.write(d.subarray(d.length - this.s.buffered));
          this.flowClient();
          return;
        }
        // Requests pipelined after the GO were relayed already: only track them.
        this.track(this.c.push(Buffer.alloc(0)), true);
        r = this.s.push(Buffer.alloc(0));
      }
      if (this.state === 'replaying' && r.done) {
        if (this.s.info.size !== this.size) {
          this.log(`holder: export size changed (${String(this.size)} → ${String(this.s.info.size)}): giving the connection up`);
          this.close('size changed');
          return;
        }
        this.state = 'relay';
        const held = [...this.inflight.values()];
        this.log(`holder: reconnected after ${Date.now() - this.lostAt} ms; re-sending ${held.length} request(s)`);
        this.send(held);
        if (this.disc) this.send([{ cookie: 0n, type: NbdCmd.DISC, length: 0, bytes: [encodeRequest({ type: NbdCmd.DISC, cookie: 0n, offset: 0, length: 0 })], size: REQUEST_HEADER_SIZE, cost: REQUEST_HEADER_SIZE }]);
        this.admit();
        r = this.s.push(Buffer.alloc(0));
      }
      if (r.replies.length > 0) {
        this.client.cork();
        for (const rep of r.replies) {
          const req = this.inflight.get(rep.cookie);
          if (req !== undefined) {
            this.inflight.delete(rep.cookie);
            this.heldBytes -= req.cost;
          }
          for (const x of rep.bytes) this.client.write(x);
        }
        this.client.uncork();
        this.admit();
      }
      this.flowBackend();
    } catch (err) {
      this.log(`holder: server: ${(err as Error).message}`);
      this.close('server protocol error');
    }
  }

  private backendClosed(b: net.Socket): void {
    if (this.state === 'closed') return;
    if (this.backend !== undefined && b !== this.backend) return;
    this.backend = undefined;
    // Before transmission there is nothing to keep; after a DISC the client is leaving.
    if (this.state === 'handshake' || this.noHold || (this.disc && this.inflight.size === 0)) {
      this.close('server closed');
      return;
    }
    if (this.state === 'relay') {
      this.lostAt = Date.now();
      this.log(`holder: daemon connection lost; holding ${this.inflight.size} request(s)`);
    }
    this.state = 'holding';
    if (Date.now() - this.lostAt > this.o.holdMs) {
      this.log(`holder: no daemon within ${this.o.holdMs} ms: closing the client connection`);
      this.close('hold timeout');
      return;
    }
    this.retry = setTimeout(() => this.dial(true), 200);
  }

  close(why: string): void {
    if (this.state === 'closed' && this.client.destroyed) return;
    this.state = 'closed';
    if (this.retry !== undefined) clearTimeout(this.retry);
    this.backend?.destroy();
    this.client.destroy();
    if (why !== 'client closed') this.log(`holder: connection closed: ${why}`);
    this.onClose();
  }
}

/** A running holder: the listening socket and its connections. */
export class NbdHolder {
  private readonly conns = new Set<HeldConnection>();

  private constructor(private readonly server: net.Server, readonly port: number) {}

  /** Listen on `o.listen` and relay each connection to `o.backend`, holding it across restarts. */
  static async start(o: HolderOptions): Promise<NbdHolder> {
    let h: NbdHolder | undefined;
    const l = o.listen;
    const peerCheck = 'host' in l && o.allowAnyLocalUser !== true && isLoopbackHost(l.host);
    const take = (sock: net.Socket): void => {
      if (h !== undefined && h.conns.size >= (o.maxConnections ?? MAX_HOLDER_CONNECTIONS)) {
        o.log?.(`holder: refusing a connection: ${h.conns.size} already (the limit)`);
        sock.destroy();
        return;
      }
      const c = new HeldConnection(sock, o, () => h?.conns.delete(c));
      h?.conns.add(c);
    };
    const server = net.createServer((sock) => {
      if (!peerCheck) {
        take(sock);
        return;
      }
      // Loopback TCP is every local user's: only our uid and root (as the NBD server does).
      sock.pause();
      void checkLocalPeer(sock).then((v) => {
        if (sock.destroyed) return;
        if (!v.allowed) {
          o.log?.(`holder: connection refused: its socket belongs to ${v.uid === undefined ? 'an unknown user' : `uid ${v.uid}`} (${ErrorCode.NBD_PEER_REFUSED})`);
          sock.destroy();
          return;
        }
        sock.resume();
        take(sock);
      });
    });
    const where = 'unix' in l ? l.unix : `${l.host}:${l.port}`;
    try {
      if ('unix' in l) {
        // A stale socket of an earlier holder is replaced; a live one is an error.
        await preparePrivateSocket(l.unix, { notSocket: ErrorCode.NBD_LISTEN_FAILED, inUse: ErrorCode.NBD_LISTEN_FAILED });
        await listenPrivate(server, l.unix);
      } else {
        server.listen({ host: l.host, port: l.port });
        await waitListening(server);
      }
    } catch (err) {
      if (err instanceof NvmfNbdError) throw err;
      throw new NvmfNbdError(ErrorCode.NBD_LISTEN_FAILED, `holder cannot listen on ${where}: ${(err as Error).message}`, { cause: err });
    }
    const a = server.address();
    h = new NbdHolder(server, a !== null && typeof a === 'object' ? a.port : 0);
    return h;
  }

  /** Connections currently relayed or held. */
  get connections(): number {
    return this.conns.size;
  }

  /** Stop listening and close every connection. */
  async close(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const c of [...this.conns]) c.close('holder stopped');
    await closed;
  }
}

/**
 * Run a holder until SIGTERM/SIGINT (the `daemon --holder` mode): listen, write the pid file,
 * and exit on its own after `holdMs` with no connection and no daemon behind it.
 */
export async function runHolder(o: HolderOptions & { pidFile: string; signalled: Promise<unknown> }): Promise<void> {
  const h = await NbdHolder.start(o);
  const ep = 'unix' in o.listen ? { unix: o.listen.unix } : { host: o.listen.host, port: h.port };
  await writeHolderFile(o.pidFile, { pid: process.pid, ...ep, backend: o.backend, ...startTimeField(process.pid) });
  o.log?.(`holder ${process.pid}: ${holderEndpoint(ep)} → ${o.backend}`);
  let idleSince = Date.now();
  const idle = new Promise<void>((resolve) => {
    const t = setInterval(() => {
      void socketAlive(o.backend).then((alive) => {
        if (alive || h.connections > 0) idleSince = Date.now();
        else if (Date.now() - idleSince > o.holdMs) {
          clearInterval(t);
          o.log?.(`holder ${process.pid}: no daemon and no connection for ${o.holdMs} ms: exiting`);
          resolve();
        }
      });
    }, Math.min(5000, Math.max(100, o.holdMs / 4)));
    t.unref();
    void o.signalled.then(() => { clearInterval(t); resolve(); });
  });
  await idle;
  await h.close();
  const f = await readHolderFile(o.pidFile);
  if (f?.pid === process.pid) await fsp.unlink(o.pidFile).catch(() => undefined);
}
