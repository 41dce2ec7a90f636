/**
 * Who may use a loopback TCP endpoint (issue 14, finding 1). NBD has no authentication: on a Unix
 * socket the file mode decides, but 127.0.0.1 is reachable by every local user and every
 * container sharing the network namespace. A plain (non-TLS) loopback listener therefore accepts
 * only peers whose socket belongs to our effective uid or to root, found through
 * /proc/net/tcp{,6} ({@link peerUid}); a peer whose owner cannot be found is refused too.
 */
import * as net from 'node:net';
import { peerUid } from './peer-uid';

/** True for an address that only this host can reach: 127.0.0.0/8, ::1, their mapped forms, `localhost`. */
export function isLoopbackHost(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  if (h === 'localhost') return true;
  if (net.isIPv4(h)) return h.startsWith('127.');
  if (h === '::1' || /^(0{0,4}:){7}0{0,3}1$/.test(h)) return true;
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/.exec(h);
  return mapped !== null && (mapped[1] as string).startsWith('127.');
}

/** The verdict on one accepted connection. `uid` is the peer's owner when it was found. */
export interface LocalPeerVerdict {
  readonly allowed: boolean;
  readonly uid?: number;
}

/**
 * Decide whether the peer of an accepted loopback socket may be served: its socket must belong
 * to `selfUid` (default: our effective uid) or to root. Unknown owner → refused.
 */
export async function checkLocalPeer(
  sock: { localAddress?: string; localPort?: number; remoteAddress?: string; remotePort?: number },
  opts: { selfUid?: number; procRoot?: string } = {},
): Promise<LocalPeerVerdict> {
  const self = opts.selfUid ?? process.geteuid?.() ?? 0;
  const uid = await peerUid(sock, opts.procRoot);
  if (uid === undefined) return { allowed: false };
  return { allowed: uid === 0 || uid === self, uid };
}
