/**
 * The whole bridge (NBD server → block mapping → NVMe/TCP host → target) against Debian's real
 * NBD clients on the host, with the embedded target as the NVMe peer: the same checks as
 * bridge-linux-target.test.ts, fast and without a guest. The namespace is file-backed so every
 * write can be confirmed by reading the file, not through the bridge.
 *
 * Served twice, once over loopback TCP and once over a private Unix socket directory; the TCP
 * bridge also exports a second namespace with 4096-byte logical blocks.
 *
 * The two bridges dial two targets in the two foreign C2HData SUCCESS modes (the same backing
 * files): the TCP bridge keeps SQ flow control on against a target that behaves like SPDK's
 * nvmf_tgt (SUCCESS on every successful read), the Unix one disables SQ flow control against a
 * target that always sends a CapsuleResp. Every test of the suite runs against both.
 */
import { before, after, test } from 'node:test';
import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { NvmeTarget } from '../../src/embedded-target/target';
import { C2hSuccessMode } from '../../src/embedded-target';
import type { ControllerSession } from '../../src/engine/session';
import { MiB, NvmeTap, defineHostClientTests, openBridge, sha256, type HostClientContext } from '../helpers/bridge';

const NQN = 'nqn.2014-08.org.nvmf-nbd:bridge-embedded';
const SIZE = 64 * MiB;

let dir = '';
const targets: NvmeTarget[] = [];
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
  const ports: number[] = [];
  for (const c2hSuccess of [C2hSuccessMode.SPDK, C2hSuccessMode.ALWAYS_RESP]) {
    const target = new NvmeTarget({
      listen: { host: '127.0.0.1', port: 0 },
      c2hSuccess,
      subsystems: [{
        nqn: NQN,
        namespaces: [
          { nsid: 1, sizeBytes: SIZE, backing: { file: backing } },
          { nsid: 2, sizeBytes: SIZE, lbaSize: 4096, backing: { file: backing4k } },
        ],
      }],
    });
    targets.push(target);
    ports.push((await target.listen()).port);
  }
  // The TCP-served bridge dials through a tap, to see the NVMe commands it sends.
  tap = await NvmeTap.start(ports[0] as number);
  for (const kind of ['tcp', 'unix'] as const) {
    const session = await openBridge({
      trsvcid: kind === 'tcp' ? tap.port : ports[1] as number,
      disableSqFlowControl: kind === 'unix',
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
  for (const t of targets) await t.close();
  if (dir !== '') await fsp.rm(dir, { recursive: true, force: true });
}, { timeout: 60_000 });

defineHostClientTests('embedded target (SPDK-style SUCCESS, SQ flow control on), NBD over TCP', () => ctx.tcp, () => true);
defineHostClientTests('embedded target (always CapsuleResp, SQ flow control off), NBD over a Unix socket', () => ctx.unix, () => true);
defineHostClientTests('embedded target (SPDK-style SUCCESS), 4096-byte LBA namespace', () => ctx.tcp4k, () => true);

// Runs last (node:test keeps file order): the reads of the suites above were accounted as the
// two modes promise.
test('SPDK-style target: reads completed by SUCCESS with SQ flow control on are counted; always-resp: none', () => {
  const [spdk, resp] = sessions.map((s) => s.controller.stats());
  assert.ok(spdk !== undefined && resp !== undefined);
  const sum = (qs: typeof spdk.io, k: 'c2hSuccess' | 'c2hSuccessWithSqFlow'): number => qs.reduce((n, q) => n + q[k], 0);
  assert.ok(spdk.io.every((q) => q.sqFlowControl), 'the TCP bridge keeps SQ flow control');
  assert.ok(sum(spdk.io, 'c2hSuccessWithSqFlow') > 0, 'reads ended with SUCCESS while SQ flow control was on');
  assert.equal(sum(spdk.io, 'c2hSuccess'), sum(spdk.io, 'c2hSuccessWithSqFlow'));
  assert.ok(resp.io.every((q) => !q.sqFlowControl), 'the Unix bridge disabled SQ flow control');
  assert.equal(sum(resp.io, 'c2hSuccess'), 0, 'an always-resp target never sends SUCCESS');
  assert.ok(spdk.io.every((q) => q.errors === 0) && resp.io.every((q) => q.errors === 0));
});
