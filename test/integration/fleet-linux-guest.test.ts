/**
 * Fleet features against the Linux kernel peers in the 6.1 QEMU guest:
 *
 * - host side (the daemon on the host, nvmet in the guest reached through port forwards whose
 *   host and guest ports are equal, so only traddr needs --override-traddr): `connect-all` with
 *   only a discovery.conf connects every subsystem; `connect-all -p --disconnect-removed`: a
 *   subsystem linked into the nvmet port at runtime is connected by the bridge (nvmet's
 *   discovery-log-change AEN), an unlinked one is disconnected, a referral (nvmet
 *   `ports/N/referrals/`) to a second port is followed;
 * - guest side (the daemon inside the guest, attaching the guest's /dev/nbdX): the namespace's
 *   identifiers (nvmet's UUID via CNS 03h), the daemon's udev-less by-id link, the guest's
 *   nbd-client `-i` support (Debian 12's 3.24 has none: checked and recorded), and the udev
 *   helper run by hand on the guest's real /sys/block/nbdX.
 */
import { before, after, test } from 'node:test';
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { need } from '../helpers/prereq';
import { Guest, addNvmetNamespace, freePort, guestAvailable, setupNvmet, shq } from '../helpers/guest';
import { runCli, startDaemonProcess } from '../helpers/daemon-proc';
import type { CliResult } from '../helpers/daemon-proc';

const REPO = path.resolve(__dirname, '..', '..', '..');
const MAIN = path.join(REPO, 'dist', 'src', 'cli', 'main.js');
const P = 'nqn.2014-08.org.nvmf-nbd:fleet-';
const HOSTNQN = 'nqn.2014-08.org.nvmexpress:uuid:22222222-3333-4444-8555-666666666666';
const ID = ['-q', HOSTNQN, '-I', '22222222-3333-4444-8555-666666666666'];
const NVMET = '/sys/kernel/config/nvmet';

const avail = guestAvailable();
let g: Guest | undefined;
let p1 = 0;
let p2 = 0;
let dir = '';
let stateDir = '';
let control = '';
let daemon: ChildProcess | undefined;
let daemonErr = '';

/** Run one CLI verb to completion. */
function cli(args: string[], env: Record<string, string> = {}, timeoutMs = 120_000): Promise<CliResult> {
  return runCli(args, { NVMF_NBD_STATE_DIR: stateDir, NVMF_NBD_NVME_DIR: path.join(dir, 'etc'), ...env }, timeoutMs);
}

/** Start the daemon; resolve once it printed its ready line. */
function startDaemon(): Promise<ChildProcess> {
  return startDaemonProcess(['--control', control, '--no-config'], {
    env: { NVMF_NBD_STATE_DIR: stateDir }, readyTimeoutMs: 30_000, onStderr: (c) => { daemonErr += c; }, stderr: () => daemonErr,
  });
}

interface Listed {
  controllers: Array<{ name: string; state: string; subnqn: string }>;
  discovery: Array<{ name: string; state: string; notify: boolean | null; notices: number; referrals: string[] }>;
}

async function list(): Promise<Listed> {
  const r = await cli(['list', '-o', 'json', '--control', control]);
  assert.equal(r.code, 0, r.err);
  return JSON.parse(r.out) as Listed;
}

/** Poll until `ok` (events in the guest under TCG: generous bound, no timing assertion). */
async function until(what: string, ok: (l: Listed) => boolean, timeoutMs = 180_000): Promise<Listed> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const l = await list();
    if (ok(l)) return l;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}: ${JSON.stringify(l)}\n${daemonErr.slice(-3000)}`);
    await new Promise((r) => setTimeout(r, 500));
  }
}

const live = (l: Listed, n: string): boolean => l.controllers.some((c) => c.subnqn === `${P}${n}` && c.state === 'live');
const has = (l: Listed, n: string): boolean => l.controllers.some((c) => c.subnqn === `${P}${n}`);

/** Make subsystem `n` with one 16 MiB namespace (not linked to any port). */
async function makeSubsystem(n: string): Promise<void> {
  await g!.exec(`set -e; mkdir ${NVMET}/subsystems/${P}${n}; echo 1 > ${NVMET}/subsystems/${P}${n}/attr_allow_any_host`);
  await addNvmetNamespace(g!, { nqn: `${P}${n}`, nsid: 1, sizeMiB: 16 });
}

async function makePort(port: number): Promise<void> {
  const pd = `${NVMET}/ports/${port}`;
  await g!.exec(`set -e; mkdir ${pd}; echo tcp > ${pd}/addr_trtype; echo ipv4 > ${pd}/addr_adrfam; echo 0.0.0.0 > ${pd}/addr_traddr; echo ${port} > ${pd}/addr_trsvcid`);
}

const link = (n: string, port: number): Promise<unknown> => g!.exec(`ln -s ${NVMET}/subsystems/${P}${n} ${NVMET}/ports/${port}/subsystems/${P}${n}`);
const unlink = (n: string, port: number): Promise<unknown> => g!.exec(`rm ${NVMET}/ports/${port}/subsystems/${P}${n}`);

before(async () => {
  if (!avail.ok || !fs.existsSync(MAIN)) return;
  p1 = await freePort();
  do p2 = await freePort(); while (p2 === p1);
  dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'fleet-guest-'));
  stateDir = path.join(dir, 'state');
  control = path.join(dir, 'control.sock');
  await fsp.mkdir(path.join(dir, 'etc'));
  g = await Guest.start({ share: REPO, hostfwd: [{ hostPort: p1, guestPort: p1 }, { hostPort: p2, guestPort: p2 }] });
  // Port p1: subsystem a. Port p2: subsystem r only (reached through a referral).
  await setupNvmet(g, { port: p1, subsystems: [{ nqn: `${P}a`, namespaces: [{ nsid: 1, sizeMiB: 16 }] }] });
  await makeSubsystem('r');
  await makePort(p2);
  await link('r', p2);
  daemon = await startDaemon();
}, { timeout: 400_000 });

after(async () => {
  if (daemon !== undefined && daemon.exitCode === null) {
    const done = new Promise((r) => daemon!.once('exit', r));
    daemon.kill('SIGTERM');
    await done;
  }
  await g?.exec('for f in /tmp/*.pid; do [ -f "$f" ] && kill -TERM "$(cat "$f")" 2>/dev/null; done; sleep 2; true', { timeoutMs: 30_000, check: false }).catch(() => undefined);
  await g?.stop();
  if (dir !== '') await fsp.rm(dir, { recursive: true, force: true });
}, { timeout: 120_000 });

const T = { timeout: 400_000 };
const skip = (t: Parameters<typeof need>[0]): boolean => !need(t, avail.ok, avail.reason) || !need(t, fs.existsSync(MAIN), 'not built');

test('Linux nvmet: connect-all with only /etc/nvme/discovery.conf connects every subsystem', T, async (t) => {
  if (skip(t)) return;
  await fsp.writeFile(path.join(dir, 'etc', 'discovery.conf'), `# the guest's nvmet\n--transport=tcp --traddr=127.0.0.1 --trsvcid=${p1} --hostnqn=${HOSTNQN}\n`);
  const r = await cli(['connect-all', '--override-traddr', '127.0.0.1', '-i', '1', '--control', control]);
  assert.equal(r.code, 0, r.err);
  await until('a live', (l) => live(l, 'a'));
  const off = await cli(['disconnect-all', '--control', control]);
  assert.equal(off.code, 0, off.err);
});

test('Linux nvmet: connect-all -p — a subsystem linked at runtime is connected by the bridge, an unlinked one disconnected', T, async (t) => {
  if (skip(t)) return;
  const r = await cli(['connect-all', '-a', '127.0.0.1', '-s', String(p1), ...ID, '-p', '--disconnect-removed', '--override-traddr', '127.0.0.1', '-i', '1', '-c', '2', '--control', control]);
  assert.equal(r.code, 0, r.err);
  const l0 = await until('a live', (l) => live(l, 'a'));
  assert.equal(l0.discovery[0]?.notify, true, "nvmet's discovery controller offers the log-change AEN (OAES bit 31)");
  await makeSubsystem('b');
  await link('b', p1);
  const l1 = await until('b connected without any command', (l) => live(l, 'b'));
  assert.ok((l1.discovery[0]?.notices ?? 0) >= 1, 'driven by the AEN');
  await unlink('a', p1);
  await until('a disconnected (--disconnect-removed)', (l) => !has(l, 'a') && live(l, 'b'));
});

test('Linux nvmet: a referral (ports/N/referrals/) to a second port is followed', T, async (t) => {
  if (skip(t)) return;
  const rd = `${NVMET}/ports/${p1}/referrals/r1`;
  // The referral names the host-side forward of the guest's second port (127.0.0.1:p2).
  await g!.exec(`set -e; mkdir ${rd}; echo tcp > ${rd}/addr_trtype; echo ipv4 > ${rd}/addr_adrfam; echo 127.0.0.1 > ${rd}/addr_traddr; echo ${p2} > ${rd}/addr_trsvcid; echo 1 > ${rd}/enable`);
  const l = await until('r (behind the referral) live', (x) => live(x, 'r'));
  assert.deepEqual(l.discovery[0]?.referrals, [`127.0.0.1:${p2}`]);
});

test('guest: daemon-attached /dev/nbdX gets its by-id link; nbd-client -i support recorded; the udev helper names the device', T, async (t) => {
  if (skip(t)) return;
  const gcli = '/host/dist/src/cli/main.js';
  const env = 'NVMF_NBD_STATE_DIR=/tmp/st NVMF_NBD_NVME_DIR=/tmp/etc-nvme';
  await g!.exec(`mkdir -p /tmp/etc-nvme; ( ${env} node ${gcli} daemon --no-config >/tmp/gd.out 2>/tmp/gd.err </dev/null & echo $! > /tmp/gd.pid ) >/dev/null 2>&1 &`);
  await g!.exec('i=0; while ! grep -q "daemon ready" /tmp/gd.out 2>/dev/null && [ $i -lt 600 ]; do sleep 0.2; i=$((i+1)); done; grep -q "daemon ready" /tmp/gd.out || { cat /tmp/gd.err; exit 1; }', { timeoutMs: 150_000 });
  const c = await g!.exec(`${env} node ${gcli} connect -t tcp -a 127.0.0.1 -s ${p1} -n ${P}b ${ID.join(' ')} -i 1 --attach -o json`, { timeoutMs: 150_000, check: false });
  assert.equal(c.code, 0, c.out);
  const l = await g!.exec(`${env} node ${gcli} list -o json`, { timeoutMs: 120_000 });
  const ctl = (JSON.parse(l.out) as { controllers: Array<{ exports: Array<{ device: string; ids: { uuid?: string; nguid?: string }; stableId: string; link: string; udevLink: string }> }> }).controllers[0];
  const ex = ctl?.exports[0];
  assert.match(ex?.device ?? '', /^\/dev\/nbd\d+$/);
  // nvmet reports a UUID for every namespace (CNS 03h): that is the stable id.
  assert.match(ex?.ids.uuid ?? '', /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
  assert.equal(ex?.stableId, ex?.ids.uuid);
  assert.equal(ex?.link, `/tmp/st/by-id/nvmf-nbd-${ex?.stableId ?? ''}`);
  const rl = await g!.exec(`readlink ${shq(ex!.link)}`);
  assert.equal(rl.out.trim(), ex?.device);
  // Does this nbd-client know -i? (Debian 12's 3.24: no.) Record either way; the helper copes.
  const probe = await g!.exec('nbd-client -i x 2>&1; true');
  const sys = `/sys/block/${path.basename(ex!.device)}`;
  const backend = await g!.exec(`cat ${sys}/backend 2>/dev/null; true`);
  t.diagnostic(`guest nbd-client -i: ${/unrecognized option/.test(probe.out) ? 'unsupported (backend empty)' : `supported (backend '${backend.out.trim()}')`}`);
  if (!/unrecognized option/.test(probe.out)) assert.equal(backend.out.trim(), `nvmf-nbd-${ex?.stableId ?? ''}`);
  const h = await g!.exec(`NVMF_NBD_STATE_DIR=/tmp/st sh /host/udev/nvmf-nbd-id ${sys}`);
  assert.equal(h.out.trim(), `NVMF_NBD_ID=${ex?.stableId ?? ''}`);
  // Disconnect: detached, and the link is gone.
  const d = await g!.exec(`${env} node ${gcli} disconnect -n ${P}b`, { timeoutMs: 120_000 });
  assert.match(d.out, /disconnected 1 controller/);
  const gone = await g!.exec(`ls /tmp/st/by-id/; true`);
  assert.equal(gone.out.trim(), '');
});
