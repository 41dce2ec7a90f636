import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  parseIdentifyController, encodeIdentifyController, parseIdentifyNamespace, encodeIdentifyNamespace,
  parseNamespaceList, encodeNamespaceList, formatIndexOf,
} from '../../src/wire/identify';
import { ErrorCode } from '../../src/errors';
import { throwsCode } from '../helpers/assert-code';

/** Identify Controller built byte by byte from the NVMe Base 2.0 layout (Figure 275). */
function ctrlFixture(): Buffer {
  const b = Buffer.alloc(4096);
  b.writeUInt16LE(0x1b36, 0);
  b.writeUInt16LE(0x1af4, 2);
  b.write('SN123               ', 4, 'latin1');
  b.write('Linux'.padEnd(40, ' '), 24, 'latin1');
  b.write('6.1.0   ', 64, 'latin1');
  b[72] = 6;
  b.writeUIntLE(0x123456, 73, 3);
  b[76] = 0x0b;
  b[77] = 5;
  b.writeUInt16LE(0x21, 78);
  b.writeUInt32LE(0x00020000, 80);
  b.writeUInt32LE(1000, 84);
  b.writeUInt32LE(2000, 88);
  b.writeUInt32LE(0x900, 92);
  b.writeUInt32LE(0x8000, 96);
  b[111] = 1;
  for (let i = 0; i < 16; i++) b[112 + i] = i + 1;
  b.writeUInt16LE(10, 128);
  b.writeUInt16LE(20, 130);
  b.writeUInt16LE(30, 132);
  b.writeUInt16LE(0x0004, 256);
  b[258] = 3;
  b[259] = 3;
  b[260] = 3;
  b[261] = 0x25;
  b[262] = 127;
  b[263] = 0;
  b.writeUInt16LE(343, 266);
  b.writeUInt16LE(371, 268);
  b.writeUInt16LE(1, 320);
  b[342] = 10; // ANATT
  b[343] = 0x5f; // ANACAP
  b.writeUInt32LE(128, 344); // ANAGRPMAX
  b.writeUInt32LE(64, 348); // NANAGRPID
  b.writeUInt32LE(3, 352); // PELS
  b.writeUInt16LE(4500, 386); // CQT
  b[512] = 0x66;
  b[513] = 0x44;
  b.writeUInt16LE(128, 514);
  b.writeUInt32LE(1024, 516);
  b.writeUInt16LE(0x000c, 520);
  b.writeUInt16LE(1, 522);
  b[524] = 4;
  b[525] = 1;
  b.writeUInt16LE(7, 526);
  b.writeUInt16LE(0, 528);
  b.writeUInt32LE(0x100005, 536);
  b.writeUInt32LE(1024, 540);
  b.write('nqn.2014-08.org.example:sub1', 768, 'utf8');
  b.writeUInt32LE(260, 1792);
  b.writeUInt32LE(1, 1796);
  b.writeUInt16LE(0, 1800);
  b[1802] = 0;
  b[1803] = 1;
  b.writeUInt16LE(1, 1804);
  b.writeUInt16LE(25, 2048);
  return b;
}

const CTRL = {
  vid: 0x1b36, ssvid: 0x1af4, sn: 'SN123', mn: 'Linux', fr: '6.1.0', rab: 6, ieee: 0x123456, cmic: 0x0b, mdts: 5,
  cntlid: 0x21, ver: 0x00020000, rtd3r: 1000, rtd3e: 2000, oaes: 0x900, ctratt: 0x8000, cntrltype: 1,
  fguid: Buffer.from([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]), crdt1: 10, crdt2: 20, crdt3: 30,
  oacs: 4, acl: 3, aerl: 3, frmw: 3, lpa: 0x25, elpe: 127, npss: 0, wctemp: 343, cctemp: 371, kas: 1,
  anatt: 10, anacap: 0x5f, anagrpmax: 128, nanagrpid: 64, pels: 3, cqt: 4500, sqes: 0x66, cqes: 0x44, maxcmd: 128,
  nn: 1024, oncs: 0x0c, fuses: 1, fna: 4, vwc: 1, awun: 7, awupf: 0, sgls: 0x100005, mnan: 1024,
  subnqn: 'nqn.2014-08.org.example:sub1', ioccsz: 260, iorcsz: 1, icdoff: 0, fcatt: 0, msdbd: 1, ofcs: 1, psd0mp: 25,
};

test('Identify Controller: every field at its offset, strings trimmed', () => {
  assert.deepEqual(parseIdentifyController(ctrlFixture()), CTRL);
});

test('Identify Controller encoder reproduces the fixture (strings space padded, NQN NUL padded)', () => {
  assert.deepEqual(encodeIdentifyController(CTRL), ctrlFixture());
  const empty = encodeIdentifyController({});
  assert.equal(empty.length, 4096);
  assert.equal(empty.subarray(4, 24).toString('latin1'), ' '.repeat(20));
});

test('Identify parsers reject short buffers', () => {
  throwsCode(() => parseIdentifyController(Buffer.alloc(4095)), ErrorCode.INVALID_ARGUMENT);
  throwsCode(() => parseIdentifyNamespace(Buffer.alloc(512)), ErrorCode.INVALID_ARGUMENT);
});

/** Identify Namespace from the NVM Command Set layout. */
function nsFixture(): Buffer {
  const b = Buffer.alloc(4096);
  b.writeBigUInt64LE(2097152n, 0);
  b.writeBigUInt64LE(2097152n, 8);
  b.writeBigUInt64LE(1000n, 16);
  b[24] = 0x11;
  b[25] = 1; // two formats
  b[26] = 0x01; // format 1
  b[27] = 0;
  b[28] = 0;
  b[29] = 0;
  b[30] = 1;
  b[31] = 0;
  b[33] = 0x09;
  for (let i = 0; i < 7; i++) b.writeUInt16LE(i + 1, 34 + 2 * i);
  b.writeBigUInt64LE(0x1234n, 48);
  b.writeBigUInt64LE(1n, 56); // nvmcap high half
  for (let i = 0; i < 5; i++) b.writeUInt16LE(10 + i, 64 + 2 * i);
  b.writeUInt32LE(0x2a, 92); // ANAGRPID
  for (let i = 0; i < 16; i++) b[104 + i] = 0xa0 + i;
  for (let i = 0; i < 8; i++) b[120 + i] = 0xe0 + i;
  // lbaf0: 512 B, no metadata, rp 2; lbaf1: 4 KiB, 8 bytes metadata, rp 0
  b.writeUInt16LE(0, 128);
  b[130] = 9;
  b[131] = 2;
  b.writeUInt16LE(8, 132);
  b[134] = 12;
  b[135] = 0;
  return b;
}

const NS = {
  nsze: 2097152n, ncap: 2097152n, nuse: 1000n, nsfeat: 0x11, nlbaf: 1, flbas: 1, mc: 0, dpc: 0, dps: 0, nmic: 1, rescap: 0, dlfeat: 0x09,
  nawun: 1, nawupf: 2, nacwu: 3, nabsn: 4, nabo: 5, nabspf: 6, noiob: 7, nvmcap: (1n << 64n) | 0x1234n,
  npwg: 10, npwa: 11, npdg: 12, npda: 13, nows: 14, anagrpid: 0x2a,
  nguid: Buffer.from(Array.from({ length: 16 }, (_, i) => 0xa0 + i)),
  eui64: Buffer.from(Array.from({ length: 8 }, (_, i) => 0xe0 + i)),
  lbaf: [{ ms: 0, lbads: 9, rp: 2 }, { ms: 8, lbads: 12, rp: 0 }],
  formatIndex: 1, lbaSize: 4096, metadataSize: 8, hasProtection: false,
};

test('Identify Namespace: fields, LBA formats and derived values', () => {
  assert.deepEqual(parseIdentifyNamespace(nsFixture()), NS);
});

test('Identify Namespace encoder reproduces the fixture', () => {
  const { formatIndex: _a, lbaSize: _b, metadataSize: _c, hasProtection: _d, ...raw } = NS;
  assert.deepEqual(encodeIdentifyNamespace(raw), nsFixture());
});

test('formatIndex uses FLBAS bits 6:5 as upper bits only when nlbaf > 16', () => {
  assert.equal(formatIndexOf(0x61, 20), 0x31);
  assert.equal(formatIndexOf(0x61, 16), 0x01);
  assert.equal(formatIndexOf(0x12, 3), 2, 'bit 4 (metadata at end of LBA) is not part of the index');
  const lbaf = Array.from({ length: 40 }, (_, i) => ({ ms: i, lbads: 9 + (i % 4), rp: 0 }));
  const ns = parseIdentifyNamespace(encodeIdentifyNamespace({ nsze: 8n, lbaf, flbas: 0x23 }));
  assert.equal(ns.nlbaf, 39);
  assert.equal(ns.formatIndex, 0x13);
  assert.equal(ns.metadataSize, 0x13);
  assert.equal(ns.lbaSize, 2 ** (9 + (0x13 % 4)));
});

test('protection and unusable formats are reported, not trusted', () => {
  const prot = parseIdentifyNamespace(encodeIdentifyNamespace({ lbaf: [{ ms: 8, lbads: 9, rp: 0 }], dps: 1 }));
  assert.equal(prot.hasProtection, true);
  // flbas points past the formats, or lbads is nonsense → lbaSize 0.
  assert.equal(parseIdentifyNamespace(encodeIdentifyNamespace({ lbaf: [{ ms: 0, lbads: 9, rp: 0 }], flbas: 3 })).lbaSize, 0);
  assert.equal(parseIdentifyNamespace(encodeIdentifyNamespace({ lbaf: [{ ms: 0, lbads: 60, rp: 0 }] })).lbaSize, 0);
  assert.equal(parseIdentifyNamespace(encodeIdentifyNamespace({ lbaf: [{ ms: 0, lbads: 3, rp: 0 }] })).lbaSize, 0);
  // An inactive NSID returns all zeroes.
  const zero = parseIdentifyNamespace(Buffer.alloc(4096));
  assert.equal(zero.nsze, 0n);
  assert.equal(zero.lbaSize, 0);
});

test('active namespace list: zero-terminated, at most 1024 ids', () => {
  const b = Buffer.alloc(4096);
  b.writeUInt32LE(1, 0);
  b.writeUInt32LE(2, 4);
  b.writeUInt32LE(7, 8);
  b.writeUInt32LE(9, 16); // after the terminator: ignored
  assert.deepEqual(parseNamespaceList(b), [1, 2, 7]);
  assert.deepEqual(encodeNamespaceList([1, 2, 7]), (() => { const e = Buffer.from(b); e.writeUInt32LE(0, 16); return e; })());
  const full = encodeNamespaceList(Array.from({ length: 1024 }, (_, i) => i + 1));
  assert.equal(parseNamespaceList(full).length, 1024);
  assert.deepEqual(parseNamespaceList(Buffer.from([5, 0, 0, 0, 6, 0])), [5], 'partial trailing id ignored');
  throwsCode(() => encodeNamespaceList(new Array<number>(1025).fill(1)), ErrorCode.INVALID_ARGUMENT);
});
