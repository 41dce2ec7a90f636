/**
 * NVMe/TCP TLS with the Linux 6.12 kernel as the *host*, and the daemon over TLS (one 6.12
 * guest for the file):
 *
 *   - the guest's `nvme connect --tls` (tlshd, the PSK put into .nvme by nvme-cli from a key in
 *     our interchange format) to our embedded target with TLS required, through the guest's
 *     forward to the host: mkfs.ext4, mount, a file written, its checksum read back after a
 *     remount, `nvme disconnect`. This works because the target sends no TLS 1.3
 *     NewSessionTicket (src/tls/channel.ts): the 6.12 host fails on any post-handshake record.
 *   - the daemon (`nvmf-nbd daemon`) connects with `--tls --keyring` to the embedded TLS target
 *     and with `--tls-key FILE` to the guest's nvmet TLS-required port; data moves through both
 *     NBD exports; no key material in the daemon's output, `list -o json`, the state file.
 */
import { before, after, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { NvmeTarget } from '../../src/embedded-target/target';
import { targetPskTable } from '../../src/tls/target-keys';
import { deriveTlsPsk, formatInterchangeKey, parseInterchangeKey } from '../../src/tls/psk';
import { need } from '../helpers/prereq';
import { GUEST_HOST_ALIAS, Guest, guestAvailable, insertGuestTlsKey, setupNvmet, shq } from '../helpers/guest';
import { NbdTestClient } from '../helpers/nbd-test-client';

const NQN = 'nqn.2014-08.org.nvmf-nbd:tls-linux-host';
const GNQN = 'nqn.2014-08.org.nvmf-nbd:tls-guest-nvmet';
const HOSTNQN = 'nqn.2014-08.org.nvmexpress:uuid:7a2c9e14-3b5d-4f60-9d21-8e4f5a6b7c81';
const HOSTID = '7a2c9e14-3b5d-4f60-9d21-8e4f5a6b7c81';
/** Fresh per run: nothing in the repository is a usable key. */
const SECRET = randomBytes(32);
const KEY = formatInterchangeKey(SECRET, 1);
const MAIN = path.resolve(__dirname, '../../src/cli/main.js');
const MiB = 1 << 20;

const avail = guestAvailable('6.12');
let g: Guest | undefined;
let target: NvmeTarget | undefined;
const targetLog: string[] = [];
let nvmetPort = 0;
let dir = '';

before(async () => {
  if (!avail.ok) return;
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tls-linux-host-'));
  const table = targetPskTable(`${HOSTNQN} ${KEY}\n`, [NQN]);
  target = new NvmeTarget({
    listen: { host: '127.0.0.1', port: 0 },
    subsystems: [{ nqn: NQN, namespaces: [{ nsid: 1, sizeBytes: 64 * MiB, backing: { memory: true } }] }],
    tls: { mode: 'required', lookup: (id) => table.get(id) },
    // A TLS handshake by tlshd under TCG on a loaded machine takes seconds.
    connectTimeoutMs: 60_000,
    log: (level, msg) => targetLog.push(`${level} ${msg}`),
  });
  const { port } = await target.listen();
  g = await Guest.start({ kernel: '6.12', guestfwd: [{ guestPort: 4420, hostPort: port }], hostfwd: [{ hostPort: 0, guestPort: 4420 }] });
  nvmetPort = g.hostPorts[0] as number;
}, { timeout: 900_000 });

after(async () => {
  await g?.stop();
  await target?.close();
  if (dir !== '') fs.rmSync(dir, { recursive: true, force: true });
});

const prereq = (t: Parameters<typeof need>[0]): boolean => need(t, avail.ok, avail.reason);

test('Linux 6.12 host: nvme connect --tls to our TLS-required target, mkfs.ext4, mount, checksums, disconnect', { timeout: 400_000 }, async (t) => {
  if (!prereq(t)) return;
  const guest = g as Guest;
  // The kernel host looks up `NVMe0R01 <hostnqn> <subnqn>` in .nvme by default.
  await insertGuestTlsKey(guest, { key: KEY, hostnqn: HOSTNQN, subnqn: NQN, identity: 0 });
  const before = (target as NvmeTarget).stats().connectionsTotal;
  const c = await guest.exec(`nvme connect -t tcp -a ${GUEST_HOST_ALIAS} -s 4420 -n ${NQN} -q ${HOSTNQN} -I ${HOSTID} --tls 2>&1; echo rc=$?`, { timeoutMs: 240_000, check: false });
  const why = async (): Promise<string> => `${c.out}\n${(await guest.exec('dmesg | tail -20; tail -20 /tmp/tlshd.log', { check: false })).out}\ntarget log:\n${targetLog.slice(-20).join('\n')}`;
  assert.match(c.out, /rc=0/, `nvme connect --tls failed:\n${await why()}`);
  const r = await guest.exec([
    'set -e',
    'i=0; while [ ! -b /dev/nvme0n1 ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done',
    'cat /sys/class/nvme/nvme0/subsysnqn',
    // The kernel's own view: the admin queue runs over TLS with a PSK from .nvme.
    'echo "tls_key $(cat /sys/class/nvme/nvme0/tls_key 2>/dev/null || echo none)"',
    'mkfs.ext4 -q -F /dev/nvme0n1',
    'mkdir -p /mnt/t && mount /dev/nvme0n1 /mnt/t',
    'dd if=/dev/urandom of=/mnt/t/data bs=1M count=8 2>/dev/null',
    'a=$(sha256sum /mnt/t/data | cut -d" " -f1)',
    'umount /mnt/t && echo 3 > /proc/sys/vm/drop_caches && mount /dev/nvme0n1 /mnt/t',
    'b=$(sha256sum /mnt/t/data | cut -d" " -f1)',
    'umount /mnt/t',
    'echo "sum $a $b"',
    `nvme disconnect -n ${NQN}`,
  ].join('\n'), { timeoutMs: 300_000, check: false });
  assert.equal(r.code, 0, `${r.out}\n${await why()}`);
  assert.match(r.out, new RegExp(`^${NQN}$`, 'm'));
  assert.match(r.out, /^tls_key [0-9a-f]{8}$/m, `the kernel host did not use a TLS key:\n${r.out}`);
  const m = /sum (\w{64}) (\w{64})/.exec(r.out);
  assert.ok(m !== null, r.out);
  assert.equal(m[1], m[2], 'checksum after remount differs');
  assert.match(r.out, /disconnected 1 controller/);
  // Admin + I/O queues (the guest has one CPU: one I/O queue), each its own TLS handshake.
  assert.ok((target as NvmeTarget).stats().connectionsTotal - before >= 2);
  assert.ok(!targetLog.some((l) => l.includes('TLS handshake') && l.includes('failed')), targetLog.join('\n'));
});

/** Run one CLI verb to completion. */
function cli(args: string[], stateDir: string, timeoutMs = 120_000): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [MAIN, ...args], { env: { ...process.env, NVMF_NBD_STATE_DIR: stateDir }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`nvmf-nbd ${args.join(' ')} timed out\n${out}\n${err}`)); }, timeoutMs);
    child.stdout.on('data', (d: Buffer) => { out += d.toString(); });
    child.stderr.on('data', (d: Buffer) => { err += d.toString(); });
    child.on('exit', (code) => { clearTimeout(timer); resolve({ code, out, err }); });
  });
}

async function nbdRoundTrip(sockPath: string, exportName: string, offset: number): Promise<void> {
  const data = randomBytes(MiB);
  const c = await NbdTestClient.connect({ path: sockPath }, exportName, 60_000);
  try {
    await c.write(offset, data);
    await c.flush();
  } finally {
    await c.disconnect();
  }
  const c2 = await NbdTestClient.connect({ path: sockPath }, exportName, 60_000);
  try {
    assert.ok((await c2.read(offset, MiB)).equals(data), `${exportName}: read back differs`);
  } finally {
    await c2.disconnect();
  }
}

test('daemon over TLS: --tls --keyring to the embedded target, --tls-key to Linux nvmet; data moves; no secret in logs, list, state', { timeout: 600_000 }, async (t) => {
  if (!prereq(t)) return;
  const guest = g as Guest;
  const stateDir = path.join(dir, 'state');
  const control = path.join(dir, 'run', 'control.sock');
  // Guest side: nvmet with TLS required; .nvme gets both identity versions of the same key.
  const gkey = formatInterchangeKey(randomBytes(32), 1);
  for (const v of [0, 1] as const) await insertGuestTlsKey(guest, { key: gkey, hostnqn: HOSTNQN, subnqn: GNQN, identity: v });
  await setupNvmet(guest, { subsystems: [{ nqn: GNQN, namespaces: [{ nsid: 1, sizeMiB: 16 }] }], tls: 'required' });
  // Host side: our key store holds the embedded target's derived TLS PSK (identity v1) ...
  const keyring = path.join(dir, 'tls-keys');
  const ins = await cli(['check-tls-key', '--insert', '-d', KEY, '-n', HOSTNQN, '-c', NQN, '-I', '1', '--keyring', keyring], stateDir);
  assert.equal(ins.code, 0, ins.err);
  // ... and a key file for the guest (handed to the daemon as a key-store reference).
  const keyFile = path.join(dir, 'guest.key');
  fs.writeFileSync(keyFile, gkey, { mode: 0o600 });

  let daemonOut = '';
  let daemonErr = '';
  const daemon: ChildProcess = spawn(process.execPath, [MAIN, 'daemon', '--control', control, '--no-config'], { env: { ...process.env, NVMF_NBD_STATE_DIR: stateDir }, stdio: ['ignore', 'pipe', 'pipe'] });
  daemon.stdout?.on('data', (d: Buffer) => { daemonOut += d.toString(); });
  daemon.stderr?.on('data', (d: Buffer) => { daemonErr += d.toString(); });
  try {
    await new Promise<void>((resolve, reject) => {
      const tick = setInterval(() => { if (daemonOut.includes('daemon ready')) { clearInterval(tick); resolve(); } }, 50);
      daemon.once('exit', (code) => { clearInterval(tick); reject(new Error(`daemon exited ${String(code)}: ${daemonErr}`)); });
    });
    const tport = String((target as NvmeTarget).address()?.port);
    const id = ['-q', HOSTNQN, '-I', HOSTID, '--control', control, '-o', 'json'];
    const a = await cli(['connect', '-t', 'tcp', '-a', '127.0.0.1', '-s', tport, '-n', NQN, '--tls', '--keyring', keyring, ...id], stateDir);
    assert.equal(a.code, 0, `${a.err}\n${daemonErr}`);
    const b = await cli(['connect', '-t', 'tcp', '-a', '127.0.0.1', '-s', String(nvmetPort), '-n', GNQN, '--tls-key', keyFile, '--ctrl-loss-tmo', '60', ...id], stateDir, 240_000);
    assert.equal(b.code, 0, `${b.err}\n${daemonErr}`);
    const listed = await cli(['list', '-o', 'json', '--control', control], stateDir);
    assert.equal(listed.code, 0, listed.err);
    const ctrls = (JSON.parse(listed.out) as { controllers: Array<{ subnqn: string; state: string; exports: Array<{ name: string; endpoint: string }> }> }).controllers;
    for (const nqn of [NQN, GNQN]) {
      const c = ctrls.find((x) => x.subnqn === nqn);
      assert.ok(c !== undefined && c.state === 'live', `${nqn} not live: ${listed.out}`);
      const ep = c.exports[0]?.endpoint ?? '';
      assert.match(ep, /^unix:/);
      await nbdRoundTrip(ep.slice('unix:'.length), c.exports[0]!.name, 4 * MiB);
    }
    // The embedded target saw TLS queues for this host and refused nothing.
    assert.ok(!targetLog.some((l) => /TLS_IDENTITY_MISMATCH|handshake .* failed/.test(l)), targetLog.join('\n'));

    // Secrets: neither configured key (interchange text, base64 body, raw hex) nor a derived
    // TLS PSK appears in anything the daemon wrote or said.
    const derived = [deriveTlsPsk(parseInterchangeKey(KEY), HOSTNQN, NQN, 1), deriveTlsPsk(parseInterchangeKey(gkey), HOSTNQN, GNQN, 1), deriveTlsPsk(parseInterchangeKey(gkey), HOSTNQN, GNQN, 0)];
    const needles = [KEY, gkey].flatMap((k) => [k, k.split(':')[2]!.slice(0, 24), parseInterchangeKey(k).key.toString('hex')])
      .concat(derived.flatMap((p) => [p.psk.toString('base64').slice(0, 24), p.psk.toString('hex')]));
    const stateFiles = fs.readdirSync(stateDir).filter((f) => f.endsWith('.json')).map((f) => path.join(stateDir, f));
    assert.ok(stateFiles.length >= 1, `no state file in ${stateDir}`);
    const haystacks: Array<[string, string]> = [['daemon stdout', daemonOut], ['daemon stderr', daemonErr], ['list -o json', listed.out],
      ['connect output', a.out + a.err + b.out + b.err], ...stateFiles.map((f): [string, string] => [f, fs.readFileSync(f, 'utf8')])];
    for (const [what, text] of haystacks) {
      for (const n of needles) assert.ok(!text.includes(n), `key material in ${what}`);
    }
    const state = fs.readFileSync(path.join(stateDir, 'state.json'), 'utf8');
    assert.match(state, /keyring/, 'the state file should hold a key-store reference');
    const d = await cli(['disconnect-all', '--control', control], stateDir);
    assert.equal(d.code, 0, d.err);
  } finally {
    daemon.kill('SIGTERM');
    await new Promise((r) => { if (daemon.exitCode !== null || daemon.signalCode !== null) r(undefined); else daemon.once('exit', r); });
  }
});
