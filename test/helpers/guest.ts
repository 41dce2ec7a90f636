/**
 * The QEMU guest with the real Linux kernel peers (nvmet/nvmet-tcp, nvme-tcp, nbd), for
 * integration tests. The host kernel has none of them and cannot load modules, so tests boot a
 * small guest (TCG) built by `scripts/rig/build-guest.sh` and drive it through a command channel.
 *
 * ```ts
 * const g = await Guest.start({ hostfwd: [{ hostPort: 0, guestPort: 4420 }] });
 * try {
 *   await setupNvmet(g, { subsystems: [{ nqn, namespaces: [{ nsid: 1, sizeMiB: 64 }] }] });
 *   // host dials 127.0.0.1:g.hostPorts[0] to reach the guest's nvmet on 4420
 *   const { out } = await g.exec('cat /proc/partitions');
 * } finally { await g.stop(); }
 * ```
 *
 * Channel framing (guest side in `scripts/rig/init.sh`): the host writes one line
 * `CMD <id> <timeout-s> <base64 script>`; the guest runs it with `sh` (stdin /dev/null,
 * stdout+stderr captured, killed after the timeout) and answers `@@BEGIN <id>\n<output>\n@@END
 * <id> <status>\n`. Commands run one at a time; a failing or killed command leaves the channel up.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { StringDecoder } from 'node:string_decoder';

/** The guest's own address on the slirp network (what its nvmet advertises in discovery). */
export const GUEST_ADDR = '10.0.2.15';
/** The address guest programs dial to reach a `guestfwd` host port. */
export const GUEST_HOST_ALIAS = '10.0.2.100';

/** How to boot a {@link Guest}. */
export interface GuestOptions {
  /** host 127.0.0.1:hostPort → guest guestPort (e.g. nvmet on 4420). hostPort 0 = pick a free port. */
  hostfwd?: Array<{ hostPort: number; guestPort: number }>;
  /** Guest connecting to 10.0.2.100:guestPort reaches host 127.0.0.1:hostPort (one `busybox nc` per connection). */
  guestfwd?: Array<{ guestPort: number; hostPort: number }>;
  /** Guest RAM, default 1024. */
  memoryMiB?: number;
  /**
   * Host directory mounted read-only at /host in the guest (9p). The host's `node` is then
   * mounted too, as /host-node/node (on the guest's PATH), with its libraries in the image.
   */
  share?: string;
  /** Milliseconds to wait for the guest to become ready, default 180000 (TCG on a busy machine). */
  bootTimeoutMs?: number;
  /**
   * Which guest: '6.1' (default; Debian 12's kernel, busybox initramfs, scripts/rig/build-guest.sh)
   * or '6.12' (Debian 13's kernel with a trixie user space: nvme-cli 2.13, tlshd, keyutils;
   * scripts/rig/build-guest-612.sh). `share` works on both.
   */
  kernel?: GuestKernel;
}

/** The rig's guest kernels. */
export type GuestKernel = '6.1' | '6.12';

/** Result of {@link Guest.exec}. */
export interface ExecResult {
  /** Exit status of the script (137 when the guest killed it at its timeout). */
  code: number;
  /** stdout and stderr, interleaved as written. */
  out: string;
}

const REPO_ROOT = findRepoRoot();
const BUILD_SCRIPT = path.join(REPO_ROOT, 'scripts', 'rig', 'build-guest.sh');
const BUILD_SCRIPT_612 = path.join(REPO_ROOT, 'scripts', 'rig', 'build-guest-612.sh');
const CACHE_DIR = path.join(process.env.NVMF_NBD_CACHE ?? path.join(os.homedir(), '.cache', 'nvmf-nbd'), 'rig');

/** Walk up from this file to the folder holding scripts/rig (works from test/ and dist/test/). */
function findRepoRoot(): string {
  let dir = __dirname;
  for (;;) {
    if (fs.existsSync(path.join(dir, 'scripts', 'rig', 'build-guest.sh'))) return dir;
    const up = path.dirname(dir);
    if (up === dir) return path.resolve(__dirname, '..', '..', '..');
    dir = up;
  }
}

/** True when `cmd` is on PATH or in an sbin folder (nbd-client, mke2fs live there; users' PATH may lack them). */
function onPath(cmd: string): boolean {
  const dirs = [...(process.env.PATH ?? '').split(path.delimiter), '/usr/sbin', '/sbin'];
  return dirs.some((d) => {
    try {
      fs.accessSync(path.join(d, cmd), fs.constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

/**
 * Whether a guest can be booted here: QEMU and the tools the image is built from are present.
 * `reason` names what is missing (for `need()`).
 */
export function guestAvailable(kernel: GuestKernel = '6.1'): { ok: boolean; reason: string } {
  if (process.platform !== 'linux') return { ok: false, reason: 'the QEMU rig needs Linux' };
  if (kernel === '6.12') {
    const cmds = ['qemu-system-x86_64', 'busybox', 'cpio', 'gzip', 'flock', 'xz', 'mke2fs', 'apt-get', 'dpkg'];
    const missing = cmds.filter((c) => !onPath(c));
    const built = fs.existsSync(path.join(CACHE_DIR, 'trixie')) && fs.readdirSync(path.join(CACHE_DIR, 'trixie')).some((n) => n.startsWith('root-'));
    if (!built && !onPath('debootstrap')) missing.push('debootstrap');
    if (!built && process.getuid?.() !== 0) missing.push('root (debootstrap of the trixie user space, once)');
    if (missing.length > 0) return { ok: false, reason: `6.12 QEMU rig unavailable, missing: ${missing.join(', ')} (run 'bash scripts/setup.sh' as root)` };
    return { ok: true, reason: '' };
  }
  const cmds = ['qemu-system-x86_64', 'busybox', 'cpio', 'gzip', 'flock', 'nbd-client', 'mke2fs', 'e2fsck', 'nvme'];
  const missing = cmds.filter((c) => !onPath(c));
  const haveKernel = fs.existsSync(path.join(CACHE_DIR, 'kernel'));
  if (!haveKernel && !onPath('apt-get')) missing.push('apt-get (to fetch the guest kernel)');
  if (!fs.existsSync(BUILD_SCRIPT)) missing.push('scripts/rig/build-guest.sh');
  if (missing.length > 0) return { ok: false, reason: `QEMU rig unavailable, missing: ${missing.join(', ')} (run 'bash scripts/setup.sh' as root)` };
  return { ok: true, reason: '' };
}

interface Image {
  kernel: string;
  initrd: string;
  /** The 6.12 guest's root image (opened with snapshot=on). */
  rootfs?: string;
}

const imagePromises = new Map<GuestKernel, Promise<Image>>();

/** Build the image once per process (the script itself is idempotent and locked). */
function buildImage(kernel: GuestKernel): Promise<Image> {
  const have = imagePromises.get(kernel);
  if (have !== undefined) return have;
  const script = kernel === '6.12' ? BUILD_SCRIPT_612 : BUILD_SCRIPT;
  const p = new Promise<Image>((resolve, reject) => {
    execFile('bash', [script], { maxBuffer: 16 << 20, timeout: 900_000 }, (err, stdout, stderr) => {
      if (err) {
        imagePromises.delete(kernel);
        reject(new Error(`${path.basename(script)} failed: ${err.message}\n${stderr.slice(-4000)}`));
        return;
      }
      const kv = Object.fromEntries(
        stdout.split('\n').filter((l) => l.includes('=')).map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]),
      );
      if (!kv.KERNEL || !kv.INITRD || (kernel === '6.12' && !kv.ROOTFS)) {
        imagePromises.delete(kernel);
        reject(new Error(`${path.basename(script)} printed no KERNEL/INITRD:\n${stdout}\n${stderr.slice(-2000)}`));
        return;
      }
      resolve({ kernel: kv.KERNEL, initrd: kv.INITRD, rootfs: kv.ROOTFS });
    });
  });
  imagePromises.set(kernel, p);
  return p;
}

/** A free TCP port on 127.0.0.1 (bound then released: QEMU binds it right after). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr !== null ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

/** A copy (hard link when possible) of the host's node binary in the cache, shared as "hostnode". */
function nodeShareDir(): string {
  const dir = path.join(CACHE_DIR, 'node');
  const dst = path.join(dir, 'node');
  const src = fs.realpathSync(process.execPath);
  const s = fs.statSync(src);
  let d: fs.Stats | undefined;
  try {
    d = fs.statSync(dst);
  } catch {
    d = undefined;
  }
  if (d === undefined || d.size !== s.size || d.mtimeMs < s.mtimeMs) {
    fs.mkdirSync(dir, { recursive: true });
    const tmp = `${dst}.${process.pid}`;
    fs.rmSync(tmp, { force: true });
    try {
      fs.linkSync(src, tmp);
    } catch {
      fs.copyFileSync(src, tmp);
      fs.chmodSync(tmp, 0o755);
    }
    fs.renameSync(tmp, dst);
  }
  return dir;
}

/** QEMU processes still running (and their temp folders), killed/removed when this Node process
 *  exits, so a failed test never leaks one. A SIGKILLed Node is covered by setpriv --pdeathsig. */
const live = new Map<ChildProcess, string>();
let exitHookInstalled = false;
function trackForExit(child: ChildProcess, dir: string): void {
  live.set(child, dir);
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const [c, d] of live) {
      try {
        c.kill('SIGKILL');
        fs.rmSync(d, { recursive: true, force: true });
      } catch {
        /* already gone */
      }
    }
  });
}

/** Remove temp folders of guests whose owning Node process died without cleaning up. */
function sweepStaleDirs(): void {
  const tmp = os.tmpdir();
  for (const name of fs.readdirSync(tmp)) {
    if (!name.startsWith('nvmf-nbd-guest-')) continue;
    const d = path.join(tmp, name);
    try {
      const owner = Number(fs.readFileSync(path.join(d, 'owner.pid'), 'utf8'));
      if (owner > 0 && !alive(owner)) fs.rmSync(d, { recursive: true, force: true });
    } catch {
      /* not ours, or being created right now */
    }
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

let nextId = 1;

/** A booted guest. Create with {@link Guest.start}; always {@link Guest.stop} it (in `finally`/`after`). */
export class Guest {
  /** Resolved host ports of `hostfwd`, in order. */
  readonly hostPorts: number[];
  /** Folder with this guest's console log and channel socket (removed by stop()). */
  readonly dir: string;
  /** The guest's serial console log (kernel messages, init's "rig:" lines). */
  readonly consoleLogPath: string;

  private readonly child: ChildProcess;
  private readonly sock: net.Socket;
  private buf = '';
  private waiter: (() => void) | undefined;
  private queue: Promise<unknown> = Promise.resolve();
  private closed = false;
  private exited = false;
  private stderr = '';

  private constructor(child: ChildProcess, sock: net.Socket, dir: string, hostPorts: number[]) {
    this.child = child;
    this.sock = sock;
    this.dir = dir;
    this.consoleLogPath = path.join(dir, 'console.log');
    this.hostPorts = hostPorts;
    // One permanent reader: a flowing socket without a listener would drop guest output.
    // A decoder keeps a UTF-8 character split across chunks intact.
    const dec = new StringDecoder('utf8');
    sock.on('data', (d: Buffer) => {
      this.buf += dec.write(d);
      this.wake();
    });
    sock.on('close', () => this.wake());
    sock.on('error', () => this.wake());
  }

  /**
   * Build the image if needed, boot QEMU and wait until the guest's command channel answers.
   * Throws with the console log tail when QEMU exits or the guest does not get ready in time.
   */
  static async start(opts: GuestOptions = {}): Promise<Guest> {
    const img = await buildImage(opts.kernel ?? '6.1');
    sweepStaleDirs();
    // A port picked free may be taken before QEMU binds it: pick again (only for hostPort 0).
    const canRetry = (opts.hostfwd ?? []).some((f) => f.hostPort === 0);
    for (let attempt = 1; ; attempt++) {
      try {
        return await Guest.boot(opts, img);
      } catch (err) {
        if (!(canRetry && attempt < 3 && (err as { portClash?: boolean }).portClash === true)) throw err;
      }
    }
  }

  private static async boot(opts: GuestOptions, img: Image): Promise<Guest> {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nvmf-nbd-guest-'));
    fs.writeFileSync(path.join(dir, 'owner.pid'), String(process.pid));
    const sockPath = path.join(dir, 'cmd.sock');
    const logPath = path.join(dir, 'console.log');

    const hostPorts: number[] = [];
    const net0 = ['user', 'id=n0', 'restrict=on'];
    for (const f of opts.hostfwd ?? []) {
      const hp = f.hostPort === 0 ? await freePort() : f.hostPort;
      hostPorts.push(hp);
      net0.push(`hostfwd=tcp:127.0.0.1:${hp}-:${f.guestPort}`);
    }
    for (const f of opts.guestfwd ?? []) {
      net0.push(`guestfwd=tcp:${GUEST_HOST_ALIAS}:${f.guestPort}-cmd:busybox nc 127.0.0.1 ${f.hostPort}`);
    }
    const args = [
      '-accel', 'tcg,thread=multi', '-cpu', 'max', '-smp', '1', '-m', String(opts.memoryMiB ?? 1024),
      '-display', 'none', '-monitor', 'none', '-nodefaults', '-no-reboot',
      '-serial', `file:${logPath}`,
      '-kernel', img.kernel, '-initrd', img.initrd,
      // no_timer_check: under TCG on a busy host the kernel's IO-APIC timer check can miss its
      // ticks and panic ("IO-APIC + timer doesn't work!", seen on 6.12 at load ≈ 10).
      '-append', 'console=ttyS0 quiet panic=-1 no_timer_check',
      // romfile= skips loading the iPXE option ROM: nothing boots from the network here.
      '-netdev', net0.join(','), '-device', 'virtio-net-pci,netdev=n0,romfile=',
      '-chardev', `socket,id=cmd,path=${sockPath},server=on,wait=off`,
      '-device', 'virtio-serial-pci', '-device', 'virtserialport,chardev=cmd,name=nvmf.cmd',
    ];
    if (img.rootfs !== undefined) {
      // snapshot=on: the guest writes to a throw-away overlay, never to the cached image.
      args.push('-drive', `file=${img.rootfs.replace(/,/g, ',,')},if=virtio,format=raw,snapshot=on,cache=unsafe`);
    }
    if (opts.share !== undefined) {
      const share = path.resolve(opts.share);
      args.push('-virtfs', `local,path=${share.replace(/,/g, ',,')},mount_tag=host,security_model=none,readonly=on`);
      args.push('-virtfs', `local,path=${nodeShareDir().replace(/,/g, ',,')},mount_tag=hostnode,security_model=none,readonly=on`);
    }
    // setpriv --pdeathsig: QEMU dies with this process even when it is SIGKILLed.
    const [cmd, cmdArgs] = onPath('setpriv')
      ? ['setpriv', ['--pdeathsig', 'KILL', 'qemu-system-x86_64', ...args]]
      : ['qemu-system-x86_64', args];
    const child = spawn(cmd, cmdArgs as string[], { stdio: ['ignore', 'ignore', 'pipe'] });
    trackForExit(child, dir);
    let stderr = '';
    child.stderr?.on('data', (d: Buffer) => {
      stderr = (stderr + d.toString()).slice(-8000);
    });
    let exited = false;
    // 'close' rather than 'exit': by then QEMU's stderr (the reason it quit) has been read.
    child.on('close', () => {
      exited = true;
      live.delete(child);
    });

    const fail = async (why: string): Promise<never> => {
      const tail = readTail(logPath, 40);
      child.kill('SIGKILL');
      fs.rmSync(dir, { recursive: true, force: true });
      throw Object.assign(new Error(`guest failed to start: ${why}\nqemu stderr: ${stderr.trim()}\nconsole tail:\n${tail}`), {
        portClash: /host forwarding rule|address already in use/i.test(stderr),
      });
    };

    const deadline = Date.now() + (opts.bootTimeoutMs ?? 180_000);
    // QEMU creates the channel socket during startup; connect as soon as it exists.
    let sock: net.Socket | undefined;
    while (sock === undefined) {
      if (exited) return fail('QEMU exited');
      if (Date.now() > deadline) return fail('timed out waiting for the channel socket');
      if (fs.existsSync(sockPath)) sock = await connectUnix(sockPath).catch(() => undefined);
      if (sock === undefined) await sleep(50);
    }
    const g = new Guest(child, sock, dir, hostPorts);
    g.exited = exited;
    g.stderr = stderr;
    child.stderr?.on('data', (d: Buffer) => {
      g.stderr = (g.stderr + d.toString()).slice(-8000);
    });
    child.on('exit', () => {
      g.exited = true;
      g.wake();
    });
    try {
      await g.waitFor(() => g.buf.includes('@@READY\n'), deadline, 'the guest to become ready');
    } catch (err) {
      sock.destroy();
      return fail((err as Error).message);
    }
    g.buf = g.buf.slice(g.buf.indexOf('@@READY\n') + 8);
    return g;
  }

  /**
   * Run a shell script in the guest (busybox sh, as root). Calls are queued and run one at a
   * time. With `check` (default true) a non-zero status throws an error carrying the output.
   * The guest kills the script after `timeoutMs` (default 60000; status 137).
   * Background children (`cmd &`) outlive the call and do not delay its reply; give them their own
   * log (`cmd >/tmp/x.log 2>&1 &`), since output they write later is discarded.
   */
  exec(cmd: string, opts: { timeoutMs?: number; check?: boolean } = {}): Promise<ExecResult> {
    const run = this.queue.then(() => this.execNow(cmd, opts.timeoutMs ?? 60_000));
    this.queue = run.catch(() => undefined);
    return run.then((r) => {
      if ((opts.check ?? true) && r.code !== 0) {
        throw Object.assign(new Error(`guest command failed with status ${r.code}: ${cmd}\n${r.out}`), { result: r });
      }
      return r;
    });
  }

  /** Last lines of the guest's serial console (for assertion messages and debugging). */
  consoleTail(lines = 40): string {
    return readTail(this.consoleLogPath, lines);
  }

  /** Kill QEMU and remove the temp folder. Safe to call twice. */
  async stop(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.sock.destroy();
    if (!this.exited) {
      const gone = new Promise<void>((resolve) => this.child.once('exit', () => resolve()));
      this.child.kill('SIGKILL');
      await Promise.race([gone, sleep(5000)]);
    }
    live.delete(this.child);
    fs.rmSync(this.dir, { recursive: true, force: true });
  }

  private async execNow(cmd: string, timeoutMs: number): Promise<ExecResult> {
    if (this.closed) throw new Error('guest is stopped');
    // Unguessable ids: a command printing marker-like text can never end another's reply.
    const id = `c${nextId++}_${randomBytes(4).toString('hex')}`;
    const secs = Math.max(1, Math.ceil(timeoutMs / 1000));
    this.sock.write(`CMD ${id} ${secs} ${Buffer.from(cmd).toString('base64')}\n`);
    const begin = `@@BEGIN ${id}\n`;
    const endRe = new RegExp(`\\n@@END ${id} (\\d+)\\n`);
    // The guest enforces the timeout; the host waits a little longer before giving up on it.
    await this.waitFor(() => endRe.test(this.buf), Date.now() + secs * 1000 + 15_000, `command ${id}: ${cmd}`);
    const start = this.buf.indexOf(begin);
    const m = endRe.exec(this.buf);
    if (start < 0 || m === null) throw new Error(`guest channel out of sync at ${id}`);
    const out = this.buf.slice(start + begin.length, m.index);
    this.buf = this.buf.slice(m.index + m[0].length);
    return { code: Number(m[1]), out };
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = undefined;
    w?.();
  }

  /** Wait until `done()` holds, reading the channel; fail on deadline or when QEMU exits. */
  private async waitFor(done: () => boolean, deadline: number, what: string): Promise<void> {
    try {
      while (!done()) {
        if (this.exited) throw new Error(`QEMU exited while waiting for ${what}\n${this.stderr}\n${this.consoleTail()}`);
        if (this.sock.destroyed) throw new Error(`guest channel closed while waiting for ${what}`);
        const left = deadline - Date.now();
        if (left <= 0) throw new Error(`timed out waiting for ${what}\nconsole tail:\n${this.consoleTail()}`);
        await new Promise<void>((resolve) => {
          const t = setTimeout(resolve, left);
          this.waiter = () => {
            clearTimeout(t);
            resolve();
          };
        });
      }
    } finally {
      this.waiter = undefined;
    }
  }
}

function connectUnix(p: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect(p);
    s.once('connect', () => {
      s.off('error', reject);
      resolve(s);
    });
    s.once('error', reject);
  });
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function readTail(file: string, lines: number): string {
  try {
    return fs.readFileSync(file, 'utf8').split('\n').slice(-lines).join('\n');
  } catch {
    return '(no console log)';
  }
}

/** Quote a string for the guest's sh. */
export function shq(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

// ---------------------------------------------------------------------------------------------
// Linux nvmet (configfs) in the guest. Namespaces are backed by memory-backed null_blk devices
// made through configfs, so each can have its own size and be added or removed at runtime.

const NVMET = '/sys/kernel/config/nvmet';
const NULLB = '/sys/kernel/config/nullb';

/** A subsystem and its namespaces for {@link setupNvmet}. */
export interface NvmetSubsystem {
  nqn: string;
  /** blockSize: the null_blk logical block size (default 512; 4096 for a 4 KiB-LBA namespace). */
  namespaces: Array<{ nsid: number; sizeMiB: number; blockSize?: number }>;
}

/** The null_blk configfs name backing namespace `nsid` of `nqn`. */
function nullbName(nqn: string, nsid: number): string {
  return `ns${createHash('sha256').update(nqn).digest('hex').slice(0, 10)}_${nsid}`;
}

/** Shell lines that create the backing device and namespace `nsid` of `nqn` (enabled unless told). */
function namespaceScript(nqn: string, nsid: number, sizeMiB: number, enable: boolean, blockSize = 512): string {
  const nb = `${NULLB}/${nullbName(nqn, nsid)}`;
  const ns = `${NVMET}/subsystems/${nqn}/namespaces/${nsid}`;
  return [
    `mkdir ${shq(nb)}`,
    `echo ${sizeMiB} > ${shq(nb)}/size`,
    `echo 1 > ${shq(nb)}/memory_backed`,
    `echo ${blockSize} > ${shq(nb)}/blocksize`,
    `echo 1 > ${shq(nb)}/discard 2>/dev/null || true`,
    `echo 1 > ${shq(nb)}/power`,
    // 6.1 names a configfs-made null_blk disk after its configfs item; older kernels nullb<index>.
    `dev=/dev/${nullbName(nqn, nsid)}; [ -b "$dev" ] || dev=/dev/nullb$(cat ${shq(nb)}/index)`,
    `i=0; while [ ! -b "$dev" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done`,
    `mkdir ${shq(ns)}`,
    `echo -n "$dev" > ${shq(ns)}/device_path`,
    enable ? `echo 1 > ${shq(ns)}/enable` : ':',
  ].join('\n');
}

/** Numeric nvmet port id for a TCP service port (the port number itself: ids are u16 too). */
function portDir(port: number): string {
  return `${NVMET}/ports/${port}`;
}

/**
 * Create subsystems on the guest's nvmet (configfs), backed by memory null_blk devices, and a
 * TCP port (default 4420) on 0.0.0.0 with every subsystem linked into it. Any host may connect
 * (`attr_allow_any_host=1`). The port also answers discovery.
 */
export async function setupNvmet(
  g: Guest,
  o: { port?: number; subsystems: NvmetSubsystem[]; tls?: NvmetTls },
): Promise<void> {
  const lines = ['set -e'];
  for (const s of o.subsystems) {
    const sd = `${NVMET}/subsystems/${s.nqn}`;
    lines.push(`mkdir ${shq(sd)}`, `echo 1 > ${shq(sd)}/attr_allow_any_host`);
    for (const n of s.namespaces) lines.push(namespaceScript(s.nqn, n.nsid, n.sizeMiB, true, n.blockSize));
  }
  await g.exec(lines.join('\n'));
  await addNvmetPort(g, o.port, o.tls);
}

/**
 * TLS on an nvmet port (6.12 guest only): `addr_tsas` tls1.3 and `addr_treq` required or
 * "not required". The PSKs come from the kernel's .nvme keyring (see {@link insertGuestTlsKey}),
 * the handshake from tlshd.
 */
export type NvmetTls = 'required' | 'not required';

/**
 * Put the TLS PSK derived from a configured key into the guest's .nvme keyring with nvme-cli
 * (`nvme check-tls-key --insert`), for identity version 0 or 1. Prints nvme-cli's output.
 */
export async function insertGuestTlsKey(g: Guest, o: { key: string; hostnqn: string; subnqn: string; identity?: 0 | 1 }): Promise<string> {
  const r = await g.exec(`nvme check-tls-key --insert -d ${shq(o.key)} -n ${shq(o.hostnqn)} -c ${shq(o.subnqn)} -I ${o.identity ?? 0}`);
  return r.out;
}

/**
 * Create the TCP port (default 4420) if needed and link every subsystem into it, so the
 * target listens (again). Undoes {@link removeNvmetPort}.
 */
export async function addNvmetPort(g: Guest, port = 4420, tls?: NvmetTls): Promise<void> {
  const pd = portDir(port);
  await g.exec(
    [
      'set -e',
      `if [ ! -d ${pd} ]; then`,
      `  mkdir ${pd}`,
      `  echo tcp > ${pd}/addr_trtype; echo ipv4 > ${pd}/addr_adrfam`,
      `  echo 0.0.0.0 > ${pd}/addr_traddr; echo ${port} > ${pd}/addr_trsvcid`,
      ...(tls !== undefined ? [`  echo tls1.3 > ${pd}/addr_tsas; echo ${shq(tls)} > ${pd}/addr_treq`] : []),
      'fi',
      `for s in ${NVMET}/subsystems/*; do`,
      '  [ -d "$s" ] || continue',
      `  n=$(basename "$s"); [ -e ${pd}/subsystems/"$n" ] || ln -s "$s" ${pd}/subsystems/"$n"`,
      'done',
    ].join('\n'),
  );
}

/**
 * Unlink every subsystem from the port (default 4420): nvmet drops the controllers connected
 * through it and stops listening. For fault tests; {@link addNvmetPort} brings it back.
 */
export async function removeNvmetPort(g: Guest, port = 4420): Promise<void> {
  await g.exec(`for l in ${portDir(port)}/subsystems/*; do [ -L "$l" ] && rm "$l"; done; true`);
}

/** nvmet's ANA states (`ports/N/ana_groups/G/ana_state`). */
export type NvmetAnaState = 'optimized' | 'non-optimized' | 'inaccessible' | 'persistent-loss' | 'change';

/**
 * Set the ANA state of group `group` (default 1, the group every namespace starts in; others are
 * created) on the TCP port `port`: nvmet sends the ANA change AEN to that port's controllers.
 */
export async function setNvmetAnaState(g: Guest, o: { port: number; group?: number; state: NvmetAnaState }): Promise<void> {
  const gd = `${portDir(o.port)}/ana_groups/${o.group ?? 1}`;
  await g.exec(`set -e\n[ -d ${gd} ] || mkdir ${gd}\necho ${o.state} > ${gd}/ana_state`);
}

/** Add namespace `nsid` (a new memory null_blk of `sizeMiB`) to a subsystem at runtime (AEN to hosts). */
export async function addNvmetNamespace(
  g: Guest,
  o: { nqn: string; nsid: number; sizeMiB: number; enable?: boolean },
): Promise<void> {
  await g.exec(`set -e\n${namespaceScript(o.nqn, o.nsid, o.sizeMiB, o.enable ?? true)}`);
}

/** Enable or disable a namespace (disabled namespaces are inactive to hosts). */
export async function setNvmetNamespaceEnabled(g: Guest, o: { nqn: string; nsid: number; enabled: boolean }): Promise<void> {
  await g.exec(`echo ${o.enabled ? 1 : 0} > ${shq(`${NVMET}/subsystems/${o.nqn}/namespaces/${o.nsid}`)}/enable`);
}

/** Remove namespace `nsid` from a subsystem at runtime and free its backing device. */
export async function removeNvmetNamespace(g: Guest, o: { nqn: string; nsid: number }): Promise<void> {
  const ns = `${NVMET}/subsystems/${o.nqn}/namespaces/${o.nsid}`;
  const nb = `${NULLB}/${nullbName(o.nqn, o.nsid)}`;
  await g.exec(
    [
      'set -e',
      `echo 0 > ${shq(ns)}/enable`,
      `rmdir ${shq(ns)}`,
      `if [ -d ${shq(nb)} ]; then echo 0 > ${shq(nb)}/power; rmdir ${shq(nb)}; fi`,
    ].join('\n'),
  );
}
