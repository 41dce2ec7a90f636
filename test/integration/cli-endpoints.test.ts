/**
 * The ways a user starts the bridge from the command line, each checked with a real client:
 * - `demo` (what `npm start` runs): prints working NBD endpoints, checked with `nbdinfo`, and
 *   exits 0 on Ctrl-C;
 * - `connect --stdio`: one NBD connection on stdin/stdout (libnbd's `nbd_connect_command`), with
 *   every human message on stderr and an exit when the connection ends;
 * - systemd socket activation (`LISTEN_FDS`), as `nbdinfo -- [ CMD ]` starts a server: stdout stays
 *   clean so nbdinfo's own JSON parses.
 */
import { test, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import type { ChildProcessWithoutNullStreams } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { Duplex } from 'node:stream';
import { NvmeTarget } from '../../src/embedded-target/target';
import { NbdTestClient } from '../helpers/nbd-test-client';
import { needCommands } from '../helpers/prereq';
import { run } from '../helpers/bridge';

const MAIN = path.join(__dirname, '..', '..', 'src', 'cli', 'main.js');
const NQN = 'nqn.2014-08.org.nvmf-nbd:cli-endpoints';
const SIZE = 64 << 20;

let target: NvmeTarget;
let port = 0;
let stateDir = '';

before(async () => {
  stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'nvmf-nbd-cli-'));
  target = new NvmeTarget({ listen: { host: '127.0.0.1', port: 0 }, subsystems: [{ nqn: NQN, namespaces: [{ sizeBytes: SIZE, backing: { memory: true } }] }] });
  port = (await target.listen()).port;
});

after(async () => {
  await target.close();
  fs.rmSync(stateDir, { recursive: true, force: true });
});

/** Resolve with the exit code of `child`, killing it after `ms`. */
function exitOf(child: ChildProcessWithoutNullStreams, ms: number): Promise<number | null> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), ms);
    child.once('exit', (code) => { clearTimeout(timer); resolve(code); });
  });
}

/** Collect a stream's text. */
function collect(s: NodeJS.ReadableStream): { text: string } {
  const box = { text: '' };
  s.on('data', (d: Buffer) => { box.text += d.toString(); });
  return box;
}

test('demo (npm start): serves a 0600 Unix socket by default, prints it as JSON, nbdinfo sees the export, Ctrl-C exits 0', { timeout: 60_000 }, async (t) => {
  if (!needCommands(t, ['nbdinfo'])) return;
  const child = spawn(process.execPath, [MAIN, 'demo', '--memory', '128M', '-o', 'json'], {
    env: { ...process.env, NVMF_NBD_STATE_DIR: stateDir },
  });
  const out = collect(child.stdout);
  const err = collect(child.stderr);
  const exited = exitOf(child, 50_000);
  try {
    // The JSON document is complete once it parses.
    let doc: { controller: { exports: Array<{ name: string; size: number; endpoint: string }> } } | undefined;
    for (let i = 0; i < 200 && doc === undefined; i++) {
      await new Promise((r) => setTimeout(r, 100));
      try { doc = JSON.parse(out.text) as typeof doc; } catch { /* not yet */ }
    }
    assert.ok(doc !== undefined, `demo printed no JSON: ${out.text} ${err.text}`);
    const e = doc.controller.exports[0];
    assert.equal(e?.name, 'nvme0n1');
    assert.equal(e?.size, 128 << 20);
    // Issue 14 finding 1: not loopback TCP (every local user reaches that) but a private socket.
    const m = /^unix:(.+)$/.exec(e?.endpoint ?? '');
    assert.ok(m !== null, `endpoint ${e?.endpoint}`);
    const sock = m[1] as string;
    assert.ok(sock.startsWith(path.join(stateDir, 'demo') + path.sep), sock);
    assert.equal(fs.statSync(sock).mode & 0o777, 0o600);
    assert.equal(fs.statSync(path.join(stateDir, 'demo')).mode & 0o777, 0o700);
    const info = await run('nbdinfo', ['--json', `nbd+unix:///nvme0n1?socket=${sock}`], 20_000);
    assert.equal(info.code, 0, info.stderr);
    const j = JSON.parse(info.stdout) as { exports: Array<{ 'export-name': string; 'export-size': number; can_flush: boolean; can_trim: boolean }> };
    assert.equal(j.exports[0]?.['export-name'], 'nvme0n1');
    assert.equal(j.exports[0]?.['export-size'], 128 << 20);
    assert.equal(j.exports[0]?.can_trim, true);
  } finally {
    child.kill('SIGINT');
  }
  assert.equal(await exited, 0, err.text);
});

test('connect: plain NBD on a non-loopback address is a usage error (NBD_ERR_INSECURE_BIND, exit 2) before connecting; a 0644 PSK file is refused', { timeout: 60_000 }, async () => {
  const base = [MAIN, 'connect', '-t', 'tcp', '-a', '127.0.0.1', '-s', String(port), '-n', NQN, '--foreground'];
  const r = await run(process.execPath, [...base, '--nbd', 'tcp:0.0.0.0:0'], 30_000);
  assert.equal(r.code, 2, r.stderr);
  assert.match(r.stderr, /NBD_ERR_INSECURE_BIND/);
  const psk = path.join(stateDir, 'loose.psk');
  fs.writeFileSync(psk, `alice:${'ab'.repeat(32)}\n`, { mode: 0o644 });
  fs.chmodSync(psk, 0o644);
  const k = await run(process.execPath, [...base, '--nbd', 'tcp:0.0.0.0:0', '--nbd-tls-psk', psk], 30_000);
  assert.equal(k.code, 1, k.stderr);
  assert.match(k.stderr, /CFG_ERR_KEY_FILE_INSECURE/);
  assert.doesNotMatch(k.stderr, /abab/, 'no key material in the error');
});

test('connect --stdio: NBD on stdin/stdout, messages on stderr, exit 0 when the client leaves', { timeout: 60_000 }, async () => {
  const child = spawn(process.execPath, [MAIN, 'connect', '-t', 'tcp', '-a', '127.0.0.1', '-s', String(port), '-n', NQN, '--stdio', '-i', '2'], {
    env: { ...process.env, NVMF_NBD_STATE_DIR: stateDir },
  });
  const err = collect(child.stderr);
  const exited = exitOf(child, 50_000);
  const stream = Duplex.from({ readable: child.stdout, writable: child.stdin });
  const c = await NbdTestClient.overStream(stream, 'nvme0n1', 30_000);
  assert.equal(c.size, BigInt(SIZE));
  const data = randomBytes(256 << 10);
  await c.write(1 << 20, data);
  assert.ok((await c.read(1 << 20, data.length)).equals(data), 'read back what was written over stdio');
  await c.disconnect();
  assert.equal(await exited, 0, err.text);
  assert.match(err.text, /nvme0n1/, 'the export table went to stderr');
});

test('socket activation (LISTEN_FDS): nbdinfo -- [ nvmf-nbd connect … ] gets clean JSON', { timeout: 60_000 }, async (t) => {
  if (!needCommands(t, ['nbdinfo'])) return;
  const r = await run('nbdinfo', ['--json', '--', '[', process.execPath, MAIN, 'connect', '-t', 'tcp', '-a', '127.0.0.1', '-s', String(port), '-n', NQN, '-i', '1', ']'], 40_000);
  assert.equal(r.code, 0, r.stderr);
  const j = JSON.parse(r.stdout) as { exports: Array<{ 'export-name': string; 'export-size': number }> };
  assert.equal(j.exports[0]?.['export-name'], 'nvme0n1');
  assert.equal(j.exports[0]?.['export-size'], SIZE);
});
