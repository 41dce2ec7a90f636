/**
 * The reconnect state machine (src/controller/resilient.ts) against the embedded target behind
 * a FaultProxy: hold and FIFO re-drive, the bounded hold queue, fast_io_fail_tmo, ctrl_loss_tmo,
 * close while CONNECTING, a changed subsystem NQN on reconnect, keep-alive failure detection on a
 * stalled link, and namespace-attribute AENs. The recovery timers (fast_io_fail_tmo,
 * ctrl_loss_tmo, reconnect_delay) run on `mock.timers`: the tests advance them and check what
 * happened 1 ms before and at the deadline; nothing asserts elapsed wall-clock time.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as net from 'node:net';
import { NvmeTarget } from '../../src/embedded-target/target';
import { CtrlState, ResilientController, diffNamespaces } from '../../src/controller/resilient';
import type { ResilienceOptions } from '../../src/controller/resilient';
import type { ControllerOptions, NamespaceChanges, NamespaceInfo } from '../../src/controller/controller';
import { ErrorCode, NvmfNbdError } from '../../src/errors';
import { FaultProxy, ProxyMode } from '../helpers/fault-proxy';
import { FakeTarget, serveController } from '../helpers/fake-target';
import { throwsCode } from '../helpers/assert-code';
import { tickUntil, track, turns, until } from '../helpers/clock';

const NQN = 'nqn.2014-08.org.nvmf-nbd:resilient-unit';
const HOSTNQN = 'nqn.2014-08.org.nvmexpress:uuid:0f6c3d1e-1a2b-4c3d-9e8f-00000000a001';
const HOSTID = '0f6c3d1e-1a2b-4c3d-9e8f-00000000a001';

let target: NvmeTarget;
let targetPort = 0;

before(async () => {
  target = new NvmeTarget({
    listen: { host: '127.0.0.1', port: 0 },
    subsystems: [{ nqn: NQN, namespaces: [{ nsid: 1, sizeBytes: 8 << 20, backing: { memory: true } }] }],
  });
  targetPort = (await target.listen()).port;
});

after(async () => {
  await target.close();
});

function opts(port: number, o: Partial<ControllerOptions & ResilienceOptions> = {}): ControllerOptions & ResilienceOptions {
  return {
    traddr: '127.0.0.1', trsvcid: port, subnqn: NQN, hostnqn: HOSTNQN, hostid: HOSTID, nrIoQueues: 1, queueSize: 32,
    kato: 1000, connectTimeoutMs: 2000, reconnectDelayMs: 100, ctrlLossTmoMs: 10_000, quiesceMs: 50, ...o,
  };
}

const block = (byte: number): Buffer => Buffer.alloc(4096, byte);

/** Waits for state `s` (an event; the real-time limit only guards against a hang). */
function waitState(c: ResilientController, s: string, ms = 10_000): Promise<void> {
  return until(() => c.state === s, `state ${s} (now ${c.state})`, ms);
}

/** Settle a promise into { ok, err } without an unhandled rejection. */
function settle<T>(p: Promise<T>): Promise<{ ok: boolean; value?: T; err?: NvmfNbdError }> {
  return p.then((value) => ({ ok: true, value }), (err: NvmfNbdError) => ({ ok: false, err }));
}

test('in-flight and new writes are held while reconnecting and re-driven in submission order', { timeout: 15_000 }, async () => {
  const proxy = await FaultProxy.start({ port: targetPort });
  const c = await ResilientController.connect(opts(proxy.port));
  const states: string[] = [];
  c.on('state', (s: string) => states.push(s));
  try {
    await c.write(1, 0n, Buffer.alloc(4096 * 8, 0xee));
    // Refuse reconnects for a moment so everything below is held, then cut mid-flight.
    proxy.setMode(ProxyMode.REFUSE);
    const first = settle(c.write(1, 0n, block(1)));
    proxy.cutAll();
    await waitState(c, CtrlState.CONNECTING);
    // Five writes to the same block: with one I/O queue, FIFO re-drive means the last one wins.
    const writes = [2, 3, 4, 5, 6].map((b) => settle(c.write(1, 0n, block(b))));
    const held = c.heldOps;
    assert.ok(held.count >= 5, `held ${held.count}`);
    assert.equal(c.lastError?.code !== undefined, true);
    // Two reconnect attempts refused: nothing is re-driven, it all stays held.
    await until(() => c.attempts >= 2 && c.lastError !== undefined, 'two refused reconnect attempts');
    assert.equal(c.state, CtrlState.CONNECTING, 'still reconnecting while the proxy refuses');
    assert.ok(c.heldOps.count >= 5, `still held: ${c.heldOps.count}`);
    proxy.setMode(ProxyMode.FORWARD);
    await waitState(c, CtrlState.LIVE);
    const results = await Promise.all([first, ...writes]);
    assert.deepEqual(results.map((r) => r.ok), [true, true, true, true, true, true]);
    const back = await c.read(1, 0n, 8);
    assert.equal(back[0], 6, 'the last held write is the one on the media');
    assert.equal(c.reconnects, 1);
    assert.ok(c.describeState().attempts === 0);
    assert.deepEqual(states, [CtrlState.CONNECTING, CtrlState.LIVE]);
  } finally {
    await c.close();
    await proxy.close();
  }
});

test('the hold queue is bounded in bytes: beyond it new I/O fails with EIO (HOLD_QUEUE_FULL)', { timeout: 15_000 }, async () => {
  const proxy = await FaultProxy.start({ port: targetPort });
  const c = await ResilientController.connect(opts(proxy.port, { holdLimitBytes: 8192 }));
  try {
    proxy.setMode(ProxyMode.REFUSE);
    proxy.cutAll();
    await waitState(c, CtrlState.CONNECTING);
    const a = settle(c.write(1, 8n, block(7)));
    const b = settle(c.write(1, 16n, block(8)));
    const over = await settle(c.write(1, 24n, block(9)));
    assert.equal(over.ok, false);
    assert.equal(over.err?.code, ErrorCode.HOLD_QUEUE_FULL);
    assert.equal(over.err?.errno, 5);
    proxy.setMode(ProxyMode.FORWARD);
    assert.deepEqual([(await a).ok, (await b).ok], [true, true]);
    assert.equal((await c.read(1, 16n, 8))[0], 8);
  } finally {
    await c.close();
    await proxy.close();
  }
});

test('fast_io_fail_tmo fails held I/O with EIO when it expires (not 1 ms earlier) while reconnecting continues', { timeout: 30_000 }, async (t) => {
  const proxy = await FaultProxy.start({ port: targetPort });
  const c = await ResilientController.connect(opts(proxy.port, { fastIoFailTmoMs: 300 }));
  try {
    t.mock.timers.enable({ apis: ['setTimeout'] });
    proxy.setMode(ProxyMode.REFUSE);
    proxy.cutAll();
    await waitState(c, CtrlState.CONNECTING);
    const held = track(settle(c.write(1, 32n, block(3))));
    t.mock.timers.tick(299);
    await turns(20);
    assert.equal(held.done, false, 'still held 1 ms before fast_io_fail_tmo');
    t.mock.timers.tick(1);
    // (a real-time guard: with mocked timers the test's own timeout cannot fire)
    await until(() => held.done, 'held write failed at fast_io_fail_tmo');
    const r = await held.promise;
    assert.equal(r.ok, false);
    assert.equal(r.err?.errno, 5);
    assert.equal(r.err?.code, ErrorCode.CONTROLLER_LOST);
    assert.match(r.err?.message ?? '', /fast_io_fail_tmo \(300 ms\)/);
    assert.equal(c.state, CtrlState.CONNECTING, 'reconnect goes on');
    const later = await settle(c.write(1, 32n, block(4)));
    assert.equal(later.err?.errno, 5, 'after fast_io_fail new I/O fails at once');
    proxy.setMode(ProxyMode.FORWARD);
    await tickUntil(t, () => c.state === CtrlState.LIVE, 'reconnected');
    await c.write(1, 32n, block(5));
    assert.equal((await c.read(1, 32n, 8))[0], 5);
  } finally {
    t.mock.timers.reset(); // closing runs on real timers
    await c.close();
    await proxy.close();
  }
});

test('ctrl_loss_tmo: at its expiry (not 1 ms earlier) held I/O fails with EIO, the controller is dead, nothing hangs', { timeout: 30_000 }, async (t) => {
  const proxy = await FaultProxy.start({ port: targetPort });
  const c = await ResilientController.connect(opts(proxy.port, { ctrlLossTmoMs: 800 }));
  let dead: NvmfNbdError | undefined;
  c.on('dead', (e: NvmfNbdError) => { dead = e; });
  const closed = new Promise<unknown>((resolve) => c.once('close', resolve));
  try {
    t.mock.timers.enable({ apis: ['setTimeout'] });
    proxy.setMode(ProxyMode.REFUSE);
    proxy.cutAll();
    await waitState(c, CtrlState.CONNECTING);
    const pending = track(settle(c.write(1, 40n, block(1))));
    // Reconnect attempts every 100 ms are refused meanwhile.
    for (let ms = 0; ms < 799; ms += 50) {
      t.mock.timers.tick(Math.min(50, 799 - ms));
      await turns(10);
    }
    assert.equal(pending.done, false, 'still held 1 ms before ctrl_loss_tmo');
    assert.equal(c.state, CtrlState.CONNECTING);
    t.mock.timers.tick(1);
    await until(() => pending.done, 'held write failed at ctrl_loss_tmo');
    const held = await pending.promise;
    assert.equal(held.ok, false);
    assert.equal(held.err?.errno, 5);
    assert.match(held.err?.message ?? '', /ctrl_loss_tmo \(800 ms\)/);
    assert.equal(c.state, CtrlState.DEAD);
    assert.equal(dead?.code, ErrorCode.CONTROLLER_LOST);
    assert.equal(((await closed) as NvmfNbdError).code, ErrorCode.CONTROLLER_LOST);
    const after = await settle(c.read(1, 0n, 1));
    assert.equal(after.err?.errno, 5);
    assert.equal(c.describeState().lastError?.code, ErrorCode.CONTROLLER_LOST);
  } finally {
    t.mock.timers.reset(); // closing runs on real timers
    await c.close();
    await proxy.close();
  }
});

test('close() while CONNECTING fails held I/O and ends in DEAD without sitting out reconnect_delay', { timeout: 15_000 }, async () => {
  const proxy = await FaultProxy.start({ port: targetPort });
  // reconnect_delay far beyond the test's timeout: a close() that waited for it would hang.
  const c = await ResilientController.connect(opts(proxy.port, { ctrlLossTmoMs: -1, reconnectDelayMs: 600_000 }));
  try {
    proxy.setMode(ProxyMode.REFUSE);
    proxy.cutAll();
    await waitState(c, CtrlState.CONNECTING);
    const held = settle(c.write(1, 48n, block(1)));
    await c.close();
    const r = await held;
    assert.equal(r.ok, false);
    assert.equal(r.err?.code, ErrorCode.CONTROLLER_DELETED);
    assert.equal(c.state, CtrlState.DEAD);
  } finally {
    await proxy.close();
  }
});

test('a stalled link is detected by keep-alive and repaired once it flows again', { timeout: 15_000 }, async () => {
  const proxy = await FaultProxy.start({ port: targetPort });
  const c = await ResilientController.connect(opts(proxy.port, { kato: 600 }));
  try {
    proxy.setMode(ProxyMode.STALL);
    const w = settle(c.write(1, 56n, block(9)));
    // Detected by keep-alive / the receive watchdog (the I/O timeout is 30 s, beyond the wait).
    await waitState(c, CtrlState.CONNECTING);
    assert.ok([ErrorCode.KEEPALIVE_TIMEOUT, ErrorCode.TARGET_UNRESPONSIVE].includes(c.lastError?.code as never), String(c.lastError?.code));
    proxy.cutAll();
    proxy.setMode(ProxyMode.FORWARD);
    await waitState(c, CtrlState.LIVE);
    assert.equal((await w).ok, true);
    assert.equal((await c.read(1, 56n, 8))[0], 9);
  } finally {
    await c.close();
    await proxy.close();
  }
});

test('a different subsystem behind the address on reconnect is fatal (SUBSYSTEM_CHANGED)', { timeout: 15_000 }, async () => {
  // A forwarder whose destination the test switches: first the embedded target, then a fake
  // controller that accepts any subsystem NQN but identifies as nqn.fake.
  const fake = await FakeTarget.start((conn) => serveController(conn, { namespaces: new Map([[1, { data: Buffer.alloc(1 << 20), lbaSize: 512 }]]) }));
  let dest = targetPort;
  const socks = new Set<net.Socket>();
  const fwd = net.createServer((s) => {
    const up = net.connect(dest, '127.0.0.1');
    socks.add(s).add(up);
    s.pipe(up).pipe(s);
    const end = (): void => { s.destroy(); up.destroy(); };
    s.on('error', end).on('close', end);
    up.on('error', end).on('close', end);
  });
  await new Promise<void>((r) => fwd.listen(0, '127.0.0.1', r));
  const c = await ResilientController.connect(opts((fwd.address() as net.AddressInfo).port, { ctrlLossTmoMs: -1 }));
  try {
    const dead = new Promise<NvmfNbdError>((resolve) => c.once('dead', resolve));
    dest = fake.port;
    for (const s of socks) s.destroy();
    const err = await dead;
    assert.equal(err.code, ErrorCode.SUBSYSTEM_CHANGED);
    assert.equal(c.state, CtrlState.DEAD);
  } finally {
    await c.close();
    for (const s of socks) s.destroy();
    await new Promise<void>((r) => fwd.close(() => r()));
    await fake.close();
  }
});

test('namespace added and removed at runtime: AEN → Changed Namespace List → namespaces event', { timeout: 15_000 }, async () => {
  const c = await ResilientController.connect(opts(targetPort));
  try {
    const next = (): Promise<NamespaceChanges> => new Promise((resolve) => c.once('namespaces', resolve));
    let ev = next();
    const nsid = await target.addNamespace(NQN, { nsid: 5, sizeBytes: 1 << 20, backing: { memory: true } });
    assert.deepEqual(await ev, { added: [nsid], removed: [], resized: [] });
    assert.equal(c.namespaces.get(5)?.nsze, BigInt((1 << 20) / 512));
    await c.write(5, 0n, block(3));
    ev = next();
    await target.removeNamespace(NQN, 5);
    assert.deepEqual(await ev, { added: [], removed: [5], resized: [] });
    assert.equal(c.namespaces.has(5), false);
  } finally {
    await c.close();
  }
});

test('diffNamespaces reports added, removed and resized namespaces', () => {
  const ns = (nsid: number, nsze: bigint): NamespaceInfo => ({ nsid, nsze, lbaSize: 512, usable: true } as NamespaceInfo);
  const a = new Map([[1, ns(1, 100n)], [2, ns(2, 100n)]]);
  const b = new Map([[1, ns(1, 200n)], [3, ns(3, 100n)]]);
  assert.deepEqual(diffNamespaces(a, b), { added: [3], removed: [2], resized: [1] });
});

test('connect flags -c/-l/--fast-io-fail-tmo/--io-timeout become the recovery options in ms', async () => {
  const { parseArgs } = await import('../../src/cli/args');
  const { CONNECT_OPTIONS, controllerOptionsFromArgs } = await import('../../src/cli/verbs/connect');
  const base = ['-t', 'tcp', '-a', '127.0.0.1', '-n', NQN, '-q', HOSTNQN, '-I', HOSTID];
  const o = controllerOptionsFromArgs(parseArgs([...base, '-c', '2', '-l', '-1', '--fast-io-fail-tmo', '5', '--io-timeout', '7'], CONNECT_OPTIONS).options);
  assert.equal(o.reconnectDelayMs, 2000);
  assert.equal(o.ctrlLossTmoMs, -1);
  assert.equal(o.fastIoFailTmoMs, 5000);
  assert.equal(o.ioTimeoutMs, 7000);
  // Absent flags: Linux's defaults (reconnect_delay 10 s, ctrl_loss_tmo 600 s, fast_io_fail off, io_timeout 30 s).
  const d = controllerOptionsFromArgs(parseArgs(base, CONNECT_OPTIONS).options);
  assert.deepEqual([d.reconnectDelayMs, d.ctrlLossTmoMs, d.fastIoFailTmoMs, d.ioTimeoutMs], [10_000, 600_000, -1, 30_000]);
  throwsCode(() => parseArgs([...base, '-l', '-2'], CONNECT_OPTIONS), ErrorCode.CLI_USAGE);
});

test('a namespace whose block size changed across a reconnect is retired: its held I/O fails with EIO, never runs with the old LBA math; a new object serves the new format', { timeout: 15_000 }, async () => {
  await target.addNamespace(NQN, { nsid: 6, sizeBytes: 1 << 20, backing: { memory: true } });
  const proxy = await FaultProxy.start({ port: targetPort });
  const c = await ResilientController.connect(opts(proxy.port));
  try {
    assert.equal(c.namespaces.get(6)?.lbaSize, 512);
    const old = c.namespace(6);
    assert.equal(old?.blockSize, 512);
    const changes = new Promise<NamespaceChanges>((resolve) => c.once('namespaces', resolve));
    proxy.setMode(ProxyMode.REFUSE);
    proxy.cutAll();
    await waitState(c, CtrlState.CONNECTING);
    // Held: one write to the reformatted namespace (its slba was computed for 512-byte blocks)
    // and one to namespace 1.
    const w6 = settle(c.write(6, 8n, Buffer.alloc(4096, 0x66), {}, old));
    const w1 = settle(c.write(1, 64n, block(0x11)));
    await target.removeNamespace(NQN, 6);
    await target.addNamespace(NQN, { nsid: 6, sizeBytes: 1 << 20, lbaSize: 4096, backing: { memory: true } });
    proxy.setMode(ProxyMode.FORWARD);
    assert.deepEqual(await changes, { added: [], removed: [], resized: [6] });
    const r6 = await w6;
    assert.equal(r6.ok, false);
    assert.equal(r6.err?.code, ErrorCode.NAMESPACE_UNSUPPORTED);
    assert.equal(r6.err?.errno, 5);
    assert.equal((await w1).ok, true);
    // The old object is retired for good; the new one has the new block size, and nothing of
    // the held write landed on the new namespace (it would be at LBA 8 of 4096 bytes).
    assert.equal(old?.retired, true);
    assert.equal((await old?.read(0, 512).then(() => undefined, (e: NvmfNbdError) => e))?.code, ErrorCode.NAMESPACE_UNSUPPORTED);
    const fresh = c.namespace(6);
    assert.notEqual(fresh, old);
    assert.equal(fresh?.blockSize, 4096);
    assert.ok((await c.read(6, 8n, 1)).equals(Buffer.alloc(4096)));
    assert.ok((await fresh?.read(0, 8192))?.equals(Buffer.alloc(8192)));
  } finally {
    await c.close();
    await proxy.close();
    await target.removeNamespace(NQN, 6).catch(() => undefined);
  }
});
