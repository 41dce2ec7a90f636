/**
 * The host's TLS flags (nvme-cli spellings) and how they become the PSK a queue pair offers:
 *
 *   --tls                      TLS with the key store's PSK for this host and subsystem, looked up
 *                              under the identities the Linux host tries (NVMe0R02/NVMe0R01 …,
 *                              then any NVMe1R0x … for the pair)
 *   --tls-key FILE|KEY         a configured PSK (interchange format, inline or in a 0600 file):
 *                              retained + TLS PSK derived here, identity version 1 — as
 *                              `nvme connect --tls-key` does; with --tls-key-identity the key is
 *                              used as that identity's TLS PSK as is (nvme-cli's import)
 *   --tls-key-identity ID      the key store's PSK for identity ID
 *   --keyring FILE             the key store (default STATE_DIR/tls-keys, 0600)
 *
 * A key never goes into the daemon's state: {@link tlsArgsForHandoff} stores a derived PSK in the
 * key store and hands the daemon only the identity and the store's path (a reference).
 */
import * as path from 'node:path';
import type { OptionSpec } from './args';
import { usageError } from './args';
import { stateDir } from '../config/state-dir';
import { ErrorCode, NvmfNbdError } from '../errors';
import { KeyStore, readSecretFile } from '../tls/keystore';
import { assertSupportedCipher, defaultIdentities, deriveTlsPsk, looksLikeInterchangeKey, parseInterchangeKey } from '../tls/psk';
import type { TlsPsk } from '../tls/psk';

/** The TLS flags of connect, connect-all and discover. */
export const TLS_OPTIONS: readonly OptionSpec[] = [
  { long: 'tls', type: 'boolean', help: 'NVMe/TCP over TLS 1.3 with a PSK (from --tls-key or the key store)' },
  { long: 'tls-key', type: 'string', metavar: 'FILE|KEY', help: 'configured PSK in interchange format (NVMeTLSkey-1:01:…:), inline or in a 0600 file; implies --tls' },
  { long: 'tls-key-identity', type: 'string', metavar: 'ID', help: 'use the key store\'s PSK with this identity; implies --tls' },
  { long: 'keyring', type: 'string', metavar: 'FILE', help: 'TLS key store file (default STATE_DIR/tls-keys, mode 0600)' },
];

/** The key store the flags name (default `<stateDir>/tls-keys`). */
export function keyStoreFromArgs(opts: Record<string, unknown>): KeyStore {
  return new KeyStore(typeof opts.keyring === 'string' && opts.keyring !== '' ? path.resolve(opts.keyring) : path.join(stateDir(), 'tls-keys'));
}

/** True when any TLS flag asks for TLS. */
export function tlsRequested(opts: Record<string, unknown>): boolean {
  return opts.tls === true || typeof opts['tls-key'] === 'string' || typeof opts['tls-key-identity'] === 'string';
}

/** Read `--tls-key`: an inline key, or a file that must be 0600 and ours. */
function configuredKeyText(v: string): string {
  if (looksLikeInterchangeKey(v)) return v;
  if (v.startsWith('NVMeTLSkey-')) throw new NvmfNbdError(ErrorCode.TLS_KEY_INVALID, 'invalid TLS key: not in the PSK interchange format');
  return readSecretFile(v, '--tls-key file').trim();
}

/**
 * The PSK to offer to `subnqn` as `hostnqn`, or undefined without TLS flags.
 * @throws NVMF_ERR_TLS_KEY_INVALID, NVMF_ERR_TLS_KEY_NOT_FOUND, CFG_ERR_KEY_FILE_INSECURE,
 *   NVMF_ERR_TLS_UNSUPPORTED_KEY (SHA-384)
 */
export function tlsFromArgs(opts: Record<string, unknown>, hostnqn: string, subnqn: string): TlsPsk | undefined {
  if (!tlsRequested(opts)) return undefined;
  const keyArg = opts['tls-key'];
  const idArg = opts['tls-key-identity'];
  let p: TlsPsk | undefined;
  if (typeof keyArg === 'string') {
    const k = parseInterchangeKey(configuredKeyText(keyArg));
    if (typeof idArg === 'string') {
      p = { identity: idArg, psk: k.key, cipher: k.key.length === 48 ? 2 : 1 };
    } else {
      p = deriveTlsPsk(k, hostnqn, subnqn, 1);
      k.key.fill(0);
    }
  } else {
    const store = keyStoreFromArgs(opts);
    if (typeof idArg === 'string') {
      p = store.lookup(idArg);
      if (p === undefined) throw new NvmfNbdError(ErrorCode.TLS_KEY_NOT_FOUND, `no TLS PSK with identity '${idArg}' in ${store.file}`);
    } else {
      const entries = store.entries();
      const wanted = defaultIdentities(hostnqn, subnqn);
      const hit = wanted.find((id) => entries.some((e) => e.identity === id))
        ?? entries.find((e) => /^NVMe1R0[12] /.test(e.identity) && e.identity.startsWith(`${e.identity.slice(0, 8)} ${hostnqn} ${subnqn} `))?.identity;
      p = hit === undefined ? undefined : store.lookup(hit);
      if (p === undefined) {
        throw new NvmfNbdError(ErrorCode.TLS_KEY_NOT_FOUND,
          `--tls: no TLS PSK for host ${hostnqn} and subsystem ${subnqn} in ${store.file} (give --tls-key, or add one with 'nvmf-nbd gen-tls-key --insert' or 'nvmf-nbd tls-key --import')`);
      }
    }
  }
  assertSupportedCipher(p, `PSK identity '${p.identity}'`);
  return p;
}

/**
 * Before handing a connect to the daemon: a `--tls-key` is derived here and stored in the key
 * store (as `nvme connect --tls-key` inserts it into the kernel keyring), and the daemon gets
 * `--tls-key-identity` and `--keyring` instead, so no key crosses into its state file.
 */
export function tlsArgsForHandoff(opts: Record<string, unknown>, hostnqn: string, subnqn: string): Record<string, unknown> {
  if (!tlsRequested(opts)) return opts;
  const store = keyStoreFromArgs(opts);
  const out: Record<string, unknown> = { ...opts, tls: true, keyring: store.file };
  if (typeof opts['tls-key'] === 'string') {
    const p = tlsFromArgs(opts, hostnqn, subnqn) as TlsPsk;
    store.insert(p);
    p.psk.fill(0);
    out['tls-key-identity'] = p.identity;
    delete out['tls-key'];
  }
  return out;
}

/** Usage check shared by the verbs: --tls-key-identity without a store entry is found later. */
export function checkTlsArgs(opts: Record<string, unknown>): void {
  if (opts['tls-key'] === '') usageError('--tls-key: empty');
}
