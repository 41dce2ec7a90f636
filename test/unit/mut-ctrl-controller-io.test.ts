/**
 * Mutation tests (issue 15 item 2) of the I/O path of src/controller/controller.ts: submitIo
 * (its refusals, flush, an unsplit command, the MDTS split into part records with eager and lazy
 * read destinations), the parts' completion and error hand-off, the queue choice, the promise API
 * (read / write / flush / deallocate / writeZeroes) and the small getters, against the scripted
 * controller of test/helpers/fake-target.ts with every command the target received recorded.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Controller, MAX_NLB } from '../../src/controller/controller';
import type { ControllerOptions } from '../../src/controller/controller';
import { IoRequest, type IoOwner } from '../../src/controller/io-request';
import { BlockOpCode } from '../../src/block/types';
import { ErrorCode, NvmfNbdError } from '../../src/errors';
import { FakeTarget, serveController } from '../helpers/fake-target';
import type { ControllerModel, FakeConn } from '../helpers/fake-target';
import { rejectsCode } from '../helpers/assert-code';
import { until } from '../helpers/clock';

const T = { timeout: 20_000 };

/** One command the target received: its queue, opcode, NSID, SLBA, NLB (1-based), FUA, raw SQE and capsule data. */
interface Seen { qid: number; opcode: number; nsid: number; slba: number; nlb: number; fua: boolean; sqe: Buffer; data: Buffer | undefined }

/** Each block `b` of a namespace of `blocks` × `lba` bytes filled with bytes telling its nsid, block and position. */
function pattern(nsid: number, lba: number, blocks: number): Buffer {
  const b = Buffer.alloc(lba * blocks);
  for (let i = 0; i < b.length; i++) b[i] = (nsid * 31 + Math.floor(i / lba) * 7 + (i % lba)) & 0xff;
  return b;
}

interface Rig {
  target: FakeTarget;
  ctrl: Controller;
  m: ControllerModel;
  seen: Seen[];
  /** I/O commands (qid > 0) received so far. */
  io(): Seen[];
  /** While set, the I/O queue with this qid holds (does not read) its next commands. */
  hold: { qid: number; release: () => void } | undefined;
  close(): Promise<void>;
}

async function rig(m: ControllerModel, o: Partial<ControllerOptions> = {}, holdQid?: number): Promise<Rig> {
  const seen: Seen[] = [];
  const r = { seen, hold: undefined } as unknown as Rig;
  let gate: Promise<void> | undefined;
  if (holdQid !== undefined) {
    let release!: () => void;
    gate = new Promise<void>((res) => { release = res; });
    r.hold = { qid: holdQid, release };
  }
  const target = await FakeTarget.start((c: FakeConn) => {
    const next = c.nextPdu.bind(c);
    c.nextPdu = async () => {
      // The Connect sets c.qid after the first command: hold only later commands of that queue.
      if (gate !== undefined && c.qid === holdQid) await gate;
      const p = await next();
      if (p !== undefined && p.type === 0x04 && p.sqe[0] !== 0x7f) {
        const sqe = Buffer.from(p.sqe);
        const cdw12 = sqe.readUInt32LE(48);
        seen.push({
          qid: c.qid, opcode: sqe[0] as number, nsid: sqe.readUInt32LE(4), slba: Number(sqe.readBigUInt64LE(40)),
          nlb: (cdw12 & 0xffff) + 1, fua: (cdw12 & (1 << 30)) !== 0, sqe, data: p.data === undefined ? undefined : Buffer.from(p.data),
        });
      }
      return p;
    };
    return serveController(c, m);
  });
  try {
    const ctrl = await Controller.connect({
      traddr: '127.0.0.1', trsvcid: target.port, subnqn: 'nqn.2024-01.io.test:mut-io', hostnqn: 'nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-00000000000a',
      hostid: '00000000-0000-0000-0000-00000000000a', nrIoQueues: 2, queueSize: 16, kato: 0, connectTimeoutMs: 5000, ioTimeoutMs: 8000, ...o,
    });
    Object.assign(r, {
      target, ctrl, m,
      io: () => seen.filter((s) => s.qid > 0),
      close: async () => { r.hold?.release(); await ctrl.close(); await target.close(); },
    });
    return r;
  } catch (err) {
    await target.close();
    throw err;
  }
}

/** NS 1: 512-byte blocks (64 blocks), NS 2: 4 KiB (16 blocks), NS 3: metadata (unusable), NS 4: 16 KiB blocks (4). MDTS 1 → 8 KiB. */
function model(o: Partial<ControllerModel> = {}): ControllerModel {
  return {
    namespaces: new Map([
      [1, { data: pattern(1, 512, 64), lbaSize: 512 }],
      [2, { data: pattern(2, 4096, 16), lbaSize: 4096 }],
      [3, { data: Buffer.alloc(8192), lbaSize: 512, ms: 8 }],
      [4, { data: pattern(4, 16384, 4), lbaSize: 16384 }],
    ]),
    mdts: 1,
    ...o,
  };
}

/** An owner recording completions, resolving `done` at the first. */
function owner(): IoOwner & { calls: Array<{ req: IoRequest; err: NvmfNbdError | undefined }>; done: Promise<void> } {
  let fire!: () => void;
  const calls: Array<{ req: IoRequest; err: NvmfNbdError | undefined }> = [];
  const done = new Promise<void>((res) => { fire = res; });
  return { calls, done, onIoDone: (req, err) => { calls.push({ req, err }); fire(); } };
}

function record(o: Partial<IoRequest>): IoRequest {
  return Object.assign(new IoRequest(), o);
}

/** Submit `req` through submitIo; the completion must not come synchronously. */
async function submit(ctrl: Controller, req: IoRequest): Promise<NvmfNbdError | undefined> {
  const o = owner();
  req.owner = o;
  ctrl.submitIo(req);
  assert.equal(o.calls.length, 0, 'submitIo never completes synchronously');
  await o.done;
  await new Promise<void>((r) => setImmediate(r));
  assert.equal(o.calls.length, 1, 'completes exactly once');
  assert.equal(o.calls[0]?.req, req);
  return o.calls[0]?.err;
}

test('maxTransfer: MDTS in CAP.MPSMIN pages (4 KiB · 2^MDTS), capped at 1 MiB, 1 MiB when MDTS is 0', T, async () => {
  for (const [mdts, want] of [[1, 8192], [2, 16384], [8, 1 << 20], [9, 1 << 20], [0, 1 << 20]] as const) {
    const r = await rig(model({ mdts }), { nrIoQueues: 0 });
    try {
      assert.equal(r.ctrl.maxTransfer, want, `MDTS ${mdts}`);
    } finally {
      await r.close();
    }
  }
});

test('submitIo refusals: no I/O queues, closed, unknown or unusable namespace, each later and typed', T, async () => {
  const none = await rig(model(), { nrIoQueues: 0 });
  try {
    const e = await submit(none.ctrl, record({ op: BlockOpCode.READ, nsid: 1, nlb: 1, dataInLength: 512 }));
    assert.ok(e instanceof NvmfNbdError);
    assert.equal(e.code, ErrorCode.UNSUPPORTED);
    assert.equal(e.message, 'controller has no I/O queues');
    await rejectsCode(none.ctrl.ioCommand(Buffer.alloc(64)), ErrorCode.UNSUPPORTED);
  } finally {
    await none.close();
  }
  const r = await rig(model());
  try {
    const unknown = await submit(r.ctrl, record({ op: BlockOpCode.READ, nsid: 9, nlb: 1, dataInLength: 512 }));
    assert.equal(unknown?.code, ErrorCode.NAMESPACE_NOT_FOUND);
    assert.equal(unknown?.message, 'namespace 9 is not active on controller 7');
    const meta = await submit(r.ctrl, record({ op: BlockOpCode.WRITE, nsid: 3, nlb: 1, data: Buffer.alloc(512) }));
    assert.equal(meta?.code, ErrorCode.NAMESPACE_UNSUPPORTED);
    assert.equal(meta?.message, 'namespace 3: LBA format 0 has 8 bytes of metadata per block (not supported)');
    const flushUnknown = await submit(r.ctrl, record({ op: BlockOpCode.FLUSH, nsid: 9 }));
    assert.equal(flushUnknown?.code, ErrorCode.NAMESPACE_NOT_FOUND);
    assert.equal(r.io().length, 0, 'nothing reached the target');
    await r.ctrl.close();
    const closed = await submit(r.ctrl, record({ op: BlockOpCode.READ, nsid: 1, nlb: 1, dataInLength: 512 }));
    assert.equal(closed?.code, ErrorCode.CONNECTION_CLOSED);
    assert.equal(closed?.message, 'controller closed');
    const ce = await rejectsCode(r.ctrl.ioCommand(Buffer.alloc(64)), ErrorCode.CONNECTION_CLOSED);
    assert.equal(ce.message, 'controller closed');
    await rejectsCode(r.ctrl.adminCommand(Buffer.alloc(64)), ErrorCode.CONNECTION_CLOSED);
  } finally {
    await r.close();
  }
});

test('submitIo refuses a bad shape with INVALID_ARGUMENT before sending anything', T, async () => {
  const r = await rig(model());
  try {
    const cases: Array<[Partial<IoRequest>, string]> = [
      [{ op: BlockOpCode.READ, nsid: 1, nlb: 2, data: Buffer.alloc(512) }, 'read destination of 512 bytes for 2 blocks of 512'],
      [{ op: BlockOpCode.READ, nsid: 1, nlb: 2, dataInLength: 1536 }, 'read destination of 1536 bytes for 2 blocks of 512'],
      [{ op: BlockOpCode.READ, nsid: 2, nlb: 1, dataInLength: 4095 }, 'read destination of 4095 bytes for 1 blocks of 4096'],
      [{ op: BlockOpCode.WRITE, nsid: 1, nlb: 1 }, 'write of 0 bytes for 1 blocks of 512'],
      [{ op: BlockOpCode.WRITE, nsid: 1, nlb: 1, data: Buffer.alloc(513) }, 'write of 513 bytes for 1 blocks of 512'],
      [{ op: BlockOpCode.WRITE, nsid: 1, nlb: 0, data: Buffer.alloc(0) }, 'write of 0 bytes for 0 blocks of 512'],
      [{ op: BlockOpCode.READ, nsid: 1, nlb: 0, dataInLength: 0 }, 'read destination of 0 bytes for 0 blocks of 512'],
      [{ op: BlockOpCode.WRITE, nsid: 1, nlb: 1.5, data: Buffer.alloc(768) }, 'write of 768 bytes for 1.5 blocks of 512'],
      [{ op: BlockOpCode.READ, nsid: 1, nlb: 1.5, dataInLength: 768 }, 'read destination of 768 bytes for 1.5 blocks of 512'],
      [{ op: BlockOpCode.TRIM, nsid: 1, nlb: 1, data: Buffer.alloc(512) }, 'write of 512 bytes for 1 blocks of 512'],
      [{ op: BlockOpCode.ZEROES, nsid: 1, nlb: 1, data: Buffer.alloc(512) }, 'write of 512 bytes for 1 blocks of 512'],
    ];
    for (const [fields, message] of cases) {
      const e = await submit(r.ctrl, record(fields));
      assert.ok(e instanceof NvmfNbdError, message);
      assert.equal(e.code, ErrorCode.INVALID_ARGUMENT, message);
      assert.equal(e.message, message);
    }
    assert.equal(r.io().length, 0);
  } finally {
    await r.close();
  }
});

test('submitIo FLUSH: opcode 00h for the NSID, no data whatever a reused record carried', T, async () => {
  const r = await rig(model());
  try {
    const req = record({ op: BlockOpCode.FLUSH, nsid: 2, nlb: 5, slba: 3n, fua: true, dataIn: Buffer.alloc(4096), dataOut: Buffer.alloc(4096), dataInLength: 4096 });
    assert.equal(await submit(r.ctrl, req), undefined);
    const io = r.io();
    assert.equal(io.length, 1);
    assert.equal(io[0]?.opcode, 0x00);
    assert.equal(io[0]?.nsid, 2);
    assert.equal(io[0]?.sqe.subarray(40).equals(Buffer.alloc(24)), true, 'no SLBA, NLB or FUA');
    assert.equal(io[0]?.data, undefined);
    assert.equal(req.dataIn, undefined);
    assert.equal(req.dataOut, undefined);
    assert.equal(req.dataInLength, 0);
  } finally {
    await r.close();
  }
});

test('submitIo unsplit: a read into its destination or a lazy one, a write with FUA (never on a read), exactly MDTS', T, async () => {
  const r = await rig(model());
  const ns1 = r.m.namespaces.get(1)?.data as Buffer;
  try {
    // Eager read of exactly MDTS (16 × 512): one command, into the given buffer.
    const dest = Buffer.alloc(8192);
    const eager = record({ op: BlockOpCode.READ, nsid: 1, slba: 48n, nlb: 16, data: dest, fua: true, dataInLength: 77 });
    assert.equal(await submit(r.ctrl, eager), undefined);
    assert.equal(eager.data, dest);
    assert.equal(eager.dataIn, dest, 'sent whole, not as one part');
    assert.equal(dest.equals(ns1.subarray(48 * 512, 64 * 512)), true, 'last LBA included');
    assert.equal(eager.dataInLength, 0, 'an eager read asks for no destination');
    // Lazy read: made at issue, dataInLength kept at the size.
    const lazy = record({ op: BlockOpCode.READ, nsid: 2, slba: 0n, nlb: 2, dataInLength: 8192, dataOut: Buffer.alloc(3) });
    assert.equal(await submit(r.ctrl, lazy), undefined);
    assert.equal(lazy.data?.length, 8192);
    assert.equal(lazy.data?.equals((r.m.namespaces.get(2)?.data as Buffer).subarray(0, 8192)), true);
    assert.equal(lazy.dataInLength, 8192);
    assert.equal(lazy.dataOut, undefined);
    // Write with FUA: one command, payload lands at SLBA.
    const payload = pattern(9, 512, 3);
    const w = record({ op: BlockOpCode.WRITE, nsid: 1, slba: 5n, nlb: 3, data: payload, fua: true, dataIn: Buffer.alloc(5), dataInLength: 99 });
    assert.equal(await submit(r.ctrl, w), undefined);
    assert.equal(ns1.subarray(5 * 512, 8 * 512).equals(payload), true);
    assert.equal(w.dataIn, undefined);
    assert.equal(w.dataOut, payload);
    assert.equal(w.dataInLength, 0);
    const w2 = record({ op: BlockOpCode.WRITE, nsid: 1, slba: 0n, nlb: 1, data: pattern(10, 512, 1) });
    assert.equal(await submit(r.ctrl, w2), undefined);
    const io = r.io();
    assert.deepEqual(io.map((s) => [s.opcode, s.nsid, s.slba, s.nlb, s.fua]), [
      [0x02, 1, 48, 16, false], [0x02, 2, 0, 2, false], [0x01, 1, 5, 3, true], [0x01, 1, 0, 1, false],
    ]);
  } finally {
    await r.close();
  }
});

async function splitCase(r: Rig, nsid: number, lba: number, slba: number, nlb: number, lazy: boolean): Promise<void> {
  const before = r.io().length;
  const data = r.m.namespaces.get(nsid)?.data as Buffer;
  const req = record({ op: BlockOpCode.READ, nsid, slba: BigInt(slba), nlb, ...(lazy ? { dataInLength: nlb * lba } : { data: Buffer.alloc(nlb * lba) }) });
  const given = req.data;
  assert.equal(await submit(r.ctrl, req), undefined);
  if (!lazy) assert.equal(req.data, given);
  assert.equal(req.data?.length, nlb * lba);
  assert.equal(req.data?.equals(data.subarray(slba * lba, (slba + nlb) * lba)), true, `read ${slba}+${nlb} of ns ${nsid}`);
  assert.equal(req.partsPending, 0);
  assert.equal(req.partError, undefined);
  assert.equal(req.dataInLength, lazy ? nlb * lba : 0);
  const per = Math.max(1, Math.floor(8192 / lba));
  const want: Array<[number, number]> = [];
  for (let d = 0; d < nlb; d += per) want.push([slba + d, Math.min(per, nlb - d)]);
  const got = r.io().slice(before);
  assert.deepEqual(got.map((s) => [s.slba, s.nlb]).sort((a, b) => (a[0] as number) - (b[0] as number)), want);
  for (const s of got) {
    assert.equal(s.opcode, 0x02);
    assert.equal(s.nsid, nsid);
    assert.equal(s.fua, false);
  }
}

test('MDTS split of reads: exact multiple, +1 block (short last part), eager and lazy destinations, first and last LBA', T, async () => {
  const r = await rig(model());
  try {
    await splitCase(r, 1, 512, 0, 32, false); // 2 × 16
    await splitCase(r, 1, 512, 0, 32, true);
    await splitCase(r, 1, 512, 31, 33, true); // 16 + 16 + 1, up to the last LBA
    await splitCase(r, 1, 512, 31, 33, false);
    await splitCase(r, 1, 512, 1, 17, true); // 16 + 1
    // A reused record carrying a stale part error completes clean.
    const reused = record({ op: BlockOpCode.READ, nsid: 1, slba: 0n, nlb: 17, dataInLength: 17 * 512, partError: new NvmfNbdError(ErrorCode.NVME_STATUS, 'stale') });
    assert.equal(await submit(r.ctrl, reused), undefined);
    assert.equal(reused.partError, undefined);
    await splitCase(r, 2, 4096, 11, 5, true); // 2 + 2 + 1 of 4 KiB
    await splitCase(r, 2, 4096, 0, 16, false); // the whole namespace, 8 parts
    // Blocks larger than MDTS: no command could carry one, so the namespace is not servable —
    // refused as unsupported at identify, not with an error on every I/O.
    for (const lazy of [true, false]) {
      const req = record({ op: BlockOpCode.READ, nsid: 4, slba: 1n, nlb: 2, ...(lazy ? { dataInLength: 32768 } : { data: Buffer.alloc(32768) }) });
      const e = await submit(r.ctrl, req);
      assert.equal(e?.code, ErrorCode.NAMESPACE_UNSUPPORTED);
      assert.equal(e?.message, "namespace 4: block size 16384 is larger than the controller's maximum transfer of 8192 bytes (not supported)");
    }
  } finally {
    await r.close();
  }
});

test('MDTS split of a write: parts carry their slice of the payload and FUA each; parts spread over both queues', T, async () => {
  const r = await rig(model());
  const ns1 = r.m.namespaces.get(1)?.data as Buffer;
  try {
    const payload = pattern(11, 512, 33);
    const w = record({ op: BlockOpCode.WRITE, nsid: 1, slba: 30n, nlb: 33, data: payload, fua: true });
    assert.equal(await submit(r.ctrl, w), undefined);
    assert.equal(ns1.subarray(30 * 512, 63 * 512).equals(payload), true);
    assert.equal(w.dataInLength, 0);
    const io = r.io();
    assert.deepEqual(io.map((s) => [s.opcode, s.slba, s.nlb, s.fua]).sort((a, b) => (a[1] as number) - (b[1] as number)), [
      [0x01, 30, 16, true], [0x01, 46, 16, true], [0x01, 62, 1, true],
    ]);
    assert.deepEqual([...new Set(io.map((s) => s.qid))].sort(), [1, 2], 'both I/O queues used');
    // The write of 2 × MDTS without FUA.
    const w2 = record({ op: BlockOpCode.WRITE, nsid: 2, slba: 4n, nlb: 4, data: pattern(12, 4096, 4) });
    assert.equal(await submit(r.ctrl, w2), undefined);
    assert.deepEqual(r.io().slice(3).map((s) => [s.slba, s.nlb, s.fua]).sort((a, b) => (a[0] as number) - (b[0] as number)), [[4, 2, false], [6, 2, false]]);
    assert.equal((r.m.namespaces.get(2)?.data as Buffer).subarray(4 * 4096, 8 * 4096).equals(pattern(12, 4096, 4)), true);
  } finally {
    await r.close();
  }
});

test('a split read with a failing part completes once, after every part, with the NVMe status of the failure', T, async () => {
  const r = await rig(model());
  try {
    // 16 + 16 + 16: the last part runs past the 64-block namespace (LBA Out of Range).
    const req = record({ op: BlockOpCode.READ, nsid: 1, slba: 20n, nlb: 48, dataInLength: 48 * 512 });
    const e = await submit(r.ctrl, req);
    assert.ok(e instanceof NvmfNbdError);
    assert.equal(e.code, ErrorCode.NVME_STATUS);
    assert.equal(r.io().length, 3, 'every part was sent');
    assert.equal(req.partsPending, 0);
    assert.equal(req.partError, e);
  } finally {
    await r.close();
  }
});

test('onIoDone of parts: the parent completes once, after the last, with the first error; parts are cleared', T, async () => {
  const r = await rig(model(), { nrIoQueues: 0 });
  try {
    const o = owner();
    const parent = record({ partsPending: 3, partError: undefined });
    parent.owner = o;
    const parts = [0, 1, 2].map(() => record({ parent, dataIn: Buffer.alloc(1), dataOut: Buffer.alloc(2), dataInLength: 3 }));
    for (const p of parts) p.owner = r.ctrl;
    const first = new NvmfNbdError(ErrorCode.NVME_STATUS, 'first');
    const second = new NvmfNbdError(ErrorCode.CONTROLLER_LOST, 'second');
    r.ctrl.onIoDone(parts[0] as IoRequest, undefined);
    assert.equal(o.calls.length, 0);
    r.ctrl.onIoDone(parts[1] as IoRequest, first);
    assert.equal(o.calls.length, 0);
    assert.equal(parent.partsPending, 1);
    r.ctrl.onIoDone(parts[2] as IoRequest, second);
    assert.equal(o.calls.length, 1);
    assert.equal(o.calls[0]?.req, parent);
    assert.equal(o.calls[0]?.err, first);
    for (const p of parts) {
      assert.equal(p.parent, undefined);
      assert.equal(p.owner, undefined);
      assert.equal(p.dataIn, undefined);
      assert.equal(p.dataOut, undefined);
      assert.equal(p.dataInLength, 0);
    }
    // All parts fine: completes without error.
    const o2 = owner();
    const ok = record({ partsPending: 2 });
    ok.owner = o2;
    r.ctrl.onIoDone(record({ parent: ok }), undefined);
    r.ctrl.onIoDone(record({ parent: ok }), undefined);
    assert.equal(o2.calls.length, 1);
    assert.equal(o2.calls[0]?.err, undefined);
  } finally {
    await r.close();
  }
});

test('part records are reused: a later split takes the records of an earlier one', T, async () => {
  const r = await rig(model());
  try {
    const parts = (r.ctrl as unknown as { parts: IoRequest[] }).parts;
    await submit(r.ctrl, record({ op: BlockOpCode.READ, nsid: 1, slba: 0n, nlb: 48, dataInLength: 48 * 512 }));
    assert.equal(parts.length, 3);
    const pooled = new Set(parts);
    await submit(r.ctrl, record({ op: BlockOpCode.READ, nsid: 1, slba: 0n, nlb: 32, dataInLength: 32 * 512 }));
    assert.equal(parts.length, 3);
    assert.deepEqual(new Set(parts), pooled);
  } finally {
    await r.close();
  }
});

test('queue choice: round-robin among equally loaded queues, the less loaded one otherwise', T, async () => {
  const r = await rig(model(), {}, 1);
  try {
    // Queue 1 holds its commands: the first read waits there.
    const held = record({ op: BlockOpCode.READ, nsid: 1, slba: 0n, nlb: 1, dataInLength: 512 });
    const ho = owner();
    held.owner = ho;
    r.ctrl.submitIo(held);
    // Queue 1 (load 1) vs queue 2 (load 0): every later command goes to queue 2, whatever the turn.
    for (let i = 0; i < 3; i++) {
      assert.equal(await submit(r.ctrl, record({ op: BlockOpCode.READ, nsid: 1, slba: BigInt(i + 1), nlb: 1, dataInLength: 512 })), undefined);
    }
    assert.deepEqual(r.io().map((s) => [s.qid, s.slba]), [[2, 1], [2, 2], [2, 3]]);
    r.hold?.release();
    await ho.done;
    assert.equal(ho.calls[0]?.err, undefined);
    await until(() => r.io().length === 4, 'held read seen');
    assert.deepEqual(r.io()[3]?.qid, 1);
    // Both idle: alternate.
    for (let i = 0; i < 4; i++) await submit(r.ctrl, record({ op: BlockOpCode.FLUSH, nsid: 1 }));
    const qs = r.io().slice(4).map((s) => s.qid);
    assert.equal(qs.length, 4);
    assert.notEqual(qs[0], qs[1]);
    assert.equal(qs[0], qs[2]);
    assert.equal(qs[1], qs[3]);
  } finally {
    await r.close();
  }
});

test('read(): into a given buffer or a new one, split; unknown namespace NAMESPACE_NOT_FOUND', T, async () => {
  const r = await rig(model());
  const ns2 = r.m.namespaces.get(2)?.data as Buffer;
  try {
    const into = Buffer.alloc(3 * 4096);
    const got = await r.ctrl.read(2, 13n, 3, into);
    assert.equal(got, into);
    assert.equal(into.equals(ns2.subarray(13 * 4096)), true);
    const fresh = await r.ctrl.read(1, 63n, 1);
    assert.equal(fresh.length, 512);
    assert.equal(fresh.equals((r.m.namespaces.get(1)?.data as Buffer).subarray(63 * 512)), true);
    await rejectsCode(r.ctrl.read(9, 0n, 1), ErrorCode.NAMESPACE_NOT_FOUND);
    const bad = await rejectsCode(r.ctrl.read(2, 0n, 2, Buffer.alloc(4096)), ErrorCode.INVALID_ARGUMENT);
    assert.equal(bad.message, 'read destination of 4096 bytes for 2 blocks of 4096');
  } finally {
    await r.close();
  }
});

test('write(): block multiples only, nothing sent for 0 bytes, FUA only when asked, split at MDTS', T, async () => {
  const r = await rig(model());
  const ns1 = r.m.namespaces.get(1)?.data as Buffer;
  try {
    const e = await rejectsCode(r.ctrl.write(1, 0n, Buffer.alloc(700)), ErrorCode.INVALID_ARGUMENT);
    assert.equal(e.message, 'write of 700 bytes is not a multiple of 512');
    await rejectsCode(r.ctrl.write(9, 0n, Buffer.alloc(512)), ErrorCode.NAMESPACE_NOT_FOUND);
    await rejectsCode(r.ctrl.write(3, 0n, Buffer.alloc(512)), ErrorCode.NAMESPACE_UNSUPPORTED);
    await r.ctrl.write(1, 0n, Buffer.alloc(0));
    assert.equal(r.io().length, 0);
    const a = pattern(21, 512, 17);
    await r.ctrl.write(1, 2n, a, { fua: true });
    assert.equal(ns1.subarray(2 * 512, 19 * 512).equals(a), true);
    const b = pattern(22, 512, 2);
    await r.ctrl.write(1, 40n, b);
    await r.ctrl.write(1, 50n, b, {});
    assert.equal(ns1.subarray(40 * 512, 42 * 512).equals(b), true);
    assert.deepEqual(r.io().map((s) => [s.opcode, s.slba, s.nlb, s.fua]).sort((x, y) => (x[1] as number) - (y[1] as number)), [
      [0x01, 2, 16, true], [0x01, 18, 1, true], [0x01, 40, 2, false], [0x01, 50, 2, false],
    ]);
  } finally {
    await r.close();
  }
});

test('flush(): a Flush of that namespace; unknown namespace NAMESPACE_NOT_FOUND', T, async () => {
  const r = await rig(model());
  try {
    await r.ctrl.flush(2);
    assert.deepEqual(r.io().map((s) => [s.opcode, s.nsid]), [[0x00, 2]]);
    await rejectsCode(r.ctrl.flush(9), ErrorCode.NAMESPACE_NOT_FOUND);
  } finally {
    await r.close();
  }
});

/** The ranges of a DSM command: [slba, nlb] each. */
function dsmRanges(s: Seen): Array<[number, number]> {
  const nr = (s.sqe.readUInt32LE(40) & 0xff) + 1;
  const d = s.data as Buffer;
  const out: Array<[number, number]> = [];
  for (let i = 0; i < nr; i++) out.push([Number(d.readBigUInt64LE(i * 16 + 8)), d.readUInt32LE(i * 16 + 4)]);
  return out;
}

test('deallocate(): ranges split at 65536 blocks and 256 per command, the deallocate attribute set', T, async () => {
  const big: { data: Buffer; lbaSize: number; ms?: number } = { data: Buffer.alloc(MAX_NLB * 2 * 512 + 512 * 8), lbaSize: 512 };
  const r = await rig(model({ namespaces: new Map([[1, big], [3, { data: Buffer.alloc(4096), lbaSize: 512, ms: 8 }]]) }));
  try {
    await rejectsCode(r.ctrl.deallocate(9, [{ slba: 0n, nlb: 1 }]), ErrorCode.NAMESPACE_NOT_FOUND);
    await rejectsCode(r.ctrl.deallocate(3, [{ slba: 0n, nlb: 1 }]), ErrorCode.NAMESPACE_UNSUPPORTED);
    big.data.fill(0xee);
    await r.ctrl.deallocate(1, [{ slba: 3n, nlb: MAX_NLB * 2 + 1 }, { slba: 1n, nlb: 2 }]);
    const io = r.io();
    assert.equal(io.length, 1);
    assert.equal(io[0]?.opcode, 0x09);
    assert.equal(io[0]?.sqe.readUInt32LE(44), 0x04, 'AD');
    assert.deepEqual(dsmRanges(io[0] as Seen), [[3, MAX_NLB], [3 + MAX_NLB, MAX_NLB], [3 + 2 * MAX_NLB, 1], [1, 2]]);
    assert.equal(big.data[0], 0xee);
    assert.equal(big.data[512], 0);
    assert.equal(big.data[(4 + 2 * MAX_NLB) * 512 - 1], 0);
    assert.equal(big.data[(4 + 2 * MAX_NLB) * 512], 0xee);
    // 256 ranges in one command; 257 in two (256 + 1).
    const many = (n: number): Array<{ slba: bigint; nlb: number }> => Array.from({ length: n }, (_, i) => ({ slba: BigInt(2 * i), nlb: 1 }));
    await r.ctrl.deallocate(1, many(256));
    assert.equal(r.io().length, 2);
    assert.equal(dsmRanges(r.io()[1] as Seen).length, 256);
    await r.ctrl.deallocate(1, many(257));
    const last = r.io().slice(2).map(dsmRanges).sort((a, b) => b.length - a.length);
    assert.deepEqual(last.map((l) => l.length), [256, 1]);
    assert.deepEqual(last[1], [[512, 1]]);
    // Nothing to do: no command.
    await r.ctrl.deallocate(1, []);
    assert.equal(r.io().length, 4);
  } finally {
    await r.close();
  }
});

test('writeZeroes(): split at 65536 blocks, DEAC and FUA bits only when asked; a failing part rejects after all', T, async () => {
  const big: { data: Buffer; lbaSize: number; ms?: number } = { data: Buffer.alloc((MAX_NLB + 8) * 512), lbaSize: 512 };
  const r = await rig(model({ namespaces: new Map([[1, big], [3, { data: Buffer.alloc(4096), lbaSize: 512, ms: 8 }]]) }));
  try {
    await rejectsCode(r.ctrl.writeZeroes(9, 0n, 1), ErrorCode.NAMESPACE_NOT_FOUND);
    await rejectsCode(r.ctrl.writeZeroes(3, 0n, 1), ErrorCode.NAMESPACE_UNSUPPORTED);
    big.data.fill(0xaa);
    await r.ctrl.writeZeroes(1, 2n, MAX_NLB + 1, { deallocate: true, fua: true });
    assert.equal(big.data[2 * 512 - 1], 0xaa);
    assert.equal(big.data[2 * 512], 0);
    assert.equal(big.data[(MAX_NLB + 3) * 512 - 1], 0);
    assert.equal(big.data[(MAX_NLB + 3) * 512], 0xaa);
    await r.ctrl.writeZeroes(1, 7n, 1);
    const cdw12 = (s: Seen): number => s.sqe.readUInt32LE(48);
    const io = r.io().sort((a, b) => a.slba - b.slba);
    assert.deepEqual(io.map((s) => [s.opcode, s.slba, cdw12(s) & 0xffff, (cdw12(s) >>> 25) & 1, (cdw12(s) >>> 30) & 1]), [
      [0x08, 2, MAX_NLB - 1, 1, 1], [0x08, 7, 0, 0, 0], [0x08, MAX_NLB + 2, 0, 1, 1],
    ]);
    // 65536 + 10 blocks from 0 run past the end: the second part fails (after the first settled).
    const e = await rejectsCode(r.ctrl.writeZeroes(1, 0n, MAX_NLB + 10), ErrorCode.NVME_STATUS);
    assert.ok(e.status !== undefined);
    assert.equal(r.io().length, 5);
    await r.ctrl.writeZeroes(1, 0n, 0);
    assert.equal(r.io().length, 5, 'no command for 0 blocks');
  } finally {
    await r.close();
  }
});

test('getters: ONCS, volatile write cache, stats per queue, I/O queue count', T, async () => {
  const a = await rig(model({ oncs: 0x1d, vwc: false }), { nrIoQueues: 1 });
  try {
    assert.equal(a.ctrl.oncs, 0x1d);
    assert.equal(a.ctrl.volatileWriteCache, false);
    assert.equal(a.ctrl.ioQueueCount, 1);
    const s = a.ctrl.stats();
    assert.equal(s.cntlid, 7);
    assert.equal(s.io.length, 1);
    assert.ok(s.admin.commands > 0);
    assert.equal(s.admin.qid, 0);
    assert.equal(s.io[0]?.qid, 1);
  } finally {
    await a.close();
  }
  const b = await rig(model());
  try {
    assert.equal(b.ctrl.oncs, 0x0c);
    assert.equal(b.ctrl.volatileWriteCache, true);
    assert.equal(b.ctrl.stats().io.length, 2);
  } finally {
    await b.close();
  }
});
