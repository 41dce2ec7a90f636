/**
 * The NBD endpoint security flags shared by connect, connect-all, the daemon and demo:
 *
 *   --nbd-tls                    require TLS (NBD_OPT_STARTTLS) on every NBD connection
 *   --nbd-tls-psk FILE           PSKs in psktool format (identity:hexkey lines, mode 0600); implies --nbd-tls
 *   --nbd-tls-cert FILE          X.509 server certificate (PEM); implies --nbd-tls
 *   --nbd-tls-key FILE           its private key (PEM, mode 0600)
 *   --nbd-tls-ca FILE            CA for client certificates: clients must present one it signed
 *   --nbd-insecure               allow plain NBD on a non-loopback TCP address
 *   --nbd-allow-any-local-user   plain loopback TCP serves every local user (no peer-uid check)
 *
 * Only file paths are taken (references): key material never passes through argv, the state
 * file or `list`.
 */
import * as path from 'node:path';
import type { OptionSpec } from './args';
import { usageError } from './args';
import { checkTcpListenAllowed, type NbdAccessPolicy } from '../nbd/access';
import { parseNbdSpec } from '../engine/session';
import { NbdTlsServer, type NbdTlsFiles } from '../tls/nbd-tls';

/** The flags (appended to the option tables of the verbs that serve NBD). */
export const NBD_SECURITY_OPTIONS: readonly OptionSpec[] = [
  { long: 'nbd-tls', type: 'boolean', help: 'require TLS on NBD connections (NBD_OPT_STARTTLS; with --nbd-tls-psk and/or --nbd-tls-cert/--nbd-tls-key)' },
  { long: 'nbd-tls-psk', type: 'string', metavar: 'FILE', help: 'NBD TLS PSKs in psktool format (identity:hexkey lines, mode 0600); implies --nbd-tls' },
  { long: 'nbd-tls-cert', type: 'string', metavar: 'FILE', help: 'NBD TLS server certificate (PEM); implies --nbd-tls' },
  { long: 'nbd-tls-key', type: 'string', metavar: 'FILE', help: 'private key of --nbd-tls-cert (PEM, mode 0600)' },
  { long: 'nbd-tls-ca', type: 'string', metavar: 'FILE', help: 'CA (PEM) whose client certificates NBD TLS requires' },
  { long: 'nbd-insecure', type: 'boolean', help: 'allow plain NBD on a non-loopback TCP address (anyone who reaches it can read and write)' },
  { long: 'nbd-allow-any-local-user', type: 'boolean', help: 'plain loopback TCP NBD serves every local user (default: only this uid and root)' },
];

/** The long names of {@link NBD_SECURITY_OPTIONS}. */
export const NBD_SECURITY_KEYS: readonly string[] = NBD_SECURITY_OPTIONS.map((o) => o.long);

const str = (v: unknown): string | undefined => (typeof v === 'string' && v !== '' ? v : undefined);

/** The credential files the flags name (absolute paths), or undefined without TLS. */
export function nbdTlsFilesFromArgs(opts: Record<string, unknown>): NbdTlsFiles | undefined {
  const abs = (v: unknown): string | undefined => (str(v) !== undefined ? path.resolve(v as string) : undefined);
  const files: NbdTlsFiles = {
    ...(abs(opts['nbd-tls-psk']) !== undefined ? { pskFile: abs(opts['nbd-tls-psk']) } : {}),
    ...(abs(opts['nbd-tls-cert']) !== undefined ? { certFile: abs(opts['nbd-tls-cert']) } : {}),
    ...(abs(opts['nbd-tls-key']) !== undefined ? { keyFile: abs(opts['nbd-tls-key']) } : {}),
    ...(abs(opts['nbd-tls-ca']) !== undefined ? { caFile: abs(opts['nbd-tls-ca']) } : {}),
  };
  const any = Object.keys(files).length > 0;
  if (opts['nbd-tls'] !== true && !any) return undefined;
  if (files.pskFile === undefined && files.certFile === undefined) usageError('--nbd-tls needs --nbd-tls-psk FILE and/or --nbd-tls-cert FILE --nbd-tls-key FILE');
  if ((files.certFile === undefined) !== (files.keyFile === undefined)) usageError('--nbd-tls-cert and --nbd-tls-key go together');
  if (files.caFile !== undefined && files.certFile === undefined) usageError('--nbd-tls-ca needs --nbd-tls-cert and --nbd-tls-key');
  if (opts['nbd-insecure'] === true) usageError('--nbd-insecure and --nbd-tls contradict each other');
  return files;
}

/**
 * The access policy the flags ask for; loads (and checks) the TLS credentials.
 * @throws CLI_ERR_USAGE, CFG_ERR_KEY_FILE_INSECURE, NVMF_ERR_TLS_KEY_NOT_FOUND, NVMF_ERR_TLS_KEY_INVALID
 */
export function nbdAccessFromArgs(opts: Record<string, unknown>): NbdAccessPolicy {
  const files = nbdTlsFilesFromArgs(opts);
  return {
    ...(files !== undefined ? { tls: NbdTlsServer.load(files) } : {}),
    ...(opts['nbd-allow-any-local-user'] === true ? { allowAnyLocalUser: true } : {}),
    ...(opts['nbd-insecure'] === true ? { insecure: true } : {}),
  };
}

/**
 * Refuse early (before connecting anything) an `--nbd tcp:HOST:PORT` that would serve plain NBD
 * to other hosts: HOST not loopback, no TLS flags, no --nbd-insecure.
 * @throws NBD_ERR_INSECURE_BIND
 */
export function checkNbdEndpointArg(spec: string | undefined, opts: Record<string, unknown>): void {
  if (spec === undefined || !spec.startsWith('tcp:')) return;
  const n = parseNbdSpec(spec);
  if (!('tcp' in n)) return;
  const tlsOn = opts['nbd-tls'] === true || ['nbd-tls-psk', 'nbd-tls-cert'].some((k) => str(opts[k]) !== undefined);
  if (!tlsOn) checkTcpListenAllowed(n.tcp.host, { ...(opts['nbd-insecure'] === true ? { insecure: true } : {}) });
}

/** Make the credential paths absolute in place (they may travel to a daemon with another cwd). */
export function absoluteNbdTlsPaths(opts: Record<string, unknown>): void {
  for (const k of ['nbd-tls-psk', 'nbd-tls-cert', 'nbd-tls-key', 'nbd-tls-ca']) {
    const v = opts[k];
    if (typeof v === 'string' && v !== '' && !path.isAbsolute(v)) opts[k] = path.resolve(v);
  }
}

/** The flags as connect arguments (for a daemon hand-off / state file): paths and booleans only. */
export function nbdSecurityArgs(opts: Record<string, unknown>): Record<string, string | boolean> {
  const out: Record<string, string | boolean> = {};
  for (const k of NBD_SECURITY_KEYS) {
    const v = opts[k];
    if (v === true) out[k] = true;
    else if (typeof v === 'string' && v !== '') out[k] = path.resolve(v);
  }
  return out;
}
