import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  parseDiscoveryLogHeader, parseDiscoveryLogEntries, encodeDiscoveryLog, TrType, AdrFam, SubType, Treq,
} from '../../src/wire/discovery-log';
import { ErrorCode, NvmfNbdError } from '../../src/errors';
import { throwsCode } from '../helpers/assert-code';

/**
 * A two-entry log page (NVMe-oF 1.1 Figures 30-31). trsvcid and traddr are padded with `pad`:
 * spaces as some targets send them (the parser trims them), NUL as Linux nvmet and our encoder do.
 */
function fixture(pad = 0x20): Buffer {
  const b = Buffer.alloc(1024 * 3);
  b.writeBigUInt64LE(42n, 0);
  b.writeBigUInt64LE(2n, 8);
  b.writeUInt16LE(0, 16);
  const entry = (at: number, subtype: number, port: string, nqn: string, addr: string): void => {
    b[at] = 3;
    b[at + 1] = 1;
    b[at + 2] = subtype;
    b[at + 3] = 0x06;
    b.writeUInt16LE(1, at + 4);
    b.writeUInt16LE(0xffff, at + 6);
    b.writeUInt16LE(32, at + 8);
    b.writeUInt16LE(0x0002, at + 10);
    b.fill(pad, at + 32, at + 64);
    b.write(port, at + 32, 'ascii');
    b.write(nqn, at + 256, 'ascii');
    b.fill(pad, at + 512, at + 768);
    b.write(addr, at + 512, 'ascii');
    b[at + 768] = 0; // tsas sectype none
  };
  entry(1024, 3, '8009', 'nqn.2014-08.org.nvmexpress.discovery', '127.0.0.1');
  entry(2048, 2, '4420', 'nqn.2024-01.io.example:disk1', '10.0.2.15');
  return b;
}

test('header: genctr, numrec, recfmt', () => {
  assert.deepEqual(parseDiscoveryLogHeader(fixture()), { genctr: 42n, numrec: 2, recfmt: 0 });
});

test('entries: fields at their offsets, strings trimmed of space/NUL padding', () => {
  const e = parseDiscoveryLogEntries(fixture(), 2);
  assert.equal(e.length, 2);
  const base = { trtype: TrType.TCP, adrfam: AdrFam.IPV4, treq: Treq.NOT_REQUIRED | Treq.DISABLE_SQ_FC, portid: 1,
    cntlid: 0xffff, asqsz: 32, eflags: 2, tsas: Buffer.alloc(256) };
  assert.deepEqual(e[0], { ...base, subtype: SubType.CURRENT_DISCOVERY, trsvcid: '8009',
    subnqn: 'nqn.2014-08.org.nvmexpress.discovery', traddr: '127.0.0.1' });
  assert.deepEqual(e[1], { ...base, subtype: SubType.NVM, trsvcid: '4420', subnqn: 'nqn.2024-01.io.example:disk1', traddr: '10.0.2.15' });
});

test('entry count is bounded by the buffer, whatever numrec says', () => {
  const b = fixture();
  b.writeBigUInt64LE(1000000n, 8);
  const h = parseDiscoveryLogHeader(b);
  assert.equal(h.numrec, 1000000);
  assert.equal(parseDiscoveryLogEntries(b, h.numrec).length, 2);
  assert.equal(parseDiscoveryLogEntries(b.subarray(0, 2047), 2).length, 0, 'partial entry dropped');
  assert.equal(parseDiscoveryLogEntries(b, 1).length, 1);
  assert.equal(parseDiscoveryLogEntries(b.subarray(0, 100), 5).length, 0);
});

test('short header is an INVALID_ARGUMENT error', () => {
  throwsCode(() => parseDiscoveryLogHeader(Buffer.alloc(10)), ErrorCode.INVALID_ARGUMENT);
});

test('encoder reproduces the fixture byte for byte (NUL padded)', () => {
  const common = { trtype: TrType.TCP, adrfam: AdrFam.IPV4, treq: 6, portid: 1, cntlid: 0xffff, asqsz: 32, eflags: 2 };
  const b = encodeDiscoveryLog(42n, [
    { ...common, subtype: SubType.CURRENT_DISCOVERY, trsvcid: '8009', subnqn: 'nqn.2014-08.org.nvmexpress.discovery', traddr: '127.0.0.1' },
    { ...common, subtype: SubType.NVM, trsvcid: '4420', subnqn: 'nqn.2024-01.io.example:disk1', traddr: '10.0.2.15' },
  ]);
  assert.deepEqual(b, fixture(0));
  // Space or NUL padding parse the same.
  assert.deepEqual(parseDiscoveryLogEntries(fixture(0), 2), parseDiscoveryLogEntries(fixture(), 2));
});

test('encoder defaults: TCP, IPv4, NVM subsystem, dynamic cntlid', () => {
  const [e] = parseDiscoveryLogEntries(encodeDiscoveryLog(1n, [{ trsvcid: '4420', subnqn: 'nqn.x', traddr: '::1' }]), 1);
  assert.ok(e);
  assert.deepEqual([e.trtype, e.adrfam, e.subtype, e.cntlid, e.traddr], [3, 1, 2, 0xffff, '::1']);
});
