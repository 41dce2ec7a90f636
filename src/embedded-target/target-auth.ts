/**
 * The controller side of DH-HMAC-CHAP (NVMe Base 2.0 §8.3.4.2) for one queue of the embedded
 * target. A queue of a host that has a key (`--allow-host NQN --dhchap-key …`) answers Connect
 * with AUTHREQ.ATR and accepts nothing but Authentication Send/Receive until the exchange has
 * succeeded (everything else: Authentication Required, SCT 1 SC 91h, DNR).
 *
 * Steps (`step` is what the controller expects next):
 *   negotiate ─Send AUTH_Negotiate─▶ challenge ─Receive─▶ reply ─Send _Reply─▶ success1
 *   ─Receive─▶ (bidirectional: success2 ─Send _Success2─▶) done
 * A wrong message, T_ID, response, DH value, a replayed S2 or an unusable hash/group moves to
 * `failure1`: the next Authentication Receive returns AUTH_Failure1 with the explanation and the
 * queue is then closed (Linux nvmet ends the association the same way). AUTH_Failure2 from the
 * host closes it at once. AUTH_Negotiate restarts the exchange at any time (re-authentication).
 * A transaction that does not finish within `stepTimeoutMs` closes the queue.
 */
import * as crypto from 'node:crypto';
import {
  AUTH_SECP_DHCHAP, AUTH_SPSP0, AUTH_SPSP1, AuthFailure, AuthMessageError, DhchapGroup, DhchapHash,
  authFailureName, authSqeFields, decodeAuthMessage, dhchapGroupName, dhchapHashLength, dhchapHashName,
  encodeChallenge, encodeFailure, encodeSuccess1, type DhchapGroupId, type DhchapHashId,
} from '../wire/auth';
import { dhExchange, dhchapResponse, transformDhchapKey, type DhchapKey } from '../wire/dhchap';
import { GenericStatus, Sct } from '../wire/status';
import { fail, ok, type Completion } from './context';

/** A host's DH-HMAC-CHAP secrets on the target. */
export interface TargetHostKeys {
  readonly hostnqn: string;
  /** The host secret the host must prove it knows. */
  readonly key: DhchapKey;
  /** The controller secret, for hosts that ask the controller to authenticate itself. */
  readonly ctrlKey?: DhchapKey;
}

/** What the target offers (in order of preference) and how long a transaction may take. */
export interface TargetAuthPolicy {
  readonly hashes: readonly DhchapHashId[];
  readonly dhgroups: readonly DhchapGroupId[];
  readonly stepTimeoutMs: number;
}

/** Defaults: every hash and group, strongest-cheapest first (as Linux hosts offer them). */
export const DEFAULT_TARGET_AUTH_POLICY: TargetAuthPolicy = {
  hashes: [DhchapHash.SHA256, DhchapHash.SHA384, DhchapHash.SHA512],
  dhgroups: [DhchapGroup.FFDHE2048, DhchapGroup.FFDHE3072, DhchapGroup.FFDHE4096, DhchapGroup.FFDHE6144, DhchapGroup.FFDHE8192, DhchapGroup.NULL],
  stepTimeoutMs: 10_000,
};

const Step = {
  NEGOTIATE: 'negotiate', CHALLENGE: 'challenge', REPLY: 'reply', SUCCESS1: 'success1', SUCCESS2: 'success2',
  FAILURE1: 'failure1', DONE: 'done',
} as const;
type StepValue = (typeof Step)[keyof typeof Step];

/** Counters shared by every queue of a target. */
export interface TargetAuthStats {
  authentications: number;
  authFailures: number;
}

/** Sequence numbers S1 of the controller: random start, +1 each, never 0. */
let seqnum = 0;
function nextSeqnum(): number {
  seqnum = seqnum === 0 ? crypto.randomBytes(4).readUInt32LE(0) : (seqnum + 1) >>> 0;
  if (seqnum === 0) seqnum = 1;
  return seqnum;
}

/** At most this many S2 values are remembered per association for replay detection. */
const MAX_SEEN_S2 = 4096;

/** Per-association state shared by its queues (replay detection of the host's S2). */
export class AssociationAuth {
  private readonly seen = new Set<number>();
  /** False when S2 was already used in this association (a replayed Reply). */
  claimS2(s2: number): boolean {
    if (this.seen.has(s2)) return false;
    if (this.seen.size >= MAX_SEEN_S2) this.seen.clear();
    this.seen.add(s2);
    return true;
  }
}

/** Callbacks into the queue. */
export interface QueueAuthHooks {
  log(level: 'debug' | 'info' | 'warn' | 'error', message: string): void;
  /** End the queue (after the current response has been written). */
  close(reason: string): void;
}

/** DH-HMAC-CHAP state of one queue. */
export class QueueAuth {
  /** True once the host proved knowledge of its key on this queue. */
  authenticated = false;
  private step: StepValue = Step.NEGOTIATE;
  private tid = -1;
  private hashId = 0;
  private dhgroup = 0;
  private s1 = 0;
  private c1: Buffer | undefined;
  private dh: ReturnType<typeof dhExchange> | undefined;
  private sessionKey: Buffer | undefined;
  private s2 = 0;
  private c2: Buffer | undefined;
  private explanation: number = AuthFailure.FAILED;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly qid: number,
    private readonly keys: TargetHostKeys,
    private readonly subnqn: string,
    private readonly policy: TargetAuthPolicy,
    private readonly association: AssociationAuth,
    private readonly stats: TargetAuthStats,
    private readonly hooks: QueueAuthHooks,
  ) {}

  /** Stop the transaction timer (queue closing). */
  dispose(): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
  }

  /** The controller asks for re-authentication: commands fail with Authentication Required until it is done. */
  requireReauthentication(): void {
    this.authenticated = false;
    this.reset(Step.NEGOTIATE);
  }

  private reset(step: StepValue): void {
    this.step = step;
    this.c1 = undefined;
    this.c2 = undefined;
    this.dh = undefined;
    this.sessionKey = undefined;
  }

  private arm(): void {
    if (this.timer === undefined) {
      this.timer = setTimeout(() => {
        this.hooks.log('warn', `qid ${this.qid}: DH-HMAC-CHAP transaction ${this.tid} not completed within ${this.policy.stepTimeoutMs} ms, closing`);
        this.stats.authFailures++;
        this.hooks.close('authentication timeout');
      }, this.policy.stepTimeoutMs);
      this.timer.unref();
    } else {
      this.timer.refresh();
    }
  }

  private fail(explanation: number, why: string): void {
    this.hooks.log('info', `qid ${this.qid} host '${this.keys.hostnqn}': authentication failed: ${why} (${authFailureName(explanation)})`);
    this.explanation = explanation;
    this.authenticated = false;
    this.reset(Step.FAILURE1);
    this.arm();
  }

  /** SECP/SPSP checks common to both commands (Linux: Invalid Field, DNR). */
  private static checkFields(cdw10: number, cdw11: number): Completion | number {
    const f = authSqeFields(cdw10, cdw11);
    if (f.secp !== AUTH_SECP_DHCHAP || f.spsp0 !== AUTH_SPSP0 || f.spsp1 !== AUTH_SPSP1 || f.length === 0) {
      return fail(Sct.GENERIC, GenericStatus.INVALID_FIELD);
    }
    return f.length;
  }

  /** Authentication Send with `data` (TL bytes). */
  send(cdw10: number, cdw11: number, data: Buffer | undefined): Completion {
    const tl = QueueAuth.checkFields(cdw10, cdw11);
    if (typeof tl !== 'number') return tl;
    if (data === undefined || data.length !== tl) return fail(Sct.GENERIC, GenericStatus.INVALID_FIELD);
    let m;
    try {
      m = decodeAuthMessage(data);
    } catch (err) {
      this.fail(err instanceof AuthMessageError ? err.explanation : AuthFailure.INCORRECT_PAYLOAD, (err as Error).message);
      return ok();
    }
    switch (m.kind) {
      case 'negotiate': {
        // Any time: (re)start a transaction.
        this.reset(Step.NEGOTIATE);
        this.tid = m.tid;
        this.arm();
        if (m.scc !== 0) return this.failOk(AuthFailure.CONCAT_MISMATCH, 'secure channel concatenation is not supported');
        const hash = this.policy.hashes.find((h) => m.hashes.includes(h));
        if (hash === undefined) return this.failOk(AuthFailure.HASH_UNUSABLE, `no common hash (host offers ${m.hashes.join(',') || 'none'})`);
        const group = this.policy.dhgroups.find((g) => m.dhgroups.includes(g));
        if (group === undefined) return this.failOk(AuthFailure.DHGROUP_UNUSABLE, `no common DH group (host offers ${m.dhgroups.join(',') || 'none'})`);
        this.hashId = hash;
        this.dhgroup = group;
        this.step = Step.CHALLENGE;
        return ok();
      }
      case 'reply':
        if (this.step !== Step.REPLY) return this.failOk(AuthFailure.INCORRECT_MESSAGE, `DH-HMAC-CHAP_Reply while expecting ${this.step}`);
        if (m.tid !== this.tid) return this.failOk(AuthFailure.INCORRECT_PAYLOAD, `Reply with transaction ${m.tid}, expected ${this.tid}`);
        return this.onReply(m);
      case 'success2':
        if (this.step !== Step.SUCCESS2) return this.failOk(AuthFailure.INCORRECT_MESSAGE, `DH-HMAC-CHAP_Success2 while expecting ${this.step}`);
        if (m.tid !== this.tid) return this.failOk(AuthFailure.INCORRECT_PAYLOAD, `Success2 with transaction ${m.tid}, expected ${this.tid}`);
        this.succeeded();
        return ok();
      case 'failure2':
        this.stats.authFailures++;
        this.hooks.log('info', `qid ${this.qid} host '${this.keys.hostnqn}': host sent AUTH_Failure2: ${authFailureName(m.explanation)}`);
        this.authenticated = false;
        this.reset(Step.DONE);
        this.dispose();
        this.hooks.close('host sent AUTH_Failure2');
        return ok();
      case 'challenge':
      case 'success1':
      case 'failure1':
        return this.failOk(AuthFailure.INCORRECT_MESSAGE, `the host sent a controller message (${m.kind})`);
      default: {
        const never: never = m;
        return this.failOk(AuthFailure.INCORRECT_MESSAGE, `unexpected ${String(never)}`);
      }
    }
  }

  private failOk(explanation: number, why: string): Completion {
    this.fail(explanation, why);
    return ok();
  }

  private onReply(m: Extract<ReturnType<typeof decodeAuthMessage>, { kind: 'reply' }>): Completion {
    const hl = dhchapHashLength(this.hashId);
    if (m.response.length !== hl) return this.failOk(AuthFailure.HASH_UNUSABLE, `Reply HL ${m.response.length}, expected ${hl}`);
    let sessionKey: Buffer | undefined;
    if (this.dhgroup === DhchapGroup.NULL) {
      if (m.dhValue.length !== 0) return this.failOk(AuthFailure.INCORRECT_PAYLOAD, 'a DH value with the null group');
    } else {
      try {
        sessionKey = (this.dh as NonNullable<typeof this.dh>).sessionKey(m.dhValue);
      } catch (err) {
        return this.failOk(AuthFailure.DHGROUP_UNUSABLE, (err as Error).message);
      }
    }
    const expect = dhchapResponse('host', {
      hashId: this.hashId, key: transformDhchapKey(this.keys.key, this.keys.hostnqn), challenge: this.c1 as Buffer, sessionKey,
      seqnum: this.s1, tid: this.tid, hostnqn: this.keys.hostnqn, subnqn: this.subnqn,
    });
    if (!crypto.timingSafeEqual(expect, m.response)) return this.failOk(AuthFailure.FAILED, 'wrong host response (wrong host secret)');
    this.sessionKey = sessionKey;
    if (m.challenge !== undefined && m.seqnum !== 0) {
      if (this.keys.ctrlKey === undefined) return this.failOk(AuthFailure.FAILED, 'the host asks for controller authentication but no controller key is configured');
      if (!this.association.claimS2(m.seqnum)) return this.failOk(AuthFailure.INCORRECT_PAYLOAD, `sequence number S2 ${m.seqnum} was already used (replayed Reply)`);
      this.s2 = m.seqnum;
      this.c2 = m.challenge;
    } else {
      this.c2 = undefined;
    }
    this.step = Step.SUCCESS1;
    return ok();
  }

  private succeeded(): void {
    this.authenticated = true;
    this.stats.authentications++;
    this.hooks.log('debug', `qid ${this.qid} host '${this.keys.hostnqn}': authenticated (${dhchapHashName(this.hashId) ?? ''} ${dhchapGroupName(this.dhgroup) ?? ''}${this.c2 !== undefined ? ', controller authenticated too' : ''})`);
    this.reset(Step.DONE);
    this.dispose();
  }

  /** Authentication Receive with allocation length AL: the next controller message. */
  receive(cdw10: number, cdw11: number): Completion {
    const al = QueueAuth.checkFields(cdw10, cdw11);
    if (typeof al !== 'number') return al;
    switch (this.step) {
      case Step.CHALLENGE: {
        const hl = dhchapHashLength(this.hashId);
        this.c1 = crypto.randomBytes(hl);
        this.s1 = nextSeqnum();
        let dhValue: Buffer = Buffer.alloc(0);
        if (this.dhgroup !== DhchapGroup.NULL) {
          this.dh = dhExchange(this.dhgroup);
          dhValue = this.dh.publicValue;
        }
        const msg = encodeChallenge({ tid: this.tid, hashId: this.hashId, dhgroup: this.dhgroup, seqnum: this.s1, challenge: this.c1, dhValue });
        if (msg.length > al) {
          this.fail(AuthFailure.INCORRECT_PAYLOAD, `allocation length ${al} too small for the ${msg.length}-byte challenge`);
          return this.failure1(al);
        }
        this.step = Step.REPLY;
        this.arm();
        return ok(0, msg);
      }
      case Step.SUCCESS1: {
        const hl = dhchapHashLength(this.hashId);
        let r2: Buffer | undefined;
        if (this.c2 !== undefined && this.keys.ctrlKey !== undefined) {
          r2 = dhchapResponse('controller', {
            hashId: this.hashId, key: transformDhchapKey(this.keys.ctrlKey, this.subnqn), challenge: this.c2, sessionKey: this.sessionKey,
            seqnum: this.s2, tid: this.tid, hostnqn: this.keys.hostnqn, subnqn: this.subnqn,
          });
        }
        const msg = encodeSuccess1({ tid: this.tid, hashLength: hl, response: r2 });
        if (r2 !== undefined) {
          this.step = Step.SUCCESS2;
          this.arm();
        } else {
          this.succeeded();
        }
        return ok(0, msg);
      }
      case Step.FAILURE1:
        return this.failure1(al);
      case Step.NEGOTIATE:
      case Step.REPLY:
      case Step.SUCCESS2:
      case Step.DONE:
        this.fail(AuthFailure.INCORRECT_MESSAGE, `Authentication Receive while expecting ${this.step}`);
        return this.failure1(al);
      default: {
        const never: never = this.step;
        return fail(Sct.GENERIC, GenericStatus.INTERNAL_ERROR, true, Number(never));
      }
    }
  }

  /** AUTH_Failure1, then the queue closes (its response is written first). */
  private failure1(al: number): Completion {
    this.stats.authFailures++;
    const msg = encodeFailure('failure1', Math.max(this.tid, 0) & 0xffff, this.explanation);
    this.authenticated = false;
    this.reset(Step.DONE);
    this.dispose();
    // After this tick, so the Failure1 goes out before the connection closes.
    setImmediate(() => this.hooks.close(`authentication failed: ${authFailureName(this.explanation)}`));
    return ok(0, al >= msg.length ? msg : msg.subarray(0, al));
  }
}
