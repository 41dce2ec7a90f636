/**
 * DH-HMAC-CHAP cryptography (NVMe Base 2.0 §8.3.4.2 / §8.13.5): the secret representation
 * `DHHC-1:<hh>:<base64(key || crc32)>:`, the secret transformation with an NQN, the augmented
 * challenge, the host response R1 and the controller response R2, and the ffdhe key exchange.
 * Pure functions over Buffers using `node:crypto` (no sockets, no timers).
 *
 * Definitions (H = the negotiated hash, HMAC(K, m)):
 *   transformed key  Kh' = HMAC_Hk(Kh, NQN || "NVMe-over-Fabrics")  (Hk = the key's own hash
 *                    indicator hh; hh 0 = no transformation, the key is used as is). The host
 *                    key is transformed with the host NQN, the controller key with the subsystem NQN.
 *   session key      Ks = g^(xy) mod p, as many bytes as p (big-endian, zero-padded)
 *   augmented chal.  Ca = HMAC(H(Ks), C)  (only with a DH group; the null group uses C as is)
 *   R1 = HMAC(Kh', C1a || LE32(S1) || LE16(T_ID) || 00h || "HostHost"   || NQNh || 00h || NQNc)
 *   R2 = HMAC(Kc', C2a || LE32(S2) || LE16(T_ID) || 00h || "Controller" || NQNc || 00h || NQNh)
 */
import * as crypto from 'node:crypto';
import { ErrorCode, NvmfNbdError } from '../errors';
import { DhchapGroup, dhchapGroupName, dhchapHashLength, dhchapHashName } from './auth';
import { FFDHE_GENERATOR, FFDHE_PRIMES_HEX } from './ffdhe';

/** A parsed DH-HMAC-CHAP secret. */
export interface DhchapKey {
  /** Hash indicator hh of the representation: 0 = none, 1..3 = SHA-256/384/512. */
  readonly hmac: 0 | 1 | 2 | 3;
  /** The secret (32, 48 or 64 bytes). */
  readonly key: Buffer;
}

function keyError(msg: string): NvmfNbdError {
  return new NvmfNbdError(ErrorCode.DHCHAP_KEY_INVALID, msg);
}

const CRC_TABLE = ((): Uint32Array => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

/** CRC-32 (IEEE 802.3, reflected, init and final XOR ~0): zlib's crc32, as nvme-cli and Linux use. */
export function crc32(b: Buffer): number {
  let c = 0xffffffff;
  for (const x of b) c = (CRC_TABLE[(c ^ x) & 0xff] as number) ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

const VALID_KEY_LENGTHS = new Set([32, 48, 64]);

/**
 * Parse `DHHC-1:hh:<base64>:` (the trailing ':' may be missing, as Linux accepts). Checks the
 * hash indicator (00..03), the decoded length (32/48/64 key bytes + 4 CRC bytes), the CRC-32
 * (little-endian) and, as nvme-cli does, that a transformed key's length matches its hash.
 * The message never contains the secret.
 * @throws CFG_ERR_DHCHAP_KEY_INVALID
 */
export function parseDhchapKey(text: string): DhchapKey {
  const m = /^DHHC-1:([0-9a-fA-F]{2}):([A-Za-z0-9+/]+={0,2}):?$/.exec(text.trim());
  if (m === null) throw keyError('DH-HMAC-CHAP secret is not of the form DHHC-1:hh:<base64>:');
  const hmac = parseInt(m[1] as string, 16);
  if (hmac > 3) throw keyError(`DH-HMAC-CHAP secret: invalid hash indicator ${m[1] as string} (00..03)`);
  const raw = Buffer.from(m[2] as string, 'base64');
  const keyLen = raw.length - 4;
  if (!VALID_KEY_LENGTHS.has(keyLen)) throw keyError(`DH-HMAC-CHAP secret: decoded length ${raw.length} (expected 36, 52 or 68 bytes)`);
  const key = raw.subarray(0, keyLen);
  if (raw.readUInt32LE(keyLen) !== crc32(key)) throw keyError('DH-HMAC-CHAP secret: CRC mismatch');
  if (hmac !== 0 && dhchapHashLength(hmac) !== keyLen) throw keyError(`DH-HMAC-CHAP secret: key length ${keyLen} does not match hash ${dhchapHashName(hmac) as string}`);
  return { hmac: hmac as DhchapKey['hmac'], key: Buffer.from(key) };
}

/** The representation of a key: `DHHC-1:hh:<base64(key || LE32 crc32(key))>:`. */
export function formatDhchapKey(k: DhchapKey): string {
  const crc = Buffer.alloc(4);
  crc.writeUInt32LE(crc32(k.key));
  return `DHHC-1:${k.hmac.toString(16).padStart(2, '0')}:${Buffer.concat([k.key, crc]).toString('base64')}:`;
}

/** Options of {@link generateDhchapKey}, nvme-cli's gen-dhchap-key. */
export interface GenerateKeyOptions {
  /** Secret to use instead of random bytes (its length is the key length). */
  readonly secret?: Buffer;
  /** 32, 48 or 64 (default 32, or the secret's length). */
  readonly keyLength?: number;
  /** 0 = none (default), 1..3 = SHA-256/384/512; the key length must match. */
  readonly hmac?: number;
  /** NQN the key is transformed with when hmac > 0. */
  readonly nqn?: string;
}

/**
 * Generate a key as nvme-cli's `gen-dhchap-key` does: random (or `secret`) bytes, and with
 * `hmac` > 0 replaced by HMAC_hmac(secret, NQN || "NVMe-over-Fabrics"); the hash indicator in
 * the representation is `hmac`.
 * @throws CFG_ERR_DHCHAP_KEY_INVALID for a bad length/hmac combination or a missing NQN
 */
export function generateDhchapKey(o: GenerateKeyOptions = {}): DhchapKey {
  const hmac = o.hmac ?? 0;
  if (!Number.isInteger(hmac) || hmac < 0 || hmac > 3) throw keyError(`invalid HMAC identifier ${hmac}`);
  const len = o.keyLength ?? o.secret?.length ?? (hmac === 0 ? 32 : dhchapHashLength(hmac));
  if (!VALID_KEY_LENGTHS.has(len)) throw keyError(`invalid key length ${len} (32, 48 or 64)`);
  if (o.secret !== undefined && o.secret.length !== len) throw keyError(`secret of ${o.secret.length} bytes for a key length of ${len}`);
  if (hmac !== 0 && dhchapHashLength(hmac) !== len) throw keyError(`invalid key length ${len} for ${dhchapHashName(hmac) as string}`);
  const secret = o.secret ?? crypto.randomBytes(len);
  if (hmac === 0) return { hmac: 0, key: Buffer.from(secret) };
  if (o.nqn === undefined || o.nqn === '') throw keyError('an NQN is needed to transform the key');
  return { hmac: hmac as DhchapKey['hmac'], key: nqnTransform(hmac, secret, o.nqn) };
}

function nqnTransform(hash: number, key: Buffer, nqn: string): Buffer {
  return crypto.createHmac(dhchapHashName(hash) as string, key).update(nqn, 'utf8').update('NVMe-over-Fabrics', 'latin1').digest();
}

/** The secret transformation: HMAC_hh(key, NQN || "NVMe-over-Fabrics"), or the key itself for hh 0. */
export function transformDhchapKey(k: DhchapKey, nqn: string): Buffer {
  return k.hmac === 0 ? Buffer.from(k.key) : nqnTransform(k.hmac, k.key, nqn);
}

function hashNameOrThrow(hashId: number): string {
  const name = dhchapHashName(hashId);
  if (name === undefined) throw new NvmfNbdError(ErrorCode.INVALID_ARGUMENT, `unknown DH-HMAC-CHAP hash id ${hashId}`);
  return name;
}

/** Ca = HMAC(H(Ks), C): the challenge augmented with the DH session key. */
export function augmentedChallenge(hashId: number, sessionKey: Buffer, challenge: Buffer): Buffer {
  const h = hashNameOrThrow(hashId);
  const hashedKey = crypto.createHash(h).update(sessionKey).digest();
  return crypto.createHmac(h, hashedKey).update(challenge).digest();
}

/** Inputs of {@link dhchapResponse}. */
export interface ResponseInput {
  readonly hashId: number;
  /** The transformed key (Kh' for R1, Kc' for R2). */
  readonly key: Buffer;
  /** C1 (R1) or C2 (R2), not yet augmented. */
  readonly challenge: Buffer;
  /** The session key when a DH group is in use; the challenge is then augmented. */
  readonly sessionKey?: Buffer;
  /** S1 (R1) or S2 (R2). */
  readonly seqnum: number;
  readonly tid: number;
  readonly hostnqn: string;
  readonly subnqn: string;
}

/**
 * R1 (`role` 'host') or R2 (`role` 'controller'); see the module comment for the byte order.
 */
export function dhchapResponse(role: 'host' | 'controller', r: ResponseInput): Buffer {
  const h = hashNameOrThrow(r.hashId);
  const c = r.sessionKey !== undefined ? augmentedChallenge(r.hashId, r.sessionKey, r.challenge) : r.challenge;
  const seq = Buffer.alloc(7);
  seq.writeUInt32LE(r.seqnum >>> 0, 0);
  seq.writeUInt16LE(r.tid, 4);
  // seq[6] = 00h
  const [first, second] = role === 'host' ? [r.hostnqn, r.subnqn] : [r.subnqn, r.hostnqn];
  return crypto.createHmac(h, r.key)
    .update(c).update(seq)
    .update(role === 'host' ? 'HostHost' : 'Controller', 'latin1')
    .update(first, 'utf8').update(Buffer.alloc(1)).update(second, 'utf8')
    .digest();
}

/** Bits of a DH group's prime (0 for null, undefined for an unknown id). */
export function dhGroupBits(group: number): number | undefined {
  switch (group) {
    case DhchapGroup.NULL: return 0;
    case DhchapGroup.FFDHE2048: return 2048;
    case DhchapGroup.FFDHE3072: return 3072;
    case DhchapGroup.FFDHE4096: return 4096;
    case DhchapGroup.FFDHE6144: return 6144;
    case DhchapGroup.FFDHE8192: return 8192;
    default: return undefined;
  }
}

const primeCache = new Map<number, Buffer>();

/** The prime of an ffdhe group as bytes. */
export function ffdhePrime(group: number): Buffer {
  const bits = dhGroupBits(group);
  if (bits === undefined || bits === 0) throw new NvmfNbdError(ErrorCode.INVALID_ARGUMENT, `no prime for DH group ${group}`);
  let p = primeCache.get(bits);
  if (p === undefined) {
    p = Buffer.from(FFDHE_PRIMES_HEX[bits as keyof typeof FFDHE_PRIMES_HEX], 'hex');
    primeCache.set(bits, p);
  }
  return p;
}

function leftPad(b: Buffer, len: number): Buffer {
  if (b.length === len) return b;
  if (b.length > len) throw new NvmfNbdError(ErrorCode.INVALID_ARGUMENT, `DH value of ${b.length} bytes for a ${len}-byte group`);
  const out = Buffer.alloc(len);
  b.copy(out, len - b.length);
  return out;
}

/** One side of an ffdhe exchange. */
export interface DhExchange {
  readonly group: number;
  /** g^x mod p, padded to the prime's length. */
  readonly publicValue: Buffer;
  /**
   * Ks from the peer's public value, padded to the prime's length.
   * @throws NVMF_ERR_AUTH_FAILED when the peer value is not in 2..p-2 or has the wrong length
   */
  sessionKey(peer: Buffer): Buffer;
}

/**
 * A fresh ffdhe key pair (OpenSSL picks a private exponent of twice the group's security
 * strength for these known safe primes, as RFC 7919 §5.2 allows, so even ffdhe8192 is fast).
 */
export function dhExchange(group: number): DhExchange {
  const p = ffdhePrime(group);
  const dh = crypto.createDiffieHellman(p, FFDHE_GENERATOR);
  const pub = leftPad(dh.generateKeys(), p.length);
  return {
    group,
    publicValue: pub,
    sessionKey(peer: Buffer): Buffer {
      if (peer.length !== p.length) {
        throw new NvmfNbdError(ErrorCode.AUTH_FAILED, `DH value of ${peer.length} bytes for ${dhchapGroupName(group) ?? group} (${p.length} expected)`);
      }
      // 1 < y < p-1: 0, 1 and p-1 (and anything ≥ p) would force a known session key.
      const y = BigInt(`0x${peer.toString('hex')}`);
      const pn = BigInt(`0x${p.toString('hex')}`);
      if (y <= 1n || y >= pn - 1n) throw new NvmfNbdError(ErrorCode.AUTH_FAILED, 'DH value out of range (must be 2..p-2)');
      return leftPad(dh.computeSecret(peer), p.length);
    },
  };
}
