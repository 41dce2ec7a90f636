/**
 * NbdRequestParser.nextShared (issue 9 item 4): the transmission's per-request parse allocates no
 * request object — the parser's own object is refilled per call — while `next()` still returns
 * a new object per request. Pure.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Cmd, NbdRequestParser, encodeRequest } from '../../src/wire/nbd';

test('nextShared refills one object per request; next() returns a new one each time', () => {
  const wire = Buffer.concat([
    encodeRequest({ type: Cmd.READ, cookie: 0x0102030405060708n, offset: 4096, length: 512 }),
    encodeRequest({ type: Cmd.WRITE, flags: 1, cookie: 9n, offset: 2 ** 40, length: 4, data: Buffer.from('abcd') }),
  ]);
  const p = new NbdRequestParser(1 << 20);
  p.push(wire);
  const a = p.nextShared();
  assert.ok(a !== undefined);
  assert.deepEqual({ ...a }, { flags: 0, type: Cmd.READ, cookieHi: 0x01020304, cookieLo: 0x05060708, offset: 4096, length: 512, data: undefined });
  const b = p.nextShared();
  assert.equal(b, a, 'the same object, refilled');
  assert.deepEqual({ ...b, data: b?.data?.toString() }, { flags: 1, type: Cmd.WRITE, cookieHi: 0, cookieLo: 9, offset: 2 ** 40, length: 4, data: 'abcd' });
  assert.equal(p.nextShared(), undefined);

  const q = new NbdRequestParser(1 << 20);
  q.push(wire);
  const x = q.next();
  const y = q.next();
  assert.ok(x !== undefined && y !== undefined);
  assert.notEqual(x, y);
  assert.equal(x.type, Cmd.READ, 'the first request is not overwritten by the second');
  assert.equal(y.type, Cmd.WRITE);
});

test('nextShared: a WRITE payload over several chunks completes in the shared object', () => {
  const data = Buffer.alloc(10_000, 7);
  const wire = encodeRequest({ type: Cmd.WRITE, cookie: 5n, offset: 0, length: data.length, data });
  const p = new NbdRequestParser(1 << 20);
  for (let i = 0; i < wire.length; i += 999) {
    p.push(wire.subarray(i, i + 999));
    const r = p.nextShared();
    if (i + 999 < wire.length) assert.equal(r, undefined, `incomplete at ${i}`);
    else assert.deepEqual(r?.data, data);
  }
});
