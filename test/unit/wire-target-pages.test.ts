/**
 * One encoder and one decoder per NVMe structure (issue 9 item 3): the embedded target's pages
 * are built by src/wire/'s encoders, and
 * - fixed bytes: what the target sends is byte for byte what it sent before the encoders were
 *   shared (fixtures recorded from the target's own encoders of that time, as runs of non-zero
 *   bytes: every other byte must be zero);
 * - round trips: wire encode → wire decode gives the fields back, for every structure the target
 *   sends (Identify Controller / Namespace / NS list / NS descriptors, discovery log, error,
 *   SMART, firmware and changed-namespace logs, CAP/CC/CSTS/VS properties).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  encodeActiveNamespaceList, encodeChangedNsLog, encodeDiscoveryLog, encodeErrorLog, encodeFirmwareLog, encodeIdentifyController,
  encodeIdentifyNamespace, encodeNsDescriptors, encodeSmartLog, namespaceIds, ControllerType,
} from '../../src/embedded-target/pages';
import {
  encodeIdentifyController as wireIdCtrl, encodeIdentifyNamespace as wireIdNs, encodeNamespaceList, parseIdentifyController,
  parseIdentifyNamespace, parseNamespaceList,
} from '../../src/wire/identify';
import { encodeDiscoveryLog as wireDiscoveryLog, parseDiscoveryLogEntries, parseDiscoveryLogHeader } from '../../src/wire/discovery-log';
import { encodeNsIdDescriptors, parseNsIdDescriptors } from '../../src/wire/ns-descriptors';
import {
  CHANGED_NS_OVERFLOW, encodeChangedNsList, encodeErrorLog as wireErrorLog, encodeFirmwareLog as wireFirmwareLog,
  encodeSmartLog as wireSmartLog, parseErrorLog, parseFirmwareLog, parseSmartLog,
} from '../../src/wire/log-pages';
import { decodeCc, decodeCsts, decodeVs, encodeCap, encodeCc, encodeCsts, encodeVs, parseCap } from '../../src/wire/properties';
import { ErrorCode } from '../../src/errors';
import { throwsCode } from '../helpers/assert-code';

interface Fixture { length: number; runs: Array<[number, string]> }

/** The bytes a fixture describes: zero except its runs. */
function bytesOf(f: Fixture): Buffer {
  const b = Buffer.alloc(f.length);
  for (const [at, hex] of f.runs) Buffer.from(hex, 'hex').copy(b, at);
  return b;
}

/** Recorded from the target's encoders before they were built on src/wire/ (959e571; the ANA ones from a375b52..5cb0896). */
const FIXTURES: Record<string, Fixture> = {
  idCtrlIo: { length: 4096, runs: [
    [4, '534e3031323334353637383920202020202020206e766d662d6e626420656d6265646465642074617267657420' +
      '202020202020202020202020202020302e312e30202020'],
    [76, '02050100000401'],
    [93, '01'],
    [111, '01'],
    [258, '03030304'],
    [266, '57017301'],
    [320, '64'],
    [512, '66448000020000000c'],
    [525, '07'],
    [536, '0100100002'],
    [768, '6e716e2e323032362d31322e696f2e6578616d706c653a73756231'],
    [1792, '0401000001'],
    [1803, '01'],
    [2048, '19'],
  ] },
  idCtrlDisc: { length: 4096, runs: [
    [4, '44495343303120202020202020202020202020206e766d662d6e626420646973636f7665727920202020202020' +
      '202020202020202020202020202020302e312e30202020'],
    [78, '0200000401'],
    [95, '80'],
    [111, '02'],
    [258, '03030304'],
    [266, '57017301'],
    [320, '64'],
    [512, '664420'],
    [536, '010010'],
    [768, '6e716e2e323031342d30382e6f72672e6e766d657870726573732e646973636f76657279'],
    [1792, '0400000001'],
    [1803, '01'],
    [2048, '19'],
  ] },
  idNs: { length: 4096, runs: [
    [1, '08'],
    [9, '08'],
    [17, '08'],
    [24, '08'],
    [30, '01000009'],
    [104, 'cd8befc783f70933c12ceb347acfd2d6cf8befc783f7093300000c'],
  ] },
  nsList: { length: 4096, runs: [
    [0, '020000000300000007'],
  ] },
  nsDesc: { length: 4096, runs: [
    [0, '01080000cf8befc783f7093302100000cd8befc783f70933c12ceb347acfd2d603100000d2aadf152bef592692' +
      '247c0dc2ca25f70401'],
  ] },
  discLog: { length: 4096, runs: [
    [0, '05'],
    [8, '03'],
    [1024, '030102050100ffff20'],
    [1056, '34343230'],
    [1280, '6e716e2e323032362d31322e696f2e6578616d706c653a73756231'],
    [1536, '3139322e302e322e3130'],
    [1792, '02'],
    [2048, '030202060100ffff20'],
    [2080, '34343231'],
    [2304, '6e716e2e323032362d31322e696f2e6578616d706c653a73756232'],
    [2560, '323030313a6462383a3a31'],
    [2816, '02'],
    [3072, '030101040100ffff20'],
    [3104, '38303039'],
    [3328, '6e716e2e323031342d30382e6f72672e6e766d657870726573732e646973636f76657279'],
    [3584, '3139382e35312e3130302e37'],
  ] },
  errorLog: { length: 64, runs: [
  ] },
  smart: { length: 512, runs: [
    [1, '2c01640a'],
    [32, '03'],
    [48, '0100000001'],
    [64, 'e803'],
    [80, '701101'],
  ] },
  fw: { length: 512, runs: [
    [0, '01'],
    [8, '302e312e30202020'],
  ] },
  changed: { length: 4096, runs: [
    [0, '010000000200000009'],
  ] },
  changedMany: { length: 4096, runs: [
    [0, 'ffffffff'],
  ] },
  idCtrlAna: { length: 4096, runs: [
    [4, '534e3031323334353637383920202020202020206e766d662d6e626420656d6265646465642074617267657420' +
      '202020202020202020202020202020302e312e30202020'],
    [76, '0b050100000401'],
    [93, '09'],
    [111, '01'],
    [258, '03030304'],
    [266, '57017301'],
    [320, '64'],
    [342, '0a470400000004'],
    [386, 'dc05'],
    [512, '66448000020000000c'],
    [525, '07'],
    [536, '0100100002'],
    [768, '6e716e2e323032362d31322e696f2e6578616d706c653a73756231'],
    [1792, '0401000001'],
    [1803, '01'],
    [2048, '19'],
  ] },
  idNsAna: { length: 4096, runs: [
    [1, '08'], [9, '08'], [17, '08'], [24, '08'], [30, '01000009'], [92, '02'],
    [104, 'cd8befc783f70933c12ceb347acfd2d6cf8befc783f70933000009'],
  ] },
};

const SUBNQN = 'nqn.2026-12.io.example:sub1';
const IDS = namespaceIds(SUBNQN, 1);

function sameBytes(got: Buffer, name: string): void {
  const want = bytesOf(FIXTURES[name] as Fixture);
  assert.equal(got.length, want.length, `${name}: length`);
  const diff: number[] = [];
  for (let i = 0; i < want.length; i++) if (got[i] !== want[i]) diff.push(i);
  assert.deepEqual(diff.slice(0, 16), [], `${name}: bytes differ at ${diff.length} offsets`);
}

test('fixed bytes: Identify Controller (I/O and discovery) as the target always sent it', () => {
  sameBytes(encodeIdentifyController({
    serial: 'SN0123456789', model: 'nvmf-nbd embedded target', firmware: '0.1.0', mdts: 5, cntlid: 1, type: ControllerType.IO,
    kas: 100, maxcmd: 128, nn: 2, aerl: 3, subnqn: SUBNQN, ioccsz: 260,
  }), 'idCtrlIo');
  sameBytes(encodeIdentifyController({
    serial: 'DISC01', model: 'nvmf-nbd discovery', firmware: '0.1.0', mdts: 0, cntlid: 2, type: ControllerType.DISCOVERY,
    kas: 100, maxcmd: 32, nn: 0, aerl: 3, subnqn: 'nqn.2014-08.org.nvmexpress.discovery', ioccsz: 4,
  }), 'idCtrlDisc');
});

test('fixed bytes: Identify Controller / Namespace with ANA and CQT', () => {
  sameBytes(encodeIdentifyController({
    serial: 'SN0123456789', model: 'nvmf-nbd embedded target', firmware: '0.1.0', mdts: 5, cntlid: 1, type: ControllerType.IO,
    kas: 100, maxcmd: 128, nn: 2, aerl: 3, subnqn: SUBNQN, ioccsz: 260, ana: { anatt: 10, anacap: 0x47, maxGroups: 4 }, cqt: 1500,
  }), 'idCtrlAna');
  sameBytes(encodeIdentifyNamespace({ nsze: 2048n, lbads: 9, ids: IDS, anagrpid: 2 }), 'idNsAna');
});

test('fixed bytes: Identify Namespace, active NS list, NS descriptors', () => {
  sameBytes(encodeIdentifyNamespace({ nsze: 2048n, lbads: 12, ids: IDS }), 'idNs');
  sameBytes(encodeActiveNamespaceList([7, 1, 3, 2], 1), 'nsList');
  sameBytes(encodeNsDescriptors(IDS), 'nsDesc');
});

test('fixed bytes: discovery log (TLS required / optional / none, IPv6, a referral)', () => {
  sameBytes(encodeDiscoveryLog(5n, [
    { subnqn: SUBNQN, traddr: '192.0.2.10', trsvcid: '4420', adrfam: 1, portid: 1, asqsz: 32, tls: 'required' },
    { subnqn: 'nqn.2026-12.io.example:sub2', traddr: '2001:db8::1', trsvcid: '4421', adrfam: 2, portid: 1, asqsz: 32, tls: 'optional' },
    { subnqn: 'nqn.2014-08.org.nvmexpress.discovery', traddr: '198.51.100.7', trsvcid: '8009', adrfam: 1, portid: 1, asqsz: 32, subtype: 1 },
  ]), 'discLog');
});

test('fixed bytes: error, SMART, firmware and changed-namespace logs', () => {
  sameBytes(encodeErrorLog(), 'errorLog');
  sameBytes(encodeSmartLog({ unitsRead: 3n, unitsWritten: 0x1_0000_0001n, readCmds: 1000n, writeCmds: 70000n }), 'smart');
  sameBytes(encodeFirmwareLog('0.1.0'), 'fw');
  sameBytes(encodeChangedNsLog([1, 2, 9]), 'changed');
  sameBytes(encodeChangedNsLog(Array.from({ length: 1025 }, (_, i) => i + 1)), 'changedMany');
});

test('round trip: the target\'s Identify Controller decodes to what it reports', () => {
  const id = parseIdentifyController(encodeIdentifyController({
    serial: 'S1', model: 'M', firmware: 'F', mdts: 7, cntlid: 9, type: ControllerType.IO, kas: 50, maxcmd: 64, nn: 4, aerl: 2,
    subnqn: SUBNQN, ioccsz: 8,
  }));
  assert.deepEqual(
    [id.sn, id.mn, id.fr, id.mdts, id.cntlid, id.cntrltype, id.kas, id.maxcmd, id.nn, id.mnan, id.aerl, id.subnqn, id.ioccsz, id.oaes, id.oncs, id.vwc],
    ['S1', 'M', 'F', 7, 9, 1, 50, 64, 4, 4, 2, SUBNQN, 8, 1 << 8, 0x0c, 0x07],
  );
  assert.deepEqual([id.wctemp, id.cctemp, id.psd0mp, id.sqes, id.cqes, id.iorcsz, id.msdbd], [343, 371, 25, 0x66, 0x44, 1, 1]);
});

test('round trip: wire Identify Controller / Namespace, every field', () => {
  const ctrl = parseIdentifyController(wireIdCtrl({ vid: 1, sn: 'abc', wctemp: 0x1234, cctemp: 0xfffe, psd0mp: 0xabcd, ofcs: 1, subnqn: 'n' }));
  assert.deepEqual(parseIdentifyController(wireIdCtrl(ctrl)), ctrl);
  assert.deepEqual([ctrl.wctemp, ctrl.cctemp, ctrl.psd0mp], [0x1234, 0xfffe, 0xabcd]);
  const ns = parseIdentifyNamespace(wireIdNs({ nsze: 10n, ncap: 9n, nuse: 8n, dlfeat: 0x09, nmic: 1, lbaf: [{ ms: 0, lbads: 12, rp: 1 }] }));
  const { formatIndex: _a, lbaSize: _b, metadataSize: _c, hasProtection: _d, ...raw } = ns;
  assert.deepEqual(parseIdentifyNamespace(wireIdNs(raw)), ns);
  assert.equal(ns.dlfeat, 0x09);
  assert.equal(ns.lbaSize, 4096);
});

test('round trip: namespace lists, changed-namespace list (overflow → FFFFFFFFh alone), descriptors', () => {
  assert.deepEqual(parseNamespaceList(encodeNamespaceList([1, 5, 9])), [1, 5, 9]);
  assert.deepEqual(parseNamespaceList(encodeActiveNamespaceList([9, 1, 5], 1)), [5, 9]);
  assert.deepEqual(parseNamespaceList(encodeChangedNsList([4, 2])), [4, 2]);
  assert.deepEqual(parseNamespaceList(encodeChangedNsList(Array.from({ length: 1025 }, (_, i) => i + 1))), [CHANGED_NS_OVERFLOW]);
  assert.equal(parseNamespaceList(encodeChangedNsList(Array.from({ length: 1024 }, (_, i) => i + 1))).length, 1024);
  throwsCode(() => encodeNamespaceList(Array.from({ length: 1025 }, (_, i) => i + 1)), ErrorCode.INVALID_ARGUMENT);
  const d = parseNsIdDescriptors(encodeNsDescriptors(IDS));
  assert.deepEqual(d, { eui64: IDS.eui64, nguid: IDS.nguid, uuid: IDS.uuid, csi: 0 });
  assert.deepEqual(parseNsIdDescriptors(encodeNsIdDescriptors(d)), d);
});

test('round trip: discovery log header and entries (treq, tsas, padding trimmed)', () => {
  const page = encodeDiscoveryLog(7n, [
    { subnqn: SUBNQN, traddr: '192.0.2.10', trsvcid: '4420', adrfam: 1, portid: 3, asqsz: 32, tls: 'required' },
    { subnqn: 'nqn.2014-08.org.nvmexpress.discovery', traddr: '2001:db8::2', trsvcid: '8009', adrfam: 2, portid: 1, asqsz: 32, subtype: 1 },
  ]);
  assert.deepEqual(parseDiscoveryLogHeader(page), { genctr: 7n, numrec: 2, recfmt: 0 });
  const [a, b] = parseDiscoveryLogEntries(page, 2);
  assert.ok(a !== undefined && b !== undefined);
  assert.deepEqual([a.trtype, a.adrfam, a.subtype, a.treq, a.portid, a.cntlid, a.asqsz, a.trsvcid, a.traddr, a.subnqn, a.tsas[0]],
    [3, 1, 2, 0x05, 3, 0xffff, 32, '4420', '192.0.2.10', SUBNQN, 2]);
  assert.deepEqual([b.adrfam, b.subtype, b.treq, b.tsas[0], b.traddr], [2, 1, 0x04, 0, '2001:db8::2']);
  // wire encode → decode → encode is stable.
  const again = wireDiscoveryLog(7n, parseDiscoveryLogEntries(page, 2));
  assert.deepEqual(again, page);
});

test('round trip: error, SMART and firmware logs (u128 counters, both halves)', () => {
  const e = parseErrorLog(wireErrorLog([{ errorCount: 3n, sqid: 1, cid: 0x1234, status: 0x4005, parameterLocation: 0x28, lba: 77n, nsid: 2, trtype: 3, commandSpecific: 9n, transportSpecific: 5 }, {}]));
  assert.equal(e.length, 2);
  assert.deepEqual(parseErrorLog(wireErrorLog(e)), e);
  assert.deepEqual([e[0]?.errorCount, e[0]?.cid, e[0]?.lba, e[1]?.errorCount], [3n, 0x1234, 77n, 0n]);
  assert.equal(parseErrorLog(encodeErrorLog()).length, 1);
  const big = (1n << 100n) + 5n;
  const s = parseSmartLog(wireSmartLog({ temperature: 300, availableSpare: 100, dataUnitsRead: big, mediaErrors: 1n, errorLogEntries: 2n }));
  assert.deepEqual([s.temperature, s.availableSpare, s.dataUnitsRead, s.mediaErrors, s.errorLogEntries], [300, 100, big, 1n, 2n]);
  assert.deepEqual(parseSmartLog(wireSmartLog(s)), s);
  const t = parseSmartLog(encodeSmartLog({ unitsRead: 1n, unitsWritten: 2n, readCmds: 3n, writeCmds: 4n }));
  assert.deepEqual([t.dataUnitsRead, t.dataUnitsWritten, t.hostReadCommands, t.hostWriteCommands, t.spareThreshold], [1n, 2n, 3n, 4n, 10]);
  throwsCode(() => parseSmartLog(Buffer.alloc(511)), ErrorCode.INVALID_ARGUMENT);
  assert.deepEqual(parseFirmwareLog(encodeFirmwareLog('1.2')), { afi: 1, slots: ['1.2'] });
  const fw = parseFirmwareLog(wireFirmwareLog({ afi: 0x12, slots: ['a', '', 'c'] }));
  assert.deepEqual(fw, { afi: 0x12, slots: ['a', '', 'c'] });
  assert.deepEqual(parseFirmwareLog(wireFirmwareLog(fw)), fw);
});

test('round trip + fixed values: CAP, CC, CSTS, VS', () => {
  // The target's CAP: MQES 127, CQR, TO 10 (5 s), CSS NVM.
  const cap = encodeCap({ mqes: 127, cqr: true, to: 10, css: 1 });
  assert.equal(cap, 127n | (1n << 16n) | (10n << 24n) | (1n << 37n));
  const c = parseCap(cap);
  const { timeoutMs, ...fields } = c;
  assert.equal(timeoutMs, 5000);
  assert.equal(encodeCap(fields), cap);
  const cc = { en: true, css: 0, mps: 0, ams: 0, shn: 1, iosqes: 6, iocqes: 4 };
  assert.equal(encodeCc(cc), 0x00464001);
  assert.deepEqual(decodeCc(encodeCc(cc)), cc);
  const csts = { rdy: true, cfs: false, shst: 2, nssro: false, pp: false };
  assert.equal(encodeCsts(csts), 0x09);
  assert.deepEqual(decodeCsts(encodeCsts(csts)), csts);
  assert.equal(encodeVs({ major: 1, minor: 4, tertiary: 0 }), 0x00010400);
  assert.deepEqual(decodeVs(0x00010400), { major: 1, minor: 4, tertiary: 0 });
});
