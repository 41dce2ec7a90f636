/**
 * TLS for NBD endpoints (`--nbd-tls`): the credentials an NBD server offers after
 * NBD_OPT_STARTTLS, in the forms the NBD world uses:
 *
 * - a PSK file in GnuTLS `psktool` format (what nbdkit `--tls-psk`, qemu `tls-creds-psk` and
 *   libnbd `tls-psk-file=` read): one `identity:hexkey` a line;
 * - X.509: a certificate chain and its private key (PEM), and optionally a CA: when a CA is
 *   given, clients must present a certificate it signed (mutual TLS), otherwise any client
 *   that completes the handshake is served (server authentication only).
 *
 * Both may be configured together (a client picks by what it offers). Secret material (the PSK
 * file, the private key) is read through {@link readSecretFile}: mode 0600 (or stricter), owned by
 * us, no symlink, else CFG_ERR_KEY_FILE_INSECURE. Nothing here ever puts a key in a message:
 * errors name the file and the line number only.
 */
import * as fs from 'node:fs';
import * as tls from 'node:tls';
import type { Duplex } from 'node:stream';
import { ErrorCode, NvmfNbdError } from '../errors';
import { readSecretFile } from './keystore';

/** Where the NBD TLS credentials come from (file paths: references, safe to log and store). */
export interface NbdTlsFiles {
  /** psktool-format PSK file (`identity:hexkey` lines), 0600. */
  readonly pskFile?: string;
  /** PEM certificate (chain) of this server. */
  readonly certFile?: string;
  /** PEM private key of `certFile`, 0600. */
  readonly keyFile?: string;
  /** PEM CA bundle: when set, clients must present a certificate signed by it. */
  readonly caFile?: string;
}

/** A PSK file entry count limit: the file is read whole and kept in memory. */
export const MAX_PSK_ENTRIES = 4096;
/** Longest identity accepted (RFC 8446 allows 2^16 - 1; GnuTLS usernames are short). */
export const MAX_PSK_IDENTITY = 1024;

/**
 * Parse a psktool PSK file: `identity:hexkey` per line (the identity ends at the first `:`, as
 * GnuTLS reads it). Blank lines and `#` comments are skipped (liberal: GnuTLS itself has no
 * comments). Errors name the line number, never its content.
 * @throws NVMF_ERR_TLS_KEY_INVALID
 */
export function parsePskFile(text: string, file = 'PSK file'): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = (lines[i] as string).replace(/\r$/, '').trim();
    if (line === '' || line.startsWith('#')) continue;
    const bad = (why: string): never => {
      throw new NvmfNbdError(ErrorCode.TLS_KEY_INVALID, `${file}: line ${i + 1}: ${why} (expected identity:hexkey, as psktool writes)`);
    };
    const colon = line.indexOf(':');
    if (colon <= 0) bad('no identity');
    const identity = line.slice(0, colon);
    const hex = line.slice(colon + 1);
    if (Buffer.byteLength(identity, 'utf8') > MAX_PSK_IDENTITY) bad('identity too long');
    if (hex.length === 0 || hex.length % 2 !== 0 || !/^[0-9a-fA-F]+$/.test(hex)) bad('key is not an even number of hex digits');
    if (hex.length > 2 * 512) bad('key longer than 512 bytes');
    if (out.has(identity)) bad('identity listed twice');
    if (out.size >= MAX_PSK_ENTRIES) bad(`more than ${MAX_PSK_ENTRIES} entries`);
    out.set(identity, Buffer.from(hex, 'hex'));
  }
  if (out.size === 0) throw new NvmfNbdError(ErrorCode.TLS_KEY_INVALID, `${file}: no identity:hexkey line`);
  return out;
}

/** Read a public PEM file (certificate, CA): bounded, any mode. */
function readPublicFile(file: string, what: string): Buffer {
  try {
    const st = fs.statSync(file);
    if (!st.isFile()) throw new NvmfNbdError(ErrorCode.CFG_INVALID, `${what} ${file}: not a regular file`);
    if (st.size > 1 << 20) throw new NvmfNbdError(ErrorCode.CFG_INVALID, `${what} ${file}: larger than 1 MiB`);
    return fs.readFileSync(file);
  } catch (err) {
    if (err instanceof NvmfNbdError) throw err;
    const e = err as NodeJS.ErrnoException;
    throw new NvmfNbdError(e.code === 'ENOENT' ? ErrorCode.TLS_KEY_NOT_FOUND : ErrorCode.CFG_INVALID, `${what} ${file}: ${e.code ?? e.message}`);
  }
}

/**
 * The server side of NBD TLS: loaded credentials and the way to run a handshake on an
 * accepted (plain) socket after NBD_OPT_STARTTLS was acknowledged.
 */
export class NbdTlsServer {
  private readonly options: tls.TlsOptions;
  private readonly psks: Map<string, Buffer> | undefined;
  /** True when clients must present a certificate signed by `caFile`. */
  readonly verifyClients: boolean;

  private constructor(readonly files: NbdTlsFiles, psks: Map<string, Buffer> | undefined, ctx: tls.TlsOptions) {
    this.psks = psks;
    this.verifyClients = ctx.ca !== undefined;
    this.options = {
      ...ctx,
      requestCert: this.verifyClients,
      rejectUnauthorized: this.verifyClients,
      ...(psks !== undefined ? { pskCallback: (_s: tls.TLSSocket, identity: string): Buffer | null => psks.get(identity) ?? null } : {}),
    };
    try {
      // Parse the PEM data now: a bad certificate or key is a start-up error, not a per-client one.
      tls.createSecureContext(ctx);
    } catch (err) {
      // OpenSSL's message says what is wrong with the PEM data, never the key bytes.
      throw new NvmfNbdError(ErrorCode.TLS_KEY_INVALID, `NBD TLS certificate/key: ${(err as Error).message}`);
    }
  }

  /**
   * Load the credentials (`--nbd-tls-psk`, `--nbd-tls-cert/-key/-ca`).
   * @throws CFG_ERR_INVALID (nothing given, cert without key…), CFG_ERR_KEY_FILE_INSECURE (mode,
   *   owner, symlink), NVMF_ERR_TLS_KEY_NOT_FOUND (missing file), NVMF_ERR_TLS_KEY_INVALID (content)
   */
  static load(files: NbdTlsFiles): NbdTlsServer {
    const { pskFile, certFile, keyFile, caFile } = files;
    if (pskFile === undefined && certFile === undefined) {
      throw new NvmfNbdError(ErrorCode.CFG_INVALID, 'NBD TLS needs a PSK file or a certificate and key');
    }
    if ((certFile === undefined) !== (keyFile === undefined)) {
      throw new NvmfNbdError(ErrorCode.CFG_INVALID, 'NBD TLS: a certificate needs its key and a key its certificate');
    }
    if (caFile !== undefined && certFile === undefined) {
      throw new NvmfNbdError(ErrorCode.CFG_INVALID, 'NBD TLS: a client CA needs the server certificate and key too');
    }
    const psks = pskFile !== undefined ? parsePskFile(readSecretFile(pskFile, 'NBD TLS PSK file'), pskFile) : undefined;
    const ctx: tls.TlsOptions = { minVersion: 'TLSv1.2' };
    if (certFile !== undefined && keyFile !== undefined) {
      ctx.cert = readPublicFile(certFile, 'NBD TLS certificate');
      ctx.key = readSecretFile(keyFile, 'NBD TLS key file');
    }
    if (caFile !== undefined) ctx.ca = readPublicFile(caFile, 'NBD TLS CA file');
    if (psks !== undefined && certFile === undefined) {
      // PSK only: certificate suites cannot complete without a certificate, so offer the PSK
      // ones (TLS 1.3 external PSK rides on the 1.3 suites; 1.2 clients get PSK suites).
      ctx.ciphers = 'PSK-AES128-GCM-SHA256:PSK-AES256-GCM-SHA384:DHE-PSK-AES128-GCM-SHA256:ECDHE-PSK-CHACHA20-POLY1305';
    }
    return new NbdTlsServer(files, psks, ctx);
  }

  /** The PSK identities (names, not secrets: a client offers one in the clear). */
  get identities(): string[] {
    return [...(this.psks?.keys() ?? [])];
  }

  /** What is configured, for logs and `list` (file names and identity count, never keys). */
  describe(): string {
    const parts: string[] = [];
    if (this.psks !== undefined) parts.push(`psk ${this.files.pskFile ?? ''} (${this.psks.size} identit${this.psks.size === 1 ? 'y' : 'ies'})`);
    if (this.files.certFile !== undefined) parts.push(`x509 ${this.files.certFile}${this.verifyClients ? ` clients verified by ${this.files.caFile ?? ''}` : ''}`);
    return parts.join(', ');
  }

  /**
   * Run the server side of a TLS handshake on `raw` (which must have no other readers). Resolves
   * with the secure socket once the client is authenticated; rejects with NVMF_ERR_TLS_HANDSHAKE
   * (wrong PSK, unknown identity, certificate refused, peer gone) — the raw socket is destroyed.
   */
  accept(raw: Duplex, timeoutMs = 30_000): Promise<tls.TLSSocket> {
    // A tls.Server per connection, fed the accepted socket ('connection' may be emitted by
    // users): its events belong to this one client, and it checks client certificates against
    // the CA exactly as a listening TLS server does. It never listens.
    const srv = tls.createServer({ ...this.options, handshakeTimeout: timeoutMs });
    return new Promise((resolve, reject) => {
      let settled = false;
      const fail = (why: string): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        raw.destroy();
        reject(new NvmfNbdError(ErrorCode.TLS_HANDSHAKE, `NBD TLS handshake failed: ${why}`));
      };
      const timer = setTimeout(() => fail(`no handshake within ${timeoutMs} ms`), timeoutMs + 1000);
      timer.unref?.();
      srv.once('secureConnection', (sock: tls.TLSSocket) => {
        if (settled) {
          sock.destroy();
          return;
        }
        settled = true;
        clearTimeout(timer);
        resolve(sock);
      });
      srv.once('tlsClientError', (err: Error & { reason?: string; code?: string }) => {
        // OpenSSL's reason ("binder does not verify": a wrong PSK) without its source paths.
        fail(err.reason !== undefined ? `${err.reason}${err.code !== undefined ? ` (${err.code})` : ''}` : err.message);
      });
      raw.once('close', () => fail('connection closed'));
      srv.emit('connection', raw);
    });
  }
}
