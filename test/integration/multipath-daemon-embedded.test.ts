/**
 * Host multipath through the daemon as users drive it (issue 12 item 1, "Checked by"): the
 * embedded target in this process with two ports (listeners) of one subsystem, `nvmf-nbd daemon`
 * as a child process, the CLI verbs as child processes.
 *
 * `nvmf-nbd connect` to both ports gives ONE export with two paths in `show-topology -o json`
 * (and in `list -o json`); an ANA change on the target (port 1 inaccessible) moves the I/O to
 * port 2 without an error reaching the NBD client (a write-verify loop runs across the change);
 * `disconnect -d nvmeX` of one path keeps the export working over the other; the daemon's state
 * file keeps both paths and a restarted daemon serves them again; `disconnect -n` removes all.
 * The fault scenarios (cuts, port removal, every path failing) are mp-tests' multipath-embedded.
 */
import { before, after, test } from 'node:test';
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { NvmeTarget } from '../../src/embedded-target/target';
import { NbdTestClient } from '../helpers/nbd-test-client';
import { runCli, startDaemonProcess } from '../helpers/daemon-proc';
import type { CliResult } from '../helpers/daemon-proc';
import type { TopologySubsystem } from '../../src/engine/topology';

const NQN = 'nqn.2014-08.org.nvmf-nbd:mp-daemon';
const HOSTNQN = 'nqn.2014-08.org.nvmexpress:uuid:7a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d';
const HOSTID = '7a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d';
const MiB = 1 << 20;

let dir = '';
let stateDir = '';
let control = '';
let target: NvmeTarget | undefined;
let daemon: ChildProcess | undefined;
let daemonErr = '';
const ports: number[] = [];

function cli(args: string[], timeoutMs = 30_000): Promise<CliResult> {
  return runCli([...args, '--control', control], { NVMF_NBD_STATE_DIR: stateDir }, timeoutMs);
}

function startDaemon(): Promise<ChildProcess> {
  return startDaemonProcess(['--control', control, '--no-config'], {
    env: { NVMF_NBD_STATE_DIR: stateDir }, readyTimeoutMs: 20_000, onStderr: (c) => { daemonErr += c; }, stderr: () => daemonErr,
  });
}

function connectArgs(port: number): string[] {
  return ['connect', '-t', 'tcp', '-a', '127.0.0.1', '-s', String(port), '-n', NQN, '-q', HOSTNQN, '-I', HOSTID, '-i', '1', '-k', '2', '-c', '1'];
}

async function topology(): Promise<TopologySubsystem[]> {
  const r = await cli(['show-topology', '-o', 'json']);
  assert.equal(r.code, 0, r.err);
  return (JSON.parse(r.out) as { subsystems: TopologySubsystem[] }).subsystems;
}

/** Wait for a condition re-read from the daemon (no fixed sleeps: the machine is loaded). */
async function until<T>(read: () => Promise<T>, ok: (v: T) => boolean, what: string, timeoutMs = 40_000): Promise<T> {
  const end = Date.now() + timeoutMs;
  let v = await read();
  while (!ok(v)) {
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}: ${JSON.stringify(v)}\n${daemonErr.slice(-2000)}`);
    await new Promise((r) => setTimeout(r, 100));
    v = await read();
  }
  return v;
}

/** The export's socket (as the daemon serves it by default). */
const SOCK = (): string => path.join(stateDir, 'nbd', 'nvme0', 'nvme0n1.sock');

/** Write, flush and read back `rounds` MiB at distinct offsets; every step must succeed. */
async function writeVerify(c: NbdTestClient, base: number, rounds: number): Promise<void> {
  for (let i = 0; i < rounds; i++) {
    const data = randomBytes(MiB);
    const off = base + (i % 8) * MiB;
    await c.write(off, data);
    await c.flush();
    assert.ok((await c.read(off, MiB)).equals(data), `round ${i}: read back what was written`);
  }
}

before(async () => {
  dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'mp-daemon-embedded-'));
  stateDir = path.join(dir, 'state');
  control = path.join(dir, 'run', 'control.sock');
  target = new NvmeTarget({
    ports: [{ id: 1, host: '127.0.0.1', port: 0 }, { id: 2, host: '127.0.0.1', port: 0 }],
    subsystems: [{ nqn: NQN, namespaces: [{ nsid: 1, sizeBytes: 64 * MiB, backing: { memory: true } }] }],
    log: () => undefined,
  });
  await target.listen();
  for (const p of target.ports()) ports.push(p.port);
  daemon = await startDaemon();
}, { timeout: 60_000 });

after(async () => {
  if (daemon !== undefined && daemon.exitCode === null && daemon.signalCode === null) daemon.kill('SIGKILL');
  await target?.close();
  await fsp.rm(dir, { recursive: true, force: true });
}, { timeout: 30_000 });

test('connect twice (two ports of one subsystem) → one export with two paths in show-topology and list', { timeout: 60_000 }, async () => {
  const a = await cli(connectArgs(ports[0] as number));
  assert.equal(a.code, 0, a.err);
  const b = await cli([...connectArgs(ports[1] as number), '-o', 'json']);
  assert.equal(b.code, 0, b.err);
  assert.match(b.err, /path nvme1 added to nvme0 \(2 paths/);
  const t = await until(topology, (x) => x[0]?.paths.every((p) => p.state === 'live') === true, 'both paths live');
  assert.equal(t.length, 1, 'one subsystem');
  const s = t[0] as TopologySubsystem;
  assert.deepEqual([s.name, s.nqn, s.hostnqn, s.iopolicy], ['nvme0', NQN, HOSTNQN, 'numa']);
  assert.deepEqual(s.paths.map((p) => [p.name, p.trsvcid]), [['nvme0', ports[0]], ['nvme1', ports[1]]]);
  assert.notEqual(s.paths[0]?.cntlid, s.paths[1]?.cntlid, 'two associations');
  assert.deepEqual(s.namespaces.map((n) => [n.export, n.paths.map((p) => [p.path, p.anaState])]), [['nvme0n1', [['nvme0', 'optimized'], ['nvme1', 'optimized']]]]);
  assert.equal(s.namespaces[0]?.paths.filter((p) => p.current).length, 1, 'one current path (numa)');
  const l = await cli(['list', '-o', 'json']);
  const lc = (JSON.parse(l.out) as { controllers: Array<{ name: string; paths: unknown[]; exports: Array<{ name: string; paths: unknown[] }> }> }).controllers;
  assert.deepEqual(lc.map((c) => [c.name, c.paths.length, c.exports.map((e) => [e.name, e.paths.length])]), [['nvme0', 2, [['nvme0n1', 2]]]]);
  const human = await cli(['show-topology']);
  assert.match(human.out, /^nvme0 - NQN=nqn\.2014-08\.org\.nvmf-nbd:mp-daemon$/m);
  assert.match(human.out, /nvme1 tcp traddr=127\.0\.0\.1,trsvcid=\d+ live optimized/);
});

test('a connect adding a path may not change the export\'s options (iopolicy, connections): CLI_ERR_PATH_OPTION_CONFLICT, nothing added', { timeout: 60_000 }, async () => {
  // Another source address makes it a new path of the connected subsystem.
  const r = await cli([...connectArgs(ports[0] as number), '--host-traddr', '127.0.0.1', '--iopolicy', 'round-robin', '--connections', '2']);
  assert.equal(r.code, 1, r.err);
  assert.match(r.err, /CLI_ERR_PATH_OPTION_CONFLICT/);
  assert.match(r.err, /--connections, --iopolicy differ/);
  const t = await topology();
  assert.deepEqual([t.length, t[0]?.paths.length, t[0]?.iopolicy], [1, 2, 'numa'], 'still one subsystem with its two paths, iopolicy unchanged');
});

test('an ANA change on the target moves I/O to the other port without an error reaching the NBD client', { timeout: 90_000 }, async () => {
  const t = target as NvmeTarget;
  const c = await NbdTestClient.connect({ path: SOCK() }, 'nvme0n1');
  try {
    await writeVerify(c, 0, 4);
    const before = t.ports().map((p) => p.io.writeCommands);
    const cur = (await topology())[0]?.namespaces[0]?.paths.find((p) => p.current)?.path;
    // Take the current path's port away (ANA inaccessible): I/O moves over, nothing fails.
    const curPort = cur === 'nvme1' ? 2 : 1;
    const other = curPort === 1 ? 2 : 1;
    t.setAnaState(curPort, 1, 'inaccessible');
    await writeVerify(c, 8 * MiB, 8);
    const moved = await until(topology, (x) => x[0]?.namespaces[0]?.paths.find((p) => p.current)?.path === (other === 2 ? 'nvme1' : 'nvme0'), 'the current path to move');
    assert.equal(moved[0]?.namespaces[0]?.paths.find((p) => p.path === (curPort === 1 ? 'nvme0' : 'nvme1'))?.anaState, 'inaccessible');
    const mid = t.ports().map((p) => p.io.writeCommands);
    await writeVerify(c, 16 * MiB, 4);
    const after = t.ports().map((p) => p.io.writeCommands);
    assert.ok((after[other - 1] as number) > (mid[other - 1] as number), `port ${other} carries the writes now (${JSON.stringify({ before, mid, after })})`);
    assert.equal(after[curPort - 1], mid[curPort - 1], `port ${curPort} carries none while inaccessible`);
    t.setAnaState(curPort, 1, 'optimized');
    await until(topology, (x) => x[0]?.namespaces[0]?.paths.every((p) => p.anaState === 'optimized') === true, 'both optimized again');
    await writeVerify(c, 24 * MiB, 2);
  } finally {
    await c.disconnect();
  }
});

test('disconnect of one path keeps the export working over the other; the state file keeps the paths for a restart', { timeout: 90_000 }, async () => {
  const c = await NbdTestClient.connect({ path: SOCK() }, 'nvme0n1');
  try {
    await writeVerify(c, 32 * MiB, 2);
    const r = await cli(['disconnect', '-d', 'nvme0']);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /disconnected 1 controller\(s\): nvme0/);
    // The same NBD connection keeps working: nvme0n1 is the namespace, not the path.
    await writeVerify(c, 40 * MiB, 4);
  } finally {
    await c.disconnect();
  }
  const t = await topology();
  assert.deepEqual(t.map((s) => [s.name, s.paths.map((p) => p.name), s.namespaces.map((n) => n.export)]), [['nvme0', ['nvme1'], ['nvme0n1']]]);
  // The path comes back (a connect to its port adds it again), then a restart restores both.
  const again = await cli(connectArgs(ports[0] as number));
  assert.equal(again.code, 0, again.err);
  const st = JSON.parse(await fsp.readFile(path.join(stateDir, 'state.json'), 'utf8')) as { controllers: Array<{ name: string; paths?: Array<{ name: string; args: { trsvcid: number } }> }> };
  assert.deepEqual(st.controllers.map((x) => [x.name, x.paths?.map((p) => [p.name, p.args.trsvcid])]), [['nvme0', [['nvme1', ports[1]], ['nvme2', ports[0]]]]]);
  (daemon as ChildProcess).kill('SIGKILL');
  await new Promise((r) => (daemon as ChildProcess).once('exit', r));
  daemon = await startDaemon();
  const back = await until(topology, (x) => x[0]?.paths.length === 2 && x[0].paths.every((p) => p.state === 'live'), 'both paths restored');
  assert.deepEqual(back.map((s) => [s.name, s.namespaces.map((n) => [n.export, n.paths.length])]), [['nvme0', [['nvme0n1', 2]]]]);
  const c2 = await NbdTestClient.connect({ path: SOCK() }, 'nvme0n1');
  try {
    await writeVerify(c2, 48 * MiB, 2);
  } finally {
    await c2.disconnect();
  }
  const all = await cli(['disconnect', '-n', NQN]);
  assert.equal(all.code, 0, all.err);
  assert.deepEqual(await topology(), []);
  await until(async () => (target as NvmeTarget).stats().controllers, (n) => n === 0, 'the target to see both controllers go');
});
