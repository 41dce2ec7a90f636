/**
 * The host's object-free receive path (issue 9 item 4): PduParser's `sink` gets CapsuleResp and
 * C2HData as numbers (no Pdu object, header or CQE view), every other PDU still goes to onPdu;
 * the queue's reused CQE is copied by the promise wrapper; the SLBA number path of the SQE
 * encoder writes the same bytes as the bigint one. Pure: no sockets.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PduFlag, PduParser, encodeC2HData, encodeCapsuleResp, encodeR2T, type HostPduSink, type Pdu, type PduOptions } from '../../src/wire/pdu';
import { encodeCqe } from '../../src/wire/cqe';
import type { Cqe } from '../../src/wire/cqe';
import { fillSqeIo, IoOpcode, sqeRead } from '../../src/wire/sqe';
import { PromiseCommand } from '../../src/transport/queue-command';
import type { Completion } from '../../src/transport/queue-command';
import { ErrorCode } from '../../src/errors';
import { throwsCode } from '../helpers/assert-code';

interface Seen { cqes: Buffer[]; c2h: Array<{ cccid: number; datao: number; flags: number; data: Buffer; copy: Buffer; ok: boolean }>; pdus: Pdu[] }

function sinkParser(digests: boolean, place?: Buffer): { p: PduParser; seen: Seen; on: (x: Pdu) => void } {
  const seen: Seen = { cqes: [], c2h: [], pdus: [] };
  const sink: HostPduSink = {
    // Copies: the views are valid only during the call.
    onCapsuleResp: (b, o) => seen.cqes.push(Buffer.from(b.subarray(o, o + 16))),
    onC2HData: (cccid, datao, flags, data, ok) => seen.c2h.push({ cccid, datao, flags, data, copy: Buffer.from(data), ok }),
  };
  const p = new PduParser({ role: 'host', maxData: 1 << 20, sink, ...(place !== undefined ? { placeData: () => place } : {}) });
  p.setDigests(digests, digests);
  return { p, seen, on: (x) => seen.pdus.push(x) };
}

for (const digests of [false, true]) {
  const o: PduOptions = { hdgst: digests, ddgst: digests, pda: 0 };
  for (const split of ['whole', 'byte by byte'] as const) {
    test(`sink: CapsuleResp and C2HData as numbers, R2T still a Pdu (digests ${digests}, ${split})`, () => {
      const cqe = encodeCqe({ dw0: 0x11223344, dw1: 7, sqhd: 5, sqid: 2, cid: 9, sct: 0, sc: 0 });
      const data = Buffer.from(Array.from({ length: 300 }, (_, i) => i & 0xff));
      const stream = Buffer.concat([
        ...encodeCapsuleResp(cqe, o),
        ...encodeC2HData({ cccid: 9, datao: 512, last: true, success: true }, data, o),
        ...encodeR2T({ cccid: 4, ttag: 3, r2to: 0, r2tl: 4096 }, o),
        ...encodeC2HData({ cccid: 6, datao: 0, last: false, success: false }, data.subarray(0, 8), o),
      ]);
      const { p, seen, on } = sinkParser(digests);
      if (split === 'whole') p.push(stream, on);
      else for (let i = 0; i < stream.length; i++) p.push(stream.subarray(i, i + 1), on);
      assert.deepEqual(seen.cqes, [cqe]);
      assert.equal(seen.c2h.length, 2);
      const [a, b] = seen.c2h;
      const dg = digests ? PduFlag.HDGSTF | PduFlag.DDGSTF : 0;
      assert.deepEqual([a?.cccid, a?.datao, a?.flags, a?.ok], [9, 512, PduFlag.LAST_PDU | PduFlag.SUCCESS | dg, true]);
      assert.deepEqual(a?.copy, data);
      assert.deepEqual([b?.cccid, b?.datao, b?.flags, b?.ok], [6, 0, dg, true]);
      assert.deepEqual(b?.copy, data.subarray(0, 8));
      assert.equal(seen.pdus.length, 1, 'only the R2T reaches onPdu');
      assert.deepEqual(seen.pdus[0], { type: 0x09, cccid: 4, ttag: 3, r2to: 0, r2tl: 4096 });
    });
  }

  test(`sink: a placed C2HData payload arrives in the destination itself (digests ${digests})`, () => {
    const dest = Buffer.alloc(64);
    const data = Buffer.alloc(64, 0x5a);
    const { p, seen, on } = sinkParser(digests, dest);
    p.push(Buffer.concat(encodeC2HData({ cccid: 1, datao: 0, last: true, success: false }, data, o)), on);
    assert.equal(seen.c2h.length, 1);
    assert.equal(seen.c2h[0]?.data, dest, 'the destination object, no view');
    assert.deepEqual(dest, data);
  });
}

test('sink: a bad data digest is reported to the sink, a bad header digest fails the parser', () => {
  const o: PduOptions = { hdgst: true, ddgst: true, pda: 0 };
  const good = Buffer.concat(encodeC2HData({ cccid: 2, datao: 0, last: true, success: false }, Buffer.alloc(16, 1), o));
  const badData = Buffer.from(good);
  badData[badData.length - 1] = badData[badData.length - 1]! ^ 0xff;
  const one = sinkParser(true);
  one.p.push(badData, one.on);
  assert.equal(one.seen.c2h[0]?.ok, false);
  const badHeader = Buffer.concat(encodeCapsuleResp(encodeCqe({ cid: 1, sqhd: 0 }), o));
  badHeader[12] = badHeader[12]! ^ 1;
  const two = sinkParser(true);
  throwsCode(() => two.p.push(badHeader, two.on), ErrorCode.HEADER_DIGEST);
  assert.equal(two.seen.cqes.length, 0);
});

test('sink: ignored by a controller-role parser (CapsuleCmd still a Pdu)', () => {
  let called = 0;
  const sink: HostPduSink = { onCapsuleResp: () => { called++; }, onC2HData: () => { called++; } };
  const p = new PduParser({ role: 'controller', maxData: 4096, sink });
  const pdus: Pdu[] = [];
  const h = Buffer.alloc(72);
  h.writeUInt8(0x04, 0);
  h.writeUInt8(72, 2);
  h.writeUInt32LE(72, 4);
  p.push(h, (x) => pdus.push(x));
  assert.equal(called, 0);
  assert.equal(pdus[0]?.type, 0x04);
});

test('PromiseCommand resolves with its own copy of the (reused) CQE', async () => {
  let done: Completion | undefined;
  const cmd = new PromiseCommand((c) => { done = c; }, () => assert.fail('rejected'));
  const cqe: Cqe = { dw0: 1, dw1: 2, sqhd: 3, sqid: 4, cid: 5, status: { sct: 0, sc: 0, dnr: false, more: false, crd: 0 }, ok: true };
  cmd.onQpComplete(cqe);
  cqe.dw0 = 99;
  cqe.cid = 77;
  assert.ok(done !== undefined);
  assert.notEqual(done.cqe, cqe);
  assert.deepEqual([done.cqe.dw0, done.cqe.dw1, done.cqe.sqhd, done.cqe.sqid, done.cqe.cid, done.cqe.ok], [1, 2, 3, 4, 5, true]);
});

test('SLBA: the number path writes the bytes of writeBigUInt64LE; above 2^53 and negative keep the bigint path', () => {
  for (const slba of [0n, 1n, 0xffffffffn, 0x100000000n, (1n << 40n) + 12345n, (1n << 53n) - 1n, 1n << 53n, (1n << 64n) - 1n, -1n]) {
    const b = Buffer.alloc(64, 0xee);
    fillSqeIo(b, IoOpcode.READ, 1, slba, 8, false);
    const want = Buffer.alloc(8);
    want.writeBigUInt64LE(BigInt.asUintN(64, slba));
    assert.deepEqual(b.subarray(40, 48), want, `slba ${slba}`);
    assert.deepEqual(sqeRead(1, slba, 8).subarray(40, 48), want, `sqeRead slba ${slba}`);
  }
});
