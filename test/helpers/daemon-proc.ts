/**
 * The `nvmf-nbd` CLI and a `daemon --sticky-nbd` child process, for tests that kill and restart
 * the daemon: one-shot CLI commands, daemon start (resolves on "daemon ready"), and the pid of the
 * NBD holder process from the state directory.
 */
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import assert from 'node:assert/strict';
import { freePort } from './guest';

/** The compiled CLI entry point (same depth from test/helpers as from test/integration). */
export const MAIN = path.resolve(__dirname, '../../src/cli/main.js');

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
  cli(args: string[], timeoutMs = this.o.cliTimeoutMs): Promise<{ code: number | null; out: string; err: string }> {
    return new Promise((resolve, reject) => {
      const child = spawn(process.execPath, [MAIN, ...args], { env: { ...process.env, NVMF_NBD_STATE_DIR: this.stateDir }, stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      let err = '';
      const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`timed out: ${args.join(' ')}`)); }, timeoutMs);
      child.stdout.on('data', (d: Buffer) => { out += d.toString(); });
      child.stderr.on('data', (d: Buffer) => { err += d.toString(); });
      child.on('exit', (code) => { clearTimeout(timer); resolve({ code, out, err }); });
    });
  }

  /** Start `daemon --sticky-nbd`; resolves once it printed "daemon ready". */
  start(): Promise<ChildProcess> {
    const o = this.o;
    const { stateDir, control, nbdPort } = this;
    return new Promise((resolve, reject) => {
      const nbd = o.unix === true ? [] : ['--nbd', `tcp:127.0.0.1:${nbdPort}`];
      const child = spawn(process.execPath, [MAIN, 'daemon', '--control', control, ...nbd, '--sticky-nbd', '--hold-time', String(o.holdTimeS)], {
        env: { ...process.env, NVMF_NBD_STATE_DIR: stateDir }, stdio: ['ignore', 'pipe', 'pipe'],
      });
      let out = '';
      const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`daemon not ready: ${this.err}`)); }, o.readyTimeoutMs);
      child.stderr.on('data', (d: Buffer) => { this.err += d.toString(); });
      child.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.includes('daemon ready')) { clearTimeout(timer); resolve(child); }
      });
      child.on('exit', (code) => { clearTimeout(timer); reject(new Error(`daemon exited ${String(code)}: ${this.err}`)); });
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
