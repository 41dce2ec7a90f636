/**
 * `daemon --sticky-nbd` on the host: an NBD client connected to a controller's TCP endpoint
 * keeps its connection while the daemon is SIGKILLed and restarted. Requests sent meanwhile are
 * held by the holder process and complete after the restarted daemon reconnects from its state
 * file; data written before and during the outage reads back. `disconnect-all` stops the holder.
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
import { DaemonProc } from '../helpers/daemon-proc';

const NQN = 'nqn.2014-08.org.nvmf-nbd:daemon-sticky';
const MiB = 1 << 20;

let dir = '';
let target: NvmeTarget | undefined;
let daemon: ChildProcess | undefined;
const dp = new DaemonProc({ holdTimeS: 60, readyTimeoutMs: 15_000, cliTimeoutMs: 20_000 });

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

before(async () => {
  dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'daemon-sticky-'));
  target = new NvmeTarget({ listen: { host: '127.0.0.1', port: 0 }, subsystems: [{ nqn: NQN, namespaces: [{ nsid: 1, sizeBytes: 64 * MiB, backing: { memory: true } }] }] });
  const port = (await target.listen()).port;
  await dp.prepare(dir);
  daemon = await dp.start();
  await dp.connect(port, NQN);
}, { timeout: 40_000 });

after(async () => {
  const pid = await dp.holderPid();
  if (pid !== undefined && alive(pid)) process.kill(pid, 'SIGKILL');
  if (daemon !== undefined && daemon.exitCode === null && daemon.signalCode === null) daemon.kill('SIGKILL');
  await target?.close();
  await fsp.rm(dir, { recursive: true, force: true });
}, { timeout: 30_000 });

test('list shows the holder\'s TCP endpoint', { timeout: 10_000 }, async () => {
  const r = await dp.cli(['list', '-o', 'json', '--control', dp.control]);
  const c = (JSON.parse(r.out) as { controllers: Array<{ exports: Array<{ endpoint: string; holderPid: number }> }> }).controllers[0];
  assert.equal(c?.exports[0]?.endpoint, `tcp:127.0.0.1:${dp.nbdPort}`);
  assert.equal(c?.exports[0]?.holderPid, await dp.holderPid());
});

test('an NBD connection survives SIGKILL and restart of the daemon; held requests complete', { timeout: 60_000 }, async () => {
  const c = await NbdTestClient.connect({ host: '127.0.0.1', port: dp.nbdPort }, 'nvme0n1');
  try {
    const a = randomBytes(MiB);
    const b = randomBytes(MiB);
    await c.write(0, a);
    await c.flush();
    const holder = await dp.holderPid();
    (daemon as ChildProcess).kill('SIGKILL');
    await new Promise((r) => (daemon as ChildProcess).once('exit', r));
    const t0 = Date.now();
    // Sent while no daemon runs: held by the holder, not failed.
    let settled = false;
    const w = c.write(MiB, b).finally(() => { settled = true; });
    const rd = c.read(0, MiB);
    await new Promise((r) => setTimeout(r, 500));
    assert.equal(settled, false, 'the write waits for the daemon');
    daemon = await dp.start();
    await w;
    assert.ok((await rd).equals(a), 'read held over the restart returns the data written before');
    const recovery = Date.now() - t0;
    assert.ok((await c.read(MiB, MiB)).equals(b), 'write held over the restart landed');
    await c.flush();
    assert.equal(await dp.holderPid(), holder, 'the restarted daemon reused the holder');
    process.stdout.write(`# sticky NBD: recovery ${recovery} ms after SIGKILL (daemon start + controller reconnect)\n`);
  } finally {
    await c.disconnect();
  }
});

test('disconnect-all stops the holder and frees the port', { timeout: 30_000 }, async () => {
  const pid = await dp.holderPid();
  assert.ok(pid !== undefined && alive(pid));
  const r = await dp.cli(['disconnect-all', '--control', dp.control]);
  assert.equal(r.code, 0, r.err);
  for (let i = 0; i < 50 && alive(pid); i++) await new Promise((res) => setTimeout(res, 100));
  assert.equal(alive(pid), false);
  await assert.rejects(NbdTestClient.connect({ host: '127.0.0.1', port: dp.nbdPort }, 'nvme0n1', 2000));
  (daemon as ChildProcess).kill('SIGTERM');
  assert.equal(await new Promise((r) => (daemon as ChildProcess).once('exit', (code) => r(code))), 0);
});
