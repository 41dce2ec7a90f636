/**
 * ANA log page codec (src/wire/ana.ts): a byte fixture built from the NVMe Base 2.0 layout,
 * the RGO variant, state names, and malformed pages from a peer.
 */
import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import {
  AEN_ANA_CHANGE_DW0, ANA_GROUP_DESC_SIZE, ANA_LOG_HEADER_SIZE, AnaState, anaLogSize, anaStateAccessible, anaStateName,
  encodeAnaLog, isAnaState, parseAnaLog, parseAnaState, type AnaLog,
} from '../../src/wire/ana';
import { PathStatus, Sct, statusName } from '../../src/wire/status';
import { ErrorCode } from '../../src/errors';
import { throwsCode } from '../helpers/assert-code';

/** Two groups: 1 optimized with NSIDs 1 and 3, 7 inaccessible with NSID 2; written byte by byte. */
function fixture(): Buffer {
  const b = Buffer.alloc(16 + 32 + 8 + 32 + 4);
  b.writeBigUInt64LE(0x1122334455n, 0); // CHGCNT
  b.writeUInt16LE(2, 8); // NGRPS
  let o = 16;
  b.writeUInt32LE(1, o); // ANAGRPID
  b.writeUInt32LE(2, o + 4); // NNSIDS
  b.writeBigUInt64LE(5n, o + 8); // CHGCNT
  b[o + 16] = 0x01; // optimized
  b.writeUInt32LE(1, o + 32);
  b.writeUInt32LE(3, o + 36);
  o += 40;
  b.writeUInt32LE(7, o);
  b.writeUInt32LE(1, o + 4);
  b.writeBigUInt64LE(9n, o + 8);
  b[o + 16] = 0x03; // inaccessible
  b.writeUInt32LE(2, o + 32);
  return b;
}

const LOG: AnaLog = {
  chgcnt: 0x1122334455n,
  groups: [
    { grpid: 1, chgcnt: 5n, state: AnaState.OPTIMIZED, nsids: [1, 3] },
    { grpid: 7, chgcnt: 9n, state: AnaState.INACCESSIBLE, nsids: [2] },
  ],
};

test('ANA log: encoder and parser match the byte layout', () => {
  assert.deepEqual(encodeAnaLog(LOG), fixture());
  assert.deepEqual(parseAnaLog(fixture()), LOG);
  assert.equal(anaLogSize(LOG.groups), fixture().length);
});

test('ANA log: RGO (groups only) has NNSIDS 0 and no NSID lists', () => {
  const b = encodeAnaLog(LOG, { groupsOnly: true });
  assert.equal(b.length, ANA_LOG_HEADER_SIZE + 2 * ANA_GROUP_DESC_SIZE);
  assert.equal(b.readUInt32LE(16 + 4), 0);
  assert.equal(b.readUInt32LE(48), 7, 'second descriptor follows the first at once');
  const p = parseAnaLog(b);
  assert.deepEqual(p.groups.map((g) => [g.grpid, g.state, g.nsids.length]), [[1, 1, 0], [7, 3, 0]]);
});

test('ANA log: a host buffer longer than the log parses (zero padding ignored); reserved state bits dropped', () => {
  const b = Buffer.concat([fixture(), Buffer.alloc(4096)]);
  assert.deepEqual(parseAnaLog(b), LOG);
  const f = fixture();
  f[16 + 16] = 0xf1;
  assert.equal(parseAnaLog(f).groups[0]!.state, AnaState.OPTIMIZED);
});

test('ANA log: malformed pages from a peer are NVMF_ERR_ANA_LOG_INVALID, never a crash or a huge allocation', () => {
  throwsCode(() => parseAnaLog(Buffer.alloc(15)), ErrorCode.ANA_LOG_INVALID);
  const f = fixture();
  throwsCode(() => parseAnaLog(f.subarray(0, f.length - 1)), ErrorCode.ANA_LOG_INVALID, 'NSID list cut short');
  throwsCode(() => parseAnaLog(f.subarray(0, 16 + 40 + 20)), ErrorCode.ANA_LOG_INVALID, 'descriptor cut short');
  const huge = fixture();
  huge.writeUInt32LE(0xffffffff, 16 + 4);
  throwsCode(() => parseAnaLog(huge), ErrorCode.ANA_LOG_INVALID, 'NNSIDS beyond the buffer');
  const zero = fixture();
  zero.writeUInt32LE(0, 16);
  throwsCode(() => parseAnaLog(zero), ErrorCode.ANA_LOG_INVALID, 'group id 0');
  const dup = fixture();
  dup.writeUInt32LE(1, 56);
  throwsCode(() => parseAnaLog(dup), ErrorCode.ANA_LOG_INVALID, 'group listed twice');
  const many = fixture();
  many.writeUInt16LE(3, 8);
  throwsCode(() => parseAnaLog(many), ErrorCode.ANA_LOG_INVALID, 'more groups than bytes');
  // Every truncation of a valid page either parses the same groups or fails with the code.
  for (let n = 0; n < f.length; n++) throwsCode(() => parseAnaLog(f.subarray(0, n)), ErrorCode.ANA_LOG_INVALID);
});

test('ANA log encoder refuses what a conforming controller cannot send', () => {
  throwsCode(() => encodeAnaLog({ chgcnt: 0n, groups: [{ grpid: 0, chgcnt: 0n, state: 1, nsids: [] }] }), ErrorCode.INVALID_ARGUMENT);
  throwsCode(() => encodeAnaLog({ chgcnt: 0n, groups: [{ grpid: 1, chgcnt: 0n, state: 0x10, nsids: [] }] }), ErrorCode.INVALID_ARGUMENT);
  assert.equal(encodeAnaLog({ chgcnt: 0n, groups: [] }).length, 16);
});

test('ANA states: Linux names both ways, numbers, accessibility', () => {
  const names: Array<[number, string]> = [[1, 'optimized'], [2, 'non-optimized'], [3, 'inaccessible'], [4, 'persistent-loss'], [0x0f, 'change']];
  for (const [v, n] of names) {
    assert.equal(anaStateName(v), n);
    assert.equal(parseAnaState(n), v);
    assert.equal(parseAnaState(n.toUpperCase().replace('-', '_')), v);
    assert.equal(isAnaState(v), true);
  }
  assert.equal(parseAnaState('0x0f'), AnaState.CHANGE);
  assert.equal(parseAnaState('2'), AnaState.NON_OPTIMIZED);
  assert.equal(parseAnaState('5'), undefined);
  assert.equal(parseAnaState('fast'), undefined);
  assert.equal(anaStateName(0), 'unknown (0x00)');
  assert.deepEqual([1, 2, 3, 4, 15].map(anaStateAccessible), [true, true, false, false, false]);
});

test('ANA change notice DW0 and path status names (SCT 3h)', () => {
  assert.equal(AEN_ANA_CHANGE_DW0, 0x000c0302);
  const want: Array<[number, string]> = [
    [PathStatus.INTERNAL_PATH_ERROR, 'Internal Path Error'],
    [PathStatus.ANA_PERSISTENT_LOSS, 'Asymmetric Access Persistent Loss'],
    [PathStatus.ANA_INACCESSIBLE, 'Asymmetric Access Inaccessible'],
    [PathStatus.ANA_TRANSITION, 'Asymmetric Access Transition'],
    [PathStatus.CONTROLLER_PATHING_ERROR, 'Controller Pathing Error'],
    [PathStatus.HOST_PATHING_ERROR, 'Host Pathing Error'],
    [PathStatus.ABORTED_BY_HOST, 'Command Aborted By Host'],
  ];
  assert.deepEqual(Object.values(PathStatus), [0x00, 0x01, 0x02, 0x03, 0x60, 0x70, 0x71]);
  for (const [sc, name] of want) assert.equal(statusName(Sct.PATH, sc), name);
});
