/**
 * The record path makes no promise per request (issue 9 item 2): READ and WRITE records submitted
 * to the controller's Namespace travel namespace → resilient controller → controller → queue pair
 * and complete through the handler, and the host process creates (almost) no promise while
 * thousands of them run at QD32. The target runs in its own process (bench/target-proc) so its
 * own promises are not counted. Before the record path this was ≈ 12 promises per read and ≈ 15
 * per write (bench/bridge-proc with an async_hooks counter, 4k QD32).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHook } from 'node:async_hooks';
import { ResilientController } from '../../src/controller/resilient';
import type { Namespace } from '../../src/controller/namespace';
import { BlockOpCode } from '../../src/block/types';
import { RecordDriver as Driver, startTargetProc } from '../helpers/record-driver';

const NQN = 'nqn.2026-01.io.nvmf-nbd:bench'; // bench/common.ts BENCH_SUBNQN
const HOSTNQN = 'nqn.2014-08.org.nvmexpress:uuid:7d0c2f1a-5b3e-4c6d-8e9f-00000000c001';
const HOSTID = '7d0c2f1a-5b3e-4c6d-8e9f-00000000c001';

test('READ/WRITE records through Namespace → ResilientController → Controller → QueuePair create no promise per request', { timeout: 60_000 }, async () => {
  const { child, port } = await startTargetProc(64 << 20);
  try {
    const c = await ResilientController.connect({
      traddr: '127.0.0.1', trsvcid: port, subnqn: NQN, hostnqn: HOSTNQN, hostid: HOSTID, nrIoQueues: 2, kato: 5000,
    });
    try {
      const ns = c.namespace(1) as Namespace;
      assert.ok(ns !== undefined);
      const payload = Buffer.alloc(4096, 0x5a);
      // Warm up (first records, JIT), then count.
      await new Driver(ns, BlockOpCode.WRITE, 500, payload).run(32);
      let promises = 0;
      const hook = createHook({ init(_id, type) { if (type === 'PROMISE') promises++; } });
      const N = 4000;
      hook.enable();
      const w = new Driver(ns, BlockOpCode.WRITE, N, payload);
      const wDone = w.run(32);
      await wDone;
      const r = new Driver(ns, BlockOpCode.READ, N, payload);
      await r.run(32);
      hook.disable();
      assert.equal(w.errors + r.errors, 0);
      assert.equal(w.done + r.done, 2 * N);
      // The two run() promises and the awaits around them, keep-alive: a handful, not thousands.
      process.stderr.write(`record-path: ${promises} promises for ${2 * N} requests\n`);
      assert.ok(promises < 0.05 * 2 * N, `${promises} promises for ${2 * N} requests`);
    } finally {
      await c.close();
    }
  } finally {
    child.kill('SIGTERM');
  }
});
