/**
 * Key files and the TLS key store. Node cannot reach the kernel keyring, so derived TLS PSKs live
 * in a file (default `<stateDir>/tls-keys`, mode 0600) in the format `nvme tls-key --export`
 * writes: one `<identity> <NVMeTLSkey-v:hh:base64:>` per line, the key being the derived TLS PSK.
 *
 * Every key file (the store, `--tls-key FILE`, `--psk FILE`, NBD PSK files) is read through
 * {@link readSecretFile}: refused unless a regular file owned by this user with no group/other
 * permission bits. Nothing here prints or logs a key.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ErrorCode, NvmfNbdError } from '../errors';
import { formatInterchangeKey } from './psk';
import type { TlsPsk } from './psk';

/**
 * Read a secret file, refusing one that others could read or replace.
 * @throws CFG_ERR_KEY_FILE_INSECURE (mode or owner), TLS_KEY_NOT_FOUND (missing)
 */
export function readSecretFile(file: string, what = 'key file'): string {
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code === 'ENOENT') throw new NvmfNbdError(ErrorCode.TLS_KEY_NOT_FOUND, `${what} ${file}: no such file`);
    if (e.code === 'ELOOP') throw new NvmfNbdError(ErrorCode.KEY_FILE_INSECURE, `${what} ${file}: is a symbolic link (refused)`);
    throw new NvmfNbdError(ErrorCode.KEY_FILE_INSECURE, `${what} ${file}: ${e.code ?? e.message}`);
  }
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile()) throw new NvmfNbdError(ErrorCode.KEY_FILE_INSECURE, `${what} ${file}: not a regular file`);
    const uid = process.getuid?.();
    if (uid !== undefined && st.uid !== uid) {
      throw new NvmfNbdError(ErrorCode.KEY_FILE_INSECURE, `${what} ${file}: owned by uid ${st.uid}, not by this user (${uid})`);
    }
    if ((st.mode & 0o077) !== 0) {
      throw new NvmfNbdError(ErrorCode.KEY_FILE_INSECURE,
        `${what} ${file}: mode ${(st.mode & 0o777).toString(8).padStart(4, '0')} lets others read it; chmod 600 it`);
    }
    if (st.size > 1 << 20) throw new NvmfNbdError(ErrorCode.KEY_FILE_INSECURE, `${what} ${file}: larger than 1 MiB`);
    return fs.readFileSync(fd, 'utf8');
  } finally {
    fs.closeSync(fd);
  }
}

/** Write a secret file atomically with mode 0600 (temp file in the same folder, fsync, rename). */
export function writeSecretFile(file: string, text: string): void {
  fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  const tmp = `${file}.${process.pid}.tmp`;
  const fd = fs.openSync(tmp, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_TRUNC | fs.constants.O_EXCL, 0o600);
  try {
    fs.writeSync(fd, text);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, file);
}

/** One line of the store. */
export interface StoreEntry {
  readonly identity: string;
  /** The key in interchange format (the derived TLS PSK). Secret. */
  readonly key: string;
}

/** Decode a store line's key: like the interchange format, but version 0 too (nvme-cli exports v0 identities' keys as `NVMeTLSkey-0:`). */
export function decodeStoreKey(text: string): Buffer {
  const m = /^NVMeTLSkey-[01]:(0[0-2]):([A-Za-z0-9+/=]+):$/.exec(text.trim());
  if (m === null) throw new NvmfNbdError(ErrorCode.TLS_KEY_INVALID, 'invalid key in the key store (not NVMeTLSkey-<v>:<hh>:<base64>:)');
  const raw = Buffer.from(m[2]!, 'base64');
  if (raw.length !== 36 && raw.length !== 52) throw new NvmfNbdError(ErrorCode.TLS_KEY_INVALID, 'invalid key length in the key store');
  const key = Buffer.from(raw.subarray(0, raw.length - 4));
  raw.fill(0);
  return key;
}

/** Parse the store's text; malformed lines are reported by line number (never with their content). */
export function parseStore(text: string, file = 'key store'): StoreEntry[] {
  const out: StoreEntry[] = [];
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    const sp = line.lastIndexOf(' ');
    if (sp <= 0) throw new NvmfNbdError(ErrorCode.TLS_KEY_INVALID, `${file}: line ${i + 1} is not '<identity> <key>'`);
    const identity = line.slice(0, sp);
    const key = line.slice(sp + 1);
    decodeStoreKey(key);
    out.push({ identity, key });
  });
  return out;
}

/** The key store file (see module doc). Loaded on each call: the file is the truth. */
export class KeyStore {
  constructor(readonly file: string) {}

  /** Entries, or none when the file does not exist yet. */
  entries(): StoreEntry[] {
    if (!fs.existsSync(this.file)) return [];
    return parseStore(readSecretFile(this.file, 'key store'), this.file);
  }

  /** The TLS PSK stored under `identity`, or undefined. */
  lookup(identity: string): TlsPsk | undefined {
    const e = this.entries().find((x) => x.identity === identity);
    if (e === undefined) return undefined;
    const psk = decodeStoreKey(e.key);
    return { identity, psk, cipher: psk.length === 48 ? 2 : 1 };
  }

  /** Add or replace the entry for `p.identity` (like the kernel keyring's key update). */
  insert(p: TlsPsk): void {
    const m = /^NVMe([01])/.exec(p.identity);
    const version = m === null ? 1 : Number(m[1]);
    const line: StoreEntry = { identity: p.identity, key: formatInterchangeKey(p.psk, p.cipher, version) };
    const rest = this.entries().filter((x) => x.identity !== p.identity);
    this.write([...rest, line]);
  }

  /** Remove `identity`; false when it was not there. */
  revoke(identity: string): boolean {
    const all = this.entries();
    const rest = all.filter((x) => x.identity !== identity);
    if (rest.length === all.length) return false;
    this.write(rest);
    return true;
  }

  /** The store in `nvme tls-key --export` format. */
  exportText(): string {
    return this.entries().map((e) => `${e.identity} ${e.key}\n`).join('');
  }

  /** Add every line of an export (`nvme tls-key --import`); returns how many were imported. */
  importText(text: string): number {
    const incoming = parseStore(text, 'import');
    const ids = new Set(incoming.map((e) => e.identity));
    this.write([...this.entries().filter((x) => !ids.has(x.identity)), ...incoming]);
    return incoming.length;
  }

  private write(all: StoreEntry[]): void {
    writeSecretFile(this.file, all.map((e) => `${e.identity} ${e.key}\n`).join(''));
  }
}
