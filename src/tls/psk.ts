/**
 * NVMe/TCP TLS pre-shared keys (NVMe/TCP transport spec §3.6.1.3, TP 8011/8018): the PSK
 * interchange format (`NVMeTLSkey-1:01:<base64(key ‖ CRC-32)>:`), the retained PSK, the PSK
 * identity (`NVMe0R01 <hostnqn> <subnqn>` / `NVMe1R01 <hostnqn> <subnqn> <PSK digest>`) and the
 * TLS PSK derived from them — computed exactly as libnvme and the Linux host do, so keys made by
 * `nvme gen-tls-key` work here and ours work there.
 *
 * Pure functions over `node:crypto` and `node:zlib`; nothing here logs or prints a key.
 */
import { createHmac, hkdfSync } from 'node:crypto';
import * as zlib from 'node:zlib';
import { ErrorCode, NvmfNbdError } from '../errors';

/** Hash of a configured key's retained-PSK transform (the `hh` of `NVMeTLSkey-1:hh:`). */
export type PskHmac = 0 | 1 | 2;
/** PSK identity format version: 0 = NVMe/TCP 1.0c (no digest), 1 = TP 8018 (with PSK digest). */
export type IdentityVersion = 0 | 1;

/**
 * How HKDF-Expand-Label's info is laid out. `compat`: what libnvme ≤ 1.15 (nvme-cli ≤ 2.15, e.g.
 * Debian 13's 2.13) and so the keys in today's Linux keyrings use — length little-endian, label and
 * context without their length bytes. `rfc8446`: the HkdfLabel of RFC 8446 (libnvme ≥ 1.16's
 * default). Both ends must agree; the default is `compat`, the deployed one.
 */
export type PskDerivation = 'compat' | 'rfc8446';

/** A decoded PSK in interchange format. Never log `key`. */
export interface InterchangeKey {
  /** Interchange format version (the `1` of `NVMeTLSkey-1`). */
  readonly version: number;
  /** 0 = use the configured PSK as the retained PSK, 1 = SHA-256, 2 = SHA-384. */
  readonly hmac: PskHmac;
  /** The key bytes (32 or 48). */
  readonly key: Buffer;
}

/** What a TLS client offers / a TLS server expects for one host–subsystem pair. */
export interface TlsPsk {
  /** The PSK identity sent in the ClientHello. Not secret. */
  readonly identity: string;
  /** The TLS PSK (32 bytes for TLS_AES_128_GCM_SHA256). Secret. */
  readonly psk: Buffer;
  /** Hash of the cipher suite: 1 = SHA-256, 2 = SHA-384. */
  readonly cipher: 1 | 2;
}

/** The CRC-32 (IEEE, zlib's) the interchange format appends, little-endian. */
function crc32(data: Buffer): number {
  // zlib.crc32 exists from Node 20.15 (package.json engines).
  return (zlib as unknown as { crc32(d: Buffer): number }).crc32(data) >>> 0;
}

function invalid(why: string): NvmfNbdError {
  return new NvmfNbdError(ErrorCode.TLS_KEY_INVALID, `invalid TLS key: ${why}`);
}

/** True when `s` looks like an interchange-format key (used to tell inline keys from file names). */
export function looksLikeInterchangeKey(s: string): boolean {
  return /^NVMeTLSkey-[0-9a-f]:[0-9a-f]{2}:/i.test(s.trim());
}

/**
 * Decode `NVMeTLSkey-1:hh:<base64>:`. Checks the version, the hash, the length for that hash
 * and the CRC-32; the error message never contains the key.
 */
export function parseInterchangeKey(text: string): InterchangeKey {
  const s = text.trim();
  const m = /^NVMeTLSkey-([0-9a-f]):([0-9a-f]{2}):([A-Za-z0-9+/=]+):$/.exec(s);
  if (m === null) throw invalid('not in the PSK interchange format NVMeTLSkey-1:<hh>:<base64>:');
  const version = parseInt(m[1]!, 16);
  if (version !== 1) throw invalid(`interchange format version ${version} (only 1 is defined)`);
  const hmac = parseInt(m[2]!, 16);
  if (hmac > 2) throw invalid(`hash identifier ${m[2]} (00, 01 or 02)`);
  const raw = Buffer.from(m[3]!, 'base64');
  if (raw.toString('base64') !== m[3]) throw invalid('bad base64');
  const keyLen = raw.length - 4;
  const okLen = hmac === 1 ? keyLen === 32 : hmac === 2 ? keyLen === 48 : keyLen === 32 || keyLen === 48;
  if (!okLen) throw invalid(`${keyLen}-byte key for hash ${m[2]} (SHA-256 keys are 32 bytes, SHA-384 keys 48)`);
  const key = Buffer.from(raw.subarray(0, keyLen));
  const want = raw.readUInt32LE(keyLen);
  const got = crc32(key);
  raw.fill(0);
  if (want !== got) {
    key.fill(0);
    throw invalid('CRC-32 mismatch (the key was mistyped or truncated)');
  }
  return { version, hmac: hmac as PskHmac, key };
}

/** Encode a key in the interchange format, `NVMeTLSkey-<version>:<hh>:<base64(key ‖ CRC-32 LE)>:`. */
export function formatInterchangeKey(key: Buffer, hmac: PskHmac, version = 1): string {
  const okLen = hmac === 1 ? key.length === 32 : hmac === 2 ? key.length === 48 : key.length === 32 || key.length === 48;
  if (!okLen) throw invalid(`${key.length}-byte key for hash ${hmac}`);
  const raw = Buffer.alloc(key.length + 4);
  key.copy(raw);
  raw.writeUInt32LE(crc32(key), key.length);
  const out = `NVMeTLSkey-${version.toString(16)}:${hmac.toString(16).padStart(2, '0')}:${raw.toString('base64')}:`;
  raw.fill(0);
  return out;
}

function hashName(h: 1 | 2): 'sha256' | 'sha384' {
  return h === 1 ? 'sha256' : 'sha384';
}

/** The cipher-suite hash of a key: its transform hash, or (hash 00) the one its length implies. */
export function cipherOf(k: InterchangeKey): 1 | 2 {
  if (k.hmac !== 0) return k.hmac;
  return k.key.length === 48 ? 2 : 1;
}

/** TLS 1.3 HKDF-Expand-Label's HkdfLabel: u16 length ‖ u8 len ‖ "tls13 " + label ‖ u8 len ‖ context. */
function hkdfLabel(length: number, label: string, context: Buffer): Buffer {
  const l = Buffer.from(`tls13 ${label}`, 'latin1');
  const out = Buffer.alloc(2 + 1 + l.length + 1 + context.length);
  out.writeUInt16BE(length, 0);
  out[2] = l.length;
  l.copy(out, 3);
  out[3 + l.length] = context.length;
  context.copy(out, 4 + l.length);
  return out;
}

/** libnvme ≤ 1.15's info: u16 little-endian length ‖ "tls13 " ‖ label ‖ context (no length bytes). */
function compatLabel(length: number, label: string, context: Buffer): Buffer {
  const len = Buffer.alloc(2);
  len.writeUInt16LE(length, 0);
  return Buffer.concat([len, Buffer.from(`tls13 ${label}`, 'latin1'), context]);
}

function label(d: PskDerivation, length: number, l: string, context: Buffer): Buffer {
  return d === 'compat' ? compatLabel(length, l, context) : hkdfLabel(length, l, context);
}

/** HKDF-Extract(0, ikm) then HKDF-Expand(info, length) (RFC 5869: an empty salt is HashLen zeros). */
function hkdf(hash: 1 | 2, ikm: Buffer, info: Buffer, length: number): Buffer {
  return Buffer.from(hkdfSync(hashName(hash), ikm, Buffer.alloc(0), info, length));
}

/**
 * Retained PSK = HKDF-Expand-Label(HKDF-Extract(0, configured), "HostNQN", hostnqn, L) with the
 * key's own hash; hash 00 means the configured PSK is the retained PSK.
 */
export function retainedPsk(k: InterchangeKey, hostnqn: string, d: PskDerivation = 'compat'): Buffer {
  if (k.hmac === 0) return Buffer.from(k.key);
  const ctx = Buffer.from(hostnqn, 'utf8');
  if (ctx.length > 255) throw invalid('host NQN longer than 255 bytes');
  return hkdf(k.hmac, k.key, label(d, k.key.length, 'HostNQN', ctx), k.key.length);
}

/** PSK digest of identity version 1: base64(HMAC(retained, "<hostnqn> <subnqn> NVMe-over-Fabrics")). */
export function pskDigest(retained: Buffer, cipher: 1 | 2, hostnqn: string, subnqn: string): string {
  return createHmac(hashName(cipher), retained).update(`${hostnqn} ${subnqn} NVMe-over-Fabrics`, 'utf8').digest('base64');
}

/**
 * Derive what the host offers for `hostnqn` → `subnqn` from a configured key: the identity of the
 * given version and the TLS PSK = HKDF-Expand-Label(HKDF-Extract(0, retained), "nvme-tls-psk",
 * context, L), the context being the identity (version 0) or "<hh> <digest>" (version 1).
 */
export function deriveTlsPsk(k: InterchangeKey, hostnqn: string, subnqn: string, version: IdentityVersion, d: PskDerivation = 'compat'): TlsPsk {
  const cipher = cipherOf(k);
  const retained = retainedPsk(k, hostnqn, d);
  const hh = String(cipher).padStart(2, '0');
  let identity: string;
  let context: string;
  if (version === 0) {
    identity = `NVMe0R${hh} ${hostnqn} ${subnqn}`;
    context = identity;
  } else {
    const digest = pskDigest(retained, cipher, hostnqn, subnqn);
    identity = `NVMe1R${hh} ${hostnqn} ${subnqn} ${digest}`;
    context = `${hh} ${digest}`;
  }
  const ctx = Buffer.from(context, 'utf8');
  if (ctx.length > 255) throw invalid('PSK identity longer than 255 bytes (NQNs too long)');
  const psk = hkdf(cipher, retained, label(d, retained.length, 'nvme-tls-psk', ctx), retained.length);
  retained.fill(0);
  return { identity, psk, cipher };
}

/** Parse the version and hash of a PSK identity (`NVMe<v><R|G><hh> …`), or undefined. */
export function parseIdentity(identity: string): { version: number; generated: boolean; cipher: 1 | 2 } | undefined {
  const m = /^NVMe([01])([RG])(0[12]) \S+ \S+/.exec(identity);
  if (m === null) return undefined;
  return { version: Number(m[1]), generated: m[2] === 'G', cipher: Number(m[3]) as 1 | 2 };
}

/**
 * The host NQN and subsystem NQN a PSK identity names (`NVMe0Rhh <hostnqn> <subnqn>` or
 * `NVMe1Rhh <hostnqn> <subnqn> <digest>`, WIRE.md), or undefined when it is not of that form.
 */
export function identityNqns(identity: string): { hostnqn: string; subnqn: string } | undefined {
  const parts = identity.split(' ');
  const m = /^NVMe([01])[RG]0[12]$/.exec(parts[0] ?? '');
  if (m === null || parts.length !== (m[1] === '0' ? 3 : 4) || parts.some((x) => x === '')) return undefined;
  return { hostnqn: parts[1] as string, subnqn: parts[2] as string };
}

/**
 * The identities the Linux host looks up by default for `--tls` without a key (`NVMe0R02 …`,
 * then `NVMe0R01 …`), most preferred first.
 */
export function defaultIdentities(hostnqn: string, subnqn: string): string[] {
  return [`NVMe0R02 ${hostnqn} ${subnqn}`, `NVMe0R01 ${hostnqn} ${subnqn}`];
}

/** node:tls does TLS 1.3 external PSKs only with SHA-256 suites: refuse SHA-384 clearly. */
export function assertSupportedCipher(p: { cipher: 1 | 2 }, what: string): void {
  if (p.cipher !== 1) {
    throw new NvmfNbdError(ErrorCode.TLS_UNSUPPORTED_KEY,
      `${what}: SHA-384 TLS PSKs (TLS_AES_256_GCM_SHA384) are not supported by Node's TLS (external PSKs use SHA-256 only); use a SHA-256 key (NVMeTLSkey-1:01:)`);
  }
}
