/**
 * The pure parts of the engine's multipath (issue 12 items 1, 3): grouping discovery entries by
 * subsystem (NQN + host NQN, -D apart, repeated paths dropped), `--iopolicy` on connect,
 * connect-all and daemon (Linux's names, refused otherwise), disconnect's path selectors, the
 * state file's `paths` round trip (secrets dropped, bad layouts refused with their code), and the
 * renderings of show-topology and list.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { groupBySubsystem, subsystemKey } from '../../src/engine/topology';
import type { TopologySubsystem } from '../../src/engine/topology';
import { pathKey } from '../../src/engine/daemon-args';
import { subsystemsOf, verb as connectAllVerb } from '../../src/cli/verbs/connect-all';
import { ioPolicyFromArgs, verb as connectVerb } from '../../src/cli/verbs/connect';
import { verb as daemonVerb } from '../../src/cli/verbs/daemon';
import { disconnectTarget } from '../../src/cli/verbs/disconnect';
import { formatTopology } from '../../src/cli/verbs/show-topology';
import { formatList } from '../../src/cli/verbs/list';
import { parseArgs } from '../../src/cli/args';
import { connectBinding } from '../../src/cli/verbs/daemon';
import { readState, validateState, writeState } from '../../src/engine/state-file';
import { ErrorCode } from '../../src/errors';
import { throwsCode } from '../helpers/assert-code';

const H1 = 'nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555';
const H2 = 'nqn.2014-08.org.nvmexpress:uuid:21111111-2222-3333-4444-555555555555';
const ID1 = { hostnqn: H1, hostid: '11111111-2222-3333-4444-555555555555' };
const ID2 = { hostnqn: H2, hostid: '21111111-2222-3333-4444-555555555555' };

const entry = (nqn: string, port: number, more: Record<string, unknown> = {}): Record<string, unknown> => ({ transport: 'tcp', traddr: '127.0.0.1', trsvcid: port, nqn, 'output-format': 'normal', ...ID1, ...more });

test('discovery entries group by subsystem NQN and host NQN, in first-seen order; a repeated path is dropped; -D stays apart', () => {
  const list = [
    entry('nqn.a', 4420), entry('nqn.b', 4420), entry('nqn.a', 4421), entry('nqn.a', 4420),
    entry('nqn.a', 4422, ID2), entry('nqn.b', 4421, { 'duplicate-connect': true }), entry('nqn.a', 4423, { traddr: '127.0.0.2' }),
  ];
  const g = subsystemsOf(list);
  assert.deepEqual(g.map((x) => [x.nqn, x.hostnqn, x.paths.map((p) => `${String(p.traddr)}:${String(p.trsvcid)}`)]), [
    ['nqn.a', H1, ['127.0.0.1:4420', '127.0.0.1:4421', '127.0.0.2:4423']],
    ['nqn.b', H1, ['127.0.0.1:4420']],
    ['nqn.a', H2, ['127.0.0.1:4422']],
    ['nqn.b', H1, ['127.0.0.1:4421']],
  ]);
  // The generic form: the key is (nqn, hostnqn), the path key decides repeats.
  const plain = groupBySubsystem([{ nqn: 'x', h: 'h', p: 1 }, { nqn: 'x', h: 'h', p: 1 }, { nqn: 'x', h: 'g', p: 2 }], (o) => o.h, (o) => `${o.nqn}/${o.h}/${o.p}`);
  assert.deepEqual(plain.map((x) => x.paths.length), [1, 1]);
  assert.notEqual(subsystemKey('a', 'b'), subsystemKey('a', 'c'));
  assert.notEqual(subsystemKey('a:b', 'c'), subsystemKey('a', 'b:c'), 'no separator ambiguity');
  assert.equal(pathKey(entry('nqn.a', 4420)), pathKey(entry('nqn.a', 4420, { 'nr-io-queues': 3 })), 'queue settings do not make another path');
});

test('--iopolicy: numa, round-robin, queue-depth on connect, connect-all and daemon; numa by default; anything else is a usage error', () => {
  for (const v of connectVerb.options.filter((o) => o.long === 'iopolicy')) assert.equal(v.default, undefined, 'no declared default: the daemon\'s applies');
  assert.equal(parseArgs(['--iopolicy', 'round-robin'], connectVerb.options).options.iopolicy, 'round-robin');
  assert.equal(parseArgs(['--iopolicy', 'queue-depth'], connectAllVerb.options).options.iopolicy, 'queue-depth');
  assert.equal(parseArgs(['--iopolicy', 'numa'], daemonVerb.options).options.iopolicy, 'numa');
  assert.equal(ioPolicyFromArgs({}), 'numa');
  assert.equal(ioPolicyFromArgs({}, 'queue-depth'), 'queue-depth');
  assert.equal(ioPolicyFromArgs({ iopolicy: 'round-robin' }, 'queue-depth'), 'round-robin');
  const e = throwsCode(() => ioPolicyFromArgs({ iopolicy: 'service-time' }), ErrorCode.CLI_USAGE);
  assert.match(e.message, /service-time/);
  // The daemon checks a control-socket connect with the same rule.
  throwsCode(() => connectBinding().controllerOptions({ traddr: '127.0.0.1', nqn: 'nqn.a', ...ID1, iopolicy: 'fastest' }), ErrorCode.CLI_USAGE);
  connectBinding().controllerOptions({ traddr: '127.0.0.1', nqn: 'nqn.a', ...ID1, iopolicy: 'round-robin' });
});

test('disconnect -a ADDR [-s PORT] [-n NQN] [-w SRC] names paths; -s/-w without -a and two selectors are usage errors', () => {
  assert.deepEqual(disconnectTarget({ traddr: '10.0.0.1' }, []), { traddr: '10.0.0.1' });
  assert.deepEqual(disconnectTarget({ traddr: '10.0.0.1', trsvcid: 4421, nqn: 'nqn.a', 'host-traddr': '10.0.0.9' }, []), { traddr: '10.0.0.1', trsvcid: 4421, nqn: 'nqn.a', 'host-traddr': '10.0.0.9' });
  assert.deepEqual(disconnectTarget({ nqn: 'nqn.a' }, []), { nqn: 'nqn.a' });
  throwsCode(() => disconnectTarget({ trsvcid: 4421 }, []), ErrorCode.CLI_USAGE);
  throwsCode(() => disconnectTarget({ 'host-traddr': '10.0.0.9', nqn: 'nqn.a' }, []), ErrorCode.CLI_USAGE);
  throwsCode(() => disconnectTarget({ traddr: '10.0.0.1' }, ['nvme1']), ErrorCode.CLI_USAGE);
});

test('state file: paths round trip, secrets of every path dropped, the one-path layout unchanged, bad paths refused', async () => {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'mp-engine-state-'));
  try {
    const f = path.join(dir, 'state.json');
    const st = {
      version: 1,
      controllers: [
        {
          name: 'nvme0', args: { nqn: 'nqn.a', traddr: 'a', trsvcid: 4420, iopolicy: 'round-robin', 'dhchap-secret': 'DHHC-1:00:c2VjcmV0c2VjcmV0:' }, devices: [{ export: 'nvme0n1', device: '/dev/nbd2' }],
          paths: [{ name: 'nvme1', args: { nqn: 'nqn.a', traddr: 'b', trsvcid: 4421, 'tls-key': 'NVMeTLSkey-1:01:c2VjcmV0:' } }, { name: 'nvme3', args: { nqn: 'nqn.a', traddr: 'c', trsvcid: 4420 } }],
        },
        { name: 'nvme2', args: { nqn: 'nqn.b', traddr: 'a', trsvcid: 4420 }, devices: [] },
      ],
    };
    await writeState(f, st);
    const text = await fsp.readFile(f, 'utf8');
    assert.ok(!text.includes('c2VjcmV0') && !text.includes('dhchap') && !text.includes('tls-key'), text);
    const back = await readState(f);
    assert.deepEqual(back.controllers[0]?.paths, [{ name: 'nvme1', args: { nqn: 'nqn.a', traddr: 'b', trsvcid: 4421 } }, { name: 'nvme3', args: { nqn: 'nqn.a', traddr: 'c', trsvcid: 4420 } }]);
    assert.equal(back.controllers[0]?.args.iopolicy, 'round-robin');
    assert.equal('paths' in (back.controllers[1] as object), false, 'one path: the layout from before multipath');
    const bad = (paths: unknown, more: unknown[] = []): unknown => ({ version: 1, controllers: [{ name: 'nvme0', args: {}, devices: [], paths }, ...more] });
    for (const v of [
      bad([]), bad('x'), bad([{ name: 'sda', args: {} }]), bad([{ name: 'nvme1' }]), bad([{ name: 'nvme1', args: [] }]),
      bad([{ name: 'nvme1', args: {} }, { name: 'nvme1', args: {} }]),
      bad([{ name: 'nvme1', args: {} }], [{ name: 'nvme5', args: {}, devices: [], paths: [{ name: 'nvme1', args: {} }] }]),
      bad([{ name: 'nvme1', args: {} }], [{ name: 'nvme1', args: {}, devices: [] }]),
    ]) throwsCode(() => validateState(v), ErrorCode.STATE_FILE_INVALID, JSON.stringify(v));
  } finally {
    await fsp.rm(dir, { recursive: true });
  }
});

const TOPO: TopologySubsystem = {
  name: 'nvme0', nqn: 'nqn.a', hostnqn: H1, iopolicy: 'numa', state: 'live',
  paths: [
    { name: 'nvme0', traddr: '127.0.0.1', trsvcid: 4420, cntlid: 3, state: 'live', reconnects: 0 },
    { name: 'nvme1', traddr: '127.0.0.1', trsvcid: 4421, hostTraddr: '127.0.0.2', cntlid: 9, state: 'connecting', reconnects: 2, lastError: { code: 'NVMF_ERR_CONNECTION_CLOSED', message: 'closed' } },
  ],
  namespaces: [{
    nsid: 1, export: 'nvme0n1', device: '/dev/nbd0', size: 1 << 30, heldWrites: 2, paths: [
      { path: 'nvme0', anaGroup: 1, anaState: 'optimized', current: true, inFlight: 4, reads: 100, writes: 50 },
      { path: 'nvme1', anaGroup: 1, anaState: 'inaccessible', current: false, inFlight: 0, reads: 7, writes: 1 },
    ],
  }],
};

test('show-topology prints each subsystem, its paths and each namespace\'s paths with ANA state, counts and the current one', () => {
  const out = formatTopology([TOPO]);
  assert.match(out, /^nvme0 - NQN=nqn\.a$/m);
  assert.match(out, /iopolicy=numa/);
  assert.match(out, /^ {4}nvme1 tcp traddr=127\.0\.0\.1,trsvcid=4421,host_traddr=127\.0\.0\.2 connecting cntlid 9 reconnects 2 \(last error: closed\)$/m);
  assert.match(out, /^ {2}\+- ns 1: nvme0n1 1\.00 GiB \/dev\/nbd0 \(2 writes held\)$/m);
  assert.match(out, /^ {4}\+- nvme0 tcp traddr=127\.0\.0\.1,trsvcid=4420 live optimized \(current\) {2}in flight 4, reads 100, writes 50$/m);
  assert.match(out, /^ {4}`- nvme1 .* connecting inaccessible {2}in flight 0, reads 7, writes 1$/m);
  assert.equal(formatTopology([]), 'no subsystems\n');
  // Control characters from the target never reach the terminal raw.
  assert.ok(!formatTopology([{ ...TOPO, nqn: 'nqn.\u001b[2J' }]).includes('\u001b'));
});

test('list shows the subsystem\'s paths and, per export, each path\'s ANA state, current choice, queue depth and I/O counts', () => {
  const out = formatList([{
    name: 'nvme0', state: 'live', subnqn: 'nqn.a', traddr: '127.0.0.1', trsvcid: 4420, iopolicy: 'numa', paths: TOPO.paths,
    exports: [{ name: 'nvme0n1', nsid: 1, size: 1 << 30, blockSize: 512, endpoint: 'unix:/x', device: '/dev/nbd0', paths: TOPO.namespaces[0]?.paths ?? [] }],
  }]);
  assert.match(out, /^nvme0: 2 paths, iopolicy numa$/m);
  assert.match(out, /^PATH +ADDRESS +STATE +CNTLID +RECONNECTS$/m);
  assert.match(out, /^nvme1 +127\.0\.0\.1:4421 from 127\.0\.0\.2 +connecting +9 +2$/m);
  assert.match(out, /^EXPORT +PATH +ANA +CURRENT +IN FLIGHT +READS +WRITES$/m);
  assert.match(out, /^nvme0n1 +nvme0 +optimized +yes +4 +100 +50$/m);
  assert.match(out, /^nvme0n1 +nvme1 +inaccessible +- +0 +7 +1$/m);
});
