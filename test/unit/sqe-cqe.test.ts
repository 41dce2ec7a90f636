import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  sqeIdentify, sqeGetLogPage, sqeSetFeatures, sqeGetFeatures, sqeKeepAlive, sqeAsyncEventRequest, sqeRead,
  sqeWrite, sqeFlush, sqeDatasetManagement, encodeDsmRanges, sqeWriteZeroes, sqeConnect, encodeConnectData,
  parseConnectData, sqePropertyGet, sqePropertySet, setCid, setSgl, dataDirection, parseSqe, SglType, DataDirection,
} from '../../src/wire/sqe';
import { parseCqe, encodeCqe } from '../../src/wire/cqe';
import { parseCap, encodeCap, decodeCc, encodeCc, decodeCsts, encodeCsts, decodeVs, encodeVs, formatVs, Property } from '../../src/wire/properties';
import { ErrorCode } from '../../src/errors';
import { throwsCode } from '../helpers/assert-code';

const dw = (b: Buffer, n: number): number => b.readUInt32LE(n * 4);


test('Identify: opcode 0x06, nsid, cdw10 = cns | cntid<<16', () => {
  const s = sqeIdentify(0x01, 0, 0x1234);
  assert.equal(s.length, 64);
  assert.equal(s[0], 0x06);
  assert.equal(dw(s, 1), 0);
  assert.equal(dw(s, 10), 0x12340001);
  assert.equal(dw(sqeIdentify(0x00, 5), 1), 5);
});

test('Get Log Page: numd 0-based dwords split into numdl/numdu, lsp, rae, offset', () => {
  const s = sqeGetLogPage(0x70, 4096, 0, 0x1_0000_0400, 1, true);
  assert.equal(s[0], 0x02);
  const numd = 4096 / 4 - 1;
  assert.equal(dw(s, 10), (0x70 | (1 << 8) | (1 << 15) | (numd << 16)) >>> 0);
  assert.equal(dw(s, 11), 0);
  assert.equal(dw(s, 12), 0x400);
  assert.equal(dw(s, 13), 1);
  assert.equal(dw(s, 1), 0);
  // A length needing NUMDU: 0x40000 dwords → numd 0x3ffff.
  const big = sqeGetLogPage(0x02, 0x40000 * 4);
  assert.equal(dw(big, 10) >>> 16, 0xffff);
  assert.equal(dw(big, 11), 0x3);
  assert.equal(dw(big, 1), 0xffffffff, 'default nsid');
  throwsCode(() => sqeGetLogPage(2, 6), ErrorCode.INVALID_ARGUMENT);
  throwsCode(() => sqeGetLogPage(2, 0), ErrorCode.INVALID_ARGUMENT);
});

test('Set/Get Features, Keep Alive, AER opcodes and dwords', () => {
  const sf = sqeSetFeatures(0x07, 0x00030003);
  assert.deepEqual([sf[0], dw(sf, 10), dw(sf, 11), dw(sf, 12)], [0x09, 0x07, 0x00030003, 0]);
  const gf = sqeGetFeatures(0x0b, 5);
  assert.deepEqual([gf[0], dw(gf, 10), dw(gf, 11)], [0x0a, 0x0b, 5]);
  assert.equal(sqeKeepAlive()[0], 0x18);
  assert.equal(sqeAsyncEventRequest()[0], 0x0c);
});

test('Read/Write: slba u64 at cdw10-11 as bigint, nlb 0-based, FUA bit 30', () => {
  const slba = 0x1_2345_6789_abcdn;
  const r = sqeRead(1, slba, 8);
  assert.deepEqual([r[0], dw(r, 1), r.readBigUInt64LE(40), dw(r, 12)], [0x02, 1, slba, 7]);
  const w = sqeWrite(2, 0n, 65536, true);
  assert.deepEqual([w[0], dw(w, 1), dw(w, 12)], [0x01, 2, (0xffff | (1 << 30)) >>> 0]);
  assert.equal(dw(sqeWrite(2, 0n, 1, false), 12), 0);
  throwsCode(() => sqeRead(1, 0n, 0), ErrorCode.INVALID_ARGUMENT);
  throwsCode(() => sqeRead(1, 0n, 65537), ErrorCode.INVALID_ARGUMENT);
});

test('Flush, Dataset Management (nr 0-based, AD bit 2) and DSM ranges', () => {
  const f = sqeFlush(3);
  assert.deepEqual([f[0], dw(f, 1)], [0x00, 3]);
  const d = sqeDatasetManagement(1, 2, true);
  assert.deepEqual([d[0], dw(d, 10), dw(d, 11)], [0x09, 1, 4]);
  assert.equal(dw(sqeDatasetManagement(1, 1, false), 11), 0);
  const r = encodeDsmRanges([{ slba: 10n, nlb: 8 }, { slba: 0xffff_ffff_ffn, nlb: 1 }]);
  const expect = Buffer.alloc(32);
  expect.writeUInt32LE(8, 4);
  expect.writeBigUInt64LE(10n, 8);
  expect.writeUInt32LE(1, 20);
  expect.writeBigUInt64LE(0xffff_ffff_ffn, 24);
  assert.deepEqual(r, expect);
  throwsCode(() => sqeDatasetManagement(1, 257, true), ErrorCode.INVALID_ARGUMENT);
});

test('Write Zeroes: DEAC bit 25, FUA bit 30', () => {
  const z = sqeWriteZeroes(1, 100n, 16, { deallocate: true, fua: true });
  assert.deepEqual([z[0], r64(z), dw(z, 12)], [0x08, 100n, (15 | (1 << 25) | (1 << 30)) >>> 0]);
  assert.equal(dw(sqeWriteZeroes(1, 0n, 1, { deallocate: false, fua: false }), 12), 0);
});
function r64(b: Buffer): bigint {
  return b.readBigUInt64LE(40);
}

test('Connect SQE and data layout (Fabrics 1.1)', () => {
  const s = sqeConnect({ qid: 3, sqsize: 127, kato: 5000, disableSqFlowControl: true });
  assert.deepEqual([s[0], s[4], s.readUInt16LE(40), s.readUInt16LE(42), s.readUInt16LE(44), s[46], dw(s, 12)],
    [0x7f, 0x01, 0, 3, 127, 0x04, 5000]);
  const hostid = Buffer.from('00112233445566778899aabbccddeeff', 'hex');
  const d = encodeConnectData({ hostid, cntlid: 0xffff, subnqn: 'nqn.sub', hostnqn: 'nqn.host' });
  assert.equal(d.length, 1024);
  assert.deepEqual(d.subarray(0, 16), hostid);
  assert.equal(d.readUInt16LE(16), 0xffff);
  assert.equal(d.subarray(256, 263).toString(), 'nqn.sub');
  assert.equal(d[263], 0);
  assert.equal(d.subarray(512, 520).toString(), 'nqn.host');
  assert.deepEqual(parseConnectData(d), { hostid, cntlid: 0xffff, subnqn: 'nqn.sub', hostnqn: 'nqn.host' });
  throwsCode(() => encodeConnectData({ hostid, cntlid: 1, subnqn: 'x'.repeat(256), hostnqn: 'h' }), ErrorCode.INVALID_ARGUMENT);
  throwsCode(() => parseConnectData(Buffer.alloc(100)), ErrorCode.INVALID_ARGUMENT);
});

test('Property Get/Set: attrib, offset, value', () => {
  const g = sqePropertyGet(Property.CAP, true);
  assert.deepEqual([g[0], g[4], g[40], dw(g, 11)], [0x7f, 0x04, 1, 0]);
  const s = sqePropertySet(Property.CC, false, 0x460001n);
  assert.deepEqual([s[0], s[4], s[40], dw(s, 11), s.readBigUInt64LE(48)], [0x7f, 0x00, 0, 0x14, 0x460001n]);
});

test('setCid, setSgl (PSDT=01b) and parseSqe round trip', () => {
  const s = sqeWrite(1, 5n, 2, false);
  setCid(s, 0xbeef);
  setSgl(s, SglType.DATA_BLOCK_OFFSET, 1024);
  assert.equal(s.readUInt16LE(2), 0xbeef);
  assert.equal(s[1]! >>> 6, 1);
  assert.equal(s[39], 0x01);
  const p = parseSqe(s);
  assert.deepEqual({ op: p.opcode, psdt: p.psdt, cid: p.cid, nsid: p.nsid, sgl: p.sgl, cdw10: p.cdw10, cdw12: p.cdw12, fctype: p.fctype },
    { op: 0x01, psdt: 1, cid: 0xbeef, nsid: 1, sgl: { addr: 0n, length: 1024, type: 0x01 }, cdw10: 5, cdw12: 1, fctype: undefined });
  setSgl(s, SglType.TRANSPORT_DATA_BLOCK, 4096);
  assert.equal(s[39], 0x5a);
  assert.equal(s.readUInt32LE(32), 4096);
  assert.equal(parseSqe(sqeConnect({ qid: 0, sqsize: 31, kato: 0, disableSqFlowControl: false })).fctype, 0x01);
});

test('dataDirection from opcode bits (fctype for Fabrics)', () => {
  assert.equal(dataDirection(sqeRead(1, 0n, 1)), DataDirection.CTRL_TO_HOST);
  assert.equal(dataDirection(sqeWrite(1, 0n, 1, false)), DataDirection.HOST_TO_CTRL);
  assert.equal(dataDirection(sqeFlush(1)), DataDirection.NONE);
  assert.equal(dataDirection(sqeIdentify(1)), DataDirection.CTRL_TO_HOST);
  assert.equal(dataDirection(sqeGetLogPage(0x70, 1024)), DataDirection.CTRL_TO_HOST);
  assert.equal(dataDirection(sqeDatasetManagement(1, 1, true)), DataDirection.HOST_TO_CTRL);
  assert.equal(dataDirection(sqeConnect({ qid: 0, sqsize: 31, kato: 0, disableSqFlowControl: false })), DataDirection.HOST_TO_CTRL);
  assert.equal(dataDirection(sqePropertyGet(0, true)), DataDirection.NONE);
  assert.equal(dataDirection(sqePropertySet(0x14, false, 1n)), DataDirection.NONE);
  assert.equal(dataDirection(sqeKeepAlive()), DataDirection.NONE);
  const bidi = Buffer.alloc(64);
  bidi[0] = 0x83;
  throwsCode(() => dataDirection(bidi), ErrorCode.UNSUPPORTED);
});

test('CQE fixture: status bits (sc 24:17, sct 27:25, crd 29:28, more 30, dnr 31)', () => {
  const b = Buffer.alloc(16);
  b.writeUInt32LE(0x11223344, 0);
  b.writeUInt32LE(0x55667788, 4);
  b.writeUInt16LE(7, 8);
  b.writeUInt16LE(2, 10);
  b.writeUInt16LE(0x99, 12);
  // DW3 = status<<16: sc 0x82, sct 1, crd 2, more 1, dnr 1, phase 1.
  b.writeUInt32LE((b.readUInt32LE(12) | (((0x82 << 17) | (1 << 25) | (2 << 28) | (1 << 30) | (1 << 31) | (1 << 16)) >>> 0)) >>> 0, 12);
  const c = parseCqe(b);
  assert.deepEqual(c, { dw0: 0x11223344, dw1: 0x55667788, sqhd: 7, sqid: 2, cid: 0x99,
    status: { sc: 0x82, sct: 1, crd: 2, more: true, dnr: true }, ok: false });
  const enc = encodeCqe({ dw0: 0x11223344, dw1: 0x55667788, sqhd: 7, sqid: 2, cid: 0x99, sc: 0x82, sct: 1, crd: 2, more: true, dnr: true });
  b[14] = b[14]! & 0xfe; // the encoder leaves phase 0
  assert.deepEqual(enc, b);
});

test('CQE success is ok; short CQE rejected', () => {
  const c = parseCqe(encodeCqe({ sqhd: 0xffff, cid: 1, dw0: 5 }));
  assert.equal(c.ok, true);
  assert.equal(c.sqhd, 0xffff);
  assert.equal(parseCqe(encodeCqe({ sqhd: 0, cid: 1, sct: 0, sc: 2 })).ok, false);
  assert.equal(parseCqe(encodeCqe({ sqhd: 0, cid: 1, sct: 2, sc: 0 })).ok, false);
  throwsCode(() => parseCqe(Buffer.alloc(15)), ErrorCode.INVALID_ARGUMENT);
});

test('parseCap decodes every field from a hand-built value', () => {
  // mqes 1023, cqr, ams 1, to 30, dstrd 0, nssrs, css 0x41 (NVM + I/O sets), mpsmin 0, mpsmax 4, cmbs.
  const v = 1023n | (1n << 16n) | (1n << 17n) | (30n << 24n) | (1n << 36n) | (0x41n << 37n) | (4n << 52n) | (1n << 57n);
  const c = parseCap(v);
  assert.deepEqual(c, { mqes: 1023, cqr: true, ams: 1, to: 30, timeoutMs: 15000, dstrd: 0, nssrs: true, css: 0x41,
    bps: false, cps: 0, mpsmin: 0, mpsmax: 4, pmrs: false, cmbs: true, nsss: false, crms: 0 });
  const { timeoutMs: _t, ...fields } = c;
  assert.equal(encodeCap(fields), v);
});

test('CC encode/decode with the bring-up value (IOSQES 6, IOCQES 4, EN)', () => {
  const cc = { en: true, css: 0, mps: 0, ams: 0, shn: 0, iosqes: 6, iocqes: 4 };
  assert.equal(encodeCc(cc), 0x00460001);
  assert.deepEqual(decodeCc(0x00460001), cc);
  assert.deepEqual(decodeCc(encodeCc({ ...cc, shn: 1, mps: 3, ams: 1 })), { ...cc, shn: 1, mps: 3, ams: 1 });
  assert.equal(encodeCc({ ...cc, en: false, shn: 1 }) & 0xc001, 0x4000);
});

test('CSTS and VS decode', () => {
  assert.deepEqual(decodeCsts(0x09), { rdy: true, cfs: false, shst: 2, nssro: false, pp: false });
  assert.deepEqual(decodeCsts(0x32), { rdy: false, cfs: true, shst: 0, nssro: true, pp: true });
  assert.equal(encodeCsts({ rdy: true, shst: 2 }), 0x09);
  assert.deepEqual(decodeVs(0x00010300), { major: 1, minor: 3, tertiary: 0 });
  assert.equal(encodeVs({ major: 2, minor: 0, tertiary: 1 }), 0x00020001);
  assert.equal(formatVs(0x00010400), '1.4');
  assert.equal(formatVs(0x00020001), '2.0.1');
});
