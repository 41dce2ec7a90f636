/**
 * Failure detection of one association (src/controller/controller.ts), against a small scripted
 * admin-only controller whose Identify Controller CTRATT/OAES the test chooses:
 * - Traffic Based Keep Alive (CTRATT bit 6): no Keep Alive while commands complete, Keep Alives
 *   again when idle; without TBKAS they go out every KATO/2 whatever the traffic.
 * - a Keep Alive not answered within KATO fails the association (KEEPALIVE_TIMEOUT);
 * - the receive watchdog fails a queue whose commands get no reply (TARGET_UNRESPONSIVE) before
 *   the keep-alive would, and ignores the outstanding AER (it has no deadline).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Controller, CTRATT_TBKAS, AEN_NS_ATTR } from '../../src/controller/controller';
import type { ControllerOptions } from '../../src/controller/controller';
import { ErrorCode, NvmfNbdError } from '../../src/errors';
import { parseSqe, sqeIdentify } from '../../src/wire';
import { FakeTarget, identifyControllerData } from '../helpers/fake-target';
import type { FakeConn } from '../helpers/fake-target';

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

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Send Identify commands every 20 ms for `ms`. */
async function traffic(ctrl: Controller, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    await ctrl.adminCommand(sqeIdentify(1), { dataInLength: 4096 });
    await sleep(20);
  }
}

function closeError(ctrl: Controller): Promise<NvmfNbdError | undefined> {
  return new Promise((resolve) => ctrl.once('close', resolve));
}

test('TBKAS: no Keep Alive while commands complete, Keep Alives again when idle', { timeout: 10_000 }, async () => {
  const seen: Seen = { keepAlives: [], aers: 0, aec: undefined };
  const t = await FakeTarget.start(miniController({ ctratt: CTRATT_TBKAS }, seen));
  const ctrl = await Controller.connect(opts(t.port, { kato: 400 }));
  try {
    assert.equal(ctrl.trafficBasedKeepAlive, true);
    const t0 = Date.now();
    await traffic(ctrl, 1200);
    const busy = seen.keepAlives.filter((x) => x >= t0).length;
    assert.ok(busy <= 1, `${busy} keep-alives while traffic flowed`);
    const t1 = Date.now();
    await sleep(1000);
    const idle = seen.keepAlives.filter((x) => x >= t1).length;
    assert.ok(idle >= 2, `${idle} keep-alives while idle`);
    assert.equal(ctrl.alive, true);
  } finally {
    await ctrl.close();
    await t.close();
  }
});

test('without TBKAS Keep Alives go out every KATO/2 even with traffic', { timeout: 10_000 }, async () => {
  const seen: Seen = { keepAlives: [], aers: 0, aec: undefined };
  const t = await FakeTarget.start(miniController({ ctratt: 0 }, seen));
  const ctrl = await Controller.connect(opts(t.port, { kato: 400 }));
  try {
    assert.equal(ctrl.trafficBasedKeepAlive, false);
    const t0 = Date.now();
    await traffic(ctrl, 1200);
    const n = seen.keepAlives.filter((x) => x >= t0).length;
    assert.ok(n >= 4, `${n} keep-alives in 1.2 s at KATO 400 ms`);
  } finally {
    await ctrl.close();
    await t.close();
  }
});

test('a Keep Alive unanswered for KATO fails the association with KEEPALIVE_TIMEOUT', { timeout: 10_000 }, async () => {
  const seen: Seen = { keepAlives: [], aers: 0, aec: undefined };
  let silent = false;
  const t = await FakeTarget.start(miniController({ ctratt: 0, silent: () => silent }, seen));
  const ctrl = await Controller.connect(opts(t.port, { kato: 400, watchdogMs: 0 }));
  const closed = closeError(ctrl);
  try {
    const t0 = Date.now();
    silent = true;
    const err = await closed;
    const took = Date.now() - t0;
    assert.equal(err?.code, ErrorCode.KEEPALIVE_TIMEOUT);
    assert.ok(took >= 400 && took < 1500, `detected after ${took} ms`);
  } finally {
    ctrl.destroy();
    await t.close();
  }
});

test('the receive watchdog fails a silent queue before the keep-alive timeout; the AER is exempt', { timeout: 10_000 }, async () => {
  const seen: Seen = { keepAlives: [], aers: 0, aec: undefined };
  let silent = false;
  const t = await FakeTarget.start(miniController({ ctratt: 0, oaes: AEN_NS_ATTR, silent: () => silent }, seen));
  const ctrl = await Controller.connect(opts(t.port, { kato: 600, watchdogMs: 150 }));
  const closed = closeError(ctrl);
  try {
    // An AER stays outstanding with no reply: the watchdog must not count it.
    await sleep(1500);
    assert.equal(seen.aec, AEN_NS_ATTR, 'namespace attribute notices enabled');
    assert.equal(seen.aers, 1, 'one AER kept outstanding');
    assert.equal(ctrl.alive, true, 'an unanswered AER is not a stall');
    // Now a command goes unanswered: the watchdog (150 ms, checked every KATO/2) fires first.
    silent = true;
    const stuck = ctrl.adminCommand(sqeIdentify(1), { dataInLength: 4096 }).catch((e: unknown) => e);
    const err = await closed;
    assert.equal(err?.code, ErrorCode.TARGET_UNRESPONSIVE);
    assert.ok(((await stuck) as NvmfNbdError).code !== undefined);
  } finally {
    ctrl.destroy();
    await t.close();
  }
});
