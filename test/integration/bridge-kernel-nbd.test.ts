/**
 * The mission's acceptance test: the full kernel path.
 *
 *   guest ext4 ─▶ /dev/nbd0 (guest kernel nbd, nbd-client) ──NBD/TCP 10.0.2.100:10809──guestfwd──▶
 *   bridge on the host (this process, 127.0.0.1:B) ──NVMe/TCP 127.0.0.1:A──hostfwd──▶
 *   guest nvmet :4420 ──▶ null_blk (memory)
 *
 * mkfs.ext4, mount, write files, sync, unmount, drop caches, remount, checksums match; detach;
 * then the same with `nbd-client -C 4` (multi-connection) on the file system made before; and
 * after each detach the data is checked where it lives: the ext4 superblock read through a
 * second NBD client on the host, and the nvmet backing device mounted read-only in the guest.
 */
import { before, after, test } from 'node:test';
import assert from 'node:assert/strict';
import type { ControllerSession } from '../../src/engine/session';
import { need } from '../helpers/prereq';
import { Guest, GUEST_HOST_ALIAS, freePort, guestAvailable, setupNvmet, shq } from '../helpers/guest';
import { NbdTestClient } from '../helpers/nbd-test-client';
import { MiB, NvmeTap, openBridge } from '../helpers/bridge';

const NQN = 'nqn.2014-08.org.nvmf-nbd:bridge-kernel-nbd';
const SIZE_MIB = 64;
const GUEST_NBD_PORT = 10809;
const avail = guestAvailable();

let g: Guest | undefined;
let session: ControllerSession | undefined;
let tap: NvmeTap | undefined;
let nbdPort = 0;
const t0 = Date.now();
let readyMs = 0;
/** `sha256sum` lines of the files written in the first round (checked again in the second). */
let round1Sums = '';

const backingDev = `$(cat ${shq(`/sys/kernel/config/nvmet/subsystems/${NQN}/namespaces/1/device_path`)})`;
const attachCmd = (extra: string): string =>
  `nbd-client ${GUEST_HOST_ALIAS} ${GUEST_NBD_PORT} /dev/nbd0 -N nvme0n1 -b 512${extra}`;

before(async () => {
  if (!avail.ok) return;
  // The guestfwd target port must be known at boot; the bridge binds it once nvmet is up.
  nbdPort = await freePort();
  g = await Guest.start({
    hostfwd: [{ hostPort: 0, guestPort: 4420 }],
    guestfwd: [{ guestPort: GUEST_NBD_PORT, hostPort: nbdPort }],
  });
  await setupNvmet(g, { subsystems: [{ nqn: NQN, namespaces: [{ nsid: 1, sizeMiB: SIZE_MIB }] }] });
  // The bridge dials nvmet through a tap that records the NVMe commands it sends.
  tap = await NvmeTap.start(g.hostPorts[0] as number);
  session = await openBridge({ trsvcid: tap.port, subnqn: NQN, nbd: { tcp: { host: '127.0.0.1', port: nbdPort } } });
  await g.exec('modprobe nbd && test -b /dev/nbd0 && mkdir -p /mnt/nbd /mnt/direct');
  readyMs = Date.now() - t0;
}, { timeout: 300_000 });

after(async () => {
  try {
    // Detach first (a mounted device would hold the bridge's connections open), best effort.
    await g?.exec('umount /mnt/nbd 2>/dev/null; umount /mnt/direct 2>/dev/null; nbd-client -d /dev/nbd0 2>/dev/null; true', { timeoutMs: 30_000, check: false }).catch(() => undefined);
    await session?.close();
    await tap?.close();
  } finally {
    await g?.stop();
  }
}, { timeout: 120_000 });

function exportStats() {
  assert.ok(session !== undefined);
  const s = session.stats().find((x) => x.name === 'nvme0n1');
  assert.ok(s !== undefined, 'stats of nvme0n1');
  return s;
}

/** Wait until the bridge sees `n` NBD connections on the export (connects and closes go through guestfwd's nc). */
async function waitConnections(n: number, ms = 15_000): Promise<void> {
  const end = Date.now() + ms;
  while (exportStats().connections !== n) {
    if (Date.now() > end) assert.fail(`expected ${n} NBD connections, the bridge has ${exportStats().connections}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Parse `sha256sum` output into sorted lines. */
function sums(out: string): string {
  const lines = out.trim().split('\n').map((l) => l.trim()).filter((l) => l !== '').sort();
  for (const l of lines) assert.match(l, /^[0-9a-f]{64} {2}\S+$/, `sha256sum line: ${l}`);
  return lines.join('\n');
}

/** Checks after a detach: the bridge dropped the connections, the kernel device is free. */
async function checkDetached(guest: Guest): Promise<void> {
  await waitConnections(0);
  const { out } = await guest.exec('cat /sys/block/nbd0/size; test -e /sys/block/nbd0/pid && echo attached || echo free');
  assert.deepEqual(out.trim().split('\n'), ['0', 'free']);
}

/**
 * The data is on the nvmet namespace itself: the ext4 superblock magic read through a second,
 * independent NBD client on the host, and the files' checksums from the backing device mounted
 * read-only in the guest (no nbd, no bridge).
 */
async function checkOnTarget(guest: Guest, expectSums: string): Promise<void> {
  const c = await NbdTestClient.connect({ host: '127.0.0.1', port: nbdPort }, 'nvme0n1');
  try {
    const sb = await c.read(1024, 1024);
    assert.equal(sb.readUInt16LE(1080 - 1024), 0xef53, 'ext4 superblock magic at byte 1080');
  } finally {
    await c.disconnect();
  }
  // Buffered reads of the backing device would see a stale guest page cache: drop it first.
  const r = await guest.exec(
    [
      'set -e',
      'sync; echo 3 > /proc/sys/vm/drop_caches',
      `dev=${backingDev}`,
      'blockdev --flushbufs "$dev"',
      'e2fsck -fn "$dev" >/tmp/fsck.out 2>&1 || { cat /tmp/fsck.out; exit 1; }',
      'mount -t ext4 -o ro,noload "$dev" /mnt/direct',
      'cd /mnt/direct; sha256sum f*; cd /; umount /mnt/direct',
    ].join('\n'),
    { timeoutMs: 120_000 },
  );
  assert.equal(sums(r.out), expectSums, 'files read from the nvmet backing device');
}

test('kernel nbd → bridge → nvmet: mkfs.ext4, files survive unmount, drop caches and remount; detach', { timeout: 300_000 }, async (t) => {
  if (!need(t, avail.ok, avail.reason)) return;
  assert.ok(g !== undefined && session !== undefined, 'the before hook did not set up the guest and bridge');
  t.diagnostic(`guest boot + nvmet + bridge ready in ${readyMs} ms`);
  const before = { ...exportStats() };
  const tapFrom = tap?.commands.length ?? 0;
  const t1 = Date.now();

  await g.exec(attachCmd(''), { timeoutMs: 60_000 });
  await waitConnections(1);
  const size = await g.exec('cat /sys/block/nbd0/size; cat /sys/block/nbd0/queue/logical_block_size');
  assert.deepEqual(size.out.trim().split('\n'), [String((SIZE_MIB * MiB) / 512), '512']);

  await g.exec('mkfs.ext4 -q -F /dev/nbd0 && mount -t ext4 /dev/nbd0 /mnt/nbd', { timeoutMs: 120_000 });
  const w = await g.exec(
    [
      'set -e',
      'for i in 1 2 3; do dd if=/dev/urandom of=/mnt/nbd/f$i bs=1M count=4 2>/dev/null; done',
      'cd /mnt/nbd; sha256sum f1 f2 f3; cd /',
      'sync',
      'umount /mnt/nbd',
    ].join('\n'),
    { timeoutMs: 120_000 },
  );
  round1Sums = sums(w.out);
  assert.equal(round1Sums.split('\n').length, 3);
  // Nothing of the files may come from a cache now: only from the bridge.
  const r = await g.exec(
    [
      'set -e',
      'echo 3 > /proc/sys/vm/drop_caches',
      'mount -t ext4 /dev/nbd0 /mnt/nbd',
      'cd /mnt/nbd; sha256sum f1 f2 f3; cd /',
      'umount /mnt/nbd',
    ].join('\n'),
    { timeoutMs: 120_000 },
  );
  assert.equal(sums(r.out), round1Sums, 'checksums after drop caches and remount');

  const mid = exportStats();
  assert.ok(mid.bytesWritten - before.bytesWritten >= 12 * MiB, `bridge saw the 12 MiB of files written (${mid.bytesWritten - before.bytesWritten})`);
  assert.ok(mid.bytesRead - before.bytesRead >= 12 * MiB, `bridge served the 12 MiB read back (${mid.bytesRead - before.bytesRead})`);
  assert.ok(mid.flushes > before.flushes, 'sync/umount sent NBD FLUSH (the kernel enabled its write cache)');
  assert.ok(mid.trims > before.trims, 'mkfs.ext4 discarded the device through NBD TRIM');
  assert.equal(mid.errors, before.errors, 'no NBD request failed');
  // The kernel's cache control reached NVMe: jbd2 commits with PREFLUSH|FUA (NBD FLUSH + FUA),
  // mkfs's discard became Deallocate.
  assert.ok(tap !== undefined);
  const n = tap.counts(tapFrom);
  assert.equal(tap.parseErrors, 0, 'the tap decoded every PDU');
  assert.ok(n.flushes >= 1, `NVMe Flush sent (${JSON.stringify(n)})`);
  assert.ok(n.fuaWrites >= 1, `NVMe Writes with FUA sent (${JSON.stringify(n)})`);
  assert.ok(n.deallocates >= 1, `NVMe Deallocate sent (${JSON.stringify(n)})`);
  t.diagnostic(`NVMe commands in round 1: ${JSON.stringify(n)}`);

  await g.exec('nbd-client -d /dev/nbd0', { timeoutMs: 60_000 });
  await checkDetached(g);
  t.diagnostic(`round 1 (attach, mkfs, 12 MiB written and read back, detach) ${Date.now() - t1} ms`);
  await checkOnTarget(g, round1Sums);
});

test('kernel nbd with -C 4: four connections, the earlier file system and new files intact; detach', { timeout: 300_000 }, async (t) => {
  if (!need(t, avail.ok, avail.reason)) return;
  assert.ok(g !== undefined && session !== undefined, 'the before hook did not set up the guest and bridge');
  assert.notEqual(round1Sums, '', 'the single-connection test wrote the files this one reads');
  const before = { ...exportStats() };
  const t1 = Date.now();

  await g.exec(attachCmd(' -C 4'), { timeoutMs: 60_000 });
  await waitConnections(4);
  const w = await g.exec(
    [
      'set -e',
      'mount -t ext4 /dev/nbd0 /mnt/nbd',
      'cat > /tmp/round1.sha256 <<EOF',
      round1Sums,
      'EOF',
      'cd /mnt/nbd; sha256sum -c /tmp/round1.sha256 >/dev/null',
      // Four writers at once, so requests are in flight together.
      'for i in 4 5 6 7; do dd if=/dev/urandom of=/mnt/nbd/f$i bs=1M count=2 2>/dev/null & done; wait',
      'sha256sum f*; cd /',
      'sync',
      'umount /mnt/nbd',
    ].join('\n'),
    { timeoutMs: 120_000 },
  );
  const all = sums(w.out);
  assert.equal(all.split('\n').length, 7);
  for (const l of round1Sums.split('\n')) assert.ok(all.includes(l), `round-1 file still there: ${l}`);
  const r = await g.exec(
    [
      'set -e',
      'echo 3 > /proc/sys/vm/drop_caches',
      'mount -t ext4 /dev/nbd0 /mnt/nbd',
      'cd /mnt/nbd; sha256sum f*; cd /',
      'umount /mnt/nbd',
    ].join('\n'),
    { timeoutMs: 120_000 },
  );
  assert.equal(sums(r.out), all, 'checksums after drop caches and remount over 4 connections');
  const mid = exportStats();
  assert.ok(mid.bytesWritten - before.bytesWritten >= 8 * MiB, 'bridge saw the 8 MiB of new files');
  assert.equal(mid.errors, before.errors, 'no NBD request failed');

  await g.exec('nbd-client -d /dev/nbd0', { timeoutMs: 60_000 });
  await checkDetached(g);
  t.diagnostic(`round 2 (-C 4, 8 MiB written, everything read back, detach) ${Date.now() - t1} ms`);
  await checkOnTarget(g, all);
});
