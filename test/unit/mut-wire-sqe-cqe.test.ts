/**
 * SQE / CQE argument checks name what was wrong (issue 15 item 2, wire survivors): each
 * refusal is INVALID_ARGUMENT (UNSUPPORTED for a bidirectional opcode) with a message that
 * carries the offending value and the field.
 */
import { test } from 'node:test';
import { strict as assert } from 'node:assert';
import {
  sqeRead, sqeWrite, sqeWriteZeroes, fillSqeIo, sqeGetLogPage, sqeDatasetManagement, encodeConnectData,
  parseConnectData, dataDirection, parseSqe, IoOpcode,
} from '../../src/wire/sqe';
import { parseCqe } from '../../src/wire/cqe';
import { ErrorCode, type ErrorCodeValue } from '../../src/errors';
import { throwsCode } from '../helpers/assert-code';

const HOSTID = Buffer.alloc(16, 1);
const NQN = 'nqn.2014-08.org.nvmexpress:uuid:0';

function message(fn: () => unknown, code: ErrorCodeValue = ErrorCode.INVALID_ARGUMENT): string {
  return throwsCode(fn, code).message;
}

test('nlb out of range names the value and the range, on every builder', () => {
  for (const nlb of [0, 65537, 2.5]) {
    const want = `nlb ${nlb} out of range 1..65536`;
    assert.equal(message(() => sqeRead(1, 0n, nlb)), want);
    assert.equal(message(() => sqeWrite(1, 0n, nlb, false)), want);
    assert.equal(message(() => sqeWriteZeroes(1, 0n, nlb, { deallocate: false, fua: false })), want);
    assert.equal(message(() => fillSqeIo(Buffer.alloc(64), IoOpcode.READ, 1, 0n, nlb, false)), want);
  }
});

test('log page length and DSM range count refusals carry the value', () => {
  for (const n of [0, 6, 2]) {
    assert.equal(message(() => sqeGetLogPage(2, n)), `log page length ${n} must be a non-zero multiple of 4`);
  }
  for (const nr of [0, 257]) assert.equal(message(() => sqeDatasetManagement(1, nr, true)), `DSM range count ${nr} out of range 1..256`);
});

test('Connect data: the too-long NQN is named, hostid length, short data', () => {
  const long = 'n'.repeat(256);
  assert.equal(message(() => encodeConnectData({ hostid: HOSTID, cntlid: 1, subnqn: long, hostnqn: NQN })), 'subnqn longer than 255 bytes');
  assert.equal(message(() => encodeConnectData({ hostid: HOSTID, cntlid: 1, subnqn: NQN, hostnqn: long })), 'hostnqn longer than 255 bytes');
  assert.equal(message(() => encodeConnectData({ hostid: Buffer.alloc(15), cntlid: 1, subnqn: NQN, hostnqn: NQN })), 'hostid must be 16 bytes');
  assert.equal(message(() => parseConnectData(Buffer.alloc(1023))), 'connect data 1023 bytes, expected 1024');
});

test('short SQE / CQE and a bidirectional opcode are refused with the size / opcode', () => {
  assert.equal(message(() => parseSqe(Buffer.alloc(63))), 'SQE 63 bytes, expected 64');
  assert.equal(message(() => parseCqe(Buffer.alloc(15))), 'CQE 15 bytes, expected 16');
  const sqe = Buffer.alloc(64);
  sqe[0] = 0x83;
  assert.equal(message(() => dataDirection(sqe), ErrorCode.UNSUPPORTED), 'bidirectional command opcode 0x83');
});
