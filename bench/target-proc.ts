/**
 * Benchmark helper process: the embedded NVMe/TCP target with one memory-backed namespace, on
 * 127.0.0.1 and a free port. It runs in its own process (pinned by the parent with taskset) so
 * its CPU time is not charged to the bridge or the engine being measured.
 *
 *   node dist/bench/target-proc.js [--size BYTES] [--nqn NQN] [--port N] [--max-io-queues N] [--namespaces N]
 *        [--flush-every N]
 *
 * --namespaces N: N memory namespaces of --size bytes each (sparse: memory is taken on write).
 * --flush-every N: the target's `flushEvery` (0 = answers leave once per event-loop iteration).
 *
 * Prints `READY {"port":N,"nqn":"..."}` once listening; SIGTERM/SIGINT close it and exit 0.
 */
import { NvmeTarget } from '../src/embedded-target/target';
import { BENCH_HOSTNQN, BENCH_SUBNQN, BENCH_TLS_KEY, numArg, parseArgs, runMain } from './common';
import { targetPskTable } from '../src/tls/target-keys';

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2), ['size', 'nqn', 'port', 'max-io-queues', 'namespaces', 'flush-every'], ['tls-optional']);
  const sizeBytes = numArg(args, 'size', 1024 * 1024 * 1024);
  const nqn = args.get('nqn') ?? BENCH_SUBNQN;
  const target = new NvmeTarget({
    listen: { host: '127.0.0.1', port: numArg(args, 'port', 0) },
    subsystems: [{ nqn, namespaces: Array.from({ length: Math.max(1, numArg(args, 'namespaces', 1)) }, () => ({ sizeBytes, backing: { memory: true as const } })) }],
    maxIoQueues: numArg(args, 'max-io-queues', 8),
    ...(args.has('flush-every') ? { flushEvery: numArg(args, 'flush-every', 8) } : {}),
    ...(args.has('tls-optional') ? { tls: { mode: 'optional' as const, lookup: ((t) => (id: string) => t.get(id))(targetPskTable(`${BENCH_HOSTNQN} ${BENCH_TLS_KEY}\n`, [nqn])) } } : {}),
  });
  const addr = await target.listen();
  let closing = false;
  const shutdown = (): void => {
    if (closing) return;
    closing = true;
    target.close().then(() => process.exit(0), () => process.exit(1));
  };
  process.on('SIGTERM', shutdown);
  process.on('SIGINT', shutdown);
  process.stdout.write(`READY ${JSON.stringify({ port: addr.port, nqn })}\n`);
}

runMain('target-proc', main);
