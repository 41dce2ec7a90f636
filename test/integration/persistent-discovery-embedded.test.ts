/**
 * Persistent discovery and config files against the embedded target (host only): `connect-all
 * -p --disconnect-removed` hands a discovery controller to a `daemon` child process; a subsystem
 * added at runtime (Discovery Log Page Change AEN) is connected, a removed one disconnected, a
 * referral followed (and a referral loop back is harmless), the discovery controller's own loss
 * repaired, the daemon's restart restores it (discovery.json); `connect-all` with no address
 * reads --config (discovery.conf lines and config.json), exits 1 when an entry fails, refuses a
 * bad file with its CFG_ERR_* code before connecting anything; `list --dump-config`.
 */
import { before, after, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { NvmeTarget } from '../../src/embedded-target/target';
import type { SubsystemConfig } from '../../src/embedded-target/target';
import { freePort } from '../helpers/guest';
import { runCli, startDaemonProcess } from '../helpers/daemon-proc';
import type { CliResult } from '../helpers/daemon-proc';

const MAIN = path.resolve(__dirname, '../../src/cli/main.js');
const P = 'nqn.2014-08.org.nvmf-nbd:pd-';
const HOSTNQN = 'nqn.2014-08.org.nvmexpress:uuid:11111111-2222-4333-8444-555555555555';
const ID = ['-q', HOSTNQN, '-I', '11111111-2222-4333-8444-555555555555'];

let dir = '';
let stateDir = '';
let control = '';
let p1 = 0;
let t1: NvmeTarget | undefined;
let t2: NvmeTarget | undefined;
let daemon: ChildProcess | undefined;
let daemonErr = '';

const sub = (name: string): SubsystemConfig => ({ nqn: `${P}${name}`, namespaces: [{ sizeBytes: 1 << 20, backing: { memory: true } }] });

/** Run one CLI verb to completion. */
function cli(args: string[], timeoutMs = 30_000): Promise<CliResult> {
  return runCli(args, { NVMF_NBD_STATE_DIR: stateDir, NVMF_NBD_NVME_DIR: path.join(dir, 'etc') }, timeoutMs);
}

/** Start the daemon; resolve once it printed its ready line. */
function startDaemon(): Promise<ChildProcess> {
  return startDaemonProcess(['--control', control, '--no-config'], {
    env: { NVMF_NBD_STATE_DIR: stateDir }, readyTimeoutMs: 15_000, onStderr: (c) => { daemonErr += c; }, stderr: () => daemonErr,
  });
}

async function stopDaemon(): Promise<void> {
  const d = daemon;
  daemon = undefined;
  if (d === undefined || d.exitCode !== null) return;
  const done = new Promise((r) => d.once('exit', r));
  d.kill('SIGTERM');
  await done;
}

interface Listed {
  controllers: Array<{ name: string; state: string; subnqn: string; args?: Record<string, unknown> }>;
  discovery: Array<{ name: string; state: string; notify: boolean | null; referrals: string[]; reconnects: number; notices: number; controllers: string[] }>;
}

async function list(): Promise<Listed> {
  const r = await cli(['list', '-o', 'json', '--control', control]);
  assert.equal(r.code, 0, r.err);
  return JSON.parse(r.out) as Listed;
}

/** Poll `list` until `ok` holds (events on another process: no timing assertion, a generous bound). */
async function until(what: string, ok: (l: Listed) => boolean, timeoutMs = 60_000): Promise<Listed> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const l = await list();
    if (ok(l)) return l;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}: ${JSON.stringify(l)}\n${daemonErr.slice(-3000)}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

const live = (l: Listed, name: string): boolean => l.controllers.some((c) => c.subnqn === `${P}${name}` && c.state === 'live');
const has = (l: Listed, name: string): boolean => l.controllers.some((c) => c.subnqn === `${P}${name}`);

before(async () => {
  dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'pd-embedded-'));
  stateDir = path.join(dir, 'state');
  control = path.join(dir, 'control.sock');
  await fsp.mkdir(path.join(dir, 'etc'));
  p1 = await freePort();
  t1 = new NvmeTarget({ listen: { host: '127.0.0.1', port: p1 }, subsystems: [sub('a')] });
  await t1.listen();
  t2 = new NvmeTarget({ listen: { host: '127.0.0.1', port: 0 }, subsystems: [sub('c')] });
  await t2.listen();
  daemon = await startDaemon();
});

after(async () => {
  await stopDaemon();
  await t1?.close();
  await t2?.close();
  await fsp.rm(dir, { recursive: true, force: true });
});

const T = { timeout: 90_000 };

test('connect-all -p: the discovery controller stays in the daemon (AEN enabled) and its subsystems are connected', T, async () => {
  const r = await cli(['connect-all', '-a', '127.0.0.1', '-s', String(p1), ...ID, '-p', '--disconnect-removed', '-i', '1', '-c', '1', '--control', control]);
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /^disc0: persistent discovery 127\.0\.0\.1:\d+; controllers: nvme0/m);
  const l = await until('a live', (x) => live(x, 'a'));
  assert.equal(l.discovery[0]?.state, 'live');
  // Stable names: the namespace's identifiers (CNS 03h) and the by-id name are listed.
  const ex = (l.controllers[0] as unknown as { exports: Array<{ ids: { uuid: string; nguid: string; eui64: string }; stableId: string; udevLink: string }> }).exports[0];
  assert.match(ex?.ids.uuid ?? '', /^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  assert.match(ex?.ids.nguid ?? '', /^[0-9a-f]{32}$/);
  assert.match(ex?.ids.eui64 ?? '', /^[0-9a-f]{16}$/);
  assert.equal(ex?.stableId, ex?.ids.uuid);
  assert.equal(ex?.udevLink, `/dev/disk/by-id/nvmf-nbd-${ex?.ids.uuid ?? ''}`);
  assert.equal(l.discovery[0]?.notify, true, 'the embedded discovery controller offers the log-change AEN');
  const human = await cli(['list', '--control', control]);
  assert.match(human.out, /DISCOVERY +STATE +ADDRESS/);
  assert.match(human.out, /disc0 +live +127\.0\.0\.1:\d+ .* yes /);
  // Idempotent: the same discovery controller again is the existing one.
  const again = await cli(['connect-all', '-a', '127.0.0.1', '-s', String(p1), ...ID, '-p', '--control', control]);
  assert.equal(again.code, 0, again.err);
  assert.match(again.out, /disc0: .*\(already running\)/);
});

test('a subsystem added on the target appears without any command; a removed one is disconnected (--disconnect-removed)', T, async () => {
  await t1!.addSubsystemAtRuntime(sub('b'));
  const l = await until('b live', (x) => live(x, 'b'));
  assert.ok((l.discovery[0]?.notices ?? 0) >= 1, 'driven by the AEN');
  await t1!.removeSubsystem(`${P}a`);
  await until('a gone', (x) => !has(x, 'a') && live(x, 'b'));
});

test('a referral is followed; a referral loop back to the first service is harmless', T, async () => {
  const p2 = t2!.address()!.port;
  t1!.addReferral('127.0.0.1', p2);
  const l = await until('c (via referral) live', (x) => live(x, 'c'));
  assert.deepEqual(l.discovery[0]?.referrals, [`127.0.0.1:${p2}`]);
  t2!.addReferral('127.0.0.1', p1);
  await t1!.addSubsystemAtRuntime(sub('d'));
  await until('d live', (x) => live(x, 'd') && live(x, 'c'));
});

test("the discovery controller's own loss is repaired (reconnect, then the log is re-read)", T, async () => {
  await t1!.close();
  t1 = new NvmeTarget({ listen: { host: '127.0.0.1', port: p1 }, subsystems: [sub('b'), sub('d'), sub('e')] });
  await t1.listen();
  const l = await until('e live after the discovery controller reconnected', (x) => live(x, 'e') && x.discovery[0]?.state === 'live');
  assert.ok((l.discovery[0]?.reconnects ?? 0) >= 1);
});

test('a daemon restart brings the persistent discovery controller back (discovery.json, no secrets)', T, async () => {
  await stopDaemon();
  const saved = await fsp.readFile(path.join(stateDir, 'discovery.json'), 'utf8');
  assert.match(saved, /"disconnectRemoved": true/);
  daemon = await startDaemon();
  const l = await until('disc0 live and e live after restart', (x) => x.discovery[0]?.state === 'live' && live(x, 'e'));
  assert.equal(l.discovery[0]?.name, 'disc0');
});

test('connect-all with no address reads --config (discovery.conf and config.json); any failed entry → exit 1', T, async () => {
  const p2 = t2!.address()!.port;
  await t2!.addSubsystemAtRuntime(sub('f'));
  const closed = await freePort();
  const json = path.join(dir, 'config.json');
  await fsp.writeFile(json, JSON.stringify([{ hostnqn: HOSTNQN, hostid: '11111111-2222-4333-8444-555555555555', subsystems: [
    { nqn: `${P}f`, ports: [{ transport: 'tcp', traddr: '127.0.0.1', trsvcid: String(p2), nr_io_queues: 1 }] },
  ] }]));
  const ok = await cli(['connect-all', '--config', json, '--control', control]);
  assert.equal(ok.code, 0, ok.err);
  await until('f live', (x) => live(x, 'f'));
  // discovery.conf lines: one reachable (t2: c and f already connected → idempotent), one not.
  const conf = path.join(dir, 'discovery.conf');
  await fsp.writeFile(conf, `# test\n-t tcp -a 127.0.0.1 -s ${p2} -q ${HOSTNQN}\n-t tcp -a 127.0.0.1 -s ${closed} -q ${HOSTNQN}\n`);
  const partial = await cli(['connect-all', '--config', conf, '--control', control]);
  assert.equal(partial.code, 1, 'one entry failed');
  assert.match(partial.err, new RegExp(`${conf.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:3: .*NVMF_ERR_CONNECT_FAILED`));
  assert.match(partial.err, /already connected as nvme/);
});

test('a bad config file is refused with its CFG_ERR_* code and location, and nothing of it is connected', T, async () => {
  const before = (await list()).controllers.map((c) => c.name);
  const p2 = t2!.address()!.port;
  await t2!.addSubsystemAtRuntime(sub('g'));
  const conf = path.join(dir, 'bad.conf');
  await fsp.writeFile(conf, `-t tcp -a 127.0.0.1 -s ${p2}\n-t tcp -a 127.0.0.1 -s ${p2} --frobnicate\n`);
  const r = await cli(['connect-all', '--config', conf, '--control', control]);
  assert.equal(r.code, 1);
  assert.match(r.err, /bad\.conf:2: unknown flag '--frobnicate' \(CFG_ERR_UNKNOWN_KEY\)/);
  assert.deepEqual((await list()).controllers.map((c) => c.name), before, 'the good first line was not applied');
  // Default files: with none, connect-all without -a is a usage error naming -a.
  const none = await cli(['connect-all', '--control', control]);
  assert.equal(none.code, 2);
  assert.match(none.err, /-a\/--traddr is required/);
});

test('list --dump-config prints what is connected as config.json (libnvme layout, no secrets)', T, async () => {
  const r = await cli(['list', '--dump-config', '--control', control]);
  assert.equal(r.code, 0, r.err);
  const j = JSON.parse(r.out) as Array<{ hostnqn: string; subsystems: Array<{ nqn: string; ports: Array<{ transport: string; traddr: string; trsvcid: string }> }> }>;
  assert.equal(j[0]?.hostnqn, HOSTNQN);
  const nqns = j.flatMap((h) => h.subsystems.map((s) => s.nqn));
  for (const n of ['b', 'd', 'e', 'f']) assert.ok(nqns.includes(`${P}${n}`), `${n} in ${nqns.join(' ')}`);
  assert.equal(j[0]?.subsystems[0]?.ports[0]?.transport, 'tcp');
  assert.equal(typeof j[0]?.subsystems[0]?.ports[0]?.trsvcid, 'string');
});

test('discover -p prints the log and leaves the discovery controller with the daemon (connecting nothing)', T, async () => {
  const p2 = t2!.address()!.port;
  const before = (await list()).controllers.length;
  const r = await cli(['discover', '-a', '127.0.0.1', '-s', String(p2), ...ID, '-p', '--control', control]);
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /Discovery Log Number of Records/);
  assert.match(r.err, /disc\d: persistent discovery controller kept by the daemon/);
  const l = await until('the watch-only discovery controller live', (x) => x.discovery.some((d) => d.state === 'live' && (d as { watchOnly?: boolean }).watchOnly === true));
  const w = l.discovery.find((d) => (d as { watchOnly?: boolean }).watchOnly === true);
  assert.deepEqual(w?.controllers, []);
  assert.equal(l.controllers.length, before);
  // disconnect -d discN removes a discovery controller (its controllers stay).
  const d = await cli(['disconnect', '-d', w!.name, '--control', control]);
  assert.equal(d.code, 0, d.err);
  assert.equal((await list()).discovery.some((x) => x.name === w!.name), false);
});

test('the daemon applies the config at start (--config); a bad config stops it with its CFG_ERR_* code', T, async () => {
  const p2 = t2!.address()!.port;
  await t2!.addSubsystemAtRuntime(sub('h'));
  const alt = path.join(dir, 'alt');
  const json = path.join(dir, 'start.json');
  await fsp.writeFile(json, JSON.stringify([{ hostnqn: HOSTNQN, subsystems: [{ nqn: `${P}h`, ports: [{ transport: 'tcp', traddr: '127.0.0.1', trsvcid: String(p2), nr_io_queues: 1 }] }] }]));
  const env = { ...process.env, NVMF_NBD_STATE_DIR: path.join(alt, 'state') };
  const altControl = path.join(alt, 'c.sock');
  await fsp.mkdir(alt, { recursive: true });
  const child = spawn(process.execPath, [MAIN, 'daemon', '--control', altControl, '--config', json], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d: Buffer) => { out += d.toString(); });
  try {
    for (let i = 0; i < 300 && !out.includes('daemon ready'); i++) await new Promise((r) => setTimeout(r, 100));
    assert.match(out, /daemon ready: .*1 config entry/);
    const saved = control;
    control = altControl;
    try {
      await until('h live from the config at start', (x) => live(x, 'h'));
    } finally {
      control = saved;
    }
  } finally {
    const done = new Promise((r) => child.once('exit', r));
    child.kill('SIGTERM');
    await done;
  }
  const badFile = path.join(dir, 'bad-start.json');
  await fsp.writeFile(badFile, '[{"hostnqn": "nqn.x:h", "subsystems": [{"nqn": "nqn.x:s", "ports": [{"transport": "tcp", "traddr": "127.0.0.1", "trsvcid": "nope"}]}]}]');
  const bad = await new Promise<{ code: number | null; err: string }>((resolve) => {
    const c = spawn(process.execPath, [MAIN, 'daemon', '--control', path.join(alt, 'c2.sock'), '--config', badFile], { env, stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    c.stderr.on('data', (d: Buffer) => { err += d.toString(); });
    c.on('exit', (code) => resolve({ code, err }));
  });
  assert.equal(bad.code, 1);
  assert.match(bad.err, /bad-start\.json:\$\[0\]\.subsystems\[0\]\.ports\[0\]\.trsvcid: .*\(CFG_ERR_BAD_VALUE\)/);
});
