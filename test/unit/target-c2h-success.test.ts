/**
 * The embedded target's C2HData SUCCESS modes (`c2hSuccess` / `target --c2h-success`): `spec`
 * (only when the host disabled SQ flow control), `spdk` (always, like SPDK's nvmf_tgt) and
 * `always-resp` (never), seen through raw PDUs.
 */
import { strict as assert } from 'node:assert';
import { randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import { sqeFlush, sqeRead, sqeWrite } from '../../src/wire';
import { C2hSuccessMode, NvmeTarget } from '../../src/embedded-target';
import type { C2hSuccessMode as Mode } from '../../src/embedded-target';
import { ErrorCode, NvmfNbdError } from '../../src/errors';
import { connectAdmin, connectIo, enable, RawHost } from './target-rawhost';
import { throwsCode } from '../helpers/assert-code';

const NQN = 'nqn.2014-08.org.nvmf-nbd:test-c2h';
const T = { timeout: 10_000 };

/** One read on a fresh association; whether it ended with SUCCESS and whether a CapsuleResp followed. */
async function readOnce(mode: Mode, disableSqFc: boolean): Promise<{ viaSuccess: boolean; stray: number }> {
  const target = new NvmeTarget({
    listen: { host: '127.0.0.1', port: 0 }, c2hSuccess: mode,
    subsystems: [{ nqn: NQN, namespaces: [{ sizeBytes: 1 << 20, backing: { memory: true } }] }],
  });
  const { port } = await target.listen();
  try {
    const admin = await RawHost.connect(port);
    await admin.icreq();
    const c = await connectAdmin(admin, NQN, { kato: 5000 });
    assert.equal(await enable(admin), 1);
    const io = await RawHost.connect(port);
    await io.icreq();
    assert.equal((await connectIo(io, NQN, c.cqe.dw0, { sqsize: 31, disableSqFc })).cqe.ok, true);
    const data = randomBytes(4096);
    assert.equal((await io.submit(sqeWrite(1, 8n, 8, false), { write: data })).cqe.ok, true);
    const r = await io.submit(sqeRead(1, 8n, 8), { readLength: 4096 });
    assert.deepEqual(r.data, data);
    // A later command's completion: a CapsuleResp for the read would have come before it (one stream).
    assert.equal((await io.submit(sqeFlush(1))).cqe.ok, true);
    const out = { viaSuccess: r.viaSuccess === true, stray: io.stray.length };
    io.close();
    admin.close();
    return out;
  } finally {
    await target.close();
  }
}

describe('target: C2HData SUCCESS modes', () => {
  it('spec: SUCCESS only when the host disabled SQ flow control', T, async () => {
    assert.deepEqual(await readOnce(C2hSuccessMode.SPEC, false), { viaSuccess: false, stray: 0 });
    assert.deepEqual(await readOnce(C2hSuccessMode.SPEC, true), { viaSuccess: true, stray: 0 });
  });
  it('spdk: SUCCESS on every successful read, flow control on or off, and no CapsuleResp after it', T, async () => {
    assert.deepEqual(await readOnce(C2hSuccessMode.SPDK, false), { viaSuccess: true, stray: 0 });
    assert.deepEqual(await readOnce(C2hSuccessMode.SPDK, true), { viaSuccess: true, stray: 0 });
  });
  it('always-resp: a CapsuleResp even when the host disabled SQ flow control', T, async () => {
    assert.deepEqual(await readOnce(C2hSuccessMode.ALWAYS_RESP, false), { viaSuccess: false, stray: 0 });
    assert.deepEqual(await readOnce(C2hSuccessMode.ALWAYS_RESP, true), { viaSuccess: false, stray: 0 });
  });
  it('an unknown mode is a configuration error', () => {
    throwsCode(() => new NvmeTarget({ c2hSuccess: 'sometimes' as Mode }), ErrorCode.CFG_INVALID);
  });
});
