/**
 * The sticky-endpoint holder's pid file (`nvmeN.holder.json` in the daemon's hold directory: who
 * holds which endpoint) and the check that a pid named there is really that holder. The holder
 * process writes it; the daemon adopts, replaces or stops holders by it.
 */
import * as fs from 'node:fs';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { socketAlive, tcpAlive } from '../net/probe';

/**
 * The holder's pid file: who holds which endpoint — a Unix socket (`unix`, the default) or TCP
 * (`host`, `port`).
 */
export interface HolderFile { pid: number; host?: string; port?: number; unix?: string; backend: string; startTime?: string }

/** The public endpoint a holder file names, as `unix:PATH` / `tcp:HOST:PORT`. */
export function holderEndpoint(f: { host?: string; port?: number; unix?: string }): string {
  return f.unix !== undefined ? `unix:${f.unix}` : `tcp:${f.host ?? ''}:${f.port ?? 0}`;
}

/** The pid file, or undefined when it is missing or torn. */
export async function readHolderFile(file: string): Promise<HolderFile | undefined> {
  try {
    const v = JSON.parse(await fsp.readFile(file, 'utf8')) as Partial<HolderFile>;
    const tcp = typeof v.host === 'string' && typeof v.port === 'number' && v.unix === undefined;
    const unix = typeof v.unix === 'string' && v.host === undefined && v.port === undefined;
    if (typeof v.pid === 'number' && (tcp || unix) && typeof v.backend === 'string') return v as HolderFile;
  } catch {
    // missing or torn: no holder
  }
  return undefined;
}

/** Write the holder's pid file (atomically: temp + rename). */
export async function writeHolderFile(file: string, v: HolderFile): Promise<void> {
  const tmp = `${file}.${process.pid}.tmp`;
  await fsp.writeFile(tmp, JSON.stringify(v), { mode: 0o600 });
  await fsp.rename(tmp, file);
}

/** Field 22 of /proc/PID/stat (start time in clock ticks since boot), or undefined. */
export function processStartTime(pid: number, procRoot = '/proc'): string | undefined {
  try {
    const stat = fs.readFileSync(path.join(procRoot, String(pid), 'stat'), 'utf8');
    // comm (field 2) may hold spaces and parentheses: fields after it follow the last ')'.
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return rest[19];
  } catch {
    return undefined;
  }
}

/** `{ startTime }` of `pid` when /proc has it. */
export function startTimeField(pid: number): { startTime?: string } {
  const t = processStartTime(pid);
  return t === undefined ? {} : { startTime: t };
}

/**
 * Is the process a holder pid file names really that holder? Its start time matches the one
 * recorded, its command line is a `--holder` run with this pid file, and its endpoint answers.
 * Never signal a process that fails this (after a crash or reboot the pid may be anyone's).
 */
export async function verifyHolder(f: HolderFile, pidFile: string, procRoot = '/proc'): Promise<boolean> {
  if (!Number.isSafeInteger(f.pid) || f.pid <= 1 || f.startTime === undefined) return false;
  if (processStartTime(f.pid, procRoot) !== f.startTime) return false;
  let argv: string[];
  try {
    argv = fs.readFileSync(path.join(procRoot, String(f.pid), 'cmdline'), 'utf8').split('\0');
  } catch {
    return false;
  }
  const at = argv.indexOf('--holder-pid-file');
  if (!argv.includes('--holder') || at < 0 || argv[at + 1] !== pidFile) return false;
  return f.unix !== undefined ? socketAlive(f.unix) : tcpAlive(f.host ?? '', f.port ?? 0);
}

/** True when a process `pid` exists (signal 0). */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}
