/**
 * Kernel attach without a kernel: nbd-client argument construction, free-device selection over
 * a fake sysfs tree, prerequisite errors, and the runner contract. Plus the OOM helper.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as os from 'node:os';
import * as path from 'node:path';
import { promises as fsp } from 'node:fs';
import { ErrorCode, NvmfNbdError } from '../../src/errors';
import { attach, buildAttachArgs, checkAttachPrerequisites, detach, findFreeDevice, type RunResult } from '../../src/attach/nbd-client';
import { protectFromOomKiller } from '../../src/engine/oom';
import { throwsCode, rejectsCode } from '../helpers/assert-code';

const isCode = (code: string) => (e: unknown) => e instanceof NvmfNbdError && e.code === code;

async function tmp(): Promise<string> {
  return fsp.mkdtemp(path.join(os.tmpdir(), 'nbd-attach-'));
}

/** Fake /sys: block/nbdN with `size` (sectors) and optionally `pid`; module/nbd when loaded. */
async function fakeSysfs(devs: Array<{ n: number; size: number; pid?: number }>, moduleLoaded = true): Promise<string> {
  const root = await tmp();
  await fsp.mkdir(path.join(root, 'block', 'vda'), { recursive: true });
  for (const d of devs) {
    const dir = path.join(root, 'block', `nbd${d.n}`);
    await fsp.mkdir(dir, { recursive: true });
    await fsp.writeFile(path.join(dir, 'size'), `${d.size}\n`);
    if (d.pid !== undefined) await fsp.writeFile(path.join(dir, 'pid'), `${d.pid}\n`);
  }
  if (moduleLoaded) await fsp.mkdir(path.join(root, 'module', 'nbd'), { recursive: true });
  return root;
}

/** A fake nbd-client on a private PATH directory, so prerequisite checks pass. */
async function fakeClientDir(): Promise<string> {
  const dir = await tmp();
  const p = path.join(dir, 'nbd-client');
  await fsp.writeFile(p, '#!/bin/sh\nexit 0\n', { mode: 0o755 });
  return dir;
}

test('buildAttachArgs: unix socket, name, block size, connections, timeout, persist', () => {
  assert.deepEqual(
    buildAttachArgs({ socketPath: 'run/nbd.sock', exportName: 'nvme0n1', blockSize: 4096, connections: 4, timeoutSec: 30, persist: true }, '/dev/nbd3'),
    ['-N', 'nvme0n1', '-unix', 'run/nbd.sock', '/dev/nbd3', '-b', '4096', '-C', '4', '-t', '30', '-p'],
  );
  assert.deepEqual(
    buildAttachArgs({ host: '127.0.0.1', port: 10809, exportName: 'x', blockSize: 512 }, '/dev/nbd0'),
    ['-N', 'x', '127.0.0.1', '10809', '/dev/nbd0', '-b', '512'],
    'one connection: no -C; no timeout or persist unless asked',
  );
  throwsCode(() => buildAttachArgs({ socketPath: 's', exportName: 'x', blockSize: 520 }, '/dev/nbd0'), ErrorCode.CFG_INVALID);
  throwsCode(() => buildAttachArgs({ exportName: 'x', blockSize: 512 }, '/dev/nbd0'), ErrorCode.CFG_INVALID);
  throwsCode(() => buildAttachArgs({ socketPath: 's', exportName: 'x', blockSize: 512, connections: 0 }, '/dev/nbd0'), ErrorCode.CFG_INVALID);
});

test('findFreeDevice: lowest-numbered device with no pid and size 0', async () => {
  const root = await fakeSysfs([
    { n: 10, size: 0 },
    { n: 0, size: 2048, pid: 123 },
    { n: 1, size: 0, pid: 456 }, // connecting: pid set before the size
    { n: 2, size: 8 }, // size left behind
    { n: 3, size: 0 },
  ]);
  try {
    assert.equal(await findFreeDevice(root, '/dev'), '/dev/nbd3');
  } finally {
    await fsp.rm(root, { recursive: true });
  }
});

test('findFreeDevice: all busy → NBD_ERR_NO_FREE_DEVICE; none at all → NBD_ERR_MODULE_MISSING', async () => {
  const busy = await fakeSysfs([{ n: 0, size: 8, pid: 1 }]);
  const none = await fakeSysfs([]);
  try {
    await rejectsCode(findFreeDevice(busy), ErrorCode.NBD_NO_FREE_DEVICE);
    await rejectsCode(findFreeDevice(none), ErrorCode.NBD_MODULE_MISSING);
  } finally {
    await fsp.rm(busy, { recursive: true });
    await fsp.rm(none, { recursive: true });
  }
});

test('checkAttachPrerequisites: missing client, missing module (modprobe fails), module loaded', async () => {
  const bin = await fakeClientDir();
  const loaded = await fakeSysfs([], true);
  const unloaded = await fakeSysfs([], false);
  const calls: string[][] = [];
  const run = async (cmd: string, args: readonly string[]): Promise<RunResult> => {
    calls.push([cmd, ...args]);
    return { code: 1, stdout: '', stderr: 'modprobe: FATAL: Module nbd not found' };
  };
  try {
    await rejectsCode(checkAttachPrerequisites({ pathEnv: path.join(bin, 'nowhere'), sysfsRoot: loaded, run }), ErrorCode.NBD_CLIENT_MISSING);
    await rejectsCode(checkAttachPrerequisites({ pathEnv: bin, sysfsRoot: unloaded, run }), ErrorCode.NBD_MODULE_MISSING);
    assert.deepEqual(calls, [['modprobe', 'nbd']]);
    await checkAttachPrerequisites({ pathEnv: bin, sysfsRoot: loaded, run });
    assert.equal(calls.length, 1, 'no modprobe when the module is there');
  } finally {
    for (const d of [bin, loaded, unloaded]) await fsp.rm(d, { recursive: true });
  }
});

test('attach runs nbd-client on the free device; failures carry NBD_ERR_ATTACH_FAILED; detach runs -d', async () => {
  const bin = await fakeClientDir();
  const sys = await fakeSysfs([{ n: 0, size: 8, pid: 9 }, { n: 1, size: 0 }]);
  const client = path.join(bin, 'nbd-client');
  const calls: string[][] = [];
  let exit = 0;
  const run = async (cmd: string, args: readonly string[]): Promise<RunResult> => {
    calls.push([cmd, ...args]);
    return { code: exit, stdout: '', stderr: exit === 0 ? '' : 'Error: Socket failed: Connection refused' };
  };
  try {
    const dev = await attach({ socketPath: 's.sock', exportName: 'e', blockSize: 512, connections: 2, nbdClient: client, sysfsRoot: sys, devDir: '/dev', run });
    assert.equal(dev, '/dev/nbd1');
    assert.deepEqual(calls.at(-1), [client, '-N', 'e', '-unix', 's.sock', '/dev/nbd1', '-b', '512', '-C', '2']);
    exit = 1;
    const refused = await rejectsCode(
      attach({ socketPath: 's.sock', exportName: 'e', blockSize: 512, device: '/dev/nbd5', nbdClient: client, sysfsRoot: sys, run }),
      ErrorCode.NBD_ATTACH_FAILED,
    );
    assert.match(refused.message, /Connection refused/);
    await rejectsCode(detach('/dev/nbd1', { nbdClient: client, run }), ErrorCode.NBD_DETACH_FAILED);
    exit = 0;
    await detach('/dev/nbd1', { nbdClient: client, run });
    assert.deepEqual(calls.at(-1), [client, '-d', '/dev/nbd1']);
  } finally {
    await fsp.rm(bin, { recursive: true });
    await fsp.rm(sys, { recursive: true });
  }
});

test('protectFromOomKiller writes -1000 and reports failure instead of throwing', async () => {
  const dir = await tmp();
  try {
    const f = path.join(dir, 'oom_score_adj');
    assert.equal(protectFromOomKiller(f), true);
    assert.equal((await fsp.readFile(f, 'utf8')).trim(), '-1000');
    assert.equal(protectFromOomKiller(path.join(dir, 'missing', 'x')), false);
  } finally {
    await fsp.rm(dir, { recursive: true });
  }
});
