/**
 * The shipped systemd units and udev rule: scripts/install.sh stages them (paths substituted),
 * `systemd-analyze verify` accepts both units with no warning (and does flag a broken copy),
 * the ordering/retry rules the issue names are in them, the installed CLI runs, and the daemon
 * tells systemd it is ready (`systemd-notify --ready --pid=<daemon pid>`, with a stand-in
 * systemd-notify on PATH that records its arguments).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { execFile, spawn } from 'node:child_process';
import { needCommands } from '../helpers/prereq';

const REPO = path.resolve(__dirname, '../../..');

function run(cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env): Promise<{ code: number; out: string; err: string }> {
  return new Promise((resolve) => execFile(cmd, args, { env, timeout: 60_000 }, (e, out, err) => resolve({ code: e === null ? 0 : (e as { code?: number }).code ?? -1, out, err })));
}

let staged: string | undefined;
async function stage(): Promise<string> {
  if (staged !== undefined) return staged;
  const d = await fsp.mkdtemp(path.join(os.tmpdir(), 'install-'));
  const r = await run('bash', [path.join(REPO, 'scripts', 'install.sh'), '--prefix', path.join(d, 'usr'), '--unitdir', path.join(d, 'units'), '--udevdir', path.join(d, 'udev'), '--no-enable']);
  assert.equal(r.code, 0, r.err);
  staged = d;
  return d;
}

test('install.sh stages the CLI, units, udev rule and helper with the prefix substituted', { timeout: 60_000 }, async () => {
  const d = await stage();
  const svc = await fsp.readFile(path.join(d, 'units', 'nvmf-nbd.service'), 'utf8');
  assert.match(svc, new RegExp(`^ExecStart=${path.join(d, 'usr', 'bin')}/nvmf-nbd daemon --no-config$`, 'm'));
  const rule = await fsp.readFile(path.join(d, 'udev', '60-nvmf-nbd.rules'), 'utf8');
  assert.ok(rule.includes(`${path.join(d, 'usr', 'lib', 'nvmf-nbd', 'udev', 'nvmf-nbd-id')} /sys%p`));
  assert.equal(rule.includes('@'), false, 'every placeholder replaced');
  const v = await run(path.join(d, 'usr', 'bin', 'nvmf-nbd'), ['--help']);
  assert.equal(v.code, 0, v.err);
  assert.match(v.out, /connect-all/);
});

test('units: Type=notify + NotifyAccess=all; autoconnect oneshot after network-online, before remote-fs-pre, retried', { timeout: 60_000 }, async () => {
  const d = await stage();
  const svc = await fsp.readFile(path.join(d, 'units', 'nvmf-nbd.service'), 'utf8');
  for (const l of ['Type=notify', 'NotifyAccess=all', 'After=network-online.target systemd-modules-load.service', 'Before=remote-fs-pre.target', 'Restart=on-failure']) assert.ok(svc.split('\n').includes(l), l);
  const ac = await fsp.readFile(path.join(d, 'units', 'nvmf-nbd-autoconnect.service'), 'utf8');
  for (const l of ['Type=oneshot', 'RemainAfterExit=yes', 'Requires=nvmf-nbd.service', 'After=network-online.target nvmf-nbd.service', 'Before=remote-fs-pre.target', 'Restart=on-failure', 'WantedBy=remote-fs.target']) {
    assert.ok(ac.split('\n').includes(l), l);
  }
  assert.match(ac, /^ExecStart=.*\/nvmf-nbd connect-all --attach --quiet$/m);
  assert.equal(await fsp.readFile(path.join(d, 'etc', 'modules-load.d', 'nbd.conf'), 'utf8').catch(() => 'staged under DESTDIR only'), 'staged under DESTDIR only');
});

test('systemd-analyze verify: both units clean (no warning); a broken copy is flagged', { timeout: 60_000 }, async (t) => {
  if (!needCommands(t, ['systemd-analyze'])) return;
  const d = await stage();
  const units = path.join(d, 'units');
  const ok = await run('systemd-analyze', ['verify', path.join(units, 'nvmf-nbd.service'), path.join(units, 'nvmf-nbd-autoconnect.service')]);
  assert.equal(ok.code, 0, ok.err);
  assert.equal((ok.out + ok.err).trim(), '', 'no warnings');
  const bad = path.join(d, 'bad', 'nvmf-nbd-broken.service');
  await fsp.mkdir(path.dirname(bad), { recursive: true });
  await fsp.writeFile(bad, (await fsp.readFile(path.join(units, 'nvmf-nbd.service'), 'utf8')).replace(/^Type=notify$/m, 'Type=bogus'));
  const flagged = await run('systemd-analyze', ['verify', bad]);
  assert.match(flagged.out + flagged.err, /Failed to parse service type/);
});

test('daemon under Type=notify: runs systemd-notify --ready --pid=<its pid> once its socket listens', { timeout: 30_000 }, async () => {
  const d = await fsp.mkdtemp(path.join(os.tmpdir(), 'notify-'));
  const bin = path.join(d, 'bin');
  await fsp.mkdir(bin);
  const record = path.join(d, 'notified');
  await fsp.writeFile(path.join(bin, 'systemd-notify'), `#!/bin/sh\necho "$@" > ${record}\n`, { mode: 0o755 });
  const child = spawn(process.execPath, [path.join(REPO, 'dist', 'src', 'cli', 'main.js'), 'daemon', '--no-config', '--control', path.join(d, 'c.sock')], {
    env: { ...process.env, PATH: `${bin}:${process.env.PATH ?? ''}`, NOTIFY_SOCKET: path.join(d, 'notify'), NVMF_NBD_STATE_DIR: path.join(d, 'state') }, stdio: 'ignore',
  });
  try {
    let text = '';
    for (let i = 0; i < 200 && text === ''; i++) {
      text = await fsp.readFile(record, 'utf8').catch(() => '');
      if (text === '') await new Promise((r) => setTimeout(r, 100));
    }
    assert.match(text, new RegExp(`^--ready --pid=${child.pid ?? 0} --status=control `));
    assert.ok((await fsp.stat(path.join(d, 'c.sock'))).isSocket(), 'ready only once the control socket exists');
  } finally {
    child.kill('SIGTERM');
    await new Promise((r) => child.once('exit', r));
    await fsp.rm(d, { recursive: true, force: true });
  }
});
