/**
 * NbdTransmission (src/nbd/transmission.ts) against a fake owner, host and export: request
 * validation (each errno, flag masks, limits ±1), the record each request becomes, reply bytes
 * (simple and structured), flow control (per-connection limits, the shared budget), DISC,
 * half-close, shutdown and export removal.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ErrorCode, NvmfNbdError } from '../../src/errors';
import { BlockOpCode, type BlockRequest } from '../../src/block/types';
import { SUB_BLOCK_MAX_REQUEST } from '../../src/block/sub-block';
import { SLAB_MAX, ioBuffer, ioPoolIdleBytes } from '../../src/block/io-buffers';
import { maxRequestFor } from '../../src/nbd/transmission';
import {
  Cmd,
  CmdFlag,
  NbdErrno,
  ReplyFlag,
  encodeBlockStatus,
  encodeChunkError,
  encodeOffsetDataHeader,
  encodeSimpleReply,
} from '../../src/wire/nbd';
import { TxHarness, cookie, req, type DevOpts } from '../helpers/nbd-tx-harness';

const MiB = 1 << 20;

function simple(errno: number, n: number): Buffer {
  const c = cookie(n);
  return encodeSimpleReply(errno, c.hi, c.lo);
}

function chunkErr(errno: number, n: number): Buffer {
  const c = cookie(n);
  return encodeChunkError(ReplyFlag.DONE, c.hi, c.lo, errno);
}

/** Send one request to a fresh transmission; returns the harness. */
function one(r: Buffer, dev: DevOpts = {}, n: { structured?: boolean; strictSizes?: boolean; metaActive?: boolean } = {}): TxHarness {
  const h = new TxHarness(dev);
  h.start(n).push(r);
  return h;
}

/** The errno a lone request is answered with at once (simple reply), or 'submitted'. */
function verdict(r: Buffer, dev: DevOpts = {}, n: { structured?: boolean; strictSizes?: boolean; metaActive?: boolean } = {}): number | 'submitted' | 'pending' {
  const h = one(r, dev, n);
  if (h.submitted.length === 1) return 'submitted';
  if (h.trims.length + h.zeroes.length === 1) return 'pending';
  const b = h.take();
  assert.equal(b.length, 16, 'one simple reply');
  assert.deepEqual(b.subarray(8), simple(0, 1).subarray(8), 'cookie of request 1');
  return b.readUInt32BE(4);
}

function complete(h: TxHarness, r: BlockRequest, data?: Buffer): void {
  if (data !== undefined) r.data = data;
  (r.handler as { onBlockComplete(r: BlockRequest): void }).onBlockComplete(r);
}

function fail(h: TxHarness, r: BlockRequest, err: unknown): void {
  (r.handler as { onBlockError(r: BlockRequest, e: unknown): void }).onBlockError(r, err);
}

const flush = (): Promise<void> => new Promise((r) => setImmediate(r));

test('maxRequestFor: strict sizes take the device maximum, otherwise at least the sub-block maximum', () => {
  const small = { maxRequest: 32 * MiB } as never;
  const big = { maxRequest: 2 * SUB_BLOCK_MAX_REQUEST } as never;
  assert.equal(maxRequestFor(small, true), 32 * MiB);
  assert.equal(maxRequestFor(small, false), SUB_BLOCK_MAX_REQUEST);
  assert.equal(maxRequestFor(big, false), 2 * SUB_BLOCK_MAX_REQUEST);
  assert.equal(maxRequestFor(big, true), 2 * SUB_BLOCK_MAX_REQUEST);
});

test('validate: unknown types and flags outside each type’s mask are EINVAL', () => {
  assert.equal(verdict(req(9, 1, 0, 512)), NbdErrno.EINVAL);
  assert.equal(verdict(req(Cmd.READ, 1, 0, 512, CmdFlag.FUA)), 'submitted');
  assert.equal(verdict(req(Cmd.READ, 1, 0, 512, CmdFlag.DF)), NbdErrno.EINVAL);
  assert.equal(verdict(req(Cmd.READ, 1, 0, 512, CmdFlag.NO_HOLE)), NbdErrno.EINVAL);
  assert.equal(verdict(req(Cmd.WRITE, 1, 0, 4, CmdFlag.FUA, Buffer.from('abcd'))), 'submitted');
  assert.equal(verdict(req(Cmd.WRITE, 1, 0, 4, CmdFlag.NO_HOLE, Buffer.from('abcd'))), NbdErrno.EINVAL);
  assert.equal(verdict(req(Cmd.WRITE, 1, 0, 4, CmdFlag.DF, Buffer.from('abcd'))), NbdErrno.EINVAL);
  assert.equal(verdict(req(Cmd.CACHE, 1, 0, 512, CmdFlag.FUA)), 0);
  assert.equal(verdict(req(Cmd.CACHE, 1, 0, 512, CmdFlag.DF)), NbdErrno.EINVAL);
  assert.equal(verdict(req(Cmd.TRIM, 1, 0, 512, CmdFlag.NO_HOLE)), NbdErrno.EINVAL);
  assert.equal(verdict(req(Cmd.TRIM, 1, 0, 512, CmdFlag.FUA)), 'pending');
  assert.equal(verdict(req(Cmd.WRITE_ZEROES, 1, 0, 512, CmdFlag.NO_HOLE | CmdFlag.FUA)), 'pending');
  assert.equal(verdict(req(Cmd.WRITE_ZEROES, 1, 0, 512, CmdFlag.DF)), NbdErrno.EINVAL);
  assert.equal(verdict(req(Cmd.WRITE_ZEROES, 1, 0, 512, CmdFlag.FAST_ZERO)), 'pending');
  assert.equal(verdict(req(Cmd.WRITE_ZEROES, 1, 0, 512, CmdFlag.FAST_ZERO), { canFastZero: false }), NbdErrno.EINVAL);
  assert.equal(verdict(req(Cmd.WRITE_ZEROES, 1, 0, 512, CmdFlag.REQ_ONE)), NbdErrno.EINVAL);
});

test('validate: DF on READ only with structured replies (error then in an error chunk)', () => {
  assert.equal(verdict(req(Cmd.READ, 1, 0, 512, CmdFlag.DF), {}, { structured: true }), 'submitted');
  const h = one(req(Cmd.READ, 1, 0, 512, CmdFlag.NO_HOLE), {}, { structured: true });
  assert.deepEqual(h.take(), chunkErr(NbdErrno.EINVAL, 1));
  assert.equal(h.exp.counters.errors, 1);
  // structured replies do not widen other types' masks
  const w = one(req(Cmd.WRITE, 1, 0, 4, CmdFlag.DF, Buffer.from('abcd')), {}, { structured: true });
  assert.deepEqual(w.take(), chunkErr(NbdErrno.EINVAL, 1));
});

test('validate: FLUSH needs canFlush, allows FUA only, and ignores its offset and length', () => {
  assert.equal(verdict(req(Cmd.FLUSH, 1, 0, 0), { canFlush: false }), NbdErrno.EINVAL);
  assert.equal(verdict(req(Cmd.FLUSH, 1, 0, 0, CmdFlag.NO_HOLE)), NbdErrno.EINVAL);
  assert.equal(verdict(req(Cmd.FLUSH, 1, 0, 0, CmdFlag.DF)), NbdErrno.EINVAL);
  // junk offset/length past the end, readOnly device: still a flush
  assert.equal(verdict(req(Cmd.FLUSH, 1, 5 * MiB + 3, 7, CmdFlag.FUA), { readOnly: true }), 'submitted');
});

test('validate: TRIM and WRITE_ZEROES need their capability unless read-only (then EPERM)', () => {
  assert.equal(verdict(req(Cmd.TRIM, 1, 0, 512), { canTrim: false }), NbdErrno.EINVAL);
  assert.equal(verdict(req(Cmd.TRIM, 1, 0, 512), { canTrim: false, readOnly: true }), NbdErrno.EPERM);
  assert.equal(verdict(req(Cmd.TRIM, 1, 0, 512), { readOnly: true }), NbdErrno.EPERM);
  assert.equal(verdict(req(Cmd.WRITE_ZEROES, 1, 0, 512), { canWriteZeroes: false }), NbdErrno.EINVAL);
  assert.equal(verdict(req(Cmd.WRITE_ZEROES, 1, 0, 512), { canWriteZeroes: false, readOnly: true }), NbdErrno.EPERM);
  assert.equal(verdict(req(Cmd.WRITE_ZEROES, 1, 0, 512), { readOnly: true }), NbdErrno.EPERM);
  assert.equal(verdict(req(Cmd.WRITE, 1, 0, 4, 0, Buffer.from('abcd')), { readOnly: true }), NbdErrno.EPERM);
  assert.equal(verdict(req(Cmd.READ, 1, 0, 512), { readOnly: true }), 'submitted');
  assert.equal(verdict(req(Cmd.CACHE, 1, 0, 512), { readOnly: true }), 0);
  // read-only is checked before the length and the range
  assert.equal(verdict(req(Cmd.TRIM, 1, 0, 0), { readOnly: true }), NbdErrno.EPERM);
  assert.equal(verdict(req(Cmd.WRITE_ZEROES, 1, 2 * MiB, 512), { readOnly: true }), NbdErrno.EPERM);
});

test('validate: BLOCK_STATUS only with base:allocation active; REQ_ONE allowed', () => {
  assert.equal(verdict(req(Cmd.BLOCK_STATUS, 1, 0, 4096)), NbdErrno.EINVAL);
  const h = one(req(Cmd.BLOCK_STATUS, 1, 0, 4096, CmdFlag.REQ_ONE), {}, { structured: true, metaActive: true });
  const c = cookie(1);
  assert.deepEqual(h.take(), encodeBlockStatus(ReplyFlag.DONE, c.hi, c.lo, 1, [{ length: 4096, flags: 0 }]));
  assert.equal(h.exp.counters.errors, 0);
  const bad = one(req(Cmd.BLOCK_STATUS, 1, 0, 4096, CmdFlag.DF), {}, { structured: true, metaActive: true });
  assert.deepEqual(bad.take(), chunkErr(NbdErrno.EINVAL, 1));
  const past = one(req(Cmd.BLOCK_STATUS, 1, MiB - 512, 1024), {}, { structured: true, metaActive: true });
  assert.deepEqual(past.take(), chunkErr(NbdErrno.EINVAL, 1));
});

test('validate: length 0 is EINVAL; range ends at the last byte; one past is ENOSPC for writes, EINVAL otherwise', () => {
  assert.equal(verdict(req(Cmd.READ, 1, 0, 0)), NbdErrno.EINVAL);
  assert.equal(verdict(req(Cmd.TRIM, 1, 0, 0)), NbdErrno.EINVAL);
  assert.equal(verdict(req(Cmd.WRITE_ZEROES, 1, 0, 0)), NbdErrno.EINVAL);
  assert.equal(verdict(req(Cmd.CACHE, 1, 0, 0)), NbdErrno.EINVAL);
  assert.equal(verdict(req(Cmd.READ, 1, MiB - 512, 512)), 'submitted');
  assert.equal(verdict(req(Cmd.READ, 1, MiB - 512, 513)), NbdErrno.EINVAL);
  assert.equal(verdict(req(Cmd.READ, 1, MiB, 1)), NbdErrno.EINVAL);
  assert.equal(verdict(req(Cmd.WRITE, 1, MiB - 4, 4, 0, Buffer.from('wxyz'))), 'submitted');
  assert.equal(verdict(req(Cmd.WRITE, 1, MiB - 3, 4, 0, Buffer.from('wxyz'))), NbdErrno.ENOSPC);
  assert.equal(verdict(req(Cmd.WRITE_ZEROES, 1, MiB - 511, 512)), NbdErrno.ENOSPC);
  assert.equal(verdict(req(Cmd.WRITE_ZEROES, 1, MiB - 512, 512)), 'pending');
  assert.equal(verdict(req(Cmd.TRIM, 1, MiB - 511, 512)), NbdErrno.EINVAL);
  assert.equal(verdict(req(Cmd.TRIM, 1, MiB - 512, 512)), 'pending');
  assert.equal(verdict(req(Cmd.CACHE, 1, MiB - 511, 512)), NbdErrno.EINVAL);
});

test('validate: READ above the maximum block size is EOVERFLOW (strict: the device maximum; else the sub-block one)', () => {
  const dev = { size: 4 * SUB_BLOCK_MAX_REQUEST, maxRequest: 32 * MiB };
  assert.equal(verdict(req(Cmd.READ, 1, 0, 32 * MiB), dev, { strictSizes: true }), 'submitted');
  assert.equal(verdict(req(Cmd.READ, 1, 0, 32 * MiB + 512), dev, { strictSizes: true }), NbdErrno.EOVERFLOW);
  assert.equal(verdict(req(Cmd.READ, 1, 0, SUB_BLOCK_MAX_REQUEST), dev), 'submitted');
  assert.equal(verdict(req(Cmd.READ, 1, 0, SUB_BLOCK_MAX_REQUEST + 1), dev), NbdErrno.EOVERFLOW);
  // the limit is for READ only: a TRIM of that size runs
  assert.equal(verdict(req(Cmd.TRIM, 1, 0, SUB_BLOCK_MAX_REQUEST + 512), dev, { strictSizes: true }), 'pending');
  // EOVERFLOW is checked before the range
  assert.equal(verdict(req(Cmd.READ, 1, 4 * SUB_BLOCK_MAX_REQUEST, 32 * MiB + 512), dev, { strictSizes: true }), NbdErrno.EOVERFLOW);
});

test('validate: strict sizes refuse an unaligned offset or length; otherwise unaligned requests run', () => {
  assert.equal(verdict(req(Cmd.READ, 1, 512, 1024), {}, { strictSizes: true }), 'submitted');
  assert.equal(verdict(req(Cmd.READ, 1, 1, 512), {}, { strictSizes: true }), NbdErrno.EINVAL);
  assert.equal(verdict(req(Cmd.READ, 1, 512, 511), {}, { strictSizes: true }), NbdErrno.EINVAL);
  assert.equal(verdict(req(Cmd.READ, 1, 1, 511)), 'submitted');
  assert.equal(verdict(req(Cmd.READ, 1, 4096, 1024), { blockSize: 4096 }, { strictSizes: true }), NbdErrno.EINVAL);
});

test('READ becomes a READ record with every field set; its reply is header + data (simple)', () => {
  const h = one(req(Cmd.READ, 3, 4096, 8, CmdFlag.FUA));
  assert.equal(h.submitted.length, 1);
  const r = h.submitted[0] as BlockRequest;
  const c = cookie(3);
  assert.equal(r.op, BlockOpCode.READ);
  assert.equal(r.offset, 4096);
  assert.equal(r.length, 8);
  assert.equal(r.data, undefined);
  assert.equal(r.fua, false);
  assert.equal(r.handler, h.tx);
  assert.equal(r.cookieHi, c.hi);
  assert.equal(r.cookieLo, c.lo);
  assert.equal(r.kind, Cmd.READ);
  assert.equal(h.exp.counters.reads, 1);
  assert.equal(h.exp.counters.bytesRead, 8);
  assert.equal(h.tx.inFlightBytes, 8);
  assert.equal(h.tx.requestsInFlight, 1);
  assert.equal(h.written.length, 0);
  complete(h, r, Buffer.from('ABCDEFGH'));
  assert.deepEqual(h.take(), Buffer.concat([simple(0, 3), Buffer.from('ABCDEFGH')]));
  assert.equal(h.tx.inFlightBytes, 0);
  assert.equal(h.tx.requestsInFlight, 0);
  assert.equal(h.hostState.released, 1);
  assert.equal(h.exp.counters.errors, 0);
});

test('READ with structured replies: an OFFSET_DATA chunk with the offset', () => {
  const h = one(req(Cmd.READ, 4, 1536, 4), {}, { structured: true });
  const c = cookie(4);
  complete(h, h.submitted[0] as BlockRequest, Buffer.from('wxyz'));
  assert.deepEqual(h.take(), Buffer.concat([encodeOffsetDataHeader(ReplyFlag.DONE, c.hi, c.lo, 1536, 4), Buffer.from('wxyz')]));
});

test('READ whose device data has the wrong length: EIO and an error log (SHORT_READ)', () => {
  for (const len of [7, 9]) {
    const h = one(req(Cmd.READ, 5, 0, 8));
    complete(h, h.submitted[0] as BlockRequest, Buffer.alloc(len, 1));
    assert.deepEqual(h.take(), simple(NbdErrno.EIO, 5));
    assert.equal(h.exp.counters.errors, 1);
    const e = h.logs.find((l) => l.code === ErrorCode.SHORT_READ);
    assert.ok(e !== undefined);
    assert.equal(e.level, 'error');
    assert.equal(e.msg, `device returned ${len} bytes for a 8-byte read`);
  }
});

test('large READ data goes out with a write callback that gives it back to the pool; SLAB_MAX bytes do not', () => {
  const n = SLAB_MAX + 512;
  const h = one(req(Cmd.READ, 6, 0, n));
  const data = ioBuffer(n);
  data.fill(0x5a);
  complete(h, h.submitted[0] as BlockRequest, data);
  assert.equal(h.writeCbs.length, 1);
  assert.equal(h.written.length, 2);
  assert.deepEqual(h.written[1], data);
  const before = ioPoolIdleBytes();
  (h.writeCbs[0] as () => void)();
  assert.equal(ioPoolIdleBytes(), before + n);
  // a second callback with nothing queued does nothing
  (h.writeCbs[0] as () => void)();
  assert.equal(ioPoolIdleBytes(), before + n);

  const s = one(req(Cmd.READ, 7, 0, SLAB_MAX));
  complete(s, s.submitted[0] as BlockRequest, Buffer.alloc(SLAB_MAX, 3));
  assert.equal(s.writeCbs.length, 0);
  assert.equal(s.written.length, 2);
});

test('WRITE becomes a WRITE record with its payload and FUA; success is a simple reply', () => {
  const payload = Buffer.from('0123456789abcdef');
  const h = one(req(Cmd.WRITE, 8, 2048, 16, CmdFlag.FUA, payload));
  const r = h.submitted[0] as BlockRequest;
  const c = cookie(8);
  assert.equal(r.op, BlockOpCode.WRITE);
  assert.equal(r.offset, 2048);
  assert.equal(r.length, 16);
  assert.deepEqual(r.data, payload);
  assert.equal(r.fua, true);
  assert.equal(r.cookieHi, c.hi);
  assert.equal(r.cookieLo, c.lo);
  assert.equal(r.kind, Cmd.WRITE);
  assert.equal(h.exp.counters.writes, 1);
  assert.equal(h.exp.counters.bytesWritten, 16);
  assert.equal(h.tx.inFlightBytes, 16);
  complete(h, r);
  assert.deepEqual(h.take(), simple(0, 8));
  assert.equal(h.tx.inFlightBytes, 0);
  assert.equal(r.data, undefined, 'recycled');
  assert.equal(r.handler, undefined, 'recycled');

  const nf = one(req(Cmd.WRITE, 9, 0, 2, 0, Buffer.from('hi')));
  assert.equal((nf.submitted[0] as BlockRequest).fua, false);
});

test('a pooled WRITE payload goes back to the pool after success, not after failure', () => {
  const n = SLAB_MAX + 1024;
  const payload = Buffer.alloc(n, 0x61);
  for (const ok of [true, false]) {
    const h = new TxHarness();
    const tx = h.start();
    const wire = req(Cmd.WRITE, 10, 0, n, 0, payload);
    tx.push(wire.subarray(0, 100));
    tx.push(wire.subarray(100));
    const r = h.submitted[0] as BlockRequest;
    assert.deepEqual(r.data, payload);
    const before = ioPoolIdleBytes();
    if (ok) complete(h, r);
    else fail(h, r, new NvmfNbdError(ErrorCode.NBD_PROTOCOL, 'x', { errno: NbdErrno.ENOSPC }));
    assert.equal(ioPoolIdleBytes(), ok ? before + n : before);
    assert.deepEqual(h.take(), simple(ok ? 0 : NbdErrno.ENOSPC, 10));
  }
});

test('FLUSH becomes a FLUSH record holding no bytes; records are reused with their fields reset', () => {
  const h = new TxHarness();
  const tx = h.start();
  tx.push(req(Cmd.WRITE, 1, 512, 4, CmdFlag.FUA, Buffer.from('abcd')));
  const w = h.submitted[0] as BlockRequest;
  complete(h, w);
  tx.push(req(Cmd.FLUSH, 2, 77, 99));
  assert.equal(h.created, 1, 'the WRITE record was reused');
  const f = h.submitted[1] as BlockRequest;
  assert.equal(f, w);
  assert.equal(f.op, BlockOpCode.FLUSH);
  assert.equal(f.offset, 77);
  assert.equal(f.length, 0);
  assert.equal(f.data, undefined);
  assert.equal(f.fua, false);
  assert.equal(f.handler, tx);
  assert.equal(f.kind, Cmd.FLUSH);
  assert.equal(h.exp.counters.flushes, 1);
  assert.equal(tx.inFlightBytes, 0);
  assert.equal(tx.requestsInFlight, 1);
  // FLUSH completion subtracts no bytes even if the device set a length
  tx.push(req(Cmd.READ, 3, 0, 100));
  assert.equal(tx.inFlightBytes, 100);
  f.length = 50;
  complete(h, f);
  assert.equal(tx.inFlightBytes, 100);
  assert.equal(tx.requestsInFlight, 1);
  const r = h.submitted[2] as BlockRequest;
  fail(h, r, new Error('x'));
  assert.equal(tx.inFlightBytes, 0);
  assert.deepEqual(h.take(), Buffer.concat([simple(0, 1), simple(0, 2), simple(NbdErrno.EIO, 3)]));
});

test('a failed FLUSH subtracts no bytes', () => {
  const h = new TxHarness();
  const tx = h.start();
  tx.push(req(Cmd.READ, 1, 0, 64));
  tx.push(req(Cmd.FLUSH, 2, 0, 0));
  const f = h.submitted[1] as BlockRequest;
  f.length = 32;
  fail(h, f, new NvmfNbdError(ErrorCode.NBD_PROTOCOL, 'flush failed', { errno: NbdErrno.EIO }));
  assert.equal(tx.inFlightBytes, 64);
  assert.deepEqual(h.take(), simple(NbdErrno.EIO, 2));
});

test('the record pool keeps at most 256 records', () => {
  const h = new TxHarness();
  h.hostState.maxInFlight = 1000;
  const tx = h.start();
  const N = 258;
  for (let i = 0; i < N; i++) tx.push(req(Cmd.READ, i, 0, 1));
  assert.equal(h.created, N);
  for (const r of h.submitted.splice(0)) complete(h, r, Buffer.from('x'));
  for (let i = 0; i < N; i++) tx.push(req(Cmd.READ, i, 0, 1));
  assert.equal(h.created, N + 2, '256 reused, 2 new');
});

test('record errors: errno from an NvmfNbdError, EIO otherwise; structured → error chunk; a debug log names the type', () => {
  const h = one(req(Cmd.WRITE, 11, 0, 2, 0, Buffer.from('zz')));
  fail(h, h.submitted[0] as BlockRequest, new NvmfNbdError(ErrorCode.NBD_PROTOCOL, 'no room', { errno: NbdErrno.ENOSPC }));
  assert.deepEqual(h.take(), simple(NbdErrno.ENOSPC, 11));
  assert.equal(h.exp.counters.errors, 1);
  assert.equal(h.tx.inFlightBytes, 0);
  assert.equal(h.hostState.released, 1);
  const l = h.logs.find((e) => e.level === 'debug' && e.msg.includes('failed'));
  assert.equal(l?.msg, `request type ${Cmd.WRITE} failed: no room (errno ${NbdErrno.ENOSPC})`);

  const s = one(req(Cmd.READ, 12, 0, 2), {}, { structured: true });
  fail(s, s.submitted[0] as BlockRequest, new NvmfNbdError(ErrorCode.NBD_PROTOCOL, 'bad', { errno: 9999 }));
  assert.deepEqual(s.take(), chunkErr(NbdErrno.EIO, 12));

  const o = one(req(Cmd.READ, 13, 0, 2));
  fail(o, o.submitted[0] as BlockRequest, Object.assign(new Error('plain'), { errno: NbdErrno.ENOSPC }));
  assert.deepEqual(o.take(), simple(NbdErrno.EIO, 13));
  assert.equal(o.logs.find((e) => e.msg.includes('failed'))?.msg, `request type ${Cmd.READ} failed: plain (errno ${NbdErrno.EIO})`);
  const u = one(req(Cmd.READ, 14, 0, 2));
  fail(u, u.submitted[0] as BlockRequest, undefined);
  assert.equal(u.logs.find((e) => e.msg.includes('failed'))?.msg, `request type ${Cmd.READ} failed: undefined (errno ${NbdErrno.EIO})`);
});

test('TRIM: the range goes to sub.trim, counted; the reply waits for it', async () => {
  const h = one(req(Cmd.TRIM, 15, 8192, 4096));
  assert.deepEqual(h.trims[0]?.args, [8192, 4096]);
  assert.equal(h.exp.counters.trims, 1);
  assert.equal(h.tx.requestsInFlight, 1);
  assert.equal(h.tx.inFlightBytes, 0);
  assert.equal(h.flushes.length, 0);
  await flush();
  assert.equal(h.written.length, 0);
  h.trims[0]?.resolve();
  await flush();
  assert.deepEqual(h.take(), simple(0, 15));
  assert.equal(h.tx.requestsInFlight, 0);
  assert.equal(h.flushes.length, 0, 'no FUA: no flush');
  assert.equal(h.hostState.released, 1);
});

test('TRIM with FUA flushes the device after the trim (when it can flush) and answers after the flush', async () => {
  const h = one(req(Cmd.TRIM, 16, 0, 512, CmdFlag.FUA));
  await flush();
  assert.equal(h.flushes.length, 0, 'flush only after the trim');
  h.trims[0]?.resolve();
  await flush();
  assert.equal(h.flushes.length, 1);
  assert.equal(h.written.length, 0);
  h.flushes[0]?.reject(new NvmfNbdError(ErrorCode.NBD_PROTOCOL, 'flush', { errno: NbdErrno.ENOSPC }));
  await flush();
  assert.deepEqual(h.take(), simple(NbdErrno.ENOSPC, 16));

  const n = one(req(Cmd.TRIM, 17, 0, 512, CmdFlag.FUA), { canFlush: false });
  n.trims[0]?.resolve();
  await flush();
  assert.equal(n.flushes.length, 0);
  assert.deepEqual(n.take(), simple(0, 17));
});

test('TRIM keeps its own copy of the request: a later request does not change its reply', async () => {
  const h = new TxHarness();
  const tx = h.start();
  tx.push(Buffer.concat([req(Cmd.TRIM, 18, 0, 512), req(Cmd.READ, 19, 512, 4)]));
  h.trims[0]?.reject(new NvmfNbdError(ErrorCode.NBD_PROTOCOL, 'trim', { errno: NbdErrno.EPERM }));
  await flush();
  assert.deepEqual(h.take(), simple(NbdErrno.EPERM, 18));
  const l = h.logs.find((e) => e.msg.includes('failed'));
  assert.equal(l?.msg, `request type ${Cmd.TRIM} failed: trim (errno ${NbdErrno.EPERM})`);
  assert.equal(l?.level, 'debug');
});

test('WRITE_ZEROES passes NO_HOLE / FUA / FAST_ZERO as its options', async () => {
  const cases: Array<[number, { mayDeallocate: boolean; fua: boolean; fastOnly: boolean }]> = [
    [0, { mayDeallocate: true, fua: false, fastOnly: false }],
    [CmdFlag.NO_HOLE, { mayDeallocate: false, fua: false, fastOnly: false }],
    [CmdFlag.FUA, { mayDeallocate: true, fua: true, fastOnly: false }],
    [CmdFlag.FAST_ZERO, { mayDeallocate: true, fua: false, fastOnly: true }],
  ];
  for (const [flags, o] of cases) {
    const h = one(req(Cmd.WRITE_ZEROES, 20, 1024, 3072, flags));
    assert.deepEqual(h.zeroes[0]?.args, [1024, 3072, o]);
    assert.equal(h.exp.counters.zeroes, 1);
    assert.equal(h.tx.inFlightBytes, 0);
    h.zeroes[0]?.reject(undefined);
    await flush();
    assert.deepEqual(h.take(), simple(NbdErrno.EIO, 20), 'rejected with undefined is EIO');
    assert.equal(h.exp.counters.errors, 1);
  }
});

test('a device that throws synchronously fails only that request', async () => {
  for (const r of [req(Cmd.READ, 21, 0, 4), req(Cmd.TRIM, 21, 0, 512), req(Cmd.WRITE_ZEROES, 21, 0, 512)]) {
    const h = new TxHarness();
    h.throwOnSubmit = new NvmfNbdError(ErrorCode.NBD_PROTOCOL, 'sync', { errno: NbdErrno.ENOSPC });
    const tx = h.start();
    tx.push(r);
    assert.deepEqual(h.take(), simple(NbdErrno.ENOSPC, 21));
    assert.equal(tx.requestsInFlight, 0);
    assert.equal(tx.inFlightBytes, 0, 'the bytes begun are given back (they used to stay counted for good)');
    assert.equal(h.hostState.released, 1);
    h.throwOnSubmit = undefined;
    tx.push(req(Cmd.READ, 22, 0, 4));
    assert.equal(h.submitted.length, 1, 'the connection goes on');
  }
});

test('leftover bytes from the handshake are parsed on the first pump', () => {
  const h = new TxHarness();
  const wire = req(Cmd.READ, 23, 0, 4);
  const tx = h.start({}, [wire.subarray(0, 10), wire.subarray(10)]);
  assert.equal(h.submitted.length, 0);
  tx.pump();
  assert.equal(h.submitted.length, 1);
  assert.equal((h.submitted[0] as BlockRequest).cookieLo, cookie(23).lo);
});

test('requests are taken up to maxInFlight, then the socket pauses; a completion resumes it', () => {
  const h = new TxHarness();
  h.hostState.maxInFlight = 2;
  const tx = h.start();
  tx.push(Buffer.concat([req(Cmd.READ, 1, 0, 4), req(Cmd.READ, 2, 0, 4), req(Cmd.READ, 3, 0, 4)]));
  assert.equal(h.submitted.length, 2);
  assert.equal(h.sock.pauses, 1);
  assert.equal(h.sock.resumes, 0);
  complete(h, h.submitted[0] as BlockRequest, Buffer.from('aaaa'));
  assert.equal(h.submitted.length, 3);
  assert.equal(h.sock.pauses, 1, 'still at the limit: no second pause');
  assert.equal(h.sock.resumes, 0);
  complete(h, h.submitted[1] as BlockRequest, Buffer.from('bbbb'));
  assert.equal(h.sock.resumes, 1);
  complete(h, h.submitted[2] as BlockRequest, Buffer.from('cccc'));
  assert.equal(h.sock.resumes, 1);
  assert.equal(h.sock.pauses, 1);
});

test('request bytes in flight stop parsing at maxInFlightBytes', () => {
  const h = new TxHarness();
  h.hostState.maxInFlightBytes = 1000;
  const tx = h.start();
  tx.push(Buffer.concat([req(Cmd.READ, 1, 0, 999), req(Cmd.READ, 2, 0, 1), req(Cmd.READ, 3, 0, 1)]));
  assert.equal(h.submitted.length, 2, '999 < 1000 takes one more; 1000 stops');
  assert.equal(h.sock.pauses, 1);
  complete(h, h.submitted[1] as BlockRequest, Buffer.from('x'));
  assert.equal(h.submitted.length, 3, '999 again: one more');
  assert.equal(h.sock.resumes, 0, 'at the limit again');
  complete(h, h.submitted[0] as BlockRequest, Buffer.alloc(999));
  assert.equal(h.sock.resumes, 1);
  assert.equal(tx.inFlightBytes, 1);
});

test('unsent reply bytes at maxInFlightBytes stop parsing; below it parsing goes on', () => {
  const h = new TxHarness();
  h.hostState.maxInFlightBytes = 1000;
  const tx = h.start();
  h.sock.writableLength = 1000;
  tx.push(req(Cmd.CACHE, 1, 0, 4));
  assert.equal(h.written.length, 0);
  assert.equal(h.sock.pauses, 1);
  h.sock.writableLength = 999;
  tx.pump();
  assert.deepEqual(h.take(), simple(0, 1));
  assert.equal(h.sock.resumes, 1);
});

test('shared budget: a connection holding bytes waits for it (once); one holding nothing takes a request', () => {
  const h = new TxHarness();
  h.hostState.exhausted = true;
  const tx = h.start();
  tx.push(Buffer.concat([req(Cmd.READ, 1, 0, 4), req(Cmd.READ, 2, 0, 4)]));
  assert.equal(h.submitted.length, 1, 'nothing held: one request');
  assert.equal(h.hostState.waiters.length, 1);
  assert.equal(h.sock.pauses, 1);
  tx.pump();
  assert.equal(h.hostState.waiters.length, 1, 'registered once');
  h.hostState.exhausted = false;
  (h.hostState.waiters[0] as () => void)();
  assert.equal(h.submitted.length, 2);
  assert.equal(h.sock.resumes, 1);
  // registered again after the wake-up
  h.hostState.exhausted = true;
  tx.push(req(Cmd.READ, 3, 0, 4));
  assert.equal(h.submitted.length, 2);
  assert.equal(h.hostState.waiters.length, 2);
});

test('shared budget counts unsent replies as held bytes', () => {
  const h = new TxHarness();
  h.hostState.exhausted = true;
  const tx = h.start();
  h.sock.writableLength = 1;
  tx.push(req(Cmd.CACHE, 1, 0, 4));
  assert.equal(h.written.length, 0);
  assert.equal(h.hostState.waiters.length, 1);
});

test('a bad request magic or an oversized WRITE ends the connection with its code', () => {
  const h = new TxHarness();
  const tx = h.start();
  const bad = req(Cmd.READ, 1, 0, 4);
  bad.writeUInt32BE(0x12345678, 0);
  tx.push(bad);
  assert.equal(h.destroyed?.code, ErrorCode.NBD_BAD_MAGIC);
  assert.equal(h.destroyed?.level, 'warn');
  assert.equal(h.destroyed?.msg, 'bad request magic 0x12345678');
  assert.equal(h.sock.pauses, 0, 'no flow control after destroy');

  const big = new TxHarness({ maxRequest: 32 * MiB });
  const bt = big.start({ strictSizes: true });
  bt.push(req(Cmd.WRITE, 1, 0, 32 * MiB + 1).subarray(0, 28));
  assert.equal(big.destroyed?.code, ErrorCode.NBD_REQUEST_TOO_LARGE);
});

test('half-close: complete requests still run; a truncated tail ends with NBD_TRUNCATED; otherwise the socket ends after the replies', () => {
  const h = new TxHarness();
  const tx = h.start();
  tx.push(req(Cmd.READ, 1, 0, 4));
  tx.end();
  assert.equal(h.ended, 0, 'a request in flight');
  complete(h, h.submitted[0] as BlockRequest, Buffer.from('dddd'));
  assert.equal(h.ended, 1);

  const t = new TxHarness();
  const tt = t.start();
  tt.push(req(Cmd.READ, 1, 0, 4).subarray(0, 27));
  assert.equal(t.destroyed, undefined);
  tt.end();
  assert.deepEqual(t.destroyed, { code: ErrorCode.NBD_TRUNCATED, msg: 'client closed in the middle of a request', level: 'warn' });
  assert.equal(t.ended, 0);

  const q = new TxHarness();
  q.hostState.maxInFlight = 1;
  const qt = q.start();
  qt.push(Buffer.concat([req(Cmd.READ, 1, 0, 4), req(Cmd.READ, 2, 0, 4)]));
  qt.end();
  assert.equal(q.destroyed, undefined, 'queued complete request is not a truncation');
  complete(q, q.submitted[0] as BlockRequest, Buffer.from('eeee'));
  assert.equal(q.submitted.length, 2);
  assert.equal(q.ended, 0);
  complete(q, q.submitted[1] as BlockRequest, Buffer.from('ffff'));
  assert.equal(q.ended, 1);
  assert.equal(q.destroyed, undefined);
});

test('DISC: logged, later bytes ignored, the socket ends once nothing is in flight', () => {
  const h = new TxHarness();
  const tx = h.start();
  tx.push(Buffer.concat([req(Cmd.READ, 1, 0, 4), req(Cmd.DISC, 2, 0, 0), req(Cmd.READ, 3, 0, 4)]));
  assert.equal(h.submitted.length, 1);
  assert.ok(h.logs.some((l) => l.level === 'debug' && l.msg === 'client sent DISC'));
  assert.equal(h.ended, 0);
  tx.push(req(Cmd.CACHE, 4, 0, 4));
  assert.equal(h.written.length, 0);
  complete(h, h.submitted[0] as BlockRequest, Buffer.from('gggg'));
  assert.deepEqual(h.take(), Buffer.concat([simple(0, 1), Buffer.from('gggg')]));
  assert.equal(h.ended, 1);

  const n = new TxHarness();
  n.start().push(req(Cmd.DISC, 1, 0, 0));
  assert.equal(n.ended, 1);
});

test('shutdown: later requests get ESHUTDOWN, running ones finish normally; the socket ends when idle', () => {
  const h = new TxHarness();
  const tx = h.start();
  tx.push(req(Cmd.READ, 1, 0, 4));
  tx.shutdown(false);
  assert.equal(h.ended, 0);
  tx.push(req(Cmd.WRITE, 2, 0, 2, 0, Buffer.from('qq')));
  assert.deepEqual(h.take(), simple(NbdErrno.ESHUTDOWN, 2));
  assert.equal(h.submitted.length, 1);
  complete(h, h.submitted[0] as BlockRequest, Buffer.from('hhhh'));
  assert.deepEqual(h.take(), Buffer.concat([simple(0, 1), Buffer.from('hhhh')]));
  assert.equal(h.ended, 1);

  const i = new TxHarness();
  i.start().shutdown(false);
  assert.equal(i.ended, 1);
});

test('shutdown(failInFlight): running requests are answered ESHUTDOWN (records, errors and promises)', async () => {
  const h = new TxHarness();
  const tx = h.start({ structured: true });
  tx.push(Buffer.concat([req(Cmd.READ, 1, 0, 4), req(Cmd.WRITE, 2, 0, 2, 0, Buffer.from('rr')), req(Cmd.TRIM, 3, 0, 512)]));
  tx.shutdown(true);
  complete(h, h.submitted[0] as BlockRequest, Buffer.from('iiii'));
  fail(h, h.submitted[1] as BlockRequest, new NvmfNbdError(ErrorCode.NBD_PROTOCOL, 'x', { errno: NbdErrno.ENOSPC }));
  h.trims[0]?.resolve();
  await flush();
  assert.deepEqual(h.take(), Buffer.concat([chunkErr(NbdErrno.ESHUTDOWN, 1), chunkErr(NbdErrno.ESHUTDOWN, 2), chunkErr(NbdErrno.ESHUTDOWN, 3)]));
  assert.equal(h.exp.counters.errors, 3);
  assert.equal(h.ended, 1);
});

test('a removed export or a server shutting down answers every request ESHUTDOWN from the start', () => {
  const r = new TxHarness({}, true);
  const rt = r.start();
  rt.push(req(Cmd.READ, 1, 0, 4));
  assert.deepEqual(r.take(), simple(NbdErrno.ESHUTDOWN, 1));
  assert.equal(r.submitted.length, 0);
  const s = new TxHarness();
  s.hostState.shuttingDown = true;
  const st = s.start();
  st.push(req(Cmd.CACHE, 1, 0, 4));
  assert.deepEqual(s.take(), simple(NbdErrno.ESHUTDOWN, 1));
  // DISC still closes after a shutdown
  st.push(req(Cmd.DISC, 2, 0, 0));
  st.maybeFinish();
  assert.equal(s.ended >= 1, true);
});

test('after DISC with shutdown, bytes are still parsed but nothing more is dispatched', () => {
  const h = new TxHarness();
  h.hostState.maxInFlight = 1;
  const tx = h.start();
  tx.push(req(Cmd.READ, 1, 0, 4));
  tx.push(req(Cmd.DISC, 2, 0, 0));
  tx.shutdown(false);
  tx.push(req(Cmd.CACHE, 3, 0, 4));
  assert.equal(h.written.length, 0);
  assert.equal(h.submitted.length, 1);
});

test('completions after the connection closed send nothing and do not pump', async () => {
  const h = new TxHarness();
  const tx = h.start();
  tx.push(Buffer.concat([req(Cmd.READ, 1, 0, 4), req(Cmd.WRITE, 2, 0, 1, 0, Buffer.from('s')), req(Cmd.TRIM, 3, 0, 512)]));
  h.inTransmission = false;
  complete(h, h.submitted[0] as BlockRequest, Buffer.from('jjjj'));
  fail(h, h.submitted[1] as BlockRequest, new Error('gone'));
  h.trims[0]?.resolve();
  await flush();
  assert.equal(h.written.length, 0);
  assert.equal(h.hostState.released, 0);
  assert.equal(tx.requestsInFlight, 0);
  assert.equal(tx.inFlightBytes, 0);
  assert.equal(h.ended, 0);
  tx.pump();
  tx.maybeFinish();
  assert.equal(h.ended, 0);
});

test('no request is parsed while the owner is not in transmission', () => {
  const h = new TxHarness();
  const tx = h.start();
  h.inTransmission = false;
  tx.push(req(Cmd.CACHE, 1, 0, 4));
  assert.equal(h.written.length, 0);
  assert.equal(h.sock.pauses, 0);
  h.inTransmission = true;
  tx.pump();
  assert.deepEqual(h.take(), simple(0, 1));
});

test('after DISC, later bytes do not touch flow control (no pause even with a full reply queue)', () => {
  const h = new TxHarness();
  h.hostState.maxInFlightBytes = 1000;
  const tx = h.start();
  tx.push(Buffer.concat([req(Cmd.READ, 1, 0, 4), req(Cmd.DISC, 2, 0, 0)]));
  h.sock.writableLength = 1000;
  tx.push(req(Cmd.CACHE, 3, 0, 4));
  assert.equal(h.sock.pauses, 0);
  assert.equal(h.written.length, 0);
});

test('after DISC and a shutdown, flow control still applies to what arrives', () => {
  const h = new TxHarness();
  h.hostState.maxInFlightBytes = 1000;
  const tx = h.start();
  tx.push(Buffer.concat([req(Cmd.READ, 1, 0, 4), req(Cmd.DISC, 2, 0, 0)]));
  tx.shutdown(false);
  h.sock.writableLength = 1000;
  tx.push(req(Cmd.CACHE, 3, 0, 4));
  assert.equal(h.sock.pauses, 1);
  assert.equal(h.written.length, 0, 'but nothing is dispatched');
});

test('a DISC that closes the connection inside pump leaves the paused socket alone', () => {
  const h = new TxHarness();
  h.hostState.maxInFlight = 1;
  const tx = h.start();
  tx.push(Buffer.concat([req(Cmd.READ, 1, 0, 4), req(Cmd.DISC, 2, 0, 0)]));
  assert.equal(h.sock.pauses, 1);
  complete(h, h.submitted[0] as BlockRequest, Buffer.from('kkkk'));
  assert.equal(h.ended, 1);
  assert.equal(h.sock.resumes, 0);
});

test('a device completing inside submit (against its contract) does not recurse: 30000 pipelined READs all succeed', () => {
  const h = new TxHarness();
  h.hostState.maxInFlight = 1 << 30;
  h.syncComplete = true;
  const tx = h.start();
  const N = 30000;
  const one = req(Cmd.READ, 1, 0, 1);
  tx.push(Buffer.concat(Array.from({ length: N }, () => one)));
  const out = h.take();
  assert.equal(out.length, N * 17);
  for (let i = 0; i < N; i++) assert.equal(out.readUInt32BE(i * 17 + 4), 0);
  assert.equal(h.exp.counters.errors, 0);
  assert.equal(tx.requestsInFlight, 0);
  assert.equal(h.sock.pauses, 0);
});
