/**
 * Config parsers (pure): /etc/nvme/discovery.conf and /etc/nvme/config.json (libnvme layout),
 * the mapping onto connect options (unsupported keys refused, never ignored), the dump, and bad
 * input: each with its stable CFG_ERR_* code and the line or JSON path.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseDiscoveryConf } from '../../src/config/discovery-conf';
import { formatConfigJson, parseConfigJson } from '../../src/config/config-json';
import { connectArgsParams, entryConnectArgs } from '../../src/config/connect-args';
import { ConfigError, MAX_CONFIG_BYTES } from '../../src/config/params';
import { ErrorCode } from '../../src/errors';
import { verb as connectVerb } from '../../src/cli/verbs/connect';
import { throwsCode } from '../helpers/assert-code';

const KNOWN = new Set(connectVerb.options.map((o) => o.long));

function fails(fn: () => unknown, code: string, where: string | RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof ConfigError, String(e));
    assert.equal(e.code, code, e.message);
    if (typeof where === 'string') assert.equal(e.where, where, e.message);
    else assert.match(e.where, where);
    return true;
  });
}

test('discovery.conf: flags per line, comments, blank lines, --long=value, short forms', () => {
  const text = [
    '# Used for extracting default parameters for discovery',
    '',
    '--transport=tcp --traddr=192.0.2.10 --trsvcid=8009 --hostnqn=nqn.2014-08.org.nvmexpress:uuid:aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee',
    '   -t tcp -a 192.0.2.11 -s 4420 -k 30 -g -p   # trailing comment',
    '-t tcp -a 2001:db8::1 -w 2001:db8::2 -D',
  ].join('\n');
  const e = parseDiscoveryConf(text, '/etc/nvme/discovery.conf');
  assert.equal(e.length, 3);
  assert.deepEqual(e.map((x) => [x.kind, x.where]), [['discovery', '/etc/nvme/discovery.conf:3'], ['discovery', '/etc/nvme/discovery.conf:4'], ['discovery', '/etc/nvme/discovery.conf:5']]);
  assert.deepEqual(e[1]?.params, { transport: 'tcp', traddr: '192.0.2.11', trsvcid: 4420, keep_alive_tmo: 30, hdr_digest: true, persistent: true });
  assert.equal(e[0]?.params.hostnqn, 'nqn.2014-08.org.nvmexpress:uuid:aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee');
  assert.deepEqual(entryConnectArgs(e[2]!, KNOWN), { transport: 'tcp', traddr: '2001:db8::1', 'host-traddr': '2001:db8::2', 'duplicate-connect': true });
  assert.deepEqual(parseDiscoveryConf('# only comments\n\n   \n'), []);
});

test('discovery.conf: bad lines → CFG_ERR_* with the line number', () => {
  fails(() => parseDiscoveryConf('-t tcp -a 1.2.3.4\n-t tcp -a 1.2.3.5 --bogus 1\n'), ErrorCode.CFG_UNKNOWN_KEY, 'discovery.conf:2');
  fails(() => parseDiscoveryConf('-t tcp -a 1.2.3.4 stray'), ErrorCode.CFG_SYNTAX, 'discovery.conf:1');
  fails(() => parseDiscoveryConf('\n\n-t tcp -a'), ErrorCode.CFG_SYNTAX, 'discovery.conf:3');
  fails(() => parseDiscoveryConf('-t tcp -a 1.2.3.4 -s 70000'), ErrorCode.CFG_BAD_VALUE, 'discovery.conf:1');
  fails(() => parseDiscoveryConf('-t tcp -a 1.2.3.4 -s abc'), ErrorCode.CFG_BAD_VALUE, 'discovery.conf:1');
  fails(() => parseDiscoveryConf('-t tcp -s 8009'), ErrorCode.CFG_MISSING_KEY, 'discovery.conf:1');
  fails(() => parseDiscoveryConf('-t tcp -a 1.2.3.4 -a 1.2.3.5'), ErrorCode.CFG_BAD_VALUE, 'discovery.conf:1');
  fails(() => parseDiscoveryConf('-t tcp -a 1.2.3.4 -g=yes'), ErrorCode.CFG_SYNTAX, 'discovery.conf:1');
  fails(() => parseDiscoveryConf('-t tcp -a 1.2.3.4 -q a\u0001b'), ErrorCode.CFG_BAD_VALUE, 'discovery.conf:1');
  fails(() => parseDiscoveryConf(`-t tcp -a ${'x'.repeat(5000)}`), ErrorCode.CFG_TOO_LARGE, 'discovery.conf:1');
  fails(() => parseDiscoveryConf(' '.repeat(MAX_CONFIG_BYTES + 1)), ErrorCode.CFG_TOO_LARGE, 'discovery.conf');
});

const JSON_OK = JSON.stringify([
  {
    hostnqn: 'nqn.2014-08.org.nvmexpress:uuid:aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee',
    hostid: 'aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee',
    subsystems: [
      { nqn: 'nqn.2024-01.io.example:vol1', ports: [
        { transport: 'tcp', traddr: '192.0.2.1', trsvcid: '4420', host_traddr: '192.0.2.100', ctrl_loss_tmo: -1, fast_io_fail_tmo: 20, hdr_digest: true, nr_io_queues: 0 },
        { transport: 'tcp', traddr: '192.0.2.2', trsvcid: 4420 },
      ] },
      { nqn: 'nqn.2014-08.org.nvmexpress.discovery', ports: [{ transport: 'tcp', traddr: '192.0.2.9', trsvcid: '8009', persistent: true }] },
    ],
  },
], null, 2);

test('config.json: hosts → subsystems → ports, libnvme keys; trsvcid as string or number; discovery ports', () => {
  const e = parseConfigJson(JSON_OK, '/etc/nvme/config.json');
  assert.deepEqual(e.map((x) => [x.kind, x.where]), [
    ['io', '/etc/nvme/config.json:$[0].subsystems[0].ports[0]'],
    ['io', '/etc/nvme/config.json:$[0].subsystems[0].ports[1]'],
    ['discovery', '/etc/nvme/config.json:$[0].subsystems[1].ports[0]'],
  ]);
  assert.deepEqual(entryConnectArgs(e[0]!, KNOWN), {
    hostnqn: 'nqn.2014-08.org.nvmexpress:uuid:aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee', hostid: 'aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee',
    transport: 'tcp', traddr: '192.0.2.1', trsvcid: 4420, 'host-traddr': '192.0.2.100', 'ctrl-loss-tmo': -1, 'fast-io-fail-tmo': 20, 'hdr-digest': true,
    nqn: 'nqn.2024-01.io.example:vol1',
  });
  assert.equal(e[1]?.params.trsvcid, 4420);
  assert.equal(e[2]?.params.persistent, true);
  // persistent_discovery_ctrl on the host makes its discovery ports persistent.
  const pdc = parseConfigJson(JSON.stringify([{ hostnqn: 'nqn.x:h', persistent_discovery_ctrl: true, subsystems: [{ nqn: 'nqn.2014-08.org.nvmexpress.discovery', ports: [{ transport: 'tcp', traddr: '192.0.2.9' }] }] }]));
  assert.equal(pdc[0]?.params.persistent, true);
});

test('config.json: bad input → CFG_ERR_* with the JSON path', () => {
  fails(() => parseConfigJson('[{"hostnqn": "nqn.x:h",\n  "subsystems": [}'), ErrorCode.CFG_SYNTAX, 'config.json');
  assert.throws(() => parseConfigJson('[{"hostnqn": "nqn.x:h",\n  "subsystems": [}'), /line 2 column/);
  fails(() => parseConfigJson('{}'), ErrorCode.CFG_BAD_VALUE, 'config.json:$');
  fails(() => parseConfigJson('[{"subsystems": []}]'), ErrorCode.CFG_MISSING_KEY, 'config.json:$[0].hostnqn');
  fails(() => parseConfigJson('[{"hostnqn": "nqn.x:h", "colour": 1}]'), ErrorCode.CFG_UNKNOWN_KEY, 'config.json:$[0].colour');
  fails(() => parseConfigJson('[{"hostnqn": "nqn.x:h", "subsystems": [{"ports": []}]}]'), ErrorCode.CFG_MISSING_KEY, 'config.json:$[0].subsystems[0].nqn');
  const port = (p: Record<string, unknown>): string => JSON.stringify([{ hostnqn: 'nqn.x:h', subsystems: [{ nqn: 'nqn.x:s', ports: [{ transport: 'tcp', traddr: '192.0.2.1', ...p }] }] }]);
  fails(() => parseConfigJson(port({ trsvcid: '99999' })), ErrorCode.CFG_BAD_VALUE, 'config.json:$[0].subsystems[0].ports[0].trsvcid');
  fails(() => parseConfigJson(port({ hdr_digest: 'yes' })), ErrorCode.CFG_BAD_VALUE, 'config.json:$[0].subsystems[0].ports[0].hdr_digest');
  fails(() => parseConfigJson(port({ sekrit_mode: true })), ErrorCode.CFG_UNKNOWN_KEY, 'config.json:$[0].subsystems[0].ports[0].sekrit_mode');
  fails(() => parseConfigJson(port({ traddr: undefined, transport: 'tcp' }).replace('"traddr":"192.0.2.1",', '')), ErrorCode.CFG_MISSING_KEY, 'config.json:$[0].subsystems[0].ports[0]');
  fails(() => parseConfigJson(port({ ports: 1 })), ErrorCode.CFG_UNKNOWN_KEY, /ports\[0\]\.ports$/);
  // A bad value in a secret is reported without echoing it.
  assert.throws(() => parseConfigJson(port({ dhchap_key: 42 })), (e: Error) => !e.message.includes('42') && (e as ConfigError).code === ErrorCode.CFG_BAD_VALUE);
});

test('config → connect options: keys with no option here are refused (CFG_ERR_UNSUPPORTED), "off" values pass', () => {
  const one = (p: Record<string, unknown>): ReturnType<typeof parseConfigJson>[number] => parseConfigJson(JSON.stringify([{ hostnqn: 'nqn.x:h', subsystems: [{ nqn: 'nqn.x:s', ports: [{ transport: 'tcp', traddr: '192.0.2.1', ...p }] }] }]))[0]!;
  const without = (drop: string[]): Set<string> => new Set([...KNOWN].filter((k) => !drop.includes(k)));
  // Whatever the build has: with the option removed from the set, the key is refused.
  for (const [key, value, opt] of [['dhchap_key', 'DHHC-1:00:abc:', 'dhchap-secret'], ['tls', true, 'tls'], ['disable_sqflow', true, 'disable-sqflow'], ['tls_key', 'NVMeTLSkey-1:01:x:', 'tls-key'], ['concat', true, 'concat']] as const) {
    const e = one({ [key]: value });
    fails(() => entryConnectArgs(e, without([opt])), ErrorCode.CFG_UNSUPPORTED, `config.json:$[0].subsystems[0].ports[0].${key}`);
    // With the option present (another issue's flag on main), it passes through.
    assert.equal(entryConnectArgs(e, new Set([...KNOWN, opt]))[opt], value);
  }
  fails(() => entryConnectArgs(one({ nr_write_queues: 2 }), KNOWN), ErrorCode.CFG_UNSUPPORTED, /nr_write_queues$/);
  assert.deepEqual(Object.keys(entryConnectArgs(one({ tls: false, nr_poll_queues: 0, tos: -1, disable_sqflow: false }), without(['tls', 'disable-sqflow']))).sort(), ['hostnqn', 'nqn', 'traddr', 'transport']);
  fails(() => entryConnectArgs(one({ transport: 'rdma' }), KNOWN), ErrorCode.CFG_UNSUPPORTED, /transport$/);
  // The secret itself is never in the message.
  assert.throws(() => entryConnectArgs(one({ dhchap_key: 'DHHC-1:00:c2VjcmV0:' }), without(['dhchap-secret'])), (e: Error) => !e.message.includes('c2VjcmV0'));
});

test('dump: formatConfigJson writes libnvme layout without secrets, and parses back', () => {
  const entries = [
    { params: { ...connectArgsParams({ transport: 'tcp', traddr: '192.0.2.1', trsvcid: 4420, nqn: 'nqn.x:s1', hostnqn: 'nqn.x:h', hostid: 'aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee', 'hdr-digest': true, 'dhchap-secret': 'DHHC-1:00:c2VjcmV0:' }) } },
    { params: { ...connectArgsParams({ transport: 'tcp', traddr: '192.0.2.2', trsvcid: 4420, nqn: 'nqn.x:s1', hostnqn: 'nqn.x:h' }) } },
  ];
  const text = formatConfigJson(entries as never);
  assert.equal(text.includes('c2VjcmV0'), false);
  const j = JSON.parse(text) as Array<{ hostnqn: string; subsystems: Array<{ nqn: string; ports: Array<Record<string, unknown>> }> }>;
  assert.equal(j.length, 1);
  assert.equal(j[0]?.subsystems[0]?.ports.length, 2);
  assert.equal(j[0]?.subsystems[0]?.ports[0]?.trsvcid, '4420');
  const back = parseConfigJson(text);
  assert.deepEqual(back.map((e) => [e.kind, e.params.traddr, e.params.hdr_digest]), [['io', '192.0.2.1', true], ['io', '192.0.2.2', undefined]]);
});

test('parsers are total: seeded random text never throws anything but a ConfigError', () => {
  let seed = 13;
  const rnd = (n: number): number => {
    seed = (seed * 1103515245 + 12345) >>> 0;
    return seed % n;
  };
  const alphabet = ['-t', 'tcp', '-a', '1.2.3.4', '-s', '8009', '--', '=', '#', '\n', ' ', '{', '}', '[', ']', '"', ':', ',', 'hostnqn', 'subsystems', 'ports', 'nqn', 'transport', 'traddr', '1', 'true', 'null', '-p', '-g'];
  for (let i = 0; i < 2000; i++) {
    let s = '';
    const n = rnd(40);
    for (let k = 0; k < n; k++) s += alphabet[rnd(alphabet.length)];
    for (const parse of [parseDiscoveryConf, parseConfigJson]) {
      try {
        parse(s);
      } catch (err) {
        assert.ok(err instanceof ConfigError, `${String(err)} for ${JSON.stringify(s)}`);
      }
    }
  }
});

test('config.json syntax errors point at the line and column', () => {
  for (const [text, line, col] of [
    ['[{"hostnqn": "nqn.x:h",\n  "subsystems": [}', 2, 18],
    ['[\n  {"a": 1,}\n]', 2, 11],
    ['[1 2]', 1, 4],
    ['[\n\n  "unterminated', 3, 0],
    ['[] x', 1, 4],
  ] as const) {
    {
      const e = throwsCode(() => parseConfigJson(text), ErrorCode.CFG_SYNTAX, `${JSON.stringify(text)}`);
      assert.ok(e.message.includes(col === 0 ? `line ${line} column` : `line ${line} column ${col}`));
    }
  }
});
