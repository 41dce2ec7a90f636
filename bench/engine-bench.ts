/**
 * Engine-only benchmark (no NBD): NVMe Reads and Writes issued straight from the host engine
 * (`Controller.read`/`write`) in a closed loop — QD concurrent async loops, each waiting for its
 * command before issuing the next — at QD 1 and 32, 4 KiB and 128 KiB, to random aligned LBAs in
 * a bounded region.
 *
 *   node dist/bench/engine-bench.js [--traddr A --trsvcid P --subnqn NQN] [--nsid 1] [--runtime S]
 *        [--ramp S] [--queues N] [--queue-size N] [--region MiB] [--jobs name,name] [--no-prefill]
 *        [--target-cpu N] [--no-tls] [--slice S] [--api record|promise] [--target-flush-every N]
 *
 * Without --trsvcid it starts the embedded target in its own process, pinned to --target-cpu
 * (default 0), and points at it; with --traddr/--trsvcid/--subnqn it measures any NVMe/TCP target
 * (Linux nvmet, SPDK, …). WRITES DESTROY DATA in the first --region MiB of the namespace.
 * Pin this process yourself (scripts/bench.sh runs it under `taskset -c 1`).
 *
 * Printed per job: IOPS, MiB/s, p50/p99 latency (µs, from per-command timestamps), and CPU time of
 * this process per I/O (process.cpuUsage delta / I/Os) — steadier than IOPS on a shared machine.
 *
 * With the embedded target (which serves TLS as optional) the QD32 and 128 KiB jobs also run over
 * TLS on a second association, interleaved with their plain run in --slice S (default 0.5)
 * second slices, and a "TLS cost" table gives the IOPS and CPU changes plain → TLS (`--no-tls`
 * skips them).
 */
import { Controller } from '../src/controller/controller';
import { Namespace } from '../src/controller/namespace';
import { releaseIoBuffer } from '../src/block/io-buffers';
import { BlockOpCode, type BlockHandler, type BlockRequest } from '../src/block/types';
import type { NvmfNbdError } from '../src/errors';
import { deriveTlsPsk, parseInterchangeKey } from '../src/tls/psk';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import {
  BENCH_HOSTID, BENCH_HOSTNQN, BENCH_SUBNQN, BENCH_TLS_KEY, MiB, fmt, machineLine, numArg, parseArgs, percentile, procCpuMicros, startTargetProc, table,
  BenchUsageError,
  runMain,
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
 * One job on one controller, run in slices: each `slice()` starts the QD loops, optionally
 * measures, stops them and waits for them to drain; measured slices add up. Every loop owns one
 * write buffer (filled once) so the loop itself allocates nothing per command.
 *
 * Two ways in (`--api`): `record` (default) drives a {@link Namespace} over the controller with
 * one pooled request record per QD slot and a completion callback — the path the NBD server
 * takes (byte→LBA math, bounds, errno edge, reads into the namespace's slab); `promise` awaits
 * `Controller.read`/`write` per command (a record, a promise and its closures per I/O: the public
 * API edge, what this bench measured before 2026-12-02).
 */
class JobRun implements BlockHandler {
  private readonly samples = new Samples();
  private ios = 0;
  private secs = 0;
  private cpuUser = 0;
  private cpuSys = 0;
  private targetCpu = 0;
  private targetKnown = true;
  private readonly nlb: number;
  private readonly slots: number;
  /** One buffer per loop, kept across slices. */
  private readonly buffers: Buffer[] = [];

  // ---- record API: one record per QD slot, resubmitted from its own completion ----
  private readonly ns: Namespace | undefined;
  private readonly records: BlockRequest[] = [];
  /** Submission time (ns, from hrtime.bigint as a number) of each slot's record. */
  private readonly started: Float64Array;
  private stopping = false;
  private measuring = false;
  private inflight = 0;
  private sliceIos = 0;
  private drained: (() => void) | undefined;
  private failure: Error | undefined;

  constructor(private readonly ctrl: Controller, private readonly nsid: number, lbaSize: number, regionBlocks: number,
    private readonly job: Job, private readonly targetPid: number | undefined, api: 'record' | 'promise') {
    this.nlb = job.bytes / lbaSize;
    this.slots = Math.floor(regionBlocks / this.nlb);
    // One buffer per loop for both directions: reads land in it (`into`) as writes send from it,
    // so neither side pays a fresh allocation (page faults, zeroing by the kernel) per command.
    // (Record reads land in the namespace's own destination instead, as NBD reads do.)
    for (let i = 0; i < job.qd; i++) this.buffers.push(job.op === 'write' ? randomBytes(job.bytes) : Buffer.alloc(job.bytes));
    this.started = new Float64Array(job.qd);
    if (api === 'record') {
      const info = ctrl.namespaces.get(nsid);
      if (info === undefined) throw new Error(`namespace ${nsid} is not active`);
      this.ns = new Namespace(ctrl, info);
      for (let i = 0; i < job.qd; i++) {
        const r = this.ns.createRequest();
        r.cookieLo = i;
        this.records.push(r);
      }
    }
  }

  /** Run the QD loops for `seconds`; counted in the result only when `measured`. */
  async slice(seconds: number, measured: boolean): Promise<void> {
    if (this.ns !== undefined) return this.recordSlice(seconds, measured);
    const { ctrl, nsid, nlb, slots, job, samples } = this;
    let stop = false;
    let ios = 0;
    const loop = async (data: Buffer): Promise<void> => {
      while (!stop) {
        const slba = BigInt(Math.floor(Math.random() * slots) * nlb);
        const t0 = process.hrtime.bigint();
        if (job.op === 'read') await ctrl.read(nsid, slba, nlb, data);
        else await ctrl.write(nsid, slba, data);
        if (measured && !stop) {
          samples.add(Number(process.hrtime.bigint() - t0) / 1000);
          ios++;
        }
      }
    };
    const cpu0 = process.cpuUsage();
    const tcpu0 = this.targetPid === undefined ? undefined : procCpuMicros(this.targetPid);
    const t0 = process.hrtime.bigint();
    const loops = this.buffers.map(loop);
    await new Promise((r) => setTimeout(r, seconds * 1000));
    stop = true;
    const secs = Number(process.hrtime.bigint() - t0) / 1e9;
    const cpu = process.cpuUsage(cpu0);
    const tcpu1 = this.targetPid === undefined ? undefined : procCpuMicros(this.targetPid);
    await Promise.all(loops);
    if (!measured) return;
    this.ios += ios;
    this.secs += secs;
    this.cpuUser += cpu.user;
    this.cpuSys += cpu.system;
    if (tcpu0 !== undefined && tcpu1 !== undefined) this.targetCpu += tcpu1 - tcpu0;
    else this.targetKnown = false;
  }

  /** {@link slice} on the record path: QD records in flight, each resubmitted from its completion. */
  private async recordSlice(seconds: number, measured: boolean): Promise<void> {
    this.stopping = false;
    this.measuring = measured;
    this.sliceIos = 0;
    const cpu0 = process.cpuUsage();
    const tcpu0 = this.targetPid === undefined ? undefined : procCpuMicros(this.targetPid);
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < this.records.length; i++) this.issue(this.records[i] as BlockRequest);
    await new Promise((r) => setTimeout(r, seconds * 1000));
    this.stopping = true;
    const secs = Number(process.hrtime.bigint() - t0) / 1e9;
    const cpu = process.cpuUsage(cpu0);
    const tcpu1 = this.targetPid === undefined ? undefined : procCpuMicros(this.targetPid);
    const ios = this.sliceIos;
    if (this.inflight > 0) await new Promise<void>((r) => { this.drained = r; });
    if (this.failure !== undefined) throw this.failure;
    if (!measured) return;
    this.ios += ios;
    this.secs += secs;
    this.cpuUser += cpu.user;
    this.cpuSys += cpu.system;
    if (tcpu0 !== undefined && tcpu1 !== undefined) this.targetCpu += tcpu1 - tcpu0;
    else this.targetKnown = false;
  }

  private issue(r: BlockRequest): void {
    const slot = r.cookieLo;
    r.op = this.job.op === 'read' ? BlockOpCode.READ : BlockOpCode.WRITE;
    r.offset = Math.floor(Math.random() * this.slots) * this.job.bytes;
    r.length = this.job.bytes;
    r.data = this.job.op === 'read' ? undefined : this.buffers[slot];
    r.fua = false;
    r.handler = this;
    this.started[slot] = Number(process.hrtime.bigint());
    this.inflight++;
    (this.ns as Namespace).submit(r);
  }

  onBlockComplete(r: BlockRequest): void {
    this.inflight--;
    // The data is not looked at: give it back as the NBD server does once the reply is written.
    if (r.op === BlockOpCode.READ && r.data !== undefined) releaseIoBuffer(r.data);
    if (this.measuring && !this.stopping) {
      this.samples.add((Number(process.hrtime.bigint()) - (this.started[r.cookieLo] as number)) / 1000);
      this.sliceIos++;
    }
    if (!this.stopping) this.issue(r);
    else if (this.inflight === 0) this.drained?.();
  }

  onBlockError(r: BlockRequest, err: NvmfNbdError): void {
    this.failure ??= err;
    this.stopping = true;
    this.onBlockComplete(r);
  }

  result(): JobResult {
    const s = this.samples.sorted();
    const ios = this.ios;
    const res: JobResult = {
      iops: ios / this.secs,
      mibps: (ios * this.job.bytes) / MiB / this.secs,
      p50: percentile(s, 50),
      p99: percentile(s, 99),
      cpuUsPerIo: ios > 0 ? (this.cpuUser + this.cpuSys) / ios : NaN,
      sysUsPerIo: ios > 0 ? this.cpuSys / ios : NaN,
    };
    if (this.targetPid !== undefined && this.targetKnown && ios > 0) res.targetCpuUsPerIo = this.targetCpu / ios;
    return res;
  }
}

/** `ramp` seconds unmeasured, then `runtime` seconds measured, on one controller. */
async function runJob(run: JobRun, ramp: number, runtime: number): Promise<JobResult> {
  await run.slice(ramp, false);
  await run.slice(runtime, true);
  return run.result();
}

/**
 * The same job over plain TCP and over TLS, interleaved: after a ramp on each, `runtime` seconds
 * each in alternating slices of about `slice` seconds (plain, TLS, TLS, plain, …). Both modes
 * then see the same load from the rest of the machine, so their ratio means something on a
 * shared machine, where load swings over seconds (running all plain jobs before all TLS ones
 * put the two halves of a ratio tens of seconds apart). Each slice starts the QD loops afresh
 * and drains them at its end (not measured): a pipeline fill per slice, the same for both.
 */
async function runPair(plain: JobRun, tls: JobRun, ramp: number, runtime: number, slice: number): Promise<{ plain: JobResult; tls: JobResult }> {
  await plain.slice(ramp, false);
  await tls.slice(ramp, false);
  const n = Math.max(1, Math.round(runtime / slice));
  for (let i = 0; i < n; i++) {
    const [a, b] = i % 2 === 0 ? [plain, tls] : [tls, plain];
    await a.slice(runtime / n, true);
    await b.slice(runtime / n, true);
  }
  return { plain: plain.result(), tls: tls.result() };
}

/** Relative change from `a` to `b` in percent, signed ("+12 %", "−30 %"). */
function pct(a: number | undefined, b: number | undefined): string {
  if (a === undefined || b === undefined || !Number.isFinite(a) || !Number.isFinite(b) || a === 0) return '-';
  const d = ((b - a) / a) * 100;
  return `${d < 0 ? '−' : '+'}${fmt(Math.abs(d), 0)} %`;
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
    ['traddr', 'trsvcid', 'subnqn', 'nsid', 'runtime', 'ramp', 'queues', 'queue-size', 'region', 'jobs', 'target-cpu', 'slice', 'api', 'target-flush-every'], ['no-prefill', 'no-tls']);
  const api = a.get('api') ?? 'record';
  if (api !== 'record' && api !== 'promise') throw new BenchUsageError(`--api ${api}: use record or promise`);
  const runtime = numArg(a, 'runtime', Number(process.env['BENCH_RUNTIME'] ?? 5));
  const ramp = numArg(a, 'ramp', Number(process.env['BENCH_RAMP'] ?? 1));
  const nsid = numArg(a, 'nsid', 1);
  const names = a.get('jobs')?.split(',');
  const jobs = names === undefined ? JOBS : names.map((n) => {
    const j = JOBS.find((x) => x.name === n);
    if (j === undefined) throw new BenchUsageError(`unknown job '${n}' (jobs: ${JOBS.map((x) => x.name).join(', ')})`);
    return j;
  });

  let target: (Helper<{ port: number; nqn: string }> & { pinned: boolean }) | undefined;
  let where: { traddr: string; trsvcid: number; subnqn: string };
  if (a.get('trsvcid') === undefined) {
    const cpu = numArg(a, 'target-cpu', 0);
    target = await startTargetProc({ cpu, sizeBytes: 1024 * MiB, tlsOptional: !a.has('no-tls'), ...(a.has('target-flush-every') ? { flushEvery: numArg(a, 'target-flush-every', 8) } : {}) });
    where = { traddr: '127.0.0.1', trsvcid: target.ready.port, subnqn: target.ready.nqn };
    process.stdout.write(`${machineLine()}\ntarget: embedded (memory, 1 GiB; answers flushed every ${a.get('target-flush-every') ?? 8} PDUs) on CPU ${target.pinned ? cpu : '(unpinned)'}, 127.0.0.1:${where.trsvcid}\n`);
  } else {
    where = { traddr: a.get('traddr') ?? '127.0.0.1', trsvcid: numArg(a, 'trsvcid', 4420), subnqn: a.get('subnqn') ?? BENCH_SUBNQN };
    process.stdout.write(`${machineLine()}\ntarget: ${where.traddr}:${where.trsvcid} ${where.subnqn} nsid ${nsid}\n`);
  }
  const queues = a.get('queues');
  const queueSize = a.get('queue-size');
  let ctrl: Controller | undefined;
  let tlsCtrl: Controller | undefined;
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
      `region ${regionBytes / MiB} MiB, ${runtime} s per job after ${ramp} s ramp, this process on CPU(s) ${cpusAllowed()}, ` +
      `API ${api === 'record' ? 'record (Namespace.submit, pooled records, as the NBD server)' : 'promise (Controller.read/write per command)'}\n\n`);
    if (!a.has('no-prefill')) await prefill(ctrl, nsid, ns.lbaSize, regionBlocks);

    // TLS rows (embedded target only: it serves TLS as optional): the QD32 and 128 KiB jobs also
    // over NVMe/TCP TLS 1.3 (TLS_AES_128_GCM_SHA256, PSK) on a second association to the same
    // target process, same host process and pinning, interleaved with the plain run of the job.
    if (target !== undefined && !a.has('no-tls')) {
      tlsCtrl = await Controller.connect({
        ...where, hostnqn: BENCH_HOSTNQN, hostid: BENCH_HOSTID,
        tls: deriveTlsPsk(parseInterchangeKey(BENCH_TLS_KEY), BENCH_HOSTNQN, where.subnqn, 0),
        ...(queues !== undefined ? { nrIoQueues: Number(queues) } : {}),
        ...(queueSize !== undefined ? { queueSize: Number(queueSize) } : {}),
      });
    }
    const slice = numArg(a, 'slice', 0.5);
    const rows: string[][] = [];
    const tlsRows: string[][] = [];
    const costRows: string[][] = [];
    const row = (name: string, r: JobResult, goal: string): string[] =>
      [name, fmt(r.iops, 0), fmt(r.mibps), fmt(r.p50, 0), fmt(r.p99, 0), fmt(r.cpuUsPerIo), fmt(r.sysUsPerIo), fmt(r.targetCpuUsPerIo), rssMiB(), goal];
    for (const job of jobs) {
      if (job.bytes > ctrl.maxTransfer) process.stderr.write(`engine-bench: ${job.name}: ${job.bytes} B > MDTS, split into several commands
`);
      const pid = target?.child.pid;
      const plainRun = new JobRun(ctrl, nsid, ns.lbaSize, regionBlocks, job, pid, api);
      if (tlsCtrl !== undefined && (job.qd === 32 || job.bytes === 128 * 1024)) {
        const r = await runPair(plainRun, new JobRun(tlsCtrl, nsid, ns.lbaSize, regionBlocks, job, pid, api), ramp, runtime, slice);
        rows.push(row(job.name, r.plain, goalOf(job)));
        tlsRows.push(row(`tls ${job.name}`, r.tls, ''));
        costRows.push([job.name, fmt(r.plain.iops, 0), fmt(r.tls.iops, 0), pct(r.plain.iops, r.tls.iops),
          `${fmt(r.plain.cpuUsPerIo)} → ${fmt(r.tls.cpuUsPerIo)}`, pct(r.plain.cpuUsPerIo, r.tls.cpuUsPerIo),
          `${fmt(r.plain.targetCpuUsPerIo)} → ${fmt(r.tls.targetCpuUsPerIo)}`, pct(r.plain.targetCpuUsPerIo, r.tls.targetCpuUsPerIo),
          job.bytes === 4096 ? 'IOPS loss ≤ 35 %' : '']);
        process.stderr.write(`engine-bench: ${job.name} and tls ${job.name} done\n`);
      } else {
        rows.push(row(job.name, await runJob(plainRun, ramp, runtime), goalOf(job)));
        process.stderr.write(`engine-bench: ${job.name} done\n`);
      }
    }
    process.stdout.write(`${table(['job', 'IOPS', 'MiB/s', 'p50 µs', 'p99 µs', 'host CPU µs/IO', 'of it sys', 'target CPU µs/IO', 'RSS MiB', 'goal (issue 9)'], [...rows, ...tlsRows])}\n`);
    if (costRows.length > 0) {
      process.stdout.write(`\nTLS cost (each job's plain and tls runs interleaved in ${fmt(slice)} s slices, same processes and CPUs):\n`);
      process.stdout.write(`${table(['job', 'IOPS plain', 'IOPS tls', 'IOPS', 'host CPU µs/IO', 'host', 'target CPU µs/IO', 'target', 'goal (issue 10)'], costRows)}\n`);
    }
    process.stdout.write(`engine peak RSS (VmHWM, this process): ${fmt(process.resourceUsage().maxRSS / 1024)} MiB; RSS MiB = VmRSS after each job\n`);
  } finally {
    await ctrl?.close().catch(() => undefined);
    await tlsCtrl?.close().catch(() => undefined);
    await target?.stop();
  }
}

runMain('engine-bench', main);
