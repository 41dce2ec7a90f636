/**
 * The control protocol codec: line splitting at every offset, the 1 MiB line limit (checked
 * before the line is buffered whole), bad JSON, missing fields and unknown verbs → stable codes,
 * response round trips, and errors mapped back to their codes on the client side.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  ControlVerb, LineDecoder, MAX_CONTROL_LINE, encodeRequest, encodeResponse, errorResponse, parseRequest, parseResponse,
  requestIdOf, responseError,
} from '../../src/wire/control';
import { controlSocketPath } from '../../src/engine/control-client';
import { connectArgsForDaemon } from '../../src/cli/daemon-client';
import { ErrorCode, NvmfNbdError } from '../../src/errors';
import { throwsCode } from '../helpers/assert-code';

function lines(d: LineDecoder): string[] {
  const out: string[] = [];
  for (let l = d.next(); l !== undefined; l = d.next()) out.push(l);
  return out;
}

test('a request survives being split at every byte offset, two per chunk stream', () => {
  const a = encodeRequest({ id: 1, verb: ControlVerb.CONNECT, args: { traddr: '127.0.0.1', trsvcid: 4420, nqn: 'nqn.x:ü' } });
  const b = encodeRequest({ id: 2, verb: ControlVerb.LIST, args: {} });
  const all = Buffer.concat([a, b]);
  for (let cut = 0; cut <= all.length; cut++) {
    const d = new LineDecoder();
    d.push(all.subarray(0, cut));
    d.push(all.subarray(cut));
    const got = lines(d).map(parseRequest);
    assert.deepEqual(got, [
      { id: 1, verb: 'connect', args: { traddr: '127.0.0.1', trsvcid: 4420, nqn: 'nqn.x:ü' } },
      { id: 2, verb: 'list', args: {} },
    ], `cut at ${cut}`);
    assert.equal(d.buffered, 0);
  }
});

test('byte-by-byte feeding yields the same lines and nothing early', () => {
  const all = Buffer.from('{"id":7,"verb":"ping"}\n{"id":8,"verb":"list"}\n');
  const d = new LineDecoder();
  const seen: string[] = [];
  for (let i = 0; i < all.length; i++) {
    d.push(all.subarray(i, i + 1));
    seen.push(...lines(d));
    if (i < 22) assert.equal(seen.length, 0);
  }
  assert.deepEqual(seen.map((l) => parseRequest(l).id), [7, 8]);
});

test('an oversize line fails as soon as it passes the limit, before the newline arrives', () => {
  const d = new LineDecoder(1024);
  d.push(Buffer.alloc(1000, 0x61));
  assert.equal(d.buffered, 1000);
  throwsCode(() => d.push(Buffer.alloc(100, 0x61)), ErrorCode.CONTROL_LINE_TOO_LONG);
  assert.equal(d.buffered, 0, 'nothing more is held');
  // The decoder stays failed: the stream cannot be resynchronised.
  throwsCode(() => d.push(Buffer.from('\n{"id":1,"verb":"ping"}\n')), ErrorCode.CONTROL_LINE_TOO_LONG);
});

test('a line of exactly the limit is accepted; the default limit is 1 MiB', () => {
  const d = new LineDecoder(16);
  d.push(Buffer.from('0123456789abcdef\n'));
  assert.deepEqual(lines(d), ['0123456789abcdef']);
  assert.equal(MAX_CONTROL_LINE, 1 << 20);
  const big = new LineDecoder();
  throwsCode(() => big.push(Buffer.alloc(MAX_CONTROL_LINE + 1, 0x20)), ErrorCode.CONTROL_LINE_TOO_LONG);
});

test('bad requests get stable codes', () => {
  throwsCode(() => parseRequest('{not json'), ErrorCode.CONTROL_PROTOCOL);
  throwsCode(() => parseRequest('[1,2]'), ErrorCode.CONTROL_PROTOCOL);
  throwsCode(() => parseRequest('{"verb":"list"}'), ErrorCode.CONTROL_PROTOCOL, 'no id');
  throwsCode(() => parseRequest('{"id":-1,"verb":"list"}'), ErrorCode.CONTROL_PROTOCOL);
  throwsCode(() => parseRequest('{"id":1.5,"verb":"list"}'), ErrorCode.CONTROL_PROTOCOL);
  throwsCode(() => parseRequest('{"id":1}'), ErrorCode.CONTROL_PROTOCOL, 'no verb');
  throwsCode(() => parseRequest('{"id":1,"verb":"list","args":[]}'), ErrorCode.CONTROL_PROTOCOL);
  throwsCode(() => parseRequest('{"id":1,"verb":"format-everything"}'), ErrorCode.CONTROL_UNKNOWN_VERB);
  throwsCode(() => parseRequest('{"id":1,"verb":"__proto__"}'), ErrorCode.CONTROL_UNKNOWN_VERB);
  assert.equal(parseRequest('{"id":3,"verb":"list"}').id, 3);
});

test('requestIdOf echoes a readable id and falls back to 0', () => {
  assert.equal(requestIdOf('{"id":42,"verb":"nope"}'), 42);
  assert.equal(requestIdOf('{"id":"x"}'), 0);
  assert.equal(requestIdOf('garbage'), 0);
});

test('responses round trip; bigints and Buffers survive as numbers / hex', () => {
  const ok = parseResponse(encodeResponse({ id: 5, ok: true, result: { n: 10n, huge: 2n ** 64n, b: Buffer.from([1, 2, 255]) } }).toString().trimEnd());
  assert.deepEqual(ok, { id: 5, ok: true, result: { n: 10, huge: '18446744073709551616', b: '0102ff' } });
  const err = parseResponse(encodeResponse(errorResponse(6, new NvmfNbdError(ErrorCode.NO_SUCH_CONTROLLER, 'no nvme9'))).toString().trimEnd());
  assert.deepEqual(err, { id: 6, ok: false, error: { code: 'CLI_ERR_NO_SUCH_CONTROLLER', message: 'no nvme9' } });
  throwsCode(() => parseResponse('{"id":1}'), ErrorCode.CONTROL_PROTOCOL);
  throwsCode(() => parseResponse('{"id":1,"ok":false,"error":{}}'), ErrorCode.CONTROL_PROTOCOL);
});

test('a result too large for one line becomes an error response, still one line', () => {
  const line = encodeResponse({ id: 9, ok: true, result: 'x'.repeat(300) }, 150);
  assert.ok(line.length <= 151);
  const r = parseResponse(line.toString().trimEnd());
  assert.equal(r.ok, false);
  assert.equal(!r.ok && r.error.code, ErrorCode.CONTROL_LINE_TOO_LONG);
});

test('an oversized request is refused by the encoder', () => {
  throwsCode(() => encodeRequest({ id: 1, verb: ControlVerb.CONNECT, args: { x: 'y'.repeat(MAX_CONTROL_LINE) } }), ErrorCode.CONTROL_LINE_TOO_LONG);
});

test('remote errors keep known codes; unknown ones become CONTROL_PROTOCOL', () => {
  assert.equal(responseError({ code: 'CLI_ERR_ALREADY_CONNECTED', message: 'm' }).code, ErrorCode.ALREADY_CONNECTED);
  assert.equal(responseError({ code: 'NVMF_ERR_NVME_STATUS', message: 'm' }).code, ErrorCode.NVME_STATUS);
  assert.equal(responseError({ code: 'INTERNAL', message: 'm' }).code, ErrorCode.CONTROL_PROTOCOL);
  assert.equal(errorResponse(1, new Error('boom')).ok, false);
});

test('control socket path: --control, then $NVMF_NBD_CONTROL, then STATE_DIR/control.sock', () => {
  assert.equal(controlSocketPath('/x/c.sock', '/state', { NVMF_NBD_CONTROL: '/env.sock' }), '/x/c.sock');
  assert.equal(controlSocketPath(undefined, '/state', { NVMF_NBD_CONTROL: '/env.sock' }), '/env.sock');
  assert.equal(controlSocketPath(undefined, '/state', {}), '/state/control.sock');
});

test('connect args sent to the daemon drop the CLI-only options and absent values', () => {
  assert.deepEqual(connectArgsForDaemon({ traddr: 'a', control: '/c', foreground: false, 'output-format': 'json', hostnqn: undefined, attach: true }), { traddr: 'a', attach: true });
});
