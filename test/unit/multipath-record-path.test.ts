/**
 * The multipath layer keeps the record path free of per-request promises (issue 12, hot path):
 * 4k READ / WRITE records at QD32 through Namespace → MultipathController → ResilientController →
 * Controller → QueuePair, with one path and with two (round-robin, both carrying I/O; the second
 * association to the same target port, told apart by its source address). The target runs in
 * its own process (bench/target-proc). CPU µs per request of this process are printed for the
 * single resilient controller, one path and two paths (informative, never asserted).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHook } from 'node:async_hooks';
import { ResilientController } from '../../src/controller/resilient';
import { MultipathController, type PathOptions } from '../../src/controller/multipath';
import type { BlockDevice } from '../../src/block/types';
import { BlockOpCode } from '../../src/block/types';
import { RecordDriver, startTargetProc } from '../helpers/record-driver';

const NQN = 'nqn.2026-01.io.nvmf-nbd:bench'; // bench/common.ts BENCH_SUBNQN
const HOSTNQN = 'nqn.2014-08.org.nvmexpress:uuid:7d0c2f1a-5b3e-4c6d-8e9f-00000000c016';
const HOSTID = '7d0c2f1a-5b3e-4c6d-8e9f-00000000c016';
const N = 4000;

/** Writes then reads N records at QD32; returns promises created and CPU µs per request. */
async function measure(dev: BlockDevice): Promise<{ promises: number; cpuUsPerIo: number; errors: number }> {
  const payload = Buffer.alloc(4096, 0x5a);
  await new RecordDriver(dev, BlockOpCode.WRITE, 3000, payload).run(32); // warm-up (JIT)
  await new RecordDriver(dev, BlockOpCode.READ, 3000, payload).run(32);
  let promises = 0;
  const hook = createHook({ init(_id, type) { if (type === 'PROMISE') promises++; } });
  const cpu = process.cpuUsage();
  hook.enable();
  const w = new RecordDriver(dev, BlockOpCode.WRITE, N, payload);
  await w.run(32);
  const r = new RecordDriver(dev, BlockOpCode.READ, N, payload);
  await r.run(32);
  hook.disable();
  const used = process.cpuUsage(cpu);
  return { promises, cpuUsPerIo: (used.user + used.system) / (2 * N), errors: w.errors + r.errors };
}

test('multipath record path: no promise per request with one path and with two', { timeout: 120_000 }, async () => {
  const { child, port } = await startTargetProc(64 << 20);
  const o: PathOptions = { traddr: '127.0.0.1', trsvcid: port, subnqn: NQN, hostnqn: HOSTNQN, hostid: HOSTID, nrIoQueues: 2, kato: 5000 };
  try {
    const rc = await ResilientController.connect(o);
    const base = await measure(rc.namespace(1)!);
    await rc.close();

    const mp = await MultipathController.connect(o, { iopolicy: 'round-robin' });
    try {
      const one = await measure(mp.namespace(1)!);
      await mp.addPath({ ...o, hostTraddr: '127.0.0.1' });
      const two = await measure(mp.namespace(1)!);
      const t = mp.topology();
      process.stderr.write(`multipath record path, CPU µs per 4k request (QD32, ${2 * N} requests): resilient ${base.cpuUsPerIo.toFixed(1)}, multipath 1 path ${one.cpuUsPerIo.toFixed(1)}, 2 paths ${two.cpuUsPerIo.toFixed(1)}; promises ${base.promises} / ${one.promises} / ${two.promises}\n`);
      for (const m of [base, one, two]) {
        assert.equal(m.errors, 0);
        assert.ok(m.promises < 0.05 * 2 * N, `${m.promises} promises for ${2 * N} requests`);
      }
      assert.equal(t.paths.length, 2);
      for (const p of t.paths) assert.ok(p.io.reads >= N / 2 - 1 && p.io.writes >= N / 2 - 1, `round-robin: path ${p.id} carried ${p.io.reads} reads, ${p.io.writes} writes`);
    } finally {
      await mp.close();
    }
  } finally {
    child.kill('SIGTERM');
  }
});
