/**
 * The NVMe/TCP secure channel over `node:tls`: TLS 1.3 only, external PSK only (no certificates),
 * cipher suite TLS_AES_128_GCM_SHA256 (TP 8011's mandatory suite; node:tls cannot do a SHA-384 PSK).
 * Used by the host's queue pairs and by the embedded target's listener.
 */
import * as tls from 'node:tls';
import type { TlsPsk } from './psk';
import { assertSupportedCipher } from './psk';

/** The only suite offered and accepted. */
export const NVME_TLS_CIPHER = 'TLS_AES_128_GCM_SHA256';

/**
 * Start a TLS client connection offering `p.identity` with `p.psk`. The returned socket emits
 * `secureConnect` when the secure channel is up; a wrong key or a target without TLS ends in
 * `error` (or `close`) before that.
 */
export function tlsConnect(host: string, port: number, p: TlsPsk, extra: { localAddress?: string } = {}): tls.TLSSocket {
  assertSupportedCipher(p, `PSK identity '${p.identity}'`);
  return tls.connect({
    host,
    port,
    ...extra,
    minVersion: 'TLSv1.3',
    maxVersion: 'TLSv1.3',
    ciphers: NVME_TLS_CIPHER,
    // PSK authenticates both ends: there is no certificate to check.
    checkServerIdentity: () => undefined,
    pskCallback: () => ({ psk: p.psk, identity: p.identity }),
  });
}

/**
 * Server options for a PSK-only TLS 1.3 listener. `lookup(identity)` returns the TLS PSK for a
 * client's identity, or undefined to refuse it (the handshake then fails).
 */
export function tlsServerOptions(lookup: (identity: string) => Buffer | undefined): tls.TlsOptions {
  return {
    minVersion: 'TLSv1.3',
    maxVersion: 'TLSv1.3',
    ciphers: NVME_TLS_CIPHER,
    pskCallback: (_socket: tls.TLSSocket, identity: string) => lookup(identity) ?? null,
  } as tls.TlsOptions;
}
