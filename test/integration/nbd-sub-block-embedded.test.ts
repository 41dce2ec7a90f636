/**
 * NBD clients that do not negotiate block sizes, through the whole bridge (NBD server → RMW →
 * NVMe/TCP host → embedded target) on 512- and 4096-byte-LBA namespaces: the conformance
 * workload of test/helpers/sub-block-conformance.ts at 512- and 1024-byte granularity over two
 * connections, and requests of 33–64 MiB. The RMW counter of the 4096-byte export moves, that of
 * the 512-byte export does not (every 512/1024-byte request is whole blocks there).
 */
import { before, after, test } from 'node:test';
import assert from 'node:assert/strict';
import { NvmeTarget } from '../../src/embedded-target/target';
import type { ControllerSession } from '../../src/engine/session';
import { openBridge } from '../helpers/bridge';
import { largeRequests, subBlockWorkload } from '../helpers/sub-block-conformance';

const NQN = 'nqn.2014-08.org.nvmf-nbd:sub-block-embedded';
const MiB = 1 << 20;
let target: NvmeTarget | undefined;
let session: ControllerSession | undefined;
let port = 0;

before(async () => {
  target = new NvmeTarget({
    listen: { host: '127.0.0.1', port: 0 },
    subsystems: [{
      nqn: NQN,
      namespaces: [
        { nsid: 1, sizeBytes: 80 * MiB, lbaSize: 512, backing: { memory: true } },
        { nsid: 2, sizeBytes: 80 * MiB, lbaSize: 4096, backing: { memory: true } },
      ],
    }],
  });
  const addr = await target.listen();
  session = await openBridge({ trsvcid: addr.port, subnqn: NQN, nbd: { tcp: { host: '127.0.0.1', port: 0 } } });
  const ep = session.exports[0]?.endpoint as { tcp: { port: number } };
  port = ep.tcp.port;
}, { timeout: 60_000 });

after(async () => {
  await session?.close();
  await target?.close();
}, { timeout: 60_000 });

const rmw = (name: string): number => session?.stats().find((s) => s.name === name)?.rmw ?? -1;

for (const [exp, lba] of [['nvme0n1', 512], ['nvme0n2', 4096]] as const) {
  for (const gran of [512, 1024]) {
    test(`embedded ${lba}-byte LBA: non-negotiating client, ${gran}-byte granularity, two connections, every byte verified`, { timeout: 120_000 }, async () => {
      const before = rmw(exp);
      const r = await subBlockWorkload({ port }, exp, { regionOffset: 3 * gran, regionBytes: 2 * MiB, gran, rounds: 40, seed: lba + gran });
      assert.equal(r.bytesVerified, 4 * MiB);
      if (lba === 4096) assert.ok(rmw(exp) > before, 'sub-block writes were read-modify-written');
      else assert.equal(rmw(exp), before, 'no RMW on a 512-byte LBA namespace');
    });
  }
  test(`embedded ${lba}-byte LBA: requests of 33–64 MiB from a non-negotiating client`, { timeout: 120_000 }, async () => {
    await largeRequests({ port }, exp, 8 * MiB);
  });
}
