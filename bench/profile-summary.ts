/**
 * Summarise a V8 `.cpuprofile` (from `node --cpu-prof`) as the functions with the most self time.
 *
 *   node dist/bench/profile-summary.js FILE.cpuprofile [--top 10]
 *
 * Self time of a node = the sum of the sample intervals whose leaf is that node; nodes are then
 * grouped by function name + script + line, so a function reached by many call paths is one row.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fmt, numArg, parseArgs, table } from './common';

interface CpuProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number; columnNumber: number };
  hitCount?: number;
  children?: number[];
}
interface CpuProfile {
  nodes: CpuProfileNode[];
  startTime: number;
  endTime: number;
  samples?: number[];
  timeDeltas?: number[];
}

/** One row of the summary. */
export interface SelfTimeRow {
  /** `name (file:line)`; anonymous functions and V8 pseudo-frames like (garbage collector) keep V8's name. */
  readonly fn: string;
  readonly selfMs: number;
  /** Share of all sampled time, idle included (0..100). */
  readonly pct: number;
  /** Share of the non-idle time (0..100): what optimising could win. */
  readonly busyPct: number;
  /** The project function (a frame under dist/src/) nearest the leaf on most of its samples,
   *  with its share of this row's time: who to blame for a Node-internal or native frame. */
  readonly via: string;
}

/** Self time per function of a parsed profile, largest first. */
export function selfTimes(p: CpuProfile): { rows: SelfTimeRow[]; totalMs: number; idleMs: number } {
  const byId = new Map<number, CpuProfileNode>();
  const parent = new Map<number, number>();
  for (const n of p.nodes) {
    byId.set(n.id, n);
    for (const c of n.children ?? []) parent.set(c, n.id);
  }
  const label = (cf: CpuProfileNode['callFrame']): string => {
    const file = cf.url === '' ? '' : path.basename(cf.url.replace(/^file:\/\//, ''));
    return `${cf.functionName === '' ? '(anonymous)' : cf.functionName}${file === '' ? '' : ` (${file}:${cf.lineNumber + 1})`}`;
  };
  /** Nearest ancestor-or-self frame in the project's compiled sources. */
  const projectFrame = (id: number): string => {
    for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
      const cf = byId.get(cur)?.callFrame;
      if (cf !== undefined && /\/dist\/src\//.test(cf.url)) return label(cf);
    }
    return '-';
  };
  const selfUs = new Map<number, number>();
  const samples = p.samples ?? [];
  const deltas = p.timeDeltas ?? [];
  // timeDeltas[i] is the time from sample i-1 to sample i, so it is charged to sample i-1's leaf
  // (the function that was running during that interval).
  for (let i = 1; i < samples.length; i++) {
    const id = samples[i - 1] as number;
    selfUs.set(id, (selfUs.get(id) ?? 0) + Math.max(0, deltas[i] ?? 0));
  }
  const grouped = new Map<string, { us: number; via: Map<string, number> }>();
  let total = 0;
  let idle = 0;
  for (const [id, us] of selfUs) {
    const cf = byId.get(id)?.callFrame;
    if (cf === undefined) continue;
    total += us;
    if (cf.functionName === '(idle)') idle += us;
    const name = label(cf);
    let g = grouped.get(name);
    if (g === undefined) grouped.set(name, (g = { us: 0, via: new Map() }));
    g.us += us;
    const v = projectFrame(id);
    g.via.set(v, (g.via.get(v) ?? 0) + us);
  }
  const busy = total - idle;
  const rows = [...grouped.entries()]
    .map(([fn, g]) => {
      const [via, vus] = [...g.via.entries()].sort((a, b) => b[1] - a[1])[0] ?? ['-', 0];
      return {
        fn,
        selfMs: g.us / 1000,
        pct: total > 0 ? (100 * g.us) / total : 0,
        busyPct: busy > 0 && fn !== '(idle)' ? (100 * g.us) / busy : 0,
        via: via === '-' || via === fn ? via : `${via} ${Math.round((100 * vus) / g.us)} %`,
      };
    })
    .sort((a, b) => b.selfMs - a.selfMs);
  return { rows, totalMs: total / 1000, idleMs: idle / 1000 };
}

/** The top-N table of a `.cpuprofile` file, as printable text. */
export function summariseProfile(file: string, top = 10): string {
  const p = JSON.parse(fs.readFileSync(file, 'utf8')) as CpuProfile;
  const { rows, totalMs, idleMs } = selfTimes(p);
  const shown = rows.filter((r) => r.fn !== '(idle)').slice(0, top);
  const head = `profile ${path.basename(file)}: ${fmt(totalMs, 0)} ms sampled, ${fmt(idleMs, 0)} ms idle (${fmt(totalMs > 0 ? (100 * idleMs) / totalMs : 0)} %)`;
  return `${head}\n${table(['#', 'function (self time)', 'self ms', '% of busy', 'mostly via (project frame)'], shown.map((r, i) => [String(i + 1), r.fn, fmt(r.selfMs), fmt(r.busyPct), r.via]))}\n` +
    'native frames (writev, writeBuffer) include time spent preempted inside the syscall, e.g. while a woken peer on the same core runs';
}

if (require.main === module) {
  try {
    const argv = process.argv.slice(2);
    const file = argv.find((a) => !a.startsWith('--'));
    if (file === undefined) throw new Error('usage: profile-summary.js FILE.cpuprofile [--top N]');
    const args = parseArgs(argv.filter((a) => a !== file), ['top']);
    process.stdout.write(`${summariseProfile(file, numArg(args, 'top', 10))}\n`);
  } catch (err) {
    process.stderr.write(`profile-summary: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  }
}
