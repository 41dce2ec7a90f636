/**
 * PduParser's direct placement (directTarget/pushDirect: the rest of a placed payload written
 * by someone else, e.g. the kernel as a socket read buffer) and `reusesChunks` (the caller
 * overwrites a chunk after push returns). Pure: no sockets.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { PduParser, encodeC2HData, encodeCapsuleResp } from '../../src/wire/pdu';
import type { Pdu } from '../../src/wire/pdu';
import { encodeCqe } from '../../src/wire/cqe';

function hostParser(dest: Buffer, digests: boolean): { parser: PduParser; pdus: Pdu[]; on: (p: Pdu) => void } {
  const parser = new PduParser({ role: 'host', maxData: 1 << 20, reusesChunks: true, placeData: () => dest });
  parser.setDigests(digests, digests);
  const pdus: Pdu[] = [];
  return { parser, pdus, on: (p) => pdus.push(p) };
}

for (const digests of [false, true]) {
  test(`direct target: the rest of a placed payload, fed by pushDirect, then DDGST and the next PDU by push (digests ${digests})`, () => {
    const data = randomBytes(64 * 1024);
    const dest = Buffer.alloc(data.length);
    const o = { hdgst: digests, ddgst: digests, pda: 0 };
    const pdu = Buffer.concat(encodeC2HData({ cccid: 3, datao: 0, last: true, success: false }, data, o));
    const resp = Buffer.concat(encodeCapsuleResp(encodeCqe({ cid: 3, sqhd: 1 }), o));
    const head = pdu.length - data.length - (digests ? 4 : 0);
    const { parser, pdus, on } = hostParser(dest, digests);
    assert.equal(parser.directTarget(1), undefined, 'no payload started yet');
    // One scratch chunk: the header and 100 payload bytes; the chunk is then overwritten.
    const scratch = Buffer.alloc(4096);
    pdu.copy(scratch, 0, 0, head + 100);
    parser.push(scratch, on, head + 100);
    scratch.fill(0xee);
    assert.equal(parser.directTarget(data.length), undefined, 'rest is below min');
    const t = parser.directTarget(1024);
    assert.ok(t !== undefined);
    assert.equal(t.length, data.length - 100);
    assert.equal(t.buffer, dest.buffer);
    assert.equal(t.byteOffset, dest.byteOffset + 100);
    // Two direct reads (the kernel may return less than asked).
    data.copy(t, 0, 100, 30_000);
    parser.pushDirect(30_000 - 100, on);
    const t2 = parser.directTarget(1024) as Buffer;
    assert.equal(t2.length, data.length - 30_000);
    data.copy(t2, 0, 30_000);
    parser.pushDirect(t2.length, on);
    assert.equal(parser.directTarget(1), undefined);
    // The trailer (DDGST) and the CapsuleResp through the scratch again.
    const tail = Buffer.concat([pdu.subarray(head + data.length), resp]);
    tail.copy(scratch, 0);
    parser.push(scratch, on, tail.length);
    assert.equal(pdus.length, 2);
    const c2h = pdus[0] as Extract<Pdu, { type: 0x07 }>;
    assert.equal(c2h.type, 0x07);
    assert.equal(c2h.cccid, 3, 'header fields survive the overwritten chunk');
    assert.equal(c2h.data, dest);
    assert.equal(c2h.dataDigestOk, true);
    assert.deepEqual(dest, data);
    assert.equal(pdus[1]?.type, 0x05);
  });
}

test('pushDirect without a direct target fails the parser', () => {
  const { parser, on } = hostParser(Buffer.alloc(4096), false);
  assert.throws(() => parser.pushDirect(10, on), /without a direct target/);
  assert.throws(() => parser.push(Buffer.alloc(8), on), /without a direct target/, 'the parser stays failed');
});

test('a wrong data digest over directly placed bytes is reported (dataDigestOk false)', () => {
  const data = randomBytes(32 * 1024);
  const dest = Buffer.alloc(data.length);
  const o = { hdgst: false, ddgst: true, pda: 0 };
  const pdu = Buffer.concat(encodeC2HData({ cccid: 1, datao: 0, last: true, success: false }, data, o));
  const { parser, pdus, on } = hostParser(dest, true);
  parser.setDigests(false, true);
  parser.push(pdu.subarray(0, 24), on);
  const t = parser.directTarget(1024) as Buffer;
  data.copy(t);
  t[5] = (t[5] as number) ^ 1;
  parser.push(dest, on, 0);
  parser.pushDirect(t.length, on);
  parser.push(pdu.subarray(pdu.length - 4), on);
  assert.equal((pdus[0] as Extract<Pdu, { type: 0x07 }>).dataDigestOk, false);
});
