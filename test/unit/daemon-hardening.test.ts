/**
 * Security findings against the daemon (issue 14): restored state validated like a control
 * connect (8), a failure after listening leaves no control socket (8), per-connect `nbd` specs
 * and null values (13), and the control socket's unread-reply window (14).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { promises as fsp } from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { Daemon } from '../../src/engine/daemon';
import { MAX_UNSENT_REPLY_BYTES } from '../../src/engine/daemon-control';
import type { ControllerSession } from '../../src/engine/session';
import { readState } from '../../src/engine/state-file';
import { connectBinding } from '../../src/cli/verbs/daemon';
import { ErrorCode } from '../../src/errors';
import { until } from '../helpers/clock';

const HOST = { hostnqn: 'nqn.2014-08.org.nvmexpress:uuid:0c5a2f1e-5d1b-4b8e-9a51-8d2b4a9c6e11', hostid: '0c5a2f1e-5d1b-4b8e-9a51-8d2b4a9c6e11' };
const args = (nqn: string, more: Record<string, unknown> = {}): Record<string, unknown> => ({ traddr: '127.0.0.1', trsvcid: 4420, nqn, ...HOST, ...more });

class FakeSession extends EventEmitter {
  readonly exports: Array<{ name: string; endpoint: { unix: string }; device?: string }>;
  adminCalls = 0;
  readonly controller = {
    cntlid: 1,
    namespaces: new Map([[1, {}]]),
    adminCommand: async (): Promise<{ cqe: { dw0: number; dw1: number; status: unknown }; data?: Buffer }> => {
      this.adminCalls++;
      return { cqe: { dw0: 0, dw1: 0, status: {} }, data: Buffer.alloc(512 * 1024, 0xa5) };
    },
  };

  constructor(readonly name: string) {
    super();
    this.exports = [{ name: `${name}n1`, endpoint: { unix: `/nonexistent/${name}n1.sock` } }];
  }

  describe(): Record<string, unknown> {
    return { name: this.name, exports: [] };
  }

  async close(): Promise<void> {
    // nothing to release
  }
}

async function start(dir: string, log: (m: string) => void = () => undefined, sessions: FakeSession[] = []): Promise<Daemon> {
  return Daemon.start({
    stateDir: dir,
    connect: { ...connectBinding(), render: (s: ControllerSession) => ({ text: `${s.name}\n`, json: { name: s.name } }) },
    openSession: async (o) => {
      const s = new FakeSession(o.name);
      sessions.push(s);
      return s as unknown as ControllerSession;
    },
    deviceInUse: async () => false,
    log,
  });
}

async function tmp(): Promise<string> {
  return fsp.mkdtemp(path.join(os.tmpdir(), 'daemon-hard-'));
}

test('finding 8: restored connect args pass the control-socket check; bad entries are dropped with a message', { timeout: 10_000 }, async () => {
  const dir = await tmp();
  // Written by hand (not writeState): what a damaged or hostile state file can hold.
  await fsp.writeFile(path.join(dir, 'state.json'), JSON.stringify({
    version: 1,
    controllers: [
      // String() of this object throws: before the fix it escaped start() after listening.
      { name: 'nvme0', args: args('nqn.bad', { traddr: { toString: 1 } }), devices: [] },
      { name: 'nvme1', args: args('nqn.null', { trsvcid: null }), devices: [] },
      { name: 'nvme2', args: args('nqn.stdio', { nbd: 'stdio' }), devices: [] },
      { name: 'nvme3', args: args('nqn.good'), devices: [] },
    ],
  }), { mode: 0o600 });
  const logs: string[] = [];
  const sessions: FakeSession[] = [];
  const d = await start(dir, (m) => logs.push(m), sessions);
  try {
    assert.deepEqual(d.names(), ['nvme3']);
    for (const n of ['nvme0', 'nvme1', 'nvme2']) assert.ok(logs.some((l) => l.includes(`dropping ${n}`) && l.includes(ErrorCode.CLI_USAGE)), `${n} dropped with a message`);
    // The bad entries leave the state file.
    assert.deepEqual((await readState(path.join(dir, 'state.json'))).controllers.map((c) => c.name), ['nvme3']);
  } finally {
    await d.shutdown();
    await fsp.rm(dir, { recursive: true });
  }
});

test('finding 8: a failure after the control socket listens closes it and unlinks it', { timeout: 10_000 }, async () => {
  const dir = await tmp();
  await fsp.writeFile(path.join(dir, 'state.json'), JSON.stringify({ version: 1, controllers: [{ name: 'nvme0', args: args('nqn.a'), devices: [] }] }), { mode: 0o600 });
  await assert.rejects(start(dir, (m) => {
    if (m.includes('reconnecting')) throw new Error('log sink failed');
  }), /log sink failed/);
  await assert.rejects(fsp.lstat(path.join(dir, 'control.sock')), { code: 'ENOENT' });
  // Nothing left half-started: a new daemon starts on the same directory.
  const d = await start(dir);
  await d.shutdown();
  await fsp.rm(dir, { recursive: true });
});

test('finding 13: a per-connect nbd spec is unix: or tcp: only; null values are refused', { timeout: 10_000 }, async () => {
  const dir = await tmp();
  const d = await start(dir);
  try {
    const code = async (a: Record<string, unknown>): Promise<string> => {
      const r = await d.handleLine(JSON.stringify({ id: 9, verb: 'connect', args: a }));
      return r.ok ? 'accepted' : r.error.code;
    };
    assert.equal(await code(args('nqn.a', { nbd: 'stdio' })), ErrorCode.CLI_USAGE);
    assert.equal(await code(args('nqn.a', { nbd: 'fd:1' })), ErrorCode.CLI_USAGE);
    assert.equal(await code(args('nqn.a', { trsvcid: null })), ErrorCode.CLI_USAGE);
    assert.equal(await code(args('nqn.a', { 'nr-io-queues': null })), ErrorCode.CLI_USAGE);
    assert.deepEqual(d.names(), []);
    assert.equal(await code(args('nqn.a', { nbd: `unix:${path.join(dir, 'x')}` })), 'accepted');
  } finally {
    await d.shutdown();
    await fsp.rm(dir, { recursive: true });
  }
});

test('finding 14: a control connection that never reads stops being answered (unsent bytes bounded)', { timeout: 30_000 }, async () => {
  const dir = await tmp();
  const sessions: FakeSession[] = [];
  const d = await start(dir, () => undefined, sessions);
  const sock = net.connect(path.join(dir, 'control.sock'));
  const connected = new Promise<void>((r) => sock.once('connect', () => r()));
  try {
    assert.equal((await d.handle({ id: 1, verb: 'connect', args: args('nqn.a') }) as { name: string }).name, 'nvme0');
    await connected;
    sock.pause();
    const N = 400;
    const lines = Array.from({ length: N }, (_, i) => JSON.stringify({ id: i + 1, verb: 'get-log', args: { name: 'nvme0', lid: 2, len: 512 * 1024 } })).join('\n');
    sock.write(`${lines}\n`);
    // Wait until the daemon stops reading the connection for good: paused with more unsent
    // replies than its window (only the peer reading, a 'drain', can change that).
    const s = sessions[0] as FakeSession;
    const conns = (d as unknown as { conns: Set<net.Socket> }).conns;
    await until(() => [...conns].some((c) => c.isPaused() && c.writableLength > MAX_UNSENT_REPLY_BYTES), 'the daemon paused the non-reading connection');
    // 400 × ~700 KiB of base64 would be ~280 MiB queued in the daemon without the window.
    assert.ok(s.adminCalls < 40, `answered ${s.adminCalls} of ${N} requests for a peer that reads nothing`);
    // Reading resumes the connection: every request is answered, in order.
    let got = 0;
    let buf = '';
    await new Promise<void>((resolve) => {
      sock.setEncoding('utf8');
      sock.on('data', (c: string) => {
        buf += c;
        for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
          const r = JSON.parse(buf.slice(0, nl)) as { id: number; ok: boolean };
          buf = buf.slice(nl + 1);
          got++;
          assert.equal(r.id, got);
          assert.equal(r.ok, true);
          if (got === N) resolve();
        }
      });
      sock.resume();
    });
  } finally {
    sock.destroy();
    await d.shutdown();
    await fsp.rm(dir, { recursive: true });
  }
});
