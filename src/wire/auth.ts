/**
 * In-band authentication messages (NVMe Base 2.0 §8.3.4 / TP 8006, DH-HMAC-CHAP) and the
 * Fabrics Authentication Send / Receive commands that carry them. Pure codecs: no sockets, no
 * timers, no crypto (that is `dhchap.ts`). All multi-byte fields are little-endian.
 *
 * Authentication Send (fctype 05h) / Receive (fctype 06h) SQE:
 *   byte 0 opcode 7Fh, 2..3 cid, 4 fctype, 24..39 SGL, 41 SPSP0 (01h), 42 SPSP1 (01h),
 *   43 SECP (E9h = DH-HMAC-CHAP), 44..47 TL (send: transfer length) / AL (receive: allocation length).
 *
 * Messages (the payload of those commands):
 *   AUTH_Negotiate  (type 00h, id 00h): 0 type, 1 id, 2..3 rsvd, 4..5 T_ID, 6 SC_C, 7 NAPD,
 *                   then NAPD 64-byte protocol descriptors: 0 AUTHID (01h), 1 rsvd, 2 HALEN,
 *                   3 DHLEN, 4..33 hash ids (HALEN used), 34..63 DH group ids (DHLEN used).
 *   _Challenge      (type 01h, id 01h): 4..5 T_ID, 6 HL, 8 HASHID, 9 DHGID, 10..11 DHVLEN,
 *                   12..15 SEQNUM (S1), 16.. C1 (HL bytes), then DHVLEN bytes of g^x mod p.
 *   _Reply          (01h/02h): 4..5 T_ID, 6 HL, 8 CVALID, 10..11 DHVLEN, 12..15 SEQNUM (S2),
 *                   16.. response R1 (HL), C2 (HL, zero when CVALID is 0), DHVLEN bytes of g^y mod p.
 *   _Success1       (01h/03h): 4..5 T_ID, 6 HL, 8 RVALID, 16.. response R2 (HL, when RVALID).
 *   _Success2       (01h/04h): 4..5 T_ID; 16 bytes.
 *   _Failure1/2     (type 00h, id F1h / F0h): 4..5 T_ID, 6 reason code, 7 reason code explanation.
 *
 * Received messages are usually padded (a controller returns AL bytes): decoders read what the
 * header says and ignore what follows.
 */
import { ErrorCode, NvmfNbdError } from '../errors';

/** Fabrics command types of the two authentication commands. */
export const FabricsAuthType = { AUTH_SEND: 0x05, AUTH_RECEIVE: 0x06 } as const;
/** Security protocol (SECP) of DH-HMAC-CHAP and its SPSP0/SPSP1 values. */
export const AUTH_SECP_DHCHAP = 0xe9;
export const AUTH_SPSP0 = 0x01;
export const AUTH_SPSP1 = 0x01;

/** AUTH-TYPE of a message. */
export const AuthType = { COMMON: 0x00, DHCHAP: 0x01 } as const;
/** AUTH-ID of a message. */
export const AuthId = {
  NEGOTIATE: 0x00, CHALLENGE: 0x01, REPLY: 0x02, SUCCESS1: 0x03, SUCCESS2: 0x04, FAILURE2: 0xf0, FAILURE1: 0xf1,
} as const;
export type AuthIdValue = (typeof AuthId)[keyof typeof AuthId];

/** The DH-HMAC-CHAP protocol identifier in a Negotiate descriptor (AUTHID). */
export const DHCHAP_AUTH_ID = 0x01;

/** Hash function identifiers (HashID). */
export const DhchapHash = { SHA256: 0x01, SHA384: 0x02, SHA512: 0x03 } as const;
export type DhchapHashId = (typeof DhchapHash)[keyof typeof DhchapHash];
/** Diffie-Hellman group identifiers (DHgroup ID). */
export const DhchapGroup = { NULL: 0x00, FFDHE2048: 0x01, FFDHE3072: 0x02, FFDHE4096: 0x03, FFDHE6144: 0x04, FFDHE8192: 0x05 } as const;
export type DhchapGroupId = (typeof DhchapGroup)[keyof typeof DhchapGroup];

/** Reason code of a Failure message: "authentication failure" is the only one defined. */
export const AUTH_REASON_FAILED = 0x01;
/** Reason code explanations of a Failure message. */
export const AuthFailure = {
  FAILED: 0x01, NOT_USABLE: 0x02, CONCAT_MISMATCH: 0x03, HASH_UNUSABLE: 0x04, DHGROUP_UNUSABLE: 0x05,
  INCORRECT_PAYLOAD: 0x06, INCORRECT_MESSAGE: 0x07,
} as const;

const FAILURE_NAMES: Readonly<Record<number, string>> = {
  0x01: 'authentication failed', 0x02: 'authentication protocol not usable', 0x03: 'secure channel concatenation mismatch',
  0x04: 'hash function not usable', 0x05: 'DH group not usable', 0x06: 'incorrect payload', 0x07: 'incorrect protocol message',
};

/** Human name of a reason code explanation. */
export function authFailureName(explanation: number): string {
  return FAILURE_NAMES[explanation] ?? `reason code explanation 0x${explanation.toString(16)}`;
}

const HASH_NAMES: Readonly<Record<number, string>> = { 1: 'sha256', 2: 'sha384', 3: 'sha512' };
const GROUP_NAMES: Readonly<Record<number, string>> = { 0: 'null', 1: 'ffdhe2048', 2: 'ffdhe3072', 3: 'ffdhe4096', 4: 'ffdhe6144', 5: 'ffdhe8192' };

/** Node digest name of a HashID (sha256/384/512), undefined for an unknown id. */
export function dhchapHashName(id: number): string | undefined {
  return HASH_NAMES[id];
}

/** Digest length of a HashID in bytes, 0 for an unknown id. */
export function dhchapHashLength(id: number): number {
  return id === 1 ? 32 : id === 2 ? 48 : id === 3 ? 64 : 0;
}

/** Name of a DH group id (null, ffdhe2048…), undefined for an unknown id. */
export function dhchapGroupName(id: number): string | undefined {
  return GROUP_NAMES[id];
}

/** Parse `sha256`/`hmac(sha256)`/`1` → HashID; undefined when unknown. */
export function parseDhchapHash(s: string): DhchapHashId | undefined {
  const t = s.trim().toLowerCase().replace(/^hmac\((.*)\)$/, '$1').replace('-', '');
  for (const [id, name] of Object.entries(HASH_NAMES)) if (t === name || t === id) return Number(id) as DhchapHashId;
  return undefined;
}

/** Parse `null`/`ffdhe2048`/`2048`/`1` → DH group id; undefined when unknown. */
export function parseDhchapGroup(s: string): DhchapGroupId | undefined {
  const t = s.trim().toLowerCase();
  for (const [id, name] of Object.entries(GROUP_NAMES)) {
    if (t === name || t === id || (id !== '0' && t === name.slice(5))) return Number(id) as DhchapGroupId;
  }
  return undefined;
}

/** A message that cannot be decoded; `explanation` is what to put in the Failure message. */
export class AuthMessageError extends NvmfNbdError {
  readonly explanation: number;
  constructor(message: string, explanation: number) {
    super(ErrorCode.AUTH_FAILED, message, { auth: { reason: AUTH_REASON_FAILED, explanation } });
    this.explanation = explanation;
  }
}

function bad(msg: string, explanation: number = AuthFailure.INCORRECT_PAYLOAD): AuthMessageError {
  return new AuthMessageError(msg, explanation);
}

// ---------------------------------------------------------------------------------------------
// Commands

function authSqe(fctype: number, len: number): Buffer {
  if (!Number.isInteger(len) || len <= 0 || len > 0xffffffff) throw new NvmfNbdError(ErrorCode.INVALID_ARGUMENT, `authentication transfer length ${len}`);
  const b = Buffer.alloc(64);
  b[0] = 0x7f;
  b[4] = fctype;
  b[41] = AUTH_SPSP0;
  b[42] = AUTH_SPSP1;
  b[43] = AUTH_SECP_DHCHAP;
  b.writeUInt32LE(len, 44);
  return b;
}

/** Authentication Send (fctype 05h) carrying `tl` bytes. */
export function sqeAuthSend(tl: number): Buffer {
  return authSqe(FabricsAuthType.AUTH_SEND, tl);
}

/** Authentication Receive (fctype 06h) with allocation length `al`. */
export function sqeAuthReceive(al: number): Buffer {
  return authSqe(FabricsAuthType.AUTH_RECEIVE, al);
}

/** SECP/SPSP/length fields of an Authentication Send/Receive SQE (from its CDW10/CDW11). */
export interface AuthSqeFields {
  readonly secp: number;
  readonly spsp0: number;
  readonly spsp1: number;
  /** TL (send) or AL (receive). */
  readonly length: number;
}

/** Decode the authentication fields from a parsed SQE's CDW10 (bytes 40..43) and CDW11 (44..47). */
export function authSqeFields(cdw10: number, cdw11: number): AuthSqeFields {
  return { spsp0: (cdw10 >>> 8) & 0xff, spsp1: (cdw10 >>> 16) & 0xff, secp: cdw10 >>> 24, length: cdw11 >>> 0 };
}

// ---------------------------------------------------------------------------------------------
// Messages

/** AUTH_Negotiate with one DH-HMAC-CHAP descriptor. */
export interface AuthNegotiate {
  readonly kind: 'negotiate';
  readonly tid: number;
  /** Secure channel concatenation (0 = none). */
  readonly scc: number;
  readonly hashes: readonly number[];
  readonly dhgroups: readonly number[];
  /** Number of protocol descriptors as sent (only the DH-HMAC-CHAP one is kept). */
  readonly napd: number;
}

export interface AuthChallenge {
  readonly kind: 'challenge';
  readonly tid: number;
  readonly hashId: number;
  readonly dhgroup: number;
  readonly seqnum: number;
  readonly challenge: Buffer;
  /** g^x mod p (empty for the null group). */
  readonly dhValue: Buffer;
}

export interface AuthReply {
  readonly kind: 'reply';
  readonly tid: number;
  readonly response: Buffer;
  /** C2 when the host asks the controller to authenticate itself, else undefined. */
  readonly challenge: Buffer | undefined;
  readonly seqnum: number;
  readonly dhValue: Buffer;
}

export interface AuthSuccess1 {
  readonly kind: 'success1';
  readonly tid: number;
  readonly hashLength: number;
  /** R2 when the controller answers the host's challenge. */
  readonly response: Buffer | undefined;
}

export interface AuthSuccess2 {
  readonly kind: 'success2';
  readonly tid: number;
}

export interface AuthFailureMessage {
  readonly kind: 'failure1' | 'failure2';
  readonly tid: number;
  readonly reason: number;
  readonly explanation: number;
}

export type AuthMessage = AuthNegotiate | AuthChallenge | AuthReply | AuthSuccess1 | AuthSuccess2 | AuthFailureMessage;

const NEGOTIATE_HEADER = 8;
const DESCRIPTOR = 64;
const MAX_IDS = 30;
const DHCHAP_HEADER = 16;
const FAILURE_LEN = 8;

function checkId(name: string, v: number, max: number): void {
  if (!Number.isInteger(v) || v < 0 || v > max) throw new NvmfNbdError(ErrorCode.INVALID_ARGUMENT, `${name} ${v} out of range`);
}

/** Encode AUTH_Negotiate (8 + 64 bytes). */
export function encodeNegotiate(m: Omit<AuthNegotiate, 'kind' | 'napd'>): Buffer {
  if (m.hashes.length > MAX_IDS || m.dhgroups.length > MAX_IDS) throw new NvmfNbdError(ErrorCode.INVALID_ARGUMENT, 'too many hash or DH group ids');
  checkId('T_ID', m.tid, 0xffff);
  const b = Buffer.alloc(NEGOTIATE_HEADER + DESCRIPTOR);
  b[0] = AuthType.COMMON;
  b[1] = AuthId.NEGOTIATE;
  b.writeUInt16LE(m.tid, 4);
  b[6] = m.scc;
  b[7] = 1;
  const d = NEGOTIATE_HEADER;
  b[d] = DHCHAP_AUTH_ID;
  b[d + 2] = m.hashes.length;
  b[d + 3] = m.dhgroups.length;
  m.hashes.forEach((h, i) => { b[d + 4 + i] = h; });
  m.dhgroups.forEach((g, i) => { b[d + 4 + MAX_IDS + i] = g; });
  return b;
}

/** Encode DH-HMAC-CHAP_Challenge (16 + HL + DHVLEN bytes). */
export function encodeChallenge(m: Omit<AuthChallenge, 'kind'>): Buffer {
  checkId('T_ID', m.tid, 0xffff);
  checkId('SEQNUM', m.seqnum, 0xffffffff);
  const hl = m.challenge.length;
  const b = Buffer.alloc(DHCHAP_HEADER + hl + m.dhValue.length);
  b[0] = AuthType.DHCHAP;
  b[1] = AuthId.CHALLENGE;
  b.writeUInt16LE(m.tid, 4);
  b[6] = hl;
  b[8] = m.hashId;
  b[9] = m.dhgroup;
  b.writeUInt16LE(m.dhValue.length, 10);
  b.writeUInt32LE(m.seqnum, 12);
  m.challenge.copy(b, DHCHAP_HEADER);
  m.dhValue.copy(b, DHCHAP_HEADER + hl);
  return b;
}

/** Encode DH-HMAC-CHAP_Reply (16 + 2·HL + DHVLEN bytes; C2 zero when not bidirectional). */
export function encodeReply(m: Omit<AuthReply, 'kind'>): Buffer {
  checkId('T_ID', m.tid, 0xffff);
  checkId('SEQNUM', m.seqnum, 0xffffffff);
  const hl = m.response.length;
  if (m.challenge !== undefined && m.challenge.length !== hl) throw new NvmfNbdError(ErrorCode.INVALID_ARGUMENT, 'C2 must be as long as the response');
  const b = Buffer.alloc(DHCHAP_HEADER + 2 * hl + m.dhValue.length);
  b[0] = AuthType.DHCHAP;
  b[1] = AuthId.REPLY;
  b.writeUInt16LE(m.tid, 4);
  b[6] = hl;
  b[8] = m.challenge !== undefined ? 1 : 0;
  b.writeUInt16LE(m.dhValue.length, 10);
  b.writeUInt32LE(m.seqnum, 12);
  m.response.copy(b, DHCHAP_HEADER);
  m.challenge?.copy(b, DHCHAP_HEADER + hl);
  m.dhValue.copy(b, DHCHAP_HEADER + 2 * hl);
  return b;
}

/** Encode DH-HMAC-CHAP_Success1 (16 + HL bytes; R2 zero when RVALID is 0). */
export function encodeSuccess1(m: Omit<AuthSuccess1, 'kind'>): Buffer {
  checkId('T_ID', m.tid, 0xffff);
  const hl = m.hashLength;
  if (m.response !== undefined && m.response.length !== hl) throw new NvmfNbdError(ErrorCode.INVALID_ARGUMENT, 'R2 length differs from HL');
  const b = Buffer.alloc(DHCHAP_HEADER + hl);
  b[0] = AuthType.DHCHAP;
  b[1] = AuthId.SUCCESS1;
  b.writeUInt16LE(m.tid, 4);
  b[6] = hl;
  b[8] = m.response !== undefined ? 1 : 0;
  m.response?.copy(b, DHCHAP_HEADER);
  return b;
}

/** Encode DH-HMAC-CHAP_Success2 (16 bytes). */
export function encodeSuccess2(tid: number): Buffer {
  checkId('T_ID', tid, 0xffff);
  const b = Buffer.alloc(DHCHAP_HEADER);
  b[0] = AuthType.DHCHAP;
  b[1] = AuthId.SUCCESS2;
  b.writeUInt16LE(tid, 4);
  return b;
}

/** Encode AUTH_Failure1 (controller → host) or AUTH_Failure2 (host → controller), 8 bytes. */
export function encodeFailure(kind: 'failure1' | 'failure2', tid: number, explanation: number, reason: number = AUTH_REASON_FAILED): Buffer {
  checkId('T_ID', tid, 0xffff);
  const b = Buffer.alloc(FAILURE_LEN);
  b[0] = AuthType.COMMON;
  b[1] = kind === 'failure1' ? AuthId.FAILURE1 : AuthId.FAILURE2;
  b.writeUInt16LE(tid, 4);
  b[6] = reason;
  b[7] = explanation;
  return b;
}

/**
 * Decode one authentication message. Throws {@link AuthMessageError} (code `NVMF_ERR_AUTH_FAILED`,
 * with the Failure explanation to report) for an unknown type/id or a length that does not fit.
 */
export function decodeAuthMessage(b: Buffer): AuthMessage {
  if (b.length < 2) throw bad(`authentication message of ${b.length} bytes`, AuthFailure.INCORRECT_MESSAGE);
  const type = b[0] as number;
  const id = b[1] as number;
  if (type === AuthType.COMMON) {
    if (id === AuthId.NEGOTIATE) return decodeNegotiate(b);
    if (id === AuthId.FAILURE1 || id === AuthId.FAILURE2) {
      if (b.length < FAILURE_LEN) throw bad(`AUTH_Failure of ${b.length} bytes (needs ${FAILURE_LEN})`);
      return { kind: id === AuthId.FAILURE1 ? 'failure1' : 'failure2', tid: b.readUInt16LE(4), reason: b[6] as number, explanation: b[7] as number };
    }
    throw bad(`unknown common authentication message id 0x${id.toString(16)}`, AuthFailure.INCORRECT_MESSAGE);
  }
  if (type !== AuthType.DHCHAP) throw bad(`unknown authentication message type 0x${type.toString(16)}`, AuthFailure.INCORRECT_MESSAGE);
  if (b.length < DHCHAP_HEADER) throw bad(`DH-HMAC-CHAP message of ${b.length} bytes (needs ${DHCHAP_HEADER})`);
  const tid = b.readUInt16LE(4);
  const hl = b[6] as number;
  switch (id) {
    case AuthId.CHALLENGE: {
      const dhvlen = b.readUInt16LE(10);
      const end = DHCHAP_HEADER + hl + dhvlen;
      if (hl === 0 || end > b.length) throw bad(`DH-HMAC-CHAP_Challenge: HL ${hl} + DHVLEN ${dhvlen} exceed the ${b.length}-byte message`);
      return {
        kind: 'challenge', tid, hashId: b[8] as number, dhgroup: b[9] as number, seqnum: b.readUInt32LE(12),
        challenge: Buffer.from(b.subarray(DHCHAP_HEADER, DHCHAP_HEADER + hl)),
        dhValue: Buffer.from(b.subarray(DHCHAP_HEADER + hl, end)),
      };
    }
    case AuthId.REPLY: {
      const dhvlen = b.readUInt16LE(10);
      const end = DHCHAP_HEADER + 2 * hl + dhvlen;
      if (hl === 0 || end > b.length) throw bad(`DH-HMAC-CHAP_Reply: 2·HL ${hl} + DHVLEN ${dhvlen} exceed the ${b.length}-byte message`);
      const cvalid = ((b[8] as number) & 1) === 1;
      return {
        kind: 'reply', tid, seqnum: b.readUInt32LE(12),
        response: Buffer.from(b.subarray(DHCHAP_HEADER, DHCHAP_HEADER + hl)),
        challenge: cvalid ? Buffer.from(b.subarray(DHCHAP_HEADER + hl, DHCHAP_HEADER + 2 * hl)) : undefined,
        dhValue: Buffer.from(b.subarray(DHCHAP_HEADER + 2 * hl, end)),
      };
    }
    case AuthId.SUCCESS1: {
      const rvalid = ((b[8] as number) & 1) === 1;
      if (rvalid && DHCHAP_HEADER + hl > b.length) throw bad(`DH-HMAC-CHAP_Success1: HL ${hl} exceeds the ${b.length}-byte message`);
      return { kind: 'success1', tid, hashLength: hl, response: rvalid ? Buffer.from(b.subarray(DHCHAP_HEADER, DHCHAP_HEADER + hl)) : undefined };
    }
    case AuthId.SUCCESS2:
      return { kind: 'success2', tid };
    default:
      throw bad(`unknown DH-HMAC-CHAP message id 0x${id.toString(16)}`, AuthFailure.INCORRECT_MESSAGE);
  }
}

function decodeNegotiate(b: Buffer): AuthNegotiate {
  if (b.length < NEGOTIATE_HEADER + DESCRIPTOR) throw bad(`AUTH_Negotiate of ${b.length} bytes (needs ${NEGOTIATE_HEADER + DESCRIPTOR})`);
  const tid = b.readUInt16LE(4);
  const scc = b[6] as number;
  const napd = b[7] as number;
  if (napd === 0 || NEGOTIATE_HEADER + napd * DESCRIPTOR > b.length) throw bad(`AUTH_Negotiate: NAPD ${napd} does not fit the ${b.length}-byte message`);
  for (let i = 0; i < napd; i++) {
    const d = NEGOTIATE_HEADER + i * DESCRIPTOR;
    if (b[d] !== DHCHAP_AUTH_ID) continue;
    const halen = b[d + 2] as number;
    const dhlen = b[d + 3] as number;
    if (halen > MAX_IDS || dhlen > MAX_IDS) throw bad(`AUTH_Negotiate: HALEN ${halen} / DHLEN ${dhlen} above ${MAX_IDS}`);
    const hashes = [...b.subarray(d + 4, d + 4 + halen)];
    const dhgroups = [...b.subarray(d + 4 + MAX_IDS, d + 4 + MAX_IDS + dhlen)];
    return { kind: 'negotiate', tid, scc, napd, hashes, dhgroups };
  }
  throw bad('AUTH_Negotiate: no DH-HMAC-CHAP protocol descriptor', AuthFailure.NOT_USABLE);
}
