/**
 * `nvmf-nbd demo` — the main job on the embedded default, with nothing else installed: starts the
 * embedded NVMe/TCP target with a memory namespace, connects the host engine to it over loopback
 * TCP, serves the namespace over NBD, prints the exports and the exact client commands, and runs
 * until Ctrl-C. `npm start` runs this.
 *
 * The NBD endpoint defaults to a Unix socket (0600 in a 0700 directory under the state
 * directory): loopback TCP is reachable by every local user (issue 14, finding 1). With
 * `--nbd tcp:…` the loopback peer-uid rule and the `--nbd-tls*` flags apply as for connect.
 */
import * as path from 'node:path';
import { NvmeTarget } from '../../embedded-target/target';
import { ControllerSession, parseNbdSpec } from '../../engine/session';
import { protectFromOomKiller } from '../../engine/oom';
import { resolveHostIdentity } from '../../controller/host-identity';
import { stateDir } from '../../config/state-dir';
import { parseHostPort, parseSizeArg } from '../values';
import { NBD_SECURITY_OPTIONS, absoluteNbdTlsPaths, checkNbdEndpointArg, nbdAccessFromArgs } from '../nbd-tls-args';
import type { NbdTlsFiles } from '../../tls/nbd-tls';
import { waitForShutdownSignal } from '../signals';
import type { Verb } from '../verb';

const SUBNQN = 'nqn.2014-08.org.nvmf-nbd:demo';

/** Client commands for one export, as the demo prints them (TLS: the client-side credentials). */
export function clientCommands(name: string, endpoint: string, blockSize: number, tls?: NbdTlsFiles, identity = 'IDENTITY'): string[] {
  if (endpoint.startsWith('tcp:')) {
    const [host, port] = endpoint.slice(4).split(/:(?=\d+$)/) as [string, string];
    if (tls?.pskFile !== undefined) {
      // The client needs the same psktool file and offers one of its identities.
      const uri = `nbds://${identity}@${host}:${port}/${name}?tls-psk-file=${tls.pskFile}`;
      return [
        `nbdinfo '${uri}'`,
        `qemu-io --object tls-creds-psk,id=tls0,endpoint=client,dir=${path.dirname(tls.pskFile)},username=${identity} --image-opts driver=nbd,host=${host},port=${port},export=${name},tls-creds=tls0 -c 'read 0 1M'   # qemu reads DIR/keys.psk`,
      ];
    }
    if (tls?.certFile !== undefined) {
      const uri = `nbds://${host}:${port}/${name}?tls-certificates=CLIENT_DIR`;
      return [
        `nbdinfo '${uri}'   # CLIENT_DIR: ca-cert.pem (+ client-cert.pem, client-key.pem)`,
        `nbd-client ${host} ${port} /dev/nbd0 -N ${name} -b ${blockSize} -cacertfile CA -certfile CERT -keyfile KEY   # needs the nbd kernel module`,
      ];
    }
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
  usage: 'nvmf-nbd demo [--memory SIZE] [--nbd unix:DIR|tcp:HOST:PORT] [--nbd-tls-psk FILE | --nbd-tls-cert FILE --nbd-tls-key FILE [--nbd-tls-ca FILE]] [--attach] [-o json]',
  options: [
    { long: 'memory', type: 'string', metavar: 'SIZE', help: 'size of the memory namespace (K/M/G suffixes)', default: '1G' },
    { long: 'nbd', type: 'string', metavar: 'SPEC', help: 'NBD endpoint: unix:DIR (default STATE_DIR/demo: a 0700 directory with a 0600 socket) or tcp:HOST:PORT' },
    { long: 'target-listen', type: 'string', metavar: 'HOST:PORT', help: 'where the embedded target listens (port 0 = any free port)', default: '127.0.0.1:0' },
    { long: 'attach', type: 'boolean', help: 'attach the export to /dev/nbdX with nbd-client (root, nbd module)' },
    { long: 'nr-io-queues', short: 'i', type: 'int', metavar: 'N', help: 'I/O queues', min: 1, max: 64 },
    { long: 'output-format', short: 'o', type: 'string', metavar: 'FMT', help: 'normal or json', default: 'normal' },
    ...NBD_SECURITY_OPTIONS,
  ],
  async run(opts) {
    const size = parseSizeArg(String(opts['memory']), '--memory');
    const nbdArg = typeof opts['nbd'] === 'string' ? opts['nbd'] : `unix:${path.join(stateDir(), 'demo')}`;
    absoluteNbdTlsPaths(opts);
    checkNbdEndpointArg(nbdArg, opts);
    const nbd = parseNbdSpec(nbdArg);
    const access = nbdAccessFromArgs(opts);
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
      const id = await resolveHostIdentity({ stateDir: stateDir() });
      session = await ControllerSession.open({
        name: 'nvme0',
        controller: { traddr: addr.host, trsvcid: addr.port, subnqn: SUBNQN, hostnqn: id.hostnqn, hostid: id.hostid, nrIoQueues: opts['nr-io-queues'] as number | undefined },
        nbd,
        nbdServer: { access },
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
          for (const c of clientCommands(e.name, e.endpoint, e.blockSize, access.tls?.files, access.tls?.identities[0])) lines.push(`    ${c}`);
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
