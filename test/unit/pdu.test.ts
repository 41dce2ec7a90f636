import { test } from 'node:test';
import assert from 'node:assert/strict';
import { crc32c } from '../../src/wire/crc32c';
import {
  PduParser, type Pdu, type PduOptions, encodeIcReq, encodeIcResp, encodeTermReq, encodeCapsuleCmd,
  encodeCapsuleResp, encodeH2CData, encodeC2HData, encodeR2T,
} from '../../src/wire/pdu';
import { ErrorCode, NvmfNbdError } from '../../src/errors';

// ---- helpers: fixtures are built from the TP 8000 byte layout, never by the encoders ----------

const u8 = (v: number): number[] => [v & 0xff];
const u16 = (v: number): number[] => [v & 0xff, (v >>> 8) & 0xff];
const u32 = (v: number): number[] => [v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, (v >>> 24) & 0xff];
const zeros = (n: number): number[] => new Array<number>(n).fill(0);
const bytes = (...parts: Array<number[] | Buffer>): Buffer => Buffer.concat(parts.map((p) => Buffer.from(p)));
/** Common header: type, flags, hlen, pdo, plen. */
const ch = (type: number, flags: number, hlen: number, pdo: number, plen: number): number[] =>
  [...u8(type), ...u8(flags), ...u8(hlen), ...u8(pdo), ...u32(plen)];
const digest = (b: Buffer): Buffer => Buffer.from(u32(crc32c(b)));

const SQE = Buffer.from(Array.from({ length: 64 }, (_, i) => (i * 7 + 1) & 0xff));
const CQE = Buffer.from(Array.from({ length: 16 }, (_, i) => 0xa0 + i));
const DATA8 = Buffer.from('ABCDEFGH');
const NONE: PduOptions = { hdgst: false, ddgst: false, pda: 0 };
const BOTH: PduOptions = { hdgst: true, ddgst: true, pda: 0 };

function parseAll(role: 'host' | 'controller', chunks: Buffer[], digests: [boolean, boolean] = [false, false], maxData = 65536, pda?: number): Pdu[] {
  const p = new PduParser(pda === undefined ? { role, maxData } : { role, maxData, pda });
  p.setDigests(digests[0], digests[1]);
  const out: Pdu[] = [];
  for (const c of chunks) p.push(c, (x) => out.push(x));
  return out;
}

function flip(b: Buffer, at: number, mask: number): void {
  b[at] = b[at]! ^ mask;
}

function catchErr(fn: () => void): NvmfNbdError {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof NvmfNbdError, `expected NvmfNbdError, got ${String(e)}`);
    return e;
  }
  assert.fail('expected a throw');
}

function rejectInfo(role: 'host' | 'controller', buf: Buffer, digests: [boolean, boolean] = [false, false], maxData = 65536, pda?: number): { code: string; fes: number | undefined; fei: number | undefined } {
  const e = catchErr(() => parseAll(role, [buf], digests, maxData, pda));
  return { code: e.code, fes: e.fes, fei: e.fei };
}

// ---- byte fixtures per PDU type -----------------------------------------------------------------

test('ICReq fixture: encoder bytes and parse', () => {
  const fx = bytes(ch(0x00, 0, 128, 0, 128), u16(0), u8(2), u8(0x01), u32(7), zeros(112));
  assert.deepEqual(encodeIcReq({ hpda: 2, hdgst: true, ddgst: false, maxr2t: 7 }), fx);
  assert.deepEqual(parseAll('controller', [fx]), [{ type: 0x00, pfv: 0, hpda: 2, hdgst: true, ddgst: false, maxr2t: 7 }]);
});

test('ICResp fixture: encoder bytes and parse', () => {
  const fx = bytes(ch(0x01, 0, 128, 0, 128), u16(0), u8(0), u8(0x03), u32(0x20000), zeros(112));
  assert.deepEqual(encodeIcResp({ cpda: 0, hdgst: true, ddgst: true, maxh2cdata: 0x20000 }), fx);
  assert.deepEqual(parseAll('host', [fx]), [{ type: 0x01, pfv: 0, cpda: 0, hdgst: true, ddgst: true, maxh2cdata: 0x20000 }]);
});

test('ICResp is never digested even after digests are negotiated', () => {
  const fx = bytes(ch(0x01, 0, 128, 0, 128), u16(0), u8(0), u8(0x03), u32(0x20000), zeros(112));
  const out = parseAll('host', [fx], [true, true]);
  assert.equal(out[0]?.type, 0x01);
});

test('C2HTermReq / H2CTermReq fixtures carry the offending header', () => {
  const hdr = Buffer.from([9, 9, 9, 9]);
  const fx = bytes(ch(0x03, 0, 24, 0, 28), u16(1), u32(2), zeros(10), hdr);
  assert.deepEqual(encodeTermReq(0x03, 1, 2, hdr), fx);
  assert.deepEqual(parseAll('host', [fx]), [{ type: 0x03, fes: 1, fei: 2, header: hdr }]);
  const fx2 = bytes(ch(0x02, 0, 24, 0, 24), u16(3), u32(72), zeros(10));
  assert.deepEqual(encodeTermReq(0x02, 3, 72), fx2);
  assert.deepEqual(parseAll('controller', [fx2]), [{ type: 0x02, fes: 3, fei: 72, header: Buffer.alloc(0) }]);
});

test('TermReq encoder truncates the offending header to 152 bytes', () => {
  const b = encodeTermReq(0x02, 1, 0, Buffer.alloc(300, 1));
  assert.equal(b.length, 24 + 152);
  assert.equal(b.readUInt32LE(4), 24 + 152);
});

test('CapsuleCmd without data: pdo 0, plen 72', () => {
  const fx = bytes(ch(0x04, 0, 72, 0, 72), SQE);
  assert.deepEqual(Buffer.concat(encodeCapsuleCmd(SQE, undefined, NONE)), fx);
  assert.deepEqual(parseAll('controller', [fx]), [{ type: 0x04, sqe: SQE, data: undefined, dataDigestOk: true }]);
});

test('CapsuleCmd with in-capsule data and both digests', () => {
  const head = bytes(ch(0x04, 0x03, 72, 76, 76 + 8 + 4), SQE);
  const fx = bytes(head, digest(head), DATA8, digest(DATA8));
  const parts = encodeCapsuleCmd(SQE, DATA8, BOTH);
  assert.equal(parts[1], DATA8, 'payload must be the caller buffer itself, not a copy');
  assert.deepEqual(Buffer.concat(parts), fx);
  assert.deepEqual(parseAll('controller', [fx], [true, true]), [{ type: 0x04, sqe: SQE, data: DATA8, dataDigestOk: true }]);
});

test('CapsuleCmd data is padded to the receiver PDA ((pda+1)*4 alignment)', () => {
  // pda 3 → 16-byte alignment: 72 → pdo 80, 8 zero bytes of padding.
  const fx = bytes(ch(0x04, 0, 72, 80, 88), SQE, zeros(8), DATA8);
  assert.deepEqual(Buffer.concat(encodeCapsuleCmd(SQE, DATA8, { hdgst: false, ddgst: false, pda: 3 })), fx);
  assert.deepEqual(parseAll('controller', [fx], [false, false], 65536, 3), [{ type: 0x04, sqe: SQE, data: DATA8, dataDigestOk: true }]);
  // hdgst + pda 1 → 8-byte alignment: 76 → pdo 80.
  const head = bytes(ch(0x04, 0x01, 72, 80, 88), SQE);
  const fx2 = bytes(head, digest(head), zeros(4), DATA8);
  assert.deepEqual(Buffer.concat(encodeCapsuleCmd(SQE, DATA8, { hdgst: true, ddgst: false, pda: 1 })), fx2);
});

test('CapsuleResp fixture, plain and with header digest', () => {
  const fx = bytes(ch(0x05, 0, 24, 0, 24), CQE);
  assert.deepEqual(Buffer.concat(encodeCapsuleResp(CQE, NONE)), fx);
  assert.deepEqual(parseAll('host', [fx]), [{ type: 0x05, cqe: CQE }]);
  const head = bytes(ch(0x05, 0x01, 24, 0, 28), CQE);
  const fxd = bytes(head, digest(head));
  assert.deepEqual(Buffer.concat(encodeCapsuleResp(CQE, BOTH)), fxd, 'no DDGSTF without data');
  assert.deepEqual(parseAll('host', [fxd], [true, true]), [{ type: 0x05, cqe: CQE }]);
});

test('H2CData fixture with LAST_PDU', () => {
  const fx = bytes(ch(0x06, 0x04, 24, 24, 32), u16(0x1234), u16(0x55), u32(4096), u32(8), zeros(4), DATA8);
  const parts = encodeH2CData({ cccid: 0x1234, ttag: 0x55, datao: 4096, last: true }, DATA8, NONE);
  assert.equal(parts[1], DATA8);
  assert.deepEqual(Buffer.concat(parts), fx);
  assert.deepEqual(parseAll('controller', [fx]), [{ type: 0x06, cccid: 0x1234, ttag: 0x55, datao: 4096, last: true, data: DATA8, dataDigestOk: true }]);
});

test('C2HData fixture with SUCCESS|LAST_PDU and digests', () => {
  const head = bytes(ch(0x07, 0x0f, 24, 28, 28 + 8 + 4), u16(7), zeros(2), u32(0), u32(8), zeros(4));
  const fx = bytes(head, digest(head), DATA8, digest(DATA8));
  assert.deepEqual(Buffer.concat(encodeC2HData({ cccid: 7, datao: 0, last: true, success: true }, DATA8, BOTH)), fx);
  assert.deepEqual(parseAll('host', [fx], [true, true]), [{ type: 0x07, cccid: 7, datao: 0, last: true, success: true, data: DATA8, dataDigestOk: true }]);
});

test('R2T fixture', () => {
  const fx = bytes(ch(0x09, 0, 24, 0, 24), u16(3), u16(9), u32(8192), u32(65536), zeros(4));
  assert.deepEqual(Buffer.concat(encodeR2T({ cccid: 3, ttag: 9, r2to: 8192, r2tl: 65536 }, NONE)), fx);
  assert.deepEqual(parseAll('host', [fx]), [{ type: 0x09, cccid: 3, ttag: 9, r2to: 8192, r2tl: 65536 }]);
});

// ---- streaming --------------------------------------------------------------------------------

function hostStream(o: PduOptions): Buffer {
  return Buffer.concat([
    encodeIcResp({ cpda: 0, hdgst: o.hdgst, ddgst: o.ddgst, maxh2cdata: 8192 }),
    ...encodeCapsuleResp(CQE, o),
    ...encodeC2HData({ cccid: 1, datao: 0, last: false, success: false }, Buffer.from('first part of the data!'), o),
    ...encodeC2HData({ cccid: 1, datao: 23, last: true, success: true }, DATA8, o),
    ...encodeR2T({ cccid: 2, ttag: 1, r2to: 0, r2tl: 512 }, o),
    encodeTermReq(0x03, 2, 0, Buffer.from([1, 2, 3, 4, 5])),
  ]);
}

function ctrlStream(o: PduOptions): Buffer {
  return Buffer.concat([
    encodeIcReq({ hpda: o.pda, hdgst: o.hdgst, ddgst: o.ddgst, maxr2t: 0 }),
    ...encodeCapsuleCmd(SQE, undefined, o),
    ...encodeCapsuleCmd(SQE, Buffer.from('in-capsule write data, 36 bytes....'), o),
    ...encodeH2CData({ cccid: 4, ttag: 1, datao: 0, last: true }, DATA8, o),
    encodeTermReq(0x02, 1, 3),
  ]);
}

for (const [hd, dd] of [[false, false], [true, false], [false, true], [true, true]] as const) {
  test(`split at every offset gives the same PDUs (hdgst ${hd}, ddgst ${dd})`, () => {
    for (const role of ['host', 'controller'] as const) {
      const pda = role === 'host' ? 0 : 2;
      const o: PduOptions = { hdgst: hd, ddgst: dd, pda };
      const stream = role === 'host' ? hostStream(o) : ctrlStream(o);
      const whole = parseAll(role, [stream], [hd, dd], 65536, pda);
      assert.equal(whole.length, role === 'host' ? 6 : 5);
      for (let i = 0; i <= stream.length; i++) {
        for (const j of [i, Math.min(stream.length, i + 1), Math.min(stream.length, i + 29)]) {
          const got = parseAll(role, [stream.subarray(0, i), stream.subarray(i, j), stream.subarray(j)], [hd, dd], 65536, pda);
          assert.deepEqual(got, whole, `${role} split ${i}/${j}`);
        }
      }
      const oneByOne = parseAll(role, Array.from(stream, (b) => Buffer.from([b])), [hd, dd], 65536, pda);
      assert.deepEqual(oneByOne, whole);
    }
  });
}

test('contiguous data is a view into the pushed chunk; spanning data is one copy of exactly datal bytes', () => {
  const o: PduOptions = { hdgst: true, ddgst: true, pda: 0 };
  const fx = Buffer.concat(encodeC2HData({ cccid: 1, datao: 0, last: true, success: false }, Buffer.alloc(100, 7), o));
  const [pdu] = parseAll('host', [fx], [true, true]);
  const [pdu2] = parseAll('host', [fx.subarray(0, 60), fx.subarray(60)], [true, true]);
  assert.ok(pdu && pdu.type === 0x07 && pdu2 && pdu2.type === 0x07);
  assert.equal(pdu2.data.length, 100);
  assert.deepEqual(pdu2.data, Buffer.alloc(100, 7));
  fx[28 + 5] = 0x55; // data starts at pdo 28
  assert.equal(pdu.data[5], 0x55, 'contiguous data must be a view, not a copy');
  assert.equal(pdu2.data[5], 7, 'spanning data must be a private copy');
});

// ---- rejections (one per violation) ----------------------------------------------------------

test('host rejects controller-bound PDU types with fes 1 fei 0', () => {
  for (const type of [0x00, 0x02, 0x04, 0x06, 0x08, 0x0a, 0xff]) {
    const buf = bytes(ch(type, 0, 24, 0, 24), zeros(16));
    assert.deepEqual(rejectInfo('host', buf), { code: ErrorCode.PDU_INVALID_TYPE, fes: 1, fei: 0 }, `type ${type}`);
  }
});

test('controller rejects host-bound PDU types with fes 1 fei 0', () => {
  for (const type of [0x01, 0x03, 0x05, 0x07, 0x09]) {
    const buf = bytes(ch(type, 0, 24, 0, 24), zeros(16));
    assert.deepEqual(rejectInfo('controller', buf), { code: ErrorCode.PDU_INVALID_TYPE, fes: 1, fei: 0 }, `type ${type}`);
  }
});

test('wrong hlen → fei 2', () => {
  assert.deepEqual(rejectInfo('host', bytes(ch(0x05, 0, 32, 0, 32), zeros(24))), { code: ErrorCode.PDU_INVALID_HEADER, fes: 1, fei: 2 });
  assert.deepEqual(rejectInfo('controller', bytes(ch(0x04, 0, 24, 0, 72), zeros(64))), { code: ErrorCode.PDU_INVALID_HEADER, fes: 1, fei: 2 });
});

test('plen too small → fei 4', () => {
  assert.deepEqual(rejectInfo('host', bytes(ch(0x05, 0, 24, 0, 20), zeros(16))), { code: ErrorCode.PDU_INVALID_HEADER, fes: 1, fei: 4 });
  // C2HData whose plen leaves no data after pdo.
  assert.deepEqual(rejectInfo('host', bytes(ch(0x07, 0x04, 24, 24, 24), zeros(16))), { code: ErrorCode.PDU_INVALID_HEADER, fes: 1, fei: 4 });
  assert.deepEqual(rejectInfo('host', bytes(ch(0x03, 0, 24, 0, 23), zeros(16))), { code: ErrorCode.PDU_INVALID_HEADER, fes: 1, fei: 4 });
});

test('plen too big for a fixed-size PDU → fei 4', () => {
  assert.deepEqual(rejectInfo('host', bytes(ch(0x05, 0, 24, 0, 28), zeros(20))), { code: ErrorCode.PDU_INVALID_HEADER, fes: 1, fei: 4 });
  assert.deepEqual(rejectInfo('host', bytes(ch(0x01, 0, 128, 0, 132), zeros(124))), { code: ErrorCode.PDU_INVALID_HEADER, fes: 1, fei: 4 });
  assert.deepEqual(rejectInfo('host', bytes(ch(0x09, 0, 24, 0, 1024), zeros(16))), { code: ErrorCode.PDU_INVALID_HEADER, fes: 1, fei: 4 });
  assert.deepEqual(rejectInfo('controller', bytes(ch(0x04, 0, 72, 0, 80), zeros(64))), { code: ErrorCode.PDU_INVALID_HEADER, fes: 1, fei: 4 });
  assert.deepEqual(rejectInfo('host', bytes(ch(0x03, 0, 24, 0, 24 + 153), zeros(16))), { code: ErrorCode.PDU_INVALID_HEADER, fes: 1, fei: 4 });
});

test('data beyond maxData is rejected from the 8-byte common header alone, before buffering', () => {
  const p = new PduParser({ role: 'host', maxData: 4096 });
  const e = catchErr(() => p.push(Buffer.from(ch(0x07, 0x04, 24, 24, 24 + 4097)), () => assert.fail('no PDU')));
  assert.deepEqual({ code: e.code, fes: e.fes, fei: e.fei }, { code: ErrorCode.PDU_TOO_LARGE, fes: 5, fei: 4 });
  assert.equal(p.buffered, 0);
  // Exactly maxData is fine.
  const ok = parseAll('host', [bytes(ch(0x07, 0x04, 24, 24, 24 + 4096), u16(1), zeros(2), u32(0), u32(4096), zeros(4), zeros(4096))], [false, false], 4096);
  assert.equal(ok.length, 1);
  // CapsuleCmd in-capsule data is bounded the same way.
  assert.deepEqual(rejectInfo('controller', bytes(ch(0x04, 0, 72, 72, 72 + 4097)), [false, false], 4096), { code: ErrorCode.PDU_TOO_LARGE, fes: 5, fei: 4 });
});

test('pdo wrong → fei 3', () => {
  const c2h = (pdo: number): Buffer => bytes(ch(0x07, 0x04, 24, pdo, pdo + 8), u16(1), zeros(2), u32(0), u32(8), zeros(4), zeros(pdo - 24 > 0 ? pdo - 24 : 0), DATA8);
  assert.deepEqual(rejectInfo('host', bytes(ch(0x07, 0x04, 24, 20, 28), zeros(20))), { code: ErrorCode.PDU_INVALID_HEADER, fes: 1, fei: 3 }, 'pdo inside header');
  assert.deepEqual(rejectInfo('host', c2h(26)), { code: ErrorCode.PDU_INVALID_HEADER, fes: 1, fei: 3 }, 'pdo not a multiple of 4');
  assert.deepEqual(rejectInfo('host', c2h(28), [false, false], 65536, 1), { code: ErrorCode.PDU_INVALID_HEADER, fes: 1, fei: 3 }, 'pdo not a multiple of (hpda+1)*4');
  assert.equal(parseAll('host', [c2h(32)], [false, false], 65536, 1).length, 1, 'aligned pdo with padding accepted');
  assert.deepEqual(rejectInfo('host', bytes(ch(0x09, 0, 24, 24, 24), zeros(16))), { code: ErrorCode.PDU_INVALID_HEADER, fes: 1, fei: 3 }, 'R2T carries no data');
  assert.deepEqual(rejectInfo('host', bytes(ch(0x01, 0, 128, 8, 128), zeros(120))), { code: ErrorCode.PDU_INVALID_HEADER, fes: 1, fei: 3 }, 'ICResp pdo');
});

test('HDGSTF missing when header digests are negotiated → fei 1', () => {
  const fx = Buffer.concat(encodeCapsuleResp(CQE, NONE));
  assert.deepEqual(rejectInfo('host', fx, [true, false]), { code: ErrorCode.PDU_INVALID_HEADER, fes: 1, fei: 1 });
});

test('HDGSTF set when not negotiated, or on an ICResp → fei 1', () => {
  const fx = Buffer.concat(encodeCapsuleResp(CQE, BOTH));
  assert.deepEqual(rejectInfo('host', fx, [false, false]), { code: ErrorCode.PDU_INVALID_HEADER, fes: 1, fei: 1 });
  const ic = bytes(ch(0x01, 0x01, 128, 0, 128), zeros(120));
  assert.deepEqual(rejectInfo('host', ic, [true, true]), { code: ErrorCode.PDU_INVALID_HEADER, fes: 1, fei: 1 });
});

test('DDGSTF missing on a data PDU when data digests are negotiated → fei 1', () => {
  const fx = Buffer.concat(encodeC2HData({ cccid: 1, datao: 0, last: true, success: false }, DATA8, NONE));
  assert.deepEqual(rejectInfo('host', fx, [false, true]), { code: ErrorCode.PDU_INVALID_HEADER, fes: 1, fei: 1 });
});

test('bad header digest → NVMF_ERR_HEADER_DIGEST, fes 3, fei = hlen', () => {
  const fx = Buffer.concat(encodeCapsuleResp(CQE, BOTH));
  flip(fx, 10, 0x01); // corrupt a CQE byte: the stored digest no longer matches
  assert.deepEqual(rejectInfo('host', fx, [true, true]), { code: ErrorCode.HEADER_DIGEST, fes: 3, fei: 24 });
  const cmd = Buffer.concat(encodeCapsuleCmd(SQE, undefined, BOTH));
  flip(cmd, 72, 0xff); // corrupt the digest itself
  assert.deepEqual(rejectInfo('controller', cmd, [true, true]), { code: ErrorCode.HEADER_DIGEST, fes: 3, fei: 72 });
});

test('bad data digest → PDU delivered with dataDigestOk false, stream continues', () => {
  const bad = Buffer.concat(encodeC2HData({ cccid: 1, datao: 0, last: true, success: false }, DATA8, BOTH));
  flip(bad, bad.length - 1, 0x80);
  const next = Buffer.concat(encodeCapsuleResp(CQE, BOTH));
  const out = parseAll('host', [Buffer.concat([bad, next])], [true, true]);
  assert.equal(out.length, 2);
  assert.ok(out[0]?.type === 0x07);
  assert.equal(out[0].dataDigestOk, false);
  assert.deepEqual(out[0].data, DATA8);
  assert.equal(out[1]?.type, 0x05);
  // Also when the digest arrives split across chunks.
  const split = parseAll('host', [bad.subarray(0, bad.length - 2), bad.subarray(bad.length - 2)], [true, true]);
  assert.ok(split[0]?.type === 0x07 && split[0].dataDigestOk === false);
});

test('C2HData with SUCCESS but without LAST_PDU → fes 1 fei 1', () => {
  const fx = bytes(ch(0x07, 0x08, 24, 24, 32), u16(1), zeros(2), u32(0), u32(8), zeros(4), DATA8);
  assert.deepEqual(rejectInfo('host', fx), { code: ErrorCode.PDU_INVALID_HEADER, fes: 1, fei: 1 });
});

test('datal inconsistent with plen → fei 16', () => {
  const fx = bytes(ch(0x06, 0x04, 24, 24, 32), u16(1), u16(1), u32(0), u32(9), zeros(4), DATA8);
  assert.deepEqual(rejectInfo('controller', fx), { code: ErrorCode.PDU_INVALID_HEADER, fes: 1, fei: 16 });
});

test('after a fatal error the parser stays failed and rethrows the same error', () => {
  const p = new PduParser({ role: 'host', maxData: 4096 });
  const e1 = catchErr(() => p.push(bytes(ch(0x04, 0, 72, 0, 72)), () => undefined));
  const good = Buffer.concat(encodeCapsuleResp(CQE, NONE));
  let delivered = 0;
  const e2 = catchErr(() => p.push(good, () => { delivered++; }));
  assert.equal(e2, e1);
  assert.equal(delivered, 0);
});

// ---- seeded random garbage -----------------------------------------------------------------

/** xorshift32: small, seeded, dependency-free. */
function xorshift(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s;
  };
}

test('2000 seeded random inputs: only PDUs or NvmfNbdError, memory bounded', () => {
  const rnd = xorshift(0xc0ffee);
  const maxData = 256;
  const randomBytes = (n: number): Buffer => {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) b[i] = rnd() & 0xff;
    return b;
  };
  /** A valid PDU for `role`'s peer to send, random type and sizes. */
  const validPdu = (role: 'host' | 'controller', o: PduOptions): Buffer => {
    const data = randomBytes(1 + (rnd() % maxData));
    const k = rnd() % 4;
    if (role === 'host') {
      if (k === 0) return Buffer.concat(encodeCapsuleResp(randomBytes(16), o));
      if (k === 1) return Buffer.concat(encodeR2T({ cccid: rnd() & 0xffff, ttag: 1, r2to: 0, r2tl: 4096 }, o));
      if (k === 2) return encodeTermReq(0x03, 1 + (rnd() % 6), 0, randomBytes(rnd() % 40));
      return Buffer.concat(encodeC2HData({ cccid: 1, datao: 0, last: true, success: (rnd() & 1) === 1 }, data, o));
    }
    if (k === 0) return Buffer.concat(encodeCapsuleCmd(randomBytes(64), rnd() & 1 ? data : undefined, o));
    if (k === 1) return encodeIcReq({ hpda: 0, hdgst: o.hdgst, ddgst: o.ddgst, maxr2t: 0 });
    if (k === 2) return encodeTermReq(0x02, 1, 0);
    return Buffer.concat(encodeH2CData({ cccid: 1, ttag: 1, datao: 0, last: true }, data, o));
  };
  let pdus = 0;
  let errors = 0;
  for (let iter = 0; iter < 2000; iter++) {
    const role = rnd() & 1 ? 'host' : 'controller';
    const o: PduOptions = { hdgst: (rnd() & 1) === 1, ddgst: (rnd() & 1) === 1, pda: 0 };
    let buf: Buffer;
    if (rnd() & 1) {
      buf = randomBytes(rnd() % 700);
    } else {
      // Valid PDUs, then (mostly) one corrupted byte: reaches every state of the parser.
      const parts: Buffer[] = [];
      for (let n = 1 + (rnd() % 4); n > 0; n--) parts.push(validPdu(role, o));
      buf = Buffer.concat(parts);
      if (rnd() % 4 !== 0) flip(buf, rnd() % buf.length, 1 + (rnd() % 255));
    }
    const p = new PduParser({ role, maxData });
    p.setDigests(o.hdgst, o.ddgst);
    let off = 0;
    try {
      while (off < buf.length) {
        const n = 1 + (rnd() % 97);
        p.push(buf.subarray(off, off + n), (pdu) => {
          assert.ok([0, 1, 2, 3, 4, 5, 6, 7, 9].includes(pdu.type));
          pdus++;
        });
        off += n;
        assert.ok(p.buffered <= maxData + 132 + 4, `buffered ${p.buffered}`);
      }
    } catch (e) {
      if (e instanceof assert.AssertionError) throw e;
      assert.ok(e instanceof NvmfNbdError, `non-NvmfNbdError thrown: ${String(e)}`);
      assert.ok(e.fes !== undefined && e.fes >= 1 && e.fes <= 6, `fes ${String(e.fes)}`);
      assert.ok(typeof e.fei === 'number');
      errors++;
    }
  }
  // The generator must actually reach both outcomes, or the test proves nothing.
  assert.ok(pdus > 500, `pdus ${pdus}`);
  assert.ok(errors > 500, `errors ${errors}`);
});
