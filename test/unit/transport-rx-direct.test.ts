/**
 * The queue pair's receive path on plain TCP (net.Socket `onread`): socket reads land in one
 * buffer per queue, and the rest of a large C2HData payload is read by the kernel straight into
 * the command's destination (PduParser.directTarget/pushDirect). These tests split PDUs across
 * socket reads at chosen points (the fake target sends piece by piece and waits until the host
 * has read each one), with and without digests, and check that a queue torn down in the middle
 * of a payload never writes into the caller's buffer again.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { QueuePair } from '../../src/transport/queue-pair';
import type { QueuePairOptions } from '../../src/transport/queue-pair';
import { ErrorCode, NvmfNbdError } from '../../src/errors';
import { encodeC2HData, encodeCapsuleResp, encodeCqe, sqeRead } from '../../src/wire';
import { FakeTarget } from '../helpers/fake-target';
import type { FakeConn } from '../helpers/fake-target';

const T = { timeout: 10_000 };

function qpOpts(port: number, o: Partial<QueuePairOptions> = {}): QueuePairOptions {
  return {
    host: '127.0.0.1', port, qid: 1, queueSize: 8, subnqn: 'nqn.test:sub', hostnqn: 'nqn.test:host', hostid: Buffer.alloc(16, 0x11),
    cntlid: 1, inCapsuleMax: 4096, connectTimeoutMs: 2000, timeoutMs: 5000, ...o,
  };
}

/** Resolve once the host has done another socket read (event-driven: polls on setImmediate). */
async function hostReadAgain(qp: QueuePair, since: number): Promise<void> {
  while (qp.rxEvents === since && qp.connected) await new Promise((r) => setImmediate(r));
}

/**
 * The fake sends `bytes` in pieces ending at `cuts` (byte offsets into `bytes`); before each
 * next piece it waits (via `step`) until the host has read the previous one, so each piece is
 * its own socket read.
 */
function pieces(bytes: Buffer, cuts: readonly number[]): Buffer[] {
  const out: Buffer[] = [];
  let at = 0;
  for (const c of [...cuts, bytes.length]) {
    if (c > at) out.push(bytes.subarray(at, c));
    at = c;
  }
  return out;
}

async function readInPieces(o: { size: number; cuts: (pduLen: number) => number[]; digests: boolean; into?: Buffer }): Promise<{ got: Buffer; qp: QueuePair }> {
  const data = randomBytes(o.size);
  let qpRef: QueuePair | undefined;
  const target = await FakeTarget.start(async (c: FakeConn) => {
    await c.acceptConnect();
    const cmd = await c.nextCommand();
    const stream = Buffer.concat([
      ...encodeC2HData({ cccid: cmd.sqe.cid, datao: 0, last: true, success: false }, data, c.opts),
      ...encodeCapsuleResp(encodeCqe({ cid: cmd.sqe.cid, sqhd: 2 }), c.opts),
    ]);
    for (const p of pieces(stream, o.cuts(stream.length))) {
      const qp = qpRef as QueuePair;
      const before = qp.rxEvents;
      c.send(p);
      await hostReadAgain(qp, before);
    }
  });
  const qp = await QueuePair.connect(qpOpts(target.port, { hdgst: o.digests, ddgst: o.digests, maxTransfer: 1 << 20 }));
  qpRef = qp;
  try {
    const r = await qp.submit(sqeRead(1, 0n, o.size / 512), o.into !== undefined ? { dataIn: o.into } : { dataInLength: o.size });
    assert.deepEqual(r.data, data);
    if (o.into !== undefined) assert.equal(r.data, o.into, 'the completion hands back the caller\'s own buffer');
    return { got: r.data as Buffer, qp };
  } finally {
    qp.destroy();
    await target.close();
  }
}

for (const digests of [false, true]) {
  const d = digests ? 'with digests' : 'no digests';
  test(`256 KiB C2HData split inside the header, the payload and the trailer (${d})`, T, async () => {
    // 3: inside the common header; 20: inside the PDU header; then payload cuts that leave
    // large rests (direct reads) and small ones (scratch), one byte before the payload's end,
    // and inside the DDGST / the CapsuleResp.
    await readInPieces({ size: 256 * 1024, digests, cuts: (n) => [3, 20, 30, 40_000, 100_000, 200_000, n - 30, n - 26, n - 10] });
  });
  test(`128 KiB C2HData in one piece, then header-only piece (${d})`, T, async () => {
    await readInPieces({ size: 128 * 1024, digests, cuts: (n) => [digests ? 28 : 24, n - 1], into: Buffer.alloc(128 * 1024, 0xaa) });
  });
}

test('a queue torn down in the middle of a payload reads nothing more into the caller\'s buffer', T, async () => {
  const size = 128 * 1024;
  const sent = 24 + 40_000;
  const dest = Buffer.alloc(size, 0xaa);
  let qpRef: QueuePair | undefined;
  let destroyed!: () => void;
  const afterDestroy = new Promise<void>((r) => { destroyed = r; });
  const target = await FakeTarget.start(async (c: FakeConn) => {
    await c.acceptConnect();
    const cmd = await c.nextCommand();
    const stream = Buffer.concat(encodeC2HData({ cccid: cmd.sqe.cid, datao: 0, last: true, success: false }, randomBytes(size), c.opts));
    const qp = qpRef as QueuePair;
    const before = qp.rxEvents;
    c.send(stream.subarray(0, sent));
    await hostReadAgain(qp, before);
    await afterDestroy;
    // The rest arrives after the teardown: the host must not place it.
    c.send(stream.subarray(sent));
    await c.closed;
  });
  const qp = await QueuePair.connect(qpOpts(target.port, { maxTransfer: 1 << 20 }));
  qpRef = qp;
  try {
    const read = qp.submit(sqeRead(1, 0n, size / 512), { dataIn: dest });
    const failed = read.then(() => assert.fail('the read completed'), (err: unknown) => err);
    const rx0 = qp.rxEvents;
    await hostReadAgain(qp, rx0);
    qp.destroy();
    const err = await failed;
    assert.ok(err instanceof NvmfNbdError);
    assert.equal(err.code, ErrorCode.CONNECTION_CLOSED);
    destroyed();
    await qp.socketClosed;
    // What had arrived before the teardown may be there; nothing after it.
    assert.ok(dest.subarray(sent - 24).every((b) => b === 0xaa), 'bytes sent after the teardown reached the caller\'s buffer');
  } finally {
    qp.destroy();
    await target.close();
  }
});
