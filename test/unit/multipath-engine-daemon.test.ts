/**
 * The daemon's multipath bookkeeping (issue 12 item 1) in-process with fake sessions that
 * record addPath/removePath: a connect to a second address of a connected subsystem (same NQN,
 * same host NQN) adds a path instead of a second disk; another host NQN or -D makes a subsystem
 * of its own; the state file keeps the paths (no secrets) and a restarted daemon restores them
 * into one session; disconnect of one path (by name or address) keeps the subsystem, its last
 * path or -n removes it; the daemon's --iopolicy is kept with the subsystems that gave none;
 * show-topology answers per subsystem.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Daemon } from '../../src/engine/daemon';
import type { ControllerSession, SessionOptions } from '../../src/engine/session';
import type { TopologySubsystem } from '../../src/engine/topology';
import { ControlVerb } from '../../src/wire/control';
import { readState, writeState } from '../../src/engine/state-file';
import { connectBinding } from '../../src/cli/verbs/daemon';
import { ErrorCode, NvmfNbdError } from '../../src/errors';
import { rejectsCode } from '../helpers/assert-code';
import { formatDhchapKey, generateDhchapKey } from '../../src/wire/dhchap';

const HOST = { hostnqn: 'nqn.2014-08.org.nvmexpress:uuid:0c5a2f1e-5d1b-4b8e-9a51-8d2b4a9c6e11', hostid: '0c5a2f1e-5d1b-4b8e-9a51-8d2b4a9c6e11' };
const OTHER_HOST = { hostnqn: 'nqn.2014-08.org.nvmexpress:uuid:9c5a2f1e-5d1b-4b8e-9a51-8d2b4a9c6e19', hostid: '9c5a2f1e-5d1b-4b8e-9a51-8d2b4a9c6e19' };

/** A session that keeps a list of paths (name → traddr:trsvcid) like the real one. */
class FakeMultipathSession extends EventEmitter {
  readonly exports: Array<{ name: string; nsid: number; size: number; blockSize: number; endpoint: { unix: string }; device?: string }>;
  readonly paths: Array<{ name: string; traddr: string; trsvcid: number }> = [];
  closed = false;
  state = 'live';
  failAdd = 0;
  readonly controller = { cntlid: 1, namespaces: new Map([[1, {}]]), identify: { mn: 'fake', sn: 'S1', fr: '1.0' }, options: {} };

  constructor(readonly o: SessionOptions, private readonly down: ReadonlySet<number>) {
    super();
    this.exports = [{ name: `${o.name}n1`, nsid: 1, size: 1 << 20, blockSize: 512, endpoint: { unix: `/x/${o.name}n1.sock` } }];
    this.paths.push({ name: o.pathName ?? o.name, traddr: o.controller.traddr, trsvcid: o.controller.trsvcid });
  }

  async addPath(name: string, c: SessionOptions['controller']): Promise<void> {
    if (this.down.has(c.trsvcid)) throw new NvmfNbdError(ErrorCode.CONNECT_FAILED, 'target down');
    if (this.failAdd > 0) {
      this.failAdd--;
      throw new NvmfNbdError(ErrorCode.CONNECT_FAILED, 'path down');
    }
    this.paths.push({ name, traddr: c.traddr, trsvcid: c.trsvcid });
  }

  async removePath(name: string): Promise<void> {
    const i = this.paths.findIndex((p) => p.name === name);
    if (i < 0) throw new NvmfNbdError(ErrorCode.NO_SUCH_CONTROLLER, name);
    this.paths.splice(i, 1);
  }

  async attachAll(): Promise<void> {
    for (const e of this.exports) e.device ??= '/dev/nbd9';
  }

  topology(): TopologySubsystem {
    return {
      name: this.o.name, nqn: this.o.controller.subnqn, hostnqn: this.o.controller.hostnqn, iopolicy: this.o.iopolicy ?? 'numa', state: this.state,
      paths: this.paths.map((p) => ({ name: p.name, traddr: p.traddr, trsvcid: p.trsvcid, cntlid: 1, state: 'live', reconnects: 0 })),
      namespaces: [{ nsid: 1, export: `${this.o.name}n1`, device: null, size: 1 << 20, paths: this.paths.map((p, i) => ({ path: p.name, anaGroup: 1, anaState: 'optimized', current: i === 0, inFlight: 0, reads: 0, writes: 0 })) }],
    };
  }

  describe(): Record<string, unknown> {
    return { name: this.o.name, state: this.state, paths: this.topology().paths, exports: this.exports.map((e) => ({ name: e.name, device: e.device ?? null })) };
  }

  async close(): Promise<void> {
    this.closed = true;
  }
}

interface Harness { dir: string; sessions: FakeMultipathSession[]; opened: SessionOptions[]; down: Set<number> }

async function harness(): Promise<Harness> {
  return { dir: await fsp.mkdtemp(path.join(os.tmpdir(), 'mp-engine-daemon-')), sessions: [], opened: [], down: new Set() };
}

async function startDaemon(h: Harness, extra: Partial<Parameters<typeof Daemon.start>[0]> = {}): Promise<Daemon> {
  return Daemon.start({
    stateDir: h.dir,
    connect: { ...connectBinding(), render: (s: ControllerSession) => ({ text: `${s.name}\n`, json: { name: s.name } }) },
    openSession: async (o) => {
      h.opened.push(o);
      if (h.down.has(o.controller.trsvcid)) throw new NvmfNbdError(ErrorCode.CONNECT_FAILED, 'target down');
      const s = new FakeMultipathSession(o, h.down);
      h.sessions.push(s);
      return s as unknown as ControllerSession;
    },
    deviceInUse: async () => false,
    ...extra,
  });
}

const args = (port: number, more: Record<string, unknown> = {}): Record<string, unknown> => ({ traddr: '127.0.0.1', trsvcid: port, nqn: 'nqn.mp', ...HOST, ...more });

async function until(cond: () => boolean | Promise<boolean>, what: string): Promise<void> {
  for (let i = 0; i < 500; i++) {
    if (await cond()) return;
    await new Promise((r) => setTimeout(r, 10));
  }
  assert.fail(`timed out waiting for ${what}`);
}

test('a second address of a connected subsystem is a path of it; the same path again is idempotent; -D and another host NQN are subsystems of their own', { timeout: 10_000 }, async () => {
  const h = await harness();
  const d = await startDaemon(h);
  try {
    const a = (await d.handle({ id: 1, verb: ControlVerb.CONNECT, args: args(4420) })) as { name: string };
    const b = (await d.handle({ id: 2, verb: ControlVerb.CONNECT, args: args(4421) })) as { name: string; addedPath?: boolean; path?: string; paths?: string[] };
    assert.equal(a.name, 'nvme0');
    assert.deepEqual([b.name, b.addedPath, b.path, b.paths], ['nvme0', true, 'nvme1', ['nvme0', 'nvme1']]);
    assert.equal(h.opened.length, 1, 'one session (one export per namespace)');
    assert.deepEqual(h.sessions[0]?.paths.map((p) => [p.name, p.trsvcid]), [['nvme0', 4420], ['nvme1', 4421]]);
    const again = (await d.handle({ id: 3, verb: ControlVerb.CONNECT, args: args(4421) })) as { name: string; existing?: boolean };
    assert.deepEqual([again.name, again.existing], ['nvme0', true]);
    assert.equal(h.sessions[0]?.paths.length, 2);
    // -D: a second association on purpose, a second disk; later connects still join nvme0.
    const dup = (await d.handle({ id: 4, verb: ControlVerb.CONNECT, args: args(4422, { 'duplicate-connect': true }) })) as { name: string; addedPath?: boolean };
    assert.deepEqual([dup.name, dup.addedPath], ['nvme2', undefined]);
    const other = (await d.handle({ id: 5, verb: ControlVerb.CONNECT, args: args(4423, OTHER_HOST) })) as { name: string; addedPath?: boolean };
    assert.deepEqual([other.name, other.addedPath], ['nvme3', undefined], 'another host NQN is another host');
    const c = (await d.handle({ id: 6, verb: ControlVerb.CONNECT, args: args(4424) })) as { name: string; path?: string };
    assert.deepEqual([c.name, c.path], ['nvme0', 'nvme4']);
    assert.equal(h.opened.length, 3);
    // A path that does not connect is the answer and is not kept.
    (h.sessions[0] as FakeMultipathSession).failAdd = 1;
    await rejectsCode(d.handle({ id: 7, verb: ControlVerb.CONNECT, args: args(4425) }), ErrorCode.CONNECT_FAILED);
    assert.deepEqual(h.sessions[0]?.paths.map((p) => p.name), ['nvme0', 'nvme1', 'nvme4']);
    const t = (await d.handle({ id: 8, verb: ControlVerb.SHOW_TOPOLOGY, args: {} })) as { subsystems: TopologySubsystem[] };
    assert.deepEqual(t.subsystems.map((s) => [s.name, s.paths.map((p) => p.name)]), [['nvme0', ['nvme0', 'nvme1', 'nvme4']], ['nvme2', ['nvme2']], ['nvme3', ['nvme3']]]);
  } finally {
    await d.shutdown();
    await fsp.rm(h.dir, { recursive: true });
  }
});

test('disconnect: one path by name or address keeps the subsystem and its exports; the last path or -n removes it', { timeout: 10_000 }, async () => {
  const h = await harness();
  const d = await startDaemon(h);
  try {
    await d.handle({ id: 1, verb: ControlVerb.CONNECT, args: args(4420, { attach: true }) });
    await d.handle({ id: 2, verb: ControlVerb.CONNECT, args: args(4421) });
    await d.handle({ id: 3, verb: ControlVerb.CONNECT, args: args(4422) });
    const s = h.sessions[0] as FakeMultipathSession;
    // The first path goes: the subsystem keeps its name (nvme0n1 stays) and its device.
    assert.deepEqual(((await d.handle({ id: 4, verb: ControlVerb.DISCONNECT, args: { name: 'nvme0' } })) as { disconnected: string[] }).disconnected, ['nvme0']);
    assert.deepEqual(s.paths.map((p) => p.name), ['nvme1', 'nvme2']);
    assert.equal(s.closed, false);
    assert.equal(s.exports[0]?.device, '/dev/nbd9');
    // By address.
    assert.deepEqual(((await d.handle({ id: 5, verb: ControlVerb.DISCONNECT, args: { traddr: '127.0.0.1', trsvcid: 4422 } })) as { disconnected: string[] }).disconnected, ['nvme2']);
    assert.deepEqual(s.paths.map((p) => p.name), ['nvme1']);
    await rejectsCode(d.handle({ id: 6, verb: ControlVerb.DISCONNECT, args: { traddr: '127.0.0.1', trsvcid: 4499 } }), ErrorCode.NO_SUCH_CONTROLLER);
    const st = await readState(path.join(h.dir, 'state.json'));
    assert.deepEqual(st.controllers.map((c) => [c.name, c.paths?.map((p) => p.name)]), [['nvme0', ['nvme1']]]);
    // A freed path name is not taken while the subsystem still has that name.
    const n = (await d.handle({ id: 7, verb: ControlVerb.CONNECT, args: args(4423) })) as { path?: string };
    assert.equal(n.path, 'nvme2');
    // The last path by name closes the subsystem.
    await d.handle({ id: 8, verb: ControlVerb.DISCONNECT, args: { name: 'nvme2' } });
    assert.equal(s.closed, false);
    const last = (await d.handle({ id: 9, verb: ControlVerb.DISCONNECT, args: { name: 'nvme1' } })) as { disconnected: string[] };
    assert.deepEqual(last.disconnected, ['nvme0']);
    assert.equal(s.closed, true);
    // -n: every path.
    await d.handle({ id: 10, verb: ControlVerb.CONNECT, args: args(4420) });
    await d.handle({ id: 11, verb: ControlVerb.CONNECT, args: args(4421) });
    const all = (await d.handle({ id: 12, verb: ControlVerb.DISCONNECT, args: { nqn: 'nqn.mp' } })) as { disconnected: string[] };
    assert.deepEqual(all.disconnected, ['nvme0']);
    assert.equal(h.sessions[1]?.closed, true);
    assert.deepEqual(d.names(), []);
  } finally {
    await d.shutdown();
    await fsp.rm(h.dir, { recursive: true });
  }
});

test('state file keeps the paths without secrets; a restart restores them into one session over the first path that answers', { timeout: 15_000 }, async () => {
  const h = await harness();
  const d = await startDaemon(h, { iopolicy: 'round-robin' });
  const secret = formatDhchapKey(generateDhchapKey());
  try {
    await d.handle({ id: 1, verb: ControlVerb.CONNECT, args: args(4420) });
    await d.handle({ id: 2, verb: ControlVerb.CONNECT, args: args(4421, { 'dhchap-secret': secret }) });
    await d.handle({ id: 3, verb: ControlVerb.CONNECT, args: args(4430, { nqn: 'nqn.single', iopolicy: 'queue-depth' }) });
    assert.equal(h.opened[0]?.iopolicy, 'round-robin', "the daemon's --iopolicy");
    assert.equal(h.opened[1]?.iopolicy, 'queue-depth', 'the connect\'s own');
  } finally {
    await d.shutdown();
  }
  const file = path.join(h.dir, 'state.json');
  const text = await fsp.readFile(file, 'utf8');
  assert.ok(!text.includes(secret.slice(10, 40)) && !text.includes('dhchap'), 'no secret in the state file');
  const st = await readState(file);
  assert.deepEqual(st.controllers.map((c) => [c.name, c.args.iopolicy, c.paths?.map((p) => [p.name, p.args.trsvcid])]), [
    ['nvme0', 'round-robin', [['nvme0', 4420], ['nvme1', 4421]]],
    ['nvme2', 'queue-depth', undefined],
  ]);
  // Restart with the first path's port down: the subsystem comes back over the second, then
  // the first joins when it answers again (retried every reconnect delay).
  await writeState(file, { ...st, controllers: st.controllers.map((c) => (c.name !== 'nvme0' ? c : { ...c, paths: c.paths?.map((p) => ({ ...p, args: { ...p.args, 'reconnect-delay': 1 } })) })) });
  h.sessions.length = 0;
  h.opened.length = 0;
  h.down.add(4420);
  const d2 = await startDaemon(h);
  try {
    await until(() => h.sessions.some((s) => s.o.name === 'nvme0'), 'nvme0 restored');
    const s = h.sessions.find((x) => x.o.name === 'nvme0') as FakeMultipathSession;
    assert.equal(s.o.pathName, 'nvme1', 'opened over the path that answered');
    assert.equal(s.o.iopolicy, 'round-robin', 'iopolicy restored');
    assert.equal(h.opened.filter((o) => o.name === 'nvme0').length, 2, 'first path tried, then the second');
    const t = (await d2.handle({ id: 1, verb: ControlVerb.SHOW_TOPOLOGY, args: {} })) as { subsystems: TopologySubsystem[] };
    assert.deepEqual(t.subsystems[0]?.paths.map((p) => [p.name, p.state]), [['nvme1', 'live'], ['nvme0', 'connecting']]);
    // The first path returns: it is added to the same session (the fake's addPath does not
    // dial, so the port is what the test says is up).
    h.down.delete(4420);
    await until(() => s.paths.length === 2, 'the first path added back');
    assert.deepEqual(s.paths.map((p) => [p.name, p.trsvcid]), [['nvme1', 4421], ['nvme0', 4420]]);
    assert.equal(h.opened.filter((o) => o.name === 'nvme0').length, 2, 'no second session');
  } finally {
    await d2.shutdown();
    await fsp.rm(h.dir, { recursive: true });
  }
});

test('discovery-log and config entries of one subsystem at two addresses become one subsystem with two paths', { timeout: 10_000 }, async () => {
  const h = await harness();
  const d = await startDaemon(h);
  try {
    d.applyConfig([
      { kind: 'io', args: { transport: 'tcp', ...args(4420) }, persistent: false, where: 'config.json:$[0]' },
      { kind: 'io', args: { transport: 'tcp', ...args(4421) }, persistent: false, where: 'config.json:$[1]' },
    ]);
    await until(() => (h.sessions[0]?.paths.length ?? 0) === 2, 'two paths');
    assert.equal(h.opened.length, 1);
    assert.deepEqual(d.names(), ['nvme0']);
  } finally {
    await d.shutdown();
    await fsp.rm(h.dir, { recursive: true });
  }
});
