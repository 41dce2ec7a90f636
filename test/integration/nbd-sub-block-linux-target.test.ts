/**
 * The sub-block conformance workload (test/helpers/sub-block-conformance.ts) through the bridge
 * against the Linux kernel target (nvmet in the 6.1 guest), on a 512- and a 4096-byte-LBA
 * namespace (memory-backed null_blk with blocksize 512 / 4096): a client that does not negotiate
 * block sizes, 512- and 1024-byte granularity, two connections, FUA and FLUSH, every byte
 * verified; plus requests of 33–64 MiB. One guest boot for the whole file.
 */
import { before, after, test } from 'node:test';
import assert from 'node:assert/strict';
import type { ControllerSession } from '../../src/engine/session';
import { need } from '../helpers/prereq';
import { Guest, guestAvailable, setupNvmet } from '../helpers/guest';
import { openBridge } from '../helpers/bridge';
import { largeRequests, subBlockWorkload } from '../helpers/sub-block-conformance';

const NQN = 'nqn.2014-08.org.nvmf-nbd:sub-block-linux-target';
const MiB = 1 << 20;
const avail = guestAvailable();
let g: Guest | undefined;
let session: ControllerSession | undefined;
let port = 0;

before(async () => {
  if (!avail.ok) return;
  g = await Guest.start({ hostfwd: [{ hostPort: 0, guestPort: 4420 }] });
  await setupNvmet(g, { subsystems: [{ nqn: NQN, namespaces: [{ nsid: 1, sizeMiB: 80, blockSize: 512 }, { nsid: 2, sizeMiB: 80, blockSize: 4096 }] }] });
  session = await openBridge({ trsvcid: g.hostPorts[0] as number, subnqn: NQN, nbd: { tcp: { host: '127.0.0.1', port: 0 } } });
  port = (session.exports[0]?.endpoint as { tcp: { port: number } }).tcp.port;
}, { timeout: 300_000 });

after(async () => {
  try {
    await session?.close();
  } finally {
    await g?.stop();
  }
}, { timeout: 120_000 });

const prereq = (t: Parameters<typeof need>[0]): boolean => need(t, avail.ok, avail.reason);
const rmw = (name: string): number => session?.stats().find((s) => s.name === name)?.rmw ?? -1;

for (const [exp, lba] of [['nvme0n1', 512], ['nvme0n2', 4096]] as const) {
  for (const gran of [512, 1024]) {
    test(`Linux nvmet ${lba}-byte LBA: non-negotiating client, ${gran}-byte granularity, two connections, every byte verified`, { timeout: 300_000 }, async (t) => {
      if (!prereq(t)) return;
      assert.equal(session?.exports.find((e) => e.name === exp)?.blockSize, lba);
      const before = rmw(exp);
      const r = await subBlockWorkload({ port }, exp, { regionOffset: 3 * gran, regionBytes: 1 * MiB, gran, rounds: 20, seed: lba + gran, timeoutMs: 60_000 });
      assert.equal(r.bytesVerified, 2 * MiB);
      if (lba === 4096) assert.ok(rmw(exp) > before, 'sub-block writes were read-modify-written');
      else assert.equal(rmw(exp), before);
    });
  }
  test(`Linux nvmet ${lba}-byte LBA: requests of 33–64 MiB from a non-negotiating client`, { timeout: 300_000 }, async (t) => {
    if (!prereq(t)) return;
    await largeRequests({ port }, exp, 8 * MiB, 60_000);
  });
}
