/**
 * Kernel attach: bind an NBD export to /dev/nbdX with Debian's `nbd-client`, and unbind it.
 *
 * nbd-client 3.24 syntax: `nbd-client -N NAME HOST PORT /dev/nbdX [-b BS] [-C N] [-t S] [-p]`,
 * or with `-unix PATH` in place of HOST PORT. The kernel then talks NBD to our server over
 * that socket; the handshake (NBD_OPT_GO) is done by nbd-client in user space.
 */
import { execFile } from 'node:child_process';
import { promises as fsp, constants as fsc } from 'node:fs';
import * as path from 'node:path';
import { ErrorCode, NvmfNbdError } from '../errors';

/** Result of running a command. */
export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}
/** Runs a command; injectable for tests. */
export type Runner = (cmd: string, args: readonly string[]) => Promise<RunResult>;

/** Default runner: execFile without a shell, 30 s timeout. */
export const defaultRunner: Runner = (cmd, args) =>
  new Promise((resolve) => {
    execFile(cmd, [...args], { timeout: 30_000 }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof (err as NodeJS.ErrnoException).code === 'number' ? ((err as unknown as { code: number }).code) : 127;
      resolve({ code, stdout: String(stdout), stderr: err !== null && stderr === '' ? err.message : String(stderr) });
    });
  });

/** Block sizes the nbd driver accepts through nbd-client. */
export const VALID_BLOCK_SIZES: readonly number[] = [512, 1024, 2048, 4096];

/** What to attach and how. Give `socketPath`, or `host` and `port`. */
export interface AttachOptions {
  socketPath?: string;
  host?: string;
  port?: number;
  exportName: string;
  /** Logical block size (512…4096): the export's minimum block size. */
  blockSize: number;
  /** Connections (`-C N`, needs the server's CAN_MULTI_CONN); default 1. */
  connections?: number;
  /** /dev/nbdX to use; a free one is picked when absent. */
  device?: string;
  /** Kernel request timeout in seconds (`-t`); none by default, as nbd-client. */
  timeoutSec?: number;
  /** Keep reconnecting when the connection drops (`-p`). */
  persist?: boolean;
  /**
   * Backend identifier (`-i ID`, shown in /sys/block/nbdX/backend; the udev rule's stable name).
   * Passed only when the nbd-client supports it (3.25+; Debian 12's 3.24 does not): see
   * {@link nbdClientSupportsIdentifier}.
   */
  identifier?: string;
  /** nbd-client command (default `nbd-client` on PATH). */
  nbdClient?: string;
  /** sysfs root (tests use a fake tree). Default `/sys`. */
  sysfsRoot?: string;
  /** Directory of device nodes. Default `/dev`. */
  devDir?: string;
  run?: Runner;
}

/** nbd-client arguments for `o` on `device`. Throws CFG_ERR_INVALID on bad options. */
export function buildAttachArgs(o: AttachOptions, device: string): string[] {
  if (!VALID_BLOCK_SIZES.includes(o.blockSize)) {
    throw new NvmfNbdError(ErrorCode.CFG_INVALID, `block size ${o.blockSize} not one of ${VALID_BLOCK_SIZES.join(', ')}`);
  }
  const args = ['-N', o.exportName];
  if (o.socketPath !== undefined) {
    args.push('-unix', o.socketPath, device);
  } else {
    if (o.host === undefined || o.port === undefined) {
      throw new NvmfNbdError(ErrorCode.CFG_INVALID, 'attach needs socketPath, or host and port');
    }
    args.push(o.host, String(o.port), device);
  }
  args.push('-b', String(o.blockSize));
  const n = o.connections ?? 1;
  if (!Number.isInteger(n) || n < 1 || n > 256) throw new NvmfNbdError(ErrorCode.CFG_INVALID, `bad connection count ${n}`);
  if (n > 1) args.push('-C', String(n));
  if (o.timeoutSec !== undefined) {
    if (!Number.isInteger(o.timeoutSec) || o.timeoutSec < 1) throw new NvmfNbdError(ErrorCode.CFG_INVALID, `bad timeout ${o.timeoutSec}`);
    args.push('-t', String(o.timeoutSec));
  }
  if (o.persist === true) args.push('-p');
  if (o.identifier !== undefined) {
    if (!/^[A-Za-z0-9._:-]{1,128}$/.test(o.identifier)) throw new NvmfNbdError(ErrorCode.CFG_INVALID, `bad backend identifier '${o.identifier.slice(0, 64)}'`);
    args.push('-i', o.identifier);
  }
  return args;
}

const identifierSupport = new Map<string, Promise<boolean>>();

/**
 * Does this nbd-client take `-i IDENTIFIER`? Asked once per command: an nbd-client that does
 * not know the option says "unrecognized option"; one that does complains about the missing
 * host instead. Nothing is connected either way.
 */
export function nbdClientSupportsIdentifier(cmd = 'nbd-client', run: Runner = defaultRunner): Promise<boolean> {
  let p = identifierSupport.get(cmd);
  if (p === undefined) {
    p = run(cmd, ['-i', 'nvmf-nbd-probe']).then((r) => !/unrecognized option|invalid option/i.test(r.stderr + r.stdout), () => false);
    identifierSupport.set(cmd, p);
  }
  return p;
}

/**
 * First /dev/nbdX (by number) that is not in use: no `/sys/block/nbdX/pid` and size 0.
 * @throws NBD_ERR_NO_FREE_DEVICE, NBD_ERR_MODULE_MISSING (no nbd devices at all)
 */
export async function findFreeDevice(sysfsRoot = '/sys', devDir = '/dev'): Promise<string> {
  let names: string[];
  try {
    names = await fsp.readdir(path.join(sysfsRoot, 'block'));
  } catch (err) {
    throw new NvmfNbdError(ErrorCode.NBD_MODULE_MISSING, `cannot list ${path.join(sysfsRoot, 'block')}`, { cause: err });
  }
  const nbds = names
    .filter((n) => /^nbd\d+$/.test(n))
    .sort((a, b) => Number(a.slice(3)) - Number(b.slice(3)));
  if (nbds.length === 0) throw new NvmfNbdError(ErrorCode.NBD_MODULE_MISSING, 'no nbd devices (is the nbd module loaded?)');
  for (const n of nbds) {
    const dir = path.join(sysfsRoot, 'block', n);
    if (await exists(path.join(dir, 'pid'))) continue;
    let size = 0;
    try {
      size = Number((await fsp.readFile(path.join(dir, 'size'), 'utf8')).trim());
    } catch {
      // No size attribute: treat as free; nbd-client refuses a busy device anyway.
    }
    if (size === 0) return path.join(devDir, n);
  }
  throw new NvmfNbdError(ErrorCode.NBD_NO_FREE_DEVICE, `all ${nbds.length} nbd devices are in use`);
}

/**
 * Attach an export to a kernel nbd device with nbd-client. Resolves with the device path.
 * @throws NBD_ERR_CLIENT_MISSING, NBD_ERR_MODULE_MISSING, NBD_ERR_NO_FREE_DEVICE,
 *         NBD_ERR_ATTACH_FAILED (nbd-client failed; its stderr is in the message)
 */
export async function attach(o: AttachOptions): Promise<string> {
  const run = o.run ?? defaultRunner;
  const cmd = o.nbdClient ?? 'nbd-client';
  await checkAttachPrerequisites({ nbdClient: cmd, sysfsRoot: o.sysfsRoot, run });
  const device = o.device ?? (await findFreeDevice(o.sysfsRoot, o.devDir));
  // The identifier is a naming aid: without nbd-client support the device still attaches
  // (the daemon's by-id links and the udev helper's fallback still name it).
  const withId = o.identifier !== undefined && (await nbdClientSupportsIdentifier(cmd, run)) ? o : { ...o, identifier: undefined };
  const args = buildAttachArgs(withId, device);
  const r = await run(cmd, args);
  if (r.code !== 0) {
    throw new NvmfNbdError(ErrorCode.NBD_ATTACH_FAILED, `nbd-client ${args.join(' ')} failed (${r.code}): ${r.stderr.trim()}`);
  }
  return device;
}

/**
 * Detach `device` (`nbd-client -d`): the kernel sends NBD_CMD_DISC and drops the socket.
 * @throws NBD_ERR_DETACH_FAILED
 */
export async function detach(device: string, o: { nbdClient?: string; run?: Runner } = {}): Promise<void> {
  const run = o.run ?? defaultRunner;
  const r = await run(o.nbdClient ?? 'nbd-client', ['-d', device]);
  if (r.code !== 0) throw new NvmfNbdError(ErrorCode.NBD_DETACH_FAILED, `nbd-client -d ${device} failed (${r.code}): ${r.stderr.trim()}`);
}

/**
 * Check that attaching can work: nbd-client on PATH, and the nbd module present (loaded now
 * with `modprobe nbd` when it is not).
 * @throws NBD_ERR_CLIENT_MISSING, NBD_ERR_MODULE_MISSING
 */
export async function checkAttachPrerequisites(o: { nbdClient?: string; sysfsRoot?: string; run?: Runner; pathEnv?: string } = {}): Promise<void> {
  const cmd = o.nbdClient ?? 'nbd-client';
  if ((await findOnPath(cmd, o.pathEnv ?? process.env.PATH ?? '')) === undefined) {
    throw new NvmfNbdError(ErrorCode.NBD_CLIENT_MISSING, `${cmd} not found on PATH (Debian package nbd-client)`);
  }
  const sysfs = o.sysfsRoot ?? '/sys';
  if (await exists(path.join(sysfs, 'module', 'nbd'))) return;
  const r = await (o.run ?? defaultRunner)('modprobe', ['nbd']);
  if (r.code !== 0 || !(await exists(path.join(sysfs, 'module', 'nbd')))) {
    throw new NvmfNbdError(ErrorCode.NBD_MODULE_MISSING, `the kernel has no nbd module (modprobe nbd: ${r.stderr.trim() || `exit ${r.code}`})`);
  }
}

/** Absolute path of `cmd` (or `cmd` itself when it contains a slash and is executable). */
export async function findOnPath(cmd: string, pathEnv: string): Promise<string | undefined> {
  const candidates = cmd.includes('/') ? [cmd] : pathEnv.split(':').filter((d) => d !== '').map((d) => path.join(d, cmd));
  for (const c of candidates) {
    try {
      await fsp.access(c, fsc.X_OK);
      return c;
    } catch {
      // try the next
    }
  }
  return undefined;
}

async function exists(p: string): Promise<boolean> {
  try {
    await fsp.access(p);
    return true;
  } catch {
    return false;
  }
}
