/**
 * The target's `flushEvery`: answers to commands that arrived in one socket read leave in
 * several writevs of at most N messages each, not in one at the end of the iteration; and the
 * option is range-checked.
 */
import { strict as assert } from 'node:assert';
import * as net from 'node:net';
import { describe, it } from 'node:test';
import { sqeRead } from '../../src/wire';
import { NvmeTarget } from '../../src/embedded-target';
import { ErrorCode } from '../../src/errors';
import { throwsCode } from '../helpers/assert-code';
import { openIoQueue } from './target-rawhost';

const NQN = 'nqn.2014-08.org.nvmf-nbd:test-flush';
const T = { timeout: 10_000 };

type Patched = { localPort?: number; _writev: (...a: unknown[]) => unknown; _write: (...a: unknown[]) => unknown };

/** Runs 12 reads that reach the target in one TCP segment; returns how many socket writes the target made for them. */
async function targetWritesFor12Reads(flushEvery: number): Promise<number> {
  const target = new NvmeTarget({
    listen: { host: '127.0.0.1', port: 0 },
    subsystems: [{ nqn: NQN, namespaces: [{ sizeBytes: 1 << 20, backing: { memory: true } }] }],
    flushEvery,
  });
  const port = (await target.listen()).port;
  const proto = net.Socket.prototype as unknown as Patched;
  const origV = proto._writev;
  const origW = proto._write;
  let writes = 0;
  try {
    const { admin, io } = await openIoQueue(port, NQN);
    proto._writev = function (this: Patched, ...a: unknown[]) { if (this.localPort === port) writes++; return origV.apply(this, a); };
    proto._write = function (this: Patched, ...a: unknown[]) { if (this.localPort === port) writes++; return origW.apply(this, a); };
    io.sock.cork(); // all 12 capsules in one segment: the target reads them in one go
    const replies = Array.from({ length: 12 }, (_, i) => io.submit(sqeRead(1, BigInt(i * 8), 8), { readLength: 4096 }));
    io.sock.uncork();
    for (const r of await Promise.all(replies)) assert.equal(r.cqe.ok, true);
    proto._writev = origV;
    proto._write = origW;
    io.close();
    admin.close();
    return writes;
  } finally {
    proto._writev = origV;
    proto._write = origW;
    await target.close();
  }
}

describe('target flushEvery', () => {
  it('flushEvery 2: 12 reads (24 answers: C2HData + CapsuleResp each) leave in at least 12 writes', T, async () => {
    assert.ok(await targetWritesFor12Reads(2) >= 12);
  });

  it('flushEvery 0 (once per iteration) makes fewer writes than flushEvery 2 for the same reads', T, async () => {
    // Not an exact count: TCP may still split the capsules over reads; one batch per read then.
    const once = await targetWritesFor12Reads(0);
    assert.ok(once >= 1 && once < 12, `${once} writes`);
  });

  it('is range-checked: CFG_INVALID for negative, fractional and too large values', () => {
    for (const flushEvery of [-1, 1.5, 65537, Number.NaN]) throwsCode(() => new NvmeTarget({ flushEvery }), ErrorCode.CFG_INVALID);
  });
});
