/**
 * src/block/errno.ts, one assertion per row of its table (issue 15 item 2, block survivors):
 * every NVMe status it names for every operation, the neighbours it must not catch (the same SC
 * under another SCT), the precedence errno > status > code, and what withErrno keeps.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { NbdErrno, errorToErrno, nvmeStatusToErrno, withErrno, type BlockOp } from '../../src/block/errno';
import { ErrorCode, NvmfNbdError, type NvmeStatus } from '../../src/errors';

const OPS: readonly BlockOp[] = ['read', 'write', 'flush', 'trim', 'zeroes'];
const st = (sct: number, sc: number): NvmeStatus => ({ sct, sc, dnr: true, more: false, crd: 0 });

test('errno table: generic statuses, for every operation', () => {
  for (const op of OPS) {
    assert.equal(nvmeStatusToErrno(st(0, 0x01), op), NbdErrno.ENOTSUP, `0/01 ${op}`);
    assert.equal(nvmeStatusToErrno(st(0, 0x02), op), NbdErrno.EINVAL, `0/02 ${op}`);
    assert.equal(nvmeStatusToErrno(st(0, 0x0b), op), NbdErrno.EINVAL, `0/0B ${op}`);
    assert.equal(nvmeStatusToErrno(st(0, 0x20), op), NbdErrno.EPERM, `0/20 ${op}`);
    assert.equal(nvmeStatusToErrno(st(0, 0x81), op), NbdErrno.ENOSPC, `0/81 ${op}`);
    for (const sc of [0x00, 0x03, 0x04, 0x0a, 0x0c, 0x21, 0x82, 0x86]) {
      assert.equal(nvmeStatusToErrno(st(0, sc), op), NbdErrno.EIO, `0/${sc.toString(16)} ${op}`);
    }
  }
});

test('errno table: LBA Out of Range is ENOSPC for write and zeroes only, EINVAL for read, flush and trim', () => {
  assert.equal(nvmeStatusToErrno(st(0, 0x80), 'write'), NbdErrno.ENOSPC);
  assert.equal(nvmeStatusToErrno(st(0, 0x80), 'zeroes'), NbdErrno.ENOSPC);
  assert.equal(nvmeStatusToErrno(st(0, 0x80), 'read'), NbdErrno.EINVAL);
  assert.equal(nvmeStatusToErrno(st(0, 0x80), 'flush'), NbdErrno.EINVAL);
  assert.equal(nvmeStatusToErrno(st(0, 0x80), 'trim'), NbdErrno.EINVAL);
});

test('errno table: command-specific, media and other status types', () => {
  for (const op of OPS) {
    assert.equal(nvmeStatusToErrno(st(1, 0x80), op), NbdErrno.EINVAL, `1/80 ${op}`);
    assert.equal(nvmeStatusToErrno(st(1, 0x82), op), NbdErrno.EPERM, `1/82 ${op}`);
    for (const sc of [0x01, 0x02, 0x0b, 0x20, 0x81, 0x83, 0x86]) {
      assert.equal(nvmeStatusToErrno(st(1, sc), op), NbdErrno.EIO, `1/${sc.toString(16)} ${op}`);
    }
    assert.equal(nvmeStatusToErrno(st(2, 0x86), op), NbdErrno.EPERM, `2/86 ${op}`);
    for (const sc of [0x80, 0x81, 0x82, 0x85, 0x87, 0x01, 0x20]) {
      assert.equal(nvmeStatusToErrno(st(2, sc), op), NbdErrno.EIO, `2/${sc.toString(16)} ${op}`);
    }
    for (const sct of [3, 4, 7]) {
      for (const sc of [0x01, 0x02, 0x20, 0x80, 0x81, 0x82, 0x86]) {
        assert.equal(nvmeStatusToErrno(st(sct, sc), op), NbdErrno.EIO, `${sct}/${sc.toString(16)} ${op}`);
      }
    }
  }
});

test('errorToErrno: anything but an NvmfNbdError is EIO, even an object with an errno', () => {
  assert.equal(errorToErrno(new Error('x'), 'read'), NbdErrno.EIO);
  assert.equal(errorToErrno({ errno: NbdErrno.EPERM, code: ErrorCode.INVALID_ARGUMENT }, 'write'), NbdErrno.EIO);
  assert.equal(errorToErrno(undefined, 'read'), NbdErrno.EIO);
  assert.equal(errorToErrno('boom', 'trim'), NbdErrno.EIO);
});

test('errorToErrno: a decided errno wins over the status, the status over the code', () => {
  const both = new NvmfNbdError(ErrorCode.INVALID_ARGUMENT, 'x', { errno: NbdErrno.ESHUTDOWN, status: st(0, 0x02) });
  assert.equal(errorToErrno(both, 'read'), NbdErrno.ESHUTDOWN);
  // errno 0 is decided too (not "absent").
  assert.equal(errorToErrno(new NvmfNbdError(ErrorCode.INVALID_ARGUMENT, 'x', { errno: 0 }), 'read'), 0);
  const statusOverCode = new NvmfNbdError(ErrorCode.INVALID_ARGUMENT, 'x', { status: st(2, 0x81) });
  assert.equal(errorToErrno(statusOverCode, 'read'), NbdErrno.EIO);
  const unsupportedWithStatus = new NvmfNbdError(ErrorCode.UNSUPPORTED, 'x', { status: st(0, 0x80) });
  assert.equal(errorToErrno(unsupportedWithStatus, 'write'), NbdErrno.ENOSPC);
  assert.equal(errorToErrno(unsupportedWithStatus, 'read'), NbdErrno.EINVAL, 'the op reaches the table');
});

test('errorToErrno: by code when there is neither errno nor status', () => {
  for (const op of OPS) {
    assert.equal(errorToErrno(new NvmfNbdError(ErrorCode.UNSUPPORTED, 'x'), op), NbdErrno.ENOTSUP);
    assert.equal(errorToErrno(new NvmfNbdError(ErrorCode.NAMESPACE_UNSUPPORTED, 'x'), op), NbdErrno.ENOTSUP);
    assert.equal(errorToErrno(new NvmfNbdError(ErrorCode.INVALID_ARGUMENT, 'x'), op), NbdErrno.EINVAL);
    assert.equal(errorToErrno(new NvmfNbdError(ErrorCode.CONNECTION_CLOSED, 'x'), op), NbdErrno.EIO);
    assert.equal(errorToErrno(new NvmfNbdError(ErrorCode.NVME_STATUS, 'x'), op), NbdErrno.EIO);
    assert.equal(errorToErrno(new NvmfNbdError(ErrorCode.NAMESPACE_NOT_FOUND, 'x'), op), NbdErrno.EIO);
  }
});

test('withErrno: an error with its errno is returned as it is', () => {
  const e = new NvmfNbdError(ErrorCode.INVALID_ARGUMENT, 'x', { errno: NbdErrno.ENOSPC, status: st(0, 0x02) });
  assert.equal(withErrno(e, 'read'), e);
  const zero = new NvmfNbdError(ErrorCode.INVALID_ARGUMENT, 'x', { errno: 0 });
  assert.equal(withErrno(zero, 'read'), zero);
});

test('withErrno: an NvmfNbdError without errno becomes a copy with code, message, status, FES/FEI and cause kept', () => {
  const status = st(0, 0x80);
  const e = new NvmfNbdError(ErrorCode.NVME_STATUS, 'LBA out of range', { status, fes: 3, fei: 7 });
  const w = withErrno(e, 'write');
  assert.notEqual(w, e);
  assert.ok(w instanceof NvmfNbdError);
  assert.equal(w.code, ErrorCode.NVME_STATUS);
  assert.equal(w.message, 'LBA out of range');
  assert.equal(w.status, status);
  assert.equal(w.errno, NbdErrno.ENOSPC);
  assert.equal(w.fes, 3);
  assert.equal(w.fei, 7);
  assert.equal(w.cause, e);
  assert.equal(withErrno(e, 'read').errno, NbdErrno.EINVAL, 'the op decides 0/80');
  const byCode = withErrno(new NvmfNbdError(ErrorCode.UNSUPPORTED, 'no'), 'zeroes');
  assert.equal(byCode.errno, NbdErrno.ENOTSUP);
  assert.equal(byCode.code, ErrorCode.UNSUPPORTED);
  assert.equal(byCode.status, undefined);
});

test('withErrno: anything else becomes CONNECTION_CLOSED / EIO naming the operation, the original as cause', () => {
  const orig = new Error('socket hang up');
  const w = withErrno(orig, 'flush');
  assert.ok(w instanceof NvmfNbdError);
  assert.equal(w.code, ErrorCode.CONNECTION_CLOSED);
  assert.equal(w.errno, NbdErrno.EIO);
  assert.equal(w.message, 'flush failed: Error: socket hang up');
  assert.equal(w.cause, orig);
  assert.equal(w.status, undefined);
  const plain = { errno: NbdErrno.EPERM };
  const wp = withErrno(plain, 'trim');
  assert.equal(wp.errno, NbdErrno.EIO);
  assert.equal(wp.message, 'trim failed: [object Object]');
  assert.equal(wp.cause, plain);
});
