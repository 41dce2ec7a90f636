/** QueuePair hot-path structures: the free-cid ring keeps FIFO reuse across wrap-around. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { QueuePair } from '../../src/transport/queue-pair';
import { sqeFlush } from '../../src/wire';
import { FakeTarget } from '../helpers/fake-target';
import type { FakeConn } from '../helpers/fake-target';

test('free cids are reused oldest-first, wrapping around the ring', { timeout: 5000 }, async () => {
  const seen: number[] = [];
  const target = await FakeTarget.start(async (c: FakeConn) => {
    await c.acceptConnect();
    for (let i = 0; i < 10; i++) {
      const cmd = await c.nextCommand();
      seen.push(cmd.sqe.cid);
      // Connect took SQ slot 0; command i is slot i+1, so the head after it is (i + 2) % 4.
      c.respond(cmd.sqe.cid, { sqhd: (i + 2) % 4 });
    }
  }, undefined);
  const qp = await QueuePair.connect({
    host: '127.0.0.1', port: target.port, qid: 1, queueSize: 4, subnqn: 'nqn.test:sub', hostnqn: 'nqn.test:host',
    hostid: Buffer.alloc(16, 0x11), cntlid: 1, connectTimeoutMs: 2000, timeoutMs: 2000,
  });
  try {
    // One at a time: each completion frees its cid to the tail, the next command takes the head.
    for (let i = 0; i < 7; i++) await qp.submit(sqeFlush(1));
    // Then three at once (the ring holds queueSize-1 = 3 cids), then more than fit.
    await Promise.all([qp.submit(sqeFlush(1)), qp.submit(sqeFlush(1)), qp.submit(sqeFlush(1))]);
    // Fabrics Connect took cid 0, so I/O starts at 1.
    assert.deepEqual(seen, [1, 2, 0, 1, 2, 0, 1, 2, 0, 1]);
    assert.equal(qp.stats().inFlight, 0);
  } finally {
    qp.destroy();
    await target.close();
  }
});
