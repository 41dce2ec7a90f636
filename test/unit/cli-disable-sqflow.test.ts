/**
 * `--disable-sqflow` (nvme-cli spelling) reaches the controller options on every connect path:
 * connect, connect-all (per discovery entry) and the daemon's connect binding; `list` shows the
 * queue's SQ flow control and its C2HData SUCCESS counters; `target --c2h-success` is checked.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseArgs } from '../../src/cli/args';
import { verb as connectVerb, controllerOptionsFromArgs } from '../../src/cli/verbs/connect';
import { verb as connectAllVerb, entryConnectOptions } from '../../src/cli/verbs/connect-all';
import { connectBinding } from '../../src/cli/verbs/daemon';
import { formatList } from '../../src/cli/verbs/list';
import { verb as targetVerb } from '../../src/cli/verbs/target';
import { ErrorCode, NvmfNbdError } from '../../src/errors';
import { rejectsCode } from '../helpers/assert-code';

const BASE = ['-t', 'tcp', '-a', '127.0.0.1', '-n', 'nqn.2014-08.org.example:s', '-q', 'nqn.2014-08.org.example:h', '-I', '11111111-2222-3333-4444-555555555555'];

test('connect --disable-sqflow asks the controller to disable SQ flow control; absent, it is not asked', () => {
  assert.equal(controllerOptionsFromArgs(parseArgs([...BASE, '--disable-sqflow'], connectVerb.options).options).disableSqFlowControl, true);
  assert.equal(controllerOptionsFromArgs(parseArgs(BASE, connectVerb.options).options).disableSqFlowControl, undefined);
});

test('connect-all carries --disable-sqflow into every entry, and the daemon binding honours it', () => {
  const parsed = parseArgs(['-t', 'tcp', '-a', '127.0.0.1', '--disable-sqflow'], connectAllVerb.options).options;
  const entry = entryConnectOptions(parsed, { traddr: '10.0.2.15', trsvcid: '4420', subnqn: 'nqn.2014-08.org.example:s' });
  assert.equal(entry['disable-sqflow'], true);
  const c = connectBinding().controllerOptions({ ...entry, hostnqn: 'nqn.2014-08.org.example:h', hostid: '11111111-2222-3333-4444-555555555555' });
  assert.equal(c.disableSqFlowControl, true);
});

test('list shows SQ flow control and reads completed by SUCCESS (those with SQ flow control on apart)', () => {
  const out = formatList([{
    name: 'nvme0', queues: {
      admin: { qid: 0, commands: 3, sqFlowControl: true, c2hSuccess: 0, c2hSuccessWithSqFlow: 0 },
      io: [{ qid: 1, commands: 10, sqFlowControl: true, c2hSuccess: 7, c2hSuccessWithSqFlow: 7 }, { qid: 2, commands: 1, sqFlowControl: false, c2hSuccess: 1, c2hSuccessWithSqFlow: 0 }],
    },
  }]);
  assert.match(out, /SQ FLOW\s+C2H SUCCESS/);
  assert.match(out, /^1 .* on\s+7 \(7 with SQ flow\)$/m);
  assert.match(out, /^2 .* off\s+1$/m);
});

test('target --c2h-success accepts spec|spdk|always-resp and refuses anything else', async () => {
  const o = parseArgs(['--c2h-success', 'sometimes'], targetVerb.options).options;
  await rejectsCode(targetVerb.run(o, []), ErrorCode.CLI_USAGE);
  assert.equal(parseArgs([], targetVerb.options).options['c2h-success'], 'spec');
});
