/**
 * NBD conformance workload for clients that do not negotiate block sizes (no
 * NBD_INFO_BLOCK_SIZE: the spec's default minimum is 1 byte). Two connections to one export;
 * rounds of concurrent requests at 512- or 1024-byte granularity whose ranges are disjoint but
 * share LBA blocks (the lost-update hazard of an unserialized read-modify-write), mixed with
 * sub-block WRITE_ZEROES, FUA writes and reads of bytes not written in the round; a FLUSH after
 * each round; then every byte of the region is read back on both connections and compared with
 * the model. Plus requests of 33–64 MiB (above the 32 MiB a negotiating client may send).
 *
 * Deterministic (seeded), so a failure names a reproducible round.
 */
import assert from 'node:assert/strict';
import { Cmd, CmdFlag, NbdTestClient, type Endpoint } from './nbd-test-client';

const MiB = 1 << 20;

/** A small deterministic PRNG (mulberry32). */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function pattern(len: number, seed: number): Buffer {
  const b = Buffer.allocUnsafe(len);
  let x = (seed * 2654435761) >>> 0;
  for (let i = 0; i < len; i += 4) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    b.writeUInt32LE(x, i);
  }
  return b;
}

function firstDiff(a: Buffer, b: Buffer): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : n;
}

/** What the workload did, for the test to assert on. */
export interface ConformanceResult {
  requests: number;
  bytesVerified: number;
}

/**
 * Run the sub-block workload on export `name` at `ep`: `regionBytes` from `regionOffset`,
 * granularity `gran` (512 or 1024), `rounds` rounds. The region's content is unknown at start:
 * it is written whole first.
 */
export async function subBlockWorkload(ep: Endpoint, name: string, o: {
  regionOffset: number; regionBytes: number; gran: number; rounds: number; seed: number; timeoutMs?: number;
}): Promise<ConformanceResult> {
  const a = await NbdTestClient.connect(ep, name, o.timeoutMs);
  const b = await NbdTestClient.connect(ep, name, o.timeoutMs);
  const conns = [a, b];
  const rand = rng(o.seed);
  const model = pattern(o.regionBytes, o.seed);
  let requests = 0;
  try {
    // Start from known content, written at an odd granularity offset on purpose.
    const w0 = await a.request(Cmd.WRITE, o.regionOffset, o.regionBytes, { data: model });
    assert.equal(w0.error, 0, 'initial write');
    const canFua = (a.transmissionFlags & (1 << 3)) !== 0;
    const canZero = (a.transmissionFlags & (1 << 6)) !== 0;
    const canFlush = (a.transmissionFlags & (1 << 2)) !== 0;
    for (let round = 0; round < o.rounds; round++) {
      // Disjoint ranges of 1..8 granules packed one after another from a random start, so
      // neighbouring ranges share LBA blocks; each is a write (some FUA), a zeroes or a read.
      const units = o.regionBytes / o.gran;
      let u = Math.floor(rand() * (units / 2));
      const stop = Math.min(units, u + 16 + Math.floor(rand() * 48));
      const ops: Array<Promise<void>> = [];
      while (u < stop) {
        const n = Math.min(stop - u, 1 + Math.floor(rand() * 8));
        const off = u * o.gran;
        const len = n * o.gran;
        u += n;
        const c = conns[Math.floor(rand() * 2)] as NbdTestClient;
        const kind = rand();
        const at = o.regionOffset + off;
        requests++;
        if (kind < 0.55) {
          const data = pattern(len, o.seed * 1000 + round * 97 + u);
          data.copy(model, off);
          const flags = canFua && rand() < 0.3 ? CmdFlag.FUA : 0;
          ops.push(c.request(Cmd.WRITE, at, len, { data, flags }).then((r) => assert.equal(r.error, 0, `round ${round}: write ${at}+${len}`)));
        } else if (kind < 0.7 && canZero) {
          model.fill(0, off, off + len);
          ops.push(c.request(Cmd.WRITE_ZEROES, at, len, { flags: CmdFlag.NO_HOLE }).then((r) => assert.equal(r.error, 0, `round ${round}: zeroes ${at}+${len}`)));
        } else {
          // Not written in this round: must read exactly the model's bytes, even while its
          // neighbours in the same blocks are being read-modify-written.
          const want = Buffer.from(model.subarray(off, off + len));
          ops.push(c.request(Cmd.READ, at, len).then((r) => {
            assert.equal(r.error, 0, `round ${round}: read ${at}+${len}`);
            const d = firstDiff(r.data as Buffer, want);
            assert.equal(d, -1, `round ${round}: read ${at}+${len} differs at byte ${d}`);
          }));
        }
      }
      await Promise.all(ops);
      if (canFlush) {
        const f = await (conns[round % 2] as NbdTestClient).request(Cmd.FLUSH, 0, 0);
        assert.equal(f.error, 0, `round ${round}: flush`);
        requests++;
      }
    }
    // Every byte, on both connections, in sub-block-sized pieces at an unaligned stride.
    let verified = 0;
    for (const c of conns) {
      const piece = 64 * 1024 + o.gran;
      for (let off = 0; off < o.regionBytes; off += piece) {
        const len = Math.min(piece, o.regionBytes - off);
        const r = await c.request(Cmd.READ, o.regionOffset + off, len);
        assert.equal(r.error, 0);
        const d = firstDiff(r.data as Buffer, model.subarray(off, off + len));
        assert.equal(d, -1, `final verify: byte ${o.regionOffset + off + d} differs`);
        verified += len;
        requests++;
      }
    }
    return { requests, bytesVerified: verified };
  } finally {
    await a.disconnect().catch(() => a.destroy());
    await b.disconnect().catch(() => b.destroy());
  }
}

/**
 * Requests of 33–64 MiB from a client that did not negotiate sizes: an unaligned 48 MiB + 512
 * write, a 64 MiB write, 64 MiB and 33 MiB reads, each verified. Needs `offset + 65 MiB` of export.
 */
export async function largeRequests(ep: Endpoint, name: string, offset: number, timeoutMs?: number): Promise<void> {
  const c = await NbdTestClient.connect(ep, name, timeoutMs);
  try {
    const big = pattern(64 * MiB, 77);
    assert.equal((await c.request(Cmd.WRITE, offset, 64 * MiB, { data: big })).error, 0, '64 MiB write');
    const odd = pattern(48 * MiB + 512, 78);
    assert.equal((await c.request(Cmd.WRITE, offset + 1536, odd.length, { data: odd })).error, 0, '48 MiB + 512 unaligned write');
    odd.copy(big, 1536);
    const r64 = await c.request(Cmd.READ, offset, 64 * MiB);
    assert.equal(r64.error, 0, '64 MiB read');
    assert.equal(firstDiff(r64.data as Buffer, big), -1, '64 MiB read content');
    const r33 = await c.request(Cmd.READ, offset + 512, 33 * MiB);
    assert.equal(r33.error, 0, '33 MiB read');
    assert.equal(firstDiff(r33.data as Buffer, big.subarray(512, 512 + 33 * MiB)), -1, '33 MiB read content');
    // Above 64 MiB stays refused (EOVERFLOW), the connection stays usable.
    assert.notEqual((await c.request(Cmd.READ, offset, 64 * MiB + 512)).error, 0);
    assert.equal((await c.request(Cmd.READ, offset, 512)).error, 0);
  } finally {
    await c.disconnect().catch(() => c.destroy());
  }
}
