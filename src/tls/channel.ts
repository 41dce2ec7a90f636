/**
 * The NVMe/TCP secure channel over `node:tls`: TLS 1.3 only, external PSK only (no certificates),
 * cipher suite TLS_AES_128_GCM_SHA256 (TP 8011's mandatory suite; node:tls cannot do a SHA-384 PSK).
 * Used by the host's queue pairs and by the embedded target's listener.
 */
import type * as net from 'node:net';
import * as tls from 'node:tls';
import type { TlsPsk } from './psk';
import { assertSupportedCipher } from './psk';

/** The only suite offered and accepted. */
export const NVME_TLS_CIPHER = 'TLS_AES_128_GCM_SHA256';

/**
 * Start a TLS client connection offering `p.identity` with `p.psk`. The returned socket emits
 * `secureConnect` when the secure channel is up; a wrong key or a target without TLS ends in
 * `error` (or `close`) before that. `extra.onread` (net.Socket's static-buffer reads) works on
 * TLS too: node:tls copies decrypted records into the buffers it returns.
 */
export function tlsConnect(host: string, port: number, p: TlsPsk, extra: { localAddress?: string; onread?: net.OnReadOpts } = {}): tls.TLSSocket {
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

/** The native half of a SecureContext, as far as this module touches it (Node-internal). */
interface NativeSecureContext {
  enableTicketKeyCallback?: () => void;
  onticketkeycallback?: (name: Buffer, iv: Buffer, enc: boolean) => unknown[];
}

let serverContext: tls.SecureContext | undefined;
let ticketsSuppressed = false;

/**
 * The shared server SecureContext: TLS 1.3, the one suite, and **no session tickets**.
 *
 * Why: after a TLS 1.3 handshake OpenSSL sends NewSessionTicket messages (post-handshake
 * handshake records, inner type 22). The Linux nvme-tcp host (6.12) reads its ICResp with
 * kTLS and refuses any record that is not application data ("nvme_tcp: queue 0: unhandled TLS
 * record 22"), so a ticket kills the connection. NVMe/TCP never resumes sessions (every queue
 * does a full PSK handshake; TP 8011 has no resumption), so tickets have no use here.
 *
 * How, with what Node 20 offers: there is no `SSL_CTX_set_num_tickets` binding, and
 * `SSL_OP_NO_TICKET` / `sessionTimeout: 0` only switch OpenSSL to *stateful* tickets — still one
 * NewSessionTicket (measured with `openssl s_client -msg`). What does stop it: a ticket-key
 * callback that returns 0 when asked to encrypt a ticket; OpenSSL ≥ 3.0 then abandons that
 * ticket in TLS 1.3 instead of sending it (statem_srvr.c, construct_stateless_ticket: "a 0
 * length ticket is not allowed so we abort construction of the ticket"). Node reaches that
 * callback through the native context's `enableTicketKeyCallback()` + `onticketkeycallback`
 * (kept in Node for its own resumption test; present in Node 18–22). A callback that returns 0
 * on decrypt also makes any ticket a client offers unusable. If a future Node drops that hook,
 * `serverTicketsSuppressed()` turns false and the target logs it once (the kernel host would
 * then fail as before; Node hosts do not care).
 */
export function tlsServerContext(): tls.SecureContext {
  if (serverContext !== undefined) return serverContext;
  const sc = tls.createSecureContext({ minVersion: 'TLSv1.3', maxVersion: 'TLSv1.3', ciphers: NVME_TLS_CIPHER });
  const native = (sc as unknown as { context?: NativeSecureContext }).context;
  if (native !== undefined && typeof native.enableTicketKeyCallback === 'function') {
    // The callback must still hand Node 16-byte buffers it copies before it returns our 0.
    const zero = Buffer.alloc(16);
    native.onticketkeycallback = () => [0, zero, zero, zero, zero];
    native.enableTicketKeyCallback();
    ticketsSuppressed = true;
  }
  serverContext = sc;
  return sc;
}

/** True once `tlsServerContext()` managed to switch session tickets off (see there). */
export function serverTicketsSuppressed(): boolean {
  tlsServerContext();
  return ticketsSuppressed;
}

/** The PSK identity a server-side TLS socket's client was accepted under. */
const acceptedIdentity = new WeakMap<tls.TLSSocket, string>();

/**
 * Server options for a PSK-only TLS 1.3 listener. `lookup(identity)` returns the TLS PSK for a
 * client's identity, or undefined to refuse it (the handshake then fails). The identity a socket
 * was accepted under is kept for `tlsPeerIdentity()` (the target checks it against Connect).
 */
export function tlsServerOptions(lookup: (identity: string) => Buffer | undefined): tls.TLSSocketOptions {
  return {
    isServer: true,
    secureContext: tlsServerContext(),
    pskCallback: (socket: tls.TLSSocket, identity: string) => {
      const psk = lookup(identity);
      if (psk === undefined) return null;
      acceptedIdentity.set(socket, identity);
      return psk;
    },
  } as tls.TLSSocketOptions;
}

/**
 * The PSK identity of a server-side TLS socket made with `tlsServerOptions` (undefined for a
 * plain socket or before the handshake). Never the key.
 */
export function tlsPeerIdentity(sock: unknown): string | undefined {
  return sock instanceof tls.TLSSocket ? acceptedIdentity.get(sock) : undefined;
}
