/**
 * `nvmf-nbd target` with several ports and ANA: `--listen` twice with their `--advertise`,
 * `--ana-group`, `--ana-state`, and the runtime control — an `--ana-state-file` re-read on
 * SIGHUP (a host sees the ANA change notice and the new state; a bad file changes nothing).
 * Plus the pure parser of the flag and the file (src/config/ana-states.ts).
 */
import { strict as assert } from 'node:assert';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { ErrorCode } from '../../src/errors';
import { parseAnaStateFile, parseAnaStateSpec } from '../../src/config/ana-states';
import { parseArgs } from '../../src/cli/args';
import { targetPorts, verb } from '../../src/cli/verbs/target';
import {
  AEN_ANA_CHANGE_DW0, AnaState, parseAnaLog, parseIdentifyNamespace, sqeAsyncEventRequest, sqeGetLogPage, sqeIdentify, sqeKeepAlive,
  sqeSetFeatures,
} from '../../src/wire';
import { throwsCode } from '../helpers/assert-code';
import { connectAdmin, enable, RawHost } from './target-rawhost';

const MAIN = path.resolve(__dirname, '..', '..', 'src', 'cli', 'main.js');
const NQN = 'nqn.2014-08.org.x:cli-ana';

describe('ANA state flag and file parser', () => {
  it('PORT:GROUP:STATE and PORT GROUP STATE lines, names or numbers', () => {
    assert.deepEqual(parseAnaStateSpec('2:1:inaccessible'), { port: 2, group: 1, state: AnaState.INACCESSIBLE });
    assert.deepEqual(parseAnaStateSpec('1:128:0x0f'), { port: 1, group: 128, state: AnaState.CHANGE });
    assert.deepEqual(parseAnaStateFile('# ports\n1 1 optimized\n\n2 1 non-optimized  # slower path\n2 3 persistent_loss\n'), [
      { port: 1, group: 1, state: AnaState.OPTIMIZED },
      { port: 2, group: 1, state: AnaState.NON_OPTIMIZED },
      { port: 2, group: 3, state: AnaState.PERSISTENT_LOSS },
    ]);
    assert.deepEqual(parseAnaStateFile(''), []);
  });

  it('bad input names the line and has a stable code', () => {
    throwsCode(() => parseAnaStateSpec('2:1'), ErrorCode.CFG_SYNTAX);
    throwsCode(() => parseAnaStateSpec('0:1:optimized'), ErrorCode.CFG_BAD_VALUE);
    throwsCode(() => parseAnaStateSpec('1:129:optimized'), ErrorCode.CFG_BAD_VALUE);
    throwsCode(() => parseAnaStateSpec('1:1:fast'), ErrorCode.CFG_BAD_VALUE);
    const e = throwsCode(() => parseAnaStateFile('1 1 optimized\n1 1 change\n', 'ana.conf'), ErrorCode.CFG_BAD_VALUE);
    assert.match(e.message, /^ana\.conf:2: /);
    throwsCode(() => parseAnaStateFile('1 1\n'), ErrorCode.CFG_SYNTAX);
    throwsCode(() => parseAnaStateFile('x 1 optimized\n'), ErrorCode.CFG_BAD_VALUE);
    throwsCode(() => parseAnaStateFile('1 1 optimized\n'.repeat(1) + '#'.repeat(2 << 20)), ErrorCode.CFG_TOO_LARGE);
  });

  it('--listen twice: ports 1 and 2, each --advertise for the --listen before it', () => {
    const a = parseArgs(['--listen', '127.0.0.1:4420', '--advertise', '10.0.0.1:4420', '--listen', '127.0.0.1:4421', '--advertise', '10.0.0.1:4421'], verb.options);
    assert.deepEqual(targetPorts(a.options), [
      { id: 1, host: '127.0.0.1', port: 4420, advertise: { host: '10.0.0.1', port: 4420 } },
      { id: 2, host: '127.0.0.1', port: 4421, advertise: { host: '10.0.0.1', port: 4421 } },
    ]);
    // One --listen: --advertise may stand anywhere (as before several ports existed).
    const b = parseArgs(['--advertise', '10.0.0.1:4420', '--listen', '127.0.0.1:0'], verb.options);
    assert.deepEqual(targetPorts(b.options), [{ id: 1, host: '127.0.0.1', port: 0, advertise: { host: '10.0.0.1', port: 4420 } }]);
    assert.deepEqual(targetPorts(parseArgs([], verb.options).options), [{ id: 1, host: '127.0.0.1', port: 4420 }]);
    const isUsage = (e: unknown): boolean => (e as { code: string }).code === ErrorCode.CLI_USAGE;
    assert.throws(() => targetPorts(parseArgs(['--advertise', '10.0.0.1:1', '--listen', '127.0.0.1:1', '--listen', '127.0.0.1:2'], verb.options).options), isUsage);
    assert.throws(() => targetPorts(parseArgs(['--listen', '127.0.0.1:1', '--advertise', '10.0.0.1:1', '--advertise', '10.0.0.1:2'], verb.options).options), isUsage);
  });
});

function run(args: string[]): { child: ReturnType<typeof spawn>; stdout: Promise<string>; stderr: () => string; exit: Promise<number | null> } {
  const child = spawn(process.execPath, [MAIN, 'target', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  const stdout = new Promise<string>((resolve) => {
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('\n')) resolve(out);
    });
    child.on('exit', () => resolve(out));
  });
  child.stderr!.on('data', (d: Buffer) => { err += d.toString(); });
  const exit = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  return { child, stdout, stderr: () => err, exit };
}

async function anaAdmin(port: number): Promise<RawHost> {
  const h = await RawHost.connect(port);
  await h.icreq();
  assert.equal((await connectAdmin(h, NQN, { kato: 30_000 })).cqe.ok, true);
  await enable(h);
  await h.submit(sqeSetFeatures(0x0b, 1 << 11));
  return h;
}

async function anaStates(h: RawHost): Promise<Array<[number, number]>> {
  const log = parseAnaLog((await h.submit(sqeGetLogPage(0x0c, 4096), { readLength: 4096 })).data);
  return log.groups.map((g) => [g.grpid, g.state]);
}

/** Wait (by events, bounded) until stderr contains `re`. */
async function waitStderr(p: ReturnType<typeof run>, re: RegExp): Promise<void> {
  for (let i = 0; i < 200 && !re.test(p.stderr()); i++) await new Promise((r) => p.child.stderr!.once('data', r));
  assert.match(p.stderr(), re);
}

describe('nvmf-nbd target: two ports, ANA groups, SIGHUP control', () => {
  it('serves two ports with the configured ANA states; SIGHUP applies the state file; a bad file changes nothing', { timeout: 30_000 }, async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nvmf-ana-cli-'));
    const file = path.join(dir, 'ana.conf');
    fs.writeFileSync(file, '2 2 inaccessible\n');
    const p = run([
      '--listen', '127.0.0.1:0', '--listen', '127.0.0.1:0', '--memory', '4M', '--memory', '4M', '--ana-group', '2=2',
      '--ana-state', '2:1:non-optimized', '--ana-state-file', file, '--cqt', '2500', '--nqn', NQN, '-o', 'json',
    ]);
    const open: RawHost[] = [];
    try {
      const info = JSON.parse((await p.stdout).trim()) as { ports: Array<{ id: number; port: number; ana: Array<{ group: number; state: string }> }> };
      assert.deepEqual(info.ports.map((x) => x.id), [1, 2]);
      assert.deepEqual(info.ports[1]!.ana, [{ group: 1, state: 'non-optimized' }, { group: 2, state: 'inaccessible' }]);
      const h1 = await anaAdmin(info.ports[0]!.port);
      const h2 = await anaAdmin(info.ports[1]!.port);
      open.push(h1, h2);
      assert.equal(parseIdentifyNamespace((await h2.submit(sqeIdentify(0, 2), { readLength: 4096 })).data).anagrpid, 2);
      assert.equal((await h2.submit(sqeIdentify(1), { readLength: 4096 })).data.readUInt16LE(386), 2500, 'CQT');
      assert.deepEqual(await anaStates(h1), [[1, AnaState.OPTIMIZED], [2, AnaState.OPTIMIZED]]);
      assert.deepEqual(await anaStates(h2), [[1, AnaState.NON_OPTIMIZED], [2, AnaState.INACCESSIBLE]]);
      // Runtime change by people: edit the file, SIGHUP.
      const aer = h2.submit(sqeAsyncEventRequest(), { timeoutMs: 20_000 });
      fs.writeFileSync(file, '# failover\n2 1 optimized\n2 2 optimized\n1 1 inaccessible\n');
      p.child.kill('SIGHUP');
      assert.equal((await aer).cqe.dw0, AEN_ANA_CHANGE_DW0, 'port 2 host told about the change');
      await waitStderr(p, /SIGHUP: .* applied, 3 ANA state\(s\) changed/);
      assert.deepEqual(await anaStates(h2), [[1, AnaState.OPTIMIZED], [2, AnaState.OPTIMIZED]]);
      assert.deepEqual(await anaStates(h1), [[1, AnaState.INACCESSIBLE], [2, AnaState.OPTIMIZED]]);
      // A bad file: an error with its code, nothing applied (the valid first line neither).
      fs.writeFileSync(file, '1 1 optimized\n1 1 fast\n');
      p.child.kill('SIGHUP');
      await waitStderr(p, /SIGHUP: .* not applied: .*:2: .*\(CFG_ERR_BAD_VALUE\)/);
      assert.deepEqual(await anaStates(h1), [[1, AnaState.INACCESSIBLE], [2, AnaState.OPTIMIZED]]);
      assert.equal((await h1.submit(sqeKeepAlive())).cqe.ok, true, 'still serving');
      for (const h of open) h.close();
      p.child.kill('SIGTERM');
      assert.equal(await p.exit, 0);
    } finally {
      for (const h of open) h.close();
      p.child.kill('SIGKILL');
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('an ANA state for a port that does not exist is a usage error (exit 2)', { timeout: 15_000 }, async () => {
    assert.equal(await run(['--listen', '127.0.0.1:0', '--ana-state', '3:1:optimized']).exit, 2);
    assert.equal(await run(['--listen', '127.0.0.1:0', '--ana-group', '5=2']).exit, 2);
  });
});
