/**
 * Failover with real resilient controllers (pass-back mode) against the embedded target's two
 * ports, the first path behind a FaultProxy: a read and a write in flight on the first path when
 * its connections are cut (after a stall, so neither reached the target) — the read completes on
 * the second path while the write is still held (reads continue during the write hold), a new
 * write overlapping the held one completes only after it (ordering kept: the newer data wins),
 * and a disjoint write goes through at once. No elapsed time is asserted: only orders and states.
 */
import { strict as assert } from 'node:assert';
import { after, before, beforeEach, describe, it } from 'node:test';
import { NvmeTarget } from '../../src/embedded-target';
import { MultipathController, type PathOptions } from '../../src/controller/multipath';
import type { Namespace } from '../../src/controller/namespace';
import { turns, until } from '../helpers/clock';
import { FaultProxy, ProxyMode } from '../helpers/fault-proxy';

const NQN = 'nqn.2014-08.org.nvmf-nbd:test-mp-failover-target';
const HOSTNQN = 'nqn.2014-08.org.nvmexpress:uuid:5d7c1f30-2b4a-4c6d-8e9f-00000000c014';
const HOSTID = '5d7c1f30-2b4a-4c6d-8e9f-00000000c014';

function opts(port: number): PathOptions {
  return { traddr: '127.0.0.1', trsvcid: port, subnqn: NQN, hostnqn: HOSTNQN, hostid: HOSTID, nrIoQueues: 1, queueSize: 32, kato: 1000, connectTimeoutMs: 20_000, reconnectDelayMs: 200 };
}

/** The embedded target with one subsystem on two ports (short keep-alive grace, CQT 300 ms), listening. */
async function twoPortTarget(): Promise<NvmeTarget> {
  const t = new NvmeTarget({
    ports: [{ host: '127.0.0.1', port: 0 }, { host: '127.0.0.1', port: 0 }],
    subsystems: [{ nqn: NQN, namespaces: [{ nsid: 1, sizeBytes: 4 << 20, backing: { memory: true } }] }],
    keepAliveGraceMs: 200,
    cqtMs: 300,
  });
  await t.listen();
  return t;
}

describe('multipath failover against the embedded target (path cut mid-transfer)', () => {
  let target: NvmeTarget;
  let proxy: FaultProxy;
  let direct = 0;

  before(async () => {
    target = await twoPortTarget();
    const ports = target.ports();
    proxy = await FaultProxy.start({ port: ports[0]!.port });
    direct = ports[1]!.port;
  });

  after(async () => {
    await proxy.close();
    await target.close();
  });

  it('reads re-issued at once, the write held then re-issued, an overlapping new write after it', { timeout: 60_000 }, async () => {
    const mp = await MultipathController.connect(opts(proxy.port));
    try {
      await mp.addPath(opts(direct));
      const ns = mp.namespace(1)!;
      await ns.write(0, Buffer.alloc(8192, 0x11), false);
      assert.equal(mp.holdTimeMs(mp.paths[0]!), 1000 + 300, 'KATO + the target\'s CQT');

      proxy.setMode(ProxyMode.STALL);
      const order: string[] = [];
      const held = ns.write(0, Buffer.alloc(4096, 0x22), false).then(() => { order.push('held write'); });
      const r1 = ns.read(4096, 4096);
      await new Promise((r) => setImmediate(r));
      proxy.setMode(ProxyMode.REFUSE);
      proxy.cutAll();

      assert.deepEqual(await r1, Buffer.alloc(4096, 0x11), 'the read in flight on the cut path came back from the other one');
      const heldNow = mp.topology().namespaces[0]!.heldWrites;
      assert.equal(heldNow, 1, 'the write is held while the read completed');
      const r2 = await ns.read(0, 8192);
      assert.equal(r2.length, 8192, 'new reads run during the hold');
      assert.equal(mp.topology().namespaces[0]!.heldWrites, 1, '…and the write is still held after them');
      const disjoint = ns.write(65536, Buffer.alloc(4096, 0x44), false).then(() => { order.push('disjoint write'); });
      const newer = ns.write(0, Buffer.alloc(4096, 0x33), false).then(() => { order.push('overlapping write'); });
      await Promise.all([held, disjoint, newer]);
      assert.equal(order.indexOf('disjoint write') < order.indexOf('held write'), true, `disjoint write not delayed: ${order.join(', ')}`);
      assert.equal(order.indexOf('held write') < order.indexOf('overlapping write'), true, `overlapping write after the held one: ${order.join(', ')}`);
      assert.deepEqual(await ns.read(0, 4096), Buffer.alloc(4096, 0x33), 'the newer write wins');
      const t = mp.topology();
      assert.equal(t.paths[0]!.state, 'connecting');
      assert.equal(t.paths[0]!.io.failovers, 2, 'the read and the write came back from the cut path');
      assert.equal(t.namespaces[0]!.paths[1]!.current, true);
    } finally {
      await mp.close();
    }
  });
});

/**
 * Every path down: the single-path timeouts apply to the namespace as a whole. A request held by
 * a reconnecting path whose fast_io_fail_tmo expires (or whose ctrl_loss_tmo ends it) was never
 * sent, so it moves to another path that still holds I/O and completes once that one returns;
 * it fails (EIO) only when no path can take it any more.
 */
describe('multipath: every path down, the timeouts of one path do not fail the namespace', () => {
  let target: NvmeTarget;
  let pa: FaultProxy;
  let pb: FaultProxy;

  before(async () => {
    target = await twoPortTarget();
    const ports = target.ports();
    pa = await FaultProxy.start({ port: ports[0]!.port });
    pb = await FaultProxy.start({ port: ports[1]!.port });
  });

  after(async () => {
    await pa.close();
    await pb.close();
    await target.close();
  });

  beforeEach(() => {
    pa.setMode(ProxyMode.FORWARD);
    pb.setMode(ProxyMode.FORWARD);
  });

  /** Both proxies refuse and cut; resolves once both paths are reconnecting. */
  async function allDown(mp: MultipathController): Promise<void> {
    for (const p of [pa, pb]) { p.setMode(ProxyMode.REFUSE); p.cutAll(); }
    await until(() => mp.paths.every((p) => p.controller.state === 'connecting'), 'both paths reconnecting');
  }

  /** Path A (through pa) and B (through pb) with their own timeouts; `body` runs, then both proxies forward and the subsystem closes. */
  async function withPaths(a: Partial<PathOptions>, b: Partial<PathOptions>, body: (mp: MultipathController, ns: Namespace) => Promise<void>): Promise<void> {
    const mp = await MultipathController.connect({ ...opts(pa.port), quiesceMs: 0, ...a });
    try {
      await mp.addPath({ ...opts(pb.port), quiesceMs: 0, ...b });
      await body(mp, mp.namespace(1)!);
    } finally {
      pa.setMode(ProxyMode.FORWARD);
      pb.setMode(ProxyMode.FORWARD);
      await mp.close();
    }
  }

  it('path A\'s fast_io_fail_tmo expires: its held read, write and Write Zeroes move to B and complete when B returns', { timeout: 60_000 }, () => withPaths({ fastIoFailTmoMs: 300 }, {}, async (mp, ns) => {
    await ns.write(0, Buffer.alloc(4096, 0x11), false);
    await ns.write(16384, Buffer.alloc(4096, 0x55), false);
    await allDown(mp);
    // Held by A (the first path that holds I/O), never sent.
    let settled = 0;
    const w = ns.write(8192, Buffer.alloc(4096, 0x22), false).finally(() => { settled++; });
    const r = ns.read(0, 4096).finally(() => { settled++; });
    // A promise operation (Write Zeroes) is held the same way.
    const z = ns.writeZeroes(16384, 4096, { mayDeallocate: false, fua: false, fastOnly: false }).finally(() => { settled++; });
    await until(() => !mp.paths[0]!.controller.holdsIo, 'A fast-fails');
    await turns(20);
    assert.equal(settled, 0, 'nothing failed when A fast-failed: B still holds I/O');
    assert.equal(mp.paths[1]!.controller.holdsIo, true);
    pb.setMode(ProxyMode.FORWARD);
    await w;
    await z;
    assert.deepEqual(await r, Buffer.alloc(4096, 0x11), 'the read completed on B');
    assert.deepEqual(await ns.read(16384, 4096), Buffer.alloc(4096), 'the Write Zeroes ran on B');
    assert.deepEqual(await ns.read(8192, 4096), Buffer.alloc(4096, 0x22), 'the write landed');
    // New I/O while A is fast-failed and B live goes to B.
    await ns.write(12288, Buffer.alloc(4096, 0x33), false);
  }));

  it('A\'s ctrl_loss_tmo ends it while B reconnects: the held write moves to B and completes there', { timeout: 60_000 }, () => withPaths({ ctrlLossTmoMs: 300 }, { fastIoFailTmoMs: 1500 }, async (mp, ns) => {
    await allDown(mp);
    let failed: unknown;
    const w = ns.write(0, Buffer.alloc(4096, 0x44), false).catch((e: unknown) => { failed = e; });
    await until(() => mp.paths.length === 1, 'A is dropped after its ctrl_loss_tmo');
    assert.equal(failed, undefined, 'the write did not fail with A');
    pb.setMode(ProxyMode.FORWARD);
    await w;
    assert.equal(failed, undefined, 'the write completed on B');
    assert.deepEqual(await ns.read(0, 4096), Buffer.alloc(4096, 0x44));
  }));

  it('both paths fast-fail: the held request fails with EIO only then', { timeout: 60_000 }, () => withPaths({ fastIoFailTmoMs: 200 }, { fastIoFailTmoMs: 800 }, async (mp, ns) => {
    await allDown(mp);
    let bHeldWhenFailed: boolean | undefined;
    const err = await ns.read(0, 4096).then(() => undefined, (e: unknown) => { bHeldWhenFailed = mp.paths[1]!.controller.holdsIo; return e; });
    assert.ok(err instanceof Error, 'the read failed');
    assert.equal((err as { errno?: number }).errno, 5, 'EIO');
    assert.equal(bHeldWhenFailed, false, 'only after B fast-failed too');
  }));
});
