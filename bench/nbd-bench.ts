/**
 * NBD-path benchmark: fio's nbd engine against (a) `nbdkit memory` — the NBD-only baseline — and
 * (b) the bridge (ControllerSession in its own process) over the embedded NVMe/TCP target, side
 * by side in one run, job by job (a then b), so drift on a shared machine hits both alike.
 *
 *   node dist/bench/nbd-bench.js [--runtime S] [--ramp S] [--size MiB] [--cpu N] [--target-cpu N]
 *        [--queues N] [--jobs name,name] [--profile] [--profile-job NAME] [--no-pin]
 *
 * CPU budget: fio, nbdkit and the bridge all run on `--cpu` (default 1) via `taskset -c`, so the
 * baseline's client+server and the bridge's client+server have the same single core; the embedded
 * target runs on `--target-cpu` (default 0) so its cost is not charged to the bridge.
 * `--profile` CPU-profiles the bridge (V8 profiler via node:inspector) during one job only
 * (default 4K QD32 random read; not the connect or prefill) and prints the functions with the
 * most self time.
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
  procCpuMicros, procMemory, sleep, spawnHelper, startTargetProc, table, versionOf,
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

/** What fio reports for one job (summed over its `numjobs` with group_reporting). */
interface FioResult {
  iops: number;
  mibps: number;
  p99us: number;
  /** CPU time the server process used per I/O during the job (µs), when measurable. */
  serverCpuUsPerIo?: number;
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
}

function options(): Opts {
  const a = parseArgs(process.argv.slice(2), ['runtime', 'ramp', 'size', 'cpu', 'target-cpu', 'queues', 'jobs', 'profile-job'], ['profile', 'no-pin']);
  const noPin = a.has('no-pin');
  const names = a.get('jobs')?.split(',');
  const jobs = names === undefined ? JOBS : names.map((n) => {
    const j = JOBS.find((x) => x.name === n);
    if (j === undefined) throw new Error(`unknown job '${n}' (jobs: ${JOBS.map((x) => x.name).join(', ')})`);
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

/** fio's command line for a job (or the prefill) against an NBD URI. */
function fioArgv(o: Opts, uri: string, job: Job | 'prefill'): string[] {
  const common = ['fio', '--ioengine=nbd', `--uri=${uri}`, `--size=${o.sizeMiB}M`, '--output-format=json', '--group_reporting'];
  if (job === 'prefill') return [...common, '--name=prefill', '--rw=write', '--bs=1m', '--iodepth=8'];
  return [
    ...common, `--name=${job.name}`, `--rw=${job.rw}`, `--bs=${job.bs}`, `--iodepth=${job.iodepth}`, `--numjobs=${job.numjobs}`,
    '--time_based', `--runtime=${o.runtime}`, `--ramp_time=${o.ramp}`, '--norandommap', '--randrepeat=0',
  ];
}

/** Run one fio job pinned to `o.cpu`; `serverPid` is charged CPU time per I/O. */
async function fio(o: Opts, uri: string, job: Job | 'prefill', serverPid?: number): Promise<FioResult> {
  const cpu0 = serverPid === undefined ? undefined : procCpuMicros(serverPid);
  const t0 = process.hrtime.bigint();
  const r = await run(pinned(o.cpu, fioArgv(o, uri, job)).argv);
  const cpu1 = serverPid === undefined ? undefined : procCpuMicros(serverPid);
  const wallUs = Number(process.hrtime.bigint() - t0) / 1000;
  const brace = r.stdout.indexOf('{');
  if (r.code !== 0 || brace < 0) throw new Error(`fio ${job === 'prefill' ? job : job.name} on ${uri} failed (${r.code}): ${r.stderr.trim() || r.stdout.slice(0, 2000)}`);
  const out = JSON.parse(r.stdout.slice(brace)) as FioJson;
  const j = out.jobs[0];
  if (j === undefined || j.error !== 0) throw new Error(`fio ${job === 'prefill' ? job : job.name}: job error ${j?.error}`);
  const side = job !== 'prefill' && (job.rw === 'randread' || job.rw === 'read') ? j.read : j.write;
  const ios = side.iops * (o.runtime + o.ramp);
  const res: FioResult = { iops: side.iops, mibps: side.bw_bytes / MiB, p99us: (side.clat_ns?.percentile?.['99.000000'] ?? NaN) / 1000 };
  // CPU is sampled over the whole fio run (ramp included), so divide by the I/Os of that span.
  if (cpu0 !== undefined && cpu1 !== undefined && ios > 0) {
    res.serverCpuUsPerIo = (cpu1 - cpu0) / ios;
    res.serverBusyPct = (100 * (cpu1 - cpu0)) / wallUs;
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

async function main(): Promise<void> {
  const o = options();
  checkPrereqs();
  const pin = pinned(o.cpu, ['true']).pinned;
  process.stdout.write(`${machineLine()}\n`);
  process.stdout.write(`versions: ${versionOf('nbdkit') ?? 'nbdkit ?'}, ${versionOf('fio') ?? 'fio ?'}, node ${process.version}\n`);
  process.stdout.write(`setup: fio + server on CPU ${pin ? o.cpu : '(unpinned)'}, embedded target on CPU ${pin ? o.targetCpu : '(unpinned)'}; ` +
    `${o.runtime} s per job after ${o.ramp} s ramp, ${o.sizeMiB} MiB region, prefilled by sequential 1 MiB writes\n`);

  const helpers: Array<Helper<unknown>> = [];
  let killKit = (): void => undefined;
  const workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'nvmf-nbd-bench-'));
  const profDir = o.profile ? fs.mkdtempSync(path.join(os.tmpdir(), 'nvmf-nbd-prof-')) : undefined;
  try {
    // (a) the NBD-only baseline
    const kitPort = await freePort();
    const pidfile = path.join(workDir, 'nbdkit.pid');
    const kitArgv = pinned(o.cpu, ['nbdkit', '-f', '--exit-with-parent', '-P', pidfile, '-i', '127.0.0.1', '-p', String(kitPort), 'memory', '1G']).argv;
    const kit = spawn(kitArgv[0] as string, kitArgv.slice(1), { stdio: ['ignore', 'ignore', 'inherit'] });
    killKit = (): void => { if (kit.exitCode === null && kit.signalCode === null) kit.kill('SIGKILL'); };
    process.on('exit', killKit);
    await waitPidfile(pidfile, kit, 10_000);
    const kitUri = `nbd://127.0.0.1:${kitPort}/`;

    // (b) the bridge over the embedded target
    const target = await startTargetProc({ cpu: o.targetCpu, sizeBytes: 1024 * MiB });
    helpers.push(target as Helper<unknown>);
    const profFile = profDir === undefined ? undefined : path.join(profDir, `bridge-${o.profileJob}.cpuprofile`);
    const bridgeArgv = pinned(o.cpu, [process.execPath, path.join(BENCH_DIST_DIR, 'bridge-proc.js'),
      ...(profFile !== undefined ? ['--cpu-profile', profFile] : []),
      '--trsvcid', String(target.ready.port), '--subnqn', BENCH_SUBNQN, ...(o.queues !== undefined ? ['--queues', String(o.queues)] : [])]).argv;
    const bridge = await spawnHelper<{ port: number; exports: string[]; ioQueues: number }>(bridgeArgv);
    helpers.push(bridge as Helper<unknown>);
    const bridgeUri = `nbd://127.0.0.1:${bridge.ready.port}/${bridge.ready.exports[0] ?? 'nvme0n1'}`;
    const bridgePid = bridge.child.pid as number;
    process.stdout.write(`bridge: ${bridge.ready.ioQueues} I/O queue(s) to the target, export ${bridge.ready.exports[0]}\n\n`);

    await fio(o, kitUri, 'prefill');
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

    const rows: string[][] = [];
    for (const job of o.jobs) {
      const a = await fio(o, kitUri, job, kit.pid);
      const b = await fio(o, bridgeUri, job, bridgePid);
      rows.push([
        job.name,
        fmt(a.iops, 0), fmt(b.iops, 0), `${fmt(b.iops / a.iops, 2)}`,
        fmt(a.mibps), fmt(b.mibps),
        fmt(a.p99us, 0), fmt(b.p99us, 0),
        fmt(a.serverCpuUsPerIo), fmt(b.serverCpuUsPerIo), fmt(b.serverBusyPct, 0),
      ]);
      process.stderr.write(`nbd-bench: ${job.name} done\n`);
    }
    const mem = procMemory(bridgePid);
    process.stdout.write(`${table(['job', 'base IOPS', 'bridge IOPS', 'b/a', 'base MiB/s', 'bridge MiB/s', 'base p99 µs', 'bridge p99 µs', 'base CPU µs/IO', 'bridge CPU µs/IO', 'bridge busy %'], rows)}\n`);
    process.stdout.write(`bridge peak RSS (VmHWM): ${mem === undefined ? '?' : `${fmt(mem.hwmKiB / 1024)} MiB`}, RSS now ${mem === undefined ? '?' : `${fmt(mem.rssKiB / 1024)} MiB`}\n`);
    process.stdout.write('base = nbdkit memory; bridge = nvmf-nbd NBD server + NVMe/TCP host → embedded target; CPU µs/IO = server process CPU time per I/O (nbdkit vs bridge; target not included); busy % = bridge CPU time / job wall time\n');
  } finally {
    killKit();
    for (const h of helpers.reverse()) await h.stop();
    fs.rmSync(workDir, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`nbd-bench: ${err instanceof Error ? err.stack ?? err.message : String(err)}\n`);
  process.exit(1);
});
