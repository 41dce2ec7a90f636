/**
 * The stale-write hazard of re-driving after a reconnect (src/controller/resilient.ts, "Why the
 * quiesce time" in docs/ARCHITECTURE.md): a write sent on the old association can still reach
 * the target after the host gave that association up — the host kernel keeps retransmitting the
 * bytes of a closed socket, and a healed partition delivers them. If the target still holds the
 * old association then, the stale write lands after the re-driven copy and after a newer
 * acknowledged write to the same block. The quiesce time must outlast the target's keep-alive
 * expiry (2·KATO + its grace), and KATO 0 (never expire) must be refused.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { NvmeTarget } from '../../src/embedded-target/target';
import { ResilientController, quiesceTimeMs } from '../../src/controller/resilient';
import type { Namespace } from '../../src/controller/namespace';
import { ErrorCode, NvmfNbdError } from '../../src/errors';
import { rejectsCode, throwsCode } from '../helpers/assert-code';
import { PartitionProxy } from '../helpers/partition-proxy';

const NQN = 'nqn.2014-08.org.nvmf-nbd:stale-write';
const HOSTNQN = 'nqn.2014-08.org.nvmexpress:uuid:0f6c3d1e-1a2b-4c3d-9e8f-00000000b001';
const HOSTID = '0f6c3d1e-1a2b-4c3d-9e8f-00000000b001';

test('quiesce time is 2·KATO + the target grace (default max(5 s, KATO/2)) + CQT', () => {
  assert.equal(quiesceTimeMs(5000, 0), 15_000);
  assert.equal(quiesceTimeMs(1000, 0), 7000);
  assert.equal(quiesceTimeMs(20_000, 100), 50_100);
  assert.equal(quiesceTimeMs(1000, 0, 3000), 5000);
});

test('KATO 0 is refused for an I/O controller: API INVALID_ARGUMENT, CLI -k 0 usage error', async () => {
  const target = new NvmeTarget({ listen: { host: '127.0.0.1', port: 0 }, subsystems: [{ nqn: NQN, namespaces: [{ nsid: 1, sizeBytes: 1 << 20, backing: { memory: true } }] }] });
  const { port } = await target.listen();
  try {
    await rejectsCode(
      ResilientController.connect({ traddr: '127.0.0.1', trsvcid: port, subnqn: NQN, hostnqn: HOSTNQN, hostid: HOSTID, nrIoQueues: 1, kato: 0 }),
      ErrorCode.INVALID_ARGUMENT,
    );
  } finally {
    await target.close();
  }
  const { parseArgs } = await import('../../src/cli/args');
  const { CONNECT_OPTIONS, controllerOptionsFromArgs } = await import('../../src/cli/verbs/connect');
  const base = ['-t', 'tcp', '-a', '127.0.0.1', '-n', NQN, '-q', HOSTNQN, '-I', HOSTID];
  throwsCode(() => controllerOptionsFromArgs(parseArgs([...base, '-k', '0'], CONNECT_OPTIONS).options), ErrorCode.CLI_USAGE);
  assert.equal(controllerOptionsFromArgs(parseArgs([...base, '-k', '1'], CONNECT_OPTIONS).options).kato, 1000);
});

test('a write black-holed on the lost association never lands after a re-driven and a newer acknowledged write', { timeout: 20_000 }, async () => {
  // The target keeps a silent association for KATO + 3 s; the host is told so.
  const target = new NvmeTarget({
    listen: { host: '127.0.0.1', port: 0 }, keepAliveGraceMs: 3000,
    subsystems: [{ nqn: NQN, namespaces: [{ nsid: 1, sizeBytes: 1 << 20, backing: { memory: true } }] }],
  });
  const { port } = await target.listen();
  const proxy = await PartitionProxy.start(port);
  const rc = await ResilientController.connect({
    traddr: '127.0.0.1', trsvcid: proxy.port, subnqn: NQN, hostnqn: HOSTNQN, hostid: HOSTID, nrIoQueues: 1,
    kato: 1000, targetKeepAliveGraceMs: 3000, connectTimeoutMs: 2000, ioTimeoutMs: 5000, reconnectDelayMs: 100, ctrlLossTmoMs: 30_000,
  });
  try {
    const dev = rc.namespace(1) as Namespace;
    proxy.stall();
    await dev.write(0, Buffer.alloc(4096, 0xaa), false); // W1: lost with the link, re-driven after the reconnect
    assert.equal(rc.reconnects, 1);
    // Re-driven only once the target had dropped the old association (its keep-alive expired):
    // the quiesce time outlasted KATO + the target's grace.
    assert.equal(target.stats().keepAliveTimeouts, 1, 'the old association expired at the target before W1 was re-driven');
    await dev.write(0, Buffer.alloc(4096, 0xbb), false); // W2: newer, acknowledged
    // The stale W1 bytes meet a closed connection: nothing of them reaches a live association.
    assert.equal(proxy.heal(), 0, 'stale bytes delivered to a connection the target still had open');
    const v = (await dev.read(0, 4096))[0];
    assert.equal(v, 0xbb, `LBA 0 holds 0x${v?.toString(16)}: the stale W1 landed after W2`);
  } finally {
    await rc.close();
    await proxy.close();
    await target.close();
  }
});
