/**
 * Issue 14 finding 15: every command is bounded by the I/O timeout, but a sequence of them was
 * not. A target that answers each command in time but slowly (many namespaces, many discovery
 * records with a tiny MDTS) now meets an overall budget: bring-up and discovery fail with
 * NVMF_ERR_TIMEOUT instead of taking minutes or hours, and nothing is left open.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Controller } from '../../src/controller/controller';
import { discover } from '../../src/controller/discovery';
import { ErrorCode, NvmfNbdError } from '../../src/errors';
import { FakeTarget, serveController } from '../helpers/fake-target';
import type { ControllerModel } from '../helpers/fake-target';

const HOST = { hostnqn: 'nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-0000000000b1', hostid: '00000000-0000-0000-0000-0000000000b1' };

async function rejectsTimeout(p: Promise<unknown>): Promise<void> {
  const err = await p.then(() => undefined, (e: unknown) => e);
  assert.ok(err instanceof NvmfNbdError, `expected a typed error, got ${String(err)}`);
  assert.equal(err.code, ErrorCode.TIMEOUT, err.message);
}

test('bring-up with many slowly answered Identify Namespace commands meets bringUpTimeoutMs (finding 15)', { timeout: 20_000 }, async () => {
  const namespaces = new Map<number, { data: Buffer; lbaSize: number }>();
  for (let n = 1; n <= 200; n++) namespaces.set(n, { data: Buffer.alloc(4096), lbaSize: 512 });
  // 200 × 40 ms = 8 s of bring-up; every single answer is far inside the 5 s I/O timeout.
  const m: ControllerModel = { namespaces, identifyDelayMs: 40 };
  const target = await FakeTarget.start((c) => serveController(c, m));
  try {
    await rejectsTimeout(Controller.connect({
      traddr: '127.0.0.1', trsvcid: target.port, subnqn: 'nqn.2024-01.io.test:slow', ...HOST,
      nrIoQueues: 1, queueSize: 16, kato: 0, connectTimeoutMs: 2000, ioTimeoutMs: 5000, bringUpTimeoutMs: 500,
    }));
    // Every connection of the failed bring-up is closed.
    await Promise.all(target.conns.map((c) => c.closed));
  } finally {
    await target.close();
  }
});

test('discovery of many records, tiny MDTS, slow answers meets the discovery timeout (finding 15)', { timeout: 20_000 }, async () => {
  const discovery = Array.from({ length: 1024 }, (_, i) => ({ subnqn: `nqn.2024-01.io.test:s${i}`, traddr: '127.0.0.1', trsvcid: '4420' }));
  // MDTS 1 → 8 KiB per read → 128 log reads × 30 ms ≈ 4 s per pass; each answer in time.
  const m: ControllerModel = { namespaces: new Map(), discovery, mdts: 1, logDelayMs: 30 };
  const target = await FakeTarget.start((c) => serveController(c, m));
  try {
    await rejectsTimeout(discover({ traddr: '127.0.0.1', trsvcid: target.port, ...HOST, ioTimeoutMs: 5000, timeoutMs: 500 }));
    await Promise.all(target.conns.map((c) => c.closed));
  } finally {
    await target.close();
  }
});

test('discover: ioTimeoutMs bounds each command (a log read never answered)', { timeout: 20_000 }, async () => {
  const m: ControllerModel = { namespaces: new Map(), discovery: [], logDelayMs: 4000 };
  const target = await FakeTarget.start((c) => serveController(c, m));
  try {
    await rejectsTimeout(discover({ traddr: '127.0.0.1', trsvcid: target.port, ...HOST, ioTimeoutMs: 300 }));
  } finally {
    await target.close();
  }
});
