/**
 * DH-HMAC-CHAP through the daemon: `connect -S file:KEY -C file:CKEY` and `connect -S <inline>`
 * handed to a running daemon authenticate; the state file and `list` hold the `file:` references
 * but never a secret; after the daemon is killed and restarted, the controller with file
 * references reconnects (the keys are read again) and serves I/O, while the one connected with an
 * inline secret cannot (NVMF_ERR_AUTH_FAILED, as documented) until it is connected again.
 */
import { test, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { NvmeTarget } from '../../src/embedded-target/target';
import { formatDhchapKey, generateDhchapKey } from '../../src/wire/dhchap';
import { NbdTestClient } from '../helpers/nbd-test-client';
import { runCli, startDaemonProcess } from '../helpers/daemon-proc';
import type { CliResult } from '../helpers/daemon-proc';

const MAIN = path.resolve(__dirname, '../../src/cli/main.js');
const NQN = 'nqn.2014-08.org.nvmf-nbd:auth-daemon';
const HOST_FILE = 'nqn.2014-08.org.nvmexpress:uuid:1a2b3c4d-0000-4000-8000-00000000f11e';
const HOST_INLINE = 'nqn.2014-08.org.nvmexpress:uuid:1a2b3c4d-0000-4000-8000-00000000a11e';
const MiB = 1 << 20;

let dir = '';
let stateDir = '';
let control = '';
let port = 0;
let target: NvmeTarget | undefined;
let daemon: ChildProcess | undefined;
let daemonErr = '';
const hostKey = formatDhchapKey(generateDhchapKey({ hmac: 1, nqn: HOST_FILE }));
const ctrlKey = formatDhchapKey(generateDhchapKey({ keyLength: 48 }));
const inlineKey = formatDhchapKey(generateDhchapKey({ hmac: 3, nqn: HOST_INLINE }));

/** Run one CLI verb to completion. */
function cli(args: string[], timeoutMs = 30_000): Promise<CliResult> {
  return runCli(args, { NVMF_NBD_STATE_DIR: stateDir }, timeoutMs);
}

/** Start the daemon; resolve once it printed its ready line. */
function startDaemon(): Promise<ChildProcess> {
  return startDaemonProcess(['--control', control], {
    env: { NVMF_NBD_STATE_DIR: stateDir }, readyTimeoutMs: 15_000, onStderr: (c) => { daemonErr += c; }, stderr: () => daemonErr,
  });
}

interface Listed { name: string; state: string; lastError: { code: string; message: string } | null; args: Record<string, unknown>; exports: Array<{ name: string; endpoint: string }> }

async function list(): Promise<Listed[]> {
  const r = await cli(['list', '-o', 'json', '--control', control]);
  assert.equal(r.code, 0, r.err);
  assert.ok(!r.out.includes(hostKey.slice(10, 40)) && !r.out.includes(inlineKey.slice(10, 40)) && !r.out.includes(ctrlKey.slice(10, 40)), 'no secret in list');
  return (JSON.parse(r.out) as { controllers: Listed[] }).controllers;
}

before(async () => {
  dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'auth-daemon-'));
  stateDir = path.join(dir, 'state');
  control = path.join(dir, 'run', 'control.sock');
  await fsp.writeFile(path.join(dir, 'host.key'), `${hostKey}\n`, { mode: 0o600 });
  await fsp.writeFile(path.join(dir, 'ctrl.key'), `${ctrlKey}\n`, { mode: 0o600 });
  target = new NvmeTarget({
    listen: { host: '127.0.0.1', port: 0 },
    subsystems: [{ nqn: NQN, namespaces: [{ nsid: 1, sizeBytes: 32 * MiB, backing: { memory: true } }] }],
    allowHosts: [],
    hostKeys: [{ hostnqn: HOST_FILE, key: hostKey, ctrlKey }, { hostnqn: HOST_INLINE, key: inlineKey }],
  });
  port = (await target.listen()).port;
  daemon = await startDaemon();
}, { timeout: 30_000 });

after(async () => {
  if (daemon !== undefined && daemon.exitCode === null && daemon.signalCode === null) daemon.kill('SIGKILL');
  await target?.close();
  await fsp.rm(dir, { recursive: true, force: true });
}, { timeout: 30_000 });

const connectArgs = (hostnqn: string, secret: string[]): string[] =>
  ['connect', '-t', 'tcp', '-a', '127.0.0.1', '-s', String(port), '-n', NQN, '-q', hostnqn, '-i', '1', '-c', '1', '--control', control, ...secret];

test('connect through the daemon with file: references and with an inline secret; state keeps references only; restart', { timeout: 90_000 }, async () => {
  const before = target?.stats().authentications ?? 0;
  // A relative reference: made absolute before the hand-off (the daemon's cwd differs).
  const a = await new Promise<{ code: number | null; err: string }>((resolve) => {
    const child = spawn(process.execPath, [MAIN, ...connectArgs(HOST_FILE, ['-S', 'file:host.key', '-C', 'file:ctrl.key'])], { cwd: dir, env: { ...process.env, NVMF_NBD_STATE_DIR: stateDir }, stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    child.stderr.on('data', (d: Buffer) => { err += d.toString(); });
    child.on('exit', (code) => resolve({ code, err }));
  });
  assert.equal(a.code, 0, a.err);
  const b = await cli(connectArgs(HOST_INLINE, ['-S', inlineKey]));
  assert.equal(b.code, 0, b.err);
  assert.ok((target?.stats().authentications ?? 0) - before >= 4, 'admin + I/O queue of both controllers authenticated');
  let cs = await list();
  assert.deepEqual(cs.map((c) => [c.name, c.state]), [['nvme0', 'live'], ['nvme1', 'live']]);
  assert.equal(cs[0]?.args['dhchap-secret'], `file:${path.join(dir, 'host.key')}`);
  assert.equal(cs[1]?.args['dhchap-secret'], undefined);
  const stateText = await fsp.readFile(path.join(stateDir, 'state.json'), 'utf8');
  assert.ok(stateText.includes(`file:${path.join(dir, 'ctrl.key')}`));
  for (const k of [hostKey, ctrlKey, inlineKey]) assert.ok(!stateText.includes(k.slice(10, 40)), 'no secret in the state file');

  daemon?.kill('SIGKILL');
  await new Promise((r) => daemon?.once('exit', r));
  daemon = await startDaemon();
  for (let i = 0; i < 150; i++) {
    cs = await list();
    if (cs[0]?.state === 'live' && cs[1]?.lastError != null) break;
    await new Promise((r) => setTimeout(r, 200));
  }
  assert.equal(cs[0]?.state, 'live', 'the controller with file: references reconnected after the restart');
  assert.notEqual(cs[1]?.state, 'live', 'the one with an inline secret cannot authenticate after a restart');
  assert.equal(cs[1]?.lastError?.code, 'NVMF_ERR_AUTH_FAILED');
  const sock = path.join(stateDir, 'nbd', 'nvme0', 'nvme0n1.sock');
  const data = randomBytes(MiB);
  const c = await NbdTestClient.connect({ path: sock }, 'nvme0n1');
  try {
    await c.write(0, data);
    await c.flush();
    assert.ok((await c.read(0, MiB)).equals(data));
  } finally {
    await c.disconnect();
  }
  // Connecting it again with its secret repairs it.
  const dis = await cli(['disconnect', '-d', 'nvme1', '--control', control]);
  assert.equal(dis.code, 0, dis.err);
  const again = await cli(connectArgs(HOST_INLINE, ['-S', inlineKey]));
  assert.equal(again.code, 0, again.err);
  assert.ok(!daemonErr.includes(inlineKey.slice(10, 40)) && !daemonErr.includes(hostKey.slice(10, 40)), 'no secret in the daemon log');
});
