/**
 * Sticky NBD endpoints (`daemon --sticky-nbd`): each controller's public NBD endpoint belongs to
 * a holder process ({@link NbdHolder} in holder.ts) that outlives the daemon, so a kernel
 * client's connection survives a daemon restart. This module starts a controller's holder, or
 * adopts the one a previous daemon left (only after proving it is that holder), and stops it.
 */
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { ErrorCode, NvmfNbdError } from '../errors';
import type { NbdSpec } from './session';
import { holderEndpoint, processAlive, processStartTime, readHolderFile, verifyHolder } from './holder-file';

/** A running holder as the daemon records it: its public endpoint, its backend socket, its process. */
export interface HolderRecord {
  readonly host?: string;
  readonly port?: number;
  readonly unix?: string;
  readonly pid: number;
  /** The session's private Unix socket the holder relays to. */
  readonly backend: string;
  /** The process's start time (/proc), so a recycled pid is never signalled. */
  readonly startTime?: string;
}

/** What {@link ensureHolder} needs to know of one controller. */
export interface HolderPlan {
  /** The controller's name (`nvme3`): names the holder's pid and log files. */
  readonly name: string;
  /** The public endpoint under the daemon's `--nbd` (a socket directory or BASEPORT+N). */
  readonly publicEndpoint: NbdSpec;
  /** The session's private socket. */
  readonly backend: string;
  /** Where pid files and logs live (0700, the daemon's state directory). */
  readonly holdDir: string;
  /** How to start the CLI (`[node, main.js]`). */
  readonly command: readonly string[];
  /** How long the holder keeps a client connection without a daemon. */
  readonly holdMs: number;
  readonly allowAnyLocalUser: boolean;
  readonly log: (msg: string) => void;
}

/** Polls of the pid file (every 100 ms) before a holder that never listened is given up. */
const START_POLLS = 100;

/**
 * Reuse the controller's holder when one from before answers for the same endpoints, else start
 * one and wait until it listens.
 * @throws NBD_LISTEN_FAILED when the new holder exits or never writes its pid file
 */
export async function ensureHolder(p: HolderPlan): Promise<HolderRecord> {
  // The public endpoint: one per controller, a Unix socket in the default directory (0600 in a
  // 0700 directory; `nbd-client -unix`) or BASEPORT+N on TCP. The export name picks the namespace.
  const pub = p.publicEndpoint;
  const where: { unix: string } | { host: string; port: number } = 'tcp' in pub ? { host: pub.tcp.host, port: pub.tcp.port } : { unix: path.join((pub as { unixDir: string }).unixDir, `${p.name}.sock`) };
  const want = { ...where, backend: p.backend };
  const ep = holderEndpoint(want);
  const pidFile = path.join(p.holdDir, `${p.name}.holder.json`);
  const logFile = path.join(p.holdDir, `${p.name}.holder.log`);
  const old = await readHolderFile(pidFile);
  // A pid alone proves nothing after a crash or reboot: adopt or signal only a process that
  // is the holder this file describes (start time, command line, its endpoint answers).
  const verified = old !== undefined && (await verifyHolder(old, pidFile));
  if (old !== undefined && !verified && processAlive(old.pid)) p.log(`${p.name}: pid ${old.pid} from ${pidFile} is not our holder: leaving it alone`);
  if (old !== undefined && verified && holderEndpoint(old) === ep && old.backend === want.backend) {
    p.log(`${p.name}: holder ${old.pid} still holds ${ep}; its connections resume`);
    return { ...want, pid: old.pid, ...(old.startTime !== undefined ? { startTime: old.startTime } : {}) };
  }
  if (old !== undefined && verified) process.kill(old.pid, 'SIGTERM');
  const log = await fsp.open(logFile, 'a', 0o600);
  const [cmd, ...pre] = p.command;
  const child = spawn(cmd as string, [
    ...pre, 'daemon', '--holder', ep, '--holder-backend', want.backend,
    '--holder-pid-file', pidFile, '--hold-time', String(Math.ceil(p.holdMs / 1000)),
    ...(p.allowAnyLocalUser ? ['--nbd-allow-any-local-user'] : []),
  ], { detached: true, stdio: ['ignore', log.fd, log.fd] });
  child.unref();
  await log.close();
  const pid = child.pid ?? -1;
  // The holder writes its pid file once it listens.
  for (let i = 0; i < START_POLLS; i++) {
    const f = await readHolderFile(pidFile);
    if (f?.pid === pid) {
      p.log(`${p.name}: holder ${pid} listens on ${ep}`);
      return { ...want, pid, ...(f.startTime !== undefined ? { startTime: f.startTime } : {}) };
    }
    if (child.exitCode !== null) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new NvmfNbdError(ErrorCode.NBD_LISTEN_FAILED, `${p.name}: the NBD holder did not start (see ${logFile})`);
}

/** End a holder — only the process we started or verified: same pid and same start time. */
export function stopHolder(h: HolderRecord): void {
  if (h.startTime !== undefined && processStartTime(h.pid) === h.startTime) process.kill(h.pid, 'SIGTERM');
}
