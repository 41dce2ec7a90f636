/**
 * Mutation-audit pins (issue 15) for the survivors of
 * `npm run mutate -- src/controller/resilient.ts:561-782 --tests=mut-ctrl-resilient2,...`
 * (the recovery loop), in a file of their own so that run's incremental results stay valid:
 * the quiesce time from KATO, the target grace and the larger CQT of the two associations
 * (mocked clock, the new association connected before the clock nears the deadline); a
 * quiesce time already over re-drives without another timer turn; close() while an attempt is
 * connecting and then fails (no reconnect_delay sleep after it), or is refused with DNR (no
 * 'dead', one 'close'), or reaches another subsystem (lastError stays the loss); close() after
 * giving up changes nothing; an added plus a removed namespace is reported; held I/O fails
 * before 'dead' is emitted; the SUBSYSTEM_CHANGED message.
 */
import { test } from 'node:test';
import type { TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { CtrlState, ResilientController } from '../../src/controller/resilient';
import type { ResilienceOptions } from '../../src/controller/resilient';
import type { ControllerOptions, NamespaceChanges } from '../../src/controller/controller';
import { ErrorCode, NvmfNbdError } from '../../src/errors';
import { FakeTarget, serveController, type ControllerModel, type FakeConn } from '../helpers/fake-target';
import { realSleep, track, turns, until } from '../helpers/clock';
import { IoRequest } from '../../src/controller/io-request';
import { BlockOpCode } from '../../src/block/types';

const NQN = 'nqn.2014-08.org.nvmf-nbd:mut-ctrl-resilient3';
const HOSTNQN = 'nqn.2014-08.org.nvmexpress:uuid:0f6c3d1e-1a2b-4c3d-9e8f-00000000e301';

interface Plan {
  /** Close the connection at once (a refused reconnect). */
  refuse?: boolean;
  /** Real milliseconds to wait before serving (or refusing). */
  delayMs?: number;
  /** Patch the Identify Controller data of this association. */
  identify?: (b: Buffer) => void;
}

interface Rig {
  rc: ResilientController;
  target: FakeTarget;
  m: ControllerModel;
  /** How the next connections are served (a fresh admin queue starts an association). */
  plan: Plan;
  cut(): void;
  done(): Promise<void>;
}

function patchIdentify(c: FakeConn, patch: (b: Buffer) => void): void {
  const byCid = new Map<number, Buffer>();
  const next = c.nextPdu.bind(c);
  c.nextPdu = async () => {
    const p = await next();
    if (p !== undefined && p.type === 0x04) byCid.set(p.sqe.readUInt16LE(2), Buffer.from(p.sqe));
    return p;
  };
  const c2h = c.c2h.bind(c);
  c.c2h = (cid, datao, data, o) => {
    const sqe = byCid.get(cid);
    if (sqe !== undefined && sqe[0] === 0x06 && (sqe.readUInt32LE(40) & 0xff) === 1) {
      const copy = Buffer.from(data);
      patch(copy);
      data = copy;
    }
    c2h(cid, datao, data, o);
  };
}

async function rig(o: Partial<ControllerOptions & ResilienceOptions> = {}, m: ControllerModel = { namespaces: new Map([[1, { data: Buffer.alloc(64 << 10), lbaSize: 512 }]]) }): Promise<Rig> {
  const r = { plan: {} as Plan } as Rig;
  const target = await FakeTarget.start(async (c) => {
    const plan = r.plan;
    if (plan.delayMs !== undefined) await realSleep(plan.delayMs);
    if (plan.refuse === true) {
      c.socket.destroy();
      return;
    }
    if (plan.identify !== undefined) patchIdentify(c, plan.identify);
    await serveController(c, m);
  });
  r.target = target;
  r.m = m;
  r.rc = await ResilientController.connect({
    traddr: '127.0.0.1', trsvcid: target.port, subnqn: NQN, hostnqn: HOSTNQN, hostid: Buffer.alloc(16, 0x31), nrIoQueues: 1, queueSize: 16,
    kato: 10_000, connectTimeoutMs: 3000, reconnectDelayMs: 10, quiesceMs: 0, ctrlLossTmoMs: 30_000, ...o,
  });
  r.cut = () => { for (const c of target.conns) c.socket.destroy(); };
  r.done = async () => { await r.rc.close(); await target.close(); };
  return r;
}

function settle<T>(p: Promise<T>): Promise<{ ok: boolean; err?: NvmfNbdError }> {
  return p.then(() => ({ ok: true }), (err: NvmfNbdError) => ({ ok: false, err }));
}

/** Wait (real time) until the association after the first `n` connections has both queues up. */
function newAssociation(r: Rig, n: number): Promise<void> {
  return until(() => r.target.conns.length >= n + 2 && r.target.conns.slice(n, n + 2).every((c) => c.qid >= 0), 'new association connected');
}

test('quiesce time: 2·KATO + target grace + the larger CQT of the old and the new association, on the clock from the loss', { timeout: 20_000 }, async (t: TestContext) => {
  const r = await rig({ quiesceMs: undefined, kato: 1000, targetKeepAliveGraceMs: 700, reconnectDelayMs: 10 });
  try {
    t.mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 1_000_000 });
    r.plan = { refuse: true };
    const lostAt = Date.now();
    r.cut();
    await until(() => r.rc.state === CtrlState.CONNECTING, 'connecting');
    const held = track(settle(r.rc.write(1, 0n, Buffer.alloc(512, 7))));
    const n = r.target.conns.length;
    r.plan = { identify: (b) => b.writeUInt16LE(300, 386) };
    t.mock.timers.tick(10);
    await newAssociation(r, n);
    await realSleep(100);
    await turns(20);
    // 2·1000 + 700 + max(0, 300) = 3000 ms after the loss.
    t.mock.timers.tick(3000 - 1 - (Date.now() - lostAt));
    await realSleep(50);
    await turns(20);
    assert.equal(held.done, false, `not re-driven at ${Date.now() - lostAt} ms`);
    assert.equal(r.rc.state, CtrlState.CONNECTING);
    t.mock.timers.tick(1);
    await until(() => held.done, 're-driven at 3000 ms', 5000);
    assert.equal((await held.promise).ok, true);
    assert.equal(r.rc.state, CtrlState.LIVE);
  } finally {
    t.mock.timers.reset();
    await r.done();
  }
});

test('a quiesce time already over when the new association is up: re-driven without another timer turn', { timeout: 20_000 }, async (t: TestContext) => {
  const r = await rig({ quiesceMs: 1000, reconnectDelayMs: 1000 });
  try {
    t.mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 5_000_000 });
    r.plan = { refuse: true };
    r.cut();
    await until(() => r.rc.state === CtrlState.CONNECTING, 'connecting');
    const held = track(settle(r.rc.write(1, 2n, Buffer.alloc(512, 8))));
    r.plan = {};
    await turns(20);
    // Exactly the quiesce time passes during reconnect_delay: the wait left is 0.
    t.mock.timers.tick(1000);
    await until(() => held.done, 're-driven with no further tick', 5000);
    assert.equal((await held.promise).ok, true);
  } finally {
    t.mock.timers.reset();
    await r.done();
  }
});

test('close() while an attempt is connecting and then fails: no reconnect_delay sleep after it (no timer turn needed)', { timeout: 20_000 }, async (t: TestContext) => {
  const r = await rig({ reconnectDelayMs: 1000, ctrlLossTmoMs: -1 });
  try {
    t.mock.timers.enable({ apis: ['setTimeout'] });
    r.plan = { refuse: true };
    r.cut();
    await until(() => r.rc.state === CtrlState.CONNECTING, 'connecting');
    const n = r.target.conns.length;
    r.plan = { refuse: true, delayMs: 150 };
    await turns(20);
    t.mock.timers.tick(1000);
    await until(() => r.target.conns.length > n, 'attempt connecting');
    const closed = track(r.rc.close());
    await until(() => closed.done, 'close() returned without the clock moving', 5000);
    assert.equal(r.rc.state, CtrlState.DEAD);
  } finally {
    t.mock.timers.reset();
    await r.done();
  }
});

test('close() while an attempt is refused with DNR: no "dead", one "close" (undefined); close() after giving up changes nothing', { timeout: 20_000 }, async () => {
  const r = await rig();
  const events: string[] = [];
  try {
    r.rc.on('dead', () => events.push('dead'));
    r.rc.on('close', (e?: NvmfNbdError) => events.push(`close:${e?.code ?? 'none'}`));
    r.plan = { refuse: true };
    r.cut();
    await until(() => r.rc.state === CtrlState.CONNECTING, 'connecting');
    const n = r.target.conns.length;
    r.m.subnqn = 'nqn.2014-08.org.nvmf-nbd:not-this-one';
    r.plan = { delayMs: 150 };
    await until(() => r.target.conns.length > n, 'attempt connecting');
    await r.rc.close();
    await realSleep(300);
    assert.deepEqual(events, ['close:none']);
  } finally {
    await r.done();
  }
  // Given up first (DNR), closed after: no further state or close events.
  const g = await rig();
  try {
    const seen: string[] = [];
    g.rc.on('state', (s: string) => seen.push(s));
    g.rc.on('close', () => seen.push('close'));
    g.plan = { refuse: true };
    g.cut();
    await until(() => g.rc.state === CtrlState.CONNECTING, 'connecting');
    g.m.subnqn = 'nqn.2014-08.org.nvmf-nbd:not-this-one';
    g.plan = {};
    await until(() => g.rc.state === CtrlState.DEAD, 'dead');
    const before = [...seen];
    await g.rc.close();
    assert.deepEqual(seen, before);
    assert.equal(g.rc.lastError?.code, ErrorCode.CONNECT_FAILED);
  } finally {
    await g.done();
  }
});

test('close() while an attempt reaches another subsystem: the attempt is closed and lastError stays the loss', { timeout: 20_000 }, async () => {
  const r = await rig();
  try {
    r.plan = { refuse: true };
    r.cut();
    await until(() => r.rc.state === CtrlState.CONNECTING, 'connecting');
    const loss = r.rc.lastError;
    const n = r.target.conns.length;
    r.m.identifyDelayMs = 200;
    r.plan = { identify: (b) => { b.fill(0, 768, 1024); b.write('nqn.other', 768, 'latin1'); } };
    await until(() => r.target.conns.length > n && r.target.conns[n]?.qid === 0, 'attempt connecting');
    await r.rc.close();
    assert.equal(r.rc.lastError, loss);
  } finally {
    await r.done();
  }
});

test('a reconnect to another subsystem gives up with SUBSYSTEM_CHANGED naming both NQNs', { timeout: 20_000 }, async () => {
  const r = await rig();
  try {
    const dead = new Promise<NvmfNbdError>((resolve) => r.rc.once('dead', resolve));
    r.plan = { identify: (b) => { b.fill(0, 768, 1024); b.write('nqn.other', 768, 'latin1'); } };
    r.cut();
    const e = await dead;
    assert.equal(e.code, ErrorCode.SUBSYSTEM_CHANGED);
    assert.equal(e.message, "reconnect reached subsystem 'nqn.other', not 'nqn.fake': giving up");
  } finally {
    await r.done();
  }
});

test('a namespace added and another removed across a reconnect (nothing resized) is reported', { timeout: 20_000 }, async () => {
  const m: ControllerModel = { namespaces: new Map([[1, { data: Buffer.alloc(64 << 10), lbaSize: 512 }], [2, { data: Buffer.alloc(64 << 10), lbaSize: 512 }]]) };
  const r = await rig({}, m);
  try {
    const changes: NamespaceChanges[] = [];
    r.rc.on('namespaces', (ch: NamespaceChanges) => changes.push(ch));
    r.plan = { refuse: true };
    r.cut();
    await until(() => r.rc.state === CtrlState.CONNECTING, 'connecting');
    m.namespaces.delete(2);
    m.namespaces.set(3, { data: Buffer.alloc(64 << 10), lbaSize: 512 });
    r.plan = {};
    await until(() => r.rc.state === CtrlState.LIVE, 'live again');
    assert.deepEqual(changes, [{ added: [3], removed: [2], resized: [] }]);
  } finally {
    await r.done();
  }
});

test('giving up fails a held record synchronously, before "dead" is emitted', { timeout: 20_000 }, async () => {
  const r = await rig({ ctrlLossTmoMs: 50 });
  try {
    const order: string[] = [];
    r.plan = { refuse: true };
    r.cut();
    await until(() => r.rc.state === CtrlState.CONNECTING, 'connecting');
    const req = new IoRequest();
    req.op = BlockOpCode.WRITE;
    req.nsid = 1;
    req.slba = 0n;
    req.nlb = 1;
    req.data = Buffer.alloc(512);
    req.owner = { onIoDone: () => order.push('record failed') };
    r.rc.on('dead', () => order.push('dead'));
    r.rc.submitIo(req);
    await until(() => order.length === 2, 'both');
    assert.deepEqual(order, ['record failed', 'dead']);
  } finally {
    await r.done();
  }
});
