/**
 * Namespace (src/controller/namespace.ts): byte ↔ LBA math, capability flags from ONCS/VWC, Write Zeroes fallback,
 * and NVMe status → NBD errno mapping (src/block/errno.ts).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { namespaceOf } from '../helpers/namespace-of';
import type { FakeBackend as NamespaceBackend } from '../helpers/namespace-of';
import { NbdErrno, errorToErrno, nvmeStatusToErrno } from '../../src/block/errno';
import { ErrorCode, NvmfNbdError } from '../../src/errors';
import type { NvmeStatus } from '../../src/errors';
import { rejectsCode, throwsCode } from '../helpers/assert-code';

type Call = { op: string; nsid: number; slba: bigint; nlb: number; fua?: boolean; deallocate?: boolean };

function backend(o: { oncs?: number; vwc?: boolean; lbaSize?: number; blocks?: bigint; fail?: NvmfNbdError; ms?: boolean } = {}): NamespaceBackend & { calls: Call[] } {
  const lbaSize = o.lbaSize ?? 4096;
  const calls: Call[] = [];
  const maybeFail = async (): Promise<void> => { if (o.fail !== undefined) throw o.fail; };
  return {
    calls,
    namespaces: new Map([[1, { lbaSize, nsze: o.blocks ?? 1024n, usable: o.ms !== true, reasonIfNot: o.ms === true ? 'metadata' : undefined }]]),
    oncs: o.oncs ?? 0x0c,
    volatileWriteCache: o.vwc ?? true,
    async read(nsid, slba, nlb) { calls.push({ op: 'read', nsid, slba, nlb }); await maybeFail(); return Buffer.alloc(nlb * lbaSize, 7); },
    async write(nsid, slba, data, w) { calls.push({ op: 'write', nsid, slba, nlb: data.length / lbaSize, fua: w.fua }); await maybeFail(); },
    async flush(nsid) { calls.push({ op: 'flush', nsid, slba: 0n, nlb: 0 }); await maybeFail(); },
    async deallocate(nsid, ranges) { for (const r of ranges) calls.push({ op: 'dsm', nsid, slba: r.slba, nlb: r.nlb }); await maybeFail(); },
    async writeZeroes(nsid, slba, nlb, z) { calls.push({ op: 'zeroes', nsid, slba, nlb, deallocate: z.deallocate, fua: z.fua }); await maybeFail(); },
  };
}

const status = (sct: number, sc: number): NvmeStatus => ({ sct, sc, dnr: true, more: false, crd: 0 });

test('size, block size and LBA math', () => {
  const b = backend();
  const d = namespaceOf(b, 1);
  assert.equal(d.size, 1024 * 4096);
  assert.equal(d.blockSize, 4096);
  assert.ok(d.maxRequest >= 32 << 20);
  return (async () => {
    const data = await d.read(8192, 12288);
    assert.equal(data.length, 12288);
    await d.write(4096, Buffer.alloc(8192), true);
    assert.deepEqual(b.calls, [
      { op: 'read', nsid: 1, slba: 2n, nlb: 3 },
      { op: 'write', nsid: 1, slba: 1n, nlb: 2, fua: true },
    ]);
  })();
});

test('capabilities follow ONCS (DSM bit 2, Write Zeroes bit 3) and VWC', () => {
  const full = namespaceOf(backend({ oncs: 0x0c, vwc: true }), 1);
  assert.deepEqual([full.canTrim, full.canFastZero, full.canFlush, full.canFua], [true, true, true, true]);
  const bare = namespaceOf(backend({ oncs: 0, vwc: false }), 1);
  assert.deepEqual([bare.canTrim, bare.canFastZero, bare.canFlush, bare.canFua], [false, false, false, false]);
});

test('without a volatile write cache flush is a no-op and FUA is not sent', async () => {
  const b = backend({ vwc: false });
  const d = namespaceOf(b, 1);
  await d.flush();
  await d.write(0, Buffer.alloc(4096), true);
  assert.deepEqual(b.calls.map((c) => [c.op, c.fua]), [['write', false]]);
});

test('trim maps to deallocate ranges; write zeroes passes deallocate and FUA', async () => {
  const b = backend();
  const d = namespaceOf(b, 1);
  await d.trim(4096 * 10, 4096 * 5);
  await d.writeZeroes(0, 4096 * 3, { mayDeallocate: true, fua: true, fastOnly: false });
  assert.deepEqual(b.calls, [
    { op: 'dsm', nsid: 1, slba: 10n, nlb: 5 },
    { op: 'zeroes', nsid: 1, slba: 0n, nlb: 3, deallocate: true, fua: true },
  ]);
});

test('without Write Zeroes: fastOnly → ENOTSUP, otherwise zero-filled writes', async () => {
  const b = backend({ oncs: 0 });
  const d = namespaceOf(b, 1);
  await assert.rejects(d.writeZeroes(0, 4096, { mayDeallocate: true, fua: false, fastOnly: true }),
    (e: NvmfNbdError) => e.errno === NbdErrno.ENOTSUP);
  await d.writeZeroes(0, 3 << 20, { mayDeallocate: true, fua: false, fastOnly: false });
  assert.deepEqual(b.calls.map((c) => [c.op, c.slba, c.nlb]), [['write', 0n, 256], ['write', 256n, 256], ['write', 512n, 256]]);
  await assert.rejects(d.trim(0, 4096), (e: NvmfNbdError) => e.errno === NbdErrno.ENOTSUP);
});

test('misaligned or out-of-range requests: EINVAL, and ENOSPC for writes past the end', async () => {
  const d = namespaceOf(backend(), 1);
  await assert.rejects(d.read(100, 4096), (e: NvmfNbdError) => e.errno === NbdErrno.EINVAL);
  await assert.rejects(d.read(d.size, 4096), (e: NvmfNbdError) => e.errno === NbdErrno.EINVAL);
  await assert.rejects(d.write(d.size - 4096, Buffer.alloc(8192), false), (e: NvmfNbdError) => e.errno === NbdErrno.ENOSPC);
});

test('read-only device refuses writes with EPERM', async () => {
  const d = namespaceOf(backend(), 1, { readOnly: true });
  await assert.rejects(d.write(0, Buffer.alloc(4096), false), (e: NvmfNbdError) => e.errno === NbdErrno.EPERM);
});

test('a namespace with metadata cannot be opened (NAMESPACE_UNSUPPORTED)', () => {
  throwsCode(() => namespaceOf(backend({ ms: true }), 1), ErrorCode.NAMESPACE_UNSUPPORTED);
  throwsCode(() => namespaceOf(backend(), 2), ErrorCode.NAMESPACE_NOT_FOUND);
});

test('NVMe status → errno table', () => {
  assert.equal(nvmeStatusToErrno(status(0, 0x80), 'write'), NbdErrno.ENOSPC);
  assert.equal(nvmeStatusToErrno(status(0, 0x80), 'read'), NbdErrno.EINVAL);
  assert.equal(nvmeStatusToErrno(status(0, 0x81), 'write'), NbdErrno.ENOSPC);
  assert.equal(nvmeStatusToErrno(status(0, 0x20), 'write'), NbdErrno.EPERM);
  assert.equal(nvmeStatusToErrno(status(2, 0x86), 'read'), NbdErrno.EPERM);
  assert.equal(nvmeStatusToErrno(status(1, 0x82), 'write'), NbdErrno.EPERM);
  assert.equal(nvmeStatusToErrno(status(0, 0x02), 'trim'), NbdErrno.EINVAL);
  assert.equal(nvmeStatusToErrno(status(0, 0x01), 'zeroes'), NbdErrno.ENOTSUP);
  assert.equal(nvmeStatusToErrno(status(2, 0x80), 'write'), NbdErrno.EIO);
  assert.equal(nvmeStatusToErrno(status(2, 0x81), 'read'), NbdErrno.EIO);
  assert.equal(nvmeStatusToErrno(status(0, 0x06), 'read'), NbdErrno.EIO);
  assert.equal(errorToErrno(new NvmfNbdError(ErrorCode.CONNECTION_CLOSED, 'x'), 'read'), NbdErrno.EIO);
  assert.equal(errorToErrno(new NvmfNbdError(ErrorCode.UNSUPPORTED, 'x'), 'read'), NbdErrno.ENOTSUP);
  assert.equal(errorToErrno(new Error('x'), 'read'), NbdErrno.EIO);
});

test('backend failures reach the caller with errno set and the code and status kept', async () => {
  const fail = new NvmfNbdError(ErrorCode.NVME_STATUS, 'LBA Out of Range', { status: status(0, 0x80) });
  const d = namespaceOf(backend({ fail }), 1);
  const err = await d.write(0, Buffer.alloc(4096), false).then(() => undefined, (e: NvmfNbdError) => e);
  assert.equal(err?.code, ErrorCode.NVME_STATUS);
  assert.equal(err?.status?.sc, 0x80);
  assert.equal(err?.errno, NbdErrno.ENOSPC);
  const lost = namespaceOf(backend({ fail: new NvmfNbdError(ErrorCode.CONTROLLER_LOST, 'gone') }), 1);
  assert.equal((await rejectsCode(lost.read(0, 4096), ErrorCode.CONTROLLER_LOST)).errno, NbdErrno.EIO);
});
