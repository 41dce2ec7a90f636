import { test } from 'node:test';
import assert from 'node:assert/strict';
import { statusName, formatStatus, statusError, Sct, GenericStatus, FabricsStatus, MediaStatus } from '../../src/wire/status';
import { ErrorCode } from '../../src/errors';

test('generic status names', () => {
  assert.equal(statusName(Sct.GENERIC, GenericStatus.SUCCESS), 'Successful Completion');
  assert.equal(statusName(0, 0x02), 'Invalid Field in Command');
  assert.equal(statusName(0, 0x22), 'Transient Transport Error');
  assert.equal(statusName(0, GenericStatus.LBA_OUT_OF_RANGE), 'LBA Out of Range');
  assert.equal(statusName(0, 0x81), 'Capacity Exceeded');
  assert.equal(statusName(0, 0x82), 'Namespace Not Ready');
  assert.equal(statusName(0, 0x86), 'Invalid Key Size');
});

test('every generic code 0x00-0x22 (except reserved 0x17) and 0x80-0x86 has a name', () => {
  for (let sc = 0; sc <= 0x22; sc++) {
    if (sc === 0x17) continue;
    assert.notEqual(statusName(0, sc), 'Unknown status', `sc ${sc}`);
  }
  for (let sc = 0x80; sc <= 0x86; sc++) assert.notEqual(statusName(0, sc), 'Unknown status', `sc ${sc}`);
});

test('command specific: Fabrics Connect names at 0x80+, common ones below; io context', () => {
  assert.equal(statusName(Sct.COMMAND_SPECIFIC, FabricsStatus.INCOMPATIBLE_FORMAT), 'Incompatible Format');
  assert.equal(statusName(1, 0x81), 'Controller Busy');
  assert.equal(statusName(1, 0x82), 'Connect Invalid Parameters');
  assert.equal(statusName(1, 0x83), 'Connect Restart Discovery');
  assert.equal(statusName(1, 0x84), 'Connect Invalid Host');
  assert.equal(statusName(1, 0x85), 'Invalid Queue Type');
  assert.equal(statusName(1, 0x90), 'Discover Restart');
  assert.equal(statusName(1, 0x91), 'Authentication Required');
  assert.equal(statusName(1, 0x01), 'Invalid Queue Identifier');
  assert.equal(statusName(1, 0x02), 'Invalid Queue Size');
  assert.equal(statusName(1, 0x06), 'Invalid Firmware Slot');
  assert.equal(statusName(1, 0x80, { io: true }), 'Conflicting Attributes');
  assert.equal(statusName(1, 0x01, { io: true }), 'Invalid Queue Identifier');
});

test('media and path errors', () => {
  assert.equal(statusName(Sct.MEDIA, MediaStatus.WRITE_FAULT), 'Write Fault');
  assert.equal(statusName(2, 0x81), 'Unrecovered Read Error');
  assert.equal(statusName(2, 0x82), 'End-to-end Guard Check Error');
  assert.equal(statusName(2, 0x83), 'End-to-end Application Tag Check Error');
  assert.equal(statusName(2, 0x84), 'End-to-end Reference Tag Check Error');
  assert.equal(statusName(2, 0x86), 'Access Denied');
  assert.equal(statusName(2, 0x87), 'Deallocated or Unwritten Logical Block');
  assert.equal(statusName(Sct.PATH, 0x00), 'Internal Path Error');
  assert.equal(statusName(3, 0x02), 'Asymmetric Access Inaccessible');
  assert.equal(statusName(3, 0x71), 'Command Aborted By Host');
});

test('unknown combinations', () => {
  assert.equal(statusName(0, 0x17), 'Unknown status');
  assert.equal(statusName(2, 0x00), 'Unknown status');
  assert.equal(statusName(4, 0x00), 'Unknown status');
  assert.equal(statusName(1, 0xfe), 'Unknown status');
});

test('formatStatus and statusError carry sct/sc/dnr', () => {
  const s = { sct: 0, sc: 2, dnr: false, more: false, crd: 0 };
  assert.equal(formatStatus(s), 'Invalid Field in Command (sct 0 sc 0x02)');
  assert.equal(formatStatus({ ...s, dnr: true }), 'Invalid Field in Command (sct 0 sc 0x02, dnr)');
  const e = statusError({ ...s, sct: 1, sc: 0x84, dnr: true }, 'connect');
  assert.equal(e.code, ErrorCode.NVME_STATUS);
  assert.deepEqual(e.status, { sct: 1, sc: 0x84, dnr: true, more: false, crd: 0 });
  assert.equal(e.retriable, false);
  assert.equal(statusError(s, 'x').retriable, true);
});
