/**
 * The daemon engine in-process with fake sessions (no target, no sockets but the control
 * socket): name allocation and reuse, the state file written on connect/disconnect without
 * secrets, restart from a state file (background retry while the target is down, adoption of a
 * still-held kernel device instead of a second attach), a dead controller staying listed, the
 * admin pass-through's refusals, argument checks, and one daemon per control socket.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Daemon } from '../../src/engine/daemon';
import { endpointFor, parseDaemonNbdSpec } from '../../src/engine/daemon-entry';
import { checkArgs } from '../../src/engine/daemon-args';
import { kernelDeviceInUse } from '../../src/engine/device-in-use';
import type { ControllerSession, SessionOptions } from '../../src/engine/session';
import { ControlVerb } from '../../src/wire/control';
import { callDaemon } from '../../src/engine/control-client';
import { readState, writeState } from '../../src/engine/state-file';
import { connectBinding } from '../../src/cli/verbs/daemon';
import { ErrorCode, NvmfNbdError } from '../../src/errors';
import { formatDhchapKey, generateDhchapKey } from '../../src/wire/dhchap';
import { throwsCode, rejectsCode } from '../helpers/assert-code';

const HOST = { hostnqn: 'nqn.2014-08.org.nvmexpress:uuid:0c5a2f1e-5d1b-4b8e-9a51-8d2b4a9c6e11', hostid: '0c5a2f1e-5d1b-4b8e-9a51-8d2b4a9c6e11' };

class FakeSession extends EventEmitter {
  readonly exports: Array<{ name: string; nsid: number; size: number; blockSize: number; endpoint: { unix: string }; device?: string }>;
  attachCalls = 0;
  closed = false;
  state = 'live';
  readonly controller = {
    cntlid: 1,
    namespaces: new Map([[1, {}]]),
    identify: { mn: 'fake', sn: 'S1', fr: '1.0' },
    options: {},
    adminCommand: async (): Promise<{ cqe: { dw0: number; dw1: number; status: unknown }; data?: Buffer }> => ({ cqe: { dw0: 7, dw1: 0, status: {} }, data: Buffer.alloc(4096) }),
  };

  constructor(readonly name: string, dir: string) {
    super();
    this.exports = [{ name: `${name}n1`, nsid: 1, size: 1 << 20, blockSize: 512, endpoint: { unix: path.join(dir, name, `${name}n1.sock`) } }];
  }

  async attachAll(): Promise<void> {
    this.attachCalls++;
    for (const e of this.exports) e.device ??= '/dev/nbd9';
  }

  describe(): Record<string, unknown> {
    return { name: this.name, state: this.state, exports: this.exports.map((e) => ({ name: e.name, endpoint: `unix:${e.endpoint.unix}`, device: e.device ?? null })) };
  }

  async close(): Promise<void> {
    this.closed = true;
  }
}

interface Harness { dir: string; sessions: FakeSession[]; failures: number; opened: SessionOptions[] }

async function startDaemon(h: Harness, extra: Partial<Parameters<typeof Daemon.start>[0]> = {}): Promise<Daemon> {
  return Daemon.start({
    stateDir: h.dir,
    connect: { ...connectBinding(), render: (s: ControllerSession) => ({ text: `${s.name}\n`, json: { name: s.name } }) },
    openSession: async (o) => {
      h.opened.push(o);
      if (h.failures > 0) {
        h.failures--;
        throw new NvmfNbdError(ErrorCode.CONNECT_FAILED, 'target down');
      }
      const s = new FakeSession(o.name, 'unixDir' in o.nbd ? o.nbd.unixDir : '/x');
      h.sessions.push(s);
      return s as unknown as ControllerSession;
    },
    deviceInUse: async (d) => d === '/dev/nbd3',
    ...extra,
  });
}

async function harness(): Promise<Harness> {
  return { dir: await fsp.mkdtemp(path.join(os.tmpdir(), 'daemon-engine-')), sessions: [], failures: 0, opened: [] };
}

const args = (nqn: string, more: Record<string, unknown> = {}): Record<string, unknown> => ({ traddr: '127.0.0.1', trsvcid: 4420, nqn, ...HOST, ...more });

test('names are the lowest free nvmeN; the state file follows connect and disconnect; secrets never land on disk', { timeout: 10_000 }, async () => {
  const h = await harness();
  const d = await startDaemon(h);
  try {
    const inline = formatDhchapKey(generateDhchapKey());
    const inlineCtrl = formatDhchapKey(generateDhchapKey({ keyLength: 48 }));
    const keyFile = path.join(h.dir, 'host.key');
    await fsp.writeFile(keyFile, `${formatDhchapKey(generateDhchapKey())}\n`, { mode: 0o600 });
    const a = (await d.handle({ id: 1, verb: ControlVerb.CONNECT, args: args('nqn.a', { 'dhchap-secret': inline }) })) as { name: string };
    const b = (await d.handle({ id: 2, verb: ControlVerb.CONNECT, args: args('nqn.b', { 'dhchap-secret': `file:${keyFile}`, 'dhchap-ctrl-secret': inlineCtrl }) })) as { name: string };
    // The secrets reach the controller (kept in memory for reconnects)…
    assert.equal((h.opened[1]?.controller as { dhchap?: { ctrlSecret?: unknown } }).dhchap?.ctrlSecret !== undefined, true);
    // …but the state file keeps only the file: reference, never an inline secret.
    const st0 = await readState(path.join(h.dir, 'state.json'));
    assert.equal(st0.controllers.find((x) => x.args.nqn === 'nqn.b')?.args['dhchap-secret'], `file:${keyFile}`);
    assert.equal(st0.controllers.find((x) => x.args.nqn === 'nqn.b')?.args['dhchap-ctrl-secret'], undefined);
    assert.equal(st0.controllers.find((x) => x.args.nqn === 'nqn.a')?.args['dhchap-secret'], undefined);
    const text0 = await fsp.readFile(path.join(h.dir, 'state.json'), 'utf8');
    assert.ok(!text0.includes(inline.slice(10, 40)) && !text0.includes(inlineCtrl.slice(10, 40)));
    assert.deepEqual([a.name, b.name], ['nvme0', 'nvme1']);
    await d.handle({ id: 3, verb: ControlVerb.DISCONNECT, args: { name: 'nvme0' } });
    assert.equal(h.sessions[0]?.closed, true);
    const c = (await d.handle({ id: 4, verb: ControlVerb.CONNECT, args: args('nqn.c') })) as { name: string };
    assert.equal(c.name, 'nvme0', 'the freed name is reused');
    const st = await readState(path.join(h.dir, 'state.json'));
    assert.deepEqual(st.controllers.map((x) => [x.name, x.args.nqn]), [['nvme0', 'nqn.c'], ['nvme1', 'nqn.b']]);
    assert.ok(!(await fsp.readFile(path.join(h.dir, 'state.json'), 'utf8')).includes(inline.slice(10, 40)));
    // Every session serves under the daemon's default unix directory.
    assert.deepEqual(h.opened[0]?.nbd, { unixDir: path.join(h.dir, 'nbd') });
  } finally {
    await d.shutdown();
    await fsp.rm(h.dir, { recursive: true });
  }
});

test('a repeated connect answers with the existing controller; bad arguments are refused before a name is taken', { timeout: 10_000 }, async () => {
  const h = await harness();
  const d = await startDaemon(h);
  try {
    await d.handle({ id: 1, verb: ControlVerb.CONNECT, args: args('nqn.a') });
    const code = async (a: Record<string, unknown>): Promise<string> => {
      const r = await d.handleLine(JSON.stringify({ id: 9, verb: 'connect', args: a }));
      return r.ok ? 'accepted' : r.error.code;
    };
    // Idempotent: the same subsystem over the same path answers with the existing controller.
    const again = (await d.handle({ id: 2, verb: ControlVerb.CONNECT, args: args('nqn.a') })) as { name: string; existing?: boolean };
    assert.deepEqual([again.name, again.existing], ['nvme0', true]);
    assert.equal(h.opened.length, 1, 'no second association');
    assert.equal(await code(args('nqn.b', { 'no-such-flag': 1 })), ErrorCode.CLI_USAGE);
    assert.equal(await code(args('nqn.b', { trsvcid: 'x' })), ErrorCode.CLI_USAGE);
    assert.equal(await code(args('nqn.b', { trsvcid: 70000 })), ErrorCode.CLI_USAGE);
    assert.equal(await code({ traddr: '127.0.0.1', ...HOST }), ErrorCode.CLI_USAGE, 'no -n');
    assert.deepEqual(d.names(), ['nvme0']);
    // -D/--duplicate-connect: a second association on purpose.
    const dup = (await d.handle({ id: 3, verb: ControlVerb.CONNECT, args: args('nqn.a', { 'duplicate-connect': true }) })) as { name: string; existing?: boolean };
    assert.deepEqual([dup.name, dup.existing], ['nvme1', undefined]);
    assert.equal(h.opened.length, 2);
  } finally {
    await d.shutdown();
    await fsp.rm(h.dir, { recursive: true });
  }
});

test('restart: entries reconnect in the background (retrying while the target is down) and a held device is adopted', { timeout: 15_000 }, async () => {
  const h = await harness();
  await writeState(path.join(h.dir, 'state.json'), {
    version: 1,
    controllers: [{ name: 'nvme4', args: args('nqn.a', { attach: true, 'reconnect-delay': 1 }), devices: [{ export: 'nvme4n1', device: '/dev/nbd3' }] }],
  });
  h.failures = 1;
  const d = await startDaemon(h);
  try {
    const list = async (): Promise<Array<{ name: string; state: string; lastError: { code: string } | null; exports: Array<{ device: string | null }> }>> =>
      ((await d.handle({ id: 1, verb: ControlVerb.LIST, args: {} })) as { controllers: [] }).controllers;
    // Wait for the first (failing) attempt to be recorded, not for a fixed 100 ms.
    for (let i = 0; i < 200 && (await list())[0]?.lastError == null; i++) await new Promise((r) => setTimeout(r, 10));
    const first = await list();
    assert.equal(first[0]?.state, 'connecting');
    assert.equal(first[0]?.lastError?.code, ErrorCode.CONNECT_FAILED);
    // A new connect cannot take the restored name.
    assert.equal(((await d.handle({ id: 2, verb: ControlVerb.CONNECT, args: args('nqn.z') })) as { name: string }).name, 'nvme0');
    for (let i = 0; i < 40 && (await list()).find((x) => x.name === 'nvme4')?.state !== 'live'; i++) await new Promise((r) => setTimeout(r, 100));
    const l = await list();
    assert.equal(l[1]?.name, 'nvme4');
    assert.equal(l[1]?.state, 'live');
    const s = h.sessions.find((x) => x.name === 'nvme4') as FakeSession;
    assert.equal(s.exports[0]?.device, '/dev/nbd3', 'adopted, not a new device');
    assert.equal(h.opened.filter((o) => o.name === 'nvme4').every((o) => o.attach === false), true, 'the session never attaches by itself');
  } finally {
    await d.shutdown();
    await fsp.rm(h.dir, { recursive: true });
  }
});

test('a dead controller stays listed until disconnect; disconnect by device finds it', { timeout: 10_000 }, async () => {
  const h = await harness();
  const d = await startDaemon(h);
  try {
    await d.handle({ id: 1, verb: ControlVerb.CONNECT, args: args('nqn.a', { attach: true }) });
    const s = h.sessions[0] as FakeSession;
    s.state = 'dead';
    s.emit('dead', new NvmfNbdError(ErrorCode.CONTROLLER_LOST, 'gone'));
    const l = (await d.handle({ id: 2, verb: ControlVerb.LIST, args: {} })) as { controllers: Array<{ state: string }> };
    assert.equal(l.controllers[0]?.state, 'dead');
    const r = (await d.handle({ id: 3, verb: ControlVerb.DISCONNECT, args: { device: '/dev/nbd9' } })) as { disconnected: string[] };
    assert.deepEqual(r.disconnected, ['nvme0']);
    await rejectsCode(d.handle({ id: 4, verb: ControlVerb.DISCONNECT, args: { device: '/dev/nbd9' } }), ErrorCode.NO_SUCH_CONTROLLER);
  } finally {
    await d.shutdown();
    await fsp.rm(h.dir, { recursive: true });
  }
});

test('admin pass-through refuses what would break the session; data direction is checked', { timeout: 10_000 }, async () => {
  const h = await harness();
  const d = await startDaemon(h);
  try {
    await d.handle({ id: 1, verb: ControlVerb.CONNECT, args: args('nqn.a') });
    const passthru = (a: Record<string, unknown>): Promise<unknown> => d.handle({ id: 2, verb: ControlVerb.ADMIN_PASSTHRU, args: { name: 'nvme0', ...a } });
    await rejectsCode(passthru({ opcode: 0x7f }), ErrorCode.INVALID_ARGUMENT);
    await rejectsCode(passthru({ opcode: 0x0c }), ErrorCode.INVALID_ARGUMENT);
    await rejectsCode(passthru({ opcode: 0x06, direction: 'read' }), ErrorCode.CLI_USAGE, 'read without a length');
    await rejectsCode(passthru({ opcode: 0x18, dataLen: 512 }), ErrorCode.CLI_USAGE, 'no-data opcode with data');
    await rejectsCode(passthru({ opcode: 0x06, dataLen: 1 << 20, direction: 'read' }), ErrorCode.CLI_USAGE, 'over 512 KiB');
    await passthru({ opcode: 0x06, dataLen: 4096, cdw10: 1 }); // accepted
    await rejectsCode(passthru({ name: 'nvme5', opcode: 0x06, dataLen: 4096 }), ErrorCode.NO_SUCH_CONTROLLER);
    await rejectsCode(d.handle({ id: 3, verb: ControlVerb.ID_NS, args: { name: 'nvme0', nsid: 2 } }), ErrorCode.NAMESPACE_NOT_FOUND);
  } finally {
    await d.shutdown();
    await fsp.rm(h.dir, { recursive: true });
  }
});

test('one daemon per control socket; shutdown removes the socket; a stale one is replaced', { timeout: 10_000 }, async () => {
  const h = await harness();
  const d = await startDaemon(h);
  await rejectsCode(startDaemon(h), ErrorCode.DAEMON_RUNNING);
  assert.deepEqual(await callDaemon(path.join(h.dir, 'control.sock'), ControlVerb.PING).then((r) => (r as { controllers: number }).controllers), 0);
  await d.shutdown();
  await assert.rejects(fsp.stat(path.join(h.dir, 'control.sock')), { code: 'ENOENT' });
  await rejectsCode(callDaemon(path.join(h.dir, 'control.sock'), ControlVerb.PING), ErrorCode.DAEMON_UNAVAILABLE);
  await fsp.rm(h.dir, { recursive: true });
});

test('endpoint specs, argument checks and the held-device probe', async () => {
  assert.deepEqual(endpointFor('nvme3', parseDaemonNbdSpec('tcp:127.0.0.1:10809')), { tcp: { host: '127.0.0.1', port: 10812 } });
  assert.deepEqual(endpointFor('nvme3', parseDaemonNbdSpec('tcp:127.0.0.1:0')), { tcp: { host: '127.0.0.1', port: 0 } });
  assert.deepEqual(endpointFor('nvme3', parseDaemonNbdSpec('unix:/run/x')), { unixDir: '/run/x' });
  const specs = [{ long: 'n', type: 'int', min: 1, max: 3, help: '' }, { long: 'f', type: 'boolean', help: '' }] as const;
  throwsCode(() => checkArgs({ n: 4 }, specs), ErrorCode.CLI_USAGE);
  throwsCode(() => checkArgs({ f: 'yes' }, specs), ErrorCode.CLI_USAGE);
  checkArgs({ n: 2, f: true }, specs);
  const root = await fsp.mkdtemp(path.join(os.tmpdir(), 'daemon-probe-'));
  await fsp.mkdir(path.join(root, 'sys', 'block', 'nbd1'), { recursive: true });
  await fsp.writeFile(path.join(root, 'sys', 'block', 'nbd1', 'pid'), '42\n');
  await fsp.mkdir(path.join(root, 'proc', '77'), { recursive: true });
  await fsp.writeFile(path.join(root, 'proc', '77', 'cmdline'), ['/usr/sbin/nbd-client', '-unix', '/s', '/dev/nbd2', '-p', ''].join('\0'));
  assert.equal(await kernelDeviceInUse('/dev/nbd1', path.join(root, 'sys'), path.join(root, 'proc')), true, 'connected');
  assert.equal(await kernelDeviceInUse('/dev/nbd2', path.join(root, 'sys'), path.join(root, 'proc')), true, 'persist client between reconnects');
  assert.equal(await kernelDeviceInUse('/dev/nbd3', path.join(root, 'sys'), path.join(root, 'proc')), false);
  await fsp.rm(root, { recursive: true });
});
