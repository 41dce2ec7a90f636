/**
 * CLI of the host engine: flag errors (exit 2), host identity (nvme-cli files, else generated
 * and kept), output printers, and discover / list-ns / id-ctrl / id-ns against the scripted
 * controller of test/helpers/fake-target.ts, run through `main()` in-process.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { execFile } from 'node:child_process';
import { loadHostIdentity } from '../../src/controller/host-identity';
import { stateDir } from '../../src/config/state-dir';
import { formatJson, formatTable } from '../../src/cli/output';
import { ErrorCode, NvmfNbdError } from '../../src/errors';
import { FakeTarget, serveController } from '../helpers/fake-target';
import type { ControllerModel } from '../helpers/fake-target';
import { throwsCode } from '../helpers/assert-code';

const T = { timeout: 10_000 };
const SUBNQN = 'nqn.2024-01.io.test:cli';

const MAIN = path.resolve(__dirname, '../../src/cli/main.js');

/**
 * Run the CLI as a child process (the verbs write to process.stdout, which the test reporter
 * shares), with a private state directory. Asynchronous, so an in-process fake target serves it.
 */
function run(argv: string[]): Promise<{ code: number; out: string; err: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [MAIN, ...argv], { env: { ...process.env, NVMF_NBD_STATE_DIR: STATE }, timeout: 8000 }, (error, stdout, stderr) => {
      const code = error === null ? 0 : typeof (error as { code?: unknown }).code === 'number' ? (error as { code: number }).code : -1;
      resolve({ code, out: stdout, err: stderr });
    });
  });
}

function tmpdir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'cli-host-'));
}

const STATE = fs.mkdtempSync(path.join(os.tmpdir(), 'cli-host-state-'));
const ID = ['-q', 'nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555', '-I', '11111111-2222-3333-4444-555555555555'];

for (const [name, argv] of [
  ['unknown flag', ['connect', '--bogus']],
  ['missing -a', ['discover']],
  ['missing -n', ['connect', '-a', '127.0.0.1', ...ID]],
  ['non-tcp transport', ['discover', '-t', 'rdma', '-a', '127.0.0.1', ...ID]],
  ['bad port', ['discover', '-a', '127.0.0.1', '-s', '70000']],
  ['bad host id', ['discover', '-a', '127.0.0.1', '-I', 'not-a-uuid', '-q', 'nqn.x:y']],
  ['bad output format', ['list-ns', '-a', '127.0.0.1', '-n', SUBNQN, '-o', 'yaml', ...ID]],
  ['id-ns without -n', ['id-ns', '-a', '127.0.0.1', '--nqn', SUBNQN, ...ID]],
] as const) {
  test(`usage error (${name}) → exit 2 with CLI_ERR_USAGE`, T, async () => {
    const r = await run([...argv]);
    assert.equal(r.code, 2, r.err);
    assert.match(r.err, /CLI_ERR_USAGE/);
  });
}

test('--help works on every host verb', T, async () => {
  for (const v of ['discover', 'connect', 'id-ctrl', 'id-ns', 'list-ns']) {
    const r = await run([v, '--help']);
    assert.equal(r.code, 0);
    assert.match(r.out, new RegExp(`Usage: nvmf-nbd ${v}`));
  }
});

test('host identity: /etc/nvme files win when present', () => {
  const etc = tmpdir();
  const state = tmpdir();
  fs.writeFileSync(path.join(etc, 'hostnqn'), 'nqn.2014-08.org.nvmexpress:uuid:aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee\n');
  fs.writeFileSync(path.join(etc, 'hostid'), 'AAAAAAAA-BBBB-CCCC-DDDD-000000000001\n');
  const id = loadHostIdentity({ etcDir: etc, stateDir: state });
  assert.equal(id.hostnqn, 'nqn.2014-08.org.nvmexpress:uuid:aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee');
  assert.equal(id.hostid, 'aaaaaaaa-bbbb-cccc-dddd-000000000001');
  assert.deepEqual(fs.readdirSync(state), []);
});

test('host identity: with no DMI UUID and no machine-id, random once, kept in the state directory, stable across loads', () => {
  const etc = path.join(tmpdir(), 'absent');
  const state = path.join(tmpdir(), 'state');
  const none = { dmiUuidFile: path.join(etc, 'no-dmi'), machineIdFile: path.join(etc, 'no-machine-id') };
  const a = loadHostIdentity({ etcDir: etc, stateDir: state, ...none });
  assert.match(a.hostnqn, /^nqn\.2014-08\.org\.nvmexpress:uuid:[0-9a-f-]{36}$/);
  assert.equal(a.hostnqn.endsWith(a.hostid), true);
  const b = loadHostIdentity({ etcDir: etc, stateDir: state, ...none });
  assert.deepEqual([b.hostnqn, b.hostid], [a.hostnqn, a.hostid]);
  assert.equal(fs.readFileSync(path.join(state, 'hostnqn'), 'utf8').trim(), a.hostnqn);
});

test('host identity: hostid derived from a uuid-form hostnqn; a bad hostid is CFG_ERR_INVALID', () => {
  const etc = tmpdir();
  const state = tmpdir();
  fs.writeFileSync(path.join(etc, 'hostnqn'), 'nqn.2014-08.org.nvmexpress:uuid:12345678-1234-1234-1234-123456789abc');
  assert.equal(loadHostIdentity({ etcDir: etc, stateDir: state }).hostid, '12345678-1234-1234-1234-123456789abc');
  fs.writeFileSync(path.join(etc, 'hostid'), 'garbage');
  throwsCode(() => loadHostIdentity({ etcDir: etc, stateDir: state }), ErrorCode.CFG_INVALID);
});

test('state directory: $NVMF_NBD_STATE_DIR wins', () => {
  assert.equal(stateDir({ NVMF_NBD_STATE_DIR: '/x/y' }), '/x/y');
});

test('output: aligned table and bigint-safe JSON', () => {
  assert.equal(formatTable(['A', 'BB'], [['xyz', '1'], ['q', '22']]), 'A    BB\n---  --\nxyz  1\nq    22\n');
  assert.equal(JSON.parse(formatJson({ n: 5n, big: 2n ** 64n, b: Buffer.from([1, 2]) })).big, '18446744073709551616');
  assert.deepEqual(JSON.parse(formatJson({ n: 5n, b: Buffer.from([1, 2]) })), { n: 5, b: '0102' });
});

async function withFake(m: ControllerModel, f: (port: number) => Promise<void>): Promise<void> {
  const target = await FakeTarget.start((c) => serveController(c, m));
  try {
    await f(target.port);
  } finally {
    await target.close();
  }
}

const model = (): ControllerModel => ({
  namespaces: new Map([[1, { data: Buffer.alloc(1 << 20), lbaSize: 512 }], [2, { data: Buffer.alloc(1 << 20), lbaSize: 512, dps: 1 }]]),
  discovery: [{ subnqn: SUBNQN, traddr: '10.0.2.15', trsvcid: '4420' }],
});

test('discover -o json and the human table', T, async () => {
  await withFake(model(), async (port) => {
    const j = await run(['discover', '-a', '127.0.0.1', '-s', String(port), '-o', 'json', '--override-traddr', '127.0.0.1', ...ID]);
    assert.equal(j.code, 0, j.err);
    const log = JSON.parse(j.out) as { records: Array<{ subnqn: string; traddr: string; trtype: string; subtype: string }> };
    assert.deepEqual(log.records.map((r) => [r.subnqn, r.traddr, r.trtype, r.subtype]), [[SUBNQN, '127.0.0.1', 'tcp', 'nvme subsystem']]);
    const h = await run(['discover', '-a', '127.0.0.1', '-s', String(port), ...ID]);
    assert.equal(h.code, 0, h.err);
    assert.match(h.out, /Number of Records 1/);
    assert.match(h.out, new RegExp(`10\\.0\\.2\\.15\\s+4420\\s+${SUBNQN.replace(/\./g, '\\.')}`));
  });
});

test('list-ns -o json reports a protection-information namespace as unusable', T, async () => {
  await withFake(model(), async (port) => {
    const r = await run(['list-ns', '-a', '127.0.0.1', '-s', String(port), '-n', SUBNQN, '-o', 'json', ...ID]);
    assert.equal(r.code, 0, r.err);
    const d = JSON.parse(r.out) as { namespaces: Array<{ nsid: number; size: number; usable: boolean; reason?: string }> };
    assert.deepEqual(d.namespaces.map((n) => [n.nsid, n.size, n.usable]), [[1, 1 << 20, true], [2, 0, false]]);
    assert.match(d.namespaces[1]?.reason ?? '', /protection/);
  });
});

test('id-ctrl and id-ns print Identify fields', T, async () => {
  await withFake(model(), async (port) => {
    const c = await run(['id-ctrl', '-a', '127.0.0.1', '-s', String(port), '-n', SUBNQN, '-o', 'json', ...ID]);
    assert.equal(c.code, 0, c.err);
    assert.equal((JSON.parse(c.out) as { mn: string }).mn, 'fake-target');
    const n = await run(['id-ns', '-a', '127.0.0.1', '-s', String(port), '--nqn', SUBNQN, '-n', '1', ...ID]);
    assert.equal(n.code, 0, n.err);
    assert.match(n.out, /nsze\s+: 2048/);
    assert.match(n.out, /lbads:9 rp:0 \(in use\)/);
    const missing = await run(['id-ns', '-a', '127.0.0.1', '-s', String(port), '--nqn', SUBNQN, '-n', '9', ...ID]);
    assert.equal(missing.code, 1);
    assert.match(missing.err, /NVMF_ERR_NAMESPACE_NOT_FOUND/);
  });
});

test('connect to a closed port → exit 1 with NVMF_ERR_CONNECT_FAILED', T, async () => {
  const t = await FakeTarget.start(() => undefined);
  const port = t.port;
  await t.close();
  const r = await run(['connect', '-a', '127.0.0.1', '-s', String(port), '-n', SUBNQN, ...ID]);
  assert.equal(r.code, 1);
  assert.match(r.err, /NVMF_ERR_CONNECT_FAILED/);
});
