import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as net from 'node:net';
import { Writable } from 'node:stream';
import { WriteBatcher } from '../../src/net/write-batcher';

/** A Writable that records each _write / _writev call as one batch. */
function recorder(): { sink: Writable; batches: Buffer[][] } {
  const batches: Buffer[][] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      batches.push([chunk]);
      cb();
    },
    writev(chunks, cb) {
      batches.push(chunks.map((c) => c.chunk as Buffer));
      cb();
    },
  });
  return { sink, batches };
}

test('many writes in one iteration leave in one writev, in order, uncopied', async () => {
  const { sink, batches } = recorder();
  const b = new WriteBatcher(sink);
  const bufs = Array.from({ length: 40 }, (_, i) => Buffer.from([i]));
  for (let i = 0; i < 20; i++) b.write(bufs[i] as Buffer);
  b.writeAll(bufs.slice(20));
  assert.equal(b.corked, true);
  assert.equal(batches.length, 0, 'nothing leaves before the check phase');
  await new Promise((r) => setImmediate(r));
  assert.equal(b.corked, false);
  assert.equal(batches.length, 1);
  const got = batches[0] as Buffer[];
  assert.equal(got.length, 40);
  for (let i = 0; i < 40; i++) assert.equal(got[i], bufs[i], `buffer ${i} is the same object (no copy)`);
});

test('writes made by promise callbacks and timers of the same iteration join the batch', async () => {
  const { sink, batches } = recorder();
  const b = new WriteBatcher(sink);
  // Like a socket read that resolves several command promises, each replying through a chain.
  const chains: Promise<void>[] = [];
  for (let i = 0; i < 5; i++) {
    chains.push(Promise.resolve(i).then((v) => v + 1).then((v) => { b.write(Buffer.from([v])); }));
  }
  b.write(Buffer.from([0]));
  // A nextTick callback of the same iteration joins too.
  process.nextTick(() => b.write(Buffer.from([6])));
  await Promise.all(chains);
  await new Promise((r) => setImmediate(r));
  assert.equal(batches.length, 1);
  const got = (batches[0] as Buffer[]).map((x) => x[0] as number);
  assert.equal(got[0], 0, 'the synchronous write comes first');
  assert.deepEqual([...got].sort((a, b) => a - b), [0, 1, 2, 3, 4, 5, 6]);
});

test('separate iterations are separate batches; flush() sends at once and is idempotent', async () => {
  const { sink, batches } = recorder();
  const b = new WriteBatcher(sink);
  b.write(Buffer.from('a'));
  b.flush();
  b.flush();
  assert.equal(batches.length, 1);
  await new Promise((r) => setImmediate(r));
  b.write(Buffer.from('b'));
  b.write(Buffer.from('c'));
  await new Promise((r) => setImmediate(r));
  assert.equal(batches.length, 2);
  assert.deepEqual((batches[1] as Buffer[]).map((x) => x.toString()), ['b', 'c']);
});

test('a real TCP socket gets one writev for an iteration of writes', { timeout: 5000 }, async () => {
  const received: Buffer[] = [];
  const server = net.createServer((s) => s.on('data', (c: Buffer) => received.push(c)));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as net.AddressInfo).port;
  const sock = net.connect(port, '127.0.0.1');
  await new Promise((r) => sock.once('connect', r));
  let writevCalls = 0;
  let writeCalls = 0;
  const s = sock as unknown as { _writev: (...a: unknown[]) => unknown; _write: (...a: unknown[]) => unknown };
  const origV = s._writev.bind(sock);
  const origW = s._write.bind(sock);
  s._writev = (...a: unknown[]) => { writevCalls++; return origV(...a); };
  s._write = (...a: unknown[]) => { writeCalls++; return origW(...a); };
  const b = new WriteBatcher(sock);
  for (let i = 0; i < 32; i++) b.write(Buffer.alloc(16, i));
  await new Promise((r) => setImmediate(r));
  assert.equal(writevCalls, 1);
  assert.equal(writeCalls, 0);
  await new Promise<void>((r) => {
    const check = (): void => {
      if (Buffer.concat(received).length >= 512) r();
      else setTimeout(check, 5);
    };
    check();
  });
  const all = Buffer.concat(received);
  for (let i = 0; i < 32; i++) assert.equal(all[i * 16], i);
  sock.destroy();
  await new Promise((r) => server.close(r));
});

test('flushEvery N hands each N messages over at once, in order, and the rest in the check phase', async () => {
  const { sink, batches } = recorder();
  const b = new WriteBatcher(sink, 3);
  const bufs = Array.from({ length: 8 }, (_, i) => Buffer.from([i]));
  b.write(bufs[0] as Buffer);
  b.writeAll([bufs[1] as Buffer, bufs[2] as Buffer]); // one message of two parts
  assert.equal(batches.length, 0, 'two messages: still held');
  b.writeThen(bufs[3] as Buffer, () => {});
  assert.equal(batches.length, 1, 'the third message hands the batch over synchronously');
  assert.deepEqual((batches[0] as Buffer[]).map((x) => x[0]), [0, 1, 2, 3]);
  assert.equal(b.corked, true, 'still corked for the rest of the iteration');
  for (let i = 4; i < 8; i++) b.write(bufs[i] as Buffer);
  assert.equal(batches.length, 2, 'messages 4..6 are the second batch');
  assert.deepEqual((batches[1] as Buffer[]).map((x) => x[0]), [4, 5, 6]);
  await new Promise((r) => setImmediate(r));
  assert.equal(batches.length, 3);
  assert.deepEqual((batches[2] as Buffer[]).map((x) => x[0]), [7]);
  assert.equal(b.corked, false);
  // The count starts again in the next iteration: two messages are held until the check phase.
  b.write(Buffer.from([8]));
  b.write(Buffer.from([9]));
  assert.equal(batches.length, 3);
  await new Promise((r) => setImmediate(r));
  assert.deepEqual((batches[3] as Buffer[]).map((x) => x[0]), [8, 9]);
});

test('flush() resets the flushEvery count', async () => {
  const { sink, batches } = recorder();
  const b = new WriteBatcher(sink, 2);
  b.write(Buffer.from([0]));
  b.flush();
  b.write(Buffer.from([1]));
  assert.equal(batches.length, 1, 'one message since the flush: held');
  b.write(Buffer.from([2]));
  assert.equal(batches.length, 2);
  assert.deepEqual((batches[1] as Buffer[]).map((x) => x[0]), [1, 2]);
  await new Promise((r) => setImmediate(r));
  assert.equal(batches.length, 2, 'nothing left for the check phase');
});
