/**
 * Dependency-free, seeded mutation fuzzing (`npm run fuzz`, smoke in test/unit/fuzz-smoke).
 * A target turns one input into one parse; the harness mutates seed inputs (bit flips, byte
 * sets, interesting integers, insertions, deletions, splices, truncation), runs them, and counts
 * crashes (an exception that is not one of the project's typed errors), hangs (one input that
 * takes longer than `hangMs`) and peak RSS. Same seed, same inputs.
 */
import { NvmfNbdError } from '../../src/errors';

/** xorshift32: reproducible, fast, no dependency. */
export class Rng {
  private x: number;
  constructor(seed: number) {
    this.x = seed >>> 0 || 0x9e3779b9;
  }
  u32(): number {
    let x = this.x;
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    this.x = x;
    return x;
  }
  below(n: number): number {
    return n <= 0 ? 0 : this.u32() % n;
  }
  pick<T>(a: readonly T[]): T {
    return a[this.below(a.length)] as T;
  }
}

const INTERESTING = [0, 1, 0x7f, 0x80, 0xff, 0x100, 0x7fff, 0x8000, 0xffff, 0x10000, 0x7fffffff, 0x80000000, 0xffffffff];

/** One mutated copy of `seed` (or of a splice of two seeds). */
export function mutate(rng: Rng, seed: Buffer, other?: Buffer): Buffer {
  let b = Buffer.from(seed);
  const rounds = 1 + rng.below(4);
  for (let r = 0; r < rounds; r++) {
    const at = b.length === 0 ? 0 : rng.below(b.length);
    switch (rng.below(8)) {
      case 0: if (b.length > 0) b[at] = (b[at] as number) ^ (1 << rng.below(8)); break;
      case 1: if (b.length > 0) b[at] = rng.below(256); break;
      case 2: {
        const v = rng.pick(INTERESTING);
        const w = rng.pick([1, 2, 4]);
        if (at + w <= b.length) {
          if (w === 1) b[at] = v & 0xff;
          else if (w === 2) b.writeUInt16LE(v & 0xffff, at);
          else b.writeUInt32LE(v >>> 0, at);
        }
        break;
      }
      case 3: {
        const ins = Buffer.alloc(1 + rng.below(16));
        for (let i = 0; i < ins.length; i++) ins[i] = rng.below(256);
        b = Buffer.concat([b.subarray(0, at), ins, b.subarray(at)]);
        break;
      }
      case 4: b = Buffer.concat([b.subarray(0, at), b.subarray(Math.min(b.length, at + 1 + rng.below(16)))]); break;
      case 5: b = b.subarray(0, at); break;
      case 6: if (other !== undefined && other.length > 0) b = Buffer.concat([b.subarray(0, at), other.subarray(rng.below(other.length))]); break;
      default: {
        // Big-endian interesting value (NBD is big-endian).
        const v = rng.pick(INTERESTING);
        if (at + 4 <= b.length) b.writeUInt32BE(v >>> 0, at);
      }
    }
  }
  return b;
}

/** Split `b` into 1..4 random chunks (parsers must not care where chunks end). */
export function chunks(rng: Rng, b: Buffer): Buffer[] {
  const n = 1 + rng.below(4);
  const cuts = Array.from({ length: n - 1 }, () => rng.below(b.length + 1)).sort((x, y) => x - y);
  const out: Buffer[] = [];
  let prev = 0;
  for (const c of [...cuts, b.length]) {
    out.push(b.subarray(prev, c));
    prev = c;
  }
  return out;
}

/** A parser under test. `run` parses one input; it may throw typed errors only. */
export interface ParserTarget {
  readonly name: string;
  readonly seeds: readonly Buffer[];
  run(input: Buffer, rng: Rng): void;
}

/** What one target's run found. */
export interface FuzzResult {
  name: string;
  inputs: number;
  crashes: number;
  hangs: number;
  peakRssMiB: number;
  seconds: number;
  /** The first few crashes: message and the input (hex, cut) to reproduce. */
  samples: string[];
}

/** True for the project's typed errors (every bad-input failure must be one). */
export function isTyped(err: unknown): boolean {
  return err instanceof NvmfNbdError && typeof err.code === 'string' && err.code.length > 0;
}

/**
 * A slow input is a hang only when it is slow again on a re-run with the same chunking: a GC
 * pause or a busy machine makes one run slow, a parser loop makes every run slow.
 */
function slowAgain(target: ParserTarget, input: Buffer, inputSeed: number, hangMs: number): boolean {
  for (let k = 0; k < 2; k++) {
    const s = Date.now();
    try {
      target.run(input, new Rng(inputSeed));
    } catch {
      // counted on the first run
    }
    if (Date.now() - s <= hangMs) return false;
  }
  return true;
}

/** Run `target` on `inputs` mutated inputs (or until `maxSeconds`). */
export function fuzzParser(target: ParserTarget, o: { inputs: number; seed: number; maxSeconds?: number; hangMs?: number }): FuzzResult {
  const rng = new Rng(o.seed);
  const hangMs = o.hangMs ?? 250;
  const t0 = Date.now();
  const stopAt = o.maxSeconds === undefined ? Infinity : t0 + o.maxSeconds * 1000;
  let peak = process.memoryUsage.rss();
  const res: FuzzResult = { name: target.name, inputs: 0, crashes: 0, hangs: 0, peakRssMiB: 0, seconds: 0, samples: [] };
  for (let i = 0; i < o.inputs; i++) {
    const seed = rng.pick(target.seeds);
    const input = rng.below(16) === 0 ? seed : mutate(rng, seed, rng.pick(target.seeds));
    const s = Date.now();
    const inputSeed = rng.u32();
    try {
      target.run(input, new Rng(inputSeed));
    } catch (err) {
      if (!isTyped(err)) {
        res.crashes++;
        if (res.samples.length < 3) res.samples.push(`${String(err).slice(0, 200)} <- ${input.subarray(0, 64).toString('hex')}`);
      }
    }
    if (Date.now() - s > hangMs && slowAgain(target, input, inputSeed, hangMs)) {
      res.hangs++;
      if (res.samples.length < 3) res.samples.push(`slow input (> ${hangMs} ms twice) <- ${input.subarray(0, 64).toString('hex')}`);
    }
    res.inputs++;
    if ((i & 1023) === 0) {
      peak = Math.max(peak, process.memoryUsage.rss());
      if (Date.now() > stopAt) break;
    }
  }
  res.peakRssMiB = Math.round(Math.max(peak, process.memoryUsage.rss()) / 1048576);
  res.seconds = Math.round((Date.now() - t0) / 100) / 10;
  return res;
}

/** The table `npm run fuzz` prints. */
export function formatTable(rows: readonly FuzzResult[]): string {
  const head = ['target', 'inputs', 'crashes', 'hangs', 'peak RSS MiB', 'seconds'];
  const cells = rows.map((r) => [r.name, String(r.inputs), String(r.crashes), String(r.hangs), String(r.peakRssMiB), String(r.seconds)]);
  const w = head.map((h, i) => Math.max(h.length, ...cells.map((c) => (c[i] as string).length)));
  const line = (c: readonly string[]): string => `| ${c.map((x, i) => (i === 0 ? x.padEnd(w[i] as number) : x.padStart(w[i] as number))).join(' | ')} |`;
  return [line(head), `|${w.map((n, i) => (i === 0 ? `:${'-'.repeat(n + 1)}` : `${'-'.repeat(n + 1)}:`)).join('|')}|`, ...cells.map(line)].join('\n');
}
