/**
 * Zero-intermediate-copy reads: the PduParser `placeData` hook copies a data PDU's payload
 * straight from the pushed chunks into the destination (split at every offset), QueuePair
 * `submit({ dataIn })` resolves with the caller's own buffer, and Controller-style MDTS splits
 * land in views of one buffer.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { ErrorCode, NvmfNbdError } from '../../src/errors';
import { PduParser, encodeC2HData, encodeCapsuleResp, encodeCqe, encodeH2CData, sqeRead } from '../../src/wire';
import type { Pdu } from '../../src/wire';
import { QueuePair } from '../../src/transport/queue-pair';
import { Controller } from '../../src/controller/controller';
import { FakeTarget, serveController } from '../helpers/fake-target';
import type { ControllerModel, FakeConn } from '../helpers/fake-target';
import { throwsCode, rejectsCode } from '../helpers/assert-code';

const T = { timeout: 5000 };

function c2hStream(payload: Buffer, datao: number, ddgst: boolean): Buffer {
  const o = { hdgst: false, ddgst, pda: 0 };
  return Buffer.concat([
    ...encodeC2HData({ cccid: 3, datao, last: true, success: false }, payload, o),
    ...encodeCapsuleResp(encodeCqe({ sqhd: 1, cid: 3 }), o),
  ]);
}

for (const ddgst of [false, true]) {
  test(`placeData: a C2HData split at every offset lands in the destination, never assembled elsewhere (ddgst ${ddgst})`, () => {
    const payload = randomBytes(300);
    const stream = c2hStream(payload, 512, ddgst);
    for (let cut = 1; cut < stream.length; cut++) {
      const dest = Buffer.alloc(1024, 0xee);
      const calls: Array<[number, number, number, number, number]> = [];
      const p = new PduParser({
        role: 'host',
        maxData: 4096,
        placeData: (type, cccid, ttag, datao, datal) => {
          calls.push([type, cccid, ttag, datao, datal]);
          return dest.subarray(datao, datao + datal);
        },
      });
      p.setDigests(false, ddgst);
      const got: Pdu[] = [];
      let maxBuffered = 0;
      for (const part of [stream.subarray(0, cut), stream.subarray(cut)]) {
        // Feed byte-sized pieces of the second half too, so the payload arrives in many pieces.
        if (part.length > 0) p.push(Buffer.from(part), (x) => got.push(x));
        maxBuffered = Math.max(maxBuffered, p.buffered);
      }
      assert.deepEqual(calls, [[0x07, 3, 0, 512, 300]], `cut ${cut}`);
      assert.equal(got.length, 2, `cut ${cut}`);
      const c2h = got[0] as Extract<Pdu, { type: 0x07 }>;
      assert.equal(c2h.type, 0x07);
      assert.equal(c2h.data.buffer, dest.buffer, `cut ${cut}: delivered data is the destination itself`);
      assert.equal(c2h.data.byteOffset, dest.byteOffset + 512);
      assert.equal(c2h.dataDigestOk, true);
      assert.deepEqual(dest.subarray(512, 812), payload, `cut ${cut}`);
      assert.equal(dest[511], 0xee, 'nothing written before datao');
      assert.equal(dest[812], 0xee, 'nothing written after the payload');
      // Only header bytes are ever held by the parser, never payload.
      assert.ok(maxBuffered <= 132, `cut ${cut}: parser held ${maxBuffered} bytes`);
    }
  });
}

test('placeData with one byte per push: every piece goes to the destination', () => {
  const payload = randomBytes(64);
  const stream = c2hStream(payload, 0, true);
  const dest = Buffer.alloc(64);
  const p = new PduParser({ role: 'host', maxData: 4096, placeData: () => dest });
  p.setDigests(false, true);
  const got: Pdu[] = [];
  for (let i = 0; i < stream.length; i++) p.push(stream.subarray(i, i + 1), (x) => got.push(x));
  assert.equal((got[0] as Extract<Pdu, { type: 0x07 }>).data, dest);
  assert.deepEqual(dest, payload);
});

test('placeData: a bad data digest is still reported (dataDigestOk false)', () => {
  const payload = randomBytes(100);
  const stream = c2hStream(payload, 0, true);
  // Corrupt the DDGST (right after the 24-byte header and 100 data bytes).
  stream[24 + 100] = (stream[24 + 100] as number) ^ 0xff;
  const dest = Buffer.alloc(100);
  const p = new PduParser({ role: 'host', maxData: 4096, placeData: () => dest });
  p.setDigests(false, true);
  const got: Pdu[] = [];
  p.push(stream, (x) => got.push(x));
  assert.equal((got[0] as Extract<Pdu, { type: 0x07 }>).dataDigestOk, false);
});

test('placeData returning undefined keeps the default delivery (a view of the chunk)', () => {
  const payload = randomBytes(100);
  const stream = c2hStream(payload, 0, false);
  const p = new PduParser({ role: 'host', maxData: 4096, placeData: () => undefined });
  const got: Pdu[] = [];
  p.push(stream, (x) => got.push(x));
  const c2h = got[0] as Extract<Pdu, { type: 0x07 }>;
  assert.equal(c2h.data.buffer, stream.buffer, 'a view into the pushed chunk');
  assert.deepEqual(c2h.data, payload);
});

test('placeData throwing fails the parser with that error before the payload is read', () => {
  const stream = c2hStream(randomBytes(100), 0, false);
  const p = new PduParser({
    role: 'host',
    maxData: 4096,
    placeData: () => { throw new NvmfNbdError(ErrorCode.UNKNOWN_CCCID, 'no such command', { fes: 1, fei: 8 }); },
  });
  throwsCode(() => p.push(stream.subarray(0, 24), () => undefined), ErrorCode.UNKNOWN_CCCID);
  throwsCode(() => p.push(stream.subarray(24), () => undefined), ErrorCode.UNKNOWN_CCCID);
});

test('QueuePair submit({ dataIn }): C2HData PDUs land in the caller buffer, resolved with that same buffer', T, async () => {
  const data = randomBytes(10000);
  const target = await FakeTarget.start(async (c: FakeConn) => {
    await c.acceptConnect();
    const cmd = await c.nextCommand();
    assert.equal(cmd.sqe.sgl.length, 10000);
    c.c2h(cmd.sqe.cid, 0, data.subarray(0, 3000), { last: false });
    c.c2h(cmd.sqe.cid, 3000, data.subarray(3000, 9000), { last: false });
    c.c2h(cmd.sqe.cid, 9000, data.subarray(9000), { last: true });
    c.respond(cmd.sqe.cid, { sqhd: 2 });
  });
  const qp = await QueuePair.connect({
    host: '127.0.0.1', port: target.port, qid: 1, queueSize: 8, subnqn: 'nqn.test:sub', hostnqn: 'nqn.test:host',
    hostid: Buffer.alloc(16, 0x11), cntlid: 1, connectTimeoutMs: 2000, timeoutMs: 2000,
  });
  try {
    // The destination is a view in the middle of a larger buffer (as Controller.read passes).
    const whole = Buffer.alloc(12000, 0xaa);
    const dest = whole.subarray(1000, 11000);
    const r = await qp.submit(sqeRead(1, 0n, 20), { dataIn: dest });
    assert.equal(r.data, dest, 'completion data is the caller buffer itself');
    assert.deepEqual(dest, data);
    assert.equal(whole[999], 0xaa);
    assert.equal(whole[11000], 0xaa);
    assert.equal(qp.stats().bytesIn, 10000);
  } finally {
    qp.destroy();
    await target.close();
  }
});

test('Controller.read(…, into): MDTS-split commands fill views of the one destination, resolved with it', T, async () => {
  const m: ControllerModel = { namespaces: new Map([[1, { data: Buffer.alloc(1 << 20), lbaSize: 512 }]]), seen: [], mdts: 1 };
  const target = await FakeTarget.start((c) => serveController(c, m));
  const ctrl = await Controller.connect({
    traddr: '127.0.0.1', trsvcid: target.port, subnqn: 'nqn.2024-01.io.test:sub-a',
    hostnqn: 'nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-000000000001',
    hostid: '00000000-0000-0000-0000-000000000001', nrIoQueues: 2, queueSize: 16, kato: 0, connectTimeoutMs: 2000, ioTimeoutMs: 2000,
  });
  try {
    assert.equal(ctrl.maxTransfer, 8192);
    const data = randomBytes(64 * 1024);
    await ctrl.write(1, 10n, data);
    const before = m.seen?.length ?? 0;
    const whole = Buffer.alloc(data.length + 2, 0x55);
    const into = whole.subarray(1, 1 + data.length);
    const back = await ctrl.read(1, 10n, 128, into);
    assert.equal(back, into, 'resolved with the destination itself');
    assert.deepEqual(into, data);
    assert.equal(whole[0], 0x55);
    assert.equal(whole[whole.length - 1], 0x55);
    assert.equal((m.seen ?? []).slice(before).filter((s) => s.opcode === 0x02).length, 8, 'split in 8 commands');
    await rejectsCode(ctrl.read(1, 0n, 2, Buffer.alloc(100)), ErrorCode.INVALID_ARGUMENT);
  } finally {
    await ctrl.close();
    await target.close();
  }
});

test('placeData on the controller side: H2CData reports its ttag and lands in the destination', () => {
  const payload = randomBytes(200);
  const o = { hdgst: true, ddgst: true, pda: 0 };
  const stream = Buffer.concat(encodeH2CData({ cccid: 9, ttag: 0x1234, datao: 4096, last: true }, payload, o));
  for (let cut = 1; cut < stream.length; cut += 7) {
    const dest = Buffer.alloc(200);
    const seen: number[][] = [];
    const p = new PduParser({ role: 'controller', maxData: 8192, placeData: (...a) => { seen.push(a); return dest; } });
    p.setDigests(true, true);
    const got: Pdu[] = [];
    p.push(stream.subarray(0, cut), (x) => got.push(x));
    p.push(stream.subarray(cut), (x) => got.push(x));
    assert.deepEqual(seen, [[0x06, 9, 0x1234, 4096, 200]]);
    const h2c = got[0] as Extract<Pdu, { type: 0x06 }>;
    assert.equal(h2c.data, dest, `cut ${cut}`);
    assert.equal(h2c.dataDigestOk, true);
    assert.deepEqual(dest, payload);
  }
});
