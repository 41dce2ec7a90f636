/**
 * Finding 3 (issue 14): a holder pid file is trusted only when the process is that holder: the
 * recorded start time matches /proc/PID/stat, the command line is a `--holder` run with this pid
 * file, and its endpoint answers. A reused pid (any other process) is never adopted or signalled.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { promises as fsp } from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { processStartTime, verifyHolder } from '../../src/engine/holder-file';

test('finding 3: holder identity is start time + command line + a live endpoint, not the pid alone', { timeout: 20_000 }, async () => {
  const root = await fsp.mkdtemp(path.join(os.tmpdir(), 'holder-id-'));
  const srv = net.createServer((s) => s.destroy());
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  const port = (srv.address() as net.AddressInfo).port;
  // A process that reused the pid: alive, answering nothing of ours.
  const other = spawn('sleep', ['30'], { stdio: 'ignore' });
  try {
    const pidFile = path.join(root, 'nvme0.holder.json');
    const pid = other.pid as number;
    await once(other, 'spawn'); // exec'd: its /proc entry is the sleep's
    const st = processStartTime(pid);
    assert.ok(st !== undefined);
    const f = { pid, host: '127.0.0.1', port, backend: '/x', startTime: st as string };
    assert.equal(await verifyHolder(f, pidFile), false, 'a sleep with the right start time is still not a holder');
    assert.equal(await verifyHolder({ ...f, startTime: undefined }, pidFile), false, 'no recorded start time: not trusted');
    // A fake /proc: the holder's command line and start time.
    const proc = path.join(root, 'proc');
    await fsp.mkdir(path.join(proc, '4242'), { recursive: true });
    await fsp.writeFile(path.join(proc, '4242', 'stat'), `4242 (node (x)) S ${Array.from({ length: 18 }, (_, i) => String(i + 1)).join(' ')} 987654 0 0\n`);
    await fsp.writeFile(path.join(proc, '4242', 'cmdline'), ['node', 'main.js', 'daemon', '--holder', `tcp:127.0.0.1:${port}`, '--holder-pid-file', pidFile, ''].join('\0'));
    const h = { pid: 4242, host: '127.0.0.1', port, backend: '/x', startTime: '987654' };
    assert.equal(processStartTime(4242, proc), '987654');
    assert.equal(await verifyHolder(h, pidFile, proc), true);
    assert.equal(await verifyHolder({ ...h, startTime: '987655' }, pidFile, proc), false, 'start time differs: pid reused');
    assert.equal(await verifyHolder(h, path.join(root, 'other.json'), proc), false, 'another pid file');
    srv.close();
    assert.equal(await verifyHolder(h, pidFile, proc), false, 'endpoint does not answer');
  } finally {
    other.kill();
    srv.close();
    await fsp.rm(root, { recursive: true, force: true });
  }
});
