/**
 * DH-HMAC-CHAP on the command line: gen-dhchap-key / check-dhchap-key against the host's
 * nvme-cli (byte for byte, when `nvme` is installed) and fixtures; key files (0600 enforced);
 * -S/-C parsing (-C is no longer --connections); the target's --allow-host/--dhchap-key pairing;
 * and end to end: `nvmf-nbd target --allow-host … --dhchap-key file:…` with `nvmf-nbd connect -S
 * file:… -C …` serving the namespace, and a wrong key failing with NVMF_ERR_AUTH_FAILED.
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseArgs } from '../../src/cli/args';
import { absoluteSecretReferences, dhchapFromArgs, verb as connectVerb } from '../../src/cli/verbs/connect';
import { dhchapTargetOptions, verb as targetVerb } from '../../src/cli/verbs/target';
import { loadDhchapSecret } from '../../src/controller/dhchap-secret';
import { formatDhchapKey, generateDhchapKey } from '../../src/wire/dhchap';
import { ErrorCode } from '../../src/errors';
import { haveCommand } from '../helpers/prereq';
import { throwsCode } from '../helpers/assert-code';

const MAIN = path.resolve(__dirname, '..', '..', 'src', 'cli', 'main.js');
const HOSTNQN = 'nqn.2014-08.org.nvmexpress:uuid:7a1d2c3b-4e5f-4a6b-8c7d-9e0f1a2b3c4d';

function cli(args: string[]): { code: number; out: string; err: string } {
  try {
    const out = execFileSync(process.execPath, [MAIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'], timeout: 30_000 }).toString();
    return { code: 0, out, err: '' };
  } catch (e) {
    const x = e as { status: number; stdout: Buffer; stderr: Buffer };
    return { code: x.status, out: x.stdout.toString(), err: x.stderr.toString() };
  }
}

test('gen-dhchap-key / check-dhchap-key: nvme-cli fixtures, errors with stable codes', () => {
  const g = cli(['gen-dhchap-key', '--secret=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f', '--hmac=1', '--nqn=nqn.2014-08.org.example:host1']);
  assert.equal(g.out, 'DHHC-1:01:1wWhDeGRxTcjvLIclMHvVmyLF4rH+aG7AtuOoUZmKwLX2OkT:\n', 'as nvme-cli 2.3 prints it');
  assert.equal(cli(['check-dhchap-key', '--key=DHHC-1:01:1wWhDeGRxTcjvLIclMHvVmyLF4rH+aG7AtuOoUZmKwLX2OkT:']).out, 'Key is valid (HMAC 1, length 32, CRC 13e9d8d7)\n');
  const bad = cli(['check-dhchap-key', '--key=DHHC-1:01:1wWhDeGRxTcjvLIclMHvVmyLF4rH+aG7AtuOoUZmKwLx2OkT:']);
  assert.equal(bad.code, 1);
  assert.match(bad.err, /CFG_ERR_DHCHAP_KEY_INVALID/);
  assert.equal(cli(['gen-dhchap-key', '--hmac=2', '--key-length=32', '--nqn=x']).code, 1);
  assert.equal(cli(['gen-dhchap-key', '--key-length=40']).code, 1);
  assert.equal(cli(['gen-dhchap-key', '--secret=xyz']).code, 2);
  const r = cli(['gen-dhchap-key', '--key-length=48']);
  assert.match(r.out, /^DHHC-1:00:[A-Za-z0-9+/]{70}=?=?:\n$/);
});

test('gen-dhchap-key and check-dhchap-key print exactly what the host\'s nvme-cli prints', (t) => {
  if (!haveCommand('nvme')) {
    t.skip('nvme-cli not installed (apt-get install nvme-cli)');
    return;
  }
  const secret = 'a5'.repeat(64);
  for (const [hmac, len] of [[0, 32], [0, 48], [0, 64], [1, 32], [2, 48], [3, 64]] as const) {
    const a = [`--secret=${secret.slice(0, 2 * len)}`, `--key-length=${len}`, `--hmac=${hmac}`, `--nqn=${HOSTNQN}`];
    const theirs = execFileSync('nvme', ['gen-dhchap-key', ...a]).toString();
    assert.equal(cli(['gen-dhchap-key', ...a]).out, theirs, `hmac ${hmac} length ${len}`);
    const ours = cli(['gen-dhchap-key', `--key-length=${len}`]).out.trim();
    assert.equal(cli(['check-dhchap-key', `--key=${ours}`]).out, execFileSync('nvme', ['check-dhchap-key', `--key=${ours}`]).toString());
  }
  t.diagnostic(execFileSync('nvme', ['version']).toString().split('\n')[0] ?? '');
});

test('secrets: inline or file:PATH; a key file readable by group/others is refused; the key is never echoed', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nvmf-dhchap-'));
  try {
    const key = formatDhchapKey(generateDhchapKey());
    const f = path.join(dir, 'k');
    fs.writeFileSync(f, `${key}\n`, { mode: 0o600 });
    assert.deepEqual(loadDhchapSecret(`file:${f}`), loadDhchapSecret(key));
    fs.chmodSync(f, 0o640);
    {
      const e = throwsCode(() => loadDhchapSecret(`file:${f}`), ErrorCode.DHCHAP_KEY_INVALID);
      assert.ok(/chmod 600/.test(e.message) && !e.message.includes(key.slice(10, 30)));
    }
    throwsCode(() => loadDhchapSecret(`file:${path.join(dir, 'missing')}`), ErrorCode.DHCHAP_KEY_INVALID);
    throwsCode(() => loadDhchapSecret(`file:${dir}`), ErrorCode.DHCHAP_KEY_INVALID);
    fs.writeFileSync(path.join(dir, 'junk'), 'not a key', { mode: 0o600 });
    {
      const e = throwsCode(() => loadDhchapSecret(`file:${path.join(dir, 'junk')}`), ErrorCode.DHCHAP_KEY_INVALID);
      assert.ok(!e.message.includes('not a key'));
    }
    {
      const e = throwsCode(() => loadDhchapSecret('DHHC-1:00:bm90IGEga2V5:'), ErrorCode.DHCHAP_KEY_INVALID);
      assert.ok(!e.message.includes('bm90IGEga2V5'));
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('-S/--dhchap-secret and -C/--dhchap-ctrl-secret as in nvme-cli; --connections is long-only now', () => {
  const k1 = formatDhchapKey(generateDhchapKey());
  const k2 = formatDhchapKey(generateDhchapKey({ keyLength: 64 }));
  const { options } = parseArgs(['-S', k1, '-C', k2, '--connections', '3'], connectVerb.options);
  assert.equal(options['dhchap-secret'], k1);
  assert.equal(options['dhchap-ctrl-secret'], k2);
  assert.equal(options.connections, 3);
  const d = dhchapFromArgs(options);
  assert.equal(d?.secret.key.length, 32);
  assert.equal(d?.ctrlSecret?.key.length, 64);
  throwsCode(() => dhchapFromArgs({ 'dhchap-ctrl-secret': k2 }), ErrorCode.CLI_USAGE);
  assert.equal(dhchapFromArgs({}), undefined);
  const rel: Record<string, unknown> = { 'dhchap-secret': 'file:keys/host.key', 'dhchap-ctrl-secret': 'file:/abs/ctrl.key' };
  absoluteSecretReferences(rel);
  assert.deepEqual(rel, { 'dhchap-secret': `file:${path.resolve('keys/host.key')}`, 'dhchap-ctrl-secret': 'file:/abs/ctrl.key' }, 'relative references are made absolute for the daemon');
  throwsCode(() => parseArgs(['-C', '4'], connectVerb.options) && dhchapFromArgs(parseArgs(['-S', k1, '-C', '4'], connectVerb.options).options), ErrorCode.DHCHAP_KEY_INVALID, '-C 4 is a (bad) controller secret now');
});

test('target: each --dhchap-key / --dhchap-ctrl-key belongs to the --allow-host before it', () => {
  const k1 = formatDhchapKey(generateDhchapKey());
  const k2 = formatDhchapKey(generateDhchapKey());
  const { options } = parseArgs(['--allow-host', 'nqn.a', '--allow-host', 'nqn.b', '--dhchap-key', k1, '--dhchap-ctrl-key', k2, '--allow-host', 'nqn.c', '--dhchap-hash', 'sha512,sha256', '--dhchap-dhgroup', 'ffdhe4096,null'], targetVerb.options);
  const o = dhchapTargetOptions(options);
  assert.deepEqual(o.hostKeys?.map((h) => [h.hostnqn, h.ctrlKey !== undefined]), [['nqn.b', true]]);
  assert.deepEqual(o.dhchapHashes, [3, 1]);
  assert.deepEqual(o.dhchapGroups, [3, 0]);
  throwsCode(() => dhchapTargetOptions(parseArgs(['--dhchap-key', k1], targetVerb.options).options), ErrorCode.CLI_USAGE);
  throwsCode(() => dhchapTargetOptions(parseArgs(['--allow-host', 'nqn.a', '--dhchap-key', k1, '--dhchap-key', k2], targetVerb.options).options), ErrorCode.CLI_USAGE);
  throwsCode(() => dhchapTargetOptions(parseArgs(['--dhchap-hash', 'md5'], targetVerb.options).options), ErrorCode.CLI_USAGE);
});

/** Spawn the CLI and resolve with the first complete JSON document on stdout. */
function spawnJson(args: string[]): { child: ReturnType<typeof spawn>; json: Promise<Record<string, unknown>>; exit: Promise<number | null>; stderr: () => string } {
  const child = spawn(process.execPath, [MAIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stderr?.on('data', (c: Buffer) => { err += c.toString(); });
  const exit = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const json = new Promise<Record<string, unknown>>((resolve, reject) => {
    child.stdout?.on('data', (c: Buffer) => {
      out += c.toString();
      try {
        resolve(JSON.parse(out) as Record<string, unknown>);
      } catch {
        // not complete yet
      }
    });
    void exit.then((code) => reject(new Error(`exited ${String(code)} before printing JSON: ${err}`)));
  });
  return { child, json, exit, stderr: () => err };
}

test('end to end: target --allow-host --dhchap-key file: …; connect -S file: -C … serves the namespace; a wrong key fails', { timeout: 60_000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nvmf-dhchap-e2e-'));
  const hostKey = path.join(dir, 'host.key');
  const ctrlKey = path.join(dir, 'ctrl.key');
  fs.writeFileSync(hostKey, cli(['gen-dhchap-key', '--hmac=1', `--nqn=${HOSTNQN}`]).out, { mode: 0o600 });
  fs.writeFileSync(ctrlKey, cli(['gen-dhchap-key', '--key-length=48']).out, { mode: 0o600 });
  const children: Array<{ child: ReturnType<typeof spawn> }> = [];
  const t = spawnJson(['target', '--listen', '127.0.0.1:0', '-m', '16M', '--allow-host', HOSTNQN, '--dhchap-key', `file:${hostKey}`, '--dhchap-ctrl-key', `file:${ctrlKey}`, '--dhchap-dhgroup', 'ffdhe3072', '-o', 'json']);
  try {
    const port = String(((await t.json).listen as { port: number }).port);
    const base = ['connect', '-t', 'tcp', '-a', '127.0.0.1', '-s', port, '-n', 'nqn.2014-08.org.nvmf-nbd:target', '-q', HOSTNQN, '-i', '2', '--foreground', '--nbd', 'tcp:127.0.0.1:0', '-o', 'json'];
    const c = spawnJson([...base, '-S', `file:${hostKey}`, '-C', `file:${ctrlKey}`]);
    children.push(c);
    const j = await c.json;
    assert.equal(j.authentication, 'sha256 ffdhe3072 bidirectional');
    assert.equal((j.namespaces as unknown[]).length, 1);
    c.child.kill('SIGINT');
    assert.equal(await c.exit, 0);
    const secretText = fs.readFileSync(hostKey, 'utf8').trim();
    assert.ok(!c.stderr().includes(secretText.slice(10, 40)), 'no secret on stderr');
    const wrong = cli([...base, '-S', formatDhchapKey(generateDhchapKey({ hmac: 1, nqn: HOSTNQN }))]);
    assert.equal(wrong.code, 1);
    assert.match(wrong.err, /NVMF_ERR_AUTH_FAILED/);
    const none = cli(base);
    assert.equal(none.code, 1);
    assert.match(none.err, /NVMF_ERR_AUTH_FAILED/);
  } finally {
    for (const c of children) c.child.kill('SIGKILL');
    t.child.kill('SIGINT');
    await t.exit;
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
