/**
 * Recovery-option boundaries of ResilientController (src/controller/resilient.ts) that the
 * mutation audit (issue 15) found untested: ctrl_loss_tmo 0 gives up at once (it is not
 * "forever", that is −1), fast_io_fail_tmo 0 fails held I/O at once, a fast_io_fail_tmo not
 * below ctrl_loss_tmo is ignored, −1 turns each off. Timers are `mock.timers`.
 */
import { test, before, after } from 'node:test';
import type { TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { NvmeTarget } from '../../src/embedded-target/target';
import { CtrlState, ResilientController } from '../../src/controller/resilient';
import type { ResilienceOptions } from '../../src/controller/resilient';
import type { ControllerOptions } from '../../src/controller/controller';
import { ErrorCode, NvmfNbdError } from '../../src/errors';
import { FaultProxy, ProxyMode } from '../helpers/fault-proxy';
import { tickUntil, track, turns, until } from '../helpers/clock';

const NQN = 'nqn.2014-08.org.nvmf-nbd:mut-ctrl-resilient';
const HOSTNQN = 'nqn.2014-08.org.nvmexpress:uuid:0f6c3d1e-1a2b-4c3d-9e8f-00000000e001';
const HOSTID = '0f6c3d1e-1a2b-4c3d-9e8f-00000000e001';

let target: NvmeTarget;
let targetPort = 0;

before(async () => {
  target = new NvmeTarget({
    listen: { host: '127.0.0.1', port: 0 },
    subsystems: [{ nqn: NQN, namespaces: [{ nsid: 1, sizeBytes: 1 << 20, backing: { memory: true } }] }],
    log: () => undefined,
  });
  targetPort = (await target.listen()).port;
});

after(async () => {
  await target.close();
});

function opts(port: number, o: Partial<ResilienceOptions>): ControllerOptions & ResilienceOptions {
  return {
    traddr: '127.0.0.1', trsvcid: port, subnqn: NQN, hostnqn: HOSTNQN, hostid: HOSTID, nrIoQueues: 1, queueSize: 8,
    kato: 1000, connectTimeoutMs: 2000, reconnectDelayMs: 100, quiesceMs: 0, ...o,
  };
}

function settle<T>(p: Promise<T>): Promise<{ ok: boolean; err?: NvmfNbdError }> {
  return p.then(() => ({ ok: true }), (err: NvmfNbdError) => ({ ok: false, err }));
}

/** Connect, mock setTimeout, cut the link (reconnects refused) and wait for CONNECTING. */
async function lose(t: TestContext, o: Partial<ResilienceOptions>): Promise<{ c: ResilientController; proxy: FaultProxy }> {
  const proxy = await FaultProxy.start({ port: targetPort });
  const c = await ResilientController.connect(opts(proxy.port, o));
  t.mock.timers.enable({ apis: ['setTimeout'] });
  proxy.setMode(ProxyMode.REFUSE);
  proxy.cutAll();
  await until(() => c.state !== CtrlState.LIVE, 'the loss detected');
  return { c, proxy };
}

async function cleanup(t: TestContext, c: ResilientController, proxy: FaultProxy): Promise<void> {
  t.mock.timers.reset();
  await c.close();
  await proxy.close();
}

test('ctrl_loss_tmo 0: gives up at the first timer turn after the loss, held I/O fails with EIO', { timeout: 30_000 }, async (t) => {
  const { c, proxy } = await lose(t, { ctrlLossTmoMs: 0 });
  try {
    const dead = track(new Promise<NvmfNbdError>((resolve) => c.once('dead', resolve)));
    const held = c.state === CtrlState.CONNECTING ? track(settle(c.write(1, 0n, Buffer.alloc(512, 1)))) : undefined;
    t.mock.timers.tick(0);
    await until(() => dead.done, 'dead after ctrl_loss_tmo 0');
    assert.equal((await dead.promise).code, ErrorCode.CONTROLLER_LOST);
    assert.equal(c.state, CtrlState.DEAD);
    assert.match((await dead.promise).message, /ctrl_loss_tmo \(0 ms\)/);
    if (held !== undefined) {
      const r = await held.promise;
      assert.equal(r.err?.errno, 5);
    }
    const after = await settle(c.read(1, 0n, 1));
    assert.equal(after.err?.errno, 5, 'new I/O after giving up fails with EIO');
  } finally {
    await cleanup(t, c, proxy);
  }
});

test('ctrl_loss_tmo −1: never gives up (still reconnecting after 10 refused attempts a minute apart)', { timeout: 30_000 }, async (t) => {
  const { c, proxy } = await lose(t, { ctrlLossTmoMs: -1, reconnectDelayMs: 60_000 });
  try {
    const held = track(settle(c.write(1, 0n, Buffer.alloc(512, 2))));
    await tickUntil(t, () => c.attempts >= 10, '10 refused attempts', 60_000, 500);
    await turns(10);
    assert.equal(c.state, CtrlState.CONNECTING);
    assert.equal(held.done, false, 'held, not failed');
    proxy.setMode(ProxyMode.FORWARD);
    // Minutes pass in big steps until the next attempt starts; then small steps, so the
    // attempt's real I/O (TCP, Connect, Identify, queues) finishes long before its mocked
    // connect timeout (2 s = 400 steps) even on a loaded machine.
    const a = c.attempts;
    await tickUntil(t, () => c.attempts > a || held.done, 'the next reconnect attempt', 1000, 300);
    await tickUntil(t, () => held.done, 'the held write re-driven after the reconnect', 5, 20_000);
    assert.equal((await held.promise).ok, true);
    // (Mocked minutes also expire the target's keep-alive of the new association: count, not state.)
    assert.ok(c.reconnects >= 1, `reconnects ${c.reconnects}`);
  } finally {
    await cleanup(t, c, proxy);
  }
});

test('fast_io_fail_tmo 0: held I/O fails with EIO at the first timer turn; reconnecting goes on', { timeout: 30_000 }, async (t) => {
  const { c, proxy } = await lose(t, { ctrlLossTmoMs: -1, fastIoFailTmoMs: 0, reconnectDelayMs: 60_000 });
  try {
    const held = track(settle(c.write(1, 8n, Buffer.alloc(512, 3))));
    t.mock.timers.tick(0);
    await until(() => held.done, 'held write failed by fast_io_fail_tmo 0');
    const r = await held.promise;
    assert.equal(r.err?.code, ErrorCode.CONTROLLER_LOST);
    assert.equal(r.err?.errno, 5);
    assert.equal(c.state, CtrlState.CONNECTING);
  } finally {
    await cleanup(t, c, proxy);
  }
});

test('fast_io_fail_tmo not below ctrl_loss_tmo is ignored: held I/O waits for ctrl_loss_tmo', { timeout: 30_000 }, async (t) => {
  const { c, proxy } = await lose(t, { ctrlLossTmoMs: 500, fastIoFailTmoMs: 500, reconnectDelayMs: 60_000 });
  try {
    const held = track(settle(c.write(1, 16n, Buffer.alloc(512, 4))));
    t.mock.timers.tick(499);
    await turns(20);
    assert.equal(held.done, false);
    t.mock.timers.tick(1);
    await until(() => held.done, 'held write failed at ctrl_loss_tmo');
    const r = await held.promise;
    assert.match(r.err?.message ?? '', /ctrl_loss_tmo/, 'failed by ctrl_loss_tmo, not fast_io_fail_tmo');
    assert.equal(c.state, CtrlState.DEAD);
  } finally {
    await cleanup(t, c, proxy);
  }
});

test('fast_io_fail_tmo with ctrl_loss_tmo −1 (never) still fails held I/O at its expiry', { timeout: 30_000 }, async (t) => {
  const { c, proxy } = await lose(t, { ctrlLossTmoMs: -1, fastIoFailTmoMs: 200, reconnectDelayMs: 60_000 });
  try {
    const held = track(settle(c.write(1, 24n, Buffer.alloc(512, 5))));
    t.mock.timers.tick(199);
    await turns(20);
    assert.equal(held.done, false);
    t.mock.timers.tick(1);
    await until(() => held.done, 'held write failed at fast_io_fail_tmo');
    assert.match((await held.promise).err?.message ?? '', /fast_io_fail_tmo \(200 ms\)/);
    assert.equal(c.state, CtrlState.CONNECTING);
  } finally {
    await cleanup(t, c, proxy);
  }
});
