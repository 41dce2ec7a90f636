/**
 * The wording of a refused Fabrics Connect (transport/connect-failure.ts), every mapping
 * (issue 15 item 2, transport survivors): Connect Invalid Parameters names the field from IATTR
 * (bit 16 of DW0: in the data, else in the SQE) and IPO (bits 15:0), with the NQN for the two
 * NQN fields; Invalid Host and Controller Busy have their own sentence; nothing else adds any.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { connectFailureDetail } from '../../src/transport/connect-failure';
import type { Cqe } from '../../src/wire/cqe';

const O = { subnqn: 'nqn.test:sub', hostnqn: 'nqn.test:host' };

function cqe(sct: number, sc: number, dw0 = 0): Cqe {
  return { dw0, dw1: 0, sqhd: 0, sqid: 0, cid: 0, ok: false, status: { sct, sc, dnr: true, more: false, crd: 0 } };
}

test('Connect Invalid Parameters in the Connect data: each field by its offset, NQNs quoted', () => {
  const inData = 1 << 16;
  assert.equal(connectFailureDetail(cqe(1, 0x82, inData | 0), O), ': the target rejected the host ID');
  assert.equal(connectFailureDetail(cqe(1, 0x82, inData | 16), O), ': the target rejected the controller ID');
  assert.equal(connectFailureDetail(cqe(1, 0x82, inData | 256), O), ": the target rejected the subsystem NQN 'nqn.test:sub'");
  assert.equal(connectFailureDetail(cqe(1, 0x82, inData | 512), O), ": the target rejected the host NQN 'nqn.test:host'");
  assert.equal(connectFailureDetail(cqe(1, 0x82, inData | 40), O), '', 'offset 40 of the data is no field');
  // Bits above IATTR (bit 17+) do not make it an SQE field.
  assert.equal(connectFailureDetail(cqe(1, 0x82, (1 << 17) | inData | 16), O), ': the target rejected the controller ID');
});

test('Connect Invalid Parameters in the SQE: each field by its offset', () => {
  assert.equal(connectFailureDetail(cqe(1, 0x82, 40), O), ': the target rejected the record format');
  assert.equal(connectFailureDetail(cqe(1, 0x82, 42), O), ': the target rejected the queue ID');
  assert.equal(connectFailureDetail(cqe(1, 0x82, 44), O), ': the target rejected the queue size');
  assert.equal(connectFailureDetail(cqe(1, 0x82, 46), O), ': the target rejected the connect attributes');
  assert.equal(connectFailureDetail(cqe(1, 0x82, 48), O), ': the target rejected the keep alive timeout');
  assert.equal(connectFailureDetail(cqe(1, 0x82, 256), O), '', 'offset 256 of the SQE is no field');
  assert.equal(connectFailureDetail(cqe(1, 0x82, (1 << 17) | 42), O), ': the target rejected the queue ID', 'IATTR is bit 16 only');
});

test('Invalid Host and Controller Busy have their sentence; other statuses and code types none', () => {
  assert.equal(connectFailureDetail(cqe(1, 0x84), O), ": host 'nqn.test:host' is not allowed to connect to this subsystem");
  assert.equal(connectFailureDetail(cqe(1, 0x81), O), ': the controller is busy');
  for (const sc of [0x80, 0x83, 0x85, 0x90]) assert.equal(connectFailureDetail(cqe(1, sc, 42), O), '', `sc ${sc}`);
  for (const sct of [0, 2, 3]) {
    for (const sc of [0x81, 0x82, 0x84]) assert.equal(connectFailureDetail(cqe(sct, sc, 42), O), '', `sct ${sct} sc ${sc}`);
  }
});
