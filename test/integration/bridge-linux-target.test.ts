/**
 * The bridge in front of the Linux kernel's NVMe/TCP target (nvmet in the QEMU guest), checked
 * with Debian's real NBD clients on the host: nbdinfo, qemu-io, nbdcopy and fio's nbd engine.
 *
 *   host tools ──NBD/TCP 127.0.0.1──▶ bridge (this process) ──NVMe/TCP 127.0.0.1:A──hostfwd──▶
 *   guest nvmet :4420 ──▶ null_blk (memory)
 *
 * Every write is confirmed by reading the guest's null_blk device with O_DIRECT inside the
 * guest, not through the bridge.
 */
import { before, after, test } from 'node:test';
import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { ControllerSession } from '../../src/engine/session';
import { need } from '../helpers/prereq';
import { Guest, guestAvailable, setupNvmet, shq } from '../helpers/guest';
import { MiB, NvmeTap, defineHostClientTests, openBridge, type HostClientContext } from '../helpers/bridge';

const NQN = 'nqn.2014-08.org.nvmf-nbd:bridge-linux-target';
const SIZE_MIB = 64;
const avail = guestAvailable();

let g: Guest | undefined;
let session: ControllerSession | undefined;
let dir = '';
let ctx: HostClientContext | undefined;
let tap: NvmeTap | undefined;
const t0 = Date.now();

/** sha256 of a byte range of the nvmet namespace's backing device, read inside the guest. */
async function guestSha256(offset: number, length: number): Promise<string> {
  assert.ok(g !== undefined);
  assert.ok(offset % 4096 === 0 && length % 4096 === 0, 'guest reads are 4 KiB aligned');
  const dev = `$(cat ${shq(`/sys/kernel/config/nvmet/subsystems/${NQN}/namespaces/1/device_path`)})`;
  // O_DIRECT: nvmet's bdev backend bypasses the guest's page cache, so a cached read could be stale.
  const { out } = await g.exec(
    `dd if=${dev} iflag=direct bs=4096 skip=${offset / 4096} count=${length / 4096} 2>/dev/null | sha256sum`,
    { timeoutMs: 60_000 },
  );
  const m = /^([0-9a-f]{64})\b/.exec(out.trim());
  assert.ok(m !== null, `sha256sum output: ${out}`);
  return m[1] as string;
}

before(async () => {
  if (!avail.ok) return;
  dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'bridge-linux-target-'));
  g = await Guest.start({ hostfwd: [{ hostPort: 0, guestPort: 4420 }] });
  await setupNvmet(g, { subsystems: [{ nqn: NQN, namespaces: [{ nsid: 1, sizeMiB: SIZE_MIB }] }] });
  tap = await NvmeTap.start(g.hostPorts[0] as number);
  session = await openBridge({ trsvcid: tap.port, subnqn: NQN, nbd: { tcp: { host: '127.0.0.1', port: 0 } } });
  ctx = {
    session,
    exportName: 'nvme0n1',
    size: SIZE_MIB * MiB,
    blockSize: 512,
    scratchDir: dir,
    backingSha256: guestSha256,
    // Under TCG the guest target moves ~35–45 MiB/s: keep the data small.
    copyMiB: 16,
    fioMiB: 8,
    tap,
  };
}, { timeout: 300_000 });

after(async () => {
  try {
    await session?.close();
    await tap?.close();
  } finally {
    await g?.stop();
    if (dir !== '') await fsp.rm(dir, { recursive: true, force: true });
  }
}, { timeout: 120_000 });

const prereq = (t: Parameters<typeof need>[0]): boolean => need(t, avail.ok, avail.reason);

test('the bridge exports the nvmet namespace with the kernel target identity', { timeout: 30_000 }, (t) => {
  if (!prereq(t)) return;
  assert.ok(session !== undefined, 'the before hook did not set up the bridge');
  t.diagnostic(`guest boot + nvmet + bridge ready after ${Date.now() - t0} ms`);
  const d = session.describe() as { model: string; exports: Array<{ name: string; nsid: number; size: number; blockSize: number }> };
  // Linux nvmet identifies as "Linux" (model number) unless configured otherwise.
  assert.match(d.model, /^Linux/);
  assert.deepEqual(
    d.exports.map((e) => [e.name, e.nsid, e.size, e.blockSize]),
    [['nvme0n1', 1, SIZE_MIB * MiB, 512]],
  );
});

defineHostClientTests('Linux nvmet target', () => ctx, prereq, { timeoutScale: 2 });
