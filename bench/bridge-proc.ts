/**
 * Benchmark helper process: the bridge (a ControllerSession: NVMe/TCP host engine + NBD server)
 * connected to a target and serving its namespaces over NBD on 127.0.0.1. The parent pins it with
 * taskset and reads its peak RSS from /proc; run under `node --cpu-prof` to profile the hot path.
 *
 *   node dist/bench/bridge-proc.js --trsvcid PORT --subnqn NQN [--traddr 127.0.0.1]
 *        [--nbd-port 0] [--queues N] [--queue-size N]
 *
 * --batch-writes: bench-only experiment, see enableBatchedWrites in common.ts.
 * Prints `READY {"port":N,"exports":["nvme0n1",...],"ioQueues":N}`; SIGTERM/SIGINT close the
 * session and exit 0 (a clean exit is what makes --cpu-prof write its profile).
 */
import { ControllerSession } from '../src/engine/session';
import { BENCH_HOSTID, BENCH_HOSTNQN, BENCH_SUBNQN, enableBatchedWrites, numArg, parseArgs } from './common';

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2), ['traddr', 'trsvcid', 'subnqn', 'nbd-port', 'queues', 'queue-size'], ['batch-writes']);
  // Experiment only (see enableBatchedWrites): measures the win of batching socket writes per tick.
  if (args.has('batch-writes')) enableBatchedWrites();
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
  let closing = false;
  const shutdown = (): void => {
    if (closing) return;
    closing = true;
    session.close().then(() => process.exit(0), () => process.exit(1));
  };
  process.on('SIGTERM', shutdown);
  process.on('SIGINT', shutdown);
  process.stdout.write(`READY ${JSON.stringify({ port: ep.tcp.port, exports: session.exports.map((e) => e.name), ioQueues: session.controller.ioQueueCount })}\n`);
}

main().catch((err: unknown) => {
  process.stderr.write(`bridge-proc: ${err instanceof Error ? err.stack ?? err.message : String(err)}\n`);
  process.exit(1);
});
