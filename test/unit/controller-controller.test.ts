/**
 * Controller bring-up, namespace scan, I/O split at MDTS, keep-alive, shutdown and discovery,
 * against the scripted controller of test/helpers/fake-target.ts.
 */
import { mock, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { Controller } from '../../src/controller/controller';
import type { ControllerOptions } from '../../src/controller/controller';
import { discover } from '../../src/controller/discovery';
import { ErrorCode, NvmfNbdError } from '../../src/errors';
import { Cns, sqeIdentify } from '../../src/wire';
import { FakeTarget, serveController } from '../helpers/fake-target';
import type { ControllerModel } from '../helpers/fake-target';
import { rejectsCode } from '../helpers/assert-code';

const T = { timeout: 8000 };
const SUBNQN = 'nqn.2024-01.io.test:sub-a';

function model(o: Partial<ControllerModel> = {}): ControllerModel {
  return {
    namespaces: new Map([
      [1, { data: Buffer.alloc(1 << 20), lbaSize: 512 }],
      [2, { data: Buffer.alloc(2 << 20), lbaSize: 4096 }],
      [3, { data: Buffer.alloc(1 << 20), lbaSize: 512, ms: 8 }],
    ]),
    seen: [],
    ...o,
  };
}

async function start(m: ControllerModel, o: Partial<ControllerOptions> = {}): Promise<{ target: FakeTarget; ctrl: Controller }> {
  const target = await FakeTarget.start((c) => serveController(c, m));
  try {
    const ctrl = await Controller.connect({
      traddr: '127.0.0.1', trsvcid: target.port, subnqn: SUBNQN, hostnqn: 'nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-000000000001',
      hostid: '00000000-0000-0000-0000-000000000001', nrIoQueues: 2, queueSize: 16, kato: 0, connectTimeoutMs: 2000, ioTimeoutMs: 2000, ...o,
    });
    return { target, ctrl };
  } catch (err) {
    await target.close();
    throw err;
  }
}

test('bring-up: CC.EN then CSTS.RDY, Identify, namespaces (metadata one skipped), I/O queues', T, async () => {
  const m = model({ readyDelayMs: 30 });
  const { target, ctrl } = await start(m);
  try {
    assert.equal(ctrl.cntlid, 7);
    assert.equal(m.regs?.cc !== undefined && (m.regs.cc & 1), 1);
    assert.equal((m.regs?.cc ?? 0) >>> 16 & 0xf, 6, 'IOSQES=6');
    assert.equal((m.regs?.cc ?? 0) >>> 20 & 0xf, 4, 'IOCQES=4');
    assert.equal(ctrl.identify.mn, 'fake-target');
    assert.deepEqual([...ctrl.namespaces.keys()], [1, 2, 3]);
    assert.equal(ctrl.namespaces.get(1)?.lbaSize, 512);
    assert.equal(ctrl.namespaces.get(2)?.lbaSize, 4096);
    assert.equal(ctrl.namespaces.get(2)?.nsze, 512n);
    assert.equal(ctrl.namespaces.get(3)?.usable, false);
    assert.match(ctrl.namespaces.get(3)?.reasonIfNot ?? '', /metadata/);
    assert.equal(ctrl.ioQueueCount, 2);
    const nq = m.seen?.find((s) => s.qid === 0 && s.opcode === 0x09);
    assert.equal(nq?.cdw10, 0x07);
    // I/O queues connect with the admin queue's cntlid.
    assert.equal(target.conns.length, 3);
  } finally {
    await ctrl.close();
    await target.close();
  }
});

test('I/O on a namespace with metadata is refused with NAMESPACE_UNSUPPORTED', T, async () => {
  const { target, ctrl } = await start(model());
  try {
    await rejectsCode(ctrl.read(3, 0n, 1), ErrorCode.NAMESPACE_UNSUPPORTED);
    await rejectsCode(ctrl.read(9, 0n, 1), ErrorCode.NAMESPACE_NOT_FOUND);
  } finally {
    await ctrl.close();
    await target.close();
  }
});

test('read/write split at MDTS (in CAP.MPSMIN pages) and spread over the I/O queues', T, async () => {
  const m = model({ mdts: 1 }); // 2 pages of 4 KiB = 8 KiB per command
  const { target, ctrl } = await start(m);
  try {
    assert.equal(ctrl.maxTransfer, 8192);
    const data = randomBytes(64 * 1024);
    const before = m.seen?.length ?? 0;
    await ctrl.write(1, 10n, data, { fua: true });
    const writes = (m.seen ?? []).slice(before).filter((s) => s.opcode === 0x01);
    assert.equal(writes.length, 8);
    assert.deepEqual(new Set(writes.map((w) => w.qid)), new Set([1, 2]));
    assert.deepEqual(m.namespaces.get(1)?.data.subarray(10 * 512, 10 * 512 + data.length), data);
    const back = await ctrl.read(1, 10n, 128);
    assert.deepEqual(back, data);
  } finally {
    await ctrl.close();
    await target.close();
  }
});

test('write zeroes and deallocate zero the range on the target', T, async () => {
  const m = model();
  const { target, ctrl } = await start(m);
  try {
    await ctrl.write(2, 0n, Buffer.alloc(8 * 4096, 0xab));
    await ctrl.writeZeroes(2, 1n, 2, { deallocate: true });
    await ctrl.deallocate(2, [{ slba: 5n, nlb: 1 }, { slba: 7n, nlb: 1 }]);
    const back = await ctrl.read(2, 0n, 8);
    const expect = Buffer.alloc(8 * 4096, 0xab);
    expect.fill(0, 4096, 3 * 4096);
    expect.fill(0, 5 * 4096, 6 * 4096);
    expect.fill(0, 7 * 4096, 8 * 4096);
    assert.deepEqual(back, expect);
    await ctrl.flush(2);
    assert.ok(m.seen?.some((s) => s.opcode === 0x00 && s.qid > 0));
  } finally {
    await ctrl.close();
    await target.close();
  }
});

test('NVMe error status surfaces as NVME_STATUS with the status', T, async () => {
  const { target, ctrl } = await start(model());
  try {
    const err = await ctrl.read(1, 4096n, 1).then(() => undefined, (e: NvmfNbdError) => e);
    assert.equal(err?.code, ErrorCode.NVME_STATUS);
    assert.equal(err?.status?.sc, 0x80);
  } finally {
    await ctrl.close();
    await target.close();
  }
});

/** Waits (real time, generous) until `cond()` holds: for a PDU that is on its way, never to prove absence. */
async function until(cond: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 500 && !cond(); i++) await new Promise((r) => setImmediate(r));
  for (let i = 0; i < 500 && !cond(); i++) await new Promise((r) => setTimeout(r, 10));
  assert.ok(cond(), what);
}

test('keep-alive is sent every KATO/2 (fake interval timer: one Keep Alive per 100 ms tick at KATO 200)', T, async () => {
  const m = model();
  // Only setInterval (the keep-alive timer) is faked: the connect's own waits stay real.
  mock.timers.enable({ apis: ['setInterval'] });
  const { target, ctrl } = await start(m, { kato: 200, nrIoQueues: 1 }).catch((e: unknown) => {
    mock.timers.reset();
    throw e;
  });
  const kas = (): number => (m.seen ?? []).filter((s) => s.opcode === 0x18).length;
  try {
    // An Identify round trip on the admin queue: the answer to a Keep Alive sent before it has
    // been handled by then, and the Keep Alive itself has reached the target.
    const roundTrip = (): Promise<unknown> => ctrl.adminCommand(sqeIdentify(Cns.CONTROLLER), { dataInLength: 4096 });
    assert.equal(kas(), 0);
    mock.timers.tick(99);
    await roundTrip();
    assert.equal(kas(), 0, 'no Keep Alive before KATO/2');
    mock.timers.tick(1);
    await until(() => kas() === 1, 'first Keep Alive at KATO/2');
    await roundTrip();
    mock.timers.tick(100);
    await until(() => kas() === 2, 'second Keep Alive one period later');
    await roundTrip();
    mock.timers.tick(100);
    await until(() => kas() === 3, 'third Keep Alive');
    await roundTrip();
    assert.equal(kas(), 3, 'exactly one Keep Alive per period');
  } finally {
    mock.timers.reset();
    await ctrl.close();
    await target.close();
  }
});

test('close() sets CC.SHN=01b and waits for CSTS.SHST complete', T, async () => {
  const m = model();
  const { target, ctrl } = await start(m, { nrIoQueues: 1 });
  let closed = 0;
  ctrl.on('close', () => closed++);
  await ctrl.close();
  await ctrl.close();
  await target.close();
  assert.equal(((m.regs?.cc ?? 0) >>> 14) & 3, 1);
  assert.equal(((m.regs?.csts ?? 0) >>> 2) & 3, 2);
  assert.equal(closed, 1);
  await rejectsCode(ctrl.read(1, 0n, 1), ErrorCode.CONNECTION_CLOSED);
});

test('CSTS.RDY never set → ENABLE_TIMEOUT after CAP.TO (500 ms units; fake clock)', T, async () => {
  const m = model({ neverReady: true, capTo: 1 });
  // The enable wait polls with setTimeout against Date.now: both fake, advanced 10 ms per turn
  // of the event loop while the (real) socket I/O goes on; the virtual time at the error is exact.
  mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 0 });
  try {
    let settled = false;
    let at = -1;
    const p = start(m).finally(() => {
      settled = true;
      at = Date.now();
    });
    p.catch(() => undefined);
    while (!settled) {
      mock.timers.tick(10);
      await new Promise((r) => setImmediate(r));
    }
    await rejectsCode(p, ErrorCode.ENABLE_TIMEOUT);
    assert.ok(at >= 500, `gave up at ${at} ms of virtual time, before CAP.TO = 500 ms`);
    assert.ok(at <= 1000, `gave up at ${at} ms of virtual time, long after CAP.TO = 500 ms`);
  } finally {
    mock.timers.reset();
  }
});

test('a wrong subsystem NQN → CONNECT_FAILED with Connect Invalid Parameters in the message', T, async () => {
  const m = model({ subnqn: 'nqn.2024-01.io.test:other' });
  const err = await start(m).then(() => undefined, (e: NvmfNbdError) => e);
  assert.equal(err?.code, ErrorCode.CONNECT_FAILED);
  assert.equal(err?.status?.sct, 1);
  assert.equal(err?.status?.sc, 0x82);
  assert.match(err?.message ?? '', /Connect Invalid Parameters/);
  assert.match(err?.message ?? '', /rejected the subsystem NQN 'nqn\.2024-01\.io\.test:sub-a'/);
});

test('a lost I/O queue destroys the controller: CONTROLLER_LOST on close and on later I/O', T, async () => {
  const { target, ctrl } = await start(model(), { nrIoQueues: 1 });
  const closed = new Promise<NvmfNbdError | undefined>((r) => ctrl.once('close', r));
  ctrl.on('error', () => undefined);
  (target.conns[1]?.socket)?.destroy();
  const err = await closed;
  assert.equal(err?.code, ErrorCode.CONTROLLER_LOST);
  await rejectsCode(ctrl.read(1, 0n, 1), ErrorCode.CONNECTION_CLOSED);
  await target.close();
});

test('discovery reads the log (header, then entries) and applies the address override', T, async () => {
  const m = model({ discovery: [
    { subnqn: SUBNQN, traddr: '10.0.2.15', trsvcid: '4420' },
    { subnqn: 'nqn.2024-01.io.test:sub-b', traddr: '10.0.2.15', trsvcid: '4420' },
  ] });
  const target = await FakeTarget.start((c) => serveController(c, m));
  try {
    const log = await discover({ traddr: '127.0.0.1', trsvcid: target.port, hostnqn: 'nqn.test:h', hostid: Buffer.alloc(16, 1), overrideTraddr: '127.0.0.1' });
    assert.equal(log.entries.length, 2);
    assert.equal(log.entries[0]?.subnqn, SUBNQN);
    assert.equal(log.entries[1]?.subnqn, 'nqn.2024-01.io.test:sub-b');
    assert.equal(log.entries[0]?.traddr, '127.0.0.1');
    assert.equal(log.entries[0]?.trsvcid, '4420');
    assert.equal(log.entries[0]?.trtype, 3);
    // KATO 0 on the discovery controller, no I/O queues.
    assert.equal(target.conns.length, 1);
  } finally {
    await target.close();
  }
});

test('discovery re-reads when the generation counter moved, and gives up with DISCOVERY_LOG_CHANGED', T, async () => {
  let n = 0n;
  const settling = model({ discovery: [{ subnqn: SUBNQN, traddr: '10.0.2.15', trsvcid: '4420' }], discoveryGenctr: () => (n < 3n ? ++n : n) });
  let target = await FakeTarget.start((c) => serveController(c, settling));
  try {
    const log = await discover({ traddr: '127.0.0.1', trsvcid: target.port, hostnqn: 'nqn.test:h', hostid: Buffer.alloc(16, 1) });
    assert.equal(log.genctr, 3n);
    assert.equal(log.entries.length, 1);
  } finally {
    await target.close();
  }
  let m = 0n;
  const churning = model({ discovery: [], discoveryGenctr: () => ++m });
  target = await FakeTarget.start((c) => serveController(c, churning));
  try {
    await rejectsCode(discover({ traddr: '127.0.0.1', trsvcid: target.port, hostnqn: 'nqn.test:h', hostid: Buffer.alloc(16, 1) }), ErrorCode.DISCOVERY_LOG_CHANGED);
  } finally {
    await target.close();
  }
});
