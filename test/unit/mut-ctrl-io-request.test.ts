/**
 * Mutation tests (issue 15 item 2) of src/controller/io-request.ts: a fresh record's defaults,
 * the lazy read destination (allocDataIn for a whole request and for a part of a split read),
 * payloadBytes, the completion hand-off to the owner, ioDoneLater and PromiseIoOwner.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { IoRequest, PromiseIoOwner, ioDoneLater, type IoOwner } from '../../src/controller/io-request';
import { BlockOpCode } from '../../src/block/types';
import { ErrorCode, NvmfNbdError } from '../../src/errors';
import type { Cqe } from '../../src/wire/cqe';

function recorder(): IoOwner & { calls: Array<{ req: IoRequest; err: NvmfNbdError | undefined }> } {
  const calls: Array<{ req: IoRequest; err: NvmfNbdError | undefined }> = [];
  return { calls, onIoDone: (req, err) => { calls.push({ req, err }); } };
}

test('a fresh IoRequest: a READ of nothing with every field cleared and its own 64-byte SQE', () => {
  const r = new IoRequest();
  assert.equal(r.op, BlockOpCode.READ);
  assert.equal(r.offset, 0);
  assert.equal(r.length, 0);
  assert.equal(r.data, undefined);
  assert.equal(r.fua, false);
  assert.equal(r.mayDeallocate, false);
  assert.equal(r.fastOnly, false);
  assert.equal(r.handler, undefined);
  assert.equal(r.upstream, undefined);
  assert.equal(r.cookieHi, 0);
  assert.equal(r.cookieLo, 0);
  assert.equal(r.kind, 0);
  assert.equal(r.nsid, 0);
  assert.equal(r.slba, 0n);
  assert.equal(r.nlb, 0);
  assert.equal(r.ns, undefined);
  assert.equal(r.owner, undefined);
  assert.equal(r.upper, undefined);
  assert.equal(r.outer, undefined);
  assert.equal(r.mpPath, undefined);
  assert.equal(r.mpRetries, 0);
  assert.equal(r.pathLost, false);
  assert.equal(r.mpSeq, 0);
  assert.equal(r.seq, 0);
  assert.equal(r.bytes, 0);
  assert.equal(r.ctrl, undefined);
  assert.equal(r.parent, undefined);
  assert.equal(r.partsPending, 0);
  assert.equal(r.partError, undefined);
  assert.equal(r.partOffset, 0);
  assert.equal(r.sqe.length, 64);
  assert.notEqual(r.sqe, new IoRequest().sqe, 'each record has its own SQE');
  assert.equal(r.payloadBytes, 0);
});

test('allocDataIn of a whole read: a buffer of dataInLength kept in data, the same one when issued again', () => {
  const r = new IoRequest();
  r.dataInLength = 1536;
  const b = r.allocDataIn();
  assert.equal(b.length, 1536);
  assert.equal(r.data, b);
  r.dataInLength = 512; // issued again (a reconnect): keeps what it has
  assert.equal(r.allocDataIn(), b);
  // A destination given by the caller is used as is.
  const given = Buffer.alloc(1024, 0x5a);
  const r2 = new IoRequest();
  r2.data = given;
  r2.dataInLength = 1024;
  assert.equal(r2.allocDataIn(), given);
});

test('allocDataIn of parts: the first part issued makes the parent\'s whole destination, each part its view', () => {
  const parent = new IoRequest();
  parent.dataInLength = 12;
  const mk = (offset: number, len: number): IoRequest => {
    const p = new IoRequest();
    p.parent = parent;
    p.partOffset = offset;
    p.dataInLength = len;
    return p;
  };
  const second = mk(4, 5);
  const first = mk(0, 4);
  const last = mk(9, 3);
  // Issued out of order: the middle part first.
  const v2 = second.allocDataIn();
  assert.equal(parent.data?.length, 12);
  assert.equal(second.data, undefined, 'a part keeps no buffer of its own');
  const whole = parent.data as Buffer;
  assert.equal(v2.length, 5);
  const v1 = first.allocDataIn();
  const v3 = last.allocDataIn();
  assert.equal(parent.data, whole, 'made once');
  assert.equal(v1.length, 4);
  assert.equal(v3.length, 3);
  v1.fill(1); v2.fill(2); v3.fill(3);
  assert.deepEqual([...whole], [1, 1, 1, 1, 2, 2, 2, 2, 2, 3, 3, 3]);
  // A parent with a destination of its own: the parts are views of it.
  const p2 = new IoRequest();
  const dest = Buffer.alloc(8);
  p2.data = dest;
  p2.dataInLength = 8;
  const part = new IoRequest();
  part.parent = p2;
  part.partOffset = 6;
  part.dataInLength = 2;
  part.allocDataIn().fill(9);
  assert.equal(p2.data, dest);
  assert.deepEqual([...dest], [0, 0, 0, 0, 0, 0, 9, 9]);
});

test('payloadBytes: a flush moves none, a write its payload, a read its destination or what it will be', () => {
  const r = new IoRequest();
  r.op = BlockOpCode.FLUSH;
  r.data = Buffer.alloc(100);
  r.dataInLength = 200;
  assert.equal(r.payloadBytes, 0);
  r.op = BlockOpCode.WRITE;
  assert.equal(r.payloadBytes, 100);
  r.data = undefined;
  assert.equal(r.payloadBytes, 0, 'a write without data moves nothing, whatever dataInLength says');
  r.op = BlockOpCode.READ;
  assert.equal(r.payloadBytes, 200);
  r.data = Buffer.alloc(300);
  assert.equal(r.payloadBytes, 300);
});

test('onQpComplete / onQpError hand the record to its owner, without or with the error', () => {
  const r = new IoRequest();
  const o = recorder();
  r.owner = o;
  r.onQpComplete({} as Cqe);
  const err = new NvmfNbdError(ErrorCode.CONTROLLER_LOST, 'boom');
  r.onQpError(err);
  assert.equal(o.calls.length, 2);
  assert.equal(o.calls[0]?.req, r);
  assert.equal(o.calls[0]?.err, undefined);
  assert.equal(o.calls[1]?.req, r);
  assert.equal(o.calls[1]?.err, err);
});

test('ioDoneLater: the owner hears of it on a later tick, with the error given', async () => {
  const r = new IoRequest();
  const o = recorder();
  r.owner = o;
  const err = new NvmfNbdError(ErrorCode.CONNECTION_CLOSED, 'gone');
  ioDoneLater(r, err);
  assert.equal(o.calls.length, 0, 'never synchronous');
  await new Promise<void>((resolve) => process.nextTick(resolve));
  assert.equal(o.calls.length, 1);
  assert.equal(o.calls[0]?.req, r);
  assert.equal(o.calls[0]?.err, err);
  ioDoneLater(r, undefined);
  await new Promise<void>((resolve) => process.nextTick(resolve));
  assert.equal(o.calls.length, 2);
  assert.equal(o.calls[1]?.err, undefined);
});

test('PromiseIoOwner: rejects with the error; resolves a read with its data, anything else with undefined', async () => {
  const settle = (req: IoRequest, err: NvmfNbdError | undefined): Promise<Buffer | undefined> => new Promise((resolve, reject) => {
    new PromiseIoOwner(resolve, reject).onIoDone(req, err);
  });
  const r = new IoRequest();
  r.data = Buffer.from('abc');
  r.op = BlockOpCode.READ;
  assert.equal(await settle(r, undefined), r.data);
  r.op = BlockOpCode.WRITE;
  assert.equal(await settle(r, undefined), undefined);
  r.op = BlockOpCode.FLUSH;
  assert.equal(await settle(r, undefined), undefined);
  const err = new NvmfNbdError(ErrorCode.CONTROLLER_LOST, 'bad');
  r.op = BlockOpCode.READ;
  await assert.rejects(settle(r, err), (e) => e === err);
});
