/**
 * `nvmf-nbd demo` — the main job on the embedded default, with nothing else installed: starts the
 * embedded NVMe/TCP target with a memory namespace, connects the host engine to it over loopback
 * TCP, serves the namespace over NBD, prints the exports and the exact client commands, and runs
 * until Ctrl-C. `npm start` runs this.
 */
import { NvmeTarget } from '../../embedded-target/target';
import { ControllerSession, parseNbdSpec } from '../../engine/session';
import { protectFromOomKiller } from '../../engine/oom';
import { resolveHostIdentity } from '../../controller/host-identity';
import { parseHostPort, parseSizeArg } from '../values';
import { waitForShutdownSignal } from '../signals';
import type { Verb } from '../verb';

const SUBNQN = 'nqn.2014-08.org.nvmf-nbd:demo';

/** Client commands for one export, as the demo prints them. */
export function clientCommands(name: string, endpoint: string, blockSize: number): string[] {
  if (endpoint.startsWith('tcp:')) {
    const [host, port] = endpoint.slice(4).split(/:(?=\d+$)/) as [string, string];
    const uri = `nbd://${host}:${port}/${name}`;
    return [
      `nbdinfo ${uri}`,
      `qemu-io -f raw ${uri} -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M'`,
      `nbd-client ${host} ${port} /dev/nbd0 -N ${name} -b ${blockSize}   # needs the nbd kernel module`,
    ];
  }
  const sock = endpoint.slice(5);
  return [
    `nbdinfo 'nbd+unix:///${name}?socket=${sock}'`,
    `qemu-io -f raw 'nbd+unix:///${name}?socket=${sock}' -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M'`,
    `nbd-client -unix ${sock} /dev/nbd0 -N ${name} -b ${blockSize}   # needs the nbd kernel module`,
  ];
}

export const verb: Verb = {
  name: 'demo',
  summary: 'run the embedded target, connect to it and serve its namespace over NBD (npm start)',
  usage: 'nvmf-nbd demo [--memory SIZE] [--nbd tcp:HOST:PORT|unix:DIR] [--attach] [-o json]',
  options: [
    { long: 'memory', type: 'string', metavar: 'SIZE', help: 'size of the memory namespace (K/M/G suffixes)', default: '1G' },
    { long: 'nbd', type: 'string', metavar: 'SPEC', help: 'NBD endpoint: tcp:HOST:PORT or unix:DIR', default: 'tcp:127.0.0.1:10809' },
    { long: 'target-listen', type: 'string', metavar: 'HOST:PORT', help: 'where the embedded target listens (port 0 = any free port)', default: '127.0.0.1:0' },
    { long: 'attach', type: 'boolean', help: 'attach the export to /dev/nbdX with nbd-client (root, nbd module)' },
    { long: 'nr-io-queues', short: 'i', type: 'int', metavar: 'N', help: 'I/O queues', min: 1, max: 64 },
    { long: 'output-format', short: 'o', type: 'string', metavar: 'FMT', help: 'normal or json', default: 'normal' },
  ],
  async run(opts) {
    const size = parseSizeArg(String(opts['memory']), '--memory');
    const nbd = parseNbdSpec(String(opts['nbd']));
    const json = opts['output-format'] === 'json';
    const listen = parseHostPort(String(opts['target-listen']), '--target-listen');
    protectFromOomKiller();

    const target = new NvmeTarget({
      listen,
      subsystems: [{ nqn: SUBNQN, model: 'nvmf-nbd demo', namespaces: [{ sizeBytes: size, backing: { memory: true } }] }],
    });
    const addr = await target.listen();
    let session: ControllerSession | undefined;
    try {
      const id = await resolveHostIdentity();
      session = await ControllerSession.open({
        name: 'nvme0',
        controller: { traddr: addr.host, trsvcid: addr.port, subnqn: SUBNQN, hostnqn: id.hostnqn, hostid: id.hostid, nrIoQueues: opts['nr-io-queues'] as number | undefined },
        nbd,
        attach: opts['attach'] === true,
        log: (msg) => process.stderr.write(`${msg}\n`),
      });
      const desc = session.describe();
      if (json) {
        process.stdout.write(`${JSON.stringify({ target: { ...addr, subnqn: SUBNQN }, controller: desc }, null, 2)}\n`);
      } else {
        const lines = [
          `Embedded NVMe/TCP target: ${addr.host}:${addr.port}  subsystem ${SUBNQN}`,
          `Host engine connected as ${session.name} (cntlid ${session.controller.cntlid}, ${session.controller.ioQueueCount} I/O queues)`,
          '',
          'NBD exports:',
        ];
        for (const e of desc.exports as Array<{ name: string; size: number; blockSize: number; endpoint: string; device: string | null }>) {
          lines.push(`  ${e.name}  ${(e.size / 2 ** 20).toFixed(0)} MiB  block ${e.blockSize}  ${e.endpoint}${e.device !== null ? `  attached as ${e.device}` : ''}`);
          lines.push('  Try:');
          for (const c of clientCommands(e.name, e.endpoint, e.blockSize)) lines.push(`    ${c}`);
        }
        lines.push('', 'Press Ctrl-C to stop.');
        process.stdout.write(`${lines.join('\n')}\n`);
      }
      await waitForShutdownSignal();
      process.stderr.write('shutting down\n');
    } finally {
      await session?.close().catch((err: unknown) => process.stderr.write(`close: ${String(err)}\n`));
      await target.close();
    }
    return 0;
  },
};
