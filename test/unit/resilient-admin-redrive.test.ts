/**
 * Admin commands across a lost association (src/controller/resilient.ts): a user pass-through
 * that the target may already have executed is never sent again (it fails with
 * CONTROLLER_LOST / EIO), while the host's own idempotent reads (Identify…) are re-driven.
 * The embedded target's admin handler is wrapped so a command can be "executed" at once and
 * answered only when the test says so, i.e. after it has dropped the association.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { NvmeTarget } from '../../src/embedded-target/target';
import { ResilientController } from '../../src/controller/resilient';
import { ErrorCode, NvmfNbdError } from '../../src/errors';
import { NbdErrno } from '../../src/block/errno';
import { sqeIdentify, Cns } from '../../src/wire';
import type { ParsedSqe } from '../../src/wire';
import { until } from '../helpers/clock';

const NQN = 'nqn.2014-08.org.nvmf-nbd:admin-redrive';
const HOSTNQN = 'nqn.2014-08.org.nvmexpress:uuid:0f6c3d1e-1a2b-4c3d-9e8f-00000000c001';
const HOSTID = '0f6c3d1e-1a2b-4c3d-9e8f-00000000c001';
const VENDOR_OPCODE = 0xc0;

// The target's queue looks adminCommand up on the module at each call, so wrapping the export works.
// eslint-disable-next-line @typescript-eslint/no-require-imports
const adminMod = require('../../src/embedded-target/admin') as { adminCommand: (ctx: unknown, ctrl: unknown, s: ParsedSqe, maxData: number) => unknown };
const original = adminMod.adminCommand;
let vendorExecuted = 0;
let identifyCtrlSeen = 0;
let delayIdentifyOnce = false;
let holdVendorOnce = false;
/** Completions the wrapped handler keeps back until the test releases them. */
const heldReplies: Array<() => void> = [];
const releaseHeld = (): void => { for (const r of heldReplies.splice(0)) r(); };

let target: NvmeTarget;
let port = 0;

before(async () => {
  adminMod.adminCommand = (ctx, ctrl, s, maxData) => {
    if (s.opcode === VENDOR_OPCODE) {
      // Executed now (say, a vendor "erase"); the first one's completion waits for the test.
      vendorExecuted++;
      if (!holdVendorOnce) return { dw0: 0 };
      holdVendorOnce = false;
      return new Promise((r) => heldReplies.push(() => r({ dw0: 0 })));
    }
    if (s.opcode === 0x06 && (s.cdw10 & 0xff) === Cns.CONTROLLER) {
      identifyCtrlSeen++;
      if (delayIdentifyOnce) {
        delayIdentifyOnce = false;
        const r = original(ctx, ctrl, s, maxData);
        return new Promise((res) => heldReplies.push(() => res(r)));
      }
    }
    return original(ctx, ctrl, s, maxData);
  };
  target = new NvmeTarget({ listen: { host: '127.0.0.1', port: 0 }, subsystems: [{ nqn: NQN, namespaces: [{ nsid: 1, sizeBytes: 1 << 20, backing: { memory: true } }] }] });
  port = (await target.listen()).port;
});

after(async () => {
  adminMod.adminCommand = original;
  await target.close();
});

function connect(): Promise<ResilientController> {
  return ResilientController.connect({
    traddr: '127.0.0.1', trsvcid: port, subnqn: NQN, hostnqn: HOSTNQN, hostid: HOSTID, nrIoQueues: 1,
    kato: 1000, reconnectDelayMs: 100, quiesceMs: 100, ctrlLossTmoMs: 10_000,
  });
}

/** Drop the current association from the host side (as a reset link would). */
function dropAssociation(rc: ResilientController): void {
  (rc as unknown as { ctrl: { destroy(e: NvmfNbdError): void } }).ctrl.destroy(new NvmfNbdError(ErrorCode.CONNECTION_CLOSED, 'test: link lost'));
}

test('a pass-through outstanding when the association is lost fails with CONTROLLER_LOST (EIO) and is not sent again', { timeout: 10_000 }, async () => {
  const rc = await connect();
  try {
    vendorExecuted = 0;
    holdVendorOnce = true;
    const sqe = Buffer.alloc(64);
    sqe[0] = VENDOR_OPCODE;
    const p = rc.adminCommand(sqe, { passthru: true }).then(() => undefined, (e: NvmfNbdError) => e);
    await until(() => vendorExecuted === 1, 'the target executed the pass-through'); // its completion is held back
    dropAssociation(rc);
    const err = await p;
    assert.ok(err instanceof NvmfNbdError, 'the pass-through must fail, not be re-driven');
    assert.equal(err.code, ErrorCode.CONTROLLER_LOST);
    assert.equal(err.errno, NbdErrno.EIO);
    releaseHeld(); // the late completion goes to the dead association
    await new Promise<void>((r) => (rc.state === 'live' ? r() : rc.once('state', () => r())));
    assert.equal(vendorExecuted, 1);
    // Once live again, a new pass-through runs normally. Held operations are re-driven before
    // anything new is dispatched, so a re-sent copy would have been counted before this one.
    await rc.adminCommand(sqe, { passthru: true });
    assert.equal(vendorExecuted, 2, 'the lost pass-through was sent again');
  } finally {
    await rc.close();
  }
});

test('an Identify the host issued itself is re-driven after the association is lost', { timeout: 10_000 }, async () => {
  const rc = await connect();
  try {
    const seen = identifyCtrlSeen;
    delayIdentifyOnce = true;
    const p = rc.adminCommand(sqeIdentify(Cns.CONTROLLER), { dataInLength: 4096 });
    await until(() => identifyCtrlSeen > seen, 'the target received the Identify'); // its completion is held back
    dropAssociation(rc);
    releaseHeld();
    const r = await p;
    assert.equal(r.data?.length, 4096);
    assert.equal(rc.reconnects, 1);
    // The lost one, the reconnect's own bring-up Identify, and the re-driven one.
    assert.ok(identifyCtrlSeen - seen >= 3, `Identify Controller seen ${identifyCtrlSeen - seen} times`);
  } finally {
    await rc.close();
  }
});
