/**
 * Issue 14 finding 7: a target that completes every Asynchronous Event Request as soon as it is
 * posted ("namespace attribute changed", again and again). The host re-posts the AER only after
 * it read the Changed Namespace List, and rescans coalesce into one running plus one pending,
 * so the storm paces itself and nothing accumulates.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { Controller } from '../../src/controller/controller';
import { FakeTarget, serveController } from '../helpers/fake-target';
import type { ControllerModel } from '../helpers/fake-target';

test('AER storm: one AER per Changed Namespace List read, at most 2 rescans queued (finding 7)', { timeout: 20_000 }, async () => {
  const m: ControllerModel = {
    namespaces: new Map([[1, { data: Buffer.alloc(1 << 20), lbaSize: 512 }]]),
    aerStorm: true,
    seen: [],
  };
  const target = await FakeTarget.start((c) => serveController(c, m));
  const ctrl = await Controller.connect({
    traddr: '127.0.0.1', trsvcid: target.port, subnqn: 'nqn.2024-01.io.test:storm',
    hostnqn: 'nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-0000000000a7',
    hostid: '00000000-0000-0000-0000-0000000000a7', nrIoQueues: 1, queueSize: 16, kato: 0, connectTimeoutMs: 2000, ioTimeoutMs: 2000,
  });
  try {
    const seen = m.seen ?? [];
    const count = (pred: (s: (typeof seen)[number]) => boolean): number => seen.filter(pred).length;
    const aers = (): number => count((s) => s.qid === 0 && s.opcode === 0x0c);
    const logReads = (): number => count((s) => s.qid === 0 && s.opcode === 0x02 && (s.cdw10 & 0xff) === 0x04);
    let maxPending = 0;
    // Let the storm run for a few hundred events (counted, not timed).
    while (aers() < 300) {
      maxPending = Math.max(maxPending, ctrl.pendingRescans);
      await once(ctrl, 'aen');
    }
    assert.ok(aers() <= logReads() + 1, `${aers()} AERs posted for ${logReads()} Changed Namespace List reads`);
    assert.ok(maxPending <= 2, `${maxPending} rescans queued`);
    assert.equal(ctrl.alive, true);
  } finally {
    await ctrl.close().catch(() => undefined);
    await target.close();
  }
});
