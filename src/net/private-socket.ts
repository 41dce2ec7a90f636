/**
 * Private Unix sockets (issue 14, finding 12): the one way this project binds a Unix socket that
 * only its own user may use — the daemon's control socket and the NBD server's Unix listeners.
 *
 * - The parent directory is private ({@link ensurePrivateDir}: created 0700, or an existing one
 *   owned by us and not group/other-writable).
 * - A socket file left by a killed process is replaced; a live one (something accepts on it) is
 *   the caller's error, and so is a path that is not a socket at all (never unlinked).
 * - The bind happens inside `listen()` under umask 0177, so the socket never exists with a looser
 *   mode, then it is chmod 0600 (the umask is process-wide and a few platforms ignore it).
 */
import { promises as fsp } from 'node:fs';
import type * as net from 'node:net';
import * as path from 'node:path';
import { NvmfNbdError } from '../errors';
import type { ErrorCodeValue } from '../errors';
import { ensurePrivateDir } from './private-dir';
import { socketAlive } from './probe';
import { waitListening } from './listen';

/** The errors {@link preparePrivateSocket} raises, in the caller's terms. */
export interface PrivateSocketErrors {
  /** `p` exists and is not a socket. */
  readonly notSocket: ErrorCodeValue;
  /** Something answers on `p` already. */
  readonly inUse: ErrorCodeValue;
  /** Message of the `inUse` error (default "`p` is in use by another server"). */
  readonly inUseMessage?: string;
}

/**
 * Make `p` ready for {@link listenPrivate}: private parent directory, a stale socket removed.
 * @throws CFG_ERR_UNSAFE_DIR, or `errors.notSocket` / `errors.inUse`
 */
export async function preparePrivateSocket(p: string, errors: PrivateSocketErrors): Promise<void> {
  await ensurePrivateDir(path.dirname(p));
  let st;
  try {
    st = await fsp.lstat(p);
  } catch {
    return;
  }
  if (!st.isSocket()) throw new NvmfNbdError(errors.notSocket, `${p} exists and is not a socket`);
  if (await socketAlive(p)) throw new NvmfNbdError(errors.inUse, errors.inUseMessage ?? `${p} is in use by another server`);
  // A stale socket from a killed process.
  await fsp.unlink(p);
}

/**
 * Bind `server` at `p` with mode 0600 and wait until it listens. The caller prepared the path
 * ({@link preparePrivateSocket}).
 * @throws the server's listen error (EADDRINUSE, EACCES, …) as it came
 */
export async function listenPrivate(server: net.Server, p: string): Promise<void> {
  // Bind happens synchronously inside listen(): under umask 0177 the socket never exists with
  // looser permissions.
  const old = process.umask(0o177);
  try {
    server.listen(p);
  } finally {
    process.umask(old);
  }
  await waitListening(server);
  await fsp.chmod(p, 0o600);
}
