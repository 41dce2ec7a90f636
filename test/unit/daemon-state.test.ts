/**
 * The daemon's state file (round trip, atomic replace, secrets never written, validation codes)
 * and controller name allocation.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { allocateName, emptyState, readState, validateState, writeState } from '../../src/engine/state-file';
import type { DaemonState } from '../../src/engine/state-file';
import { ErrorCode, type ErrorCodeValue } from '../../src/errors';
import { rejectsCode } from '../helpers/assert-code';

async function tmp(): Promise<string> {
  return fsp.mkdtemp(path.join(os.tmpdir(), 'daemon-state-'));
}

const STATE: DaemonState = {
  version: 1,
  controllers: [
    { name: 'nvme0', args: { traddr: '127.0.0.1', trsvcid: 4420, nqn: 'nqn.a', attach: true }, devices: [{ export: 'nvme0n1', device: '/dev/nbd3' }] },
    { name: 'nvme2', args: { traddr: '127.0.0.1', trsvcid: 4421, nqn: 'nqn.b' }, devices: [] },
  ],
};

test('state round trips; file is 0600; a missing file is an empty state', async () => {
  const dir = await tmp();
  const f = path.join(dir, 'sub', 'state.json');
  assert.deepEqual(await readState(f), emptyState());
  await writeState(f, STATE);
  assert.deepEqual(await readState(f), STATE);
  assert.equal((await fsp.stat(f)).mode & 0o777, 0o600);
  assert.equal((await fsp.stat(path.dirname(f))).mode & 0o777, 0o700);
  await fsp.rm(dir, { recursive: true });
});

test('writes replace the file by rename: no temp files remain, a reader never sees a torn file', async () => {
  const dir = await tmp();
  const f = path.join(dir, 'state.json');
  await writeState(f, STATE);
  const ino = (await fsp.stat(f)).ino;
  // Many concurrent writers and readers: every read parses and is one of the written states.
  const writes = Array.from({ length: 20 }, (_, i) => writeState(f, { version: 1, controllers: [{ name: `nvme${i}`, args: { i }, devices: [] }] }));
  const reads = Array.from({ length: 20 }, () => readState(f));
  const got = await Promise.all(reads);
  await Promise.all(writes);
  for (const s of got) assert.ok(s.controllers.length === 1 || s.controllers.length === 2);
  assert.notEqual((await fsp.stat(f)).ino, ino, 'replaced, not rewritten in place');
  assert.deepEqual((await fsp.readdir(dir)).filter((n) => n !== 'state.json'), []);
  await fsp.rm(dir, { recursive: true });
});

test('secret arguments are never written', async () => {
  const dir = await tmp();
  const f = path.join(dir, 'state.json');
  await writeState(f, { version: 1, controllers: [{ name: 'nvme0', args: { nqn: 'nqn.a', 'dhchap-secret': 'DHHC-1:00:c2VjcmV0', 'tls-key': 'k' }, devices: [] }] });
  const text = await fsp.readFile(f, 'utf8');
  assert.ok(!text.includes('c2VjcmV0') && !text.includes('dhchap') && !text.includes('tls-key'), text);
  assert.deepEqual((await readState(f)).controllers[0]?.args, { nqn: 'nqn.a' });
  await fsp.rm(dir, { recursive: true });
});

test('corrupt or foreign state files are refused with CFG_ERR_STATE_FILE_INVALID', async () => {
  const dir = await tmp();
  const f = path.join(dir, 'state.json');
  const bad = async (text: string, code: ErrorCodeValue): Promise<void> => {
    await fsp.writeFile(f, text);
    await rejectsCode(readState(f), code, text);
  };
  await bad('{"version":1,"controllers":[{"name":"nvme0"', ErrorCode.STATE_FILE_INVALID);
  await bad('{"version":2,"controllers":[]}', ErrorCode.STATE_FILE_INVALID);
  await bad('{"version":1,"controllers":[{"name":"sda","args":{}}]}', ErrorCode.STATE_FILE_INVALID);
  await bad('{"version":1,"controllers":[{"name":"nvme0","args":{}},{"name":"nvme0","args":{}}]}', ErrorCode.STATE_FILE_INVALID);
  await bad('{"version":1,"controllers":[{"name":"nvme0","args":{},"devices":[{"export":"x","device":"/etc/passwd"}]}]}', ErrorCode.STATE_FILE_INVALID);
  await fsp.writeFile(f, '{"version":1,"controllers":[{"name":"nvme0","args":{}}]}');
  assert.equal((await readState(f))?.controllers[0]?.name, 'nvme0', 'a valid file is accepted');
  assert.deepEqual(validateState({ version: 1, controllers: [{ name: 'nvme1', args: { a: 1 } }] }).controllers[0]?.devices, []);
  await fsp.rm(dir, { recursive: true });
});

test('names: the lowest free nvmeN', () => {
  assert.equal(allocateName([]), 'nvme0');
  assert.equal(allocateName(['nvme0', 'nvme1']), 'nvme2');
  assert.equal(allocateName(['nvme0', 'nvme2']), 'nvme1');
  assert.equal(allocateName(new Set(['nvme1', 'nvme10'])), 'nvme0');
});
