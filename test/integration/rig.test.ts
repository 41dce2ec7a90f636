/**
 * Smoke test of the QEMU rig itself: the guest boots, its command channel reports exit codes
 * and output, the kernel peers are there (nbd, nvme-cli), and the guest's nvmet answers an
 * NVMe/TCP ICReq on the host-forwarded port.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as net from 'node:net';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn, type ChildProcess } from 'node:child_process';
import { need, haveCommand } from '../helpers/prereq';
import {
  Guest,
  guestAvailable,
  freePort,
  setupNvmet,
  addNvmetNamespace,
  removeNvmetNamespace,
  removeNvmetPort,
  addNvmetPort,
} from '../helpers/guest';

const NQN = 'nqn.2014-08.org.nvmf-nbd:rig-smoke';
const avail = guestAvailable();
let g: Guest | undefined;
let bootMs = 0;
let shareDir: string | undefined;
let echoSrv: net.Server | undefined;
let nbdkit: ChildProcess | undefined;
let nbdkitPort = 0;

before(async () => {
  if (!avail.ok) return;
  shareDir = fs.mkdtempSync(path.join(os.tmpdir(), 'nvmf-nbd-rig-share-'));
  fs.writeFileSync(path.join(shareDir, 'hello.js'), "console.log('node in guest', process.version, 6 * 7);\n");
  // A host service the guest reaches through guestfwd: answers "pong <what it read>".
  echoSrv = net.createServer((c) => c.once('data', (d) => c.end(`pong ${d.toString().trim()}\n`)));
  await new Promise<void>((resolve) => echoSrv!.listen(0, '127.0.0.1', resolve));
  const echoPort = (echoSrv.address() as net.AddressInfo).port;
  // A reference NBD server on the host, for the guest's kernel nbd client (when installed).
  if (haveCommand('nbdkit')) {
    nbdkitPort = await freePort();
    nbdkit = spawn('nbdkit', ['-f', '-i', '127.0.0.1', '-p', String(nbdkitPort), 'memory', '16M'], { stdio: 'ignore' });
  }
  const t0 = Date.now();
  g = await Guest.start({
    hostfwd: [{ hostPort: 0, guestPort: 4420 }],
    guestfwd: [{ guestPort: 10809, hostPort: echoPort }, ...(nbdkit ? [{ guestPort: 10810, hostPort: nbdkitPort }] : [])],
    share: shareDir,
  });
  bootMs = Date.now() - t0;
  await setupNvmet(g, {
    subsystems: [{ nqn: NQN, namespaces: [{ nsid: 1, sizeMiB: 16 }, { nsid: 2, sizeMiB: 32 }] }],
  });
}, { timeout: 300_000 });

after(async () => {
  await g?.stop();
  await g?.stop(); // twice is harmless
  echoSrv?.close();
  nbdkit?.kill();
  if (shareDir !== undefined) fs.rmSync(shareDir, { recursive: true, force: true });
});

/** Send a hand-made 128-byte ICReq and collect the 128-byte answer. */
function icExchange(port: number): Promise<Buffer> {
  const icreq = Buffer.alloc(128);
  icreq.writeUInt8(0x00, 0); // type ICReq
  icreq.writeUInt8(0, 1); // flags
  icreq.writeUInt8(128, 2); // hlen
  icreq.writeUInt8(0, 3); // pdo
  icreq.writeUInt32LE(128, 4); // plen
  icreq.writeUInt16LE(0, 8); // pfv
  icreq.writeUInt8(0, 10); // hpda
  icreq.writeUInt8(0, 11); // no digests
  icreq.writeUInt32LE(0, 12); // maxr2t (0-based)
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let got = 0;
    const s = net.connect(port, '127.0.0.1', () => s.write(icreq));
    s.setTimeout(20_000, () => s.destroy(new Error('no ICResp within 20 s')));
    s.on('data', (d: Buffer) => {
      chunks.push(d);
      got += d.length;
      if (got >= 128) {
        s.destroy();
        resolve(Buffer.concat(chunks).subarray(0, 128));
      }
    });
    s.on('error', reject);
    s.on('close', () => {
      if (got < 128) reject(new Error(`connection closed after ${got} bytes`));
    });
  });
}

test('guest boots and its nvmet answers ICReq with ICResp on the forwarded port', { timeout: 60_000 }, async (t) => {
  if (!need(t, avail.ok, avail.reason) || g === undefined) return;
  t.diagnostic(`boot-to-ready ${bootMs} ms (incl. image check)`);
  assert.equal(g.hostPorts.length, 1);
  const resp = await icExchange(g.hostPorts[0]!);
  assert.equal(resp.readUInt8(0), 0x01, 'ICResp type');
  assert.equal(resp.readUInt8(2), 128, 'ICResp hlen');
  assert.equal(resp.readUInt32LE(4), 128, 'ICResp plen');
  assert.equal(resp.readUInt16LE(8), 0, 'pfv');
  const maxh2cdata = resp.readUInt32LE(12);
  assert.ok(maxh2cdata >= 4096 && maxh2cdata % 4 === 0, `maxh2cdata ${maxh2cdata}`);
});

test('nvmet exports the two namespaces with the requested sizes', { timeout: 60_000 }, async (t) => {
  if (!need(t, avail.ok, avail.reason) || g === undefined) return;
  const base = `/sys/kernel/config/nvmet/subsystems/${NQN}/namespaces`;
  const { out } = await g.exec(
    `for n in 1 2; do d=$(cat ${base}/$n/device_path); echo "$n $(cat ${base}/$n/enable) $(blockdev --getsize64 $d)"; done`,
  );
  assert.deepEqual(out.trim().split('\n'), [`1 1 ${16 << 20}`, `2 1 ${32 << 20}`]);
});

test('exec reports exit codes and output, and survives failures', { timeout: 60_000 }, async (t) => {
  if (!need(t, avail.ok, avail.reason) || g === undefined) return;
  const r = await g.exec('echo out; echo err >&2; exit 3', { check: false });
  assert.equal(r.code, 3);
  assert.equal(r.out, 'out\nerr\n');
  await assert.rejects(g.exec('false'), /status 1/);
  const killed = await g.exec('sleep 30', { timeoutMs: 1000, check: false });
  assert.notEqual(killed.code, 0);
  // Output without a trailing newline and with marker-like text comes back exactly.
  const same = await g.exec("printf '@@END c0 0\\nno newline'");
  assert.equal(same.out, '@@END c0 0\nno newline');
  // A background child does not hold the reply, and its later output leaks into no other reply.
  // (The child waits for a file that only the next command creates: a reply that waited for it
  // would never come.)
  const bg = await g.exec('rm -f /tmp/go; (while [ ! -e /tmp/go ]; do sleep 0.1; done; echo late) & echo now', { timeoutMs: 10_000 });
  assert.equal(bg.out, 'now\n');
  const after = await g.exec('touch /tmp/go; sleep 1; echo next');
  assert.equal(after.out, 'next\n');
  // Queued calls run in order.
  const rs = await Promise.all([1, 2, 3].map((i) => g!.exec(`echo ${i}`)));
  assert.deepEqual(rs.map((x) => x.out), ['1\n', '2\n', '3\n']);
});

test('the kernel peers are there: nbd, nvme-cli, mkfs.ext4', { timeout: 60_000 }, async (t) => {
  if (!need(t, avail.ok, avail.reason) || g === undefined) return;
  await g.exec('modprobe nbd && test -b /dev/nbd0');
  const v = await g.exec('nvme version');
  assert.match(v.out, /nvme version/);
  const dev = `$(cat /sys/kernel/config/nvmet/subsystems/${NQN}/namespaces/1/device_path)`;
  const fsx = await g.exec(`mkfs.ext4 -q -F ${dev} && e2fsck -fn ${dev} >/dev/null 2>&1 && echo clean`);
  assert.equal(fsx.out.trim(), 'clean');
  const c = await g.exec('nbd-client -h 2>&1; true');
  assert.match(c.out, /nbd-client/);
});

test('namespaces and the port can change at runtime', { timeout: 60_000 }, async (t) => {
  if (!need(t, avail.ok, avail.reason) || g === undefined) return;
  const base = `/sys/kernel/config/nvmet/subsystems/${NQN}/namespaces`;
  await addNvmetNamespace(g, { nqn: NQN, nsid: 3, sizeMiB: 8 });
  assert.equal((await g.exec(`cat ${base}/3/enable`)).out.trim(), '1');
  await removeNvmetNamespace(g, { nqn: NQN, nsid: 3 });
  assert.equal((await g.exec(`test -e ${base}/3`, { check: false })).code, 1);
  await removeNvmetPort(g);
  await assert.rejects(icExchange(g.hostPorts[0]!));
  await addNvmetPort(g);
  const resp = await icExchange(g.hostPorts[0]!);
  assert.equal(resp.readUInt8(0), 0x01);
});

test('the shared folder and the host node run in the guest', { timeout: 60_000 }, async (t) => {
  if (!need(t, avail.ok, avail.reason) || g === undefined) return;
  const r = await g.exec('node /host/hello.js');
  assert.equal(r.out, `node in guest ${process.version} 42\n`);
  assert.equal((await g.exec('touch /host/x', { check: false })).code === 0, false, 'share is read-only');
});

test('guestfwd: the guest reaches a host loopback service at 10.0.2.100', { timeout: 60_000 }, async (t) => {
  if (!need(t, avail.ok, avail.reason) || g === undefined) return;
  const r = await g.exec('echo ping | nc 10.0.2.100 10809', { timeoutMs: 20_000 });
  assert.equal(r.out, 'pong ping\n');
});

test('the guest kernel attaches a host NBD export as /dev/nbd0 through guestfwd', { timeout: 90_000 }, async (t) => {
  if (!need(t, avail.ok, avail.reason) || g === undefined) return;
  if (!need(t, nbdkit !== undefined, 'nbdkit missing: run scripts/setup.sh')) return;
  await g.exec('modprobe nbd && nbd-client 10.0.2.100 10810 /dev/nbd0 -N "" -C 2', { timeoutMs: 30_000 });
  try {
    assert.equal((await g.exec('blockdev --getsize64 /dev/nbd0')).out.trim(), String(16 << 20));
    const w = await g.exec(
      'dd if=/dev/urandom of=/tmp/a bs=64k count=16 2>/dev/null && dd if=/tmp/a of=/dev/nbd0 bs=64k oflag=direct 2>/dev/null && ' +
        'dd if=/dev/nbd0 of=/tmp/b bs=64k count=16 iflag=direct 2>/dev/null && cmp /tmp/a /tmp/b && echo same',
    );
    assert.equal(w.out.trim(), 'same');
  } finally {
    await g.exec('nbd-client -d /dev/nbd0', { check: false });
  }
});

test('start fails fast and clearly when a fixed host port is taken', { timeout: 60_000 }, async (t) => {
  if (!need(t, avail.ok, avail.reason)) return;
  const srv = net.createServer();
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const port = (srv.address() as net.AddressInfo).port;
  try {
    await assert.rejects(Guest.start({ hostfwd: [{ hostPort: port, guestPort: 4420 }] }), (err: Error & { portClash?: boolean }) => {
      assert.equal(err.portClash, true);
      return true;
    });
  } finally {
    srv.close();
  }
});
