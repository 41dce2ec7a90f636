/**
 * Boundaries and field independence of the SQE/CQE codecs (issue 15 item 2, survivors of
 * `npm run mutate -- src/wire/sqe.ts src/wire/cqe.ts`): every limit on both sides of it, status
 * bits one at a time, and the allocation-free fillSqeIo byte-identical to sqeRead/sqeWrite/sqeFlush.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  decodeStatusField, encodeConnectData, fillSqeIo, IoOpcode, parseSqe, readFixedString, sqeDatasetManagement,
  sqeFlush, sqeGetLogPage, sqeRead, sqeWrite,
} from '../../src/wire';
import { ErrorCode } from '../../src/errors';
import { throwsCode } from '../helpers/assert-code';

test('CQE status field: SC, SCT, CRD, More and DNR decode independently (each bit alone)', () => {
  assert.deepEqual(decodeStatusField(0), { sc: 0, sct: 0, crd: 0, more: false, dnr: false });
  assert.deepEqual(decodeStatusField(0x8000), { sc: 0, sct: 0, crd: 0, more: false, dnr: true });
  assert.deepEqual(decodeStatusField(0x4000), { sc: 0, sct: 0, crd: 0, more: true, dnr: false });
  assert.deepEqual(decodeStatusField(0x3000), { sc: 0, sct: 0, crd: 3, more: false, dnr: false });
  assert.deepEqual(decodeStatusField(0x0e00), { sc: 0, sct: 7, crd: 0, more: false, dnr: false });
  assert.deepEqual(decodeStatusField(0x01fe), { sc: 0xff, sct: 0, crd: 0, more: false, dnr: false });
  assert.deepEqual(decodeStatusField(0x0001), { sc: 0, sct: 0, crd: 0, more: false, dnr: false }, 'phase tag is not status');
});

test('fillSqeIo rewrites a reused buffer byte-identical to sqeRead / sqeWrite (FUA) / sqeFlush', () => {
  const b = Buffer.alloc(64, 0xee);
  fillSqeIo(b, IoOpcode.READ, 7, 0x123456789an, 1, false);
  assert.deepEqual(b, sqeRead(7, 0x123456789an, 1));
  fillSqeIo(b, IoOpcode.WRITE, 0xfffffffe, 5n, 65536, true);
  assert.deepEqual(b, sqeWrite(0xfffffffe, 5n, 65536, true));
  fillSqeIo(b, IoOpcode.WRITE, 1, 0n, 8, false);
  assert.deepEqual(b, sqeWrite(1, 0n, 8, false));
  assert.equal(b.readUInt32LE(48), 7, 'NLB 0-based, no FUA bit');
  fillSqeIo(b, IoOpcode.FLUSH, 3, 99n, 0, true);
  assert.deepEqual(b, sqeFlush(3), 'Flush: no SLBA, NLB or FUA');
  throwsCode(() => fillSqeIo(b, IoOpcode.READ, 1, 0n, 0, false), ErrorCode.INVALID_ARGUMENT);
  throwsCode(() => fillSqeIo(b, IoOpcode.READ, 1, 0n, 65537, false), ErrorCode.INVALID_ARGUMENT);
});

test('Get Log Page length: 4 bytes and 2^34 bytes (NUMD 2^32 − 1) are the limits; 0, 2, 6 and 2^34 + 4 are refused', () => {
  const four = parseSqe(sqeGetLogPage(0x02, 4));
  assert.equal(four.cdw10 >>> 16, 0, 'NUMDL 0 = one dword');
  assert.equal(four.cdw11 & 0xffff, 0);
  const max = parseSqe(sqeGetLogPage(0x02, 4 * 0x100000000));
  assert.equal(max.cdw10 >>> 16, 0xffff);
  assert.equal(max.cdw11 & 0xffff, 0xffff);
  assert.equal(parseSqe(sqeGetLogPage(0x02, 8)).cdw10 & 0x8000, 0, 'RAE clear by default');
  assert.equal(parseSqe(sqeGetLogPage(0x02, 8, 0xffffffff, 0, 0, true)).cdw10 & 0x8000, 0x8000, 'RAE bit 15');
  for (const n of [0, 2, 6, 4 * 0x100000000 + 4, 4.5, -4]) throwsCode(() => sqeGetLogPage(0x02, n), ErrorCode.INVALID_ARGUMENT, `${n} bytes`);
});

test('DSM range count: 1 and 256 are the limits (NR 0-based); 0, 257 and 1.5 are refused', () => {
  assert.equal(parseSqe(sqeDatasetManagement(1, 1, false)).cdw10, 0);
  assert.equal(parseSqe(sqeDatasetManagement(1, 256, true)).cdw10, 255);
  for (const nr of [0, 257, 1.5, -1]) throwsCode(() => sqeDatasetManagement(1, nr, true), ErrorCode.INVALID_ARGUMENT, `nr ${nr}`);
});

test('Connect data: a 255-byte NQN fits its 256-byte field, 256 bytes do not; the host ID must be 16 bytes', () => {
  const nqn255 = `nqn.2014-08.org.x:${'a'.repeat(255 - 18)}`;
  assert.equal(Buffer.byteLength(nqn255), 255);
  const d = encodeConnectData({ hostid: Buffer.alloc(16, 1), cntlid: 0xffff, subnqn: nqn255, hostnqn: 'nqn.2014-08.org.x:h' });
  assert.equal(readFixedString(d, 256, 256), nqn255);
  assert.equal(d[256 + 255], 0, 'NUL-terminated');
  throwsCode(() => encodeConnectData({ hostid: Buffer.alloc(16), cntlid: 0, subnqn: `${nqn255}b`, hostnqn: 'nqn.2014-08.org.x:h' }), ErrorCode.INVALID_ARGUMENT);
  throwsCode(() => encodeConnectData({ hostid: Buffer.alloc(16), cntlid: 0, subnqn: 'nqn.2014-08.org.x:s', hostnqn: `${nqn255}b` }), ErrorCode.INVALID_ARGUMENT);
  for (const n of [15, 17, 0]) {
    throwsCode(() => encodeConnectData({ hostid: Buffer.alloc(n), cntlid: 0, subnqn: 'nqn.2014-08.org.x:s', hostnqn: 'nqn.2014-08.org.x:h' }), ErrorCode.INVALID_ARGUMENT, `hostid ${n}`);
  }
});

test('readFixedString: stops at the first NUL, a NUL at offset 0 is the empty string, no NUL = the whole field', () => {
  assert.equal(readFixedString(Buffer.from('\0abc'), 0, 4), '');
  assert.equal(readFixedString(Buffer.from('ab\0c'), 0, 4), 'ab');
  assert.equal(readFixedString(Buffer.from('xabcd'), 1, 4), 'abcd');
});

test('parseSqe needs 64 bytes: 63 is refused, 64 parses', () => {
  throwsCode(() => parseSqe(Buffer.alloc(63)), ErrorCode.INVALID_ARGUMENT);
  assert.equal(parseSqe(Buffer.alloc(64)).opcode, 0);
});
