/** `nvmf-nbd target`: argument parsing, a real run answering a host, clean exit on SIGTERM. */
import { strict as assert } from 'node:assert';
import { spawn } from 'node:child_process';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { ErrorCode } from '../../src/errors';
import { parseFileArg } from '../../src/cli/verbs/target';
import { parseHostPort, parseSizeArg } from '../../src/cli/values';
import { sqeIdentify } from '../../src/wire';
import { connectAdmin, enable, RawHost } from './target-rawhost';

const MAIN = path.resolve(__dirname, '..', '..', 'src', 'cli', 'main.js');
const isUsage = (e: unknown): boolean => (e as { code: string }).code === ErrorCode.CLI_USAGE;

describe('target verb arguments', () => {
  it('parses sizes, HOST:PORT and PATH[:SIZE]', () => {
    assert.equal(parseSizeArg('64M', '--memory'), 64 << 20);
    assert.equal(parseSizeArg('1G', '--memory'), 1 << 30);
    assert.equal(parseSizeArg('4096', '--memory'), 4096);
    assert.throws(() => parseSizeArg('12X', '--memory'), isUsage);
    assert.throws(() => parseSizeArg('0', '--memory'), isUsage);
    assert.deepEqual(parseHostPort('127.0.0.1:4420', '--listen'), { host: '127.0.0.1', port: 4420 });
    assert.deepEqual(parseHostPort('[::1]:8009', '--listen'), { host: '::1', port: 8009 });
    assert.throws(() => parseHostPort('127.0.0.1', '--listen'), isUsage);
    assert.throws(() => parseHostPort('h:70000', '--listen'), isUsage);
    assert.deepEqual(parseFileArg('/tmp/a.img:1G'), { path: '/tmp/a.img', size: 1 << 30 });
    assert.deepEqual(parseFileArg('/tmp/a:b.img'), { path: '/tmp/a:b.img' });
  });
});

function run(args: string[]): { child: ReturnType<typeof spawn>; stdout: Promise<string>; exit: Promise<number | null> } {
  const child = spawn(process.execPath, [MAIN, 'target', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  const stdout = new Promise<string>((resolve) => {
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('\n')) resolve(out);
    });
    child.on('exit', () => resolve(out));
  });
  child.stderr!.resume();
  const exit = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  return { child, stdout, exit };
}

describe('nvmf-nbd target process', () => {
  it('serves the configured namespace and exits 0 on SIGTERM', { timeout: 15_000 }, async () => {
    const p = run(['--listen', '127.0.0.1:0', '--memory', '4M', '--lba-size', '4096', '--nqn', 'nqn.2014-08.org.x:cli', '-o', 'json']);
    try {
      const info = JSON.parse((await p.stdout).trim()) as { listen: { port: number }; subsystems: Array<{ nqn: string; namespaces: Array<{ sizeBytes: number }> }> };
      assert.equal(info.subsystems[0]!.nqn, 'nqn.2014-08.org.x:cli');
      assert.equal(info.subsystems[0]!.namespaces[0]!.sizeBytes, 4 << 20);
      const h = await RawHost.connect(info.listen.port);
      await h.icreq();
      const c = await connectAdmin(h, 'nqn.2014-08.org.x:cli');
      assert.equal(c.cqe.ok, true);
      await enable(h);
      const ns = await h.submit(sqeIdentify(0, 1), { readLength: 4096 });
      assert.equal(ns.data.readBigUInt64LE(0), 1024n);
      h.close();
      p.child.kill('SIGTERM');
      assert.equal(await p.exit, 0);
    } finally {
      p.child.kill('SIGKILL');
    }
  });

  it('a bad option is a usage error (exit 2)', { timeout: 15_000 }, async () => {
    const p = run(['--lba-size', '1000']);
    assert.equal(await p.exit, 2);
  });
});
