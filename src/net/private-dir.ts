/**
 * Private directories for sockets and state (issue 14, finding 12). A directory this process
 * creates is 0700; one that already exists is used only when it belongs to the effective uid and
 * nobody else may write it: otherwise another user who prepared it could swap our sockets or
 * state files for theirs.
 */
import { promises as fsp } from 'node:fs';
import { ErrorCode, NvmfNbdError } from '../errors';

/**
 * Create `dir` (and missing parents) mode 0700, or check an existing one: a real directory (not
 * a symlink), owned by the effective uid, no group/other write.
 * @throws CFG_ERR_UNSAFE_DIR
 */
export async function ensurePrivateDir(dir: string, euid: number | undefined = process.geteuid?.()): Promise<void> {
  await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
  const st = await fsp.lstat(dir);
  if (!st.isDirectory()) throw new NvmfNbdError(ErrorCode.UNSAFE_DIR, `${dir} is not a directory (a symlink?): refusing to use it`);
  if (euid !== undefined && st.uid !== euid) {
    throw new NvmfNbdError(ErrorCode.UNSAFE_DIR, `${dir} belongs to uid ${st.uid}, not to this process (uid ${euid}): refusing to use it`);
  }
  if ((st.mode & 0o022) !== 0) {
    throw new NvmfNbdError(ErrorCode.UNSAFE_DIR, `${dir} is writable by group or others (mode ${(st.mode & 0o777).toString(8)}): refusing to use it`);
  }
}
