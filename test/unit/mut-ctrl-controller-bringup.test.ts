/**
 * Mutation tests (issue 15 item 2) of the bring-up and namespace handling of
 * src/controller/controller.ts: host ID checks, CAP / VS / CC, an already enabled controller,
 * CSTS.CFS, the I/O queue count, size and in-capsule limit, namespace capping and rescans
 * (added / removed / resized), shutdown and destroy, against the scripted controller of
 * test/helpers/fake-target.ts with every command it received recorded.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Controller } from '../../src/controller/controller';
import type { ControllerOptions, NamespaceChanges } from '../../src/controller/controller';
import { ErrorCode, NvmfNbdError } from '../../src/errors';
import { FakeTarget, serveController } from '../helpers/fake-target';
import type { ControllerModel, FakeConn } from '../helpers/fake-target';
import { rejectsCode } from '../helpers/assert-code';
import type { QueuePair } from '../../src/transport/queue-pair';

const T = { timeout: 20_000 };

/** A command the target received: queue, opcode, fctype (Fabrics), raw SQE and capsule data. */
interface Seen { qid: number; opcode: number; fctype: number; sqe: Buffer; data: Buffer | undefined }

type NsModel = { data: Buffer; lbaSize: number; ms?: number; dps?: number };

function model(o: Partial<ControllerModel> = {}): ControllerModel {
  return {
    namespaces: new Map<number, NsModel>([
      [1, { data: Buffer.alloc(64 * 512), lbaSize: 512 }],
      [2, { data: Buffer.alloc(8 * 4096), lbaSize: 4096 }],
      [4, { data: Buffer.alloc(32 * 512), lbaSize: 512 }],
      [6, { data: Buffer.alloc(16 * 4096), lbaSize: 4096 }],
    ]),
    ...o,
  };
}

const BASE: Omit<ControllerOptions, 'trsvcid'> = {
  traddr: '127.0.0.1', subnqn: 'nqn.2024-01.io.test:mut-up', hostnqn: 'nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-00000000000b',
  hostid: '00000000-0000-0000-0000-00000000000b', nrIoQueues: 2, queueSize: 16, kato: 0, connectTimeoutMs: 5000, ioTimeoutMs: 8000,
};

async function target(m: ControllerModel): Promise<{ target: FakeTarget; seen: Seen[] }> {
  const seen: Seen[] = [];
  const t = await FakeTarget.start((c: FakeConn) => {
    const next = c.nextPdu.bind(c);
    c.nextPdu = async () => {
      const p = await next();
      if (p !== undefined && p.type === 0x04) {
        const sqe = Buffer.from(p.sqe);
        seen.push({ qid: sqe[0] === 0x7f && sqe[4] === 0x01 ? sqe.readUInt16LE(40) : c.qid, opcode: sqe[0] as number, fctype: sqe[4] as number, sqe, data: p.data === undefined ? undefined : Buffer.from(p.data) });
      }
      return p;
    };
    return serveController(c, m);
  });
  return { target: t, seen };
}

async function rig(m: ControllerModel, o: Partial<ControllerOptions> = {}): Promise<{ target: FakeTarget; ctrl: Controller; seen: Seen[]; close(): Promise<void> }> {
  const { target: t, seen } = await target(m);
  try {
    const ctrl = await Controller.connect({ ...BASE, trsvcid: t.port, ...o });
    return { target: t, ctrl, seen, close: async () => { await ctrl.close(); await t.close(); } };
  } catch (err) {
    await t.close();
    throw err;
  }
}

const ioQueues = (c: Controller): QueuePair[] => (c as unknown as { ioQueues: QueuePair[] }).ioQueues;
/** Fabrics Property Set / Get commands: [fctype, offset, value]. */
const props = (seen: Seen[]): Array<[number, number, number]> =>
  seen.filter((s) => s.opcode === 0x7f && (s.fctype === 0x00 || s.fctype === 0x04)).map((s) => [s.fctype, s.sqe.readUInt32LE(44), s.fctype === 0 ? Number(s.sqe.readBigUInt64LE(48) & 0xffffffffn) : -1]);

test('host ID: 16 bytes or a UUID (dashes optional, any case); anything else INVALID_ARGUMENT before connecting', T, async () => {
  const { target: t, seen } = await target(model());
  try {
    const short = await rejectsCode(Controller.connect({ ...BASE, trsvcid: t.port, hostid: Buffer.alloc(15) }), ErrorCode.INVALID_ARGUMENT);
    assert.equal(short.message, 'host ID must be 16 bytes, got 15');
    const bad = await rejectsCode(Controller.connect({ ...BASE, trsvcid: t.port, hostid: '0000000-0000-0000-0000-00000000000g' }), ErrorCode.INVALID_ARGUMENT);
    assert.equal(bad.message, "host ID '0000000-0000-0000-0000-00000000000g' is not a UUID");
    const lead = await rejectsCode(Controller.connect({ ...BASE, trsvcid: t.port, hostid: 'x00000000000000000000000000000000' }), ErrorCode.INVALID_ARGUMENT);
    assert.equal(lead.message, "host ID 'x00000000000000000000000000000000' is not a UUID", 'refused by the UUID check, not a later length check');
    await rejectsCode(Controller.connect({ ...BASE, trsvcid: t.port, hostid: '00000000000000000000000000000000x' }), ErrorCode.INVALID_ARGUMENT);
    assert.equal(seen.length, 0, 'nothing sent');
    for (const hostid of [Buffer.from('0123456789abcdef0123456789ABCDEF', 'hex'), '0123456789ABCDEF0123456789abcdef', '01234567-89ab-cdef-0123-456789abcdef']) {
      const before: number = seen.length;
      const c: Controller = await Controller.connect({ ...BASE, trsvcid: t.port, hostid, nrIoQueues: 0 });
      await c.close();
      const connect: Seen | undefined = seen.slice(before).find((s) => s.opcode === 0x7f && s.fctype === 0x01);
      assert.equal(connect?.data?.subarray(0, 16).toString('hex'), '0123456789abcdef0123456789abcdef');
    }
  } finally {
    await t.close();
  }
});

test('bring-up: CAP fields and VS kept, CC written with MPS/IOSQES/IOCQES/EN, CAP read 8 bytes, the rest 4', T, async () => {
  const r = await rig(model({ mqes: 30, capTo: 3 }));
  try {
    assert.deepEqual(r.ctrl.cap, { mqes: 30, to: 3, mpsmin: 0, css: 1 });
    assert.equal(r.ctrl.version, 0x00020000);
    const p = props(r.seen);
    assert.deepEqual(p.slice(0, 4), [[4, 0x00, -1], [4, 0x08, -1], [4, 0x14, -1], [0, 0x14, (4 << 20) | (6 << 16) | 1]]);
    const attrib = r.seen.filter((s) => s.opcode === 0x7f && s.fctype === 0x04).map((s) => s.sqe[40]);
    assert.equal(attrib[0], 1, 'CAP: 8 bytes');
    assert.ok(attrib.slice(1).every((a) => a === 0), 'VS, CC, CSTS: 4 bytes');
    assert.equal(r.ctrl.alive, true);
    assert.equal((r.ctrl as unknown as { kaTimer: unknown }).kaTimer, undefined, 'KATO 0: no keep-alive timer');
  } finally {
    await r.close();
  }
});

test('bring-up on an already enabled controller writes no CC; CSTS.CFS set → CONTROLLER_FATAL', T, async () => {
  const enabled = await rig(model({ regs: { cc: 1, csts: 1 } }), { nrIoQueues: 0 });
  try {
    assert.deepEqual(props(enabled.seen).filter((p) => p[0] === 0), []);
    assert.equal(enabled.seen.filter((s) => s.opcode === 0x7f && s.fctype === 0x04 && s.sqe.readUInt32LE(44) === 0x1c).length, 0, 'no CSTS poll');
  } finally {
    await enabled.close();
  }
  const { target: t } = await target(model({ regs: { cc: 0, csts: 2 }, neverReady: true }));
  try {
    const e = await rejectsCode(Controller.connect({ ...BASE, trsvcid: t.port }), ErrorCode.CONTROLLER_FATAL);
    assert.equal(e.message, 'controller 7: CSTS.CFS set while waiting for CSTS.RDY');
  } finally {
    await t.close();
  }
});

test('I/O queues: Number of Queues asks for the count (0-based, both halves), queue size capped by MQES+1, at least 2', T, async () => {
  const a = await rig(model({ mqes: 7 }), { nrIoQueues: 3, queueSize: 64 });
  try {
    const nq = a.seen.find((s) => s.qid === 0 && s.opcode === 0x09);
    assert.equal(nq?.sqe.readUInt32LE(40), 0x07, 'FID Number of Queues');
    assert.equal(nq?.sqe.readUInt32LE(44), 0x00020002);
    assert.equal(a.ctrl.ioQueueCount, 3);
    assert.deepEqual(ioQueues(a.ctrl).map((q) => [q.qid, q.queueSize]), [[1, 8], [2, 8], [3, 8]]);
  } finally {
    await a.close();
  }
  const b = await rig(model({ mqes: 127 }), { nrIoQueues: 1, queueSize: 1 });
  try {
    assert.deepEqual(ioQueues(b.ctrl).map((q) => q.queueSize), [2]);
  } finally {
    await b.close();
  }
  const c = await rig(model({ mqes: 127 }), { nrIoQueues: 1, queueSize: undefined });
  try {
    assert.deepEqual(ioQueues(c.ctrl).map((q) => q.queueSize), [128], 'default 128');
  } finally {
    await c.close();
  }
  const none = await rig(model(), { nrIoQueues: 0 });
  try {
    assert.equal(none.ctrl.ioQueueCount, 0);
    assert.equal(none.seen.filter((s) => s.opcode === 0x09).length, 0, 'no Number of Queues for 0');
  } finally {
    await none.close();
  }
});

test('in-capsule writes up to IOCCSZ·16 − 64 bytes; IOCCSZ 4 (the SQE only) means none', T, async () => {
  const a = await rig(model({ ioccsz: 36 }), { nrIoQueues: 1 });
  try {
    await a.ctrl.write(1, 0n, Buffer.alloc(512, 1));
    await a.ctrl.write(1, 1n, Buffer.alloc(1024, 2));
    const w = a.seen.filter((s) => s.qid === 1 && s.opcode === 0x01);
    assert.deepEqual(w.map((s) => s.data?.length), [512, undefined]);
  } finally {
    await a.close();
  }
  for (const ioccsz of [4, 5]) {
    const b = await rig(model({ ioccsz }), { nrIoQueues: 1 });
    try {
      await b.ctrl.write(1, 0n, Buffer.alloc(512, 3));
      const w = b.seen.filter((s) => s.qid === 1 && s.opcode === 0x01);
      assert.deepEqual(w.map((s) => s.data?.length), [undefined], `IOCCSZ ${ioccsz}`);
    } finally {
      await b.close();
    }
  }
});

test('maxNamespaces: the lowest NSIDs are served, the rest counted; one warning per change of the count', T, async () => {
  const { target: t } = await target(model());
  try {
    const warnings: NvmfNbdError[] = [];
    const ctrl = await Controller.connect({ ...BASE, trsvcid: t.port, maxNamespaces: 2, nrIoQueues: 0 });
    ctrl.on('warning', (e: NvmfNbdError) => warnings.push(e));
    try {
      assert.deepEqual([...ctrl.namespaces.keys()], [1, 2]);
      assert.equal(ctrl.namespacesOverLimit, 2);
      await ctrl.rescanNamespaces();
      assert.equal(warnings.length, 0, 'same count: no new warning');
      assert.deepEqual([...ctrl.namespaces.keys()], [1, 2]);
    } finally {
      await ctrl.close();
    }
    const w: NvmfNbdError[] = [];
    const c3 = await Controller.connect({ ...BASE, trsvcid: t.port, maxNamespaces: 3, nrIoQueues: 0 });
    await c3.close();
    const c4 = await Controller.connect({ ...BASE, trsvcid: t.port, maxNamespaces: 4, nrIoQueues: 0 });
    try {
      assert.equal(c4.namespacesOverLimit, 0);
      assert.deepEqual([...c4.namespaces.keys()], [1, 2, 4, 6]);
      c4.on('warning', (e: NvmfNbdError) => w.push(e));
      await c4.rescanNamespaces();
      assert.equal(w.length, 0);
    } finally {
      await c4.close();
    }
    assert.equal(c3.namespacesOverLimit, 1);
    assert.deepEqual([...c3.namespaces.keys()], [1, 2, 4]);
  } finally {
    await t.close();
  }
});

test('maxNamespaces warning: TOO_MANY_NAMESPACES naming the count, the limit and the skipped NSIDs', T, async () => {
  const m = model();
  const r = await rig(m, { maxNamespaces: 4, nrIoQueues: 0 });
  try {
    const warnings: NvmfNbdError[] = [];
    r.ctrl.on('warning', (e: NvmfNbdError) => warnings.push(e));
    m.namespaces.set(9, { data: Buffer.alloc(4096), lbaSize: 512 });
    m.namespaces.set(12, { data: Buffer.alloc(4096), lbaSize: 512 });
    await r.ctrl.rescanNamespaces();
    assert.equal(warnings.length, 1);
    assert.equal(warnings[0]?.code, ErrorCode.TOO_MANY_NAMESPACES);
    assert.equal(warnings[0]?.message, 'controller nqn.2024-01.io.test:mut-up: 6 active namespaces, serving the first 4; NSIDs 9..12 skipped (raise --max-namespaces)');
    assert.equal(r.ctrl.namespacesOverLimit, 2);
    await r.ctrl.rescanNamespaces();
    assert.equal(warnings.length, 1);
    m.namespaces.delete(12);
    const ch = await r.ctrl.applyNamespaceChanges();
    assert.equal(warnings.length, 2, 'the count changed');
    assert.equal(r.ctrl.namespacesOverLimit, 1);
    assert.deepEqual(ch, { added: [], removed: [], resized: [] });
  } finally {
    await r.close();
  }
});

test('applyNamespaceChanges: added, removed (sorted), resized by size or block size; one event, none when nothing changed', T, async () => {
  const m = model();
  const r = await rig(m, { nrIoQueues: 0 });
  try {
    const events: NamespaceChanges[] = [];
    r.ctrl.on('namespaces', (c: NamespaceChanges) => events.push(c));
    assert.deepEqual(await r.ctrl.applyNamespaceChanges(), { added: [], removed: [], resized: [] });
    assert.equal(events.length, 0);
    m.namespaces.delete(6);
    m.namespaces.delete(2);
    m.namespaces.set(5, { data: Buffer.alloc(4096), lbaSize: 512 });
    m.namespaces.set(3, { data: Buffer.alloc(8192), lbaSize: 512 });
    m.namespaces.set(1, { data: Buffer.alloc(128 * 512), lbaSize: 512 }); // bigger
    m.namespaces.set(4, { data: Buffer.alloc(32 * 512), lbaSize: 4096 }); // other block size
    const before = r.seen.length;
    const ch = await r.ctrl.applyNamespaceChanges();
    assert.deepEqual(ch, { added: [3, 5], removed: [2, 6], resized: [1, 4] });
    assert.equal(events.length, 1);
    assert.deepEqual(events[0], ch);
    assert.deepEqual([...r.ctrl.namespaces.keys()].sort((a, b) => a - b), [1, 3, 4, 5]);
    assert.equal(r.ctrl.namespaces.get(1)?.nsze, 128n);
    assert.equal(r.ctrl.namespaces.get(4)?.lbaSize, 4096);
    const identified = r.seen.slice(before).filter((s) => s.opcode === 0x06 && s.sqe[40] === 0).map((s) => s.sqe.readUInt32LE(4));
    assert.deepEqual(identified, [1, 3, 4, 5], 'every active one, in order');
  } finally {
    await r.close();
  }
});

test('applyNamespaceChanges(changed): identifies the named active ones and new ones only', T, async () => {
  const m = model();
  const r = await rig(m, { nrIoQueues: 0 });
  try {
    m.namespaces.set(1, { data: Buffer.alloc(32 * 512), lbaSize: 512 });
    m.namespaces.set(6, { data: Buffer.alloc(4 * 4096), lbaSize: 4096 });
    m.namespaces.set(8, { data: Buffer.alloc(4096), lbaSize: 512 });
    m.namespaces.delete(2);
    const before = r.seen.length;
    // 2 is gone (named but inactive: not identified), 6 resized but not named: not noticed.
    const ch = await r.ctrl.applyNamespaceChanges([2, 1, 99]);
    assert.deepEqual(ch, { added: [8], removed: [2], resized: [1] });
    const identified = r.seen.slice(before).filter((s) => s.opcode === 0x06 && s.sqe[40] === 0).map((s) => s.sqe.readUInt32LE(4));
    assert.deepEqual(identified, [1, 8]);
    assert.equal(r.ctrl.namespaces.get(6)?.nsze, 16n, 'not re-identified');
  } finally {
    await r.close();
  }
});

test('close(): CC.SHN = 01b keeping the other CC bits, then CSTS.SHST polled; not alive; a second close does nothing', T, async () => {
  const m = model();
  const r = await rig(m, { nrIoQueues: 1 });
  const closes: Array<NvmfNbdError | undefined> = [];
  r.ctrl.on('close', (e?: NvmfNbdError) => closes.push(e));
  const before = r.seen.length;
  await r.ctrl.close();
  assert.equal(r.ctrl.alive, false);
  const p = props(r.seen.slice(before));
  assert.deepEqual(p.slice(0, 2), [[4, 0x14, -1], [0, 0x14, (4 << 20) | (6 << 16) | (1 << 14) | 1]]);
  assert.deepEqual(p[2]?.slice(0, 2), [4, 0x1c]);
  assert.equal((m.regs?.csts ?? 0) >>> 2 & 3, 2);
  assert.deepEqual(closes, [undefined]);
  const n = r.seen.length;
  await r.ctrl.close();
  r.ctrl.destroy(new NvmfNbdError(ErrorCode.CONTROLLER_LOST, 'late'));
  assert.equal(r.seen.length, n);
  assert.deepEqual(closes, [undefined]);
  await r.ctrl.whenClosed();
  await r.target.close();
});

test('close() of a discovery controller sends no shutdown; destroy(err) emits error then close(err) once', T, async () => {
  const d = await rig(model(), { discovery: true, subnqn: 'nqn.2014-08.org.nvmexpress.discovery' });
  try {
    assert.equal(d.ctrl.ioQueueCount, 0);
    assert.equal(d.ctrl.namespaces.size, 0, 'no namespace scan');
    const before = d.seen.length;
    await d.ctrl.close();
    assert.equal(d.seen.length, before);
  } finally {
    await d.target.close();
  }
  const r = await rig(model(), { nrIoQueues: 1 });
  try {
    const got: string[] = [];
    const err = new NvmfNbdError(ErrorCode.CONTROLLER_LOST, 'gone');
    r.ctrl.on('error', (e: NvmfNbdError) => got.push(`error:${e.message}`));
    r.ctrl.on('close', (e?: NvmfNbdError) => got.push(`close:${e?.message}`));
    const before = r.seen.length;
    r.ctrl.destroy(err);
    r.ctrl.destroy(err);
    assert.deepEqual(got, ['error:gone', 'close:gone']);
    assert.equal(r.ctrl.alive, false);
    await r.ctrl.close();
    assert.equal(r.seen.length, before, 'no shutdown after destroy');
    await r.ctrl.whenClosed();
    await rejectsCode(r.ctrl.propertyGet(0, false), ErrorCode.CONNECTION_CLOSED);
  } finally {
    await r.target.close();
  }
});

test('destroy without an error listener does not throw; a lost queue is CONTROLLER_LOST naming it', T, async () => {
  const r = await rig(model(), { nrIoQueues: 1 });
  try {
    r.ctrl.destroy(new NvmfNbdError(ErrorCode.CONTROLLER_LOST, 'no listener'));
    assert.equal(r.ctrl.alive, false);
  } finally {
    await r.target.close();
  }
  const s = await rig(model(), { nrIoQueues: 2 });
  try {
    const closed = new Promise<NvmfNbdError | undefined>((res) => s.ctrl.once('close', res));
    s.ctrl.on('error', () => undefined);
    ioQueues(s.ctrl)[1]?.destroy();
    const e = await closed;
    assert.equal(e?.code, ErrorCode.CONTROLLER_LOST);
    assert.match(e?.message ?? '', /^controller 7: queue 2 lost: /);
  } finally {
    await s.target.close();
  }
});

test('keep-alive timer: started for KATO > 0 (default 5000 for an I/O controller), none for discovery by default', T, async () => {
  const timer = (c: Controller): unknown => (c as unknown as { kaTimer: unknown }).kaTimer;
  const a = await rig(model(), { nrIoQueues: 0, kato: undefined });
  try {
    assert.notEqual(timer(a.ctrl), undefined);
    const kato = a.seen.find((s) => s.opcode === 0x7f && s.fctype === 0x01 && s.qid === 0);
    assert.equal(kato?.sqe.readUInt32LE(48), 5000, 'Connect KATO');
  } finally {
    await a.close();
  }
  const d = await rig(model(), { discovery: true, kato: undefined, subnqn: 'nqn.2014-08.org.nvmexpress.discovery' });
  try {
    assert.equal(timer(d.ctrl), undefined);
    const kato = d.seen.find((s) => s.opcode === 0x7f && s.fctype === 0x01 && s.qid === 0);
    assert.equal(kato?.sqe.readUInt32LE(48), 0);
  } finally {
    await d.close();
  }
});
