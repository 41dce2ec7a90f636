/**
 * The daemon as users run it: `nvmf-nbd daemon` as a child process with a private state
 * directory, the embedded target in this process as the NVMe peer, and the CLI verbs as child
 * processes talking to it over the control socket. Host only, no guest, a few seconds.
 *
 * Covers: connect hands off and returns; list -o json; NBD I/O through the daemon's export;
 * id-ctrl/id-ns/get-log/admin-passthru through the daemon; duplicate connect refused; disconnect
 * -d nvmeX; restart after SIGKILL reconnects from the state file at the same endpoint;
 * disconnect-all; the control socket's framing errors; SIGTERM → exit 0, socket removed; and
 * connect with no daemon staying in the foreground and saying so.
 */
import { before, after, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { NvmeTarget } from '../../src/embedded-target/target';
import { NbdTestClient } from '../helpers/nbd-test-client';
import { runCli, startDaemonProcess } from '../helpers/daemon-proc';
import type { CliResult } from '../helpers/daemon-proc';

const MAIN = path.resolve(__dirname, '../../src/cli/main.js');
const NQN1 = 'nqn.2014-08.org.nvmf-nbd:daemon-a';
const NQN2 = 'nqn.2014-08.org.nvmf-nbd:daemon-b';
const MiB = 1 << 20;

let dir = '';
let stateDir = '';
let control = '';
let port = 0;
let target: NvmeTarget | undefined;
let daemon: ChildProcess | undefined;
let daemonErr = '';

/** Run one CLI verb to completion. */
function cli(args: string[], timeoutMs = 20_000): Promise<CliResult> {
  return runCli(args, { NVMF_NBD_STATE_DIR: stateDir }, timeoutMs);
}

/** Start the daemon; resolve once it printed its ready line. */
function startDaemon(): Promise<ChildProcess> {
  return startDaemonProcess(['--control', control], {
    env: { NVMF_NBD_STATE_DIR: stateDir }, readyTimeoutMs: 15_000, onStderr: (c) => { daemonErr += c; }, stderr: () => daemonErr,
  });
}

function exited(child: ChildProcess, timeoutMs = 20_000): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve({ code: child.exitCode, signal: child.signalCode });
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('child did not exit')), timeoutMs);
    child.once('exit', (code, signal) => { clearTimeout(t); resolve({ code, signal }); });
  });
}

function connectArgs(nqn: string): string[] {
  return ['connect', '-t', 'tcp', '-a', '127.0.0.1', '-s', String(port), '-n', nqn, '-i', '1', '-c', '1', '--control', control];
}

interface Listed { name: string; state: string; subnqn: string; exports: Array<{ name: string; endpoint: string; device: string | null }>; queues: { admin: { commands: number }; io: unknown[] }; reconnects: number }

async function list(): Promise<Listed[]> {
  const r = await cli(['list', '-o', 'json', '--control', control]);
  assert.equal(r.code, 0, r.err);
  return (JSON.parse(r.out) as { controllers: Listed[] }).controllers;
}

async function nbdRoundTrip(sockPath: string, exportName: string, offset: number): Promise<void> {
  const data = randomBytes(MiB);
  const c = await NbdTestClient.connect({ path: sockPath }, exportName);
  try {
    await c.write(offset, data);
    await c.flush();
  } finally {
    await c.disconnect();
  }
  // A second connection reads what the first wrote: it went through the controller.
  const c2 = await NbdTestClient.connect({ path: sockPath }, exportName);
  try {
    assert.ok((await c2.read(offset, MiB)).equals(data));
  } finally {
    await c2.disconnect();
  }
}

before(async () => {
  dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'daemon-embedded-'));
  stateDir = path.join(dir, 'state');
  control = path.join(dir, 'run', 'control.sock');
  target = new NvmeTarget({
    listen: { host: '127.0.0.1', port: 0 },
    subsystems: [
      { nqn: NQN1, namespaces: [{ nsid: 1, sizeBytes: 64 * MiB, backing: { memory: true } }] },
      { nqn: NQN2, namespaces: [{ nsid: 1, sizeBytes: 32 * MiB, backing: { memory: true } }] },
    ],
  });
  port = (await target.listen()).port;
  daemon = await startDaemon();
}, { timeout: 30_000 });

after(async () => {
  if (daemon !== undefined && daemon.exitCode === null && daemon.signalCode === null) daemon.kill('SIGKILL');
  await target?.close();
  await fsp.rm(dir, { recursive: true, force: true });
}, { timeout: 30_000 });

test('the control socket is 0600 in a 0700 directory', { timeout: 5_000 }, async () => {
  assert.equal((await fsp.stat(control)).mode & 0o777, 0o600);
  assert.equal((await fsp.stat(path.dirname(control))).mode & 0o777, 0o700);
});

test('connect hands the connection off to the daemon and returns', { timeout: 30_000 }, async () => {
  const r = await cli([...connectArgs(NQN1), '-o', 'json']);
  assert.equal(r.code, 0, r.err);
  assert.ok(!r.err.includes('no daemon running'), r.err);
  const j = JSON.parse(r.out) as { name: string; exports: Array<{ name: string; endpoint: string }>; namespaces: unknown[] };
  assert.equal(j.name, 'nvme0');
  assert.equal(j.exports[0]?.name, 'nvme0n1');
  assert.equal(j.exports[0]?.endpoint, `unix:${path.join(stateDir, 'nbd', 'nvme0', 'nvme0n1.sock')}`);
  assert.equal(j.namespaces.length, 1);
  // The human form is the foreground connect's, too.
  const again = await cli(['connect', '-t', 'tcp', '-a', '127.0.0.1', '-s', String(port), '-n', NQN2, '-i', '1', '--control', control]);
  assert.equal(again.code, 0, again.err);
  assert.match(again.out, /^controller \d+: nqn\.2014-08\.org\.nvmf-nbd:daemon-b at 127\.0\.0\.1:\d+/);
  assert.match(again.out, /nvme1n1 +1 +32\.00 MiB/);
});

test('a second connect of the same subsystem is idempotent: exit 0, the existing controller printed', { timeout: 20_000 }, async () => {
  const r = await cli(connectArgs(NQN1));
  assert.equal(r.code, 0, r.err);
  assert.match(r.err, /already connected as nvme0/);
  assert.match(r.out, /^controller \d+: nqn\.2014-08\.org\.nvmf-nbd:daemon-a/);
  const q = await cli([...connectArgs(NQN1), '--quiet']);
  assert.equal(q.code, 0, q.err);
  assert.deepEqual([q.out, q.err], ['', '']);
  assert.deepEqual((await list()).map((c) => c.name), ['nvme0', 'nvme1'], 'no new controller');
});

test('list -o json shows controllers, state, exports and queue counters', { timeout: 20_000 }, async () => {
  const cs = await list();
  assert.deepEqual(cs.map((c) => [c.name, c.state, c.subnqn]), [['nvme0', 'live', NQN1], ['nvme1', 'live', NQN2]]);
  assert.equal(cs[0]?.exports[0]?.name, 'nvme0n1');
  assert.ok((cs[0]?.queues.admin.commands ?? 0) > 0);
  assert.equal(cs[0]?.queues.io.length, 1);
  const human = await cli(['list', '--control', control]);
  assert.match(human.out, /nvme0 +live +nqn\.2014-08\.org\.nvmf-nbd:daemon-a/);
  assert.match(human.out, /QID +COMMANDS/);
});

test('NBD I/O through the daemon\'s export reaches the controller', { timeout: 30_000 }, async () => {
  await nbdRoundTrip(path.join(stateDir, 'nbd', 'nvme0', 'nvme0n1.sock'), 'nvme0n1', 3 * MiB);
  const cs = await list();
  assert.ok((cs[0]?.queues.io[0] as { commands: number }).commands >= 16, 'the reads and writes ran on the I/O queue');
});

test('id-ctrl, id-ns, get-log and admin-passthru go through the daemon', { timeout: 30_000 }, async () => {
  const idc = await cli(['id-ctrl', 'nvme0', '-o', 'json', '--control', control]);
  assert.equal(idc.code, 0, idc.err);
  assert.equal((JSON.parse(idc.out) as { subnqn: string }).subnqn, NQN1);
  const idn = await cli(['id-ns', 'nvme0', '-n', '1', '-o', 'json', '--control', control]);
  assert.equal(idn.code, 0, idn.err);
  assert.equal((JSON.parse(idn.out) as { nsze: number }).nsze, (64 * MiB) / 512);
  const log = await cli(['get-log', 'nvme0', '-i', '2', '-l', '512', '-o', 'json', '--control', control]);
  assert.equal(log.code, 0, log.err);
  assert.equal((JSON.parse(log.out) as { length: number; data: string }).data.length, 1024);
  // Identify Controller (opcode 06h, CNS 1) by hand: bytes 768.. are the subsystem NQN.
  const pt = await cli(['admin-passthru', 'nvme0', '-O', '6', '--cdw10', '1', '-l', '4096', '-r', '-b', '--control', control]);
  assert.equal(pt.code, 0, pt.err);
  assert.ok(pt.out.includes(NQN1));
  const bad = await cli(['id-ctrl', 'nvme7', '--control', control]);
  assert.equal(bad.code, 1);
  assert.match(bad.err, /\(CLI_ERR_NO_SUCH_CONTROLLER\)/);
  const nsBad = await cli(['id-ns', 'nvme0', '-n', '9', '--control', control]);
  assert.equal(nsBad.code, 1);
  assert.match(nsBad.err, /\(NVMF_ERR_NAMESPACE_NOT_FOUND\)/);
});

test('the control socket answers framing errors with codes', { timeout: 10_000 }, async () => {
  const talk = (payload: Buffer): Promise<string> => new Promise((resolve, reject) => {
    const s = net.connect(control);
    let got = '';
    s.on('data', (d: Buffer) => { got += d.toString(); });
    s.on('close', () => resolve(got));
    s.on('error', reject);
    s.write(payload, () => { if (!payload.includes(0x0a, payload.length - 1)) return; s.end(); });
  });
  const r = (await talk(Buffer.from('{"id":3,"verb":"nope"}\nnot json\n{"id":4,"verb":"ping"}\n'))).trim().split('\n').map((l) => JSON.parse(l) as { id: number; ok: boolean; error?: { code: string } });
  assert.deepEqual(r.map((x) => [x.id, x.ok, x.error?.code]), [[3, false, 'CLI_ERR_CONTROL_UNKNOWN_VERB'], [0, false, 'CLI_ERR_CONTROL_PROTOCOL'], [4, true, undefined]]);
  // An oversized line: one error, then the daemon hangs up (without waiting for a newline).
  const big = await talk(Buffer.alloc((1 << 20) + 10, 0x61));
  assert.equal((JSON.parse(big.trim()) as { error: { code: string } }).error.code, 'CLI_ERR_CONTROL_LINE_TOO_LONG');
});

test('disconnect -d nvme0 detaches, closes and forgets it (state file too)', { timeout: 30_000 }, async () => {
  const r = await cli(['disconnect', '-d', 'nvme0', '--control', control]);
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /disconnected 1 controller\(s\): nvme0/);
  assert.deepEqual((await list()).map((c) => c.name), ['nvme1']);
  const st = JSON.parse(await fsp.readFile(path.join(stateDir, 'state.json'), 'utf8')) as { controllers: Array<{ name: string; args: { nqn: string } }> };
  assert.deepEqual(st.controllers.map((c) => [c.name, c.args.nqn]), [['nvme1', NQN2]]);
  const again = await cli(['disconnect', '-n', 'nqn.none', '--control', control]);
  assert.equal(again.code, 1);
  assert.match(again.err, /\(CLI_ERR_NO_SUCH_CONTROLLER\)/);
});

test('a daemon restarted after SIGKILL reconnects from the state file at the same endpoint', { timeout: 40_000 }, async () => {
  const d = daemon as ChildProcess;
  d.kill('SIGKILL');
  await exited(d);
  daemon = await startDaemon();
  // The reconnect runs in the background: wait for it.
  let cs: Listed[] = [];
  for (let i = 0; i < 100; i++) {
    cs = await list();
    if (cs[0]?.state === 'live') break;
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.deepEqual(cs.map((c) => [c.name, c.state, c.subnqn]), [['nvme1', 'live', NQN2]]);
  const sock = path.join(stateDir, 'nbd', 'nvme1', 'nvme1n1.sock');
  assert.equal(cs[0]?.exports[0]?.endpoint, `unix:${sock}`);
  await nbdRoundTrip(sock, 'nvme1n1', 0);
  // The next connect takes the lowest free name again.
  const r = await cli(connectArgs(NQN1));
  assert.equal(r.code, 0, r.err);
  assert.deepEqual((await list()).map((c) => c.name), ['nvme0', 'nvme1']);
});

test('disconnect-all closes every controller', { timeout: 30_000 }, async () => {
  const r = await cli(['disconnect-all', '--control', control]);
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /disconnected 2 controller\(s\)/);
  assert.deepEqual(await list(), []);
  const st = JSON.parse(await fsp.readFile(path.join(stateDir, 'state.json'), 'utf8')) as { controllers: unknown[] };
  assert.deepEqual(st.controllers, []);
});

test('SIGTERM: the daemon closes its controllers, removes the socket and exits 0', { timeout: 30_000 }, async () => {
  const r = await cli(connectArgs(NQN2));
  assert.equal(r.code, 0, r.err);
  const d = daemon as ChildProcess;
  d.kill('SIGTERM');
  const e = await exited(d);
  assert.deepEqual(e, { code: 0, signal: null }, daemonErr);
  await assert.rejects(fsp.stat(control), { code: 'ENOENT' });
  // Its controller shut down: the target has no controller left.
  assert.equal(target?.stats().controllers, 0);
  // The state file still names it, for the next start.
  const st = JSON.parse(await fsp.readFile(path.join(stateDir, 'state.json'), 'utf8')) as { controllers: Array<{ name: string }> };
  assert.deepEqual(st.controllers.map((c) => c.name), ['nvme0']);
  const l = await cli(['list', '--control', control]);
  assert.equal(l.code, 1);
  assert.match(l.err, /\(CLI_ERR_DAEMON_UNAVAILABLE\)/);
});

test('connect with no daemon stays in the foreground and says so', { timeout: 30_000 }, async () => {
  const child = spawn(process.execPath, [MAIN, ...connectArgs(NQN1), '-o', 'json', '--nbd', `unix:${path.join(dir, 'fg')}`], { env: { ...process.env, NVMF_NBD_STATE_DIR: stateDir }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stderr.on('data', (d: Buffer) => { err += d.toString(); });
  const doc = await new Promise<{ name: string }>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`no output: ${err}`)), 20_000);
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      try {
        const j = JSON.parse(out) as { name: string };
        clearTimeout(t);
        resolve(j);
      } catch {
        // not complete yet
      }
    });
  });
  assert.equal(doc.name, 'nvme0');
  assert.match(err, new RegExp(`no daemon running \\(${control.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\); staying in the foreground`));
  assert.equal(child.exitCode, null, 'still running in the foreground');
  child.kill('SIGINT');
  assert.deepEqual(await exited(child), { code: 0, signal: null });
});
