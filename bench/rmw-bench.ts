/**
 * What a sub-block read-modify-write costs, and how reads from an SPDK-style target are
 * accounted. One process: the embedded target (4096-byte-LBA memory namespace), the bridge
 * (ControllerSession, NBD over loopback TCP) and an NBD client that does not negotiate block
 * sizes; QD concurrent loops of random writes for --seconds each:
 *   1k-rmw   1 KiB writes at random 1 KiB offsets (RMW: read 1 block, merge, write it)
 *   4k       aligned 4 KiB writes (no RMW)
 * Prints IOPS and the CPU time of this whole process per I/O (target + bridge + client: compare
 * the rows, not the absolute µs). Then 1000 reads against a target in `--c2h-success spdk` mode
 * and the host queue counters they produced.
 *
 *   node dist/bench/rmw-bench.js [--seconds 5] [--qd 16]
 */
import { NvmeTarget } from '../src/embedded-target/target';
import { ControllerSession } from '../src/engine/session';
import { Cmd, NbdTestClient } from '../test/helpers/nbd-test-client';
import { runMain } from './common';

const MiB = 1 << 20;
const NQN = 'nqn.2014-08.org.nvmf-nbd:rmw-bench';
const HOSTNQN = 'nqn.2014-08.org.nvmexpress:uuid:0f6c3d1e-1a2b-4c3d-9e8f-00000000b001';

function arg(name: string, def: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : def;
}

async function open(c2hSuccess: 'spec' | 'spdk'): Promise<{ target: NvmeTarget; session: ControllerSession; port: number }> {
  const target = new NvmeTarget({
    listen: { host: '127.0.0.1', port: 0 }, c2hSuccess,
    subsystems: [{ nqn: NQN, namespaces: [{ nsid: 1, sizeBytes: 256 * MiB, lbaSize: 4096, backing: { memory: true } }] }],
  });
  const addr = await target.listen();
  const session = await ControllerSession.open({
    name: 'nvme0',
    controller: { traddr: '127.0.0.1', trsvcid: addr.port, subnqn: NQN, hostnqn: HOSTNQN, hostid: HOSTNQN.slice(-36), nrIoQueues: 1, queueSize: 128, kato: 5000 },
    nbd: { tcp: { host: '127.0.0.1', port: 0 } },
  });
  return { target, session, port: (session.exports[0]?.endpoint as { tcp: { port: number } }).tcp.port };
}

async function job(c: NbdTestClient, bytes: number, qd: number, seconds: number): Promise<{ iops: number; cpuUs: number }> {
  const region = 64 * MiB;
  const data = Buffer.alloc(bytes, 0x5a);
  let n = 0;
  const stopAt = Date.now() + seconds * 1000;
  const cpu0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  await Promise.all(Array.from({ length: qd }, async () => {
    while (Date.now() < stopAt) {
      const off = Math.floor(Math.random() * (region / bytes)) * bytes;
      const r = await c.request(Cmd.WRITE, off, bytes, { data });
      if (r.error !== 0) throw new Error(`write error ${r.error}`);
      n++;
    }
  }));
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpu = process.cpuUsage(cpu0);
  return { iops: n / secs, cpuUs: (cpu.user + cpu.system) / n };
}

async function main(): Promise<void> {
  const seconds = arg('seconds', 5);
  const qd = arg('qd', 16);
  const { target, session, port } = await open('spec');
  const c = await NbdTestClient.connect({ port }, 'nvme0n1');
  console.log(`4096-byte-LBA memory namespace, 1 I/O queue, non-negotiating NBD client, QD ${qd}, ${seconds} s per job`);
  console.log('job      IOPS      CPU µs/IO (whole process)');
  for (const [name, bytes] of [['4k', 4096], ['1k-rmw', 1024], ['4k', 4096], ['1k-rmw', 1024]] as const) {
    const r = await job(c, bytes, qd, seconds);
    console.log(`${name.padEnd(8)} ${r.iops.toFixed(0).padStart(8)}  ${r.cpuUs.toFixed(1).padStart(8)}`);
  }
  const st = session.stats()[0];
  console.log(`export counters: rmw ${st?.rmw}, rmwBlocksRead ${st?.rmwBlocksRead}, unaligned ${st?.unaligned}`);
  await c.disconnect();
  await session.close();
  await target.close();

  const spdk = await open('spdk');
  const d = await NbdTestClient.connect({ port: spdk.port }, 'nvme0n1');
  for (let i = 0; i < 1000; i++) if ((await d.request(Cmd.READ, (i % 256) * 4096, 4096)).error !== 0) throw new Error('read failed');
  const q = spdk.session.controller.stats().io[0];
  console.log(`SPDK-style target (--c2h-success spdk), 1000 NBD reads of 4 KiB: I/O queue ${JSON.stringify(q)}`);
  await d.disconnect();
  await spdk.session.close();
  await spdk.target.close();
}

runMain('rmw-bench', main);
