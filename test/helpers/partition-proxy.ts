/**
 * A TCP proxy on 127.0.0.1 for the stale-write hazard (resilient-stale-write, multipath tests).
 */
import * as net from 'node:net';

/**
 * A proxy whose links can be black-holed: while stalled, host→target bytes (and the host's FIN)
 * are kept, as a retransmitting kernel keeps them; heal() delivers them to the old target
 * connection, as a repaired network would.
 */
export class PartitionProxy {
  private readonly links: Array<{ up: net.Socket; stalled: boolean; held: Buffer[] }> = [];
  private constructor(readonly server: net.Server) {}
  static async start(targetPort: number): Promise<PartitionProxy> {
    const server = net.createServer({ allowHalfOpen: true });
    const p = new PartitionProxy(server);
    server.on('connection', (c) => {
      const up = net.connect(targetPort, '127.0.0.1');
      const l = { up, stalled: false, held: [] as Buffer[] };
      p.links.push(l);
      c.on('data', (d: Buffer) => { if (l.stalled) l.held.push(d); else up.write(d); });
      up.on('data', (d: Buffer) => { if (!l.stalled) c.write(d); });
      c.on('end', () => { if (!l.stalled) up.end(); });
      up.on('end', () => c.end());
      up.on('close', () => c.destroy());
      c.on('error', () => undefined);
      up.on('error', () => undefined);
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    return p;
  }
  get port(): number { return (this.server.address() as net.AddressInfo).port; }
  /** Black-hole every current link. */
  stall(): void { for (const l of this.links) l.stalled = true; }
  /**
   * The partition heals: held bytes reach the (old) target connections that are still open.
   * Returns how many held bytes went to a connection the target still had open.
   */
  heal(): number {
    let delivered = 0;
    for (const l of this.links) {
      if (!l.stalled) continue;
      l.stalled = false;
      if (l.up.destroyed) continue;
      for (const d of l.held.splice(0)) {
        delivered += d.length;
        l.up.write(d);
      }
    }
    return delivered;
  }
  close(): Promise<void> {
    for (const l of this.links) l.up.destroy();
    return new Promise((r) => this.server.close(() => r()));
  }
}
