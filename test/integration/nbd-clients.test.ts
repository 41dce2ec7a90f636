/**
 * The NBD server against Debian's real NBD clients on the host (libnbd's nbdinfo/nbdcopy,
 * qemu-io, fio's nbd engine), over 127.0.0.1 TCP and a Unix socket, with MemoryBlockDevice
 * exports served from this process. Tools run asynchronously (the server shares the event loop).
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash, randomFillSync } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { MemoryBlockDevice } from '../../src/block/memory-device';
import { NbdServer, type NbdLogEntry } from '../../src/nbd/server';
import { needCommands } from '../helpers/prereq';

const MiB = 1024 * 1024;

function run(cmd: string, args: string[], timeoutMs = 60_000): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: timeoutMs, maxBuffer: 16 * MiB }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof (err as { code?: unknown }).code === 'number' ? (err as unknown as { code: number }).code : -1;
      resolve({ code, stdout: String(stdout), stderr: String(stderr) });
    });
  });
}

let server: NbdServer;
let disk: MemoryBlockDevice;
let small: MemoryBlockDevice;
let port = 0;
let dir = '';
let sock = '';
const logs: NbdLogEntry[] = [];

before(async () => {
  dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'nbd-clients-'));
  sock = path.join(dir, 'run', 'nbd.sock');
  server = new NbdServer({ log: (e) => logs.push(e) });
  disk = new MemoryBlockDevice({ size: 128 * MiB });
  small = new MemoryBlockDevice({ size: 16 * MiB, blockSize: 4096 });
  server.addExport('disk', disk, { description: 'memory disk' });
  server.addExport('small', small);
  const ep = await server.listen({ tcp: { port: 0 } });
  assert.ok('tcp' in ep);
  port = ep.tcp.port;
  await server.listen({ unix: sock });
});

after(async () => {
  await server.close();
  await fsp.rm(dir, { recursive: true, force: true });
  const bad = logs.filter((e) => e.level === 'error');
  assert.deepEqual(bad, [], 'no server errors logged');
});

const tcpUri = (name: string): string => `nbd://127.0.0.1:${port}/${name}`;
const unixUri = (name: string): string => `nbd+unix:///${name}?socket=${sock}`;

for (const [label, uri] of [['tcp', tcpUri], ['unix', unixUri]] as const) {
  test(`nbdinfo --json over ${label}: size, block sizes and capabilities`, { timeout: 30_000 }, async (t) => {
    if (!needCommands(t, ['nbdinfo'])) return;
    const r = await run('nbdinfo', ['--json', uri('small')]);
    assert.equal(r.code, 0, r.stderr);
    const info = JSON.parse(r.stdout) as { exports: Array<Record<string, unknown>> };
    const e = info.exports[0] as Record<string, unknown>;
    assert.equal(e['export-size'], 16 * MiB);
    assert.equal(e['block_size_minimum'], 4096);
    assert.equal(e['block_size_preferred'], 4096);
    assert.equal(e['block_size_maximum'], 32 * MiB);
    for (const k of ['can_flush', 'can_fua', 'can_trim', 'can_zero', 'can_multi_conn', 'can_fast_zero', 'can_cache']) assert.equal(e[k], true, k);
    assert.equal(e['is_read_only'], false);
    assert.deepEqual(e['contexts'], ['base:allocation']);
  });
}

test('nbdinfo --list shows both exports by name', { timeout: 30_000 }, async (t) => {
  if (!needCommands(t, ['nbdinfo'])) return;
  const r = await run('nbdinfo', ['--list', '--json', `nbd://127.0.0.1:${port}`]);
  assert.equal(r.code, 0, r.stderr);
  const info = JSON.parse(r.stdout) as { exports: Array<{ 'export-name': string; description?: string }> };
  assert.deepEqual(info.exports.map((e) => e['export-name']).sort(), ['disk', 'small']);
  assert.equal(info.exports.find((e) => e['export-name'] === 'disk')?.description, 'memory disk');
});

for (const [label, uri] of [['tcp', tcpUri], ['unix', unixUri]] as const) {
  test(`qemu-io over ${label}: pattern write/read, write -z, discard, FUA write`, { timeout: 30_000 }, async (t) => {
    if (!needCommands(t, ['qemu-io'])) return;
    const base = label === 'tcp' ? 0 : 32 * MiB;
    const fuaBefore = disk.counters.fuaWrites;
    const cmds = [
      `write -P 0xab ${base} 1M`,
      `read -P 0xab ${base} 1M`,
      `write -z ${base + 4096} 4096`,
      `read -P 0 ${base + 4096} 4096`,
      `discard ${base + 65536} 65536`,
      `write -f -P 0xcd ${base + 2 * MiB} 64k`,
      `read -P 0xcd ${base + 2 * MiB} 64k`,
      'flush',
    ];
    const r = await run('qemu-io', ['-f', 'raw', uri('disk'), ...cmds.flatMap((c) => ['-c', c])]);
    assert.equal(r.code, 0, r.stderr);
    assert.doesNotMatch(r.stdout + r.stderr, /fail|error/i);
    // check the bytes server-side too
    const b = await disk.read(base, 3 * MiB);
    assert.ok(b.subarray(0, 4096).every((x) => x === 0xab));
    assert.ok(b.subarray(4096, 8192).every((x) => x === 0));
    assert.ok(b.subarray(8192, 65536).every((x) => x === 0xab));
    assert.ok(b.subarray(2 * MiB, 2 * MiB + 65536).every((x) => x === 0xcd));
    assert.ok(disk.counters.fuaWrites > fuaBefore, 'write -f reached the device as FUA');
  });
}

test('nbdcopy: 64 MiB of random data in and out with 4 connections, sha256 equal', { timeout: 120_000 }, async (t) => {
  if (!needCommands(t, ['nbdcopy'])) return;
  const src = path.join(dir, 'src.bin');
  const dst = path.join(dir, 'dst.bin');
  const data = Buffer.allocUnsafe(64 * MiB);
  randomFillSync(data);
  await fsp.writeFile(src, data);
  const want = createHash('sha256').update(data).digest('hex');
  const up = await run('nbdcopy', ['--connections', '4', src, tcpUri('disk')]);
  assert.equal(up.code, 0, up.stderr);
  const onDevice = createHash('sha256').update(await disk.read(0, 64 * MiB)).digest('hex');
  assert.equal(onDevice, want, 'device content after upload');
  // download only the 64 MiB we wrote: copy the whole export, then compare its first 64 MiB
  const down = await run('nbdcopy', ['--connections', '4', unixUri('disk'), dst]);
  assert.equal(down.code, 0, down.stderr);
  const fh = await fsp.open(dst, 'r');
  try {
    const back = Buffer.alloc(64 * MiB);
    await fh.read(back, 0, back.length, 0);
    assert.equal(createHash('sha256').update(back).digest('hex'), want);
  } finally {
    await fh.close();
  }
  await fsp.rm(src);
  await fsp.rm(dst);
});

for (const [label, uri] of [['tcp', tcpUri], ['unix', unixUri]] as const) {
  test(`fio --ioengine=nbd over ${label}: random writes verified with crc32c`, { timeout: 60_000 }, async (t) => {
    if (!needCommands(t, ['fio'])) return;
    const r = await run('fio', [
      '--name=verify',
      '--ioengine=nbd',
      `--uri=${uri('small')}`,
      '--rw=randwrite',
      '--bs=4k',
      '--size=16M',
      '--iodepth=32',
      '--verify=crc32c',
      '--do_verify=1',
      '--verify_state_save=0',
      '--output-format=json',
    ]);
    assert.equal(r.code, 0, r.stderr);
    const out = JSON.parse(r.stdout.slice(r.stdout.indexOf('{'))) as { jobs: Array<{ error: number; write: { io_bytes: number }; read: { io_bytes: number } }> };
    const job = out.jobs[0];
    assert.equal(job?.error, 0);
    assert.equal(job?.write.io_bytes, 16 * MiB);
    assert.equal(job?.read.io_bytes, 16 * MiB, 'everything written was read back and verified');
  });
}
