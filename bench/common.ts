/**
 * Helpers shared by the benchmark scripts (bench/*.ts): argument parsing, child processes that
 * announce readiness with one `READY {json}` line, CPU pinning, latency percentiles, tables and
 * machine info. Benchmarks print numbers; they never assert on timing.
 */
import { spawn, spawnSync } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { formatInterchangeKey } from '../src/tls/psk';

/** Host identity the benchmark connects with (any valid NQN/UUID works for our target). */
export const BENCH_HOSTNQN = 'nqn.2014-08.org.nvmexpress:uuid:b0e1c4b0-0000-4000-8000-000000000001';
export const BENCH_HOSTID = 'b0e1c4b0-0000-4000-8000-000000000001';
/** Subsystem NQN of the embedded target that the benchmarks start. */
export const BENCH_SUBNQN = 'nqn.2026-01.io.nvmf-nbd:bench';

export const MiB = 1024 * 1024;

/** Exit status for "a prerequisite is missing" (fio, nbdkit, taskset…). */
export const EXIT_MISSING_PREREQ = 2;

/** The dist/bench directory (this file's compiled location), for spawning sibling entries. */
export const BENCH_DIST_DIR = __dirname;
/**
 * The benchmark's TLS PSK (configured key, SHA-256), made fresh for each run: no key is kept in
 * the repository. The first bench process makes it and puts it in its environment, so the target
 * process it spawns (which inherits that environment) configures the same key. The target serves
 * TLS as optional, so plain and TLS rows run against the same target in the same run.
 */
export const BENCH_TLS_KEY: string = process.env.NVMF_NBD_BENCH_TLS_KEY
  ?? (process.env.NVMF_NBD_BENCH_TLS_KEY = formatInterchangeKey(randomBytes(32), 1));

/**
 * Parse `--key value` / `--key=value` / `--flag` arguments into a map. Unknown keys are the
 * caller's business (it checks against its own list so typos fail loudly).
 */
export function parseArgs(argv: readonly string[], known: readonly string[], flags: readonly string[] = []): Map<string, string> {
  const out = new Map<string, string>();
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] as string;
    if (!a.startsWith('--')) throw new BenchUsageError(`unexpected argument '${a}'`);
    const eq = a.indexOf('=');
    const key = eq >= 0 ? a.slice(2, eq) : a.slice(2);
    if (flags.includes(key)) {
      out.set(key, eq >= 0 ? a.slice(eq + 1) : '1');
      continue;
    }
    if (!known.includes(key)) throw new BenchUsageError(`unknown option --${key} (known: ${[...known, ...flags].map((k) => '--' + k).join(' ')})`);
    const v = eq >= 0 ? a.slice(eq + 1) : argv[++i];
    if (v === undefined) throw new BenchUsageError(`--${key} needs a value`);
    out.set(key, v);
  }
  return out;
}

/** A positive number from an option, or the default. */
export function numArg(args: Map<string, string>, key: string, def: number): number {
  const v = args.get(key);
  if (v === undefined) return def;
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0) throw new BenchUsageError(`--${key} ${v}: not a non-negative number`);
  return n;
}

/** A bad command line of a bench tool: reported as one line, exit status 2. */
export class BenchUsageError extends Error {}

/**
 * Run a bench tool's `main`: a usage error prints `tool: message` and exits 2; any other failure
 * prints its message (the stack too with NVMF_NBD_DEBUG set) and exits 1.
 */
export function runMain(tool: string, main: () => Promise<void>): void {
  main().catch((err: unknown) => {
    const e = err instanceof Error ? err : new Error(String(err));
    const text = e instanceof BenchUsageError || process.env.NVMF_NBD_DEBUG === undefined ? e.message : e.stack ?? e.message;
    process.stderr.write(`${tool}: ${text}\n`);
    process.exit(e instanceof BenchUsageError ? 2 : 1);
  });
}

/** True when `cmd` is on PATH. */
export function haveCommand(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

/** The CPUs this machine has (for picking pin targets). */
export function cpuCount(): number {
  return os.availableParallelism();
}

/**
 * `[cmd, ...args]` prefixed with `taskset -c CPU` when pinning is possible (taskset present, the
 * CPU exists). Without it the command runs unpinned and `pinned` says so, so the report can tell.
 */
export function pinned(cpu: number | undefined, argv: readonly string[]): { argv: string[]; pinned: boolean } {
  if (cpu === undefined || cpu >= cpuCount() || !haveCommand('taskset')) return { argv: [...argv], pinned: false };
  return { argv: ['taskset', '-c', String(cpu), ...argv], pinned: true };
}

/** A spawned helper process and the JSON it printed after `READY `. */
export interface Helper<T> {
  readonly child: ChildProcess;
  readonly ready: T;
  /** Everything the child wrote to stderr so far (for error reports). */
  stderr(): string;
  /** SIGTERM, then SIGKILL after `graceMs`; resolves when the process has exited. */
  stop(graceMs?: number): Promise<void>;
}

/**
 * Spawn `argv` and wait (up to `timeoutMs`) for a stdout line `READY {json}`. The child is
 * killed when it does not become ready, and when this process exits.
 */
export function spawnHelper<T>(argv: readonly string[], timeoutMs = 20_000, extraEnv: NodeJS.ProcessEnv = {}): Promise<Helper<T>> {
  const [cmd, ...rest] = argv as [string, ...string[]];
  const child = spawn(cmd, rest, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...extraEnv } });
  let err = '';
  child.stderr?.setEncoding('utf8');
  child.stderr?.on('data', (s: string) => {
    // Bounded: a chatty child must not grow this process's memory.
    err = (err + s).slice(-16_384);
  });
  const killOnExit = (): void => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  };
  process.on('exit', killOnExit);
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const stop = async (graceMs = 5000): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), graceMs);
      await exited;
      clearTimeout(t);
    }
    process.off('exit', killOnExit);
  };
  return new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => fail(new Error(`${argv.join(' ')}: not ready after ${timeoutMs} ms\n${err}`)), timeoutMs);
    const fail = (e: Error): void => {
      clearTimeout(timer);
      killOnExit();
      reject(e);
    };
    child.once('error', fail);
    const onExit = (code: number | null, sig: NodeJS.Signals | null): void => fail(new Error(`${argv.join(' ')}: exited (${code ?? sig}) before READY\n${err}`));
    child.once('exit', onExit);
    child.stdout?.setEncoding('utf8');
    const onData = (s: string): void => {
      out += s;
      const m = /^READY (.*)$/m.exec(out);
      if (m === null) {
        if (out.length > 65_536) fail(new Error(`${argv.join(' ')}: no READY line in 64 KiB of output`));
        return;
      }
      clearTimeout(timer);
      child.removeListener('exit', onExit);
      child.removeListener('error', fail);
      child.stdout?.removeListener('data', onData);
      child.stdout?.resume();
      resolve({ child, ready: JSON.parse(m[1] as string) as T, stderr: () => err, stop });
    };
    child.stdout?.on('data', onData);
  });
}

/** Spawn the embedded target (bench/target-proc.ts) pinned to `cpu`; resolves with its port. */
export async function startTargetProc(o: { cpu: number | undefined; sizeBytes: number; maxIoQueues?: number; tlsOptional?: boolean; namespaces?: number; flushEvery?: number }): Promise<Helper<{ port: number; nqn: string }> & { pinned: boolean }> {
  const p = pinned(o.cpu, [process.execPath, path.join(BENCH_DIST_DIR, 'target-proc.js'), '--size', String(o.sizeBytes), '--nqn', BENCH_SUBNQN,
    ...(o.maxIoQueues !== undefined ? ['--max-io-queues', String(o.maxIoQueues)] : []), ...(o.tlsOptional === true ? ['--tls-optional'] : []),
    ...(o.namespaces !== undefined ? ['--namespaces', String(o.namespaces)] : []),
    ...(o.flushEvery !== undefined ? ['--flush-every', String(o.flushEvery)] : [])]);
  const h = await spawnHelper<{ port: number; nqn: string }>(p.argv);
  return { ...h, pinned: p.pinned };
}

/** Peak resident set (VmHWM) and current RSS of a live process in KiB, from /proc. */
export function procMemory(pid: number): { hwmKiB: number; rssKiB: number } | undefined {
  try {
    const s = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
    const hwm = /^VmHWM:\s+(\d+) kB/m.exec(s);
    const rss = /^VmRSS:\s+(\d+) kB/m.exec(s);
    if (hwm === null || rss === null) return undefined;
    return { hwmKiB: Number(hwm[1]), rssKiB: Number(rss[1]) };
  } catch {
    return undefined;
  }
}

/** CPU time (user+system, in clock ticks → µs) a live process has used, from /proc/PID/stat. */
export function procCpuMicros(pid: number): number | undefined {
  const t = procCpuTimes(pid);
  return t === undefined ? undefined : t.user + t.sys;
}

/** User and system CPU time (µs) a live process has used, from /proc/PID/stat. */
export function procCpuTimes(pid: number): { user: number; sys: number } | undefined {
  try {
    const s = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    // USER_HZ is 100 on every Linux ABI Node supports.
    return { user: (Number(f[11]) * 1e6) / 100, sys: (Number(f[12]) * 1e6) / 100 };
  } catch {
    return undefined;
  }
}

/** The q-th percentile (0..100) of an ascending-sorted sample, nearest-rank. */
export function percentile(sorted: Float64Array, q: number): number {
  if (sorted.length === 0) return NaN;
  const idx = Math.min(sorted.length - 1, Math.max(0, Math.ceil((q / 100) * sorted.length) - 1));
  return sorted[idx] as number;
}

/** Format a number for a table: integers with no decimals when large, else `digits` decimals. */
export function fmt(n: number | undefined, digits = 1): string {
  if (n === undefined || !Number.isFinite(n)) return '-';
  if (Math.abs(n) >= 1000) return Math.round(n).toString();
  return n.toFixed(digits);
}

/** A plain-text table with right-aligned columns (the first column left-aligned). */
export function table(header: readonly string[], rows: ReadonlyArray<readonly string[]>): string {
  const w = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (r: readonly string[]): string =>
    r.map((c, i) => (i === 0 ? c.padEnd(w[i] as number) : c.padStart(w[i] as number))).join(' | ');
  return [line(header), w.map((n) => '-'.repeat(n)).join('-|-'), ...rows.map(line)].join('\n');
}

/** First line of `cmd args` output, or undefined when it cannot run. */
export function versionOf(cmd: string, args: readonly string[] = ['--version']): string | undefined {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.status !== 0 && r.stdout === '') return undefined;
  return (r.stdout || r.stderr).split('\n')[0]?.trim();
}

/** One line describing the machine: CPU count, model, memory, kernel, Node. */
export function machineLine(): string {
  const cpus = os.cpus();
  const model = cpus[0]?.model.trim() ?? 'unknown CPU';
  return `machine: nproc ${cpus.length} (this process may use ${cpuCount()}), ${model}, ${Math.round(os.totalmem() / MiB)} MiB RAM, Linux ${os.release()}, node ${process.version}`;
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
