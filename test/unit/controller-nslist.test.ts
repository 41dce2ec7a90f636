/**
 * A broken or malicious target's active namespace list (Identify CNS 02h) must not make the
 * host page forever (src/controller/controller.ts activeNamespaceIds): ids must increase and
 * exceed the starting NSID, and at most NN (≤ 2^20) are accepted → NAMESPACE_LIST_INVALID.
 * The embedded target's admin handler is wrapped to answer CNS 02h as the test says. No wall
 * clock: a host that keeps paging past RUNAWAY pages is answered with an empty page (which ends
 * any paging loop) and reported as 'runaway', so a regression fails on the count, not a timer.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { NvmeTarget } from '../../src/embedded-target/target';
import { Controller } from '../../src/controller/controller';
import { ErrorCode, NvmfNbdError } from '../../src/errors';
import { encodeNamespaceList } from '../../src/wire';
import type { ParsedSqe } from '../../src/wire';

const NQN = 'nqn.2014-08.org.nvmf-nbd:nslist';

// The target's queue looks adminCommand up on the module at each call, so wrapping the export works.
// eslint-disable-next-line @typescript-eslint/no-require-imports
const adminMod = require('../../src/embedded-target/admin') as { adminCommand: (ctx: unknown, ctrl: unknown, s: ParsedSqe, maxData: number) => unknown };
const original = adminMod.adminCommand;
after(() => { adminMod.adminCommand = original; });

/** More pages than any correct host reads here (NN caps the endless list at 1025). */
const RUNAWAY = 4096;

/** Connect with CNS 02h answered by `page(startNsid)`; resolves to the outcome ('runaway' past RUNAWAY pages). */
async function connectWith(page: (after: number) => number[]): Promise<{ outcome: string; pages: number }> {
  let pages = 0;
  adminMod.adminCommand = (ctx, ctrl, s, maxData) => {
    if (s.opcode === 0x06 && (s.cdw10 & 0xff) === 0x02) {
      pages++;
      return { dw0: 0, data: encodeNamespaceList(pages > RUNAWAY ? [] : page(s.nsid)) };
    }
    return original(ctx, ctrl, s, maxData);
  };
  const target = new NvmeTarget({ listen: { host: '127.0.0.1', port: 0 }, subsystems: [{ nqn: NQN, namespaces: [{ nsid: 1, sizeBytes: 1 << 20, backing: { memory: true } }] }] });
  const { port } = await target.listen();
  try {
    const p = Controller.connect({
      traddr: '127.0.0.1', trsvcid: port, subnqn: NQN, hostnqn: 'nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-0000000000e1',
      hostid: '00000000-0000-0000-0000-0000000000e1', nrIoQueues: 1, kato: 0,
    }).then(async (c) => { await c.close(); return 'connected'; }, (e: NvmfNbdError) => e.code);
    const outcome = await p;
    return { outcome: pages > RUNAWAY ? 'runaway' : outcome, pages };
  } finally {
    await target.close();
    adminMod.adminCommand = original;
  }
}

const full = (from: number): number[] => Array.from({ length: 1024 }, (_, i) => from + i);

test('a target that ignores the starting NSID (full page 1..1024 every time) → NAMESPACE_LIST_INVALID, no endless paging', { timeout: 120_000 }, async () => {
  const r = await connectWith(() => full(1));
  assert.equal(r.outcome, ErrorCode.NAMESPACE_LIST_INVALID);
  assert.equal(r.pages, 2);
});

test('ids not increasing within a page → NAMESPACE_LIST_INVALID', { timeout: 120_000 }, async () => {
  const r = await connectWith(() => [3, 2]);
  assert.equal(r.outcome, ErrorCode.NAMESPACE_LIST_INVALID);
});

test('an endless increasing list stops at NN (Identify Controller) → NAMESPACE_LIST_INVALID', { timeout: 120_000 }, async () => {
  const r = await connectWith((after) => full(after + 1));
  assert.equal(r.outcome, ErrorCode.NAMESPACE_LIST_INVALID);
  assert.ok(r.pages <= 1025, `${r.pages} pages read`);
});

test('a well-formed list of two pages is read whole', { timeout: 120_000 }, async () => {
  // 1024 ids on page one, then ids after the last one; Identify of the listed namespaces
  // other than 1 fails, so connect may reject — only the paging is checked here.
  const r = await connectWith((after) => (after === 0 ? full(1) : after === 1024 ? [] : [1]));
  assert.notEqual(r.outcome, ErrorCode.NAMESPACE_LIST_INVALID);
  assert.notEqual(r.outcome, 'runaway');
  assert.equal(r.pages, 2);
});
