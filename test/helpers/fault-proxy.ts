/**
 * A TCP proxy on 127.0.0.1 that tests control, to break an NVMe/TCP (or NBD) connection the way
 * real networks do: cut every connection mid-transfer (RST), stall (stop forwarding in both
 * directions while keeping the sockets open), refuse new connections, and resume.
 */
import * as net from 'node:net';

/** How the proxy treats traffic right now. */
export const ProxyMode = {
  /** Forward both ways. */
  FORWARD: 'forward',
  /** Keep connections open but forward nothing (a stalled target or a black-holed link). */
  STALL: 'stall',
  /** Accept and immediately reset new connections (a target that is down). */
  REFUSE: 'refuse',
  /**
   * Forward host→target, but hold back everything the target sends (its replies are lost in the
   * network); a close from the target still reaches the host. Commands sent meanwhile execute and
   * stay unanswered — the in-flight I/O a path failure leaves. FORWARD delivers what was held.
   */
  MUTE: 'mute',
} as const;
export type ProxyModeValue = (typeof ProxyMode)[keyof typeof ProxyMode];

interface Pair {
  client: net.Socket;
  upstream: net.Socket;
  /** Target→host bytes held back in MUTE mode. */
  muted: Buffer[];
}

/** A controllable TCP proxy from 127.0.0.1:port to `target`. */
export class FaultProxy {
  private readonly server: net.Server;
  private readonly pairs = new Set<Pair>();
  private mode: ProxyModeValue = ProxyMode.FORWARD;
  /** Connections accepted since start (reconnects show up here). */
  accepted = 0;
  /** Bytes forwarded host→target and target→host. */
  bytesUp = 0;
  bytesDown = 0;
  /** Target→host bytes held back by MUTE since start. */
  bytesMuted = 0;

  private constructor(private readonly target: { host: string; port: number }) {
    this.server = net.createServer((client) => this.onClient(client));
  }

  /** Start a proxy to `target` on an ephemeral 127.0.0.1 port. */
  static async start(target: { host?: string; port: number }): Promise<FaultProxy> {
    const p = new FaultProxy({ host: target.host ?? '127.0.0.1', port: target.port });
    await new Promise<void>((resolve, reject) => {
      p.server.once('error', reject);
      p.server.listen(0, '127.0.0.1', () => resolve());
    });
    return p;
  }

  /** The port the proxy listens on. */
  get port(): number {
    return (this.server.address() as net.AddressInfo).port;
  }

  /** Number of live proxied connections. */
  get connections(): number {
    return this.pairs.size;
  }

  private onClient(client: net.Socket): void {
    this.accepted++;
    if (this.mode === ProxyMode.REFUSE) {
      client.resetAndDestroy();
      return;
    }
    const upstream = net.connect(this.target.port, this.target.host);
    const pair: Pair = { client, upstream, muted: [] };
    this.pairs.add(pair);
    client.setNoDelay(true);
    upstream.setNoDelay(true);
    const end = (): void => {
      if (!this.pairs.delete(pair)) return;
      pair.muted.length = 0;
      client.destroy();
      upstream.destroy();
    };
    client.on('data', (b) => {
      this.bytesUp += b.length;
      if (!upstream.write(b)) client.pause();
    });
    upstream.on('data', (b) => {
      if (this.mode === ProxyMode.MUTE) {
        // Bounded: the target answers only what the host sent, and a muted host waits.
        this.bytesMuted += b.length;
        pair.muted.push(b);
        return;
      }
      this.bytesDown += b.length;
      if (!client.write(b)) upstream.pause();
    });
    client.on('drain', () => { if (this.mode !== ProxyMode.STALL) upstream.resume(); });
    upstream.on('drain', () => { if (this.mode !== ProxyMode.STALL) client.resume(); });
    client.on('close', end);
    upstream.on('close', end);
    client.on('error', end);
    upstream.on('error', end);
    if (this.mode === ProxyMode.STALL) {
      client.pause();
      upstream.pause();
    }
  }

  /** Change the mode. STALL pauses every live connection; MUTE and FORWARD resume them (FORWARD first delivers what MUTE held). */
  setMode(mode: ProxyModeValue): void {
    this.mode = mode;
    for (const pair of this.pairs) {
      const { client, upstream } = pair;
      if (mode === ProxyMode.STALL) {
        client.pause();
        upstream.pause();
      } else if (mode === ProxyMode.FORWARD) {
        for (const b of pair.muted.splice(0)) {
          this.bytesDown += b.length;
          client.write(b);
        }
        client.resume();
        upstream.resume();
      } else if (mode === ProxyMode.MUTE) {
        client.resume();
        upstream.resume();
      }
    }
  }

  /** Reset every live connection at once (both sides see ECONNRESET), mid-transfer. */
  cutAll(): void {
    for (const pair of [...this.pairs]) {
      this.pairs.delete(pair);
      pair.client.resetAndDestroy();
      pair.upstream.resetAndDestroy();
    }
  }

  /** Stop listening and reset everything. */
  async close(): Promise<void> {
    this.cutAll();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
