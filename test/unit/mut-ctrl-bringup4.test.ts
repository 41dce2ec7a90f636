/**
 * Mutation-audit pins (issue 15), fourth part, for the bring-up of src/controller/controller.ts:
 * the ANA log (size from NANAGRPID/NN/maxNamespaces, the Get Log Page fields, failures at
 * bring-up, refreshAnaLog), the asynchronous event dispatch (namespace, ANA, other notices,
 * no deadline), the Changed Namespace List, rescan coalescing, applyNamespaceChanges ordering,
 * no warning after the association ended, no AER posted during close(), and each enable CSTS
 * read's deadline. The rig: test/helpers/bringup-rig.ts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Controller } from '../../src/controller/controller';
import type { NamespaceChanges } from '../../src/controller/controller';
import { ErrorCode, NvmfNbdError } from '../../src/errors';
import { encodeAnaLog } from '../../src/wire';
import type { AnaLog } from '../../src/wire';
import { identifyNamespaceData } from '../helpers/fake-target';
import type { ControllerModel } from '../helpers/fake-target';
import { rejectsCode } from '../helpers/assert-code';
import { track, turns, until } from '../helpers/clock';
import {
  ANA_LOG, BASE, T, adminOf, aerRig, anaIdentify, anaTaker, answer, checkDeadlines, count, isAer, isLog, isProp, model, rig, spyPostAer, start,
} from '../helpers/bringup-rig';
import type { NsModel, Seen } from '../helpers/bringup-rig';

test('enable: each CSTS read may take max(1000 ms, the CAP.TO budget), not the I/O timeout', T, async (t) => {
  const ctrls: Controller[] = [];
  const orig = Controller.prototype.propertyGet;
  Controller.prototype.propertyGet = function propertyGet(this: Controller, ...a: Parameters<typeof orig>) {
    ctrls.push(this);
    return orig.apply(this, a);
  };
  t.after(() => { Controller.prototype.propertyGet = orig; });
  for (const [capTo, limit] of [[1, 1000], [4, 2000]] as const) {
    const r = await start(model({ capTo }), { take: (s) => isProp(s, 0x04, 0x1c) });
    try {
      t.mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 0 });
      const p = track(Controller.connect({ ...BASE, trsvcid: r.target.port, nrIoQueues: 0, ioTimeoutMs: 40 }));
      await until(() => r.taken.length === 1, 'CSTS read sent');
      const admin = adminOf(ctrls[ctrls.length - 1] as Controller);
      t.mock.timers.tick(limit - 1);
      checkDeadlines(admin);
      assert.equal(admin.connected, true, `CAP.TO ${capTo}: still waiting at ${limit - 1} ms`);
      t.mock.timers.tick(1);
      checkDeadlines(admin);
      assert.equal(admin.connected, false, `CAP.TO ${capTo}: timed out at ${limit} ms`);
      const e = await rejectsCode(p.promise, ErrorCode.TIMEOUT);
      assert.match(e.message, /^queue 0: command 0x7f \(cid \d+\) timed out$/);
    } finally {
      t.mock.timers.reset();
      await r.target.close();
    }
  }
});

test('ANA log at bring-up: read with RAE clear, NSID FFFFFFFFh, offset 0; parsed into anaLog; ANA change notices configured with namespace notices', T, async () => {
  const lengths: number[] = [];
  const r = await rig(model(), { identify: anaIdentify({ oaes: (1 << 8) | (1 << 11) }), take: anaTaker(() => encodeAnaLog(ANA_LOG), lengths) }, { nrIoQueues: 0 });
  try {
    assert.equal(r.ctrl.anaReporting, true);
    assert.deepEqual(r.ctrl.anaLog, ANA_LOG);
    const reads = r.seen.filter((s) => isLog(s, 0x0c));
    assert.equal(reads.length, 1);
    const sqe = reads[0]!.sqe;
    assert.equal(sqe.readUInt32LE(4), 0xffffffff, 'NSID');
    assert.equal(sqe.readUInt32LE(40) & 0x8000, 0, 'RAE clear');
    assert.equal((sqe.readUInt32LE(40) >>> 8) & 0x7f, 0, 'LSP 0');
    assert.equal(sqe.readUInt32LE(48), 0, 'offset');
    assert.deepEqual(lengths, [4096]);
    const aec = r.seen.filter((s) => s.qid === 0 && s.opcode === 0x09 && (s.sqe.readUInt32LE(40) & 0xff) === 0x0b).map((s) => s.sqe.readUInt32LE(44));
    assert.deepEqual(aec, [(1 << 8) | (1 << 11)]);
    await until(() => count(r.seen, isAer) === 1, 'AER posted');
  } finally {
    await r.close();
  }
});

test('ANA log size: header + 32 B per group (1..1024) + 4 B per NSID (NN, 1024 when 0, capped by maxNamespaces), at least 4 KiB', T, async () => {
  const cases: Array<[number, number, number | undefined, number]> = [
    [0, 0, undefined, 16 + 32 + 4 * 1024],
    [2000, 100, undefined, 16 + 32 * 1024 + 4 * 100],
    [1024, 1, undefined, 16 + 32 * 1024 + 4],
    [3, 10_000, undefined, 16 + 96 + 4 * 4096],
    [3, 10_000, 2000, 16 + 96 + 4 * 2000],
    [5, 0, 1000, 16 + 160 + 4 * 1000],
    [1, 4, undefined, 4096],
    [120, 200, undefined, 16 + 3840 + 800],
  ];
  for (const [nanagrpid, nn, maxNamespaces, want] of cases) {
    const lengths: number[] = [];
    const r = await rig(model(), { identify: anaIdentify({ nanagrpid, nn }), take: anaTaker(() => encodeAnaLog(ANA_LOG), lengths) }, { nrIoQueues: 0, maxNamespaces });
    try {
      assert.deepEqual(lengths, [want], `NANAGRPID ${nanagrpid} NN ${nn} max ${maxNamespaces}`);
    } finally {
      await r.close();
    }
  }
});

test('ANA log at bring-up: a malformed log or an error status is not fatal (anaLog stays undefined); a lost queue during the read is', T, async () => {
  for (const bad of [() => Buffer.from([1, 0, 0, 0, 0, 0, 0, 0, 5, 0]), () => 'status' as const]) {
    const r = await rig(model(), { identify: anaIdentify(), take: anaTaker(bad) }, { nrIoQueues: 1 });
    try {
      assert.equal(r.ctrl.anaLog, undefined);
      assert.equal(r.ctrl.alive, true);
      assert.equal(r.ctrl.ioQueueCount, 1);
    } finally {
      await r.close();
    }
  }
  const r = await start(model(), { identify: anaIdentify(), take: (s) => { if (isLog(s, 0x0c)) { s.c.socket.destroy(); return true; } return false; } });
  try {
    await rejectsCode(Controller.connect({ ...BASE, trsvcid: r.target.port, nrIoQueues: 0 }), ErrorCode.CONNECTION_CLOSED);
  } finally {
    await r.target.close();
  }
});

test('refreshAnaLog(): reads again, keeps and returns the new log and emits ana with it', T, async () => {
  let log: AnaLog = ANA_LOG;
  const r = await rig(model(), { identify: anaIdentify(), take: anaTaker(() => encodeAnaLog(log)) }, { nrIoQueues: 0 });
  try {
    const events: AnaLog[] = [];
    r.ctrl.on('ana', (l: AnaLog) => events.push(l));
    log = { chgcnt: 5n, groups: [{ grpid: 4, chgcnt: 1n, state: 0x03, nsids: [1] }] };
    const got = await r.ctrl.refreshAnaLog();
    assert.deepEqual(got, log);
    assert.deepEqual(r.ctrl.anaLog, log);
    assert.deepEqual(events, [log]);
  } finally {
    await r.close();
  }
});

test('AER: the aen event carries type, info and log page; notices we do not act on re-post the AER at once', T, async () => {
  const r = await aerRig(model(), { identify: (b) => b.writeUInt32LE(1 << 8, 92) });
  try {
    const aens: unknown[] = [];
    r.ctrl.on('aen', (e: unknown) => aens.push(e));
    const logsBefore = count(r.seen, (s) => s.opcode === 0x02);
    // type 1 (SMART) info 0, type 0 (error) info 0, notice info 5, ANA change without ANA reporting.
    for (const [i, dw0] of [0x00010001, 0x00020000, 0x00470502, 0x000c0302].entries()) {
      r.fire(dw0);
      await until(() => r.aers().length === i + 2, `AER re-posted after ${dw0.toString(16)}`);
    }
    assert.deepEqual(aens, [
      { type: 1, info: 0, lid: 1 }, { type: 0, info: 0, lid: 2 }, { type: 2, info: 5, lid: 0x47 }, { type: 2, info: 3, lid: 0x0c },
    ]);
    assert.equal(count(r.seen, (s) => s.opcode === 0x02), logsBefore, 'no log page read for any of them');
  } finally {
    await r.close();
  }
});

test('AER: an ANA change notice re-reads the ANA log, emits ana, then re-posts the AER; a bad log is a warning; a non-notice type with info 3 is not acted on', T, async () => {
  let log: AnaLog | 'bad' = ANA_LOG;
  const r = await aerRig(model(), {
    identify: anaIdentify({ oaes: 1 << 11 }),
    take: anaTaker(() => (log === 'bad' ? Buffer.from([0, 0, 0, 0, 0, 0, 0, 0, 9, 0]) : encodeAnaLog(log))),
  });
  try {
    const events: AnaLog[] = [];
    const warnings: NvmfNbdError[] = [];
    r.ctrl.on('ana', (l: AnaLog) => events.push(l));
    r.ctrl.on('warning', (e: NvmfNbdError) => warnings.push(e));
    const next: AnaLog = { chgcnt: 8n, groups: [{ grpid: 3, chgcnt: 0x78n, state: 0x04, nsids: [1] }] };
    log = next;
    r.fire(0x000c0302);
    await until(() => r.aers().length === 2, 'AER re-posted');
    assert.deepEqual(events, [next]);
    assert.deepEqual(r.ctrl.anaLog, next);
    const order = r.seen.filter((s) => isLog(s, 0x0c) || isAer(s)).map((s) => (isAer(s) ? 'aer' : 'log'));
    assert.deepEqual(order, ['log', 'aer', 'log', 'aer'], 'the log read before the next AER');
    log = 'bad';
    r.fire(0x000c0302);
    await until(() => r.aers().length === 3, 'AER re-posted after a bad log');
    assert.equal(warnings.length, 1);
    assert.equal(warnings[0]?.code, ErrorCode.ANA_LOG_INVALID);
    assert.deepEqual(r.ctrl.anaLog, next, 'kept');
    // Type 1 with info 3 is not an ANA change.
    const logs = count(r.seen, (s) => isLog(s, 0x0c));
    r.fire(0x000c0301);
    await until(() => r.aers().length === 4, 'AER re-posted');
    assert.equal(count(r.seen, (s) => isLog(s, 0x0c)), logs);
    assert.equal(events.length, 1);
  } finally {
    await r.close();
  }
});

test('AER: no deadline (an AER outstanding far past the I/O timeout keeps the association)', T, async (t) => {
  const r = await start(model(), { identify: (b) => b.writeUInt32LE(1 << 8, 92), take: isAer });
  try {
    t.mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 0 });
    const c = await Controller.connect({ ...BASE, trsvcid: r.target.port, nrIoQueues: 0, ioTimeoutMs: 40 });
    await until(() => r.taken.length === 1, 'AER posted');
    t.mock.timers.tick(600_000);
    checkDeadlines(adminOf(c));
    assert.equal(c.alive, true);
    t.mock.timers.reset();
    await c.close();
  } finally {
    t.mock.timers.reset();
    await r.target.close();
  }
});

test('namespace notice: Changed Namespace List read (LID 04h, 4 KiB, NSID FFFFFFFFh, RAE clear) before the next AER; only the listed namespaces are identified', T, async () => {
  const m: ControllerModel = model({ namespaces: new Map<number, NsModel>([[1, { data: Buffer.alloc(64 * 512), lbaSize: 512 }], [2, { data: Buffer.alloc(8 * 4096), lbaSize: 4096 }], [3, { data: Buffer.alloc(16 * 512), lbaSize: 512 }]]) });
  let list: number[] = [2];
  const r = await aerRig(m, {
    identify: (b) => b.writeUInt32LE(1 << 8, 92),
    take: (s) => {
      if (!isLog(s, 0x04)) return false;
      const b = Buffer.alloc(4096);
      list.forEach((n, i) => b.writeUInt32LE(n >>> 0, i * 4));
      answer(s, {}, b);
      return true;
    },
  });
  try {
    const changes: NamespaceChanges[] = [];
    r.ctrl.on('namespaces', (c: NamespaceChanges) => changes.push(c));
    m.namespaces.set(2, { data: Buffer.alloc(16 * 4096), lbaSize: 4096 });
    m.namespaces.set(3, { data: Buffer.alloc(32 * 512), lbaSize: 512 });
    const aens: unknown[] = [];
    r.ctrl.on('aen', (e: unknown) => aens.push(e));
    r.fire(0x00040002);
    await until(() => changes.length === 1, 'namespaces event');
    assert.deepEqual(aens, [{ type: 2, info: 0, lid: 4 }]);
    assert.deepEqual(changes[0], { added: [], removed: [], resized: [2] });
    const read = r.seen.find((s) => isLog(s, 0x04));
    assert.equal(read?.sqe.readUInt32LE(4), 0xffffffff);
    assert.equal((read?.sqe.readUInt32LE(40) ?? 0) & 0x8000, 0, 'RAE clear');
    assert.equal((read?.sqe.readUInt32LE(40) ?? 0) >>> 16, 1023, '4 KiB');
    const order = r.seen.filter((s) => isLog(s, 0x04) || isAer(s)).map((s) => (isAer(s) ? 'aer' : 'log'));
    assert.deepEqual(order.slice(0, 3), ['aer', 'log', 'aer']);
    // FFFFFFFFh first: more than 1024 changed, rescan everything (3 resized too).
    list = [0xffffffff];
    m.namespaces.set(1, { data: Buffer.alloc(32 * 512), lbaSize: 512 });
    r.fire(0x00040002);
    await until(() => changes.length === 2, 'second namespaces event');
    assert.deepEqual(changes[1], { added: [], removed: [], resized: [1, 3] });
    await until(() => r.aers().length === 3, 'AER re-posted');
    assert.equal(r.ctrl.pendingRescans, 0);
  } finally {
    await r.close();
  }
});

test('namespace notice: a failed Changed Namespace List read is a warning and the AER is re-posted anyway', T, async () => {
  const r = await aerRig(model(), {
    identify: (b) => b.writeUInt32LE(1 << 8, 92),
    take: (s) => {
      if (!isLog(s, 0x04)) return false;
      answer(s, { sc: 0x09 });
      return true;
    },
  });
  try {
    const warnings: NvmfNbdError[] = [];
    r.ctrl.on('warning', (e: NvmfNbdError) => warnings.push(e));
    r.fire(0x00040002);
    await until(() => r.aers().length === 2 && warnings.length === 1, 'AER re-posted and a warning');
    assert.equal(warnings[0]?.code, ErrorCode.NVME_STATUS);
    assert.equal(r.ctrl.alive, true);
  } finally {
    await r.close();
  }
});

test('namespace notices during a rescan: one runs, one waits with the union of the NSIDs; a full rescan absorbs lists; nothing after destroy', T, async () => {
  const m: ControllerModel = model({
    namespaces: new Map<number, NsModel>([1, 2, 3, 4, 5].map((n) => [n, { data: Buffer.alloc(8 * 512 * n), lbaSize: 512 }])),
  });
  const lists: number[][] = [];
  let holdIdentify = false;
  const r = await aerRig(m, {
    identify: (b) => b.writeUInt32LE(1 << 8, 92),
    take: (s) => {
      if (isLog(s, 0x04)) {
        const b = Buffer.alloc(4096);
        (lists.shift() ?? []).forEach((n, i) => b.writeUInt32LE(n >>> 0, i * 4));
        answer(s, {}, b);
        return true;
      }
      return holdIdentify && s.qid === 0 && s.opcode === 0x06 && (s.sqe.readUInt32LE(40) & 0xff) === 0;
    },
  });
  try {
    const identifies = (): number[] => r.seen.filter((s) => s.qid === 0 && s.opcode === 0x06 && (s.sqe.readUInt32LE(40) & 0xff) === 0).map((s) => s.sqe.readUInt32LE(4));
    const release = (): void => {
      for (const s of r.taken.filter((x) => x.opcode === 0x06 && !(x as { done?: boolean }).done)) {
        (s as { done?: boolean }).done = true;
        const ns = m.namespaces.get(s.sqe.readUInt32LE(4));
        if (ns === undefined) answer(s, { sc: 0x0b });
        else answer(s, {}, identifyNamespaceData(ns));
      }
    };
    const changes: NamespaceChanges[] = [];
    r.ctrl.on('namespaces', (c: NamespaceChanges) => changes.push(c));
    for (const n of [1, 2, 3, 4, 5]) m.namespaces.set(n, { data: Buffer.alloc(16 * 512 * n), lbaSize: 512 });
    const base = identifies().length;
    holdIdentify = true;
    lists.push([1]);
    r.fire(0x00040002);
    await until(() => identifies().length === base + 1, 'rescan 1 identifying');
    assert.equal(r.ctrl.pendingRescans, 1);
    lists.push([3]);
    r.fire(0x00040002);
    await until(() => r.aers().length === 3, 'second notice read');
    await turns(5);
    assert.equal(r.ctrl.pendingRescans, 2);
    lists.push([5, 2]);
    r.fire(0x00040002);
    await until(() => r.aers().length === 4, 'third notice read');
    await turns(5);
    assert.equal(r.ctrl.pendingRescans, 2, 'merged into the waiting one');
    holdIdentify = false;
    release();
    await until(() => changes.length === 2, 'two rescans');
    assert.deepEqual(changes, [{ added: [], removed: [], resized: [1] }, { added: [], removed: [], resized: [2, 3, 5] }]);
    assert.deepEqual(identifies().slice(base), [1, 2, 3, 5]);
    await until(() => r.ctrl.pendingRescans === 0, 'idle');
    // A full rescan pending absorbs a later list.
    for (const n of [1, 2, 3, 4, 5]) m.namespaces.set(n, { data: Buffer.alloc(32 * 512 * n), lbaSize: 512 });
    holdIdentify = true;
    lists.push([2]);
    r.fire(0x00040002);
    await until(() => identifies().length === base + 5, 'rescan 3 identifying');
    const merging: unknown[] = [];
    r.ctrl.on('warning', (e: unknown) => merging.push(e));
    lists.push([0xffffffff]);
    r.fire(0x00040002);
    await until(() => r.aers().length === 6, 'full-rescan notice read');
    lists.push([4]);
    r.fire(0x00040002);
    await until(() => r.aers().length === 7, 'list notice read');
    await turns(5);
    assert.equal(r.ctrl.pendingRescans, 2);
    holdIdentify = false;
    release();
    await until(() => changes.length === 4, 'two more rescans');
    assert.deepEqual(changes.slice(2), [{ added: [], removed: [], resized: [2] }, { added: [], removed: [], resized: [1, 3, 4, 5] }]);
    assert.deepEqual(merging, [], 'a list merged into a pending full rescan is no error');
    await until(() => r.ctrl.pendingRescans === 0, 'idle');
    // Destroyed with a rescan waiting: the waiting one never runs.
    holdIdentify = true;
    lists.push([1]);
    r.fire(0x00040002);
    await until(() => identifies().length === base + 11, 'rescan 5 identifying');
    lists.push([2]);
    r.fire(0x00040002);
    await until(() => r.aers().length === 9, 'notice read');
    await turns(5);
    assert.equal(r.ctrl.pendingRescans, 2);
    const warnings: unknown[] = [];
    r.ctrl.on('warning', (e: unknown) => warnings.push(e));
    let applied = 0;
    const apply = r.ctrl.applyNamespaceChanges.bind(r.ctrl);
    r.ctrl.applyNamespaceChanges = (ch?: readonly number[]) => { applied++; return apply(ch); };
    r.ctrl.destroy();
    await until(() => !(r.ctrl as unknown as { nsRunning: boolean }).nsRunning, 'the running rescan ended');
    assert.equal(applied, 0, 'the waiting rescan never started');
    assert.deepEqual(warnings, [], 'no warning for a lost association');
    await r.target.close();
  } catch (err) {
    await r.target.close();
    throw err;
  }
});

test('a lost association is not a warning: ANA log or Changed Namespace List read failing after destroy', T, async () => {
  let holdAna = false;
  const r = await aerRig(model(), {
    identify: anaIdentify({ oaes: (1 << 11) | (1 << 8) }),
    take: (s) => {
      if (isLog(s, 0x04)) return true; // never answered
      return anaTaker(() => (holdAna ? 'hold' : encodeAnaLog(ANA_LOG)))(s);
    },
  });
  try {
    const warnings: unknown[] = [];
    r.ctrl.on('warning', (e: unknown) => warnings.push(e));
    const posts = spyPostAer(r.ctrl);
    holdAna = true;
    r.fire(0x000c0302);
    await until(() => r.taken.filter((s) => isLog(s, 0x0c)).length === 2, 'ANA log read held');
    r.ctrl.destroy();
    await until(() => posts.calls === 1, 'the ANA notice chain ended');
    await turns(5);
    assert.deepEqual(warnings, []);
  } finally {
    await r.target.close();
  }
  const n = await aerRig(model(), { identify: (b) => b.writeUInt32LE(1 << 8, 92), take: (s) => isLog(s, 0x04) });
  try {
    const warnings: unknown[] = [];
    n.ctrl.on('warning', (e: unknown) => warnings.push(e));
    const posts = spyPostAer(n.ctrl);
    n.fire(0x00040002);
    await until(() => n.taken.some((s) => isLog(s, 0x04)), 'Changed Namespace List read held');
    n.ctrl.destroy();
    await until(() => posts.calls === 1, 'the namespace notice chain ended');
    await turns(5);
    assert.deepEqual(warnings, []);
    assert.equal(n.ctrl.pendingRescans, 0);
  } finally {
    await n.target.close();
  }
});

test('during close(): an ANA log answered after close() began posts no new AER', T, async () => {
  let holdCc = false;
  let holdAna = false;
  const m = model();
  const r = await aerRig(m, {
    identify: anaIdentify({ oaes: 1 << 11 }),
    take: (s) => (holdCc && isProp(s, 0x04, 0x14)) || anaTaker(() => (holdAna ? 'hold' : encodeAnaLog(ANA_LOG)))(s),
  });
  try {
    const posts = spyPostAer(r.ctrl);
    const events: unknown[] = [];
    r.ctrl.on('ana', (l: unknown) => events.push(l));
    holdAna = true;
    r.fire(0x000c0302);
    await until(() => r.taken.filter((s) => isLog(s, 0x0c)).length === 2, 'ANA log read held');
    holdCc = true;
    const closed = track(r.ctrl.close());
    await until(() => r.taken.some((s) => isProp(s, 0x04, 0x14)), 'shutdown CC read held');
    const log = r.taken.filter((s) => isLog(s, 0x0c))[1] as Seen;
    const len = (((log.sqe.readUInt32LE(40) >>> 16) | ((log.sqe.readUInt32LE(44) & 0xffff) << 16)) + 1) * 4;
    const data = Buffer.alloc(len);
    encodeAnaLog(ANA_LOG).copy(data);
    answer(log, {}, data);
    await until(() => posts.calls === 1 && events.length === 1, 'ANA notice handled');
    answer(r.taken.find((s) => isProp(s, 0x04, 0x14)) as Seen, { dw0: m.regs?.cc ?? 0 });
    await until(() => closed.done, 'closed');
    assert.equal(r.aers().length, 1, 'no AER after close() began');
    assert.equal(count(r.seen, isAer), 1);
  } finally {
    await r.target.close();
  }
});

test('applyNamespaceChanges: identified in NSID order however named; removed sorted whatever the map order; any single kind of change is an event', T, async () => {
  const ns = (blocks: number, lbaSize = 512): NsModel => ({ data: Buffer.alloc(blocks * lbaSize), lbaSize });
  const m = model({ namespaces: new Map<number, NsModel>([[1, ns(8)], [2, ns(16)], [4, ns(24)], [6, ns(32)]]) });
  const r = await rig(m, {}, { nrIoQueues: 0 });
  try {
    const events: NamespaceChanges[] = [];
    r.ctrl.on('namespaces', (c: NamespaceChanges) => events.push(c));
    const identified = (from: number): number[] => r.seen.slice(from).filter((s) => s.qid === 0 && s.opcode === 0x06 && (s.sqe.readUInt32LE(40) & 0xff) === 0).map((s) => s.sqe.readUInt32LE(4));
    for (const n of [1, 4, 6]) m.namespaces.set(n, ns(40 + n));
    let before = r.seen.length;
    assert.deepEqual(await r.ctrl.applyNamespaceChanges([6, 1, 4]), { added: [], removed: [], resized: [1, 4, 6] });
    assert.deepEqual(identified(before), [1, 4, 6]);
    // Only resized: an event.
    assert.equal(events.length, 1);
    m.namespaces.set(5, ns(5));
    m.namespaces.set(3, ns(3));
    before = r.seen.length;
    assert.deepEqual(await r.ctrl.applyNamespaceChanges([]), { added: [3, 5], removed: [], resized: [] });
    assert.deepEqual(identified(before), [3, 5]);
    assert.equal(events.length, 2);
    // 6 comes before 3 in the map (3 was added later): removed is still sorted.
    m.namespaces.delete(6);
    m.namespaces.delete(3);
    assert.deepEqual(await r.ctrl.applyNamespaceChanges([]), { added: [], removed: [3, 6], resized: [] });
    assert.equal(events.length, 3);
    // One added and one removed.
    m.namespaces.set(7, ns(7));
    m.namespaces.delete(2);
    assert.deepEqual(await r.ctrl.applyNamespaceChanges([]), { added: [7], removed: [2], resized: [] });
    assert.equal(events.length, 4);
    assert.deepEqual(events[3], { added: [7], removed: [2], resized: [] });
    assert.deepEqual([...r.ctrl.namespaces.keys()].sort((a, b) => a - b), [1, 4, 5, 7]);
  } finally {
    await r.close();
  }
});

test('a rescan failing while alive is a warning; on an ANA-reporting controller namespace and other notices are not ANA changes', T, async () => {
  let failIdentify = false;
  const r = await aerRig(model(), {
    identify: anaIdentify({ oaes: (1 << 8) | (1 << 11) }),
    take: (s) => {
      if (isLog(s, 0x04)) {
        const b = Buffer.alloc(4096);
        b.writeUInt32LE(1, 0);
        answer(s, {}, b);
        return true;
      }
      if (failIdentify && s.qid === 0 && s.opcode === 0x06 && (s.sqe.readUInt32LE(40) & 0xff) === 0) {
        answer(s, { sc: 0x02 });
        return true;
      }
      return anaTaker(() => encodeAnaLog(ANA_LOG))(s);
    },
  });
  try {
    const warnings: NvmfNbdError[] = [];
    r.ctrl.on('warning', (e: NvmfNbdError) => warnings.push(e));
    const anaReads = count(r.seen, (s) => isLog(s, 0x0c));
    failIdentify = true;
    r.fire(0x00040002);
    await until(() => warnings.length === 1, 'rescan warning');
    assert.equal(warnings[0]?.code, ErrorCode.NVME_STATUS);
    await until(() => r.ctrl.pendingRescans === 0 && r.aers().length === 2, 'idle, AER re-posted');
    r.fire(0x00470502);
    await until(() => r.aers().length === 3, 'AER re-posted');
    assert.equal(count(r.seen, (s) => isLog(s, 0x0c)), anaReads, 'no ANA log read for a namespace or other notice');
    assert.equal(count(r.seen, (s) => isLog(s, 0x04)), 1);
  } finally {
    await r.close();
  }
});
