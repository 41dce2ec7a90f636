/**
 * A target whose ANA log page is malformed (here port 1's: a group count far past the page) is
 * the target's fault, not a reason to refuse the path: the connect goes on with a warning
 * (NVMF_ERR_ANA_LOG_INVALID), that path's groups count as optimized until a good read, and when
 * the port then turns inaccessible the target's ANA status on I/O moves the I/O to the other path
 * without an error reaching the caller. Nothing crashes or hangs on the bad page.
 */
import { strict as assert } from 'node:assert';
import { after, before, describe, it } from 'node:test';
import { NvmeTarget } from '../../src/embedded-target';
import { MultipathController, type PathOptions } from '../../src/controller/multipath';
import { ErrorCode, NvmfNbdError } from '../../src/errors';

const NQN = 'nqn.2014-08.org.nvmf-nbd:test-mp-ana-invalid';
const HOSTNQN = 'nqn.2014-08.org.nvmexpress:uuid:5d7c1f30-2b4a-4c6d-8e9f-00000000c015';
const HOSTID = '5d7c1f30-2b4a-4c6d-8e9f-00000000c015';

function opts(port: number): PathOptions {
  return { traddr: '127.0.0.1', trsvcid: port, subnqn: NQN, hostnqn: HOSTNQN, hostid: HOSTID, nrIoQueues: 1, queueSize: 32, kato: 5000, connectTimeoutMs: 20_000, reconnectDelayMs: 100 };
}

describe('multipath: a malformed ANA log page from one port', () => {
  let target: NvmeTarget;
  let ports: Array<{ id: number; port: number }> = [];
  let badPages = 0;

  before(async () => {
    target = new NvmeTarget({
      ports: [{ host: '127.0.0.1', port: 0 }, { host: '127.0.0.1', port: 0 }],
      subsystems: [{ nqn: NQN, namespaces: [{ nsid: 1, sizeBytes: 4 << 20, backing: { memory: true } }] }],
      anaLogFilter: (page, portId) => {
        if (portId !== 1) return page;
        badPages++;
        const bad = Buffer.from(page);
        bad.writeUInt16LE(0xffff, 8); // NUMANAGRPD: 65535 descriptors that are not there
        return bad;
      },
    });
    await target.listen();
    ports = target.ports().map((p) => ({ id: p.id, port: p.port }));
  });

  after(async () => {
    await target.close();
  });

  it('connects with a warning, treats the path as optimized, and an inaccessible status moves I/O', { timeout: 60_000 }, async () => {
    const warnings: unknown[] = [];
    const mp = await MultipathController.connect(opts(ports[0]!.port));
    mp.on('warning', (w: unknown) => warnings.push(w));
    try {
      assert.ok(badPages >= 1, 'the host read port 1\'s (bad) ANA log at connect');
      assert.equal(mp.paths[0]!.controller.anaLog, undefined, 'no ANA log kept from the bad page');
      await mp.addPath(opts(ports[1]!.port));
      const ns = mp.namespace(1)!;
      const t0 = mp.topology();
      assert.deepEqual(t0.namespaces[0]!.paths.map((p) => p.anaState), ['optimized', 'optimized'], 'the bad page\'s path counts as optimized');
      await ns.write(0, Buffer.alloc(4096, 0x5a), false);
      const before = target.ports().map((p) => p.io.readCommands + p.io.writeCommands);
      assert.ok(before[0]! > 0, 'port 1 (first optimized) carries the I/O');

      // Port 1 turns inaccessible: its ANA change notice makes the host re-read the (still bad)
      // log; the target answers I/O there with ANA Inaccessible, retried on port 2.
      target.setAnaState(1, 1, 'inaccessible');
      for (let i = 0; i < 20; i++) assert.deepEqual(await ns.read(0, 4096), Buffer.alloc(4096, 0x5a));
      await ns.write(4096, Buffer.alloc(4096, 0x5b), false);
      const after = target.ports().map((p) => p.io.readCommands + p.io.writeCommands);
      assert.ok(after[1]! - before[1]! >= 20, `port 2 took the I/O (${after[1]! - before[1]!} commands)`);
      const t1 = mp.topology();
      assert.equal(t1.namespaces[0]!.paths[0]!.anaState, 'inaccessible', 'the status taught the host the state the log could not');
      assert.ok(warnings.some((w) => w instanceof NvmfNbdError && w.code === ErrorCode.ANA_LOG_INVALID), 'the bad re-read was reported as NVMF_ERR_ANA_LOG_INVALID');
    } finally {
      target.setAnaState(1, 1, 'optimized');
      await mp.close();
    }
  });
});
