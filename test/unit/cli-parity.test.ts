/**
 * nvme-cli flag parity of connect/connect-all/discover: -F/--fast_io_fail_tmo, -w/--host-traddr
 * (the target sees the source address), -f/--host-iface (resolved to its address), -T/--tos
 * (refused: Node cannot set it), --quiet, -D, -r/--raw FILE, stray positionals (exit 2 naming
 * the word), and usage errors naming the offending word.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { execFile } from 'node:child_process';
import { parseArgs } from '../../src/cli/args';
import { verb as connectVerb, sourceAddressFromArgs } from '../../src/cli/verbs/connect';
import { Controller } from '../../src/controller/controller';
import { ErrorCode } from '../../src/errors';
import { NvmeTarget } from '../../src/embedded-target';
import { throwsCode } from '../helpers/assert-code';

const MAIN = path.resolve(__dirname, '../../src/cli/main.js');
const NQN = 'nqn.2014-08.org.nvmf-nbd:parity';
const HOSTNQN = 'nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555';
const ID = ['-q', HOSTNQN, '-I', '11111111-2222-3333-4444-555555555555'];
const STATE = fs.mkdtempSync(path.join(os.tmpdir(), 'cli-parity-'));

function cli(argv: string[]): Promise<{ code: number; out: string; err: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [MAIN, ...argv], { env: { ...process.env, NVMF_NBD_STATE_DIR: STATE, NVMF_NBD_NVME_DIR: path.join(STATE, 'etc') }, timeout: 15_000 }, (error, stdout, stderr) => {
      resolve({ code: error === null ? 0 : (error as { code?: number }).code ?? -1, out: stdout, err: stderr });
    });
  });
}

test('-F and nvme-cli\'s --fast_io_fail_tmo spelling set fast-io-fail-tmo', () => {
  assert.equal(parseArgs(['-F', '7'], connectVerb.options).options['fast-io-fail-tmo'], 7);
  assert.equal(parseArgs(['--fast_io_fail_tmo', '8'], connectVerb.options).options['fast-io-fail-tmo'], 8);
  assert.equal(parseArgs(['--fast_io_fail_tmo=9'], connectVerb.options).options['fast-io-fail-tmo'], 9);
  const o = parseArgs(['-D', '-w', '127.0.0.2', '-T', '-1', '--quiet'], connectVerb.options).options;
  assert.deepEqual([o['duplicate-connect'], o['host-traddr'], o.tos, o.quiet], [true, '127.0.0.2', -1, true]);
  assert.equal(parseArgs(['--read-only'], connectVerb.options).options['read-only'], true);
  {
    const e = throwsCode(() => parseArgs(['-r'], connectVerb.options), ErrorCode.CLI_USAGE);
    assert.ok(e.message.includes('-r'));
  }
});

test('-f/--host-iface resolves to the interface address of the target\'s family; bad input is a usage error', () => {
  const ifs: NodeJS.Dict<os.NetworkInterfaceInfo[]> = {
    eth9: [
      { address: 'fe80::1', netmask: 'ffff:ffff:ffff:ffff::', family: 'IPv6', mac: '00:00:00:00:00:00', internal: false, cidr: null, scopeid: 2 },
      { address: '192.0.2.7', netmask: '255.255.255.0', family: 'IPv4', mac: '00:00:00:00:00:00', internal: false, cidr: null },
    ],
  };
  assert.equal(sourceAddressFromArgs({ 'host-iface': 'eth9' }, '198.51.100.1', ifs), '192.0.2.7');
  assert.equal(sourceAddressFromArgs({ 'host-iface': 'eth9' }, '2001:db8::1', ifs), 'fe80::1');
  assert.equal(sourceAddressFromArgs({}, '198.51.100.1', ifs), undefined);
  assert.ok(throwsCode(() => sourceAddressFromArgs({ 'host-iface': 'nope0' }, '198.51.100.1', ifs), ErrorCode.CLI_USAGE).message.includes("'nope0'"));
  throwsCode(() => sourceAddressFromArgs({ 'host-traddr': 'not-an-ip' }, '198.51.100.1', ifs), ErrorCode.CLI_USAGE);
  throwsCode(() => sourceAddressFromArgs({ 'host-traddr': '192.0.2.7', 'host-iface': 'eth9' }, '198.51.100.1', ifs), ErrorCode.CLI_USAGE);
  // The real loopback interface.
  const lo = Object.entries(os.networkInterfaces()).find(([, l]) => l?.some((a) => a.internal && a.family === 'IPv4'));
  if (lo !== undefined) assert.equal(sourceAddressFromArgs({ 'host-iface': lo[0] }, '127.0.0.1'), lo[1]?.find((a) => a.family === 'IPv4')?.address);
});

test('-w/--host-traddr: every queue connects from that source address', { timeout: 15_000 }, async () => {
  // A counting TCP relay in front of the embedded target sees each connection's source.
  const target = new NvmeTarget({ listen: { host: '127.0.0.1', port: 0 }, subsystems: [{ nqn: NQN, namespaces: [{ sizeBytes: 1 << 20, backing: { memory: true } }] }] });
  const t = await target.listen();
  const sources: string[] = [];
  const relay = net.createServer((c) => {
    sources.push(c.remoteAddress ?? '');
    const up = net.connect(t.port, '127.0.0.1');
    c.pipe(up).pipe(c);
    c.on('error', () => up.destroy());
    up.on('error', () => c.destroy());
  });
  await new Promise<void>((r) => relay.listen(0, '127.0.0.1', r));
  const port = (relay.address() as net.AddressInfo).port;
  try {
    const c = await Controller.connect({ traddr: '127.0.0.1', trsvcid: port, hostTraddr: '127.0.0.2', subnqn: NQN, hostnqn: HOSTNQN, hostid: '11111111-2222-3333-4444-555555555555', nrIoQueues: 2 });
    await c.close();
    assert.deepEqual(sources, ['127.0.0.2', '127.0.0.2', '127.0.0.2'], 'admin + 2 I/O queues');
  } finally {
    relay.close();
    await target.close();
  }
});

test('-T/--tos is refused with NVMF_ERR_UNSUPPORTED (Node cannot set it); -T -1 is "unset"', async () => {
  const r = await cli(['connect', '-a', '127.0.0.1', '-n', NQN, ...ID, '-T', '8', '--foreground']);
  assert.equal(r.code, 1);
  assert.match(r.err, /-T\/--tos 8: not supported.*NVMF_ERR_UNSUPPORTED/);
});

test('stray positionals are usage errors naming the word (connect-all, connect, discover, list)', async () => {
  for (const argv of [
    ['connect-all', '-a', '127.0.0.1', 'out.bin'],
    ['connect', '-a', '127.0.0.1', '-n', NQN, 'out.bin'],
    ['discover', '-a', '127.0.0.1', 'out.bin'],
    ['list', 'out.bin'],
  ]) {
    const r = await cli(argv);
    assert.equal(r.code, 2, argv.join(' '));
    assert.match(r.err, /unexpected argument 'out\.bin' \(CLI_ERR_USAGE\)/, argv.join(' '));
  }
  const u = await cli(['connect', '--bogus-flag']);
  assert.equal(u.code, 2);
  assert.match(u.err, /--bogus-flag/);
  const v = await cli(['connect', '-a', '127.0.0.1', '-n', NQN, '-s', 'abc']);
  assert.equal(v.code, 2);
  assert.match(v.err, /'abc'/);
});

test('discover -r/--raw FILE writes the log page as read (header + entries); connect-all -r FILE too', { timeout: 20_000 }, async () => {
  const target = new NvmeTarget({ listen: { host: '127.0.0.1', port: 0 }, subsystems: [{ nqn: NQN, namespaces: [{ sizeBytes: 1 << 20, backing: { memory: true } }] }, { nqn: `${NQN}2` }] });
  const t = await target.listen();
  try {
    const file = path.join(STATE, 'disc.bin');
    const r = await cli(['discover', '-a', '127.0.0.1', '-s', String(t.port), ...ID, '-r', file]);
    assert.equal(r.code, 0, r.err);
    const raw = fs.readFileSync(file);
    assert.equal(raw.length, 1024 * 3);
    assert.equal(raw.readBigUInt64LE(8), 2n, 'numrec');
    assert.equal(raw.subarray(1024 + 256, 1024 + 256 + NQN.length).toString(), NQN);
    // connect-all -r FILE (the issue's `connect-all -r out.bin`): the log is written; with no
    // NVM subsystem in it the verb exits 1 after saying so.
    const empty = new NvmeTarget({ listen: { host: '127.0.0.1', port: 0 }, subsystems: [] });
    const e = await empty.listen();
    try {
      const out = path.join(STATE, 'out.bin');
      const c = await cli(['connect-all', '-a', '127.0.0.1', '-s', String(e.port), ...ID, '-r', out, '--foreground']);
      assert.equal(c.code, 1, c.err);
      assert.match(c.err, /no NVM subsystem on TCP/);
      assert.equal(fs.readFileSync(out).length, 1024, 'header only');
    } finally {
      await empty.close();
    }
  } finally {
    await target.close();
  }
});
