/**
 * Mutation tests (issue 15 item 2) of src/controller/namespace-info.ts: the classification of an
 * Identify Namespace page (usable or why not, in its order of precedence) and the checked paging
 * of the active namespace list.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { classifyNamespace, readActiveNamespaceIds } from '../../src/controller/namespace-info';
import { ErrorCode } from '../../src/errors';
import { Cns, encodeNamespaceList } from '../../src/wire';
import type { Completion } from '../../src/transport/queue-command';
import { rejectsCode } from '../helpers/assert-code';

/** An Identify Namespace page: `formats` as [ms, lbads], the current one `fmt`. */
function page(o: { nsze: bigint; formats: Array<[number, number]>; fmt?: number; dps?: number }): Buffer {
  const b = Buffer.alloc(4096);
  b.writeBigUInt64LE(o.nsze, 0);
  b.writeBigUInt64LE(o.nsze - 1n > 0n ? o.nsze - 1n : 0n, 8);
  b[25] = o.formats.length - 1;
  b[26] = o.fmt ?? 0;
  b[29] = o.dps ?? 0;
  o.formats.forEach(([ms, lbads], i) => {
    b.writeUInt16LE(ms, 128 + 4 * i);
    b[128 + 4 * i + 2] = lbads;
  });
  return b;
}

test('classifyNamespace: a plain format is usable, every field from the page and the nsid', () => {
  const info = classifyNamespace(7, page({ nsze: 3000n, formats: [[8, 9], [0, 12]], fmt: 1 }));
  assert.equal(info.nsid, 7);
  assert.equal(info.lbaSize, 4096);
  assert.equal(info.nsze, 3000n);
  assert.equal(info.usable, true);
  assert.equal('reasonIfNot' in info, false);
  assert.equal(info.identify.nsze, 3000n);
  assert.equal(info.identify.ncap, 2999n);
  assert.equal(info.identify.formatIndex, 1);
});

test('classifyNamespace: a block that fits the controller\'s maximum transfer exactly is usable, a larger one is not', () => {
  const raw = page({ nsze: 10n, formats: [[0, 14]] }); // 16 KiB blocks
  assert.equal(classifyNamespace(5, raw).usable, true, 'no limit given: usable');
  assert.equal(classifyNamespace(5, raw, 16384).usable, true, 'one block per command exactly');
  const no = classifyNamespace(5, raw, 8192);
  assert.equal(no.usable, false);
  assert.equal(no.lbaSize, 16384);
  assert.equal(no.reasonIfNot, "block size 16384 is larger than the controller's maximum transfer of 8192 bytes (not supported)");
});

test('classifyNamespace: 64 KiB blocks are usable, 128 KiB blocks are not (lbaSize 0, format named)', () => {
  const ok = classifyNamespace(2, page({ nsze: 10n, formats: [[0, 16]] }));
  assert.equal(ok.usable, true);
  assert.equal(ok.lbaSize, 65536);
  const big = classifyNamespace(3, page({ nsze: 10n, formats: [[0, 9], [0, 17]], fmt: 1 }));
  assert.equal(big.usable, false);
  assert.equal(big.lbaSize, 0);
  assert.equal(big.nsze, 10n);
  assert.equal(big.nsid, 3);
  assert.equal(big.reasonIfNot, 'LBA format 1 has an unsupported block size');
  // An unparseable lbads (below 512 bytes) the same way.
  assert.equal(classifyNamespace(3, page({ nsze: 10n, formats: [[0, 8]] })).reasonIfNot, 'LBA format 0 has an unsupported block size');
});

test('classifyNamespace: size 0 comes first, before an unsupported block size, metadata or PI', () => {
  const info = classifyNamespace(4, page({ nsze: 0n, formats: [[8, 17]], dps: 1 }));
  assert.equal(info.usable, false);
  assert.equal(info.reasonIfNot, 'namespace size is 0 (inactive or unallocated)');
  assert.equal(info.nsid, 4);
});

test('classifyNamespace: metadata per block, named with its size and format, before PI', () => {
  const info = classifyNamespace(5, page({ nsze: 8n, formats: [[0, 9], [0, 9], [16, 9]], fmt: 2, dps: 2 }));
  assert.equal(info.usable, false);
  assert.equal(info.lbaSize, 512);
  assert.equal(info.reasonIfNot, 'LBA format 2 has 16 bytes of metadata per block (not supported)');
});

test('classifyNamespace: protection information, its type from DPS bits 2:0 only', () => {
  const info = classifyNamespace(6, page({ nsze: 8n, formats: [[0, 12]], dps: 0x0b }));
  assert.equal(info.usable, false);
  assert.equal(info.reasonIfNot, 'end-to-end protection information type 3 is enabled (not supported)');
  // DPS bit 3 alone (PI in the first bytes of metadata, no type) is no protection.
  assert.equal(classifyNamespace(6, page({ nsze: 8n, formats: [[0, 12]], dps: 0x08 })).usable, true);
});

test('classifyNamespace: bytes up to 2^53 are usable, beyond are not', () => {
  const max = BigInt(Number.MAX_SAFE_INTEGER);
  const fits = classifyNamespace(8, page({ nsze: max / 512n, formats: [[0, 9]] }));
  assert.equal(fits.usable, true);
  const over = classifyNamespace(8, page({ nsze: max / 512n + 1n, formats: [[0, 9]] }));
  assert.equal(over.usable, false);
  assert.equal(over.reasonIfNot, `size ${max / 512n + 1n} × 512 bytes is beyond 2^53 bytes (not supported)`);
  // The product counts, not the block count: the same count of 4 KiB blocks is over too.
  assert.equal(classifyNamespace(8, page({ nsze: max / 4096n + 1n, formats: [[0, 12]] })).usable, false);
  assert.equal(classifyNamespace(8, page({ nsze: max / 4096n, formats: [[0, 12]] })).usable, true);
});

/** An identify function answering pages of the active list; records each request's NSID and CNS. */
function lister(pages: number[][]): { identify: (sqe: Buffer) => Promise<Completion>; asked: Array<{ cns: number; nsid: number }> } {
  const asked: Array<{ cns: number; nsid: number }> = [];
  let i = 0;
  return {
    asked,
    identify: (sqe: Buffer) => {
      asked.push({ cns: sqe.readUInt32LE(40) & 0xff, nsid: sqe.readUInt32LE(4) });
      const ids = pages[i++] ?? [];
      return Promise.resolve({ cqe: {} as Completion['cqe'], data: encodeNamespaceList(ids) });
    },
  };
}

const range = (from: number, n: number): number[] => Array.from({ length: n }, (_, i) => from + i);

test('readActiveNamespaceIds: one short page is one request for CNS 02h from NSID 0', async () => {
  const l = lister([[3, 9, 12]]);
  assert.deepEqual(await readActiveNamespaceIds(l.identify, 12), [3, 9, 12]);
  assert.deepEqual(l.asked, [{ cns: Cns.ACTIVE_NS_LIST, nsid: 0 }]);
});

test('readActiveNamespaceIds: a full page of 1024 asks again from its last NSID; 1023 does not', async () => {
  const l = lister([range(5, 1024), range(2000, 3)]);
  const ids = await readActiveNamespaceIds(l.identify, 0);
  assert.equal(ids.length, 1027);
  assert.deepEqual(ids.slice(1022), [1027, 1028, 2000, 2001, 2002]);
  assert.deepEqual(l.asked, [{ cns: Cns.ACTIVE_NS_LIST, nsid: 0 }, { cns: Cns.ACTIVE_NS_LIST, nsid: 1028 }]);
  const short = lister([range(5, 1023), [4000]]);
  assert.equal((await readActiveNamespaceIds(short.identify, 0)).length, 1023);
  assert.equal(short.asked.length, 1);
  // A full page followed by an empty one ends there.
  const empty = lister([range(1, 1024), []]);
  assert.equal((await readActiveNamespaceIds(empty.identify, 0)).length, 1024);
  assert.equal(empty.asked.length, 2);
});

test('readActiveNamespaceIds: a repeated, decreasing or not-greater-than-start NSID is NAMESPACE_LIST_INVALID', async () => {
  const rep = await rejectsCode(readActiveNamespaceIds(lister([[1, 2, 2]]).identify, 0), ErrorCode.NAMESPACE_LIST_INVALID);
  assert.equal(rep.message, 'active namespace list from NSID 0: NSID 2 after 2 (ids must increase and exceed the starting NSID)');
  await rejectsCode(readActiveNamespaceIds(lister([[5, 4]]).identify, 0), ErrorCode.NAMESPACE_LIST_INVALID);
  // The second page restarts at the starting NSID (a target ignoring it would be paged forever).
  const again = await rejectsCode(readActiveNamespaceIds(lister([range(1, 1024), [1024, 1025]]).identify, 0), ErrorCode.NAMESPACE_LIST_INVALID);
  assert.equal(again.message, 'active namespace list from NSID 1024: NSID 1024 after 1024 (ids must increase and exceed the starting NSID)');
  const below = await rejectsCode(readActiveNamespaceIds(lister([range(1, 1024), [7]]).identify, 0), ErrorCode.NAMESPACE_LIST_INVALID);
  assert.match(below.message, /NSID 7 after 1024/);
  // Strictly increasing just above the start is fine.
  assert.deepEqual(await readActiveNamespaceIds(lister([range(1, 1024), [1025]]).identify, 0), range(1, 1025));
});

test('readActiveNamespaceIds: exactly NN ids are accepted, one more is NAMESPACE_LIST_INVALID', async () => {
  assert.deepEqual(await readActiveNamespaceIds(lister([[1, 2, 3]]).identify, 3), [1, 2, 3]);
  const e = await rejectsCode(readActiveNamespaceIds(lister([[1, 2, 3, 4]]).identify, 3), ErrorCode.NAMESPACE_LIST_INVALID);
  assert.equal(e.message, 'active namespace list: more than 3 namespaces (NN 3)');
  // Counted across pages: 1024 + 1 against NN 1024.
  const pages = await rejectsCode(readActiveNamespaceIds(lister([range(1, 1024), [2000]]).identify, 1024), ErrorCode.NAMESPACE_LIST_INVALID);
  assert.equal(pages.message, 'active namespace list: more than 1024 namespaces (NN 1024)');
  assert.equal((await readActiveNamespaceIds(lister([range(1, 1024), [2000]]).identify, 1025)).length, 1025);
});

test('readActiveNamespaceIds: NN 0 or above 2^20 caps at 2^20 ids', async () => {
  const all = (n: number): number[][] => {
    const out: number[][] = [];
    for (let at = 1; at <= n; at += 1024) out.push(range(at, Math.min(1024, n + 1 - at)));
    return out;
  };
  const cap = 1 << 20;
  assert.equal((await readActiveNamespaceIds(lister(all(cap)).identify, 0)).length, cap);
  const e = await rejectsCode(readActiveNamespaceIds(lister(all(cap + 1)).identify, 0), ErrorCode.NAMESPACE_LIST_INVALID);
  assert.equal(e.message, `active namespace list: more than ${cap} namespaces (NN 0)`);
  const big = await rejectsCode(readActiveNamespaceIds(lister(all(cap + 1)).identify, cap * 2), ErrorCode.NAMESPACE_LIST_INVALID);
  assert.equal(big.message, `active namespace list: more than ${cap} namespaces (NN ${cap * 2})`);
});
