/**
 * Where a DH-HMAC-CHAP secret comes from: inline (`DHHC-1:…`, as nvme-cli takes it) or a
 * reference `file:PATH` to a file holding it. A key file must be a regular file owned by the
 * user running us (or root) with no group/other permission bits (mode 0600 or stricter), like
 * an ssh private key; anything else is refused before it is read. Error messages name the
 * file, never its content.
 */
import * as fs from 'node:fs';
import { ErrorCode, NvmfNbdError } from '../errors';
import { parseDhchapKey, type DhchapKey } from '../wire/dhchap';

/** Largest key file read (a key is < 100 bytes; anything big is not a key file). */
const MAX_KEY_FILE = 4096;

/** True when `spec` is a reference (`file:PATH`) rather than an inline secret. */
export function isSecretReference(spec: string): boolean {
  return spec.startsWith('file:');
}

/**
 * Resolve `spec` (`DHHC-1:…` or `file:PATH`) to a key.
 * @throws CFG_ERR_DHCHAP_KEY_INVALID (bad key, unreadable or too permissive key file)
 */
export function loadDhchapSecret(spec: string, what = 'DH-HMAC-CHAP secret'): DhchapKey {
  if (!isSecretReference(spec)) {
    try {
      return parseDhchapKey(spec);
    } catch (err) {
      throw new NvmfNbdError(ErrorCode.DHCHAP_KEY_INVALID, `${what}: ${(err as Error).message}`);
    }
  }
  const file = spec.slice('file:'.length);
  if (file === '') throw new NvmfNbdError(ErrorCode.DHCHAP_KEY_INVALID, `${what}: 'file:' needs a path`);
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY | (fs.constants.O_NOFOLLOW ?? 0));
  } catch (err) {
    throw new NvmfNbdError(ErrorCode.DHCHAP_KEY_INVALID, `${what}: cannot open key file ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile()) throw new NvmfNbdError(ErrorCode.DHCHAP_KEY_INVALID, `${what}: key file ${file} is not a regular file`);
    if ((st.mode & 0o077) !== 0) {
      throw new NvmfNbdError(ErrorCode.DHCHAP_KEY_INVALID,
        `${what}: key file ${file} has mode ${(st.mode & 0o777).toString(8).padStart(4, '0')}; it must not be accessible by group or others (chmod 600)`);
    }
    const uid = typeof process.getuid === 'function' ? process.getuid() : undefined;
    if (uid !== undefined && st.uid !== uid && st.uid !== 0) {
      throw new NvmfNbdError(ErrorCode.DHCHAP_KEY_INVALID, `${what}: key file ${file} is owned by uid ${st.uid}, not by this user (${uid}) or root`);
    }
    if (st.size > MAX_KEY_FILE) throw new NvmfNbdError(ErrorCode.DHCHAP_KEY_INVALID, `${what}: key file ${file} is larger than ${MAX_KEY_FILE} bytes`);
    const text = fs.readFileSync(fd, 'utf8');
    try {
      return parseDhchapKey(text.trim());
    } catch (err) {
      throw new NvmfNbdError(ErrorCode.DHCHAP_KEY_INVALID, `${what} in ${file}: ${(err as Error).message}`);
    }
  } finally {
    fs.closeSync(fd);
  }
}
