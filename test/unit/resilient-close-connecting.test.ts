/**
 * ResilientController.close() while CONNECTING (src/controller/resilient.ts): it must not sit
 * out a reconnect_delay, even when it runs before the recovery loop started its first sleep
 * (right after the state change, while the old sockets are still closing).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { NvmeTarget } from '../../src/embedded-target/target';
import { CtrlState, ResilientController } from '../../src/controller/resilient';

const NQN = 'nqn.2014-08.org.nvmf-nbd:close-connecting';
const HOSTNQN = 'nqn.2014-08.org.nvmexpress:uuid:0f6c3d1e-1a2b-4c3d-9e8f-00000000d001';
const HOSTID = '0f6c3d1e-1a2b-4c3d-9e8f-00000000d001';

// reconnect_delay and ctrl_loss_tmo are far beyond the test's timeout: a close() that sat out
// either would fail the test by timing out (no elapsed-time assertion needed).
test('close() right after the association is lost returns at once, not after reconnect_delay', { timeout: 15_000 }, async () => {
  const target = new NvmeTarget({ listen: { host: '127.0.0.1', port: 0 }, subsystems: [{ nqn: NQN, namespaces: [{ nsid: 1, sizeBytes: 1 << 20, backing: { memory: true } }] }] });
  const { port } = await target.listen();
  const rc = await ResilientController.connect({
    traddr: '127.0.0.1', trsvcid: port, subnqn: NQN, hostnqn: HOSTNQN, hostid: HOSTID, nrIoQueues: 1, kato: 1000,
    reconnectDelayMs: 600_000, ctrlLossTmoMs: -1,
  });
  const connecting = new Promise<void>((r) => rc.on('state', (s: string) => { if (s === CtrlState.CONNECTING) r(); }));
  await target.close();
  await connecting;
  await rc.close();
  assert.equal(rc.state, CtrlState.DEAD);
});
