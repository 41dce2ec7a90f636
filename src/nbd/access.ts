/**
 * Who may use an NBD endpoint (issue 14 finding 1, issue 10 item 5). NBD itself has no
 * authentication, so the endpoint decides:
 *
 * - Unix socket: the socket's mode (0600 in a 0700 directory) — only its owner and root.
 * - TCP on loopback, plain: only peers whose socket belongs to our uid or root (found through
 *   /proc/net/tcp{,6}), unless `allowAnyLocalUser` (`--nbd-allow-any-local-user`).
 * - TLS on (`tls`): every connection must do NBD_OPT_STARTTLS first and authenticate (PSK or a
 *   client certificate the CA signed); a client that completed TLS with our key is authenticated,
 *   so the peer-uid rule does not apply.
 * - TCP on any other address, plain: refused at listen (`NBD_ERR_INSECURE_BIND`) unless
 *   `insecure` (`--nbd-insecure`): whoever reaches the address reads and writes the disk.
 */
import { ErrorCode, NvmfNbdError } from '../errors';
import { isLoopbackHost } from '../net/loopback-guard';
import type { NbdTlsServer } from '../tls/nbd-tls';

/** The access policy of an NBD server's listeners. */
export interface NbdAccessPolicy {
  /** TLS required: STARTTLS before any other option (NBD_REP_ERR_TLS_REQD otherwise). */
  readonly tls?: NbdTlsServer;
  /** Plain loopback TCP serves every local user (no peer-uid check). */
  readonly allowAnyLocalUser?: boolean;
  /** Plain NBD may be served on a TCP address other hosts can reach. */
  readonly insecure?: boolean;
}

/**
 * Refuse to serve plain NBD on a non-loopback TCP address without `insecure`.
 * @throws NBD_ERR_INSECURE_BIND
 */
export function checkTcpListenAllowed(host: string, policy: NbdAccessPolicy = {}): void {
  if (policy.tls !== undefined || policy.insecure === true || isLoopbackHost(host)) return;
  throw new NvmfNbdError(
    ErrorCode.NBD_INSECURE_BIND,
    `refusing to serve NBD without TLS on ${host}: anyone who can reach it could read and write the disks (use --nbd-tls, a loopback address, or --nbd-insecure)`,
  );
}

/** True when accepted connections of a TCP listener on `host` must pass the peer-uid check. */
export function needsPeerUidCheck(host: string, policy: NbdAccessPolicy = {}): boolean {
  return policy.tls === undefined && policy.allowAnyLocalUser !== true && isLoopbackHost(host);
}
