/**
 * Benchmark helper process: the bridge (a ControllerSession: NVMe/TCP host engine + NBD server)
 * connected to a target and serving its namespaces over NBD on 127.0.0.1. The parent pins it with
 * taskset and reads its peak RSS from /proc; --cpu-profile profiles the hot path on demand.
 *
 *   node dist/bench/bridge-proc.js --trsvcid PORT --subnqn NQN [--traddr 127.0.0.1]
 *        [--nbd-port 0] [--queues N] [--queue-size N]
 *
 * --cpu-profile FILE: SIGUSR2 starts the V8 CPU profiler (node:inspector, 250 µs sampling) and a
 * second SIGUSR2 or the shutdown stops it and writes FILE (.cpuprofile JSON), so only the
 * workload of interest is profiled (not the connect or the prefill).
 * Prints `READY {"port":N,"exports":["nvme0n1",...],"ioQueues":N}`; SIGTERM/SIGINT close the
 * session (writing the profile first, if one is running) and exit 0.
 */
import * as fs from 'node:fs';
import * as inspector from 'node:inspector';
import { ControllerSession } from '../src/engine/session';
import { BENCH_HOSTID, BENCH_HOSTNQN, BENCH_SUBNQN, numArg, parseArgs, runMain } from './common';

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2), ['traddr', 'trsvcid', 'subnqn', 'nbd-port', 'queues', 'queue-size', 'cpu-profile']);
  const trsvcid = args.get('trsvcid');
  if (trsvcid === undefined) throw new Error('--trsvcid is required');
  const queues = args.get('queues');
  const queueSize = args.get('queue-size');
  const session = await ControllerSession.open({
    name: 'nvme0',
    controller: {
      traddr: args.get('traddr') ?? '127.0.0.1',
      trsvcid: Number(trsvcid),
      subnqn: args.get('subnqn') ?? BENCH_SUBNQN,
      hostnqn: BENCH_HOSTNQN,
      hostid: BENCH_HOSTID,
      ...(queues !== undefined ? { nrIoQueues: Number(queues) } : {}),
      ...(queueSize !== undefined ? { queueSize: Number(queueSize) } : {}),
    },
    nbd: { tcp: { host: '127.0.0.1', port: numArg(args, 'nbd-port', 0) } },
    log: (m) => process.stderr.write(`bridge-proc: ${m}\n`),
  });
  const ep = session.exports[0]?.endpoint;
  if (ep === undefined || !('tcp' in ep)) throw new Error('the target exported no usable namespace');
  const profiler = cpuProfiler(args.get('cpu-profile'));
  let closing = false;
  const shutdown = (): void => {
    if (closing) return;
    closing = true;
    profiler.stop()
      .then(() => session.close())
      .then(() => process.exit(0), (err: unknown) => {
        process.stderr.write(`bridge-proc: ${String(err)}\n`);
        process.exit(1);
      });
  };
  process.on('SIGTERM', shutdown);
  process.on('SIGINT', shutdown);
  process.stdout.write(`READY ${JSON.stringify({ port: ep.tcp.port, exports: session.exports.map((e) => e.name), ioQueues: session.controller.ioQueueCount })}\n`);
}

/** SIGUSR2-controlled CPU profiler writing `file` (no-op without a file). */
function cpuProfiler(file: string | undefined): { stop(): Promise<void> } {
  if (file === undefined) return { stop: async () => undefined };
  const s = new inspector.Session();
  s.connect();
  const post = (method: string, params?: object): Promise<unknown> =>
    new Promise((resolve, reject) => s.post(method, params, (err, res) => (err !== null ? reject(err) : resolve(res))));
  let running = false;
  const stop = async (): Promise<void> => {
    if (!running) return;
    running = false;
    const res = (await post('Profiler.stop')) as { profile: unknown };
    fs.writeFileSync(file, JSON.stringify(res.profile));
    process.stderr.write(`bridge-proc: CPU profile written to ${file}\n`);
  };
  process.on('SIGUSR2', () => {
    if (running) {
      void stop();
      return;
    }
    running = true;
    post('Profiler.enable')
      .then(() => post('Profiler.setSamplingInterval', { interval: 250 }))
      .then(() => post('Profiler.start'))
      .then(() => process.stderr.write('bridge-proc: CPU profiler started\n'), (err: unknown) => process.stderr.write(`bridge-proc: profiler: ${String(err)}\n`));
  });
  return { stop };
}

runMain('bridge-proc', main);
