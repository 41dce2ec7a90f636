/**
 * Failure detection of one association (src/controller/controller.ts), against a small scripted
 * admin-only controller whose Identify Controller CTRATT/OAES the test chooses:
 * - Traffic Based Keep Alive (CTRATT bit 6): no Keep Alive while commands complete, Keep Alives
 *   again when idle; without TBKAS they go out every KATO/2 whatever the traffic.
 * - a Keep Alive not answered within KATO fails the association (KEEPALIVE_TIMEOUT);
 * - the receive watchdog fails a queue whose commands get no reply (TARGET_UNRESPONSIVE) before
 *   the keep-alive would, and ignores the outstanding AER (it has no deadline).
 * The keep-alive tick (setInterval) and its clock (Date) are `mock.timers`: each test advances
 * them one tick at a time and lets the real I/O settle in between, so the counts are exact and
 * nothing depends on how fast the machine is.
 */
import { test } from 'node:test';
import type { TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { Controller, CTRATT_TBKAS, AEN_NS_ATTR } from '../../src/controller/controller';
import type { ControllerOptions } from '../../src/controller/controller';
import { ErrorCode, NvmfNbdError } from '../../src/errors';
import { parseSqe, sqeIdentify } from '../../src/wire';
import { FakeTarget, identifyControllerData } from '../helpers/fake-target';
import type { FakeConn } from '../helpers/fake-target';
import { until } from '../helpers/clock';

interface Seen { keepAlives: number[]; aers: number; aec: number | undefined }

/**
 * An admin-only controller: Connect (SQ flow control off), properties, Identify (CTRATT and
 * OAES patched in), Set Features, Keep Alive (timestamps recorded), AER (held forever). After
 * `silent()` turns true it answers nothing.
 */
function miniController(o: { ctratt: number; oaes?: number; silent?: () => boolean }, seen: Seen) {
  return async (c: FakeConn): Promise<void> => {
    await c.acceptConnect({ sqhd: 0xffff });
    let cc = 0;
    let csts = 0;
    for (;;) {
      const p = await c.nextPdu();
      if (p === undefined) return;
      if (p.type !== 0x04) continue;
      const sqe = parseSqe(p.sqe);
      const cid = sqe.cid;
      if (o.silent?.() === true) continue;
      if (sqe.opcode === 0x7f) {
        const offset = sqe.cdw11;
        if (sqe.fctype === 0x04) {
          let v = 0n;
          if (offset === 0x00) v = 31n | (20n << 24n) | (1n << 37n);
          else if (offset === 0x08) v = 0x00010400n;
          else if (offset === 0x14) v = BigInt(cc);
          else if (offset === 0x1c) v = BigInt(csts);
          c.respond(cid, { dw0: Number(v & 0xffffffffn), dw1: Number(v >> 32n) });
        } else {
          cc = p.sqe.readUInt32LE(48);
          if (cc & 1) csts |= 1;
          if (((cc >>> 14) & 3) === 1) csts |= 2 << 2;
          c.respond(cid);
        }
        continue;
      }
      switch (sqe.opcode) {
        case 0x06: {
          const cns = sqe.cdw10 & 0xff;
          let data: Buffer = Buffer.alloc(4096);
          if (cns === 1) {
            data = identifyControllerData({ namespaces: new Map() }, 1);
            data.writeUInt32LE(o.oaes ?? 0, 92);
            data.writeUInt32LE(o.ctratt, 96);
          }
          c.c2h(cid, 0, data, { last: true });
          c.respond(cid);
          break;
        }
        case 0x18:
          seen.keepAlives.push(Date.now());
          c.respond(cid);
          break;
        case 0x0c:
          seen.aers++;
          break;
        case 0x09:
          if ((sqe.cdw10 & 0xff) === 0x0b) seen.aec = sqe.cdw11;
          c.respond(cid, { dw0: sqe.cdw11 });
          break;
        default:
          c.respond(cid, { sc: 0x01 });
      }
    }
  };
}

function opts(port: number, o: Partial<ControllerOptions> = {}): ControllerOptions {
  return {
    traddr: '127.0.0.1', trsvcid: port, subnqn: 'nqn.test:ka', hostnqn: 'nqn.test:host', hostid: Buffer.alloc(16, 3),
    nrIoQueues: 0, ...o,
  };
}

/** Mock the keep-alive timer and clock from 0; then connect (the tick starts at bring-up). */
async function connectMocked(t: TestContext, port: number, o: Partial<ControllerOptions>): Promise<Controller> {
  t.mock.timers.enable({ apis: ['setInterval', 'Date'], now: 0 });
  return Controller.connect(opts(port, o));
}

/** Admin commands in flight besides the AER (which has no reply): the Keep Alive, if one is out. */
const outstanding = (ctrl: Controller, seen: Seen): number => ctrl.stats().admin.inFlight - seen.aers;

/**
 * Advance the mocked clock by `ms` and wait (real time, hang guard only) until no admin command
 * but the AER is outstanding: a Keep Alive the tick sent has been answered and seen by the host.
 */
async function step(t: TestContext, ctrl: Controller, seen: Seen, ms: number): Promise<void> {
  t.mock.timers.tick(ms);
  await until(() => outstanding(ctrl, seen) === 0 || !ctrl.alive, 'the keep-alive answered');
  await new Promise<void>((r) => setImmediate(r)); // its completion handler ran (kaSentAt cleared)
}

/** One Identify, then `ms` of mocked time: traffic in every keep-alive period. */
async function busyStep(t: TestContext, ctrl: Controller, seen: Seen, ms: number): Promise<void> {
  await ctrl.adminCommand(sqeIdentify(1), { dataInLength: 4096 });
  await step(t, ctrl, seen, ms);
}

function closeError(ctrl: Controller): Promise<NvmfNbdError | undefined> {
  return new Promise((resolve) => ctrl.once('close', resolve));
}

test('TBKAS: no Keep Alive while commands complete, Keep Alives again when idle (never more than KATO apart)', { timeout: 20_000 }, async (t) => {
  const seen: Seen = { keepAlives: [], aers: 0, aec: undefined };
  const ft = await FakeTarget.start(miniController({ ctratt: CTRATT_TBKAS }, seen));
  const ctrl = await connectMocked(t, ft.port, { kato: 400 });
  try {
    assert.equal(ctrl.trafficBasedKeepAlive, true);
    // The tick runs every KATO/4 = 100 ms; a command completes in every one of 12 periods.
    for (let i = 0; i < 12; i++) await busyStep(t, ctrl, seen, 100);
    assert.deepEqual(seen.keepAlives, [], 'keep-alives while traffic flowed');
    const t1 = Date.now();
    for (let i = 0; i < 10; i++) await step(t, ctrl, seen, 100);
    const idle = seen.keepAlives.filter((x) => x >= t1);
    assert.ok(idle.length >= 3, `${idle.length} keep-alives in 1 s idle at KATO 400 ms`);
    // The target's timer restarts on each; no gap may reach KATO.
    for (const [i, at] of [t1, ...idle].entries()) {
      const next = idle[i] ?? Date.now();
      assert.ok(next - at < 400, `${next - at} ms without a keep-alive (from ${at})`);
    }
    assert.equal(ctrl.alive, true);
  } finally {
    t.mock.timers.reset();
    await ctrl.close();
    await ft.close();
  }
});

test('without TBKAS Keep Alives go out every KATO/2 even with traffic', { timeout: 20_000 }, async (t) => {
  const seen: Seen = { keepAlives: [], aers: 0, aec: undefined };
  const ft = await FakeTarget.start(miniController({ ctratt: 0 }, seen));
  const ctrl = await connectMocked(t, ft.port, { kato: 400 });
  try {
    assert.equal(ctrl.trafficBasedKeepAlive, false);
    for (let i = 0; i < 12; i++) await busyStep(t, ctrl, seen, 100);
    // Ticks at 200, 400, … 1200 mocked ms: one Keep Alive each, traffic or not.
    assert.deepEqual(seen.keepAlives, [200, 400, 600, 800, 1000, 1200]);
  } finally {
    t.mock.timers.reset();
    await ctrl.close();
    await ft.close();
  }
});

test('a Keep Alive unanswered for KATO fails the association with KEEPALIVE_TIMEOUT (not before)', { timeout: 20_000 }, async (t) => {
  const seen: Seen = { keepAlives: [], aers: 0, aec: undefined };
  let silent = false;
  const ft = await FakeTarget.start(miniController({ ctratt: 0, silent: () => silent }, seen));
  const ctrl = await connectMocked(t, ft.port, { kato: 400, watchdogMs: 0 });
  let err: NvmfNbdError | undefined;
  let closed = false;
  void closeError(ctrl).then((e) => { err = e; closed = true; });
  try {
    silent = true;
    // Tick (every KATO/2 = 200 ms) at 200: the Keep Alive goes out, unanswered.
    t.mock.timers.tick(200);
    await until(() => outstanding(ctrl, seen) === 1, 'the keep-alive sent');
    // At 600 it has been out exactly KATO: not yet a timeout.
    t.mock.timers.tick(400);
    await new Promise<void>((r) => setImmediate(r));
    assert.equal(ctrl.alive, true, 'out for exactly KATO is not over KATO');
    // At 800 it is over KATO.
    t.mock.timers.tick(200);
    await until(() => closed, 'the association failed');
    assert.equal(err?.code, ErrorCode.KEEPALIVE_TIMEOUT);
  } finally {
    t.mock.timers.reset();
    ctrl.destroy();
    await ft.close();
  }
});

test('the receive watchdog fails a silent queue before the keep-alive timeout; the AER is exempt', { timeout: 20_000 }, async (t) => {
  const seen: Seen = { keepAlives: [], aers: 0, aec: undefined };
  let silent = false;
  const ft = await FakeTarget.start(miniController({ ctratt: 0, oaes: AEN_NS_ATTR, silent: () => silent }, seen));
  const ctrl = await connectMocked(t, ft.port, { kato: 600, watchdogMs: 150 });
  let err: NvmfNbdError | undefined;
  let closed = false;
  void closeError(ctrl).then((e) => { err = e; closed = true; });
  try {
    await until(() => seen.aers === 1, 'the AER sent');
    // An AER stays outstanding with no reply through 5 ticks (KATO/2 = 300 ms each, 10× the
    // watchdog): the watchdog must not count it.
    for (let i = 0; i < 5; i++) await step(t, ctrl, seen, 300);
    assert.equal(seen.aec, AEN_NS_ATTR, 'namespace attribute notices enabled');
    assert.equal(seen.aers, 1, 'one AER kept outstanding');
    assert.equal(ctrl.alive, true, 'an unanswered AER is not a stall');
    // Now a command goes unanswered: the watchdog (150 ms, checked every tick) fires at the
    // second tick, while the keep-alive sent at the first has been out only 300 ms of its 600.
    silent = true;
    const stuck = ctrl.adminCommand(sqeIdentify(1), { dataInLength: 4096 }).catch((e: unknown) => e);
    t.mock.timers.tick(300);
    await new Promise<void>((r) => setImmediate(r));
    assert.equal(ctrl.alive, true, 'one tick: the silence starts being measured');
    t.mock.timers.tick(300);
    await until(() => closed, 'the association failed');
    assert.equal(err?.code, ErrorCode.TARGET_UNRESPONSIVE);
    assert.ok(((await stuck) as NvmfNbdError).code !== undefined);
  } finally {
    t.mock.timers.reset();
    ctrl.destroy();
    await ft.close();
  }
});
