/**
 * Mutation-audit pins (issue 15) for the host side of DH-HMAC-CHAP (src/controller/auth.ts),
 * against a scripted controller that computes the real answers (R1 checked, R2 sent): the
 * exact AUTH_Negotiate (default hash and group lists, T_ID masked to 16 bits), the reply
 * (R1, C2 and S2 only when bidirectional, the host DH value), the step deadline and the
 * allocation length of every command, Success2 only for bidirectional, the outcome, each
 * refusal's explanation and message (with the queue and the AUTH_Failure2 sent, whose deadline
 * is capped at 2 s), transport failures of each step, S2 sequence numbers (random start, +1,
 * never 0) and describeOutcome. Serves
 * `npm run mutate -- src/controller/auth.ts --tests=mut-ctrl-auth,auth-host-target`.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as crypto from 'node:crypto';
import { AUTH_RECEIVE_LENGTH, AUTH_STEP_TIMEOUT_MS, authenticateQueue, describeOutcome, nextSeqnum } from '../../src/controller/auth';
import type { AuthChannel, DhchapHostOptions } from '../../src/controller/auth';
import {
  AuthFailure, DhchapGroup, DhchapHash, decodeAuthMessage, encodeChallenge, encodeFailure, encodeSuccess1, dhchapHashLength,
  type AuthMessage,
} from '../../src/wire/auth';
import { dhExchange, dhchapResponse, generateDhchapKey, transformDhchapKey } from '../../src/wire/dhchap';
import { ErrorCode, NvmfNbdError } from '../../src/errors';
import { rejectsCode } from '../helpers/assert-code';

const HOSTNQN = 'nqn.2014-08.org.nvmexpress:uuid:0f6c3d1e-1a2b-4c3d-9e8f-00000000c001';
const SUBNQN = 'nqn.2014-08.org.nvmf-nbd:mut-ctrl-auth';
const hostKey = generateDhchapKey({ hmac: 1, nqn: HOSTNQN });
const ctrlKey = generateDhchapKey({ keyLength: 48 });

// First in the file: the sequence number starts from randomBytes exactly once per process.
test('nextSeqnum: starts at a random 32-bit value, then +1 each, wrapping past 0xffffffff to 1 (never 0)', (t) => {
  // The module's `crypto.randomBytes` reads the real module's property at each call.
  const rb = t.mock.method(require('node:crypto') as typeof crypto, 'randomBytes', () => Buffer.from([0xfe, 0xff, 0xff, 0xff]));
  assert.equal(nextSeqnum(), 0xfffffffe);
  assert.equal(nextSeqnum(), 0xffffffff);
  assert.equal(nextSeqnum(), 1);
  assert.equal(nextSeqnum(), 2);
  assert.equal(rb.mock.callCount(), 1, 'random only for the start');
  assert.deepEqual(rb.mock.calls[0]?.arguments, [4]);
});

interface Recorded { kind: 'send' | 'receive'; timeoutMs: number; al?: number; msg?: AuthMessage }

interface Script {
  hashId?: number;
  dhgroup?: number;
  /** Challenge T_ID (default the negotiated one). */
  tid?: number;
  /** Replace the Success1 (default: a correct one, with R2 when C2 came). */
  success1?: (tid: number, hl: number, r2: Buffer | undefined) => Buffer;
  /** Fail this send (0-based) or receive with this error. */
  failSend?: number;
  failReceive?: number;
}

/** A controller that plays DH-HMAC-CHAP correctly (checking R1), recording each step. */
function controller(s: Script = {}): AuthChannel & { log: Recorded[]; r1ok: boolean[] } {
  const log: Recorded[] = [];
  const r1ok: boolean[] = [];
  let sends = 0;
  let receives = 0;
  let tid = 0;
  const hashId = s.hashId ?? DhchapHash.SHA256;
  const hl = dhchapHashLength(hashId);
  const c1 = crypto.randomBytes(hl);
  const ex = (s.dhgroup ?? 0) !== 0 ? dhExchange(s.dhgroup as number) : undefined;
  let pending: Buffer | undefined;
  return {
    qid: 0,
    log,
    r1ok,
    authSend(data: Buffer, timeoutMs: number): Promise<void> {
      const msg = decodeAuthMessage(data);
      log.push({ kind: 'send', timeoutMs, msg });
      if (sends++ === s.failSend) return Promise.reject(new NvmfNbdError(ErrorCode.CONNECTION_CLOSED, 'send refused'));
      if (msg.kind === 'negotiate') {
        tid = msg.tid;
        pending = encodeChallenge({ tid: s.tid ?? tid, hashId, dhgroup: s.dhgroup ?? 0, seqnum: 0x01020304, challenge: c1, dhValue: ex?.publicValue ?? Buffer.alloc(0) });
      } else if (msg.kind === 'reply') {
        const sessionKey = ex?.sessionKey(msg.dhValue);
        const want = dhchapResponse('host', { hashId, key: transformDhchapKey(hostKey, HOSTNQN), challenge: c1, sessionKey, seqnum: 0x01020304, tid, hostnqn: HOSTNQN, subnqn: SUBNQN });
        r1ok.push(want.equals(msg.response));
        const r2 = msg.challenge === undefined ? undefined : dhchapResponse('controller', {
          hashId, key: transformDhchapKey(ctrlKey, SUBNQN), challenge: msg.challenge, sessionKey, seqnum: msg.seqnum, tid, hostnqn: HOSTNQN, subnqn: SUBNQN,
        });
        pending = s.success1 !== undefined ? s.success1(tid, hl, r2) : encodeSuccess1({ tid, hashLength: hl, response: r2 });
      }
      return Promise.resolve();
    },
    authReceive(al: number, timeoutMs: number): Promise<Buffer> {
      log.push({ kind: 'receive', timeoutMs, al });
      if (receives++ === s.failReceive || pending === undefined) return Promise.reject(new NvmfNbdError(ErrorCode.TIMEOUT, 'receive timed out'));
      const out = pending;
      pending = undefined;
      return Promise.resolve(out);
    },
  };
}

function run(ch: AuthChannel, dh: Partial<DhchapHostOptions> = {}, tid = 5): ReturnType<typeof authenticateQueue> {
  return authenticateQueue(ch, { hostnqn: HOSTNQN, subnqn: SUBNQN, tid, dhchap: { secret: hostKey, ...dh } });
}

test('unidirectional, null group: Negotiate with the default lists, a correct R1 without C2/S2/DH value, no Success2; 10 s steps, AL 4096', async () => {
  const ch = controller();
  const out = await run(ch);
  assert.deepEqual(out, { hashId: 1, dhgroup: 0, bidirectional: false });
  assert.deepEqual(ch.log.map((r) => r.kind), ['send', 'receive', 'send', 'receive']);
  assert.deepEqual(ch.log[0]?.msg, { kind: 'negotiate', tid: 5, scc: 0, napd: 1, hashes: [1, 2, 3], dhgroups: [0, 1, 2, 3, 4, 5] });
  const reply = ch.log[2]?.msg as Extract<AuthMessage, { kind: 'reply' }>;
  assert.equal(reply.kind, 'reply');
  assert.equal(reply.tid, 5);
  assert.equal(reply.challenge, undefined);
  assert.equal(reply.seqnum, 0);
  assert.equal(reply.dhValue.length, 0);
  assert.deepEqual(ch.r1ok, [true]);
  for (const r of ch.log) assert.equal(r.timeoutMs, AUTH_STEP_TIMEOUT_MS);
  assert.equal(AUTH_STEP_TIMEOUT_MS, 10_000);
  for (const r of ch.log.filter((x) => x.kind === 'receive')) assert.equal(r.al, 4096);
  assert.equal(AUTH_RECEIVE_LENGTH, 4096);
});

test('bidirectional with ffdhe2048 and SHA-512: C2 of the hash length, S2 non-zero, host DH value, R2 checked, Success2 sent; custom step deadline', async () => {
  const ch = controller({ hashId: DhchapHash.SHA512, dhgroup: DhchapGroup.FFDHE2048 });
  const out = await run(ch, { ctrlSecret: ctrlKey, hashes: [DhchapHash.SHA512], dhgroups: [DhchapGroup.FFDHE2048], stepTimeoutMs: 1234 });
  assert.deepEqual(out, { hashId: 3, dhgroup: 1, bidirectional: true });
  assert.deepEqual(ch.log.map((r) => r.msg?.kind ?? r.kind), ['negotiate', 'receive', 'reply', 'receive', 'success2']);
  assert.deepEqual(ch.log[0]?.msg, { kind: 'negotiate', tid: 5, scc: 0, napd: 1, hashes: [3], dhgroups: [1] });
  const reply = ch.log[2]?.msg as Extract<AuthMessage, { kind: 'reply' }>;
  assert.equal(reply.challenge?.length, 64);
  assert.notEqual(reply.seqnum, 0);
  assert.equal(reply.dhValue.length, 256);
  assert.deepEqual(ch.r1ok, [true]);
  assert.deepEqual(ch.log[4]?.msg, { kind: 'success2', tid: 5 });
  for (const r of ch.log) assert.equal(r.timeoutMs, 1234);
});

test('the transaction id is masked to 16 bits in every message', async () => {
  const ch = controller();
  await run(ch, { ctrlSecret: ctrlKey }, 0x1_2345);
  assert.deepEqual(ch.log.filter((r) => r.msg !== undefined).map((r) => (r.msg as { tid: number }).tid), [0x2345, 0x2345, 0x2345]);
  assert.deepEqual(ch.r1ok, [true]);
});

test('a controller secret with a unidirectional Success1 answer (RVALID 0) is refused: FAILED, Failure2 sent', async () => {
  const ch = controller({ success1: (tid, hl) => encodeSuccess1({ tid, hashLength: hl, response: undefined }) });
  const e = await rejectsCode(run(ch, { ctrlSecret: ctrlKey }), ErrorCode.AUTH_FAILED);
  assert.equal(e.message, 'queue 0: DH-HMAC-CHAP authentication failed: the controller did not answer the host challenge (RVALID 0) (sent AUTH_Failure2: authentication failed)');
  assert.deepEqual(e.auth, { reason: 1, explanation: AuthFailure.FAILED });
  assert.deepEqual(ch.log.at(-1)?.msg, { kind: 'failure2', tid: 5, reason: 1, explanation: AuthFailure.FAILED });
});

test('without a controller secret an R2 in Success1 is not checked (no Success2)', async () => {
  const ch = controller({ success1: (tid, hl) => encodeSuccess1({ tid, hashLength: hl, response: Buffer.alloc(hl, 7) }) });
  assert.deepEqual(await run(ch), { hashId: 1, dhgroup: 0, bidirectional: false });
  assert.equal(ch.log.some((r) => r.msg?.kind === 'success2'), false);
});

test('Success1 refusals: HL other than the hash length, another T_ID, a second Challenge — each with its explanation and message', async () => {
  const hlBad = controller({ success1: (tid) => encodeSuccess1({ tid, hashLength: 48, response: undefined }) });
  const e1 = await rejectsCode(run(hlBad), ErrorCode.AUTH_FAILED);
  assert.equal(e1.message, 'queue 0: DH-HMAC-CHAP authentication failed: Success1 HL 48, expected 32 (sent AUTH_Failure2: hash function not usable)');
  assert.equal(e1.auth?.explanation, AuthFailure.HASH_UNUSABLE);
  const tidBad = controller({ success1: (_tid, hl) => encodeSuccess1({ tid: 6, hashLength: hl, response: undefined }) });
  const e2 = await rejectsCode(run(tidBad), ErrorCode.AUTH_FAILED);
  assert.equal(e2.message, 'queue 0: DH-HMAC-CHAP authentication failed: success1 carries transaction 6, expected 5 (sent AUTH_Failure2: incorrect protocol message)');
  const again = controller({ success1: (tid, hl) => encodeChallenge({ tid, hashId: 1, dhgroup: 0, seqnum: 1, challenge: Buffer.alloc(hl), dhValue: Buffer.alloc(0) }) });
  const e3 = await rejectsCode(run(again), ErrorCode.AUTH_FAILED);
  assert.equal(e3.message, 'queue 0: DH-HMAC-CHAP authentication failed: expected DH-HMAC-CHAP_Success1, got challenge (sent AUTH_Failure2: incorrect protocol message)');
  assert.deepEqual(again.log.at(-1)?.msg, { kind: 'failure2', tid: 5, reason: 1, explanation: AuthFailure.INCORRECT_MESSAGE });
});

test('Challenge refusals name the queue and the reason: wrong T_ID, a Success1 first, unknown hash id (HL 0)', async () => {
  const ch = { ...controller({ tid: 9 }), qid: 3 };
  const e1 = await rejectsCode(run(ch), ErrorCode.AUTH_FAILED);
  assert.equal(e1.message, 'queue 3: DH-HMAC-CHAP authentication failed: challenge carries transaction 9, expected 5 (sent AUTH_Failure2: incorrect protocol message)');
  const scripted = (reply: Buffer): AuthChannel & { sent: AuthMessage[] } => {
    const sent: AuthMessage[] = [];
    return {
      qid: 0, sent,
      authSend: (d) => { sent.push(decodeAuthMessage(d)); return Promise.resolve(); },
      authReceive: () => Promise.resolve(reply),
    };
  };
  const s1 = scripted(encodeSuccess1({ tid: 5, hashLength: 32, response: undefined }));
  const e2 = await rejectsCode(run(s1), ErrorCode.AUTH_FAILED);
  assert.equal(e2.message, 'queue 0: DH-HMAC-CHAP authentication failed: expected DH-HMAC-CHAP_Challenge, got success1 (sent AUTH_Failure2: incorrect protocol message)');
  // Hash id 7 (unknown, HL 0) offered by a host that lists it anyway: still refused as unusable.
  const s2 = scripted(encodeChallenge({ tid: 5, hashId: 7, dhgroup: 0, seqnum: 1, challenge: Buffer.alloc(10, 1), dhValue: Buffer.alloc(0) }));
  const e3 = await rejectsCode(run(s2, { hashes: [7 as 1] }), ErrorCode.AUTH_FAILED);
  assert.equal(e3.message, 'queue 0: DH-HMAC-CHAP authentication failed: the controller chose hash 7, which was not offered (sent AUTH_Failure2: hash function not usable)');
  assert.deepEqual(s2.sent.at(-1), { kind: 'failure2', tid: 5, reason: 1, explanation: AuthFailure.HASH_UNUSABLE });
  const s3 = scripted(encodeChallenge({ tid: 5, hashId: 2, dhgroup: 0, seqnum: 1, challenge: Buffer.alloc(48, 1), dhValue: Buffer.alloc(0) }));
  const e4 = await rejectsCode(run(s3, { hashes: [1] }), ErrorCode.AUTH_FAILED);
  assert.equal(e4.message, 'queue 0: DH-HMAC-CHAP authentication failed: the controller chose hash 2, which was not offered (sent AUTH_Failure2: hash function not usable)');
  const s4 = scripted(encodeChallenge({ tid: 5, hashId: 2, dhgroup: 0, seqnum: 1, challenge: Buffer.alloc(32, 1), dhValue: Buffer.alloc(0) }));
  const e5 = await rejectsCode(run(s4), ErrorCode.AUTH_FAILED);
  assert.equal(e5.message, 'queue 0: DH-HMAC-CHAP authentication failed: challenge of 32 bytes for sha384 (sent AUTH_Failure2: hash function not usable)');
  const s5 = scripted(encodeChallenge({ tid: 5, hashId: 1, dhgroup: 2, seqnum: 1, challenge: Buffer.alloc(32, 1), dhValue: Buffer.alloc(384, 3) }));
  const e6 = await rejectsCode(run(s5, { dhgroups: [0, 1] }), ErrorCode.AUTH_FAILED);
  assert.equal(e6.message, 'queue 0: DH-HMAC-CHAP authentication failed: the controller chose DH group 2, which was not offered (sent AUTH_Failure2: DH group not usable)');
  const s6 = scripted(encodeChallenge({ tid: 5, hashId: 1, dhgroup: 0, seqnum: 1, challenge: Buffer.alloc(32, 1), dhValue: Buffer.alloc(1, 3) }));
  const e7 = await rejectsCode(run(s6), ErrorCode.AUTH_FAILED);
  assert.equal(e7.message, 'queue 0: DH-HMAC-CHAP authentication failed: a DH value with the null group (sent AUTH_Failure2: incorrect payload)');
  // A DH value out of range (all ones) for ffdhe2048: the exchange refuses it.
  const s7 = scripted(encodeChallenge({ tid: 5, hashId: 1, dhgroup: 1, seqnum: 1, challenge: Buffer.alloc(32, 1), dhValue: Buffer.alloc(256, 0xff) }));
  const e8 = await rejectsCode(run(s7), ErrorCode.AUTH_FAILED);
  assert.equal(e8.message, 'queue 0: DH-HMAC-CHAP authentication failed: DH value out of range (must be 2..p-2) (sent AUTH_Failure2: DH group not usable)');
  // An undecodable message: the decoder's explanation (here: incorrect protocol message).
  const s8 = scripted(Buffer.from('0077', 'hex'));
  const e9 = await rejectsCode(run(s8), ErrorCode.AUTH_FAILED);
  assert.equal(e9.auth?.explanation, AuthFailure.INCORRECT_MESSAGE);
  assert.match(e9.message, /^queue 0: DH-HMAC-CHAP authentication failed: unknown common authentication message id 0x77 \(sent AUTH_Failure2: incorrect protocol message\)$/);
  const s9 = scripted(Buffer.from('01', 'hex'));
  const e10 = await rejectsCode(run(s9), ErrorCode.AUTH_FAILED);
  assert.equal(e10.auth?.explanation, AuthFailure.INCORRECT_MESSAGE);
  const s10 = scripted(Buffer.from('0101000000000000', 'hex'));
  const e11 = await rejectsCode(run(s10), ErrorCode.AUTH_FAILED);
  assert.equal(e11.auth?.explanation, AuthFailure.INCORRECT_PAYLOAD, 'a short DH-HMAC-CHAP message');
});

test('the controller\'s AUTH_Failure1 is reported with its name and codes, no Failure2 back', async () => {
  const sent: AuthMessage[] = [];
  const ch: AuthChannel = {
    qid: 2,
    authSend: (d) => { sent.push(decodeAuthMessage(d)); return Promise.resolve(); },
    authReceive: () => Promise.resolve(encodeFailure('failure1', 5, AuthFailure.DHGROUP_UNUSABLE)),
  };
  const e = await rejectsCode(run(ch), ErrorCode.AUTH_FAILED);
  assert.equal(e.message, 'queue 2: DH-HMAC-CHAP authentication failed: the controller sent AUTH_Failure1: DH group not usable (reason code 1, explanation 5)');
  assert.deepEqual(e.auth, { reason: 1, explanation: 5 });
  assert.deepEqual(sent.map((m) => m.kind), ['negotiate']);
});

test('AUTH_Failure2 gets min(step, 2 s) and its own failure is ignored', async () => {
  for (const [step, want] of [[5000, 2000], [1500, 1500], [2000, 2000]] as const) {
    const ch = controller({ tid: 9 });
    await rejectsCode(run(ch, { stepTimeoutMs: step }), ErrorCode.AUTH_FAILED);
    const f2 = ch.log.at(-1);
    assert.equal(f2?.msg?.kind, 'failure2');
    assert.equal(f2?.timeoutMs, want, `step ${step}`);
  }
  // The Failure2 send itself fails: the host's reason is still what is reported.
  const ch = controller({ tid: 9, failSend: 1 });
  const e = await rejectsCode(run(ch), ErrorCode.AUTH_FAILED);
  assert.match(e.message, /challenge carries transaction 9, expected 5 \(sent AUTH_Failure2: incorrect protocol message\)$/);
  assert.equal(e.cause, undefined);
});

test('a transport failure of each step is AUTH_FAILED naming the step, with the cause; no Failure2 after it', async () => {
  const cases: Array<[Script, string]> = [
    [{ failSend: 0 }, 'Authentication Send (AUTH_Negotiate): send refused'],
    [{ failReceive: 0 }, 'Authentication Receive (challenge): receive timed out'],
    [{ failSend: 1 }, 'Authentication Send (DH-HMAC-CHAP_Reply): send refused'],
    [{ failReceive: 1 }, 'Authentication Receive (success1): receive timed out'],
    [{ failSend: 2 }, 'Authentication Send (DH-HMAC-CHAP_Success2): send refused'],
  ];
  for (const [s, what] of cases) {
    const ch = controller(s);
    const e = await rejectsCode(run(ch, { ctrlSecret: ctrlKey }), ErrorCode.AUTH_FAILED, what);
    assert.equal(e.message, `queue 0: DH-HMAC-CHAP authentication failed: ${what}`);
    assert.ok(e.cause instanceof NvmfNbdError, what);
    assert.equal(e.auth, undefined, what);
    assert.equal(ch.log.some((r) => r.msg?.kind === 'failure2'), false, what);
  }
});

test('a wrong controller secret on the controller side: R2 mismatch is FAILED ("wrong controller secret")', async () => {
  const ch = controller({ success1: (tid, hl, r2) => encodeSuccess1({ tid, hashLength: hl, response: Buffer.from((r2 as Buffer).map((b) => b ^ 1)) }) });
  const e = await rejectsCode(run(ch, { ctrlSecret: ctrlKey }), ErrorCode.AUTH_FAILED);
  assert.equal(e.message, 'queue 0: DH-HMAC-CHAP authentication failed: controller authentication failed (wrong controller secret) (sent AUTH_Failure2: authentication failed)');
});

test('describeOutcome: hash and group names, "bidirectional" only when it was; unknown ids as numbers', () => {
  assert.equal(describeOutcome({ hashId: 1, dhgroup: 1, bidirectional: true }), 'sha256 ffdhe2048 bidirectional');
  assert.equal(describeOutcome({ hashId: 3, dhgroup: 0, bidirectional: false }), 'sha512 null');
  assert.equal(describeOutcome({ hashId: 9, dhgroup: 8, bidirectional: false }), '9 8');
});
