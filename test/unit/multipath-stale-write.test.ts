/**
 * The stale-write hazard across paths (SPDK issue 3593; the write-hold rule of
 * src/controller/multipath.ts): a write black-holed on the first path (a partition, its bytes
 * kept as a retransmitting kernel keeps them) is re-issued on the second path only once the
 * target has dropped the first path's association (its keep-alive expired); a newer write to the
 * same block waits behind it; when the partition heals, the stale bytes meet a closed
 * connection, and the block holds the newer data. Re-issuing at once, as Linux does, fails the
 * keep-alive assertion (the old association would still be open) and lets the stale copy land.
 */
import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import { NvmeTarget } from '../../src/embedded-target';
import { MultipathController, type PathOptions } from '../../src/controller/multipath';
import { PartitionProxy } from '../helpers/partition-proxy';

const NQN = 'nqn.2014-08.org.nvmf-nbd:test-mp-stale-write';
const HOSTNQN = 'nqn.2014-08.org.nvmexpress:uuid:5d7c1f30-2b4a-4c6d-8e9f-00000000c015';
const HOSTID = '5d7c1f30-2b4a-4c6d-8e9f-00000000c015';

test('a write black-holed on a lost path is re-issued elsewhere only after the target dropped that association', { timeout: 60_000 }, async () => {
  // The target keeps a silent association for KATO + 3 s and advertises CQT = 4 s.
  const target = new NvmeTarget({
    ports: [{ host: '127.0.0.1', port: 0 }, { host: '127.0.0.1', port: 0 }],
    keepAliveGraceMs: 3000,
    subsystems: [{ nqn: NQN, namespaces: [{ nsid: 1, sizeBytes: 1 << 20, backing: { memory: true } }] }],
  });
  await target.listen();
  const ports = target.ports();
  const proxy = await PartitionProxy.start(ports[0]!.port);
  const opts = (port: number): PathOptions => ({
    traddr: '127.0.0.1', trsvcid: port, subnqn: NQN, hostnqn: HOSTNQN, hostid: HOSTID, nrIoQueues: 1,
    kato: 1000, targetKeepAliveGraceMs: 3000, connectTimeoutMs: 2000, ioTimeoutMs: 5000, reconnectDelayMs: 100, ctrlLossTmoMs: 30_000,
  });
  const mp = await MultipathController.connect(opts(proxy.port));
  try {
    await mp.addPath(opts(ports[1]!.port));
    assert.equal(mp.holdTimeMs(mp.paths[0]!), 1000 + 4000, 'KATO + CQT');
    const dev = mp.namespace(1)!;
    await dev.write(0, Buffer.alloc(4096, 0x11), false);
    const lost = new Promise<void>((resolve) => {
      const on = (ev: { state?: { id: string; state: string } }): void => {
        if (ev.state?.state !== 'connecting') return;
        mp.off('paths', on);
        resolve();
      };
      mp.on('paths', on);
    });
    proxy.stall();
    let expiredAtReissue = -1;
    const w1 = dev.write(0, Buffer.alloc(4096, 0xaa), false).then(() => { expiredAtReissue = target.stats().keepAliveTimeouts; });
    await lost; // keep-alive timeout on the first path: W1 comes back and is held
    await new Promise((r) => setImmediate(r));
    assert.equal(mp.topology().namespaces[0]!.heldWrites, 1, 'W1 held after the loss');
    assert.equal((await dev.read(4096, 4096)).length, 4096, 'reads run on the second path during the hold');
    const w2 = dev.write(0, Buffer.alloc(4096, 0xbb), false); // newer: waits behind W1
    await Promise.all([w1, w2]);
    assert.equal(expiredAtReissue, 1, 'W1 completed on the second path only after the target expired the first association');
    assert.equal(proxy.heal(), 0, 'stale bytes delivered to a connection the target still had open');
    const v = (await dev.read(0, 4096))[0];
    assert.equal(v, 0xbb, `LBA 0 holds 0x${v?.toString(16)}: the stale W1 landed after W2`);
  } finally {
    await mp.close();
    await proxy.close();
    await target.close();
  }
});
