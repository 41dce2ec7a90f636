/**
 * The multipath scenario harness (test/helpers/multipath-scenario.ts) catches what its figures
 * claim: run against an NBD server on a RAM device that misbehaves on purpose, a scenario fails
 * when an acknowledged write is lost, when a read returns data older than an acknowledged write,
 * and when no read completes while writes are held (a single path that stalls everything); it
 * passes when only the writes are held and reads go on.
 */
import { strict as assert } from 'node:assert';
import { after, before, test } from 'node:test';
import { MemoryBlockDevice } from '../../src/block/memory-device';
import { NbdServer } from '../../src/nbd/server';
import { NbdTestClient } from '../helpers/nbd-test-client';
import { runMultipathScenario } from '../helpers/multipath-scenario';
import type { MultipathHost, MultipathScenario } from '../helpers/multipath-scenario';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A RAM device with switches: hold writes / reads at a gate, drop writes (acknowledged, not stored), answer reads with zeroes. */
class FaultyDevice extends MemoryBlockDevice {
  dropWrites = false;
  zeroReads = false;
  private gate: Promise<void> | undefined;
  private open: (() => void) | undefined;
  private gateReads = false;
  /** Writes and reads waiting at the gate. */
  waitingWrites = 0;
  waitingReads = 0;

  /** Hold every write (and every read with `reads`) arriving from now until {@link release}. */
  hold(reads: boolean): void {
    this.gateReads = reads;
    this.gate = new Promise((resolve) => { this.open = resolve; });
  }

  release(): void {
    this.gate = undefined;
    this.open?.();
  }

  override async write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    if (this.gate !== undefined) {
      this.waitingWrites++;
      await this.gate;
      this.waitingWrites--;
    }
    if (this.dropWrites) return;
    await super.write(offset, data, fua);
  }

  override async read(offset: number, length: number): Promise<Buffer> {
    if (this.gate !== undefined && this.gateReads) {
      this.waitingReads++;
      await this.gate;
      this.waitingReads--;
    }
    if (this.zeroReads) return Buffer.alloc(length);
    return super.read(offset, length);
  }
}

const GEOMETRY = { blockSize: 4096, blocks: 64, writers: 4, readers: 2, paceMs: 1 };
let dev: FaultyDevice;
let server: NbdServer;
let host: MultipathHost;

before(async () => {
  dev = new FaultyDevice({ size: 1 << 20, blockSize: 4096 });
  server = new NbdServer({ log: () => undefined });
  server.addExport('e', dev);
  const ep = await server.listen({ tcp: { host: '127.0.0.1', port: 0 } });
  assert.ok('tcp' in ep);
  const client = await NbdTestClient.connect({ port: ep.tcp.port }, 'e');
  host = { client, topology: async () => 'fake device', close: async () => { client.destroy(); } };
});

after(async () => {
  await host.close();
  await server.close();
});

async function until(cond: () => boolean): Promise<void> {
  const end = Date.now() + 30_000;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not reached within 30 s');
    await sleep(2);
  }
}

function scenario(label: string, o: Pick<MultipathScenario, 'holds' | 'fault'> & Partial<MultipathScenario>): MultipathScenario {
  return { label, target: 'fake', host, geometry: GEOMETRY, warmup: 20, holdMs: 30_000, stepMs: 30_000, step: 10, ...o };
}

test('writes held while reads go on: passes, and the figures count the hold and the reads in it', { timeout: 60_000 }, async () => {
  const f = await runMultipathScenario(scenario('harness-hold', {
    holds: true,
    fault: async () => {
      dev.hold(false);
      await until(() => dev.waitingWrites === GEOMETRY.writers);
      // Let the gate open by itself once reads went on (the runner is waiting for the hold).
      const reads = dev.counters.reads;
      void until(() => dev.counters.reads >= reads + 30).then(() => dev.release());
    },
  }));
  assert.equal(f.held, GEOMETRY.writers);
  // The device served 30 reads before opening the gate; the last replies may race the writes' acks.
  assert.ok(f.readsDuringHold >= 20, `reads during the hold: ${f.readsDuringHold}`);
  assert.deepEqual([f.lost, f.staleReads, f.failed, f.readErrors], [0, 0, 0, 0]);
  assert.ok(f.longestWritePauseMs >= (f.holdMs ?? 0) - 1, 'the hold is the longest write pause');
});

test('everything held (a single path): fails, no read completed during the hold', { timeout: 60_000 }, async () => {
  await assert.rejects(runMultipathScenario(scenario('harness-stall', {
    holds: true,
    fault: async () => {
      dev.hold(true);
      await until(() => dev.waitingWrites === GEOMETRY.writers && dev.waitingReads === GEOMETRY.readers);
      setTimeout(() => dev.release(), 200);
    },
  })), /reads completed while the failed path's writes were held/);
});

test('acknowledged writes not stored: fails, lost writes counted', { timeout: 60_000 }, async () => {
  try {
    await assert.rejects(runMultipathScenario(scenario('harness-lost', {
      holds: false,
      fault: async () => { dev.dropWrites = true; },
    })), /no acknowledged write lost/);
  } finally {
    dev.dropWrites = false;
  }
});

test('reads answered with old data: fails, stale reads counted', { timeout: 60_000 }, async () => {
  try {
    await assert.rejects(runMultipathScenario(scenario('harness-stale', {
      holds: false,
      fault: async () => { dev.zeroReads = true; },
      restore: async () => { dev.zeroReads = false; },
    })), /no read returned older data/);
  } finally {
    dev.zeroReads = false;
  }
});
