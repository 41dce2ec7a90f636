/**
 * The embedded target against the real Linux NVMe/TCP host (nvme-tcp + nvme-cli in the QEMU
 * guest): discovery, connect (with and without header/data digests), ext4 on the namespace,
 * files written and verified by checksum across remounts and reconnects, a file-backed second
 * namespace checked from the host side, a namespace hot-added through the AEN, and disconnect.
 */
import { strict as assert } from 'node:assert';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Guest, GUEST_HOST_ALIAS, guestAvailable } from '../helpers/guest';
import { need } from '../helpers/prereq';
import { NvmeTarget } from '../../src/embedded-target';

const NQN = 'nqn.2014-08.org.nvmf-nbd:linux-host-test';
const HOSTNQN = 'nqn.2014-08.org.nvmexpress:uuid:6c1b1a4e-3f51-4a38-9d0e-2b7f3c9a0d11';
const HOSTID = '6c1b1a4e-3f51-4a38-9d0e-2b7f3c9a0d11';
const FILE_NS_BYTES = 64 << 20;
const FILE_CHECK_BYTES = 4 << 20;

describe('target: Linux kernel NVMe/TCP host in the guest', { timeout: 900_000 }, () => {
  let target: NvmeTarget | undefined;
  let guest: Guest | undefined;
  let dir = '';
  const logs: string[] = [];
  let skipped = false;

  before(async () => {
    if (!guestAvailable().ok) {
      skipped = true;
      return;
    }
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nvmf-target-it-'));
    target = new NvmeTarget({
      listen: { host: '127.0.0.1', port: 0 },
      advertise: { host: GUEST_HOST_ALIAS, port: 4420 },
      subsystems: [{
        nqn: NQN,
        namespaces: [
          { nsid: 1, sizeBytes: 256 << 20, backing: { memory: true } },
          { nsid: 2, sizeBytes: FILE_NS_BYTES, lbaSize: 4096, backing: { file: path.join(dir, 'ns2.img') } },
        ],
      }],
      log: (level, msg) => logs.push(`${level}: ${msg}`),
    });
    const { port } = await target.listen();
    guest = await Guest.start({ guestfwd: [{ guestPort: 4420, hostPort: port }] });
    await guest.exec('modprobe nvme-tcp && test -e /dev/nvme-fabrics');
  });

  after(async () => {
    await guest?.stop();
    await target?.close();
    if (dir !== '') fs.rmSync(dir, { recursive: true, force: true });
  });

  const connectCmd = (digests: boolean): string =>
    `nvme connect -t tcp -a ${GUEST_HOST_ALIAS} -s 4420 -n ${NQN} -q ${HOSTNQN} -I ${HOSTID}${digests ? ' -g -G' : ''}`;

  /** Shell: wait up to 60 s for block device $1. */
  const waitDev = (dev: string): string =>
    `i=0; while [ ! -b ${dev} ]; do i=$((i+1)); [ $i -gt 600 ] && { echo "no ${dev}"; ls /dev; dmesg | tail -30; exit 1; }; sleep 0.1; done`;

  it('nvme discover lists our subsystem', async (t) => {
    if (!need(t, !skipped, guestAvailable().reason)) return;
    const g = guest!;
    const r = await g.exec(`nvme discover -t tcp -a ${GUEST_HOST_ALIAS} -s 4420 -q ${HOSTNQN}`, { timeoutMs: 60_000 });
    assert.match(r.out, new RegExp(`subnqn:\\s+${NQN.replace(/\./g, '\\.')}`));
    assert.match(r.out, /trsvcid:\s+4420/);
    assert.match(r.out, new RegExp(`traddr:\\s+${GUEST_HOST_ALIAS.replace(/\./g, '\\.')}`));
  });

  it('nvme connect; ext4 on nvme0n1; files verified after remount; file-backed nvme0n2 checked on the host', async (t) => {
    if (!need(t, !skipped, guestAvailable().reason)) return;
    const g = guest!;
    await g.exec(`set -e\n${connectCmd(false)}\n${waitDev('/dev/nvme0n1')}\n${waitDev('/dev/nvme0n2')}`, { timeoutMs: 90_000 });
    const size = await g.exec('cat /sys/block/nvme0n1/size /sys/block/nvme0n2/queue/logical_block_size');
    assert.deepEqual(size.out.trim().split(/\s+/), [String((256 << 20) / 512), '4096']);
    await g.exec([
      'set -e',
      'mkfs.ext4 -q -F /dev/nvme0n1',
      'mkdir -p /mnt/t',
      'mount -t ext4 /dev/nvme0n1 /mnt/t',
      'dd if=/dev/urandom of=/mnt/t/big bs=1M count=8 2>/dev/null',
      'dd if=/dev/urandom of=/mnt/t/small bs=1k count=37 2>/dev/null',
      'mkdir /mnt/t/d && echo hello > /mnt/t/d/h',
      'cd /mnt/t && sha256sum big small d/h > /tmp/sums && cd /',
      'sync',
      'umount /mnt/t',
      'echo 3 > /proc/sys/vm/drop_caches',
      'mount -t ext4 /dev/nvme0n1 /mnt/t',
      'cd /mnt/t && sha256sum -c /tmp/sums && cd /',
      'umount /mnt/t',
    ].join('\n'), { timeoutMs: 300_000 });
    // Namespace 2: raw random data, checksummed in the guest and compared with the host file.
    const n2 = await g.exec([
      'set -e',
      `dd if=/dev/urandom of=/tmp/r bs=1M count=${FILE_CHECK_BYTES >> 20} 2>/dev/null`,
      'dd if=/tmp/r of=/dev/nvme0n2 bs=1M conv=fsync 2>/dev/null',
      'echo 3 > /proc/sys/vm/drop_caches',
      `dd if=/dev/nvme0n2 bs=1M count=${FILE_CHECK_BYTES >> 20} 2>/dev/null | sha256sum`,
      'sha256sum < /tmp/r',
    ].join('\n'), { timeoutMs: 120_000 });
    const [readBack, written] = n2.out.trim().split('\n').map((l) => l.split(/\s+/)[0]);
    assert.equal(readBack, written, 'guest read back what it wrote to nvme0n2');
    const d = await g.exec(`nvme disconnect -n ${NQN}`, { timeoutMs: 60_000 });
    assert.match(d.out, /disconnected 1 controller/);
    const fd = fs.openSync(path.join(dir, 'ns2.img'), 'r');
    const buf = Buffer.alloc(FILE_CHECK_BYTES);
    fs.readSync(fd, buf, 0, buf.length, 0);
    fs.closeSync(fd);
    assert.equal(createHash('sha256').update(buf).digest('hex'), written, 'host file holds the guest data');
  });

  it('with header and data digests (-g -G): data survives reconnect; a hot-added namespace appears via AEN', async (t) => {
    if (!need(t, !skipped, guestAvailable().reason)) return;
    const g = guest!;
    await g.exec(`set -e\n${connectCmd(true)}\n${waitDev('/dev/nvme0n1')}`, { timeoutMs: 90_000 });
    const dg = await g.exec('cat /sys/class/nvme/nvme0/transport');
    assert.match(dg.out, /tcp/);
    assert.ok(logs.some((l) => / ICReq .*hdgst 1 ddgst 1$/.test(l)), 'the host negotiated both digests');
    await g.exec([
      'set -e',
      'mount -t ext4 /dev/nvme0n1 /mnt/t',
      'cd /mnt/t && sha256sum -c /tmp/sums && cd /',
      'dd if=/dev/urandom of=/mnt/t/big2 bs=1M count=8 2>/dev/null',
      'sha256sum /mnt/t/big2 > /tmp/sums2',
      'sync',
      'umount /mnt/t',
      'echo 3 > /proc/sys/vm/drop_caches',
      'mount -t ext4 /dev/nvme0n1 /mnt/t',
      'sha256sum -c /tmp/sums2',
      'umount /mnt/t',
    ].join('\n'), { timeoutMs: 300_000 });
    // nvme-cli admin pass-through against our controller.
    const cli = await g.exec([
      'set -e',
      'nvme id-ctrl /dev/nvme0 | grep -E "^(mn|subnqn|mdts|kas|ioccsz) "',
      'nvme id-ns /dev/nvme0n1 | grep -E "^nsze "',
      'nvme smart-log /dev/nvme0 | grep -iE "^temperature"',
      'nvme get-feature /dev/nvme0 -f 7',
      'nvme fw-log /dev/nvme0',
    ].join('\n'), { timeoutMs: 60_000 });
    assert.match(cli.out, /mn\s+:\s+nvmf-nbd target/);
    assert.match(cli.out, new RegExp(`subnqn\\s+:\\s+${NQN.replace(/\./g, '\\.')}`));
    assert.match(cli.out, /nsze\s+:\s+0x80000/);
    assert.match(cli.out, /temperature\s+:\s+2[67] ?°?C/i);
    const nsid = await target!.addNamespace(NQN, { nsid: 3, sizeBytes: 32 << 20, backing: { memory: true } });
    assert.equal(nsid, 3);
    // Opening the device waits for the kernel's partition scan (open_mutex): remove only after it.
    const n3 = await g.exec(`set -e\n${waitDev('/dev/nvme0n3')}\ncat /sys/block/nvme0n3/size\ndd if=/dev/nvme0n3 bs=4096 count=1 2>/dev/null | sha256sum`, { timeoutMs: 90_000 });
    const [sectors, sum] = n3.out.trim().split(/\s+/);
    assert.equal(sectors, String((32 << 20) / 512));
    assert.equal(sum, createHash('sha256').update(Buffer.alloc(4096)).digest('hex'), 'a fresh memory namespace reads zeroes');
    await target!.removeNamespace(NQN, 3);
    await g.exec('i=0; while [ -b /dev/nvme0n3 ]; do i=$((i+1)); [ $i -gt 600 ] && exit 1; sleep 0.1; done', { timeoutMs: 90_000 });
    const d = await g.exec(`nvme disconnect -n ${NQN}`, { timeoutMs: 60_000 });
    assert.match(d.out, /disconnected 1 controller/);
  });

  it('with --disable-sqflow reads complete through C2HData SUCCESS', async (t) => {
    if (!need(t, !skipped, guestAvailable().reason)) return;
    const g = guest!;
    await g.exec(`set -e\n${connectCmd(false)} --disable-sqflow\n${waitDev('/dev/nvme0n1')}`, { timeoutMs: 90_000 });
    assert.ok(logs.some((l) => /qid [1-9]\d* connected .*SQ flow control disabled/.test(l)), 'the I/O queue disabled SQ flow control');
    await g.exec([
      'set -e',
      'echo 3 > /proc/sys/vm/drop_caches',
      'mount -t ext4 -o ro /dev/nvme0n1 /mnt/t',
      'cd /mnt/t && sha256sum -c /tmp/sums && sha256sum -c /tmp/sums2 && cd /',
      'umount /mnt/t',
    ].join('\n'), { timeoutMs: 120_000 });
    const d = await g.exec(`nvme disconnect -n ${NQN}`, { timeoutMs: 60_000 });
    assert.match(d.out, /disconnected 1 controller/);
  });

  it('the target logged no protocol errors', (t) => {
    if (!need(t, !skipped, guestAvailable().reason)) return;
    const st = target!.stats();
    assert.equal(st.protocolErrors, 0, logs.filter((l) => l.startsWith('error')).join('\n'));
    assert.equal(st.dataDigestErrors, 0);
    assert.deepEqual(logs.filter((l) => l.startsWith('error')), []);
    assert.ok(st.writeCommands > 0 && st.readCommands > 0);
  });

  it('the kernel host logged no NVMe warnings', async (t) => {
    if (!need(t, !skipped, guestAvailable().reason)) return;
    const r = await guest!.exec('dmesg | grep -i nvme || true');
    assert.doesNotMatch(r.out, /failed|error|invalid|mismatch|reset|timeout|not supported/i, r.out);
  });
});
