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

test('SLBA at both ends of the number path and past it: 0, 2^53-1, 2^53+1, 2^64-1 and -1 (modulo 2^64) are exact', () => {
  for (const slba of [0n, 1n, 0x1_0000_0001n, 2n ** 53n - 1n, 2n ** 53n, 2n ** 53n + 1n, 2n ** 64n - 1n, 0xfedc_ba98_7654_3210n, -1n, -(2n ** 60n)]) {
    const want = BigInt.asUintN(64, slba);
    assert.equal(sqeRead(1, slba, 1).readBigUInt64LE(40), want, `read ${slba}`);
    assert.equal(sqeWrite(1, slba, 1, true).readBigUInt64LE(40), want, `write ${slba}`);
    const b = Buffer.alloc(64, 0xff);
    fillSqeIo(b, IoOpcode.WRITE, 1, slba, 1, false);
    assert.equal(b.readBigUInt64LE(40), want, `fillSqeIo ${slba}`);
  }
});
