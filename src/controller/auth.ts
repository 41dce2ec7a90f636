/**
 * The host side of DH-HMAC-CHAP in-band authentication (NVMe Base 2.0 §8.3.4.2, TP 8006) for one
 * queue, run right after its Fabrics Connect when the controller sets AUTHREQ.ATR (and when the
 * user gave a controller secret, so a target cannot skip mutual authentication by not asking),
 * and again when a command completes with "Authentication Required" (re-authentication).
 *
 *   host                                     controller
 *   AUTH_Negotiate (T_ID, hashes, groups) ─▶            Authentication Send
 *                                         ◀─ _Challenge (hash, group, S1, C1, g^x)   Receive
 *   _Reply (R1, [S2, C2], g^y)            ─▶                                          Send
 *                                         ◀─ _Success1 ([R2]) or AUTH_Failure1        Receive
 *   [_Success2]                           ─▶ (only when C2 was sent)                  Send
 *   AUTH_Failure2 ─▶ whenever the host rejects what it received (best effort)
 *
 * Every failure is `NVMF_ERR_AUTH_FAILED` (the controller's reason code/explanation in
 * `err.auth` when it sent AUTH_Failure1); every step has a deadline (the queue's command
 * timeout = `stepTimeoutMs`), so a silent controller ends the queue instead of hanging it.
 * Secrets never appear in messages.
 */
import * as crypto from 'node:crypto';
import { ErrorCode, NvmfNbdError } from '../errors';
import {
  AUTH_REASON_FAILED, AuthFailure, AuthMessageError, DhchapGroup, DhchapHash, authFailureName, decodeAuthMessage,
  dhchapGroupName, dhchapHashLength, dhchapHashName, encodeFailure, encodeNegotiate, encodeReply, encodeSuccess2,
  type AuthMessage, type DhchapGroupId, type DhchapHashId,
} from '../wire/auth';
import { dhExchange, dhchapResponse, transformDhchapKey, type DhchapKey } from '../wire/dhchap';

/** Allocation length of every Authentication Receive (as Linux: enough for ffdhe8192). */
export const AUTH_RECEIVE_LENGTH = 4096;
/** Default deadline of one authentication step. */
export const AUTH_STEP_TIMEOUT_MS = 10_000;

/** DH-HMAC-CHAP settings of a host. */
export interface DhchapHostOptions {
  /** The host secret (`--dhchap-secret`). */
  readonly secret: DhchapKey;
  /** The controller secret (`--dhchap-ctrl-secret`): the controller must prove it knows it. */
  readonly ctrlSecret?: DhchapKey;
  /** Hash functions offered, in order of preference (default SHA-256, SHA-384, SHA-512). */
  readonly hashes?: readonly DhchapHashId[];
  /** DH groups offered (default null and every ffdhe group, as Linux). */
  readonly dhgroups?: readonly DhchapGroupId[];
  /** Deadline of each Authentication Send/Receive (default 10 s). */
  readonly stepTimeoutMs?: number;
  /** Called after each successful authentication of a queue (every queue, every reconnect). */
  readonly onAuthenticated?: (e: AuthOutcome & { readonly qid: number }) => void;
}

/** What a queue must offer to be authenticated: the two Fabrics authentication commands. */
export interface AuthChannel {
  readonly qid: number;
  /** Authentication Send of `data`; rejects on an error status or a lost queue. */
  authSend(data: Buffer, timeoutMs: number): Promise<void>;
  /** Authentication Receive with allocation length `al`; resolves with the data. */
  authReceive(al: number, timeoutMs: number): Promise<Buffer>;
}

/** What one successful authentication agreed on. */
export interface AuthOutcome {
  readonly hashId: number;
  readonly dhgroup: number;
  /** The controller proved knowledge of the controller secret. */
  readonly bidirectional: boolean;
}

const DEFAULT_HASHES: readonly DhchapHashId[] = [DhchapHash.SHA256, DhchapHash.SHA384, DhchapHash.SHA512];
const DEFAULT_GROUPS: readonly DhchapGroupId[] = [
  DhchapGroup.NULL, DhchapGroup.FFDHE2048, DhchapGroup.FFDHE3072, DhchapGroup.FFDHE4096, DhchapGroup.FFDHE6144, DhchapGroup.FFDHE8192,
];

let seqnum = 0;
/** Host sequence numbers S2: random start, +1 each, never 0 (as Linux's nvme_auth_get_seqnum). */
export function nextSeqnum(): number {
  seqnum = seqnum === 0 ? crypto.randomBytes(4).readUInt32LE(0) : (seqnum + 1) >>> 0;
  if (seqnum === 0) seqnum = 1;
  return seqnum;
}

/** A failure the host detected: reported to the controller in AUTH_Failure2. */
class HostReject extends Error {
  constructor(message: string, readonly explanation: number) {
    super(message);
  }
}

function authError(qid: number, message: string, o: { explanation?: number; cause?: unknown } = {}): NvmfNbdError {
  return new NvmfNbdError(ErrorCode.AUTH_FAILED, `queue ${qid}: DH-HMAC-CHAP authentication failed: ${message}`, {
    cause: o.cause,
    ...(o.explanation !== undefined ? { auth: { reason: AUTH_REASON_FAILED, explanation: o.explanation } } : {}),
  });
}

/**
 * Authenticate one queue. `tid` is the transaction identifier (one per authentication of the
 * association). Resolves with what was agreed; rejects with `NVMF_ERR_AUTH_FAILED`.
 */
export async function authenticateQueue(
  ch: AuthChannel,
  p: { readonly hostnqn: string; readonly subnqn: string; readonly tid: number; readonly dhchap: DhchapHostOptions },
): Promise<AuthOutcome> {
  const o = p.dhchap;
  const qid = ch.qid;
  const step = o.stepTimeoutMs ?? AUTH_STEP_TIMEOUT_MS;
  const hashes = o.hashes ?? DEFAULT_HASHES;
  const groups = o.dhgroups ?? DEFAULT_GROUPS;
  const tid = p.tid & 0xffff;

  // A transport failure or an error status of the authentication commands themselves.
  const io = async <T>(what: string, run: () => Promise<T>): Promise<T> => {
    try {
      return await run();
    } catch (err) {
      throw authError(qid, `${what}: ${(err as Error).message}`, { cause: err });
    }
  };
  const receive = async (expect: 'challenge' | 'success1'): Promise<AuthMessage> => {
    const data = await io(`Authentication Receive (${expect})`, () => ch.authReceive(AUTH_RECEIVE_LENGTH, step));
    let m: AuthMessage;
    try {
      m = decodeAuthMessage(data);
    } catch (err) {
      throw new HostReject((err as Error).message, err instanceof AuthMessageError ? err.explanation : AuthFailure.INCORRECT_PAYLOAD);
    }
    if (m.kind === 'failure1') {
      throw authError(qid, `the controller sent AUTH_Failure1: ${authFailureName(m.explanation)} (reason code ${m.reason}, explanation ${m.explanation})`,
        { explanation: m.explanation });
    }
    if (m.kind !== expect) throw new HostReject(`expected DH-HMAC-CHAP_${expect === 'challenge' ? 'Challenge' : 'Success1'}, got ${m.kind}`, AuthFailure.INCORRECT_MESSAGE);
    if (m.tid !== tid) throw new HostReject(`${m.kind} carries transaction ${m.tid}, expected ${tid}`, AuthFailure.INCORRECT_MESSAGE);
    return m;
  };

  await io('Authentication Send (AUTH_Negotiate)', () => ch.authSend(encodeNegotiate({ tid, scc: 0, hashes, dhgroups: groups }), step));
  try {
    const c = await receive('challenge');
    if (c.kind !== 'challenge') throw new HostReject('unreachable', AuthFailure.INCORRECT_MESSAGE);
    const hl = dhchapHashLength(c.hashId);
    if (hl === 0 || !hashes.includes(c.hashId as DhchapHashId)) throw new HostReject(`the controller chose hash ${c.hashId}, which was not offered`, AuthFailure.HASH_UNUSABLE);
    if (c.challenge.length !== hl) throw new HostReject(`challenge of ${c.challenge.length} bytes for ${dhchapHashName(c.hashId) as string}`, AuthFailure.HASH_UNUSABLE);
    if (!groups.includes(c.dhgroup as DhchapGroupId)) throw new HostReject(`the controller chose DH group ${c.dhgroup}, which was not offered`, AuthFailure.DHGROUP_UNUSABLE);
    let sessionKey: Buffer | undefined;
    let hostValue: Buffer = Buffer.alloc(0);
    if (c.dhgroup === DhchapGroup.NULL) {
      if (c.dhValue.length !== 0) throw new HostReject('a DH value with the null group', AuthFailure.INCORRECT_PAYLOAD);
    } else {
      const ex = dhExchange(c.dhgroup);
      try {
        sessionKey = ex.sessionKey(c.dhValue);
      } catch (err) {
        throw new HostReject((err as Error).message, AuthFailure.DHGROUP_UNUSABLE);
      }
      hostValue = ex.publicValue;
    }
    const r1 = dhchapResponse('host', {
      hashId: c.hashId, key: transformDhchapKey(o.secret, p.hostnqn), challenge: c.challenge, sessionKey,
      seqnum: c.seqnum, tid, hostnqn: p.hostnqn, subnqn: p.subnqn,
    });
    const bidi = o.ctrlSecret !== undefined;
    const c2 = bidi ? crypto.randomBytes(hl) : undefined;
    const s2 = bidi ? nextSeqnum() : 0;
    await io('Authentication Send (DH-HMAC-CHAP_Reply)', () => ch.authSend(encodeReply({ tid, response: r1, challenge: c2, seqnum: s2, dhValue: hostValue }), step));
    const s = await receive('success1');
    if (s.kind !== 'success1') throw new HostReject('unreachable', AuthFailure.INCORRECT_MESSAGE);
    if (s.hashLength !== hl) throw new HostReject(`Success1 HL ${s.hashLength}, expected ${hl}`, AuthFailure.HASH_UNUSABLE);
    if (bidi && o.ctrlSecret !== undefined && c2 !== undefined) {
      if (s.response === undefined) throw new HostReject('the controller did not answer the host challenge (RVALID 0)', AuthFailure.FAILED);
      const r2 = dhchapResponse('controller', {
        hashId: c.hashId, key: transformDhchapKey(o.ctrlSecret, p.subnqn), challenge: c2, sessionKey,
        seqnum: s2, tid, hostnqn: p.hostnqn, subnqn: p.subnqn,
      });
      if (!crypto.timingSafeEqual(r2, s.response)) throw new HostReject('controller authentication failed (wrong controller secret)', AuthFailure.FAILED);
      await io('Authentication Send (DH-HMAC-CHAP_Success2)', () => ch.authSend(encodeSuccess2(tid), step));
    }
    return { hashId: c.hashId, dhgroup: c.dhgroup, bidirectional: bidi };
  } catch (err) {
    if (!(err instanceof HostReject)) throw err;
    // Tell the controller (AUTH_Failure2); the queue ends whatever it answers.
    await ch.authSend(encodeFailure('failure2', tid, err.explanation), Math.min(step, 2000)).catch(() => undefined);
    throw authError(qid, `${err.message} (sent AUTH_Failure2: ${authFailureName(err.explanation)})`, { explanation: err.explanation });
  }
}

/** A short description of an outcome for logs: `sha256 ffdhe2048 bidirectional`. */
export function describeOutcome(a: AuthOutcome): string {
  return `${dhchapHashName(a.hashId) ?? a.hashId} ${dhchapGroupName(a.dhgroup) ?? a.dhgroup}${a.bidirectional ? ' bidirectional' : ''}`;
}
