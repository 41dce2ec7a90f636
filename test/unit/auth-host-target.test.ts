/**
 * DH-HMAC-CHAP between our host and our embedded target: every hash × every DH group,
 * unidirectional and bidirectional, on every queue; wrong host key, wrong controller key, no
 * key; a host that skips authentication gets no command through; out-of-order, wrong-T_ID and
 * replayed messages get AUTH_Failure1 with the documented explanation; the host rejects a bad
 * challenge / Success1 and answers with AUTH_Failure2; a silent controller times out;
 * re-authentication when the controller asks; re-authentication on every reconnect.
 */
import { after, before, test } from 'node:test';
import * as assert from 'node:assert/strict';
import { NvmeTarget } from '../../src/embedded-target/target';
import { Controller, type ControllerOptions } from '../../src/controller/controller';
import { ResilientController, CtrlState } from '../../src/controller/resilient';
import { authenticateQueue, type AuthChannel } from '../../src/controller/auth';
import {
  AuthFailure, DhchapGroup, DhchapHash, decodeAuthMessage, encodeChallenge, encodeFailure, encodeNegotiate, encodeReply,
  encodeSuccess1, encodeSuccess2, sqeAuthReceive, sqeAuthSend, type DhchapGroupId, type DhchapHashId,
} from '../../src/wire/auth';
import { dhchapResponse, formatDhchapKey, generateDhchapKey, transformDhchapKey, type DhchapKey } from '../../src/wire/dhchap';
import { sqeIdentify } from '../../src/wire/sqe';
import { sqePropertyGet } from '../../src/wire';
import { ErrorCode, NvmfNbdError } from '../../src/errors';
import { throwsCode } from '../helpers/assert-code';
import { FakeTarget } from '../helpers/fake-target';
import { FaultProxy } from '../helpers/fault-proxy';
import { HOSTNQN, RawHost, connectAdmin, connectIo } from './target-rawhost';

const NQN = 'nqn.2014-08.org.nvmf-nbd:auth-test';
const OTHER_HOST = 'nqn.2014-08.org.nvmf-nbd:host-without-key';
const HOSTID = '0f6c3d1e-1a2b-4c3d-9e8f-00000000b011';
const hostKey = generateDhchapKey({ hmac: 2, nqn: HOSTNQN });
const ctrlKey = generateDhchapKey({ keyLength: 64 });

let target: NvmeTarget;
let port = 0;
const logs: string[] = [];

before(async () => {
  target = new NvmeTarget({
    listen: { host: '127.0.0.1', port: 0 },
    subsystems: [{ nqn: NQN, namespaces: [{ nsid: 1, sizeBytes: 4 << 20, backing: { memory: true } }] }],
    allowHosts: [OTHER_HOST],
    hostKeys: [{ hostnqn: HOSTNQN, key: formatDhchapKey(hostKey), ctrlKey }],
    // Null last: every group is usable, the host's list decides.
    dhchapGroups: [1, 2, 3, 4, 5, 0],
    authTimeoutMs: 3000,
    log: (level, m) => { if (level !== 'debug') logs.push(m); },
  });
  port = (await target.listen()).port;
});

after(async () => {
  await target.close();
});

function opts(o: Partial<ControllerOptions> = {}): ControllerOptions {
  return { traddr: '127.0.0.1', trsvcid: port, subnqn: NQN, hostnqn: HOSTNQN, hostid: HOSTID, nrIoQueues: 2, queueSize: 16, kato: 5000, connectTimeoutMs: 20_000, ...o };
}

async function failure(p: Promise<unknown>): Promise<NvmfNbdError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof NvmfNbdError, String(err));
    return err;
  }
  assert.fail('expected a failure');
}

const HASHES: DhchapHashId[] = [DhchapHash.SHA256, DhchapHash.SHA384, DhchapHash.SHA512];
const GROUPS: DhchapGroupId[] = [0, 1, 2, 3, 4, 5];

test('every hash × every DH group, unidirectional and bidirectional: all queues authenticate, I/O works', { timeout: 120_000 }, async (t) => {
  let n = 0;
  for (const hash of HASHES) {
    for (const group of GROUPS) {
      for (const bidi of [false, true]) {
        const before = target.stats().authentications;
        const c = await Controller.connect(opts({ dhchap: { secret: hostKey, ...(bidi ? { ctrlSecret: ctrlKey } : {}), hashes: [hash], dhgroups: [group] } }));
        try {
          assert.deepEqual(c.authentication, { hashId: hash, dhgroup: group, bidirectional: bidi });
          assert.equal(c.ioQueueCount, 2);
          assert.equal(target.stats().authentications - before, 3, 'admin + 2 I/O queues');
          const data = Buffer.alloc(512, n & 0xff);
          await c.write(1, BigInt(n), data);
          assert.deepEqual(await c.read(1, BigInt(n), 1), data);
        } finally {
          await c.close();
        }
        n++;
      }
    }
  }
  t.diagnostic(`${n} associations authenticated`);
});

test('the target picks the first hash and group of its preference lists that the host offers (setDhchapPolicy)', { timeout: 20_000 }, async () => {
  try {
    target.setDhchapPolicy({ hashes: [DhchapHash.SHA512, DhchapHash.SHA256], dhgroups: [DhchapGroup.FFDHE3072, DhchapGroup.NULL] });
    const c = await Controller.connect(opts({ nrIoQueues: 1, dhchap: { secret: hostKey } }));
    assert.deepEqual(c.authentication, { hashId: DhchapHash.SHA512, dhgroup: DhchapGroup.FFDHE3072, bidirectional: false });
    await c.close();
    const d = await Controller.connect(opts({ nrIoQueues: 1, dhchap: { secret: hostKey, hashes: [DhchapHash.SHA256, DhchapHash.SHA384], dhgroups: [DhchapGroup.NULL, DhchapGroup.FFDHE2048] } }));
    assert.deepEqual(d.authentication, { hashId: DhchapHash.SHA256, dhgroup: DhchapGroup.NULL, bidirectional: false });
    await d.close();
    const e = await failure(Controller.connect(opts({ nrIoQueues: 1, dhchap: { secret: hostKey, dhgroups: [DhchapGroup.FFDHE8192] } })));
    assert.deepEqual(e.auth, { reason: 1, explanation: AuthFailure.DHGROUP_UNUSABLE });
    throwsCode(() => target.setDhchapPolicy({ hashes: [] }), ErrorCode.CFG_INVALID);
  } finally {
    target.setDhchapPolicy({ hashes: [1, 2, 3], dhgroups: [1, 2, 3, 4, 5, 0] });
  }
});

test('wrong host key, wrong controller key, no key: NVMF_ERR_AUTH_FAILED with the reason; nothing connected', { timeout: 30_000 }, async () => {
  const f0 = target.stats().authFailures;
  const wrongHost = await failure(Controller.connect(opts({ dhchap: { secret: generateDhchapKey({ hmac: 2, nqn: HOSTNQN }) } })));
  assert.equal(wrongHost.code, ErrorCode.AUTH_FAILED);
  assert.deepEqual(wrongHost.auth, { reason: 1, explanation: AuthFailure.FAILED }, 'the controller\'s AUTH_Failure1 reason');
  const wrongCtrl = await failure(Controller.connect(opts({ dhchap: { secret: hostKey, ctrlSecret: generateDhchapKey() } })));
  assert.equal(wrongCtrl.code, ErrorCode.AUTH_FAILED);
  assert.match(wrongCtrl.message, /controller authentication failed/);
  const none = await failure(Controller.connect(opts()));
  assert.equal(none.code, ErrorCode.AUTH_FAILED);
  assert.match(none.message, /requires in-band authentication/);
  assert.ok(target.stats().authFailures >= f0 + 2);
  // A host without a key on the target is not asked (ATR clear) and connects; with -C it insists.
  const plain = await Controller.connect(opts({ hostnqn: OTHER_HOST }));
  assert.equal(plain.authentication, undefined);
  await plain.close();
  const insist = await failure(Controller.connect(opts({ hostnqn: OTHER_HOST, dhchap: { secret: hostKey, ctrlSecret: ctrlKey } })));
  assert.equal(insist.code, ErrorCode.AUTH_FAILED);
  // No secret ever appears in an error.
  for (const e of [wrongHost, wrongCtrl, none, insist]) assert.doesNotMatch(e.message, /DHHC-1/);
});

/** Authentication over a raw connection. */
function rawChannel(h: RawHost, qid: number): AuthChannel & { send(m: Buffer): Promise<void>; recv(): Promise<ReturnType<typeof decodeAuthMessage>> } {
  const ch = {
    qid,
    async authSend(data: Buffer): Promise<void> {
      const r = await h.submit(sqeAuthSend(data.length), { write: data });
      if (!r.cqe.ok) throw new Error(`Authentication Send: sct ${r.cqe.status.sct} sc ${r.cqe.status.sc}`);
    },
    async authReceive(al: number): Promise<Buffer> {
      const r = await h.submit(sqeAuthReceive(al), { readLength: al });
      if (!r.cqe.ok) throw new Error(`Authentication Receive: sct ${r.cqe.status.sct} sc ${r.cqe.status.sc}`);
      return r.data;
    },
    send: (m: Buffer): Promise<void> => ch.authSend(m),
    recv: async (): Promise<ReturnType<typeof decodeAuthMessage>> => decodeAuthMessage(await ch.authReceive(4096)),
  };
  return ch;
}

async function rawAdmin(): Promise<{ h: RawHost; cntlid: number; dw0: number }> {
  const h = await RawHost.connect(port);
  await h.icreq();
  const r = await connectAdmin(h, NQN);
  assert.ok(r.cqe.ok);
  return { h, cntlid: r.cqe.dw0 & 0xffff, dw0: r.cqe.dw0 };
}

test('a host that skips authentication gets nothing but Authentication Required (SCT 1 SC 91h, DNR)', { timeout: 20_000 }, async () => {
  const { h, cntlid, dw0 } = await rawAdmin();
  try {
    assert.equal(dw0 & (1 << 17), 1 << 17, 'Connect response AUTHREQ.ATR');
    for (const sqe of [sqePropertyGet(0x00, true), sqeIdentify(1)]) {
      const r = await h.submit(sqe, { readLength: sqe[0] === 0x06 ? 4096 : undefined });
      assert.equal(r.cqe.ok, false);
      assert.deepEqual([r.cqe.status.sct, r.cqe.status.sc, r.cqe.status.dnr], [1, 0x91, true]);
    }
    // An I/O queue cannot join an association whose admin queue never authenticated (not ready).
    const h2 = await RawHost.connect(port);
    await h2.icreq();
    const io = await connectIo(h2, NQN, cntlid);
    assert.equal(io.cqe.ok, false);
    h2.close();
  } finally {
    h.close();
  }
});

test('out-of-order, wrong T_ID and replayed messages: AUTH_Failure1 with the explanation, then the queue closes', { timeout: 30_000 }, async () => {
  // Reply before Negotiate → incorrect protocol message.
  {
    const { h } = await rawAdmin();
    const ch = rawChannel(h, 0);
    await ch.send(encodeReply({ tid: 1, response: Buffer.alloc(32), challenge: undefined, seqnum: 0, dhValue: Buffer.alloc(0) }));
    assert.deepEqual(await ch.recv(), { kind: 'failure1', tid: 0, reason: 1, explanation: AuthFailure.INCORRECT_MESSAGE });
    await h.waitClosed(5000);
  }
  // Two Receives in a row (the host skipped its Reply).
  {
    const { h } = await rawAdmin();
    const ch = rawChannel(h, 0);
    await ch.send(encodeNegotiate({ tid: 5, scc: 0, hashes: [1], dhgroups: [0] }));
    assert.equal((await ch.recv()).kind, 'challenge');
    assert.deepEqual(await ch.recv(), { kind: 'failure1', tid: 5, reason: 1, explanation: AuthFailure.INCORRECT_MESSAGE });
    await h.waitClosed(5000);
  }
  // Nothing in common: hash / group unusable.
  {
    const { h } = await rawAdmin();
    const ch = rawChannel(h, 0);
    await ch.send(encodeNegotiate({ tid: 6, scc: 0, hashes: [9], dhgroups: [0] }));
    assert.deepEqual(await ch.recv(), { kind: 'failure1', tid: 6, reason: 1, explanation: AuthFailure.HASH_UNUSABLE });
    await h.waitClosed(5000);
  }
  // A Reply that answers the challenge correctly but carries another transaction id.
  const answer = (c: Extract<ReturnType<typeof decodeAuthMessage>, { kind: 'challenge' }>, tid: number, o: { s2?: number; key?: DhchapKey } = {}): Buffer => {
    const r1 = dhchapResponse('host', {
      hashId: c.hashId, key: transformDhchapKey(o.key ?? hostKey, HOSTNQN), challenge: c.challenge, seqnum: c.seqnum, tid, hostnqn: HOSTNQN, subnqn: NQN,
    });
    const bidi = o.s2 !== undefined;
    return encodeReply({ tid, response: r1, challenge: bidi ? Buffer.alloc(r1.length, 0x5a) : undefined, seqnum: o.s2 ?? 0, dhValue: Buffer.alloc(0) });
  };
  {
    const { h } = await rawAdmin();
    const ch = rawChannel(h, 0);
    await ch.send(encodeNegotiate({ tid: 7, scc: 0, hashes: [1], dhgroups: [0] }));
    const c = await ch.recv();
    assert.equal(c.kind, 'challenge');
    await ch.send(answer(c as Extract<typeof c, { kind: 'challenge' }>, 8));
    assert.deepEqual(await ch.recv(), { kind: 'failure1', tid: 7, reason: 1, explanation: AuthFailure.INCORRECT_PAYLOAD });
    await h.waitClosed(5000);
  }
  // Replay: a Reply that was valid for one transaction is refused in the next (fresh C1/S1).
  {
    const a = await rawAdmin();
    const cha = rawChannel(a.h, 0);
    await cha.send(encodeNegotiate({ tid: 9, scc: 0, hashes: [1], dhgroups: [0] }));
    const c = (await cha.recv()) as Extract<ReturnType<typeof decodeAuthMessage>, { kind: 'challenge' }>;
    const good = answer(c, 9);
    await cha.send(good);
    const s1 = await cha.recv();
    assert.deepEqual(s1, { kind: 'success1', tid: 9, hashLength: 32, response: undefined });
    const pg = await a.h.submit(sqePropertyGet(0x00, true));
    assert.ok(pg.cqe.ok, 'authenticated: Property Get runs');
    a.h.close();
    const b = await rawAdmin();
    const chb = rawChannel(b.h, 0);
    await chb.send(encodeNegotiate({ tid: 9, scc: 0, hashes: [1], dhgroups: [0] }));
    assert.equal((await chb.recv()).kind, 'challenge');
    await chb.send(good);
    assert.deepEqual(await chb.recv(), { kind: 'failure1', tid: 9, reason: 1, explanation: AuthFailure.FAILED });
    await b.h.waitClosed(5000);
  }
  // A sequence number S2 used twice in one association (admin queue, then an I/O queue): replay.
  {
    const a = await rawAdmin();
    const ch = rawChannel(a.h, 0);
    await ch.send(encodeNegotiate({ tid: 10, scc: 0, hashes: [1], dhgroups: [0] }));
    await ch.send(answer((await ch.recv()) as Extract<ReturnType<typeof decodeAuthMessage>, { kind: 'challenge' }>, 10, { s2: 4242 }));
    const s1 = await ch.recv();
    assert.equal(s1.kind, 'success1');
    await ch.send(encodeSuccess2(10));
    assert.ok((await a.h.submit(sqePropertyGet(0x00, true))).cqe.ok);
    const { enable } = await import('./target-rawhost');
    await enable(a.h);
    const io = await RawHost.connect(port);
    await io.icreq();
    const r = await connectIo(io, NQN, a.cntlid);
    assert.ok(r.cqe.ok, 'I/O queue joins');
    const chi = rawChannel(io, 1);
    await chi.send(encodeNegotiate({ tid: 11, scc: 0, hashes: [1], dhgroups: [0] }));
    await chi.send(answer((await chi.recv()) as Extract<ReturnType<typeof decodeAuthMessage>, { kind: 'challenge' }>, 11, { s2: 4242 }));
    assert.deepEqual(await chi.recv(), { kind: 'failure1', tid: 11, reason: 1, explanation: AuthFailure.INCORRECT_PAYLOAD });
    await io.waitClosed(5000);
    a.h.close();
  }
});

/** A scripted controller side for the host state machine. */
function scripted(script: (sent: Buffer[]) => Buffer[]): AuthChannel & { sent: Buffer[] } {
  const sent: Buffer[] = [];
  let replies: Buffer[] | undefined;
  return {
    qid: 0,
    sent,
    authSend(data: Buffer): Promise<void> {
      sent.push(Buffer.from(data));
      return Promise.resolve();
    },
    authReceive(): Promise<Buffer> {
      replies ??= script(sent);
      const r = replies.shift();
      return r === undefined ? Promise.reject(new NvmfNbdError(ErrorCode.TIMEOUT, 'no reply')) : Promise.resolve(Buffer.concat([r, Buffer.alloc(64)]));
    },
  };
}

test('the host rejects a bad challenge or Success1 with AUTH_Failure2 and reports the controller\'s AUTH_Failure1', async () => {
  const run = (ch: AuthChannel, o: { ctrl?: boolean; tid?: number } = {}): Promise<unknown> => authenticateQueue(ch, {
    hostnqn: HOSTNQN, subnqn: NQN, tid: o.tid ?? 3, dhchap: { secret: hostKey, ...(o.ctrl === true ? { ctrlSecret: ctrlKey } : {}), hashes: [1], dhgroups: [0, 1] },
  });
  const challenge = (o: { tid?: number; hashId?: number; dhgroup?: number; hl?: number; dhv?: number } = {}): Buffer => encodeChallenge({
    tid: o.tid ?? 3, hashId: o.hashId ?? 1, dhgroup: o.dhgroup ?? 0, seqnum: 77, challenge: Buffer.alloc(o.hl ?? 32, 1), dhValue: Buffer.alloc(o.dhv ?? 0, 2),
  });
  const cases: Array<[string, Buffer[], number]> = [
    ['wrong T_ID', [challenge({ tid: 4 })], AuthFailure.INCORRECT_MESSAGE],
    ['hash not offered', [challenge({ hashId: 3, hl: 64 })], AuthFailure.HASH_UNUSABLE],
    ['HL differs from the hash', [challenge({ hl: 20 })], AuthFailure.HASH_UNUSABLE],
    ['group not offered', [challenge({ dhgroup: 5, dhv: 1024 })], AuthFailure.DHGROUP_UNUSABLE],
    ['DH value with the null group', [challenge({ dhv: 8 })], AuthFailure.INCORRECT_PAYLOAD],
    ['DH value of the wrong size', [challenge({ dhgroup: 1, dhv: 100 })], AuthFailure.DHGROUP_UNUSABLE],
    ['Success1 instead of Challenge', [encodeSuccess1({ tid: 3, hashLength: 32, response: undefined })], AuthFailure.INCORRECT_MESSAGE],
    ['unknown message', [Buffer.from('0177', 'hex')], AuthFailure.INCORRECT_MESSAGE],
  ];
  for (const [what, replies, explanation] of cases) {
    const ch = scripted(() => replies);
    const err = await failure(run(ch));
    assert.equal(err.code, ErrorCode.AUTH_FAILED, what);
    assert.equal(err.auth?.explanation, explanation, what);
    const last = decodeAuthMessage(ch.sent.at(-1) as Buffer);
    assert.deepEqual(last, { kind: 'failure2', tid: 3, reason: 1, explanation }, `${what}: AUTH_Failure2 sent`);
  }
  // Bidirectional: R2 wrong or missing.
  for (const r2 of [Buffer.alloc(32, 9), undefined]) {
    const ch = scripted(() => [challenge(), encodeSuccess1({ tid: 3, hashLength: 32, response: r2 })]);
    const err = await failure(run(ch, { ctrl: true }));
    assert.equal(err.auth?.explanation, AuthFailure.FAILED);
    assert.equal(decodeAuthMessage(ch.sent.at(-1) as Buffer).kind, 'failure2');
  }
  // The controller's Failure1 is reported as is (no Failure2 back).
  const ch = scripted(() => [encodeFailure('failure1', 3, AuthFailure.DHGROUP_UNUSABLE)]);
  const err = await failure(run(ch));
  assert.deepEqual(err.auth, { reason: 1, explanation: AuthFailure.DHGROUP_UNUSABLE });
  assert.equal(ch.sent.length, 1, 'only the Negotiate was sent');
  // A transport failure of a step is AUTH_FAILED too (with the cause).
  const silent = scripted(() => []);
  const e2 = await failure(run(silent));
  assert.equal(e2.code, ErrorCode.AUTH_FAILED);
  assert.equal((e2.cause as NvmfNbdError).code, ErrorCode.TIMEOUT);
});

test('a controller that never answers an authentication step: AUTH_FAILED after the step timeout, no hang', { timeout: 20_000 }, async () => {
  const fake = await FakeTarget.start(async (c) => {
    await c.acceptConnect({ cntlid: 1 | (1 << 17) });
    const neg = await c.nextCommand();
    c.respond(neg.sqe.cid);
    await c.nextCommand(); // Authentication Receive: never answered
    await c.closed;
  });
  try {
    // "No hang" is the test's own timeout; no elapsed-time bound.
    const err = await failure(Controller.connect(opts({ trsvcid: fake.port, dhchap: { secret: hostKey, stepTimeoutMs: 500 } })));
    assert.equal(err.code, ErrorCode.AUTH_FAILED);
  } finally {
    await fake.close();
  }
});

test('re-authentication when the controller asks: commands refused with Authentication Required are retried after it', { timeout: 30_000 }, async () => {
  const c = await Controller.connect(opts({ dhchap: { secret: hostKey, ctrlSecret: ctrlKey, dhgroups: [1] } }));
  const seen: number[] = [];
  c.on('authenticated', (e: { qid: number }) => seen.push(e.qid));
  try {
    await c.write(1, 100n, Buffer.alloc(512, 0x33));
    const before = target.stats().authentications;
    assert.equal(target.requireReauthentication(), 3);
    // In flight at once: each queue re-authenticates once, every command completes.
    const reads = await Promise.all([0, 1, 2, 3, 4, 5].map(() => c.read(1, 100n, 1)));
    for (const r of reads) assert.equal(r[0], 0x33);
    await c.adminCommand(sqeIdentify(1), { dataInLength: 4096 });
    assert.deepEqual([...new Set(seen)].sort(), [0, 1, 2]);
    assert.equal(seen.length, 3, `one re-authentication per queue (${seen.join(',')})`);
    assert.equal(target.stats().authentications - before, 3);
  } finally {
    await c.close();
  }
});

test('every reconnect authenticates every new queue again (resilient controller behind a flapping link)', { timeout: 30_000 }, async () => {
  const proxy = await FaultProxy.start({ port });
  const c = await ResilientController.connect({ ...opts({ trsvcid: proxy.port, kato: 1000, dhchap: { secret: hostKey, ctrlSecret: ctrlKey } }), reconnectDelayMs: 100, ctrlLossTmoMs: 20_000, quiesceMs: 50 });
  try {
    await c.write(1, 200n, Buffer.alloc(512, 0x44));
    for (let round = 0; round < 2; round++) {
      const before = target.stats().authentications;
      const back = new Promise<void>((resolve) => {
        const on = (s: string): void => { if (s === CtrlState.LIVE) { c.off('state', on); resolve(); } };
        c.on('state', on);
      });
      proxy.cutAll();
      await back;
      const r = await c.read(1, 200n, 1);
      assert.equal(r[0], 0x44);
      assert.equal(target.stats().authentications - before, 3, `round ${round}: admin + 2 I/O queues authenticated again`);
    }
  } finally {
    await c.close();
    await proxy.close();
  }
});
