/**
 * The container image, built and run for real: scripts/container/build-base.sh makes the
 * `node:20-bookworm-slim` base locally (no registry is reachable here), build-image.sh builds the
 * project's Dockerfile with buildah, and the image then runs with `buildah run` (chroot
 * isolation, which shares the host's network namespace, so the container's 127.0.0.1 is ours):
 * `nvmf-nbd --help`, the non-root user, nbd-client, and a real job — the embedded target verb
 * listening on a loopback port, answered from the host with a raw ICReq → ICResp — plus the
 * image's HEALTHCHECK script against it and the entrypoint's signal path.
 *
 * Needs root, buildah, debootstrap, dpkg-repack and Node from the `nodejs` Debian package
 * (skips otherwise; fails under CI=true). First run ≈ 2–3 min (base image), then ≈ 20–40 s (the image is rebuilt each run).
 */
import { test } from 'node:test';
import type { TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, execFileSync, spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { isRoot, need, needCommands } from '../helpers/prereq';

/** dist/test/integration → repository root. */
const REPO = path.resolve(__dirname, '..', '..', '..');
const IMAGE = 'localhost/nvmf-nbd:test';
const BUILDAH = ['--storage-driver', 'vfs'];

interface RunResult { code: number; stdout: string; stderr: string }

/** Runs a command to completion; never rejects, the exit status is in `code`. */
function run(cmd: string, args: readonly string[], timeoutMs: number): Promise<RunResult> {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: timeoutMs, maxBuffer: 32 << 20, cwd: REPO }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof err.code === 'number' ? err.code : 1;
      resolve({ code, stdout: String(stdout), stderr: String(stderr) });
    });
  });
}

function nodeFromDebianPackage(): boolean {
  try {
    return execFileSync('dpkg-query', ['-W', '-f=${db:Status-Status}', 'nodejs'], { encoding: 'utf8' }) === 'installed';
  } catch {
    return false;
  }
}

/** A loopback TCP port that was free a moment ago. */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      srv.close(() => (typeof addr === 'object' && addr !== null ? resolve(addr.port) : reject(new Error('no port'))));
    });
  });
}

/** ICReq, NVMe/TCP TP 8000 §3.6.2.2: 128-byte header, PFV 0, HPDA 0, no digests, MAXR2T 0. */
function icReq(): Buffer {
  const b = Buffer.alloc(128);
  b[0] = 0x00; // PDU type ICReq
  b[2] = 128; // HLEN
  b.writeUInt32LE(128, 4); // PLEN
  return b;
}

/**
 * Connects to 127.0.0.1:port (retrying while the container starts), sends an ICReq and resolves
 * with the first 128 bytes the peer sends back.
 */
async function exchangeIcReq(port: number, deadline: number): Promise<Buffer> {
  for (;;) {
    try {
      return await new Promise<Buffer>((resolve, reject) => {
        const sock = net.connect({ host: '127.0.0.1', port });
        let got = Buffer.alloc(0);
        const timer = setTimeout(() => { sock.destroy(); reject(new Error('no ICResp within 5 s')); }, 5000);
        sock.on('connect', () => sock.write(icReq()));
        sock.on('data', (chunk: Buffer) => {
          got = Buffer.concat([got, chunk]).subarray(0, 128);
          if (got.length === 128) { clearTimeout(timer); sock.destroy(); resolve(got); }
        });
        sock.on('error', (err) => { clearTimeout(timer); reject(err); });
        sock.on('close', () => { clearTimeout(timer); reject(new Error(`closed after ${got.length} bytes`)); });
      });
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ECONNREFUSED' || Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 250));
    }
  }
}

/** Descendants of `pid` (from /proc), nearest first. */
function descendants(pid: number): number[] {
  const parent = new Map<number, number>();
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${name}/stat`, 'utf8');
      // Field 4 (ppid) follows the parenthesised comm, which may itself hold spaces.
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      parent.set(Number(name), ppid);
    } catch { /* exited meanwhile */ }
  }
  const out: number[] = [];
  const queue = [pid];
  while (queue.length > 0) {
    const p = queue.shift() as number;
    for (const [child, pp] of parent) if (pp === p) { out.push(child); queue.push(child); }
  }
  return out;
}

function cmdline(pid: number): string[] {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter((s) => s !== '');
  } catch {
    return [];
  }
}

function comm(pid: number): string {
  try {
    return fs.readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
  } catch {
    return '';
  }
}

function waitExit(child: ChildProcess, ms: number): Promise<number | string | null> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(child.exitCode ?? child.signalCode);
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve('timeout'), ms);
    child.once('exit', (code, signal) => { clearTimeout(timer); resolve(code ?? signal); });
  });
}

/** `buildah run` in the working container `ctr`. */
function inContainer(ctr: string, argv: readonly string[], timeoutMs = 60_000): Promise<RunResult> {
  return run('buildah', [...BUILDAH, 'run', '--isolation', 'chroot', ctr, '--', ...argv], timeoutMs);
}

test('container image: builds from the Dockerfile and runs the CLI and the embedded target', { timeout: 840_000 }, async (t: TestContext) => {
  if (!need(t, process.platform === 'linux', 'buildah image builds need Linux')) return;
  if (!need(t, isRoot(), 'building images with buildah (vfs storage, chroot) needs root')) return;
  if (!needCommands(t, ['buildah', 'debootstrap', 'dpkg-repack', 'flock', 'tar'])) return;
  if (!need(t, nodeFromDebianPackage(), "the base image repacks the host's Node, which must come from the 'nodejs' .deb")) return;

  // --- build (base cached between runs; the image is rebuilt every time) -------------------
  const t0 = Date.now();
  const base = await run('bash', [path.join(REPO, 'scripts/container/build-base.sh')], 600_000);
  assert.equal(base.code, 0, `build-base.sh failed:\n${base.stderr.slice(-4000)}`);
  const t1 = Date.now();
  const img = await run('bash', [path.join(REPO, 'scripts/container/build-image.sh'), IMAGE], 300_000);
  assert.equal(img.code, 0, `build-image.sh failed:\n${img.stderr.slice(-4000)}`);
  const t2 = Date.now();
  t.diagnostic(`base image ${((t1 - t0) / 1000).toFixed(1)} s (${/cached/.test(base.stderr) ? 'cached' : 'built'}), project image ${((t2 - t1) / 1000).toFixed(1)} s`);

  // The image's metadata is what `docker run` obeys: entrypoint, default user, healthcheck.
  const inspect = await run('buildah', [...BUILDAH, 'inspect', '--type', 'image', IMAGE], 60_000);
  assert.equal(inspect.code, 0, inspect.stderr);
  const config = (JSON.parse(inspect.stdout) as { Docker: { config: { User?: string; Entrypoint?: string[]; Healthcheck?: { Test?: string[] } } } }).Docker.config;
  assert.equal(config.User, 'nvmf');
  assert.deepEqual(config.Entrypoint, ['/usr/local/bin/docker-entrypoint.sh']);
  assert.deepEqual(config.Healthcheck?.Test, ['CMD', 'node', '/app/docker/healthcheck.js']);

  const from = await run('buildah', [...BUILDAH, 'from', '--pull=never', IMAGE], 120_000);
  assert.equal(from.code, 0, from.stderr);
  const ctr = from.stdout.trim().split('\n').pop() as string;
  let target: ChildProcess | undefined;
  try {
    await t.test('nvmf-nbd --help runs as the non-root user, nbd-client is present', async () => {
      const help = await inContainer(ctr, ['nvmf-nbd', '--help']);
      assert.equal(help.code, 0, help.stderr);
      assert.match(help.stdout, /^Usage: nvmf-nbd <verb>/);
      const viaEntrypoint = await inContainer(ctr, ['/usr/local/bin/docker-entrypoint.sh', '--help']);
      assert.equal(viaEntrypoint.code, 0, viaEntrypoint.stderr);
      assert.equal(viaEntrypoint.stdout, help.stdout);
      const who = await inContainer(ctr, ['sh', '-c', 'id -un; command -v nbd-client; node --version']);
      assert.equal(who.code, 0, who.stderr);
      const [user, nbdClient, nodeVersion] = who.stdout.trim().split('\n');
      assert.equal(user, 'nvmf');
      assert.equal(nbdClient, '/usr/sbin/nbd-client');
      assert.match(nodeVersion ?? '', /^v20\./);
    });

    await t.test('the daemon in the container passes the default HEALTHCHECK via its control socket', async () => {
      const daemon = spawn('buildah', [...BUILDAH, 'run', '--isolation', 'chroot', ctr, '--',
        '/usr/local/bin/docker-entrypoint.sh', 'daemon'], { stdio: ['ignore', 'pipe', 'pipe'] });
      let output = '';
      daemon.stdout?.on('data', (d: Buffer) => { output += String(d); });
      daemon.stderr?.on('data', (d: Buffer) => { output += String(d); });
      try {
        // Same working container = same rootfs: the second `buildah run` sees the socket.
        let health: RunResult = { code: -1, stdout: '', stderr: '' };
        for (const until = Date.now() + 45_000; Date.now() < until;) {
          health = await inContainer(ctr, ['sh', '-c', 'unset NVMF_NBD_HEALTH; exec node /app/docker/healthcheck.js']);
          if (health.code === 0 || daemon.exitCode !== null) break;
          await new Promise((r) => setTimeout(r, 500));
        }
        assert.equal(health.code, 0, `healthcheck: ${health.stderr}\ndaemon output:\n${output}`);
      } finally {
        for (const p of descendants(daemon.pid as number).reverse()) {
          try { process.kill(p, 'SIGTERM'); } catch { /* already gone */ }
        }
        if ((await waitExit(daemon, 15_000)) === 'timeout') {
          for (const p of descendants(daemon.pid as number).reverse()) {
            try { process.kill(p, 'SIGKILL'); } catch { /* already gone */ }
          }
          daemon.kill('SIGKILL');
          await waitExit(daemon, 10_000);
        }
      }
    });

    await t.test('the embedded target in the container answers an ICReq from the host', async () => {
      const port = await freePort();
      // Through the entrypoint, as `docker run IMAGE target --listen …` would start it.
      target = spawn('buildah', [...BUILDAH, 'run', '--isolation', 'chroot', ctr, '--',
        '/usr/local/bin/docker-entrypoint.sh', 'target', '--listen', `127.0.0.1:${port}`], { stdio: ['ignore', 'pipe', 'pipe'] });
      let output = '';
      target.stdout?.on('data', (d: Buffer) => { output += String(d); });
      target.stderr?.on('data', (d: Buffer) => { output += String(d); });
      const exited = waitExit(target, 60_000).then((c) => `target exited early (${String(c)}):\n${output}`);

      const resp = await Promise.race([
        exchangeIcReq(port, Date.now() + 45_000),
        exited.then((msg) => { throw new Error(msg); }),
      ]);
      assert.equal(resp[0], 0x01, `PDU type 0x${resp[0]?.toString(16)} is not ICResp`);
      assert.equal(resp[2], 128, 'ICResp HLEN');
      assert.equal(resp.readUInt32LE(4), 128, 'ICResp PLEN');
      assert.equal(resp.readUInt16LE(8), 0, 'PFV 0');
      assert.ok(resp.readUInt32LE(12) >= 4096, `MAXH2CDATA ${resp.readUInt32LE(12)} < 4096`);

      // The image's HEALTHCHECK script, run inside the container: healthy against the target,
      // unhealthy (status 1) against a port nobody listens on.
      const healthy = await inContainer(ctr, ['env', `NVMF_NBD_HEALTH=nvme-tcp:127.0.0.1:${port}`, 'node', '/app/docker/healthcheck.js']);
      assert.equal(healthy.code, 0, healthy.stderr);
      const closed = await freePort();
      const unhealthy = await inContainer(ctr, ['env', `NVMF_NBD_HEALTH=nvme-tcp:127.0.0.1:${closed}`, 'node', '/app/docker/healthcheck.js']);
      assert.equal(unhealthy.code, 1, unhealthy.stderr);

      // The entrypoint exec'd node (no shell left in between), so `docker stop`'s SIGTERM
      // reaches the verb, which shuts down and exits 0.
      const nodePid = descendants(target.pid as number).find((p) => cmdline(p).some((a) => a.endsWith('/app/dist/src/cli/main.js')));
      assert.ok(nodePid !== undefined, 'no node process running main.js under buildah run');
      // A script started through its #! line is named after the script, not the shell.
      const shells = descendants(target.pid as number)
        .filter((p) => ['sh', 'dash', 'bash'].includes(comm(p)) || comm(p).startsWith('docker-entrypoi'));
      assert.deepEqual(shells.map(cmdline), [], 'the entrypoint shell did not exec node');
      process.kill(nodePid, 'SIGTERM');
      assert.equal(await waitExit(target, 15_000), 0, `target did not exit 0 after SIGTERM:\n${output}`);
    });
  } finally {
    if (target !== undefined && target.exitCode === null && target.signalCode === null) {
      // Our own processes only: the container's (under buildah run) first, then buildah.
      for (const p of descendants(target.pid as number).reverse()) {
        try { process.kill(p, 'SIGKILL'); } catch { /* already gone */ }
      }
      target.kill('SIGKILL');
      await waitExit(target, 10_000);
    }
    await run('buildah', [...BUILDAH, 'rm', ctr], 60_000);
  }
});

/** Runs docker/healthcheck.js on the host with NVMF_NBD_HEALTH=spec; resolves with its status. */
function healthcheck(spec: string): Promise<RunResult> {
  return new Promise((resolve) => {
    execFile(process.execPath, [path.join(REPO, 'docker/healthcheck.js')],
      { env: { ...process.env, NVMF_NBD_HEALTH: spec, NVMF_NBD_HEALTH_TIMEOUT_MS: '2000' }, timeout: 10_000 },
      (err, stdout, stderr) => {
        const code = err === null ? 0 : typeof err.code === 'number' ? err.code : -1;
        resolve({ code, stdout: String(stdout), stderr: String(stderr) });
      });
  });
}

/** A loopback server that hands each accepted connection to `onConnect`. */
async function fakeServer(onConnect: (s: net.Socket) => void): Promise<{ port: number; close: () => Promise<void> }> {
  const socks = new Set<net.Socket>();
  const srv = net.createServer((s) => { socks.add(s); s.on('error', () => {}); s.on('close', () => socks.delete(s)); onConnect(s); });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const addr = srv.address() as net.AddressInfo;
  return {
    port: addr.port,
    close: () => new Promise<void>((r) => { for (const s of socks) s.destroy(); srv.close(() => r()); }),
  };
}

test('container HEALTHCHECK script: healthy only when the peer speaks the protocol', { timeout: 60_000 }, async () => {
  // NBD newstyle greeting: "NBDMAGIC" "IHAVEOPT" + 16-bit handshake flags.
  const nbd = await fakeServer((s) => s.write(Buffer.concat([Buffer.from('NBDMAGICIHAVEOPT', 'latin1'), Buffer.from([0, 3])])));
  // An NVMe/TCP target answers a 128-byte ICReq with a 128-byte ICResp (type 0x01).
  const nvme = await fakeServer((s) => s.once('data', () => {
    const r = Buffer.alloc(128); r[0] = 0x01; r[2] = 128; r.writeUInt32LE(128, 4); r.writeUInt32LE(131072, 12); s.write(r);
  }));
  const silent = await fakeServer(() => { /* accepts, never speaks */ });
  // The daemon's control socket: one JSON line in, one JSON line out.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nvmf-nbd-health-'));
  const ctl = (file: string, answer: (req: { id: number; verb: string }) => unknown): Promise<net.Server> => new Promise((resolve) => {
    const srv = net.createServer((s) => {
      s.on('error', () => {});
      let buf = '';
      s.on('data', (d: Buffer) => {
        buf += String(d);
        const nl = buf.indexOf('\n');
        if (nl >= 0) s.end(`${JSON.stringify(answer(JSON.parse(buf.slice(0, nl)) as { id: number; verb: string }))}\n`);
      });
    });
    srv.listen(path.join(dir, file), () => resolve(srv));
  });
  const ctlOk = await ctl('ok.sock', (r) => ({ id: r.id, ok: r.verb === 'list', result: [] }));
  const ctlErr = await ctl('err.sock', (r) => ({ id: r.id, ok: false, error: { code: 'CLI_ERR_USAGE', message: 'x' } }));
  const closedPort = await freePort();
  try {
    assert.equal((await healthcheck(`nbd:127.0.0.1:${nbd.port}`)).code, 0);
    assert.equal((await healthcheck(`nvme-tcp:127.0.0.1:${nvme.port}`)).code, 0);
    assert.equal((await healthcheck(`tcp:127.0.0.1:${silent.port}`)).code, 0);
    assert.equal((await healthcheck(`control:${path.join(dir, 'ok.sock')}`)).code, 0);
    assert.equal((await healthcheck(`control:${path.join(dir, 'err.sock')}`)).code, 1);
    assert.equal((await healthcheck(`control:${path.join(dir, 'none.sock')}`)).code, 1);
    // Wrong protocol on the port, a peer that never answers, nothing listening: unhealthy.
    assert.equal((await healthcheck(`nvme-tcp:127.0.0.1:${nbd.port}`)).code, 1);
    assert.equal((await healthcheck(`nbd:127.0.0.1:${nvme.port}`)).code, 1);
    assert.equal((await healthcheck(`nbd:127.0.0.1:${silent.port}`)).code, 1);
    assert.equal((await healthcheck(`nbd:127.0.0.1:${closedPort}`)).code, 1);
    // A malformed spec is a configuration error, told apart from "unhealthy".
    assert.equal((await healthcheck('smtp:127.0.0.1:25')).code, 2);
    assert.equal((await healthcheck('nbd:no-port')).code, 2);
  } finally {
    await Promise.all([nbd.close(), nvme.close(), silent.close()]);
    await Promise.all([ctlOk, ctlErr].map((srv) => new Promise((r) => srv.close(r))));
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
