/**
 * Write-verify workload for fault tests: several workers write self-describing blocks through an
 * NBD connection while faults are injected; every acknowledged write is recorded, and at the end
 * every block is read back. A block must hold its last acknowledged content, or the content of a
 * write to it that was still unacknowledged (it may or may not have reached the media).
 * "Lost" counts blocks that hold neither: an acknowledged write that disappeared.
 */
import { createHash } from 'node:crypto';
import type { NbdTestClient } from './nbd-test-client';

/** Options of one workload run. */
export interface WorkloadOptions {
  /** Block size in bytes (a multiple of the export's block size). */
  blockSize: number;
  /** Number of distinct blocks the workload writes to (from offset 0). */
  blocks: number;
  /** Concurrent writers. */
  workers: number;
  /** Use FUA on every Nth write (0 = never). */
  fuaEvery?: number;
}

/** What happened during a run. */
export interface WorkloadResult {
  acknowledged: number;
  /** Writes the server failed with an NBD error (e.g. EIO after ctrl_loss_tmo). */
  failed: number;
  /** Blocks whose content matched neither the last acknowledged write nor a pending one. */
  lost: number;
  /** The first NBD errno seen, if any. */
  firstErrno: number | undefined;
}

/** The content of generation `gen` of block `index`: deterministic, distinct per (index, gen). */
export function blockContent(index: number, gen: number, size: number): Buffer {
  const out = Buffer.alloc(size);
  let off = 0;
  let counter = 0;
  while (off < size) {
    const h = createHash('sha256').update(`${index}:${gen}:${counter++}`).digest();
    off += h.copy(out, off);
  }
  out.writeUInt32LE(index, 0);
  out.writeUInt32LE(gen, 4);
  return out;
}

/** Runs the workload until `stop()` is called, then verifies. */
export class VerifyWorkload {
  private readonly acked: number[];
  private readonly pending: Array<Set<number>>;
  private nextGen = 1;
  private running = true;
  private readonly loops: Array<Promise<void>> = [];
  readonly result: WorkloadResult = { acknowledged: 0, failed: 0, lost: 0, firstErrno: undefined };
  /** Generations of the writes in flight right now (issued, not yet settled). */
  readonly inFlight = new Set<number>();
  /** The generation of the newest write issued so far (0 before the first). */
  get lastIssued(): number {
    return this.nextGen - 1;
  }
  /** Called when a write settles: acknowledged (`ok`), failed with an NBD error, or its connection lost. */
  onWriteSettled: ((gen: number, ok: boolean) => void) | undefined;

  constructor(private readonly client: NbdTestClient, private readonly o: WorkloadOptions) {
    this.acked = new Array<number>(o.blocks).fill(0);
    this.pending = Array.from({ length: o.blocks }, () => new Set<number>());
  }

  /** Start the writers. `pace` ms between writes of one worker keeps TCG guests usable. */
  start(pace = 0): void {
    for (let w = 0; w < this.o.workers; w++) this.loops.push(this.loop(w, pace));
  }

  private async loop(worker: number, pace: number): Promise<void> {
    // Each worker owns the blocks congruent to its number, so a block never has two writes in
    // flight at once and "the last acknowledged write" is well defined.
    let index = worker - this.o.workers;
    while (this.running) {
      index += this.o.workers;
      if (index >= this.o.blocks) index = worker;
      if (index >= this.o.blocks) return;
      const gen = this.nextGen++;
      this.pending[index]!.add(gen);
      const fua = (this.o.fuaEvery ?? 0) > 0 && gen % (this.o.fuaEvery ?? 1) === 0;
      this.inFlight.add(gen);
      try {
        const r = await this.client.request(1, index * this.o.blockSize, this.o.blockSize, {
          data: blockContent(index, gen, this.o.blockSize),
          flags: fua ? 1 : 0,
        });
        this.inFlight.delete(gen);
        if (r.error === 0) {
          this.result.acknowledged++;
          // Only a newer acknowledged write supersedes; an older one finishing late does not.
          if (gen > this.acked[index]!) this.acked[index] = gen;
          this.pending[index]!.delete(gen);
        } else {
          this.result.failed++;
          this.result.firstErrno ??= r.error;
          // A failed write may still have reached the media: keep it as "possibly written".
        }
        this.onWriteSettled?.(gen, r.error === 0);
      } catch {
        // Connection gone: the write's fate is unknown; it stays possibly written.
        this.inFlight.delete(gen);
        this.onWriteSettled?.(gen, false);
        return;
      }
      if (pace > 0) await new Promise((r) => setTimeout(r, pace));
    }
  }

  /**
   * One extra write to block `blocks` (just past the workload's blocks, which no worker owns),
   * tracked like the workers' (a generation, `inFlight`, `onWriteSettled`) and checked by
   * {@link verify} once acknowledged: a write a test can send at a moment of its choosing, e.g.
   * right after muting a path. One at a time; resolves when it settles.
   */
  probe(): Promise<void> {
    const index = this.o.blocks;
    const gen = this.nextGen++;
    this.inFlight.add(gen);
    const settle = (error: number | undefined): void => {
      this.inFlight.delete(gen);
      if (error === 0) {
        this.result.acknowledged++;
        this.probeAcked = gen;
      } else if (error !== undefined) {
        this.result.failed++;
        this.result.firstErrno ??= error;
      }
      this.onWriteSettled?.(gen, error === 0);
    };
    const p = this.client.request(1, index * this.o.blockSize, this.o.blockSize, { data: blockContent(index, gen, this.o.blockSize) })
      .then((r) => settle(r.error), () => settle(undefined));
    this.probes.push(p);
    return p;
  }

  /** The newest acknowledged probe's generation (0: none). */
  private probeAcked = 0;
  private readonly probes: Array<Promise<void>> = [];

  /** Stop the writers and wait for the outstanding writes to finish. */
  async stop(): Promise<void> {
    this.running = false;
    await Promise.all(this.loops);
    await Promise.all(this.probes);
  }

  /** The generation of block `index`'s newest acknowledged write (0: none yet). */
  ackedGen(index: number): number {
    return this.acked[index] ?? 0;
  }

  /**
   * Whether `data`, read from block `index` by a read issued when the block's newest acknowledged
   * generation was `ackedAtIssue`, is a valid answer: an intact generation no older than that,
   * which was acknowledged since or may still land (in flight, or failed). Anything else is a
   * stale or torn read — or, at the end, a lost write.
   */
  readAcceptable(index: number, data: Buffer, ackedAtIssue: number): boolean {
    // Generation 0 is the initial all-zero block.
    const gen = isZero(data) ? 0 : data.readUInt32LE(4);
    if (gen === 0) return ackedAtIssue === 0;
    if (data.readUInt32LE(0) !== index || !data.equals(blockContent(index, gen, this.o.blockSize))) return false;
    return gen >= ackedAtIssue && (gen <= this.ackedGen(index) || this.pending[index]!.has(gen));
  }

  /** Read every block back through `reader` (default: the same client) and count lost writes. */
  async verify(reader: NbdTestClient = this.client): Promise<WorkloadResult> {
    for (let index = 0; index < this.o.blocks; index++) {
      const data = await reader.read(index * this.o.blockSize, this.o.blockSize);
      // Acceptable: the last acknowledged generation, or a later one whose write was never
      // acknowledged (it may or may not have landed).
      if (!this.readAcceptable(index, data, this.ackedGen(index))) this.result.lost++;
    }
    if (this.probeAcked > 0) {
      const data = await reader.read(this.o.blocks * this.o.blockSize, this.o.blockSize);
      if (!data.equals(blockContent(this.o.blocks, this.probeAcked, this.o.blockSize))) this.result.lost++;
    }
    return this.result;
  }
}

function isZero(b: Buffer): boolean {
  for (let i = 0; i < b.length; i++) if (b[i] !== 0) return false;
  return true;
}
