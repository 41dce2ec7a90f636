/**
 * Liveness probes for local endpoints: does something accept a connection on this Unix socket /
 * TCP address right now? They tell a stale socket file from a live daemon, and a live holder
 * from a reused pid.
 */
import * as net from 'node:net';

/** True when something listens on the Unix socket `p`. */
export function socketAlive(p: string, timeoutMs = 1000): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(p);
    const t = setTimeout(() => { s.destroy(); resolve(false); }, timeoutMs);
    s.once('connect', () => { clearTimeout(t); s.destroy(); resolve(true); });
    s.once('error', () => { clearTimeout(t); resolve(false); });
  });
}

/** True when something accepts a TCP connection at `host`:`port`. */
export function tcpAlive(host: string, port: number, timeoutMs = 1000): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host, port });
    const t = setTimeout(() => { s.destroy(); resolve(false); }, timeoutMs);
    s.once('connect', () => { clearTimeout(t); s.destroy(); resolve(true); });
    s.once('error', () => { clearTimeout(t); resolve(false); });
  });
}
