/**
 * The daemon-facing verbs' argument handling (no daemon needed): disconnect's three forms,
 * admin-passthru's request building (direction, padding, usage errors), get-log's hex dump and
 * controller-name checks, and connect-all's per-entry options.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { disconnectTarget } from '../../src/cli/verbs/disconnect';
import { passthruRequest } from '../../src/cli/verbs/admin-passthru';
import { controllerName, dataFormat, hexDump } from '../../src/cli/verbs/get-log';
import { entryConnectOptions } from '../../src/cli/verbs/connect-all';
import { ErrorCode, NvmfNbdError } from '../../src/errors';
import { throwsCode } from '../helpers/assert-code';

const usage = (f: () => unknown, message?: string): void => { throwsCode(f, ErrorCode.CLI_USAGE, message); };

test('disconnect: -n, -d nvmeX, -d /dev/nbdX, a positional; exactly one', () => {
  assert.deepEqual(disconnectTarget({ nqn: 'nqn.a' }, []), { nqn: 'nqn.a' });
  assert.deepEqual(disconnectTarget({ device: 'nvme2' }, []), { name: 'nvme2' });
  assert.deepEqual(disconnectTarget({ device: '/dev/nbd4' }, []), { device: '/dev/nbd4' });
  assert.deepEqual(disconnectTarget({}, ['/dev/nbd0']), { device: '/dev/nbd0' });
  assert.deepEqual(disconnectTarget({}, ['nvme1']), { name: 'nvme1' });
  usage(() => disconnectTarget({}, []));
  usage(() => disconnectTarget({ nqn: 'nqn.a' }, ['nvme0']));
  usage(() => disconnectTarget({ device: 'sda' }, []));
  usage(() => disconnectTarget({}, ['/dev/sda']));
});

test('admin-passthru: direction from the opcode or the flags; write data padded to --data-len', () => {
  const base = { 'namespace-id': 0, cdw2: 0, cdw3: 0, cdw10: 1, cdw11: 0, cdw12: 0, cdw13: 0, cdw14: 0, cdw15: 0 };
  const id = passthruRequest('nvme0', { ...base, opcode: 6, 'data-len': 4096 }, undefined);
  assert.equal(id.direction, 'read');
  assert.equal(id.cdw10, 1);
  const w = passthruRequest('nvme0', { ...base, opcode: 0x09, write: true, 'data-len': 8 }, Buffer.from([1, 2, 3]));
  assert.equal(w.direction, 'write');
  assert.deepEqual(Buffer.from(w.data as string, 'base64'), Buffer.from([1, 2, 3, 0, 0, 0, 0, 0]));
  assert.equal(passthruRequest('nvme0', { ...base, opcode: 0x18, 'data-len': 0 }, undefined).direction, 'none');
  usage(() => passthruRequest('nvme0', { ...base, 'data-len': 0 }, undefined), 'no opcode');
  usage(() => passthruRequest('nvme0', { ...base, opcode: 6, 'data-len': 0 }, undefined), 'read without a length');
  usage(() => passthruRequest('nvme0', { ...base, opcode: 0x18, 'data-len': 512 }, undefined), 'no-data opcode with a length');
  usage(() => passthruRequest('nvme0', { ...base, opcode: 6, read: true, write: true, 'data-len': 8 }, undefined));
});

test('get-log helpers: hex dump lines, nvmeX positional, -o/-b', () => {
  const dump = hexDump(Buffer.from('NVMe\x00\x01 log page 0123456789', 'latin1'));
  const lines = dump.trimEnd().split('\n');
  assert.equal(lines.length, 3);
  assert.equal(lines[1], '0000: 4e 56 4d 65 00 01 20 6c 6f 67 20 70 61 67 65 20 "NVMe.. log page "');
  assert.match(lines[2] ?? '', /^0010: 30 31 32 .* "0123456789"$/);
  assert.equal(controllerName(['nvme3']), 'nvme3');
  usage(() => controllerName([]));
  usage(() => controllerName(['/dev/nvme0']));
  assert.equal(dataFormat({ 'raw-binary': true, 'output-format': 'json' }), 'binary');
  usage(() => dataFormat({ 'output-format': 'xml' }));
});

test('connect-all: each entry becomes a connect with its own address and NQN; other flags carry over', () => {
  const o = entryConnectOptions({ traddr: '127.0.0.1', trsvcid: 8009, 'nr-io-queues': 2, attach: true, 'override-traddr': '127.0.0.1', control: '/c' }, { traddr: '10.0.2.15', trsvcid: '4420', subnqn: 'nqn.s' });
  assert.deepEqual(o, { 'nr-io-queues': 2, attach: true, control: '/c', transport: 'tcp', traddr: '10.0.2.15', trsvcid: 4420, nqn: 'nqn.s' });
  throwsCode(() => entryConnectOptions({}, { traddr: 'a', trsvcid: 'x', subnqn: 'n' }), ErrorCode.INVALID_ARGUMENT);
});
