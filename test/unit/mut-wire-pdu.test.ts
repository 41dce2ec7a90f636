/**
 * PduParser and the PDU encoders, for the mutants the fixture tests left alive (issue 15 item 2):
 * the exact error message of every header check, every flag decoded on its own, reserved bytes
 * and padding zeroed even in a dirty Buffer pool, views versus copies at exact chunk ends,
 * placeData arguments and its wrong-length guard, `buffered`, directTarget/pushDirect guards and
 * `reusesChunks` with a header or a payload that spans chunks.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { crc32c } from '../../src/wire/crc32c';
import {
  PduParser, type Pdu, type PduOptions, type PduParserOptions, type HostPduSink, encodeIcReq, encodeIcResp, encodeTermReq,
  encodeCapsuleCmd, encodeCapsuleResp, encodeH2CData, encodeC2HData, encodeR2T,
} from '../../src/wire/pdu';
import { ErrorCode, NvmfNbdError } from '../../src/errors';

// Fixtures from the TP 8000 byte layout (never from the encoders).
const u16 = (v: number): number[] => [v & 0xff, (v >>> 8) & 0xff];
const u32 = (v: number): number[] => [v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, (v >>> 24) & 0xff];
const zeros = (n: number): number[] => new Array<number>(n).fill(0);
const bytes = (...parts: Array<number[] | Buffer>): Buffer => Buffer.concat(parts.map((p) => Buffer.from(p)));
const ch = (type: number, flags: number, hlen: number, pdo: number, plen: number): number[] =>
  [type, flags, hlen, pdo, ...u32(plen)];
const digest = (b: Buffer): Buffer => Buffer.from(u32(crc32c(b)));

const SQE = Buffer.from(Array.from({ length: 64 }, (_, i) => (i * 5 + 3) & 0xff));
const CQE = Buffer.from(Array.from({ length: 16 }, (_, i) => 0x30 + i));
const DATA8 = Buffer.from('abcdefgh');
const NONE: PduOptions = { hdgst: false, ddgst: false, pda: 0 };

function parser(role: 'host' | 'controller', extra: Partial<PduParserOptions> = {}, digests?: [boolean, boolean]): PduParser {
  const p = new PduParser({ role, maxData: 65536, ...extra });
  if (digests !== undefined) p.setDigests(digests[0], digests[1]);
  return p;
}

function parse(p: PduParser, ...chunks: Buffer[]): Pdu[] {
  const out: Pdu[] = [];
  for (const c of chunks) p.push(c, (x) => out.push(x));
  return out;
}

function failure(p: PduParser, buf: Buffer): NvmfNbdError {
  try {
    parse(p, buf);
  } catch (e) {
    assert.ok(e instanceof NvmfNbdError, `expected NvmfNbdError, got ${String(e)}`);
    return e;
  }
  assert.fail('expected a throw');
}

/** Each header violation: its exact message, code, fes and fei. */
const REJECTS: Array<{ what: string; role: 'host' | 'controller'; buf: Buffer; digests?: [boolean, boolean]; maxData?: number;
  code?: string; fes?: number; fei: number; message: string }> = [
  { what: 'type for the role', role: 'host', buf: bytes(ch(0x04, 0, 72, 0, 72), zeros(64)), code: ErrorCode.PDU_INVALID_TYPE, fei: 0,
    message: 'PDU type 0x4 not valid for host' },
  { what: 'type for the controller', role: 'controller', buf: bytes(ch(0x0a, 0, 24, 0, 24), zeros(16)), code: ErrorCode.PDU_INVALID_TYPE, fei: 0,
    message: 'PDU type 0xa not valid for controller' },
  { what: 'hlen', role: 'host', buf: bytes(ch(0x05, 0, 23, 0, 23), zeros(15)), fei: 2, message: 'PDU type 0x5: hlen 23, expected 24' },
  { what: 'HDGSTF missing', role: 'host', buf: bytes(ch(0x05, 0, 24, 0, 24), CQE), digests: [true, false], fei: 1,
    message: 'PDU type 0x5: HDGSTF missing' },
  { what: 'unexpected HDGSTF', role: 'host', buf: bytes(ch(0x05, 1, 24, 0, 28), CQE, zeros(4)), fei: 1,
    message: 'PDU type 0x5: unexpected HDGSTF' },
  { what: 'R2T pdo', role: 'host', buf: bytes(ch(0x09, 0, 24, 4, 24), zeros(16)), fei: 3, message: 'PDU type 0x9: pdo 4, expected 0' },
  { what: 'CapsuleResp plen', role: 'host', buf: bytes(ch(0x05, 0, 24, 0, 30), zeros(22)), fei: 4, message: 'PDU type 0x5: plen 30, expected 24' },
  { what: 'TermReq pdo', role: 'host', buf: bytes(ch(0x03, 0, 24, 8, 32), zeros(24)), fei: 3, message: 'PDU type 0x3: pdo 8, expected 0' },
  { what: 'TermReq plen', role: 'controller', buf: bytes(ch(0x02, 0, 24, 0, 24 + 153), zeros(16)), fei: 4,
    message: 'PDU type 0x2: plen 177 out of range' },
  { what: 'CapsuleCmd plen without data', role: 'controller', buf: bytes(ch(0x04, 0, 72, 0, 80), zeros(72)), fei: 4,
    message: 'PDU type 0x4: plen 80, expected 72 without data' },
  { what: 'C2HData pdo 0 is not "no data"', role: 'host', buf: bytes(ch(0x07, 4, 24, 0, 32), zeros(24)), fei: 3,
    message: 'PDU type 0x7: pdo 0 invalid' },
  { what: 'C2HData pdo 0 and plen = hlen', role: 'host', buf: bytes(ch(0x07, 4, 24, 0, 24), zeros(16)), fei: 3,
    message: 'PDU type 0x7: pdo 0 invalid' },
  { what: 'only a data digest after pdo', role: 'host', buf: bytes(ch(0x07, 4 | 2, 24, 24, 28), zeros(20)), digests: [false, true], fei: 4,
    message: 'PDU type 0x7: plen 28 leaves no data' },
  { what: 'DDGSTF missing', role: 'host', buf: bytes(ch(0x07, 4, 24, 24, 36), zeros(28)), digests: [false, true], fei: 1,
    message: 'PDU type 0x7: DDGSTF missing' },
  { what: 'unexpected DDGSTF', role: 'host', buf: bytes(ch(0x07, 4 | 2, 24, 24, 36), zeros(28)), fei: 1,
    message: 'PDU type 0x7: unexpected DDGSTF' },
  { what: 'data limit', role: 'host', buf: bytes(ch(0x07, 4, 24, 24, 24 + 4097)), maxData: 4096, code: ErrorCode.PDU_TOO_LARGE, fes: 5, fei: 4,
    message: 'PDU type 0x7: data 4097 exceeds limit 4096' },
  { what: 'SUCCESS without LAST_PDU', role: 'host', buf: bytes(ch(0x07, 8, 24, 24, 32), zeros(24)), fei: 1,
    message: 'PDU type 0x7: SUCCESS without LAST_PDU' },
  { what: 'datal', role: 'host', buf: bytes(ch(0x07, 4, 24, 24, 32), u16(1), zeros(2), u32(0), u32(7), zeros(4), DATA8), fei: 16,
    message: 'datal 7 does not match plen (data 8)' },
];

test('every header check fails with its own message, code, fes and fei', () => {
  for (const r of REJECTS) {
    const e = failure(parser(r.role, r.maxData === undefined ? {} : { maxData: r.maxData }, r.digests ?? [false, false]), r.buf);
    assert.deepEqual({ code: e.code, fes: e.fes, fei: e.fei, message: e.message },
      { code: r.code ?? ErrorCode.PDU_INVALID_HEADER, fes: r.fes ?? 1, fei: r.fei, message: r.message }, r.what);
  }
});

test('header digest mismatch names the PDU type', () => {
  const head = bytes(ch(0x05, 1, 24, 0, 28), CQE);
  const e = failure(parser('host', {}, [true, false]), bytes(head, zeros(4)));
  assert.deepEqual({ code: e.code, fes: e.fes, fei: e.fei, message: e.message },
    { code: ErrorCode.HEADER_DIGEST, fes: 3, fei: 24, message: 'header digest mismatch on PDU type 0x5' });
  assert.equal(parse(parser('host', {}, [true, false]), bytes(head, digest(head))).length, 1);
});

test('a TermReq may carry exactly 152 bytes of the offending header', () => {
  const hdr = Buffer.from(Array.from({ length: 152 }, (_, i) => i));
  const fx = bytes(ch(0x03, 0, 24, 0, 24 + 152), u16(2), u32(0x10), zeros(10), hdr);
  assert.deepEqual(parse(parser('host'), fx), [{ type: 0x03, fes: 2, fei: 0x10, header: hdr }]);
  assert.deepEqual(encodeTermReq(0x03, 2, 0x10, hdr), fx);
});

test('a parser without setDigests expects no digests', () => {
  const fx = bytes(ch(0x05, 0, 24, 0, 24), CQE);
  assert.deepEqual(parse(new PduParser({ role: 'host', maxData: 4096 }), fx), [{ type: 0x05, cqe: CQE }]);
  const c2h = bytes(ch(0x07, 4, 24, 24, 32), u16(1), zeros(2), u32(0), u32(8), zeros(4), DATA8);
  assert.equal(parse(new PduParser({ role: 'host', maxData: 4096 }), c2h).length, 1);
});

test('ICReq / ICResp digest bits are decoded one at a time', () => {
  const icreq = (dgst: number): Buffer => bytes(ch(0x00, 0, 128, 0, 128), u16(0), [1], [dgst], u32(3), zeros(112));
  const icresp = (dgst: number): Buffer => bytes(ch(0x01, 0, 128, 0, 128), u16(0), [2], [dgst], u32(8192), zeros(112));
  for (const [dgst, hdgst, ddgst] of [[0, false, false], [1, true, false], [2, false, true], [3, true, true]] as const) {
    assert.deepEqual(parse(parser('controller'), icreq(dgst)), [{ type: 0x00, pfv: 0, hpda: 1, hdgst, ddgst, maxr2t: 3 }], `ICReq ${dgst}`);
    assert.deepEqual(parse(parser('host'), icresp(dgst)), [{ type: 0x01, pfv: 0, cpda: 2, hdgst, ddgst, maxh2cdata: 8192 }], `ICResp ${dgst}`);
    assert.deepEqual(encodeIcReq({ hpda: 1, hdgst, ddgst, maxr2t: 3 }), icreq(dgst));
    assert.deepEqual(encodeIcResp({ cpda: 2, hdgst, ddgst, maxh2cdata: 8192 }), icresp(dgst));
  }
});

test('H2CData / C2HData LAST_PDU and SUCCESS are decoded one at a time; SUCCESS is ignored on H2CData', () => {
  const h2c = (flags: number): Buffer => bytes(ch(0x06, flags, 24, 24, 32), u16(0x0102), u16(0x0304), u32(0x05060708), u32(8), zeros(4), DATA8);
  const c2h = (flags: number): Buffer => bytes(ch(0x07, flags, 24, 24, 32), u16(0x0a0b), zeros(2), u32(0x0c0d0e0f), u32(8), zeros(4), DATA8);
  const base = { data: DATA8, dataDigestOk: true };
  assert.deepEqual(parse(parser('controller'), h2c(0)), [{ type: 0x06, cccid: 0x0102, ttag: 0x0304, datao: 0x05060708, last: false, ...base }]);
  assert.deepEqual(parse(parser('controller'), h2c(4)), [{ type: 0x06, cccid: 0x0102, ttag: 0x0304, datao: 0x05060708, last: true, ...base }]);
  // SUCCESS is defined for C2HData only: on H2CData it is a reserved bit and does not need LAST_PDU.
  assert.deepEqual(parse(parser('controller'), h2c(8)), [{ type: 0x06, cccid: 0x0102, ttag: 0x0304, datao: 0x05060708, last: false, ...base }]);
  for (const [flags, last, success] of [[0, false, false], [4, true, false], [12, true, true]] as const) {
    assert.deepEqual(parse(parser('host'), c2h(flags)), [{ type: 0x07, cccid: 0x0a0b, datao: 0x0c0d0e0f, last, success, ...base }], `flags ${flags}`);
    assert.deepEqual(Buffer.concat(encodeC2HData({ cccid: 0x0a0b, datao: 0x0c0d0e0f, last, success }, DATA8, NONE)), c2h(flags));
  }
  assert.deepEqual(Buffer.concat(encodeH2CData({ cccid: 0x0102, ttag: 0x0304, datao: 0x05060708, last: false }, DATA8, NONE)), h2c(0));
});

/**
 * Fill the rest of Node's current Buffer pool with 0xEE, so that the next small
 * Buffer.allocUnsafe (the encoders' header) gets dirty memory: anything the encoder does not
 * write itself shows up. Returns the pool to check the header really came from it.
 */
function dirtyPool(): ArrayBufferLike {
  for (;;) {
    const probe = Buffer.allocUnsafe(1);
    if (probe.buffer.byteLength - probe.byteOffset < 1024) continue;
    new Uint8Array(probe.buffer, probe.byteOffset + 1).fill(0xee);
    return probe.buffer;
  }
}

test('encoders zero reserved bytes and padding even from a dirty Buffer pool', () => {
  const cases: Array<{ what: string; enc: () => Buffer[]; fx: Buffer }> = [
    { what: 'H2CData', enc: () => encodeH2CData({ cccid: 1, ttag: 2, datao: 3, last: true }, DATA8, NONE),
      fx: bytes(ch(0x06, 4, 24, 24, 32), u16(1), u16(2), u32(3), u32(8), zeros(4), DATA8) },
    { what: 'C2HData', enc: () => encodeC2HData({ cccid: 1, datao: 3, last: true, success: false }, DATA8, NONE),
      fx: bytes(ch(0x07, 4, 24, 24, 32), u16(1), zeros(2), u32(3), u32(8), zeros(4), DATA8) },
    { what: 'R2T', enc: () => encodeR2T({ cccid: 1, ttag: 2, r2to: 3, r2tl: 4 }, NONE),
      fx: bytes(ch(0x09, 0, 24, 0, 24), u16(1), u16(2), u32(3), u32(4), zeros(4)) },
    { what: 'C2HData padded to pda 3', enc: () => encodeC2HData({ cccid: 1, datao: 0, last: true, success: false }, DATA8, { hdgst: false, ddgst: false, pda: 3 }),
      fx: bytes(ch(0x07, 4, 24, 32, 40), u16(1), zeros(2), u32(0), u32(8), zeros(4), zeros(8), DATA8) },
    { what: 'CapsuleCmd padded to pda 3', enc: () => encodeCapsuleCmd(SQE, DATA8, { hdgst: false, ddgst: false, pda: 3 }),
      fx: bytes(ch(0x04, 0, 72, 80, 88), SQE, zeros(8), DATA8) },
  ];
  for (const c of cases) {
    const pool = dirtyPool();
    const parts = c.enc();
    assert.equal(parts[0]?.buffer, pool, `${c.what}: header from the pool just dirtied`);
    assert.deepEqual(Buffer.concat(parts), c.fx, c.what);
  }
  // Header digest and padding: pda 3 after a 28-byte header → pdo 32, 4 bytes of padding.
  const pool = dirtyPool();
  const parts = encodeH2CData({ cccid: 9, ttag: 8, datao: 0, last: true }, DATA8, { hdgst: true, ddgst: false, pda: 3 });
  assert.equal(parts[0]?.buffer, pool);
  const head = bytes(ch(0x06, 4 | 1, 24, 32, 40), u16(9), u16(8), u32(0), u32(8), zeros(4));
  assert.deepEqual(Buffer.concat(parts), bytes(head, digest(head), zeros(4), DATA8));
});

test('an empty data Buffer is no data: one part, no DDGST, pdo 0', () => {
  const fx = bytes(ch(0x04, 1, 72, 0, 76), SQE);
  const parts = encodeCapsuleCmd(SQE, Buffer.alloc(0), { hdgst: true, ddgst: true, pda: 0 });
  assert.equal(parts.length, 1);
  assert.deepEqual(parts[0], bytes(fx, digest(fx)));
  assert.equal(encodeCapsuleCmd(SQE, Buffer.alloc(0), NONE).length, 1);
});

test('a header that ends exactly at the chunk end is a view into the chunk; so is data that does', () => {
  const resp = bytes(ch(0x05, 0, 24, 0, 24), CQE);
  const [r] = parse(parser('host'), resp);
  assert.ok(r?.type === 0x05);
  resp[8] = 0x99;
  assert.equal(r.cqe[0], 0x99, 'cqe is a view of the pushed chunk');
  const c2h = bytes(ch(0x07, 4, 24, 24, 32), u16(1), zeros(2), u32(0), u32(8), zeros(4), DATA8);
  const [d] = parse(parser('host'), c2h);
  assert.ok(d?.type === 0x07);
  c2h[24] = 0x21;
  assert.equal(d.data[0], 0x21, 'data ending at the chunk end is a view');
  // Header in one chunk, the data exactly in the next.
  const c2h2 = bytes(ch(0x07, 4, 24, 24, 32), u16(1), zeros(2), u32(0), u32(8), zeros(4), DATA8);
  const tail = c2h2.subarray(24);
  const [d2] = parse(parser('host'), c2h2.subarray(0, 24), tail);
  assert.ok(d2?.type === 0x07);
  tail[1] = 0x22;
  assert.equal(d2.data[1], 0x22);
});

test('placeData gets type, cccid, ttag (0 for C2HData, whatever its reserved bytes), datao and datal', () => {
  const calls: unknown[][] = [];
  const dest = Buffer.alloc(8);
  const host = parser('host', { placeData: (...a) => { calls.push(a); return dest; } });
  // Reserved bytes 10-11 of the C2HData header set: not a ttag.
  const c2h = bytes(ch(0x07, 4, 24, 24, 32), u16(0x0a0b), u16(0x7777), u32(0x100), u32(8), zeros(4), DATA8);
  const [d] = parse(host, c2h);
  assert.deepEqual(calls, [[0x07, 0x0a0b, 0, 0x100, 8]]);
  assert.ok(d?.type === 0x07);
  assert.equal(d.data, dest);
  assert.deepEqual(dest, DATA8);
  calls.length = 0;
  const ctrl = parser('controller', { placeData: (...a) => { calls.push(a); return undefined; } });
  const h2c = bytes(ch(0x06, 4, 24, 24, 32), u16(0x0102), u16(0x0304), u32(0x200), u32(8), zeros(4), DATA8);
  const [h] = parse(ctrl, h2c);
  assert.deepEqual(calls, [[0x06, 0x0102, 0x0304, 0x200, 8]]);
  assert.ok(h?.type === 0x06);
  assert.deepEqual(h.data, DATA8, 'undefined from placeData: the default delivery');
  assert.equal(h.data.buffer, h2c.buffer, 'as a view of the chunk');
});

test('placeData returning a Buffer of the wrong length fails the parser before the payload is read', () => {
  for (const len of [7, 9]) {
    const dest = Buffer.alloc(len, 0x5a);
    const p = parser('host', { placeData: () => dest });
    const c2h = bytes(ch(0x07, 4, 24, 24, 32), u16(1), zeros(2), u32(0), u32(8), zeros(4), DATA8);
    assert.throws(() => parse(p, c2h), { message: `placeData returned ${len} bytes for a 8-byte payload` });
    assert.deepEqual(dest, Buffer.alloc(len, 0x5a), 'nothing copied');
  }
});

test('buffered counts header and unplaced data bytes held across chunks, never placed ones', () => {
  const c2h = bytes(ch(0x07, 4, 24, 24, 24 + 100), u16(1), zeros(2), u32(0), u32(100), zeros(4), Buffer.alloc(100, 3));
  const p = parser('host');
  parse(p, c2h.subarray(0, 5));
  assert.equal(p.buffered, 5, 'part of a common header');
  parse(p, c2h.subarray(5, 20));
  assert.equal(p.buffered, 20);
  parse(p, c2h.subarray(20, 24 + 30));
  assert.equal(p.buffered, 30, 'the header is complete; 30 data bytes held');
  const out = parse(p, c2h.subarray(24 + 30));
  assert.equal(out.length, 1);
  assert.equal(p.buffered, 0);
  const dest = Buffer.alloc(100);
  const placed = parser('host', { placeData: () => dest });
  parse(placed, c2h.subarray(0, 24 + 30));
  assert.equal(placed.buffered, 0, 'placed bytes are in the caller buffer');
});

test('after a placed payload the next unplaced one is not a direct target and is buffered', () => {
  const dest = Buffer.alloc(8);
  let place = true;
  const p = parser('host', { placeData: () => (place ? dest : undefined) });
  const c2h = (cid: number): Buffer => bytes(ch(0x07, 4, 24, 24, 32), u16(cid), zeros(2), u32(0), u32(8), zeros(4), DATA8);
  assert.equal(parse(p, c2h(1)).length, 1);
  place = false;
  const second = c2h(2);
  parse(p, second.subarray(0, 26));
  assert.equal(p.directTarget(1), undefined, 'an unplaced payload is no direct target');
  assert.equal(p.buffered, 2);
  assert.throws(() => p.pushDirect(1, () => undefined), /without a direct target/);
});

function placedC2H(len: number, pdo = 24): { pdu: Buffer; data: Buffer } {
  const data = Buffer.from(Array.from({ length: len }, (_, i) => (i * 13 + 1) & 0xff));
  const pdu = bytes(ch(0x07, 4, 24, pdo, pdo + len), u16(1), zeros(2), u32(0), u32(len), zeros(4), zeros(pdo - 24), data);
  return { pdu, data };
}

test('directTarget: the destination itself before any byte, min equal to the rest, and a PDU done by pushDirect alone', () => {
  const { pdu, data } = placedC2H(64);
  const dest = Buffer.alloc(64);
  const p = parser('host', { placeData: () => dest });
  const out: Pdu[] = [];
  p.push(pdu.subarray(0, 24), (x) => out.push(x));
  assert.equal(p.directTarget(64), dest, 'no byte yet: the destination Buffer itself, min = rest');
  assert.equal(p.directTarget(65), undefined);
  data.copy(dest, 0, 0, 10);
  p.pushDirect(10, (x) => out.push(x));
  const t = p.directTarget(54) as Buffer;
  assert.equal(t.length, 54);
  assert.equal(t.byteOffset, dest.byteOffset + 10);
  data.copy(t, 0, 10);
  p.pushDirect(54, (x) => out.push(x));
  assert.equal(out.length, 1, 'no digest: delivered as soon as the last byte is in');
  assert.ok(out[0]?.type === 0x07);
  assert.equal(out[0].data, dest);
  assert.deepEqual(dest, data);
});

test('pushDirect refuses 0 bytes, more than the rest, and data still in the padding; the parser then stays failed', () => {
  const { pdu } = placedC2H(64);
  for (const n of [0, -1, 65]) {
    const p = parser('host', { placeData: () => Buffer.alloc(64) });
    p.push(pdu.subarray(0, 24), () => undefined);
    assert.throws(() => p.pushDirect(n, () => undefined), { message: `pushDirect(${n}) without a direct target` });
    assert.equal(p.directTarget(1), undefined, `n ${n}: a failed parser offers no direct target`);
    assert.throws(() => p.pushDirect(1, () => undefined), { message: `pushDirect(${n}) without a direct target` }, 'the same error again');
  }
  // pda 1: pdo 32, 8 bytes of padding not yet received: not the data yet.
  const padded = placedC2H(64, 32);
  const p = parser('host', { placeData: () => Buffer.alloc(64), pda: 1 });
  p.push(padded.pdu.subarray(0, 24), () => undefined);
  assert.equal(p.directTarget(1), undefined, 'padding comes first');
  assert.throws(() => p.pushDirect(1, () => undefined), /without a direct target/);
});

test('reusesChunks: a header spanning chunks and a payload awaiting its digest survive the chunks being overwritten', () => {
  const data = Buffer.from(Array.from({ length: 40 }, (_, i) => i + 1));
  const o: PduOptions = { hdgst: true, ddgst: true, pda: 0 };
  const stream = Buffer.concat([
    ...encodeCapsuleResp(CQE, o),
    ...encodeC2HData({ cccid: 0x4321, datao: 0, last: true, success: false }, data, o),
  ]);
  // Split inside the CapsuleResp header, then right after the C2HData payload (before its DDGST).
  const cuts = [10, 28 + 28 + 40, stream.length];
  const p = parser('host', { reusesChunks: true }, [true, true]);
  const out: Array<{ type: number; cqe?: string; cccid?: number; data?: string; ok?: boolean }> = [];
  const scratch = Buffer.alloc(256);
  let from = 0;
  for (const to of cuts) {
    stream.copy(scratch, 0, from, to);
    p.push(scratch, (x) => {
      // Views are valid during onPdu only: copy what is checked.
      if (x.type === 0x05) out.push({ type: x.type, cqe: x.cqe.toString('hex') });
      else if (x.type === 0x07) out.push({ type: x.type, cccid: x.cccid, data: x.data.toString('hex'), ok: x.dataDigestOk });
    }, to - from);
    scratch.fill(0xcc);
    from = to;
  }
  assert.deepEqual(out, [
    { type: 0x05, cqe: CQE.toString('hex') },
    { type: 0x07, cccid: 0x4321, data: data.toString('hex'), ok: true },
  ]);
});

test('buffered counts a data digest split across chunks', () => {
  const o: PduOptions = { hdgst: false, ddgst: true, pda: 0 };
  const pdu = Buffer.concat(encodeC2HData({ cccid: 1, datao: 0, last: true, success: false }, DATA8, o));
  const p = parser('host', {}, [false, true]);
  parse(p, pdu.subarray(0, pdu.length - 2));
  assert.equal(p.buffered, 2, 'two digest bytes held; the data is a view of the chunk');
  assert.equal(parse(p, pdu.subarray(pdu.length - 2)).length, 1);
  assert.equal(p.buffered, 0);
});

test('reusesChunks: a placed payload awaiting its digest stays in the destination (not copied away)', () => {
  const o: PduOptions = { hdgst: false, ddgst: true, pda: 0 };
  const pdu = Buffer.concat(encodeC2HData({ cccid: 1, datao: 0, last: true, success: false }, DATA8, o));
  const dest = Buffer.alloc(8);
  const p = parser('host', { reusesChunks: true, placeData: () => dest }, [false, true]);
  const out: Pdu[] = [];
  const scratch = Buffer.alloc(64);
  pdu.copy(scratch, 0, 0, pdu.length - 4);
  p.push(scratch, (x) => out.push(x), pdu.length - 4);
  scratch.fill(0);
  pdu.copy(scratch, 0, pdu.length - 4);
  p.push(scratch, (x) => out.push(x), 4);
  assert.equal(out.length, 1);
  assert.ok(out[0]?.type === 0x07);
  assert.equal(out[0].data, dest, 'delivered in the placed Buffer itself');
  assert.equal(out[0].dataDigestOk, true);
  assert.deepEqual(dest, DATA8);
});

function sinkParser(role: 'host' | 'controller', extra: Partial<PduParserOptions> = {}): { p: PduParser; got: unknown[]; onPdu: (x: Pdu) => void } {
  const got: unknown[] = [];
  const sink: HostPduSink = {
    onCapsuleResp: (buf, off) => got.push(['resp', Buffer.from(buf.subarray(off, off + 16)).toString('hex')]),
    onC2HData: (cccid, datao, flags, data, ok) => got.push(['c2h', cccid, datao, flags, Buffer.from(data).toString('hex'), ok]),
  };
  const p = new PduParser({ role, maxData: 65536, sink, ...extra });
  return { p, got, onPdu: (x) => got.push(['pdu', x.type]) };
}

test('sink (host role): CapsuleResp and C2HData as numbers, in order, whatever the chunking; every other PDU to onPdu', () => {
  const o: PduOptions = { hdgst: true, ddgst: true, pda: 0 };
  const stream = Buffer.concat([
    ...encodeCapsuleResp(CQE, o),
    ...encodeC2HData({ cccid: 0x0a0b, datao: 0x100, last: true, success: true }, DATA8, o),
    ...encodeR2T({ cccid: 3, ttag: 4, r2to: 0, r2tl: 8 }, o),
    ...encodeCapsuleResp(Buffer.alloc(16, 0x77), o),
  ]);
  const want = [
    ['resp', CQE.toString('hex')],
    ['c2h', 0x0a0b, 0x100, 0x0f, DATA8.toString('hex'), true], // the common header's flags: SUCCESS|LAST_PDU|DDGSTF|HDGSTF
    ['pdu', 0x09],
    ['resp', '77'.repeat(16)],
  ];
  for (const cut of [stream.length, 10, 30, 60, 70]) {
    for (const reusesChunks of [false, true]) {
      const { p, got, onPdu } = sinkParser('host', { reusesChunks });
      p.setDigests(true, true);
      const scratch = Buffer.alloc(stream.length);
      stream.copy(scratch, 0, 0, cut);
      p.push(scratch, onPdu, cut);
      scratch.fill(0xdd);
      if (cut < stream.length) {
        stream.copy(scratch, 0, cut);
        p.push(scratch, onPdu, stream.length - cut);
      }
      assert.deepEqual(got, want, `cut ${cut} reusesChunks ${reusesChunks}`);
    }
  }
});

test('sink is for the host role only: a controller parser delivers H2CData as a Pdu', () => {
  const { p, got, onPdu } = sinkParser('controller');
  const h2c = bytes(ch(0x06, 4, 24, 24, 32), u16(1), u16(2), u32(0), u32(8), zeros(4), DATA8);
  p.push(h2c, onPdu);
  assert.deepEqual(got, [['pdu', 0x06]]);
});
