/**
 * Who may use an NBD endpoint, against Debian's real clients (issue 14 finding 1, issue 10
 * item 5): a plain loopback TCP listener refuses a client run as another user (`nobody`, via
 * setpriv) — the old code served it — unless --nbd-allow-any-local-user or TLS; NBD over TLS
 * (NBD_OPT_STARTTLS) with a psktool PSK file and with X.509 certificates (client certificates
 * verified against a CA) with nbdinfo, qemu-io, nbdcopy and nbd-client; plain clients and wrong
 * keys are refused and never reach data.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash, randomFillSync } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ErrorCode } from '../../src/errors';
import { MemoryBlockDevice } from '../../src/block/memory-device';
import { NbdServer, type NbdLogEntry } from '../../src/nbd/server';
import { NbdTlsServer } from '../../src/tls/nbd-tls';
import { haveCommand, isRoot, need, needCommands } from '../helpers/prereq';

const MiB = 1024 * 1024;
const NOBODY = 65534;

function run(cmd: string, args: string[], opts: { asNobody?: boolean; timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  const [c, a] = opts.asNobody === true ? ['setpriv', [`--reuid=${NOBODY}`, `--regid=${NOBODY}`, '--clear-groups', '--', cmd, ...args]] : [cmd, args];
  return new Promise((resolve) => {
    execFile(c as string, a as string[], { timeout: opts.timeoutMs ?? 60_000, maxBuffer: 16 * MiB, env: { ...process.env, ...opts.env } }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof (err as { code?: unknown }).code === 'number' ? (err as unknown as { code: number }).code : -1;
      resolve({ code, stdout: String(stdout), stderr: String(stderr) });
    });
  });
}

function runOk(cmd: string, args: string[]): void {
  const r = require('node:child_process').spawnSync(cmd, args, { encoding: 'utf8' }) as { status: number; stderr: string };
  assert.equal(r.status, 0, `${cmd} ${args.join(' ')}: ${r.stderr}`);
}

interface Served { server: NbdServer; disk: MemoryBlockDevice; port: number; logs: NbdLogEntry[] }

async function serve(access: ConstructorParameters<typeof NbdServer>[0] extends infer O ? O extends { access?: infer A } ? A : never : never): Promise<Served> {
  const logs: NbdLogEntry[] = [];
  const server = new NbdServer({ log: (e) => logs.push(e), access });
  const disk = new MemoryBlockDevice({ size: 64 * MiB });
  server.addExport('disk', disk);
  const ep = await server.listen({ tcp: { port: 0 } });
  assert.ok('tcp' in ep);
  return { server, disk, port: ep.tcp.port, logs };
}

let dir = '';
let ready = false;
let plain: Served;
let anyUser: Served;
let psk: Served;
let x509: Served;
const pskFile = (): string => path.join(dir, 'psk', 'keys.psk');

/** certtool template → file. */
function template(name: string, lines: string[]): string {
  const f = path.join(dir, `${name}.info`);
  fs.writeFileSync(f, `${lines.join('\n')}\n`);
  return f;
}

function makeCa(sub: string, cn: string): void {
  const d = path.join(dir, sub);
  fs.mkdirSync(d, { recursive: true });
  runOk('certtool', ['--generate-privkey', '--outfile', path.join(d, 'ca-key.pem')]);
  runOk('certtool', ['--generate-self-signed', '--load-privkey', path.join(d, 'ca-key.pem'), '--template', template(`${sub}-ca`, [`cn = ${cn}`, 'ca', 'cert_signing_key', 'expiration_days = 30']), '--outfile', path.join(d, 'ca-cert.pem')]);
}

function makeCert(sub: string, caSub: string, name: 'server' | 'client', lines: string[]): void {
  const d = path.join(dir, sub);
  const ca = path.join(dir, caSub);
  fs.mkdirSync(d, { recursive: true });
  runOk('certtool', ['--generate-privkey', '--outfile', path.join(d, `${name}-key.pem`)]);
  runOk('certtool', [
    '--generate-certificate', '--load-privkey', path.join(d, `${name}-key.pem`), '--load-ca-certificate', path.join(ca, 'ca-cert.pem'),
    '--load-ca-privkey', path.join(ca, 'ca-key.pem'), '--template', template(`${sub}-${name}`, [...lines, 'encryption_key', 'signing_key', 'expiration_days = 30']),
    '--outfile', path.join(d, `${name}-cert.pem`),
  ]);
  fs.chmodSync(path.join(d, `${name}-key.pem`), 0o600);
}

before(async () => {
  if (!haveCommand('psktool') || !haveCommand('certtool')) return;
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nbd-tls-clients-'));
  fs.chmodSync(dir, 0o755);
  fs.mkdirSync(path.join(dir, 'psk'), { mode: 0o700 });
  runOk('psktool', ['-u', 'alice', '-p', pskFile()]);
  fs.chmodSync(pskFile(), 0o600);
  // CA "good" signs the server and a client; CA "other" signs a client the server must refuse.
  makeCa('ca', 'nvmf-nbd test CA');
  makeCa('other-ca', 'someone else');
  makeCert('ca', 'ca', 'server', ['cn = localhost', 'dns_name = localhost', 'ip_address = 127.0.0.1', 'tls_www_server']);
  // Client directories as libnbd (tls-certificates=DIR) and qemu (tls-creds-x509 dir=) read them.
  for (const [sub, caSub] of [['client-good', 'ca'], ['client-other', 'other-ca']] as const) {
    makeCert(sub, caSub, 'client', [`cn = ${sub}`, 'tls_www_client']);
    fs.copyFileSync(path.join(dir, 'ca', 'ca-cert.pem'), path.join(dir, sub, 'ca-cert.pem'));
  }
  fs.mkdirSync(path.join(dir, 'client-none'));
  fs.copyFileSync(path.join(dir, 'ca', 'ca-cert.pem'), path.join(dir, 'client-none', 'ca-cert.pem'));

  plain = await serve({});
  anyUser = await serve({ allowAnyLocalUser: true });
  psk = await serve({ tls: NbdTlsServer.load({ pskFile: pskFile() }) });
  x509 = await serve({ tls: NbdTlsServer.load({ certFile: path.join(dir, 'ca', 'server-cert.pem'), keyFile: path.join(dir, 'ca', 'server-key.pem'), caFile: path.join(dir, 'ca', 'ca-cert.pem') }) });
  ready = true;
});

after(async () => {
  for (const s of [plain, anyUser, psk, x509]) await s?.server.close();
  if (dir !== '') fs.rmSync(dir, { recursive: true, force: true });
  for (const s of [plain, anyUser, psk, x509]) assert.deepEqual(s?.logs.filter((e) => e.level === 'error') ?? [], [], 'no server errors');
});

function needReady(t: Parameters<typeof need>[0], cmds: string[]): boolean {
  if (!needCommands(t, ['psktool', 'certtool', ...cmds])) return false;
  return need(t, ready, 'servers not started');
}

const transmissions = (s: Served): number => s.logs.filter((e) => e.msg.startsWith('transmission on export')).length;
const pskUri = (port: number, file = pskFile()): string => `nbds://alice@127.0.0.1:${port}/disk?tls-psk-file=${file}`;

test('loopback TCP: a client of another uid (nobody) is refused, root is served (NBD_ERR_PEER_REFUSED)', { timeout: 60_000 }, async (t) => {
  if (!needReady(t, ['nbdinfo', 'qemu-io', 'setpriv'])) return;
  if (!need(t, isRoot(), 'needs root to run a client as nobody')) return;
  const ok = await run('nbdinfo', ['--json', `nbd://127.0.0.1:${plain.port}/disk`]);
  assert.equal(ok.code, 0, ok.stderr);
  const before = plain.server.peerRefused;
  const info = await run('nbdinfo', [`nbd://127.0.0.1:${plain.port}/disk`], { asNobody: true });
  assert.notEqual(info.code, 0, 'nobody must not get the export');
  const w = await run('qemu-io', ['-f', 'raw', `nbd://127.0.0.1:${plain.port}/disk`, '-c', 'write -P 0x66 0 64k'], { asNobody: true });
  assert.notEqual(w.code, 0, w.stdout);
  assert.equal(plain.server.peerRefused, before + 2);
  const refusal = plain.logs.find((e) => e.code === ErrorCode.NBD_PEER_REFUSED);
  assert.ok(refusal !== undefined && refusal.msg.includes(`uid ${NOBODY}`), JSON.stringify(refusal));
  assert.equal(plain.disk.counters.writes, 0, 'nothing was written');
});

test('--nbd-allow-any-local-user serves another uid; TLS also satisfies the rule', { timeout: 60_000 }, async (t) => {
  if (!needReady(t, ['nbdinfo', 'setpriv'])) return;
  if (!need(t, isRoot(), 'needs root to run a client as nobody')) return;
  const r = await run('nbdinfo', ['--json', `nbd://127.0.0.1:${anyUser.port}/disk`], { asNobody: true });
  assert.equal(r.code, 0, r.stderr);
  // nobody holds the PSK (its own copy): a client that completed TLS with our key is authenticated.
  const d = path.join(dir, 'nobody');
  fs.mkdirSync(d, { mode: 0o700 });
  fs.copyFileSync(pskFile(), path.join(d, 'keys.psk'));
  fs.chownSync(d, NOBODY, NOBODY);
  fs.chownSync(path.join(d, 'keys.psk'), NOBODY, NOBODY);
  const s = await run('nbdinfo', ['--json', pskUri(psk.port, path.join(d, 'keys.psk'))], { asNobody: true });
  assert.equal(s.code, 0, s.stderr);
  assert.equal(psk.server.peerRefused, 0);
});

test('NBD over TLS with a psktool PSK: nbdinfo, qemu-io write/read, nbdcopy checksums', { timeout: 120_000 }, async (t) => {
  if (!needReady(t, ['nbdinfo', 'qemu-io', 'nbdcopy'])) return;
  const info = await run('nbdinfo', ['--json', pskUri(psk.port)]);
  assert.equal(info.code, 0, info.stderr);
  const j = JSON.parse(info.stdout) as { TLS: boolean; exports: Array<Record<string, unknown>> };
  assert.equal(j.TLS, true);
  assert.equal(j.exports[0]?.['export-size'], 64 * MiB);

  const obj = `tls-creds-psk,id=tls0,endpoint=client,dir=${path.dirname(pskFile())},username=alice`;
  const q = await run('qemu-io', ['--object', obj, '--image-opts', `driver=nbd,host=127.0.0.1,port=${psk.port},export=disk,tls-creds=tls0`,
    '-c', 'write -P 0xab 1M 1M', '-c', 'read -P 0xab 1M 1M']);
  assert.equal(q.code, 0, q.stderr + q.stdout);
  assert.doesNotMatch(q.stdout, /Pattern verification failed/);
  const back = await psk.disk.read(MiB, MiB);
  assert.ok(back.every((b) => b === 0xab), 'qemu-io wrote through TLS');

  const src = path.join(dir, 'src.img');
  const data = randomFillSync(Buffer.alloc(8 * MiB));
  fs.writeFileSync(src, data);
  const c = await run('nbdcopy', [src, pskUri(psk.port)]);
  assert.equal(c.code, 0, c.stderr);
  const got = await psk.disk.read(0, 8 * MiB);
  assert.equal(createHash('sha256').update(got).digest('hex'), createHash('sha256').update(data).digest('hex'));
  const out = path.join(dir, 'out.img');
  const c2 = await run('nbdcopy', [pskUri(psk.port), out]);
  assert.equal(c2.code, 0, c2.stderr);
  assert.equal(createHash('sha256').update(fs.readFileSync(out).subarray(0, 8 * MiB)).digest('hex'), createHash('sha256').update(data).digest('hex'));
});

test('TLS required: a plain client gets NBD_REP_ERR_TLS_REQD, a wrong PSK fails the handshake — neither reaches data', { timeout: 60_000 }, async (t) => {
  if (!needReady(t, ['nbdinfo', 'qemu-io'])) return;
  const reads = psk.disk.counters.reads;
  const tx = transmissions(psk);
  const p = await run('nbdinfo', [`nbd://127.0.0.1:${psk.port}/disk`], { env: { LIBNBD_DEBUG: '1' } });
  assert.notEqual(p.code, 0);
  assert.match(p.stderr, /TLS is required/, 'the server said why (NBD_REP_ERR_TLS_REQD message)');
  const qp = await run('qemu-io', ['-f', 'raw', `nbd://127.0.0.1:${psk.port}/disk`, '-c', 'read 0 4k']);
  assert.notEqual(qp.code, 0, qp.stdout);
  assert.ok(psk.logs.some((e) => e.code === ErrorCode.NBD_TLS_REQUIRED));

  const bad = path.join(dir, 'psk', 'bad.psk');
  fs.writeFileSync(bad, `alice:${'5a'.repeat(32)}\n`, { mode: 0o600 });
  const w = await run('nbdinfo', [pskUri(psk.port, bad)]);
  assert.notEqual(w.code, 0);
  const fails = psk.logs.filter((e) => e.code === ErrorCode.TLS_HANDSHAKE);
  assert.ok(fails.length >= 1, 'handshake failure logged');
  for (const e of fails) assert.ok(!e.msg.includes('5a5a5a'), 'no key material in logs');
  const unknown = path.join(dir, 'psk', 'unknown.psk');
  fs.writeFileSync(unknown, `mallory:${'5a'.repeat(32)}\n`, { mode: 0o600 });
  const u = await run('nbdinfo', [`nbds://mallory@127.0.0.1:${psk.port}/disk?tls-psk-file=${unknown}`]);
  assert.notEqual(u.code, 0);
  assert.equal(psk.disk.counters.reads, reads, 'no data read');
  assert.equal(transmissions(psk), tx, 'no connection reached transmission');
});

test('NBD over TLS with X.509: client certificate verified against the CA (nbdinfo, qemu-io, nbd-client -l)', { timeout: 120_000 }, async (t) => {
  if (!needReady(t, ['nbdinfo', 'qemu-io', 'nbd-client'])) return;
  const uri = (sub: string): string => `nbds://localhost:${x509.port}/disk?tls-certificates=${path.join(dir, sub)}`;
  const good = await run('nbdinfo', ['--json', uri('client-good')]);
  assert.equal(good.code, 0, good.stderr);
  const tx = transmissions(x509);
  for (const sub of ['client-none', 'client-other']) {
    const r = await run('nbdinfo', [uri(sub)]);
    assert.notEqual(r.code, 0, `${sub} must be refused`);
  }
  assert.equal(transmissions(x509), tx, 'refused clients never reached transmission');
  assert.ok(x509.logs.filter((e) => e.code === ErrorCode.TLS_HANDSHAKE).length >= 2);

  const q = await run('qemu-io', ['--object', `tls-creds-x509,id=tls0,endpoint=client,dir=${path.join(dir, 'client-good')}`,
    '--image-opts', `driver=nbd,host=localhost,port=${x509.port},export=disk,tls-creds=tls0`, '-c', 'write -P 0x5c 0 256k', '-c', 'read -P 0x5c 0 256k']);
  assert.equal(q.code, 0, q.stderr + q.stdout);
  assert.ok((await x509.disk.read(0, 256 * 1024)).every((b) => b === 0x5c));

  // Debian's nbd-client (3.24) does TLS with certificates (GnuTLS; no PSK): list the exports.
  const d = path.join(dir, 'client-good');
  const l = await run('nbd-client', ['-l', 'localhost', String(x509.port), '-certfile', path.join(d, 'client-cert.pem'), '-keyfile', path.join(d, 'client-key.pem'),
    '-cacertfile', path.join(d, 'ca-cert.pem'), '-tlshostname', 'localhost']);
  assert.equal(l.code, 0, l.stderr);
  assert.match(l.stdout, /^disk$/m);
});
