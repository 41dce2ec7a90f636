/**
 * Host multipath over the embedded target's two ports (src/controller/multipath.ts): one path
 * behaves as a single resilient controller; with two, the path choice per I/O policy and ANA
 * state (optimized first, non-optimized only without an optimized one), the ANA change notice
 * moving I/O, a path status (ANA inaccessible) retried on the other path instead of reaching the
 * caller, and a namespace whose block size differs between paths refused (never merged).
 * Which port carried the I/O is read from the target's per-port counters.
 */
import { strict as assert } from 'node:assert';
import { after, before, describe, it } from 'node:test';
import { once } from 'node:events';
import { NvmeTarget } from '../../src/embedded-target';
import { MultipathController, type PathOptions } from '../../src/controller/multipath';
import type { Namespace } from '../../src/controller/namespace';
import { ErrorCode } from '../../src/errors';
import { rejectsCode } from '../helpers/assert-code';

const NQN = 'nqn.2014-08.org.nvmf-nbd:test-mp-ana';
const HOSTNQN = 'nqn.2014-08.org.nvmexpress:uuid:5d7c1f30-2b4a-4c6d-8e9f-00000000c012';
const HOSTID = '5d7c1f30-2b4a-4c6d-8e9f-00000000c012';
const T = { timeout: 60_000 };

function opts(port: number, extra: Partial<PathOptions> = {}): PathOptions {
  return { traddr: '127.0.0.1', trsvcid: port, subnqn: NQN, hostnqn: HOSTNQN, hostid: HOSTID, nrIoQueues: 1, queueSize: 32, kato: 5000, connectTimeoutMs: 20_000, reconnectDelayMs: 100, ...extra };
}

describe('multipath over two ports of the embedded target', () => {
  let target: NvmeTarget;
  let ports: Array<{ id: number; port: number }> = [];

  before(async () => {
    target = new NvmeTarget({
      ports: [{ host: '127.0.0.1', port: 0 }, { host: '127.0.0.1', port: 0 }],
      subsystems: [{ nqn: NQN, namespaces: [{ nsid: 1, sizeBytes: 4 << 20, backing: { memory: true } }] }],
    });
    await target.listen();
    ports = target.ports().map((p) => ({ id: p.id, port: p.port }));
  });

  after(async () => {
    await target.close();
  });

  /** Reads + writes the target executed through each port. */
  function portIo(): number[] {
    return target.ports().map((p) => p.io.readCommands + p.io.writeCommands);
  }

  async function io(ns: Namespace, n: number): Promise<void> {
    const data = Buffer.alloc(4096, 0x5a);
    for (let i = 0; i < n; i++) {
      await ns.write(i * 4096, data, false);
      assert.deepEqual(await ns.read(i * 4096, 4096), data);
    }
  }

  function reset(): void {
    for (const p of ports) target.setAnaState(p.id, 1, 'optimized');
  }

  it('one path: the namespace works, the topology shows one optimized current path', T, async () => {
    reset();
    const mp = await MultipathController.connect(opts(ports[0]!.port));
    try {
      assert.equal(mp.state, 'live');
      assert.equal(mp.iopolicy, 'numa');
      const ns = mp.namespace(1)!;
      await io(ns, 4);
      const t = mp.topology();
      assert.equal(t.subnqn, NQN);
      assert.equal(t.paths.length, 1);
      assert.equal(t.paths[0]!.state, 'live');
      assert.deepEqual(t.paths[0]!.anaGroups, [{ grpid: 1, state: 'optimized' }]);
      assert.equal(t.paths[0]!.io.reads, 4);
      assert.equal(t.paths[0]!.io.writes, 4);
      assert.equal(t.paths[0]!.queueDepth, 0);
      assert.deepEqual(t.namespaces[0]!.paths.map((p) => [p.anaState, p.usable, p.current]), [['optimized', true, true]]);
      assert.ok(t.namespaces[0]!.ids?.nguid !== undefined, 'NGUID from Identify Namespace');
    } finally {
      await mp.close();
    }
    assert.equal(mp.state, 'dead');
  });

  it('numa: every I/O on the first optimized path; an ANA change notice moves it to the other port', T, async () => {
    reset();
    const mp = await MultipathController.connect(opts(ports[0]!.port));
    try {
      await mp.addPath(opts(ports[1]!.port));
      assert.equal(mp.paths.length, 2);
      const ns = mp.namespace(1)!;
      let before = portIo();
      await io(ns, 5);
      let after = portIo();
      assert.deepEqual([after[0]! - before[0]!, after[1]! - before[1]!], [10, 0], 'numa: the first path only');
      const ana = once(mp, 'ana');
      target.setAnaState(ports[0]!.id, 1, 'inaccessible');
      const [ev] = await ana as [{ path: string; groups: Array<{ grpid: number; state: string }> }];
      assert.equal(ev.path, mp.paths[0]!.id);
      assert.deepEqual(ev.groups, [{ grpid: 1, state: 'inaccessible' }]);
      before = portIo();
      await io(ns, 5);
      after = portIo();
      assert.deepEqual([after[0]! - before[0]!, after[1]! - before[1]!], [0, 10], 'the other port once the first is inaccessible');
      const t = mp.topology();
      assert.deepEqual(t.namespaces[0]!.paths.map((p) => [p.anaState, p.usable, p.current]), [['inaccessible', false, false], ['optimized', true, true]]);
    } finally {
      await mp.close();
    }
  });

  it('non-optimized only when no optimized path is usable', T, async () => {
    reset();
    target.setAnaState(ports[0]!.id, 1, 'non-optimized');
    const mp = await MultipathController.connect(opts(ports[0]!.port));
    try {
      await mp.addPath(opts(ports[1]!.port));
      const ns = mp.namespace(1)!;
      let before = portIo();
      await io(ns, 3);
      let after = portIo();
      assert.deepEqual([after[0]! - before[0]!, after[1]! - before[1]!], [0, 6], 'the optimized second path, not the non-optimized first');
      const ana = once(mp, 'ana');
      target.setAnaState(ports[1]!.id, 1, 'inaccessible');
      await ana;
      before = portIo();
      await io(ns, 3);
      after = portIo();
      assert.deepEqual([after[0]! - before[0]!, after[1]! - before[1]!], [6, 0], 'non-optimized serves when nothing optimized is left');
    } finally {
      await mp.close();
    }
  });

  it('round-robin alternates between the optimized paths; queue-depth spreads concurrent I/O', T, async () => {
    reset();
    const mp = await MultipathController.connect(opts(ports[0]!.port), { iopolicy: 'round-robin' });
    try {
      await mp.addPath(opts(ports[1]!.port));
      const ns = mp.namespace(1)!;
      let before = portIo();
      await io(ns, 4);
      let after = portIo();
      assert.deepEqual([after[0]! - before[0]!, after[1]! - before[1]!], [4, 4]);
      mp.iopolicy = 'queue-depth';
      before = portIo();
      // 8 reads at once: each goes to the path with fewer in flight, so both get some.
      await Promise.all(Array.from({ length: 8 }, (_, i) => ns.read(i * 4096, 4096)));
      after = portIo();
      assert.deepEqual([after[0]! - before[0]!, after[1]! - before[1]!], [4, 4]);
      assert.throws(() => { mp.iopolicy = 'fastest' as never; }, (e: { code?: string }) => e.code === ErrorCode.CLI_USAGE);
    } finally {
      await mp.close();
    }
  });

  it('a path status (ANA inaccessible, no notice seen) is retried on the other path, not returned', T, async () => {
    reset();
    // No async events: the host learns of the change only from the status of its next command.
    const mp = await MultipathController.connect(opts(ports[0]!.port, { asyncEvents: false }));
    try {
      await mp.addPath(opts(ports[1]!.port, { asyncEvents: false }));
      const ns = mp.namespace(1)!;
      await io(ns, 1);
      target.setAnaState(ports[0]!.id, 1, 'inaccessible');
      const data = Buffer.alloc(4096, 0x77);
      await ns.write(8192, data, false);
      assert.deepEqual(await ns.read(8192, 4096), data);
      const t = mp.topology();
      assert.equal(t.paths[0]!.io.pathErrors, 1, 'one SCT 3h status on the first path');
      assert.equal(t.namespaces[0]!.paths[0]!.anaState, 'inaccessible', 'its group state taken from the status');
      assert.equal(t.namespaces[0]!.paths[1]!.current, true);
    } finally {
      await mp.close();
    }
  });

  it('with every path inaccessible I/O waits for an ANA change instead of failing', T, async () => {
    reset();
    const mp = await MultipathController.connect(opts(ports[0]!.port));
    try {
      await mp.addPath(opts(ports[1]!.port));
      const ns = mp.namespace(1)!;
      const ana = once(mp, 'ana');
      target.setAnaState(ports[0]!.id, 1, 'inaccessible');
      await ana;
      const ana2 = once(mp, 'ana');
      target.setAnaState(ports[1]!.id, 1, 'change');
      await ana2;
      let done = false;
      const r = ns.read(0, 4096).then((b) => { done = true; return b; });
      await new Promise((res) => setImmediate(res));
      assert.equal(done, false, 'waits while no path is usable');
      target.setAnaState(ports[1]!.id, 1, 'optimized');
      assert.equal((await r).length, 4096);
    } finally {
      await mp.close();
    }
  });

  it('the same NSID with another block size on a second path is refused (NVMF_ERR_MULTIPATH_NS_MISMATCH)', T, async () => {
    reset();
    const other = new NvmeTarget({
      listen: { host: '127.0.0.1', port: 0 },
      subsystems: [{ nqn: NQN, namespaces: [{ nsid: 1, sizeBytes: 4 << 20, lbaSize: 4096, backing: { memory: true } }] }],
    });
    const { port } = await other.listen();
    const mp = await MultipathController.connect(opts(ports[0]!.port));
    try {
      await rejectsCode(mp.addPath(opts(port)), ErrorCode.MULTIPATH_NS_MISMATCH);
      assert.equal(mp.paths.length, 1, 'not added');
      await rejectsCode(mp.addPath(opts(ports[0]!.port)), ErrorCode.ALREADY_CONNECTED);
      await rejectsCode(mp.addPath({ ...opts(ports[1]!.port), subnqn: 'nqn.2014-08.org.nvmf-nbd:nope' }), ErrorCode.CONNECT_FAILED);
    } finally {
      await mp.close();
      await other.close();
    }
  });
});
