/**
 * The `nvmf-nbd` CLI and the daemon as child processes, for the integration tests that drive
 * them as users do: {@link runCli} (one command to completion), {@link startDaemonProcess}
 * (resolves on "daemon ready"), and {@link DaemonProc} for `daemon --sticky-nbd` tests that kill
 * and restart the daemon (plus the pid of the NBD holder process from the state directory).
 */
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import assert from 'node:assert/strict';
import { freePort } from './guest';

/** The compiled CLI entry point (same depth from test/helpers as from test/integration). */
export const MAIN = path.resolve(__dirname, '../../src/cli/main.js');

/** What one CLI command did. */
export interface CliResult { code: number | null; out: string; err: string }

/**
 * Run `nvmf-nbd ARGS` to completion with `env` added to this process's environment; after
 * `timeoutMs` the child is killed and the promise rejects with its output so far.
 */
export function runCli(args: readonly string[], env: NodeJS.ProcessEnv, timeoutMs: number): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [MAIN, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`nvmf-nbd ${args.join(' ')} timed out\n${out}\n${err}`)); }, timeoutMs);
    child.stdout.on('data', (d: Buffer) => { out += d.toString(); });
    child.stderr.on('data', (d: Buffer) => { err += d.toString(); });
    child.on('exit', (code) => { clearTimeout(timer); resolve({ code, out, err }); });
  });
}

/** Options of {@link startDaemonProcess}. */
export interface DaemonStart {
  /** Added to this process's environment (NVMF_NBD_STATE_DIR at least). */
  readonly env: NodeJS.ProcessEnv;
  /** How long the daemon may take to print "daemon ready" (then it is killed). */
  readonly readyTimeoutMs: number;
  /** Every chunk the daemon writes to stderr (the caller keeps it for failure messages). */
  readonly onStderr: (chunk: string) => void;
  /** The stderr collected so far, for the error of a daemon that never became ready. */
  readonly stderr: () => string;
}

/** Start `nvmf-nbd daemon ARGS`; resolves once it printed "daemon ready", rejects if it exits first. */
export function startDaemonProcess(args: readonly string[], o: DaemonStart): Promise<ChildProcess> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [MAIN, 'daemon', ...args], { env: { ...process.env, ...o.env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`daemon not ready: ${out}\n${o.stderr()}`)); }, o.readyTimeoutMs);
    child.stderr.on('data', (d: Buffer) => o.onStderr(d.toString()));
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('daemon ready')) { clearTimeout(timer); resolve(child); }
    });
    child.on('exit', (code) => { clearTimeout(timer); reject(new Error(`daemon exited ${String(code)}: ${o.stderr()}`)); });
  });
}

export interface DaemonProcOptions {
  /** --hold-time in seconds. */
  holdTimeS: number;
  /** How long the daemon may take to print "daemon ready". */
  readyTimeoutMs: number;
  /** Sticky endpoints on the default Unix socket directory (STATE_DIR/nbd/nvmeN.sock) instead of tcp:127.0.0.1:nbdPort. */
  unix?: boolean;
  /** Default timeout of {@link DaemonProc.cli}. */
  cliTimeoutMs: number;
}

/** Set stateDir, control and nbdPort (e.g. in `before`) before starting anything. */
export class DaemonProc {
  /** NVMF_NBD_STATE_DIR of every child. */
  stateDir = '';
  /** Control socket path. */
  control = '';
  /** The sticky NBD endpoint: tcp:127.0.0.1:nbdPort. */
  nbdPort = 0;
  /** Everything every started daemon wrote to stderr. */
  err = '';

  constructor(readonly o: DaemonProcOptions) {}

  /** Run one CLI command to completion. */
  cli(args: string[], timeoutMs = this.o.cliTimeoutMs): Promise<CliResult> {
    return runCli(args, { NVMF_NBD_STATE_DIR: this.stateDir }, timeoutMs);
  }

  /** Start `daemon --sticky-nbd`; resolves once it printed "daemon ready". */
  start(): Promise<ChildProcess> {
    const nbd = this.o.unix === true ? [] : ['--nbd', `tcp:127.0.0.1:${this.nbdPort}`];
    return startDaemonProcess(['--control', this.control, ...nbd, '--sticky-nbd', '--hold-time', String(this.o.holdTimeS)], {
      env: { NVMF_NBD_STATE_DIR: this.stateDir }, readyTimeoutMs: this.o.readyTimeoutMs, onStderr: (c) => { this.err += c; }, stderr: () => this.err,
    });
  }

  /** nvme0's public sticky endpoint, as `list` shows it and as a client dials it. */
  get endpoint(): { text: string; dial: { path: string } | { host: string; port: number } } {
    if (this.o.unix === true) {
      const p = path.join(this.stateDir, 'nbd', 'nvme0.sock');
      return { text: `unix:${p}`, dial: { path: p } };
    }
    return { text: `tcp:127.0.0.1:${this.nbdPort}`, dial: { host: '127.0.0.1', port: this.nbdPort } };
  }

  /** Use `dir` for the state directory (dir/state) and control socket, and pick a free NBD port. */
  async prepare(dir: string): Promise<void> {
    this.stateDir = path.join(dir, 'state');
    this.control = path.join(dir, 'control.sock');
    this.nbdPort = await freePort();
  }

  /** `connect` the running daemon to `nqn` at 127.0.0.1:`targetPort` (`-i 1 -c 1`); asserts success. */
  async connect(targetPort: number, nqn: string): Promise<void> {
    const r = await this.cli(['connect', '-t', 'tcp', '-a', '127.0.0.1', '-s', String(targetPort), '-n', nqn, '-i', '1', '-c', '1', '--control', this.control]);
    assert.equal(r.code, 0, r.err);
  }

  /** Pid of the holder of nvme0's export, undefined without (a readable) holder file. */
  async holderPid(): Promise<number | undefined> {
    try {
      return (JSON.parse(await fsp.readFile(path.join(this.stateDir, 'nbd-hold', 'nvme0.holder.json'), 'utf8')) as { pid: number }).pid;
    } catch {
      return undefined;
    }
  }
}
