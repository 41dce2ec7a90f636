/**
 * Status names table by table (issue 15 item 2, wire survivors): every code the tables define
 * has its own non-empty name, codes they do not define are "Unknown status", and the I/O
 * command-specific names replace only 0x80..0x83.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { statusName, formatStatus, statusError } from '../../src/wire/status';
import { ErrorCode } from '../../src/errors';
import { throwsCode } from '../helpers/assert-code';

const range = (a: number, b: number): number[] => Array.from({ length: b - a + 1 }, (_, i) => a + i);

/** The codes each status code type names (NVMe Base 2.0 §4.2.3; Fabrics for SCT 1 ≥ 0x80). */
const DEFINED = {
  generic: [...range(0x00, 0x16), ...range(0x18, 0x22), ...range(0x80, 0x86)],
  commandSpecific: [...range(0x00, 0x03), ...range(0x05, 0x16), ...range(0x18, 0x1f), ...range(0x80, 0x85), 0x90, 0x91],
  io: [...range(0x80, 0x83)],
  media: [...range(0x80, 0x88)],
  path: [...range(0x00, 0x03), 0x60, 0x70, 0x71],
};

function namedCodes(sct: number, io: boolean): Map<number, string> {
  const out = new Map<number, string>();
  for (let sc = 0; sc < 256; sc++) {
    const name = statusName(sct, sc, { io });
    if (name !== 'Unknown status') out.set(sc, name);
  }
  return out;
}

function checkTable(sct: number, io: boolean, codes: number[]): Map<number, string> {
  const named = namedCodes(sct, io);
  assert.deepEqual([...named.keys()], codes, `sct ${sct} io ${io}: codes with a name`);
  for (const [sc, name] of named) assert.match(name, /^[A-Z][A-Za-z0-9 -]+[A-Za-z]$/, `sct ${sct} sc ${sc}`);
  assert.equal(new Set(named.values()).size, named.size, `sct ${sct} io ${io}: names are distinct`);
  return named;
}

test('generic, command specific, media and path tables: each defined code has its own name', () => {
  checkTable(0, false, DEFINED.generic);
  checkTable(1, false, DEFINED.commandSpecific);
  checkTable(2, false, DEFINED.media);
  checkTable(3, false, DEFINED.path);
  // io changes nothing outside SCT 1
  for (const sct of [0, 2, 3]) assert.deepEqual(namedCodes(sct, true), namedCodes(sct, false));
});

test('I/O command specific names replace exactly 0x80..0x83 of SCT 1', () => {
  const fabrics = namedCodes(1, false);
  const io = checkTable(1, true, DEFINED.commandSpecific);
  for (const [sc, name] of io) {
    if (DEFINED.io.includes(sc)) assert.notEqual(name, fabrics.get(sc), `sc ${sc}`);
    else assert.equal(name, fabrics.get(sc), `sc ${sc}`);
  }
  assert.equal(statusName(1, 0x81, { io: true }), 'Invalid Protection Information');
  assert.equal(statusName(1, 0x82, { io: true }), 'Attempted Write to Read Only Range');
  assert.equal(statusName(1, 0x83, { io: true }), 'Command Size Limit Exceeded');
  assert.equal(statusName(1, 0x84, { io: true }), 'Connect Invalid Host');
  assert.equal(statusName(2, 0x85), 'Compare Failure');
  assert.equal(statusName(2, 0x88), 'End-to-end Storage Tag Check Error');
});

test('vendor specific names every code; reserved code types name none', () => {
  for (const sc of [0x00, 0x01, 0x80, 0xff]) assert.equal(statusName(7, sc), 'Vendor Specific');
  for (const sct of [4, 5, 6]) assert.equal(namedCodes(sct, false).size, 0, `sct ${sct}`);
});

test('statusError message is "<what>: <formatStatus>" with the io naming', () => {
  const s = { sct: 1, sc: 0x82, dnr: true, more: false, crd: 0 };
  const e = throwsCode(() => {
    throw statusError(s, 'write nsid 1', { io: true });
  }, ErrorCode.NVME_STATUS);
  assert.equal(e.message, 'write nsid 1: Attempted Write to Read Only Range (sct 1 sc 0x82, dnr)');
  assert.equal(e.message, `write nsid 1: ${formatStatus(s, { io: true })}`);
  assert.equal(statusError(s, 'connect').message, 'connect: Connect Invalid Parameters (sct 1 sc 0x82, dnr)');
  assert.equal(formatStatus({ sct: 2, sc: 0x81, dnr: false, more: false, crd: 0 }), 'Unrecovered Read Error (sct 2 sc 0x81)');
});
