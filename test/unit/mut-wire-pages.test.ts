/**
 * Identify, log pages, CAP, discovery log, NS descriptors and the ANA log, for the mutants the
 * round-trip tests left alive (issue 15 item 2, wire survivors): fixtures whose fields are all
 * non-zero and distinct, string fields with inner, leading and trailing padding, fields with no
 * terminator, every limit on both sides, and the exact messages of the refusals.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  encodeIdentifyController, parseIdentifyController, encodeIdentifyNamespace, parseIdentifyNamespace, encodeNamespaceList,
  IDENTIFY_SIZE,
} from '../../src/wire/identify';
import {
  encodeErrorLog, parseErrorLog, encodeSmartLog, parseSmartLog, encodeFirmwareLog, parseFirmwareLog, FIRMWARE_LOG_SIZE,
} from '../../src/wire/log-pages';
import { parseCap } from '../../src/wire/properties';
import { encodeDiscoveryLog, parseDiscoveryLogEntry, parseDiscoveryLogHeader } from '../../src/wire/discovery-log';
import { parseNsIdDescriptors } from '../../src/wire/ns-descriptors';
import { encodeAnaLog, parseAnaLog, parseAnaState } from '../../src/wire/ana';
import { ErrorCode } from '../../src/errors';
import { throwsCode } from '../helpers/assert-code';

const msg = (fn: () => unknown, code: typeof ErrorCode[keyof typeof ErrorCode] = ErrorCode.INVALID_ARGUMENT): string => throwsCode(fn, code).message;

// ---- Identify ------------------------------------------------------------------------------

test('Identify: short buffers are refused with the structure name and sizes', () => {
  assert.equal(msg(() => parseIdentifyController(Buffer.alloc(4095))), 'identify controller: 4095 bytes, expected 4096');
  assert.equal(msg(() => parseIdentifyNamespace(Buffer.alloc(100))), 'identify namespace: 100 bytes, expected 4096');
  assert.equal(msg(() => encodeNamespaceList(Array.from({ length: 1025 }, (_, i) => i + 1))), '1025 namespace ids, at most 1024');
});

test('Identify Controller: ASCII fields trimmed at both ends only, latin1, blank when not given', () => {
  const b = encodeIdentifyController({});
  const want = Buffer.alloc(IDENTIFY_SIZE);
  want.fill(0x20, 4, 72); // sn, mn, fr: space padded
  assert.deepEqual(b, want, 'no field given: blanks and zeros only');
  const raw = encodeIdentifyController({ mn: 'Café model', fr: 'v1 2' });
  assert.equal(raw[24 + 3], 0xe9, 'mn is latin1');
  // sn with leading spaces and NULs, an inner space and trailing NUL/space padding.
  raw.fill(0, 4, 24);
  Buffer.from('  \0SN 01 \0 ', 'latin1').copy(raw, 4);
  const c = parseIdentifyController(raw);
  assert.equal(c.sn, 'SN 01');
  assert.equal(c.mn, 'Café model');
  assert.equal(c.fr, 'v1 2');
});

test('Identify Controller subnqn: 255 bytes at most, NUL kept, empty field, no NUL in the field, spaces trimmed', () => {
  const long = 'q'.repeat(256);
  const b = encodeIdentifyController({ subnqn: long, ioccsz: 0x01020304 });
  assert.equal(b[768 + 255], 0, 'the terminating NUL survives');
  const c = parseIdentifyController(b);
  assert.equal(c.subnqn, 'q'.repeat(255));
  assert.equal(c.ioccsz, 0x01020304);
  assert.equal(parseIdentifyController(encodeIdentifyController({})).subnqn, '');
  const full = encodeIdentifyController({});
  full.fill(0x61, 768, 1024);
  assert.equal(parseIdentifyController(full).subnqn, 'a'.repeat(256), 'a field with no NUL is all name');
  const spaced = encodeIdentifyController({ subnqn: ' nqn.x ' });
  assert.equal(parseIdentifyController(spaced).subnqn, 'nqn.x');
});

test('Identify Namespace: every small field non-zero and distinct survives; no lbaf given is all zero; lbads 31 is a size', () => {
  const o = { nsze: 0x1111n, ncap: 0x2222n, nuse: 0x3333n, nsfeat: 0x14, nlbaf: 1, flbas: 0x01, mc: 0x03, dpc: 0x1f, dps: 0x05, nmic: 0x01,
    rescap: 0xfe, dlfeat: 0x09, nawun: 7, nawupf: 8, nacwu: 9, nabsn: 10, nabo: 11, nabspf: 12, noiob: 13, npwg: 14, npwa: 15, npdg: 16,
    npda: 17, nows: 18, anagrpid: 19, lbaf: [{ ms: 0, lbads: 9, rp: 2 }, { ms: 8, lbads: 12, rp: 1 }] };
  const n = parseIdentifyNamespace(encodeIdentifyNamespace(o));
  for (const [k, v] of Object.entries(o)) assert.deepEqual((n as unknown as Record<string, unknown>)[k], v, k);
  assert.equal(n.lbaSize, 4096);
  assert.equal(n.metadataSize, 8);
  assert.deepEqual(encodeIdentifyNamespace({}), Buffer.alloc(IDENTIFY_SIZE));
  const big = parseIdentifyNamespace(encodeIdentifyNamespace({ lbaf: [{ ms: 0, lbads: 31, rp: 0 }] }));
  assert.equal(big.lbaSize, 2 ** 31);
  assert.equal(parseIdentifyNamespace(encodeIdentifyNamespace({ lbaf: [{ ms: 0, lbads: 32, rp: 0 }] })).lbaSize, 0);
});

test('Identify Namespace: at most 64 LBA formats are written (the 65th would land in reserved bytes)', () => {
  const lbaf = Array.from({ length: 65 }, (_, i) => ({ ms: i + 1, lbads: 9, rp: 1 }));
  const b = encodeIdentifyNamespace({ nlbaf: 63, lbaf });
  assert.deepEqual(b.subarray(128 + 64 * 4, 128 + 65 * 4), Buffer.alloc(4));
  assert.equal(b.readUInt16LE(128 + 63 * 4), 64);
});

// ---- log pages -------------------------------------------------------------------------------

test('Error log: two entries, every field non-zero and distinct, at its byte offset', () => {
  const e = (k: number) => ({ errorCount: BigInt(k), sqid: k + 1, cid: k + 2, status: k + 3, parameterLocation: k + 4, lba: BigInt(k + 5),
    nsid: k + 6, vendorLog: k + 7, trtype: k + 8, commandSpecific: BigInt(k + 9), transportSpecific: k + 10 });
  const entries = [e(0x10), e(0x40)];
  const b = encodeErrorLog(entries);
  assert.equal(b.length, 128);
  assert.deepEqual([b[28], b[29], b[64 + 28], b[64 + 29]], [0x17, 0x18, 0x47, 0x48]);
  assert.deepEqual([b.readUInt16LE(8), b.readUInt16LE(12), b.readUInt16LE(14), b.readUInt32LE(24), b.readUInt16LE(40)], [0x11, 0x13, 0x14, 0x16, 0x1a]);
  assert.deepEqual(parseErrorLog(b), entries);
});

test('SMART log: the one-byte fields round-trip non-zero; short logs are named', () => {
  const s = parseSmartLog(encodeSmartLog({ criticalWarning: 0x05, temperature: 310, availableSpare: 90, spareThreshold: 10, percentageUsed: 3 }));
  assert.deepEqual([s.criticalWarning, s.temperature, s.availableSpare, s.spareThreshold, s.percentageUsed], [5, 310, 90, 10, 3]);
  assert.equal(msg(() => parseSmartLog(Buffer.alloc(511))), 'SMART log: 511 bytes, expected 512');
  assert.equal(msg(() => parseFirmwareLog(Buffer.alloc(63))), 'firmware slot log: 63 bytes, expected 64');
});

test('Firmware slot log: 7 slots at most on both sides, latin1, inner spaces kept, blank when none', () => {
  assert.deepEqual(encodeFirmwareLog({}), Buffer.alloc(FIRMWARE_LOG_SIZE));
  const b = encodeFirmwareLog({ afi: 0x12, slots: ['A B', 'é', '3', '4', '5', '6', '7', '8th'] });
  assert.deepEqual(b.subarray(64, 72), Buffer.alloc(8), 'no 8th slot');
  assert.equal(b[16], 0xe9);
  assert.deepEqual(parseFirmwareLog(b), { afi: 0x12, slots: ['A B', 'é', '3', '4', '5', '6', '7'] });
  b.write('XXXXXXXX', 64, 'latin1');
  assert.equal(parseFirmwareLog(b).slots.length, 7, 'bytes 64.. are not a slot');
});

// ---- CAP ---------------------------------------------------------------------------------

test('CAP: each one-bit flag decoded alone', () => {
  const flags = { cqr: 16, nssrs: 36, bps: 45, pmrs: 56, cmbs: 57, nsss: 58 } as const;
  const none = parseCap(0n) as unknown as Record<string, unknown>;
  for (const k of Object.keys(flags)) assert.equal(none[k], false, `${k} clear`);
  for (const [k, bit] of Object.entries(flags)) {
    const c = parseCap(1n << BigInt(bit)) as unknown as Record<string, unknown>;
    for (const other of Object.keys(flags)) assert.equal(c[other], other === k, `bit ${bit}: ${other}`);
  }
});

// ---- discovery log ---------------------------------------------------------------------------

test('discovery log: header of exactly 18 bytes, truncated entries (also at an offset), asqsz given', () => {
  const hdr = Buffer.alloc(18);
  hdr.writeBigUInt64LE(7n, 0);
  hdr.writeBigUInt64LE(2n, 8);
  assert.deepEqual(parseDiscoveryLogHeader(hdr), { genctr: 7n, numrec: 2, recfmt: 0 });
  assert.equal(msg(() => parseDiscoveryLogHeader(Buffer.alloc(17))), 'discovery log header 17 bytes');
  assert.equal(msg(() => parseDiscoveryLogEntry(Buffer.alloc(1023))), 'discovery log entry truncated');
  assert.equal(msg(() => parseDiscoveryLogEntry(Buffer.alloc(2048), 1025)), 'discovery log entry truncated');
  const log = encodeDiscoveryLog(1n, [{ trsvcid: '4420', subnqn: 'nqn.a', traddr: '10.0.0.1', asqsz: 128 }]);
  assert.equal(parseDiscoveryLogEntry(log, 1024).asqsz, 128);
});

test('discovery log strings: cut at the first NUL, padding trimmed at both ends only, a full field kept whole', () => {
  const log = encodeDiscoveryLog(1n, [{ trsvcid: '4420', subnqn: 'nqn.a', traddr: 'x' }]);
  const at = 1024;
  log.fill(0, at + 32, at + 64);
  Buffer.from('4420\0junk').copy(log, at + 32);
  log.fill(0, at + 512, at + 768);
  Buffer.from('  \0host a b \0').copy(log, at + 512);
  assert.equal(parseDiscoveryLogEntry(log, at).trsvcid, '4420', 'garbage after the NUL is not part of it');
  log.fill(0, at + 512, at + 768);
  Buffer.from('  host a b  ').copy(log, at + 512);
  assert.equal(parseDiscoveryLogEntry(log, at).traddr, 'host a b');
  log.fill(0, at + 512, at + 768);
  Buffer.from('host a  ').copy(log, at + 512);
  assert.equal(parseDiscoveryLogEntry(log, at).traddr, 'host a', 'inner spaces are kept');
  log.fill(0x39, at + 32, at + 64);
  assert.equal(parseDiscoveryLogEntry(log, at).trsvcid, '9'.repeat(32), 'no NUL: the whole field');
  log.fill(0, at + 256, at + 512);
  Buffer.from('\0nqn.after-a-nul').copy(log, at + 256);
  assert.equal(parseDiscoveryLogEntry(log, at).subnqn, '', 'a field that starts with NUL is empty');
});

// ---- NS descriptors -------------------------------------------------------------------------

const desc = (type: number, nid: Buffer, len = nid.length): Buffer => Buffer.concat([Buffer.from([type, len, 0, 0]), nid]);
const UUID = Buffer.from('00112233445566778899aabbccddeeff', 'hex');

test('NS descriptors: a known type with the wrong length ends the walk; one ending exactly at the buffer end counts', () => {
  const wrongEui = desc(1, Buffer.alloc(16, 0x11));
  assert.deepEqual(parseNsIdDescriptors(Buffer.concat([wrongEui, desc(3, UUID)])), {});
  assert.deepEqual(parseNsIdDescriptors(Buffer.concat([desc(2, Buffer.alloc(8, 0x22)), desc(3, UUID)])), {});
  assert.deepEqual(parseNsIdDescriptors(Buffer.concat([desc(4, Buffer.from([0])), desc(3, UUID)])), { csi: 0, uuid: UUID });
  assert.deepEqual(parseNsIdDescriptors(desc(3, UUID)), { uuid: UUID }, 'exactly 20 bytes');
  assert.deepEqual(parseNsIdDescriptors(desc(3, UUID).subarray(0, 18)), {}, 'cut short: ignored');
});

// ---- ANA ---------------------------------------------------------------------------------

test('ANA state names: trimmed, decimal with leading zeros and hex; other number forms refused', () => {
  assert.equal(parseAnaState('  optimized\t'), 1);
  assert.equal(parseAnaState('01'), 1);
  assert.equal(parseAnaState('004'), 4);
  assert.equal(parseAnaState('0x0f'), 15);
  for (const s of ['1e0', '0b1', '0o1', 'x1', '1x', '+1', '']) assert.equal(parseAnaState(s), undefined, s);
});

test('ANA log encoder: limits on group count, group id and state, with messages', () => {
  const g = (grpid: number, state: number) => ({ grpid, chgcnt: 1n, state, nsids: [] });
  assert.equal(encodeAnaLog({ chgcnt: 0n, groups: Array.from({ length: 0xffff }, (_, i) => g(i + 1, 1)) }, { groupsOnly: true }).readUInt16LE(8), 0xffff);
  assert.equal(msg(() => encodeAnaLog({ chgcnt: 0n, groups: Array.from({ length: 0x10000 }, (_, i) => g(i + 1, 1)) })), '65536 ANA groups, at most 65535');
  assert.equal(parseAnaLog(encodeAnaLog({ chgcnt: 0n, groups: [g(0xffffffff, 1)] })).groups[0]?.grpid, 0xffffffff);
  assert.equal(msg(() => encodeAnaLog({ chgcnt: 0n, groups: [g(0x100000000, 1)] })), 'ANA group id 4294967296');
  assert.equal(msg(() => encodeAnaLog({ chgcnt: 0n, groups: [g(1, -1)] })), 'ANA state -1');
  assert.equal(msg(() => encodeAnaLog({ chgcnt: 0n, groups: [g(1, 0x10)] })), 'ANA state 16');
  assert.equal(msg(() => encodeAnaLog({ chgcnt: 0n, groups: [g(1, 1.5)] })), 'ANA state 1.5');
  for (const state of [0, 0x0f]) assert.equal(parseAnaLog(encodeAnaLog({ chgcnt: 0n, groups: [g(1, state)] })).groups[0]?.state, state);
});

test('ANA log parser: a bare 16-byte header is a log; each refusal says what and where', () => {
  assert.deepEqual(parseAnaLog(Buffer.alloc(16)), { chgcnt: 0n, groups: [] });
  const bad = (b: Buffer): string => msg(() => parseAnaLog(b), ErrorCode.ANA_LOG_INVALID);
  assert.equal(bad(Buffer.alloc(15)), 'ANA log page: 15 bytes, the header alone is 16');
  const two = encodeAnaLog({ chgcnt: 1n, groups: [{ grpid: 5, chgcnt: 1n, state: 1, nsids: [1] }, { grpid: 6, chgcnt: 1n, state: 2, nsids: [] }] });
  assert.equal(bad(two.subarray(0, two.length - 1)), `ANA log page: descriptor 1 of 2 at byte 52 runs past the ${two.length - 1}-byte buffer`);
  const zero = Buffer.from(two);
  zero.writeUInt32LE(0, 16);
  assert.equal(bad(zero), 'ANA log page: descriptor 0 has ANA group id 0');
  const dup = Buffer.from(two);
  dup.writeUInt32LE(5, 52);
  assert.equal(bad(dup), 'ANA log page: ANA group 5 listed twice');
  const many = Buffer.from(two);
  many.writeUInt32LE(1000, 20);
  assert.equal(bad(many), `ANA log page: group 5: 1000 NSIDs run past the ${two.length}-byte buffer`);
});
