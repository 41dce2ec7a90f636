/**
 * NBD-path benchmark: fio's nbd engine, job by job, against three paths side by side in one run
 * (each job runs on all three before the next job, so drift on a shared machine hits all alike):
 *   (a) nbdkit   — fio → `nbdkit memory`, both on `--cpu`: the NBD-only baseline;
 *   (b) relay    — fio → bench/relay-proc.ts (a Node byte relay, on `--cpu`) → `nbdkit memory`
 *                  on `--target-cpu`: the cheapest possible Node process in the middle, the
 *                  ceiling for any Node bridge in this topology;
 *   (c) bridge   — fio → the bridge (ControllerSession in its own process, on `--cpu`) → the
 *                  embedded NVMe/TCP target on `--target-cpu`.
 * Then the bridge's peak RSS, and a separate bridge over a 4-namespace target with 4 fio jobs
 * (one per export) at QD128 (`4ns-128k-randread-qd128`), for its peak RSS under load.
 *
 *   node dist/bench/nbd-bench.js [--runtime S] [--ramp S] [--size MiB] [--cpu N] [--target-cpu N]
 *        [--queues N] [--jobs name,name] [--profile] [--profile-job NAME] [--no-pin] [--target-flush-every N]
 *
 * CPU µs/IO is the CPU time of the middle process (relay, bridge; nbdkit for (a)) per I/O, from
 * /proc/PID/stat.
 * `--profile` CPU-profiles the bridge (V8 profiler via node:inspector) during one job only
 * (default 4K QD32 random read; not the connect or prefill) and prints the functions with the
 * most self time. Goals (issue 9) are printed beside the values; nothing is asserted.
 *
 * Exit status: 0 done, 1 a failure, 2 a prerequisite (fio with the nbd engine, nbdkit) missing.
 */
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  BENCH_DIST_DIR, BENCH_SUBNQN, EXIT_MISSING_PREREQ, MiB, fmt, haveCommand, machineLine, numArg, parseArgs, pinned,
  procCpuTimes, procMemory, sleep, spawnHelper, startTargetProc, table, versionOf,
  BenchUsageError,
  runMain,
} from './common';
import type { Helper } from './common';
import { summariseProfile } from './profile-summary';

/** One fio workload. */
interface Job {
  readonly name: string;
  readonly rw: 'randread' | 'randwrite' | 'read' | 'write';
  readonly bs: string;
  readonly iodepth: number;
  /** fio jobs (each its own NBD connection: exercises multi-conn). */
  readonly numjobs: number;
}

const JOBS: readonly Job[] = [
  { name: '4k-randread-qd1', rw: 'randread', bs: '4k', iodepth: 1, numjobs: 1 },
  { name: '4k-randread-qd32', rw: 'randread', bs: '4k', iodepth: 32, numjobs: 1 },
  { name: '4k-randwrite-qd1', rw: 'randwrite', bs: '4k', iodepth: 1, numjobs: 1 },
  { name: '4k-randwrite-qd32', rw: 'randwrite', bs: '4k', iodepth: 32, numjobs: 1 },
  { name: '1m-seqread-qd8', rw: 'read', bs: '1m', iodepth: 8, numjobs: 1 },
  { name: '4k-randread-4conn-qd8', rw: 'randread', bs: '4k', iodepth: 8, numjobs: 4 },
];
/** The multi-namespace job: one fio job per export of a 4-namespace target, bridge only. */
const NS4_JOB: Job = { name: '4ns-128k-randread-qd128', rw: 'randread', bs: '128k', iodepth: 128, numjobs: 1 };
const NS4 = 4;
/** Region per namespace of the 4-namespace job (MiB; each prefilled). */
const NS4_SIZE_MIB = 64;

/** Issue 9's goals, printed beside the measured values (never asserted). */
const GOAL = {
  qd32: 'bridge CPU ≤ 1.5× relay, IOPS ≥ 0.8× relay',
  seq: 'bridge MiB/s ≥ 0.8× nbdkit',
  rss: 'bridge VmHWM ≤ 120 MiB',
  rss4: 'bridge VmHWM ≤ 150 MiB',
} as const;

/** What fio reports for one job (summed over its `numjobs` with group_reporting). */
interface FioResult {
  iops: number;
  mibps: number;
  p99us: number;
  /** CPU time the server process used per I/O during the job (µs), when measurable. */
  serverCpuUsPerIo?: number;
  /** Of it, system (kernel) time per I/O (µs): syscalls, and the loopback TCP work they do. */
  serverSysUsPerIo?: number;
  /** Server CPU time / wall time during the job (%): near 100 means the server is the bottleneck. */
  serverBusyPct?: number;
}

interface FioJsonSide { iops: number; bw_bytes: number; clat_ns?: { percentile?: Record<string, number> } }
interface FioJson { jobs: Array<{ error: number; read: FioJsonSide; write: FioJsonSide }> }

/** Options of one run, from the command line and BENCH_* variables. */
interface Opts {
  runtime: number;
  ramp: number;
  sizeMiB: number;
  cpu: number | undefined;
  targetCpu: number | undefined;
  queues: number | undefined;
  jobs: readonly Job[];
  profile: boolean;
  profileJob: string;
  ns4: boolean;
  /** The embedded target's `flushEvery` (its default when undefined). */
  targetFlushEvery: number | undefined;
}

function options(): Opts {
  const a = parseArgs(process.argv.slice(2), ['runtime', 'ramp', 'size', 'cpu', 'target-cpu', 'queues', 'jobs', 'profile-job', 'target-flush-every'], ['profile', 'no-pin']);
  const noPin = a.has('no-pin');
  const names = a.get('jobs')?.split(',');
  const jobs = names === undefined ? JOBS : names.filter((n) => n !== NS4_JOB.name).map((n) => {
    const j = JOBS.find((x) => x.name === n);
    if (j === undefined) throw new BenchUsageError(`unknown job '${n}' (jobs: ${[...JOBS, NS4_JOB].map((x) => x.name).join(', ')})`);
    return j;
  });
  const queues = a.get('queues');
  return {
    runtime: numArg(a, 'runtime', Number(process.env['BENCH_RUNTIME'] ?? 5)),
    ramp: numArg(a, 'ramp', Number(process.env['BENCH_RAMP'] ?? 1)),
    sizeMiB: numArg(a, 'size', 256),
    cpu: noPin ? undefined : numArg(a, 'cpu', 1),
    targetCpu: noPin ? undefined : numArg(a, 'target-cpu', 0),
    queues: queues === undefined ? undefined : Number(queues),
    jobs,
    profile: a.has('profile'),
    profileJob: a.get('profile-job') ?? '4k-randread-qd32',
    ns4: names === undefined || names.includes(NS4_JOB.name),
    targetFlushEvery: a.has('target-flush-every') ? numArg(a, 'target-flush-every', 8) : undefined,
  };
}

/** A free TCP port on 127.0.0.1 (for nbdkit, which cannot report a port it picked). */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen({ host: '127.0.0.1', port: 0 }, () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

/**
 * Resolve once nbdkit has written its pidfile (`-P`), which it does only when it is ready to
 * accept connections — no probe connection, so nbdkit logs no "connection reset" error.
 */
async function waitPidfile(file: string, child: import('node:child_process').ChildProcess, timeoutMs: number): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!fs.existsSync(file)) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`nbdkit exited (${child.exitCode ?? child.signalCode}) before it was ready`);
    if (Date.now() > until) throw new Error(`nbdkit not ready after ${timeoutMs} ms`);
    await sleep(50);
  }
}

/** Run a command to completion, capturing output (bounded). */
function run(argv: readonly string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const [cmd, ...rest] = argv as [string, ...string[]];
    const c = spawn(cmd, rest, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    c.stdout.setEncoding('utf8').on('data', (s: string) => { stdout += s; });
    c.stderr.setEncoding('utf8').on('data', (s: string) => { stderr = (stderr + s).slice(-16_384); });
    c.once('error', reject);
    c.once('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/**
 * fio's command line for a job (or the prefill) against one NBD URI, or several: then one fio job
 * per URI (global options first, then `--name/--uri` per job; reported as one group).
 */
function fioArgv(o: Opts, uri: string | readonly string[], job: Job | 'prefill', sizeMiB = o.sizeMiB): string[] {
  const uris = typeof uri === 'string' ? [uri] : uri;
  const common = ['fio', '--ioengine=nbd', `--size=${sizeMiB}M`, '--output-format=json', '--group_reporting'];
  const perJob = (name: string): string[] => uris.flatMap((u, i) => [`--name=${uris.length > 1 ? `${name}-${i}` : name}`, `--uri=${u}`]);
  if (job === 'prefill') return [...common, '--rw=write', '--bs=1m', '--iodepth=8', ...perJob('prefill')];
  return [
    ...common, `--rw=${job.rw}`, `--bs=${job.bs}`, `--iodepth=${job.iodepth}`, `--numjobs=${job.numjobs}`,
    '--time_based', `--runtime=${o.runtime}`, `--ramp_time=${o.ramp}`, '--norandommap', '--randrepeat=0', ...perJob(job.name),
  ];
}

/** Run one fio job pinned to `o.cpu`; `serverPid` is charged CPU time per I/O. */
async function fio(o: Opts, uri: string | readonly string[], job: Job | 'prefill', serverPid?: number, sizeMiB?: number): Promise<FioResult> {
  const cpu0 = serverPid === undefined ? undefined : procCpuTimes(serverPid);
  const t0 = process.hrtime.bigint();
  const r = await run(pinned(o.cpu, fioArgv(o, uri, job, sizeMiB)).argv);
  const cpu1 = serverPid === undefined ? undefined : procCpuTimes(serverPid);
  const wallUs = Number(process.hrtime.bigint() - t0) / 1000;
  const brace = r.stdout.indexOf('{');
  if (r.code !== 0 || brace < 0) throw new Error(`fio ${job === 'prefill' ? job : job.name} on ${String(uri)} failed (${r.code}): ${r.stderr.trim() || r.stdout.slice(0, 2000)}`);
  const out = JSON.parse(r.stdout.slice(brace)) as FioJson;
  const j = out.jobs[0];
  if (j === undefined || j.error !== 0) throw new Error(`fio ${job === 'prefill' ? job : job.name}: job error ${j?.error}`);
  const side = job !== 'prefill' && (job.rw === 'randread' || job.rw === 'read') ? j.read : j.write;
  const ios = side.iops * (o.runtime + o.ramp);
  const res: FioResult = { iops: side.iops, mibps: side.bw_bytes / MiB, p99us: (side.clat_ns?.percentile?.['99.000000'] ?? NaN) / 1000 };
  // CPU is sampled over the whole fio run (ramp included), so divide by the I/Os of that span.
  if (cpu0 !== undefined && cpu1 !== undefined && ios > 0) {
    const used = cpu1.user + cpu1.sys - cpu0.user - cpu0.sys;
    res.serverCpuUsPerIo = used / ios;
    res.serverSysUsPerIo = (cpu1.sys - cpu0.sys) / ios;
    res.serverBusyPct = (100 * used) / wallUs;
  }
  return res;
}

/** Check fio (with its nbd engine) and nbdkit; print what is missing and exit 2. */
function checkPrereqs(): void {
  const missing: string[] = [];
  if (!haveCommand('fio')) missing.push('fio (Debian package fio)');
  else if (!/^\s*nbd$/m.test(spawnSync('fio', ['--enghelp'], { encoding: 'utf8' }).stdout ?? '')) {
    missing.push('fio built with the nbd ioengine (Debian\'s fio has it)');
  }
  if (!haveCommand('nbdkit')) missing.push('nbdkit (Debian package nbdkit)');
  if (missing.length > 0) {
    process.stderr.write(`nbd-bench: missing prerequisites: ${missing.join('; ')}\n  install them (sudo bash scripts/setup.sh) and rerun\n`);
    process.exit(EXIT_MISSING_PREREQ);
  }
}

/** Start `nbdkit memory 1G` on 127.0.0.1 pinned to `cpu`; resolves when it is ready. */
async function startNbdkit(cpu: number | undefined, workDir: string, tag: string): Promise<{ uri: string; port: number; pid: number; kill(): void }> {
  const port = await freePort();
  const pidfile = path.join(workDir, `nbdkit-${tag}.pid`);
  const argv = pinned(cpu, ['nbdkit', '-f', '--exit-with-parent', '-P', pidfile, '-i', '127.0.0.1', '-p', String(port), 'memory', '1G']).argv;
  const kit = spawn(argv[0] as string, argv.slice(1), { stdio: ['ignore', 'ignore', 'inherit'] });
  const kill = (): void => { if (kit.exitCode === null && kit.signalCode === null) kit.kill('SIGKILL'); };
  process.on('exit', kill);
  await waitPidfile(pidfile, kit, 10_000);
  return { uri: `nbd://127.0.0.1:${port}/`, port, pid: kit.pid as number, kill };
}

/** One path under test: its NBD URI(s) and the process whose CPU is charged. */
interface Path { readonly name: string; readonly uri: string; readonly pid: number }

/** A result cell: a measured value and, where the issue sets one, its goal. */
function ratio(a: number | undefined, b: number | undefined, digits = 2): string {
  return a === undefined || b === undefined || !(b > 0) ? '-' : fmt(a / b, digits);
}

async function main(): Promise<void> {
  const o = options();
  checkPrereqs();
  const pin = pinned(o.cpu, ['true']).pinned;
  process.stdout.write(`${machineLine()}\n`);
  process.stdout.write(`versions: ${versionOf('nbdkit') ?? 'nbdkit ?'}, ${versionOf('fio') ?? 'fio ?'}, node ${process.version}\n`);
  process.stdout.write(`setup: fio + middle process (relay, bridge) and the direct nbdkit on CPU ${pin ? o.cpu : '(unpinned)'}; ` +
    `embedded target (answers flushed every ${o.targetFlushEvery ?? 8} PDUs${o.targetFlushEvery === 0 ? ': once per iteration' : ''}) and the relay's nbdkit on CPU ${pin ? o.targetCpu : '(unpinned)'}; ` +
    `${o.runtime} s per job after ${o.ramp} s ramp, ${o.sizeMiB} MiB region, prefilled by sequential 1 MiB writes\n`);

  const helpers: Array<Helper<unknown>> = [];
  const kills: Array<() => void> = [];
  const workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'nvmf-nbd-bench-'));
  const profDir = o.profile ? fs.mkdtempSync(path.join(os.tmpdir(), 'nvmf-nbd-prof-')) : undefined;
  const startBridge = async (port: number, extra: readonly string[] = []): Promise<Helper<{ port: number; exports: string[]; ioQueues: number }>> => {
    const h = await spawnHelper<{ port: number; exports: string[]; ioQueues: number }>(pinned(o.cpu, [process.execPath, path.join(BENCH_DIST_DIR, 'bridge-proc.js'),
      '--trsvcid', String(port), '--subnqn', BENCH_SUBNQN, ...(o.queues !== undefined ? ['--queues', String(o.queues)] : []), ...extra]).argv);
    helpers.push(h as Helper<unknown>);
    return h;
  };
  const startRelay = async (toPort: number): Promise<Path> => {
    const h = await spawnHelper<{ port: number }>(pinned(o.cpu, [process.execPath, path.join(BENCH_DIST_DIR, 'relay-proc.js'),
      '--to-port', String(toPort)]).argv);
    helpers.push(h as Helper<unknown>);
    return { name: 'relay', uri: `nbd://127.0.0.1:${h.ready.port}/`, pid: h.child.pid as number };
  };
  try {
    // (a) nbdkit direct, on fio's CPU
    const kit = await startNbdkit(o.cpu, workDir, 'direct');
    kills.push(kit.kill);
    // (b) the relay (fio's CPU) in front of an nbdkit on the target's CPU
    const kitT = await startNbdkit(o.targetCpu, workDir, 'relayed');
    kills.push(kitT.kill);
    const relay = await startRelay(kitT.port);

    // (c) the bridge over the embedded target
    const target = await startTargetProc({ cpu: o.targetCpu, sizeBytes: 1024 * MiB, ...(o.targetFlushEvery !== undefined ? { flushEvery: o.targetFlushEvery } : {}) });
    helpers.push(target as Helper<unknown>);
    const profFile = profDir === undefined ? undefined : path.join(profDir, `bridge-${o.profileJob}.cpuprofile`);
    const bridge = await startBridge(target.ready.port, profFile !== undefined ? ['--cpu-profile', profFile] : []);
    const bridgeUri = `nbd://127.0.0.1:${bridge.ready.port}/${bridge.ready.exports[0] ?? 'nvme0n1'}`;
    const bridgePid = bridge.child.pid as number;
    process.stdout.write(`bridge: ${bridge.ready.ioQueues} I/O queue(s) to the target, export ${bridge.ready.exports[0]}\n\n`);

    await fio(o, kit.uri, 'prefill');
    await fio(o, relay.uri, 'prefill');
    await fio(o, bridgeUri, 'prefill');

    if (profFile !== undefined) {
      const job = JOBS.find((j) => j.name === o.profileJob);
      if (job === undefined) throw new Error(`unknown --profile-job ${o.profileJob}`);
      // The profiler runs only during this job (SIGUSR2 on, shutdown off): not the prefill.
      bridge.child.kill('SIGUSR2');
      await sleep(200);
      const r = await fio(o, bridgeUri, job, bridgePid);
      process.stdout.write(`profiled ${job.name}: bridge ${fmt(r.iops, 0)} IOPS (profiler on), ${fmt(r.serverCpuUsPerIo)} µs CPU/IO, busy ${fmt(r.serverBusyPct, 0)} %\n`);
      await bridge.stop(15_000);
      if (!fs.existsSync(profFile)) throw new Error(`no profile written to ${profFile}: ${bridge.stderr()}`);
      process.stdout.write(`\n${summariseProfile(profFile, 10)}\nfull profile: ${profFile} (open in Chrome DevTools → Performance)\n`);
      return;
    }

    const paths: Path[] = [{ name: 'nbdkit', uri: kit.uri, pid: kit.pid }, relay, { name: 'bridge', uri: bridgeUri, pid: bridgePid }];
    const rows: string[][] = [];
    for (const job of o.jobs) {
      const res = new Map<string, FioResult>();
      for (const p of paths) res.set(p.name, await fio(o, p.uri, job, p.pid));
      const direct = res.get('nbdkit');
      const viaRelay = res.get('relay');
      for (const p of paths) {
        const r = res.get(p.name) as FioResult;
        const vsRelay = p.name === 'bridge' ? viaRelay : undefined;
        const goal = p.name !== 'bridge' ? ''
          : job.iodepth === 32 && job.bs === '4k' ? GOAL.qd32 : job.rw === 'read' && job.bs === '1m' ? GOAL.seq : '';
        rows.push([
          p === paths[0] ? job.name : '', p.name,
          fmt(r.iops, 0), fmt(r.mibps), fmt(r.p99us, 0), fmt(r.serverCpuUsPerIo), fmt(r.serverSysUsPerIo), fmt(r.serverBusyPct, 0),
          ratio(r.iops, vsRelay?.iops), ratio(r.serverCpuUsPerIo, vsRelay?.serverCpuUsPerIo),
          p.name === 'nbdkit' ? '' : ratio(r.mibps, direct?.mibps),
          goal,
        ]);
      }
      process.stderr.write(`nbd-bench: ${job.name} done\n`);
    }
    const mem = procMemory(bridgePid);
    let ns4Line = '';
    if (o.ns4) {
      // A fresh bridge over a 4-namespace target: its VmHWM is this workload's alone.
      const t4 = await startTargetProc({ cpu: o.targetCpu, sizeBytes: 1024 * MiB, namespaces: NS4, ...(o.targetFlushEvery !== undefined ? { flushEvery: o.targetFlushEvery } : {}) });
      helpers.push(t4 as Helper<unknown>);
      const b4 = await startBridge(t4.ready.port);
      const uris = b4.ready.exports.map((e) => `nbd://127.0.0.1:${b4.ready.port}/${e}`);
      if (uris.length !== NS4) throw new Error(`4-namespace bridge exports ${uris.length} namespaces`);
      await fio(o, uris, 'prefill', undefined, NS4_SIZE_MIB);
      const r = await fio(o, uris, NS4_JOB, b4.child.pid as number, NS4_SIZE_MIB);
      const m4 = procMemory(b4.child.pid as number);
      rows.push([NS4_JOB.name, 'bridge', fmt(r.iops, 0), fmt(r.mibps), fmt(r.p99us, 0), fmt(r.serverCpuUsPerIo), fmt(r.serverSysUsPerIo), fmt(r.serverBusyPct, 0), '-', '-', '-',
        `VmHWM ${m4 === undefined ? '?' : fmt(m4.hwmKiB / 1024)} MiB (goal ≤ 150)`]);
      ns4Line = `4-namespace bridge (${NS4} exports × QD${NS4_JOB.iodepth}, ${NS4_JOB.bs} random reads, ${NS4_SIZE_MIB} MiB each) peak RSS (VmHWM): ${m4 === undefined ? '?' : `${fmt(m4.hwmKiB / 1024)} MiB`} — goal: ${GOAL.rss4}\n`;
      process.stderr.write(`nbd-bench: ${NS4_JOB.name} done\n`);
    }
    process.stdout.write(`${table(['job', 'path', 'IOPS', 'MiB/s', 'p99 µs', 'CPU µs/IO', 'of it sys', 'busy %', 'IOPS /relay', 'CPU /relay', 'MiB/s /nbdkit', 'goal (issue 9)'], rows)}\n`);
    process.stdout.write(`bridge peak RSS (VmHWM): ${mem === undefined ? '?' : `${fmt(mem.hwmKiB / 1024)} MiB`}, RSS now ${mem === undefined ? '?' : `${fmt(mem.rssKiB / 1024)} MiB`} — goal: ${GOAL.rss}\n`);
    process.stdout.write(ns4Line);
    process.stdout.write('nbdkit = fio → nbdkit memory (same CPU); relay = fio → Node byte relay → nbdkit on the target CPU; bridge = fio → nvmf-nbd → embedded NVMe/TCP target on the target CPU.\n' +
      'CPU µs/IO = CPU time of the middle process per I/O (nbdkit for the direct path; targets not included), of it sys = its kernel part; busy % = that CPU time / job wall time; /relay and /nbdkit = ratios to those rows of the same job.\n');
  } finally {
    for (const k of kills) k();
    for (const h of helpers.reverse()) await h.stop();
    fs.rmSync(workDir, { recursive: true, force: true });
  }
}

runMain('nbd-bench', main);
