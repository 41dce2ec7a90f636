/**
 * Mutation-audit pins (issue 15) for the bring-up of src/controller/controller.ts (lines 1-641
 * and 888-end) that the scripted fake target could not show as it is: a wrapper patches its
 * Identify Controller data (CMIC, OAES, CTRATT, RTD3E, CQT, MDTS), its CAP (MPSMIN), its Number
 * of Queues answer and its CSTS, and records every command. Pinned: the I/O queue count is the
 * smallest of asked, granted SQs and granted CQs; Async Event Configuration only for the
 * notices we act on (namespace attribute, ANA change only with ANA reporting, none with
 * asyncEvents: false); discovery log change notices for a discovery controller only when asked
 * and supported; MDTS in units of CAP.MPSMIN, capped; the CSTS.RDY polling schedule (5, 10, 20,
 * 40, 80, then 100 ms) and its CAP.TO budget (at least 500 ms) on a mocked clock; the shutdown
 * budget from RTD3E (5 s without it, at most 60 s); the Identify-derived getters. Serves
 * `npm run mutate -- src/controller/controller.ts:1-641 --tests=mut-ctrl-bringup2,mut-ctrl-controller-bringup,...`.
 */
import { test } from 'node:test';
import type { TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { Controller, HOST_MAX_TRANSFER } from '../../src/controller/controller';
import type { ControllerOptions } from '../../src/controller/controller';
import { ErrorCode } from '../../src/errors';
import { FakeTarget, serveController } from '../helpers/fake-target';
import type { ControllerModel, FakeConn } from '../helpers/fake-target';
import { rejectsCode } from '../helpers/assert-code';
import { track, turns, until } from '../helpers/clock';

const T = { timeout: 20_000 };

interface Seen { qid: number; opcode: number; fctype: number; sqe: Buffer }

interface Patches {
  /** Change the Identify Controller data (a copy) before it is sent. */
  identify?: (b: Buffer) => void;
  /** CAP.MPSMIN to report. */
  mpsmin?: number;
  /** Number of Queues answer: [NSQA, NCQA] (1-based counts). */
  queues?: [number, number];
  /** CSTS value to report instead of the model's. */
  csts?: (real: number) => number;
}

function model(o: Partial<ControllerModel> = {}): ControllerModel {
  return { namespaces: new Map([[1, { data: Buffer.alloc(64 * 512), lbaSize: 512 }]]), ...o };
}

const BASE: Omit<ControllerOptions, 'trsvcid'> = {
  traddr: '127.0.0.1', subnqn: 'nqn.2024-01.io.test:mut-up2', hostnqn: 'nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-00000000002b',
  hostid: '00000000-0000-0000-0000-00000000002b', nrIoQueues: 1, queueSize: 16, kato: 0, connectTimeoutMs: 5000, ioTimeoutMs: 8000,
};

async function patchedTarget(m: ControllerModel, p: Patches): Promise<{ target: FakeTarget; seen: Seen[] }> {
  const seen: Seen[] = [];
  const t = await FakeTarget.start((c: FakeConn) => {
    const byCid = new Map<number, Buffer>();
    const next = c.nextPdu.bind(c);
    c.nextPdu = async () => {
      const pdu = await next();
      if (pdu !== undefined && pdu.type === 0x04) {
        const sqe = Buffer.from(pdu.sqe);
        byCid.set(sqe.readUInt16LE(2), sqe);
        seen.push({ qid: c.qid, opcode: sqe[0] as number, fctype: sqe[4] as number, sqe });
      }
      return pdu;
    };
    const c2h = c.c2h.bind(c);
    c.c2h = (cid, datao, data, o) => {
      const sqe = byCid.get(cid);
      if (p.identify !== undefined && sqe !== undefined && sqe[0] === 0x06 && (sqe.readUInt32LE(40) & 0xff) === 1 && c.qid === 0) {
        const copy = Buffer.from(data);
        p.identify(copy);
        data = copy;
      }
      c2h(cid, datao, data, o);
    };
    const respond = c.respond.bind(c);
    c.respond = (cid, o = {}) => {
      const sqe = byCid.get(cid);
      let out = o;
      if (sqe !== undefined && c.qid === 0) {
        if (sqe[0] === 0x7f && sqe[4] === 0x04 && sqe.readUInt32LE(44) === 0 && p.mpsmin !== undefined) {
          out = { ...o, dw1: ((o.dw1 ?? 0) & ~(0xf << 16)) | (p.mpsmin << 16) };
        } else if (sqe[0] === 0x7f && sqe[4] === 0x04 && sqe.readUInt32LE(44) === 0x1c && p.csts !== undefined) {
          out = { ...o, dw0: p.csts(o.dw0 ?? 0) };
        } else if (sqe[0] === 0x09 && (sqe.readUInt32LE(40) & 0xff) === 0x07 && p.queues !== undefined) {
          out = { ...o, dw0: ((p.queues[0] - 1) & 0xffff) | (((p.queues[1] - 1) & 0xffff) << 16) };
        }
      }
      respond(cid, out);
    };
    return serveController(c, m);
  });
  return { target: t, seen };
}

async function rig(m: ControllerModel, p: Patches, o: Partial<ControllerOptions> = {}): Promise<{ target: FakeTarget; ctrl: Controller; seen: Seen[]; close(): Promise<void> }> {
  const { target: t, seen } = await patchedTarget(m, p);
  try {
    const ctrl = await Controller.connect({ ...BASE, trsvcid: t.port, ...o });
    return { target: t, ctrl, seen, close: async () => { await ctrl.close(); await t.close(); } };
  } catch (err) {
    await t.close();
    throw err;
  }
}

/** Set Features commands on the admin queue: [FID, CDW11]. */
const setFeatures = (seen: Seen[]): Array<[number, number]> =>
  seen.filter((s) => s.qid === 0 && s.opcode === 0x09).map((s) => [s.sqe.readUInt32LE(40) & 0xff, s.sqe.readUInt32LE(44)]);
const aers = (seen: Seen[]): number => seen.filter((s) => s.qid === 0 && s.opcode === 0x0c).length;
const cstsReads = (seen: Seen[]): number => seen.filter((s) => s.opcode === 0x7f && s.fctype === 0x04 && s.sqe.readUInt32LE(44) === 0x1c).length;

test('I/O queues: the smallest of asked, granted submission and granted completion queues', T, async () => {
  for (const [asked, granted, want] of [[4, [3, 2], 2], [4, [1, 3], 1], [2, [8, 8], 2], [3, [3, 3], 3]] as const) {
    const r = await rig(model(), { queues: [granted[0], granted[1]] }, { nrIoQueues: asked });
    try {
      assert.equal(r.ctrl.ioQueueCount, want, `asked ${asked}, granted ${granted.join('/')}`);
      assert.deepEqual(setFeatures(r.seen).filter(([fid]) => fid === 7), [[7, ((asked - 1) | ((asked - 1) << 16)) >>> 0]]);
      assert.equal(r.seen.filter((s) => s.opcode === 0x7f && s.fctype === 0x01).length, 1 + want, 'one Connect per queue');
    } finally {
      await r.close();
    }
  }
});

test('Async Event Configuration: namespace notices when OAES has them; ANA change only with ANA reporting; none with asyncEvents: false', T, async () => {
  const ns = await rig(model(), { identify: (b) => b.writeUInt32LE(((1 << 8) | (1 << 11) | (1 << 31)) >>> 0, 92) });
  try {
    assert.deepEqual(setFeatures(ns.seen).filter(([fid]) => fid === 0x0b), [[0x0b, 1 << 8]], 'only the namespace attribute notice (no ANA reporting)');
    await until(() => aers(ns.seen) >= 1, 'an AER posted');
    assert.equal(ns.ctrl.anaReporting, false);
    assert.equal(ns.ctrl.discoveryLogEventsSupported, true);
  } finally {
    await ns.close();
  }
  const off = await rig(model(), { identify: (b) => b.writeUInt32LE(1 << 8, 92) }, { asyncEvents: false });
  try {
    assert.deepEqual(setFeatures(off.seen).filter(([fid]) => fid === 0x0b), []);
    await turns(10);
    assert.equal(aers(off.seen), 0);
  } finally {
    await off.close();
  }
  const anaOnly = await rig(model(), { identify: (b) => b.writeUInt32LE(1 << 11, 92) });
  try {
    assert.deepEqual(setFeatures(anaOnly.seen).filter(([fid]) => fid === 0x0b), [], 'ANA change notices without ANA reporting: nothing to configure');
    await turns(10);
    assert.equal(aers(anaOnly.seen), 0);
  } finally {
    await anaOnly.close();
  }
});

test('discovery controller: log change notices configured and an AER posted only when asked and OAES bit 31 is set', T, async () => {
  const DISC = 'nqn.2014-08.org.nvmexpress.discovery';
  const m = model({ namespaces: new Map(), discovery: [] });
  const on = await rig(m, { identify: (b) => b.writeUInt32LE(0x80000000, 92) }, { discovery: true, subnqn: DISC, nrIoQueues: 0, discoveryLogEvents: true });
  try {
    assert.deepEqual(setFeatures(on.seen), [[0x0b, 0x80000000]]);
    await until(() => aers(on.seen) === 1, 'an AER posted');
    assert.equal(on.ctrl.namespaces.size, 0, 'no namespace scan for discovery');
    assert.equal(on.seen.some((s) => s.opcode === 0x06 && (s.sqe.readUInt32LE(40) & 0xff) === 2), false, 'no active namespace list read');
  } finally {
    await on.close();
  }
  const unsupported = await rig(m, {}, { discovery: true, subnqn: DISC, nrIoQueues: 0, discoveryLogEvents: true });
  try {
    assert.equal(unsupported.ctrl.discoveryLogEventsSupported, false);
    assert.deepEqual(setFeatures(unsupported.seen), []);
  } finally {
    await unsupported.close();
  }
  const notAsked = await rig(m, { identify: (b) => b.writeUInt32LE(0x80000000, 92) }, { discovery: true, subnqn: DISC, nrIoQueues: 0 });
  try {
    assert.deepEqual(setFeatures(notAsked.seen), []);
    await turns(10);
    assert.equal(aers(notAsked.seen), 0);
  } finally {
    await notAsked.close();
  }
});

test('MDTS counts in CAP.MPSMIN pages (2^(12+MPSMIN) · 2^MDTS), capped at the host maximum; MDTS 0 means the host maximum', T, async () => {
  for (const [mpsmin, mdts, want] of [[0, 1, 8192], [1, 2, 32768], [2, 1, 32768], [0, 0, HOST_MAX_TRANSFER], [1, 10, HOST_MAX_TRANSFER], [0, 8, HOST_MAX_TRANSFER]] as const) {
    const r = await rig(model({ mdts }), { mpsmin });
    try {
      assert.equal(r.ctrl.maxTransfer, want, `MPSMIN ${mpsmin} MDTS ${mdts}`);
      assert.equal(r.ctrl.cap.mpsmin, mpsmin);
    } finally {
      await r.close();
    }
  }
  assert.equal(HOST_MAX_TRANSFER, 1 << 20);
});

test('Identify-derived facts: CQT, TBKAS (CTRATT bit 6), ANA reporting (CMIC bit 3) off, volatile write cache, stats', T, async () => {
  const r = await rig(model({ vwc: false }), { identify: (b) => { b.writeUInt16LE(1234, 386); b.writeUInt32LE(1 << 6, 96); } });
  try {
    assert.equal(r.ctrl.commandQuiesceTimeMs, 1234);
    assert.equal(r.ctrl.trafficBasedKeepAlive, true);
    assert.equal(r.ctrl.anaReporting, false);
    assert.equal(r.ctrl.anaLog, undefined);
    assert.equal(r.ctrl.volatileWriteCache, false);
    const s = r.ctrl.stats();
    assert.equal(s.cntlid, 7);
    assert.equal(s.io.length, 1);
    assert.equal(typeof s.admin, 'object');
  } finally {
    await r.close();
  }
  const plain = await rig(model(), { identify: (b) => b.writeUInt32LE((1 << 6) - 1 | (1 << 7), 96) });
  try {
    assert.equal(plain.ctrl.commandQuiesceTimeMs, 0);
    assert.equal(plain.ctrl.trafficBasedKeepAlive, false);
    assert.equal(plain.ctrl.volatileWriteCache, true);
  } finally {
    await plain.close();
  }
});

/** Connect with mocked setTimeout/Date, stepping the clock exactly as the CSTS poll sleeps. */
async function connectMocked(t: TestContext, m: ControllerModel, p: Patches, o: Partial<ControllerOptions> = {}): Promise<{ target: FakeTarget; seen: Seen[]; result: ReturnType<typeof track<Controller>> }> {
  const { target, seen } = await patchedTarget(m, p);
  t.mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 0 });
  const result = track(Controller.connect({ ...BASE, trsvcid: target.port, nrIoQueues: 0, ...o }));
  result.promise.catch(() => undefined);
  return { target, seen, result };
}

test('CSTS.RDY polling: 5, 10, 20, 40, 80 then 100 ms apart; ENABLE_TIMEOUT at the CAP.TO budget (never below 500 ms)', T, async (t) => {
  for (const [capTo, budget, polls] of [[1, 500, 10], [0, 500, 10], [2, 1000, 15]] as const) {
    const { target, seen, result } = await connectMocked(t, model({ neverReady: true, capTo }), {});
    try {
      const sleeps: number[] = [];
      for (let i = 0; i < 40 && !result.done; i++) {
        await until(() => cstsReads(seen) > i || result.done, `CSTS read ${i + 1}`);
        if (result.done) break;
        await turns(5);
        if (result.done) break;
        const d = [5, 10, 20, 40, 80][i] ?? 100;
        sleeps.push(d);
        t.mock.timers.tick(d);
      }
      const e = await rejectsCode(result.promise, ErrorCode.ENABLE_TIMEOUT);
      assert.equal(e.message, `controller 7: CSTS.RDY not reached within ${budget} ms`);
      assert.equal(cstsReads(seen), polls, `CAP.TO ${capTo}: polls`);
    } finally {
      t.mock.timers.reset();
      await target.close();
    }
  }
});

test('CSTS.RDY reached after 35 ms: read at 0, 5, 15 and 35 ms, then bring-up goes on', T, async (t) => {
  const { target, seen, result } = await connectMocked(t, model({ readyDelayMs: 30 }), {});
  try {
    for (let i = 0; i < 3; i++) {
      await until(() => cstsReads(seen) > i, `CSTS read ${i + 1}`);
      await turns(5);
      assert.equal(result.done, false);
      t.mock.timers.tick([5, 10, 20][i] as number);
    }
    await until(() => result.done, 'connected');
    assert.equal(cstsReads(seen), 4);
    const c = await result.promise;
    t.mock.timers.reset();
    await c.close();
  } finally {
    t.mock.timers.reset();
    await target.close();
  }
});

test('CSTS.RDY never set but CFS set later: CONTROLLER_FATAL naming what was awaited', T, async (t) => {
  let reads = 0;
  const { target, seen, result } = await connectMocked(t, model({ neverReady: true }), { csts: (v) => (++reads >= 3 ? v | 2 : v) });
  try {
    for (let i = 0; i < 2; i++) {
      await until(() => cstsReads(seen) > i, `CSTS read ${i + 1}`);
      await turns(5);
      t.mock.timers.tick([5, 10][i] as number);
    }
    const e = await rejectsCode(result.promise, ErrorCode.CONTROLLER_FATAL);
    assert.equal(e.message, 'controller 7: CSTS.CFS set while waiting for CSTS.RDY');
  } finally {
    t.mock.timers.reset();
    await target.close();
  }
});

test('shutdown budget: RTD3E in ms rounded up (3 s), 5 s without RTD3E, at most 60 s; close() then gives up and closes', T, async (t) => {
  for (const [rtd3e, budget] of [[2_999_001, 3000], [0, 5000], [100_000_000, 60_000]] as const) {
    // SHST never reads "complete".
    const { target, seen } = await patchedTarget(model(), { identify: (b) => b.writeUInt32LE(rtd3e, 88), csts: (v) => v & ~0xc });
    try {
      const c = await Controller.connect({ ...BASE, trsvcid: target.port, nrIoQueues: 0 });
      const before = cstsReads(seen);
      t.mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 0 });
      const closed = track(c.close());
      let elapsed = 0;
      for (let i = 0; i < 1000 && !closed.done; i++) {
        await until(() => cstsReads(seen) - before > i || closed.done, `SHST poll ${i + 1}`);
        await turns(5);
        if (closed.done) break;
        const d = [5, 10, 20, 40, 80][i] ?? 100;
        if (elapsed + d > budget) {
          // One more step crosses the deadline: not given up before it.
          assert.equal(closed.done, false, `still waiting at ${elapsed} ms (budget ${budget})`);
        }
        elapsed += d;
        t.mock.timers.tick(d);
      }
      await until(() => closed.done, 'close() returned');
      assert.ok(elapsed >= budget, `gave up after ${elapsed} ms, budget ${budget}`);
      assert.ok(elapsed < budget + 200, `gave up after ${elapsed} ms, budget ${budget}`);
      assert.equal(c.alive, false);
    } finally {
      t.mock.timers.reset();
      await target.close();
    }
  }
});
