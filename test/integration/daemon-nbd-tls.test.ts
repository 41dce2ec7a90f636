/**
 * The daemon's NBD endpoints over TLS (issue 10 item 5): `daemon --nbd tcp:… --nbd-tls-psk FILE`
 * serves every controller's exports behind NBD_OPT_STARTTLS; a connect handed off with its own
 * `--nbd … --nbd-tls-psk` gets its own TLS endpoint. nbdinfo with the PSK reads them, a plain
 * client is refused, and neither `list -o json` nor the state file carries key material (only
 * the file's path).
 */
import { before, after, test } from 'node:test';
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { NvmeTarget } from '../../src/embedded-target/target';
import { runCli, startDaemonProcess } from '../helpers/daemon-proc';
import type { CliResult } from '../helpers/daemon-proc';
import { freePort } from '../helpers/guest';
import { run } from '../helpers/bridge';
import { needCommands } from '../helpers/prereq';

const NQN1 = 'nqn.2014-08.org.nvmf-nbd:daemon-tls-1';
const NQN2 = 'nqn.2014-08.org.nvmf-nbd:daemon-tls-2';
const KEY1 = '1f'.repeat(32);
const KEY2 = '2e'.repeat(32);

let dir = '';
let target: NvmeTarget | undefined;
let daemon: ChildProcess | undefined;
let tport = 0;
let base = 0;
let own = 0;
const control = (): string => path.join(dir, 'control.sock');

/** Run one CLI verb to completion. */
function cli(args: string[]): Promise<CliResult> {
  return runCli(args, { NVMF_NBD_STATE_DIR: path.join(dir, 'state') }, 60_000);
}

before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'daemon-nbd-tls-'));
  fs.writeFileSync(path.join(dir, 'daemon.psk'), `alice:${KEY1}\n`, { mode: 0o600 });
  fs.mkdirSync(path.join(dir, 'own'), { mode: 0o700 });
  fs.writeFileSync(path.join(dir, 'own', 'keys.psk'), `bob:${KEY2}\n`, { mode: 0o600 });
  target = new NvmeTarget({ listen: { host: '127.0.0.1', port: 0 }, subsystems: [1, 2].map((i) => ({ nqn: i === 1 ? NQN1 : NQN2, namespaces: [{ sizeBytes: 16 << 20, backing: { memory: true } }] })) });
  tport = (await target.listen()).port;
  base = await freePort();
  own = await freePort();
  let err = '';
  daemon = await startDaemonProcess(['--control', control(), '--nbd', `tcp:127.0.0.1:${base}`, '--nbd-tls-psk', path.join(dir, 'daemon.psk')], {
    env: { NVMF_NBD_STATE_DIR: path.join(dir, 'state') }, readyTimeoutMs: 25_000, onStderr: (c) => { err += c; }, stderr: () => err,
  });
}, { timeout: 30_000 });

after(async () => {
  if (daemon !== undefined && daemon.exitCode === null) {
    daemon.kill('SIGTERM');
    await new Promise((r) => daemon?.once('exit', r));
  }
  await target?.close();
  fs.rmSync(dir, { recursive: true, force: true });
}, { timeout: 30_000 });

test('daemon --nbd-tls-psk: exports are TLS-only; a handed-off connect with its own --nbd-tls-psk gets its own key; no key in list or state', { timeout: 90_000 }, async (t) => {
  if (!needCommands(t, ['nbdinfo'])) return;
  const c1 = await cli(['connect', '-t', 'tcp', '-a', '127.0.0.1', '-s', String(tport), '-n', NQN1, '-i', '1', '--control', control()]);
  assert.equal(c1.code, 0, c1.err);
  // Relative path on purpose: it must reach the daemon (another cwd) as an absolute path.
  const rel = path.relative(process.cwd(), path.join(dir, 'own', 'keys.psk'));
  const c2 = await cli(['connect', '-t', 'tcp', '-a', '127.0.0.1', '-s', String(tport), '-n', NQN2, '-i', '1', '--nbd', `tcp:127.0.0.1:${own}`, '--nbd-tls-psk', rel, '--control', control()]);
  assert.equal(c2.code, 0, c2.err);

  const ok1 = await run('nbdinfo', [`nbds://alice@127.0.0.1:${base}/nvme0n1?tls-psk-file=${path.join(dir, 'daemon.psk')}`], 20_000);
  assert.equal(ok1.code, 0, ok1.stderr);
  const ok2 = await run('nbdinfo', [`nbds://bob@127.0.0.1:${own}/nvme1n1?tls-psk-file=${path.join(dir, 'own', 'keys.psk')}`], 20_000);
  assert.equal(ok2.code, 0, ok2.stderr);
  const wrong = await run('nbdinfo', [`nbds://alice@127.0.0.1:${own}/nvme1n1?tls-psk-file=${path.join(dir, 'daemon.psk')}`], 20_000);
  assert.notEqual(wrong.code, 0, "the connect's own key, not the daemon's");
  for (const p of [base, own]) {
    const plain = await run('nbdinfo', [`nbd://127.0.0.1:${p}/`], 20_000);
    assert.notEqual(plain.code, 0, `plain NBD refused on ${p}`);
  }

  const list = await cli(['list', '-o', 'json', '--control', control()]);
  assert.equal(list.code, 0, list.err);
  const state = fs.readFileSync(path.join(dir, 'state', 'state.json'), 'utf8');
  for (const text of [list.out, state]) {
    assert.ok(!text.includes(KEY1) && !text.includes(KEY2), 'no key material');
  }
  assert.ok(state.includes(path.join(dir, 'own', 'keys.psk')), 'the state file keeps the absolute path (a reference)');
});
