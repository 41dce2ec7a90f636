/**
 * Engine-only benchmark (no NBD): NVMe Reads and Writes issued straight from the host engine
 * (`Controller.read`/`write`) in a closed loop — QD concurrent async loops, each waiting for its
 * command before issuing the next — at QD 1 and 32, 4 KiB and 128 KiB, to random aligned LBAs in
 * a bounded region.
 *
 *   node dist/bench/engine-bench.js [--traddr A --trsvcid P --subnqn NQN] [--nsid 1] [--runtime S]
 *        [--ramp S] [--queues N] [--queue-size N] [--region MiB] [--jobs name,name] [--no-prefill]
 *        [--target-cpu N]
 *
 * Without --trsvcid it starts the embedded target in its own process, pinned to --target-cpu
 * (default 0), and points at it; with --traddr/--trsvcid/--subnqn it measures any NVMe/TCP target
 * (Linux nvmet, SPDK, …). WRITES DESTROY DATA in the first --region MiB of the namespace.
 * Pin this process yourself (scripts/bench.sh runs it under `taskset -c 1`).
 *
 * Printed per job: IOPS, MiB/s, p50/p99 latency (µs, from per-command timestamps), and CPU time of
 * this process per I/O (process.cpuUsage delta / I/Os) — steadier than IOPS on a shared machine.
 */
import { Controller } from '../src/controller/controller';
import { deriveTlsPsk, parseInterchangeKey } from '../src/tls/psk';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import {
  BENCH_HOSTID, BENCH_HOSTNQN, BENCH_SUBNQN, BENCH_TLS_KEY, MiB, fmt, machineLine, numArg, parseArgs, percentile, procCpuMicros, startTargetProc, table,
} from './common';
import type { Helper } from './common';

interface Job {
  readonly name: string;
  readonly op: 'read' | 'write';
  readonly bytes: number;
  readonly qd: number;
}

const JOBS: readonly Job[] = [];
for (const op of ['read', 'write'] as const) {
  for (const bytes of [4096, 128 * 1024]) {
    for (const qd of [1, 32]) (JOBS as Job[]).push({ name: `${bytes / 1024}k-rand${op}-qd${qd}`, op, bytes, qd });
  }
}

/** Latency samples in µs; grows by doubling so the hot loop allocates almost never. */
class Samples {
  private buf = new Float64Array(1 << 16);
  n = 0;
  add(us: number): void {
    if (this.n === this.buf.length) {
      const b = new Float64Array(this.buf.length * 2);
      b.set(this.buf);
      this.buf = b;
    }
    this.buf[this.n++] = us;
  }
  sorted(): Float64Array {
    return this.buf.subarray(0, this.n).sort();
  }
}

interface JobResult { iops: number; mibps: number; p50: number; p99: number; cpuUsPerIo: number; sysUsPerIo: number; targetCpuUsPerIo?: number }

/**
 * Run one job: `ramp` seconds unmeasured, then `runtime` seconds measured. Every loop owns one
 * write buffer (filled once) so the loop itself allocates nothing per command.
 */
async function runJob(ctrl: Controller, nsid: number, lbaSize: number, regionBlocks: number, job: Job, ramp: number, runtime: number, targetPid?: number): Promise<JobResult> {
  const nlb = job.bytes / lbaSize;
  const slots = Math.floor(regionBlocks / nlb);
  const samples = new Samples();
  let measuring = false;
  let stop = false;
  let ios = 0;
  const loop = async (): Promise<void> => {
    // One buffer per loop for both directions: reads land in it (`into`) as writes send from it,
    // so neither side pays a fresh allocation (page faults, zeroing by the kernel) per command.
    const data = job.op === 'write' ? randomBytes(job.bytes) : Buffer.alloc(job.bytes);
    while (!stop) {
      const slba = BigInt(Math.floor(Math.random() * slots) * nlb);
      const t0 = process.hrtime.bigint();
      if (job.op === 'read') await ctrl.read(nsid, slba, nlb, data);
      else await ctrl.write(nsid, slba, data);
      if (measuring && !stop) {
        samples.add(Number(process.hrtime.bigint() - t0) / 1000);
        ios++;
      }
    }
  };
  const loops: Promise<void>[] = [];
  for (let i = 0; i < job.qd; i++) loops.push(loop());
  await new Promise((r) => setTimeout(r, ramp * 1000));
  measuring = true;
  const cpu0 = process.cpuUsage();
  const tcpu0 = targetPid === undefined ? undefined : procCpuMicros(targetPid);
  const t0 = process.hrtime.bigint();
  await new Promise((r) => setTimeout(r, runtime * 1000));
  stop = true;
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpu = process.cpuUsage(cpu0);
  const tcpu1 = targetPid === undefined ? undefined : procCpuMicros(targetPid);
  await Promise.all(loops);
  const s = samples.sorted();
  const res: JobResult = {
    iops: ios / secs,
    mibps: (ios * job.bytes) / MiB / secs,
    p50: percentile(s, 50),
    p99: percentile(s, 99),
    cpuUsPerIo: ios > 0 ? (cpu.user + cpu.system) / ios : NaN,
    sysUsPerIo: ios > 0 ? cpu.system / ios : NaN,
  };
  if (tcpu0 !== undefined && tcpu1 !== undefined && ios > 0) res.targetCpuUsPerIo = (tcpu1 - tcpu0) / ios;
  return res;
}

/** Write the region once, sequentially in 128 KiB commands at QD 8, so reads hit written data. */
async function prefill(ctrl: Controller, nsid: number, lbaSize: number, regionBlocks: number): Promise<void> {
  const chunk = Math.min(128 * 1024, ctrl.maxTransfer);
  const nlb = chunk / lbaSize;
  const data = randomBytes(chunk);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next + nlb <= regionBlocks) {
      const slba = next;
      next += nlb;
      await ctrl.write(nsid, BigInt(slba), data);
    }
  };
  await Promise.all(Array.from({ length: 8 }, worker));
}

/** Issue 9's goal for a job's host CPU per I/O, printed beside it (never asserted). */
function goalOf(job: Job): string {
  if (job.bytes === 4096 && job.qd === 32) return 'host CPU ≤ 3 µs/IO';
  if (job.bytes === 128 * 1024 && job.op === 'read') return 'host CPU ≤ 30 µs/IO';
  return '';
}

/** This process's resident set now (VmRSS), MiB. */
function rssMiB(): string {
  return fmt(process.memoryUsage.rss() / MiB);
}

/** This process's CPU affinity (Cpus_allowed_list), to show whether it was pinned. */
function cpusAllowed(): string {
  try {
    return /^Cpus_allowed_list:\s*(\S+)/m.exec(readFileSync('/proc/self/status', 'utf8'))?.[1] ?? '?';
  } catch {
    return '?';
  }
}

async function main(): Promise<void> {
  const a = parseArgs(process.argv.slice(2),
    ['traddr', 'trsvcid', 'subnqn', 'nsid', 'runtime', 'ramp', 'queues', 'queue-size', 'region', 'jobs', 'target-cpu'], ['no-prefill', 'no-tls']);
  const runtime = numArg(a, 'runtime', Number(process.env['BENCH_RUNTIME'] ?? 5));
  const ramp = numArg(a, 'ramp', Number(process.env['BENCH_RAMP'] ?? 1));
  const nsid = numArg(a, 'nsid', 1);
  const names = a.get('jobs')?.split(',');
  const jobs = names === undefined ? JOBS : names.map((n) => {
    const j = JOBS.find((x) => x.name === n);
    if (j === undefined) throw new Error(`unknown job '${n}' (jobs: ${JOBS.map((x) => x.name).join(', ')})`);
    return j;
  });

  let target: (Helper<{ port: number; nqn: string }> & { pinned: boolean }) | undefined;
  let where: { traddr: string; trsvcid: number; subnqn: string };
  if (a.get('trsvcid') === undefined) {
    const cpu = numArg(a, 'target-cpu', 0);
    target = await startTargetProc({ cpu, sizeBytes: 1024 * MiB, tlsOptional: !a.has('no-tls') });
    where = { traddr: '127.0.0.1', trsvcid: target.ready.port, subnqn: target.ready.nqn };
    process.stdout.write(`${machineLine()}\ntarget: embedded (memory, 1 GiB) on CPU ${target.pinned ? cpu : '(unpinned)'}, 127.0.0.1:${where.trsvcid}\n`);
  } else {
    where = { traddr: a.get('traddr') ?? '127.0.0.1', trsvcid: numArg(a, 'trsvcid', 4420), subnqn: a.get('subnqn') ?? BENCH_SUBNQN };
    process.stdout.write(`${machineLine()}\ntarget: ${where.traddr}:${where.trsvcid} ${where.subnqn} nsid ${nsid}\n`);
  }
  const queues = a.get('queues');
  const queueSize = a.get('queue-size');
  let ctrl: Controller | undefined;
  try {
    ctrl = await Controller.connect({
      ...where, hostnqn: BENCH_HOSTNQN, hostid: BENCH_HOSTID,
      ...(queues !== undefined ? { nrIoQueues: Number(queues) } : {}),
      ...(queueSize !== undefined ? { queueSize: Number(queueSize) } : {}),
    });
    const ns = ctrl.namespaces.get(nsid);
    if (ns === undefined || !ns.usable) throw new Error(`namespace ${nsid} is ${ns === undefined ? 'not active' : `not usable: ${ns.reasonIfNot}`}`);
    const regionBytes = Math.min(numArg(a, 'region', 256) * MiB, Number(ns.nsze) * ns.lbaSize);
    const regionBlocks = Math.floor(regionBytes / ns.lbaSize);
    process.stdout.write(`engine: ${ctrl.ioQueueCount} I/O queue(s), MDTS ${ctrl.maxTransfer / 1024} KiB, LBA ${ns.lbaSize} B, ` +
      `region ${regionBytes / MiB} MiB, ${runtime} s per job after ${ramp} s ramp, this process on CPU(s) ${cpusAllowed()}\n\n`);
    if (!a.has('no-prefill')) await prefill(ctrl, nsid, ns.lbaSize, regionBlocks);

    const rows: string[][] = [];
    for (const job of jobs) {
      if (job.bytes > ctrl.maxTransfer) process.stderr.write(`engine-bench: ${job.name}: ${job.bytes} B > MDTS, split into several commands\n`);
      const r = await runJob(ctrl, nsid, ns.lbaSize, regionBlocks, job, ramp, runtime, target?.child.pid);
      rows.push([job.name, fmt(r.iops, 0), fmt(r.mibps), fmt(r.p50, 0), fmt(r.p99, 0), fmt(r.cpuUsPerIo), fmt(r.sysUsPerIo), fmt(r.targetCpuUsPerIo), rssMiB(), goalOf(job)]);
      process.stderr.write(`engine-bench: ${job.name} done\n`);
    }
    // TLS rows (embedded target only: it serves TLS as optional): the same jobs over NVMe/TCP TLS
    // 1.3 (TLS_AES_128_GCM_SHA256, PSK) on a second association, beside the plain rows.
    if (target !== undefined && !a.has('no-tls')) {
      const tlsJobs = jobs.filter((j) => j.qd === 32 || j.bytes === 128 * 1024);
      await ctrl.close();
      ctrl = await Controller.connect({
        ...where, hostnqn: BENCH_HOSTNQN, hostid: BENCH_HOSTID,
        tls: deriveTlsPsk(parseInterchangeKey(BENCH_TLS_KEY), BENCH_HOSTNQN, where.subnqn, 0),
        ...(queues !== undefined ? { nrIoQueues: Number(queues) } : {}),
        ...(queueSize !== undefined ? { queueSize: Number(queueSize) } : {}),
      });
      for (const job of tlsJobs) {
        const r = await runJob(ctrl, nsid, ns.lbaSize, regionBlocks, job, ramp, runtime, target.child.pid);
        rows.push([`tls ${job.name}`, fmt(r.iops, 0), fmt(r.mibps), fmt(r.p50, 0), fmt(r.p99, 0), fmt(r.cpuUsPerIo), fmt(r.sysUsPerIo), fmt(r.targetCpuUsPerIo), rssMiB(), '']);
        process.stderr.write(`engine-bench: tls ${job.name} done\n`);
      }
    }
    process.stdout.write(`${table(['job', 'IOPS', 'MiB/s', 'p50 µs', 'p99 µs', 'host CPU µs/IO', 'of it sys', 'target CPU µs/IO', 'RSS MiB', 'goal (issue 9)'], rows)}\n`);
    process.stdout.write(`engine peak RSS (VmHWM, this process): ${fmt(process.resourceUsage().maxRSS / 1024)} MiB; RSS MiB = VmRSS after each job\n`);
  } finally {
    await ctrl?.close().catch(() => undefined);
    await target?.stop();
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`engine-bench: ${err instanceof Error ? err.stack ?? err.message : String(err)}\n`);
  process.exit(1);
});
