/**
 * The owner of a loopback TCP peer (issue 14, finding 1): on Linux the peer's socket is a line of
 * /proc/net/tcp (IPv4) or /proc/net/tcp6 whose local address is our accepted socket's remote
 * address and whose remote address is our local one; its `uid` column is the owner. A loopback
 * endpoint can then accept only its own uid (or root) — the building block; wiring it into the
 * NBD listeners is the rest of finding 1.
 */
import { promises as fsp } from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';

/** One socket line: addresses as /proc prints them (hex, kernel byte order), uid. */
export interface ProcNetTcpEntry { readonly local: string; readonly remote: string; readonly uid: number }

/** Parse /proc/net/tcp or tcp6 text (pure). Lines that do not parse are skipped. */
export function parseProcNetTcp(text: string): ProcNetTcpEntry[] {
  const out: ProcNetTcpEntry[] = [];
  for (const line of text.split('\n').slice(1)) {
    // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
    const f = line.trim().split(/\s+/);
    const uid = Number(f[7]);
    if (f.length < 8 || !Number.isSafeInteger(uid)) continue;
    out.push({ local: (f[1] as string).toUpperCase(), remote: (f[2] as string).toUpperCase(), uid });
  }
  return out;
}

/**
 * `address:port` as /proc/net/tcp{,6} prints it: each 32-bit word of the address in host
 * (little-endian) order, in hex, then the port in hex. IPv4-mapped IPv6 (::ffff:a.b.c.d) is
 * printed in tcp6 form. Undefined for an address that is not IP.
 */
export function procAddress(address: string, port: number): string | undefined {
  const p = port.toString(16).toUpperCase().padStart(4, '0');
  if (net.isIPv4(address)) return `${word(Buffer.from(address.split('.').map(Number)))}:${p}`;
  if (!net.isIPv6(address)) return undefined;
  const b = ipv6Bytes(address);
  let hex = '';
  for (let i = 0; i < 16; i += 4) hex += word(b.subarray(i, i + 4));
  return `${hex}:${p}`;
}

function word(b: Buffer): string {
  return Buffer.from([b[3] as number, b[2] as number, b[1] as number, b[0] as number]).toString('hex').toUpperCase();
}

function ipv6Bytes(a: string): Buffer {
  const b = Buffer.alloc(16);
  // IPv4-mapped (how Node reports an IPv4 peer on a dual-stack socket): ::ffff:a.b.c.d
  const mapped = /^::ffff:(\d+)\.(\d+)\.(\d+)\.(\d+)$/i.exec(a);
  if (mapped !== null) {
    b.writeUInt16BE(0xffff, 10);
    for (let i = 0; i < 4; i++) b[12 + i] = Number(mapped[i + 1]);
    return b;
  }
  const [head, rest] = a.split('::') as [string, string | undefined];
  const hs = head === '' ? [] : head.split(':').map((x) => parseInt(x, 16));
  const rs = rest === undefined || rest === '' ? [] : rest.split(':').map((x) => parseInt(x, 16));
  const groups = rest === undefined ? hs : [...hs, ...Array<number>(Math.max(0, 8 - hs.length - rs.length)).fill(0), ...rs];
  groups.slice(0, 8).forEach((g, i) => b.writeUInt16BE(g & 0xffff, i * 2));
  return b;
}

/**
 * The uid owning the peer socket of an accepted loopback connection, or undefined when it cannot
 * be found (not loopback, no /proc, the peer already gone): callers refuse then.
 */
export async function peerUid(sock: { localAddress?: string; localPort?: number; remoteAddress?: string; remotePort?: number }, procRoot = '/proc'): Promise<number | undefined> {
  if (sock.localAddress === undefined || sock.remoteAddress === undefined || sock.localPort === undefined || sock.remotePort === undefined) return undefined;
  // The peer's socket: its local side is our remote side.
  const theirs = procAddress(sock.remoteAddress, sock.remotePort);
  const ours = procAddress(sock.localAddress, sock.localPort);
  if (theirs === undefined || ours === undefined) return undefined;
  for (const file of ['tcp', 'tcp6']) {
    let text: string;
    try {
      text = await fsp.readFile(path.join(procRoot, 'net', file), 'utf8');
    } catch {
      continue;
    }
    const hit = parseProcNetTcp(text).find((e) => e.local === theirs && e.remote === ours);
    if (hit !== undefined) return hit.uid;
  }
  return undefined;
}
