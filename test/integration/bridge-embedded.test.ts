/**
 * The whole bridge (NBD server → block mapping → NVMe/TCP host → target) against Debian's real
 * NBD clients on the host, with the embedded target as the NVMe peer: the same checks as
 * bridge-linux-target.test.ts, fast and without a guest. The namespace is file-backed so every
 * write can be confirmed by reading the file, not through the bridge.
 *
 * Served twice, once over loopback TCP and once over a private Unix socket directory; the TCP
 * bridge also exports a second namespace with 4096-byte logical blocks.
 */
import { before, after } from 'node:test';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { NvmeTarget } from '../../src/target/target';
import type { ControllerSession } from '../../src/engine/session';
import { MiB, NvmeTap, defineHostClientTests, openBridge, sha256, type HostClientContext } from '../helpers/bridge';

const NQN = 'nqn.2014-08.org.nvmf-nbd:bridge-embedded';
const SIZE = 64 * MiB;

let dir = '';
let target: NvmeTarget | undefined;
let backing = '';
let backing4k = '';
let tap: NvmeTap | undefined;
const sessions: ControllerSession[] = [];
const ctx: { tcp?: HostClientContext; unix?: HostClientContext; tcp4k?: HostClientContext } = {};

async function fileSha256(file: string, offset: number, length: number): Promise<string> {
  const fh = await fsp.open(file, 'r');
  try {
    const b = Buffer.alloc(length);
    const { bytesRead } = await fh.read(b, 0, length, offset);
    // A sparse file shorter than the namespace reads as zeroes past its end, like the target.
    b.fill(0, bytesRead);
    return sha256(b);
  } finally {
    await fh.close();
  }
}

before(async () => {
  dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'bridge-embedded-'));
  backing = path.join(dir, 'ns1.img');
  backing4k = path.join(dir, 'ns2.img');
  target = new NvmeTarget({
    listen: { host: '127.0.0.1', port: 0 },
    subsystems: [{
      nqn: NQN,
      namespaces: [
        { nsid: 1, sizeBytes: SIZE, backing: { file: backing } },
        { nsid: 2, sizeBytes: SIZE, lbaSize: 4096, backing: { file: backing4k } },
      ],
    }],
  });
  const addr = await target.listen();
  // The TCP-served bridge dials through a tap, to see the NVMe commands it sends.
  tap = await NvmeTap.start(addr.port);
  for (const kind of ['tcp', 'unix'] as const) {
    const session = await openBridge({
      trsvcid: kind === 'tcp' ? tap.port : addr.port,
      subnqn: NQN,
      name: kind === 'tcp' ? 'nvme0' : 'nvme1',
      nbd: kind === 'tcp' ? { tcp: { host: '127.0.0.1', port: 0 } } : { unixDir: path.join(dir, 'run') },
    });
    sessions.push(session);
    const scratchDir = path.join(dir, kind);
    await fsp.mkdir(scratchDir);
    const c: HostClientContext = {
      session,
      exportName: `${session.name}n1`,
      size: SIZE,
      blockSize: 512,
      scratchDir,
      backingSha256: (o, l) => fileSha256(backing, o, l),
      copyMiB: 32,
      fioMiB: 16,
      tap: kind === 'tcp' ? tap : undefined,
    };
    ctx[kind] = c;
    if (kind === 'tcp') {
      const scratch4k = path.join(dir, 'tcp4k');
      await fsp.mkdir(scratch4k);
      ctx.tcp4k = { ...c, exportName: 'nvme0n2', blockSize: 4096, scratchDir: scratch4k, backingSha256: (o, l) => fileSha256(backing4k, o, l) };
    }
  }
}, { timeout: 60_000 });

after(async () => {
  for (const s of sessions) await s.close();
  await tap?.close();
  await target?.close();
  if (dir !== '') await fsp.rm(dir, { recursive: true, force: true });
}, { timeout: 60_000 });

defineHostClientTests('embedded target, NBD over TCP', () => ctx.tcp, () => true);
defineHostClientTests('embedded target, NBD over a Unix socket', () => ctx.unix, () => true);
defineHostClientTests('embedded target, 4096-byte LBA namespace', () => ctx.tcp4k, () => true);
