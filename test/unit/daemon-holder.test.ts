/**
 * The sticky-endpoint holder's stream trackers (pure): the client's handshake is recorded byte
 * for byte (to be replayed to a restarted daemon), requests and replies are cut whole at every
 * split offset, the export size is read from NBD_INFO_EXPORT / the EXPORT_NAME reply, and bad
 * input gets stable codes before anything large is buffered.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { NbdClientStream, NbdServerStream } from '../../src/wire/nbd-relay';
import {
  Cmd, InfoType, Opt, encodeExportNameReply, encodeGreeting, encodeInfoBlockSize, encodeInfoExport, encodeInfoRequest, encodeOption,
  Rep, encodeRepAck, encodeRepError, encodeRepServer, encodeRequest, encodeSimpleReply,
} from '../../src/wire/nbd';
import { ErrorCode } from '../../src/errors';
import { throwsCode } from '../helpers/assert-code';

const SIZE = 64 * 1024 * 1024;

function clientFlags(f: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(f, 0);
  return b;
}

const clientHandshake = Buffer.concat([clientFlags(3), encodeOption(Opt.LIST), encodeOption(Opt.GO, encodeInfoRequest('nvme0n1', [InfoType.BLOCK_SIZE]))]);
const serverHandshake = Buffer.concat([
  encodeGreeting(), encodeRepServer(Opt.LIST, 'nvme0n1'), encodeRepAck(Opt.LIST),
  encodeInfoExport(Opt.GO, SIZE, 1), encodeInfoBlockSize(Opt.GO, 512, 4096, 32 << 20), encodeRepAck(Opt.GO),
]);
const data = Buffer.alloc(4096, 0xab);
const requests = Buffer.concat([
  encodeRequest({ type: Cmd.WRITE, cookie: 1n, offset: 0, length: 4096, data }),
  encodeRequest({ type: Cmd.READ, cookie: 2n, offset: 4096, length: 8192 }),
  encodeRequest({ type: Cmd.FLUSH, cookie: 3n, offset: 0, length: 0 }),
]);
const replies = Buffer.concat([encodeSimpleReply(0, 0, 2), Buffer.alloc(8192, 0xcd), encodeSimpleReply(0, 0, 1), encodeSimpleReply(5, 0, 3)]);

test('client handshake is recorded exactly; requests come out whole at every split', () => {
  const all = Buffer.concat([clientHandshake, requests]);
  for (let cut = 0; cut <= all.length; cut += cut < clientHandshake.length + 40 ? 1 : 97) {
    const c = new NbdClientStream();
    const got = [...c.push(all.subarray(0, Math.min(cut, clientHandshake.length)))];
    if (cut >= clientHandshake.length) {
      c.startTransmission();
      got.push(...c.push(all.subarray(clientHandshake.length, cut)), ...c.push(all.subarray(cut)));
    } else {
      got.push(...c.push(all.subarray(cut, clientHandshake.length)));
      c.startTransmission();
      got.push(...c.push(all.subarray(clientHandshake.length)));
    }
    assert.deepEqual(Buffer.concat(c.handshake), clientHandshake, `cut ${cut}`);
    assert.equal(c.lastOption, Opt.GO);
    assert.deepEqual(got.map((r) => [r.cookie, r.type, r.length, r.size]), [[1n, Cmd.WRITE, 4096, 28 + 4096], [2n, Cmd.READ, 8192, 28], [3n, Cmd.FLUSH, 0, 28]]);
    assert.deepEqual(Buffer.concat(got[0]?.bytes ?? []), requests.subarray(0, 28 + 4096), 'write re-sendable byte for byte');
  }
});

test('server handshake ends at the GO ACK with the export size; replies are whole at every split', () => {
  const inflight = new Map<bigint, { type: number; length: number }>([[1n, { type: Cmd.WRITE, length: 4096 }], [2n, { type: Cmd.READ, length: 8192 }], [3n, { type: Cmd.FLUSH, length: 0 }]]);
  const all = Buffer.concat([serverHandshake, replies]);
  for (let cut = 0; cut <= all.length; cut += cut < serverHandshake.length + 40 ? 1 : 89) {
    const c = new NbdClientStream();
    c.push(clientHandshake);
    const s = new NbdServerStream(c, (k) => inflight.get(k));
    const a = s.push(all.subarray(0, cut));
    const b = s.push(all.subarray(cut));
    assert.equal(a.done || b.done, true, `cut ${cut}`);
    assert.equal(a.done, cut >= serverHandshake.length);
    assert.equal(s.info.size, BigInt(SIZE));
    // The handshake's end stops parsing (the relay registers pipelined requests first); an
    // empty push goes on.
    const rest = s.push(Buffer.alloc(0));
    const got = [...a.replies, ...b.replies, ...rest.replies];
    assert.deepEqual(got.map((r) => [r.cookie, Buffer.concat(r.bytes).length]), [[2n, 16 + 8192], [1n, 16], [3n, 16]], `cut ${cut}`);
    // The client stream now parses requests.
    assert.equal(c.push(encodeRequest({ type: Cmd.FLUSH, cookie: 9n, offset: 0, length: 0 })).length, 1);
  }
});

test('EXPORT_NAME handshakes end after size + flags (+124 zeroes without NO_ZEROES)', () => {
  for (const noZeroes of [true, false]) {
    const c = new NbdClientStream();
    c.push(Buffer.concat([clientFlags(noZeroes ? 3 : 1), encodeOption(Opt.EXPORT_NAME, Buffer.from('nvme0n1'))]));
    const s = new NbdServerStream(c, () => undefined);
    const r = s.push(Buffer.concat([encodeGreeting(), encodeExportNameReply(SIZE, 1, noZeroes)]));
    assert.equal(r.done, true);
    assert.equal(s.info.size, BigInt(SIZE));
  }
});

test('bad input: stable codes, nothing large buffered', () => {
  const big = Buffer.concat([clientFlags(3), encodeOption(Opt.GO).subarray(0, 12), Buffer.from([0, 1, 0, 1])]);
  throwsCode(() => new NbdClientStream().push(big), ErrorCode.NBD_OPTION_TOO_LARGE);
  throwsCode(() => new NbdClientStream().push(Buffer.concat([clientFlags(3), Buffer.alloc(16)])), ErrorCode.NBD_PROTOCOL);
  const t = new NbdClientStream();
  t.startTransmission();
  throwsCode(() => t.push(Buffer.alloc(28)), ErrorCode.NBD_BAD_MAGIC);
  const w = new NbdClientStream(1 << 20);
  w.startTransmission();
  const hdr = encodeRequest({ type: Cmd.WRITE, cookie: 1n, offset: 0, length: 1, data: Buffer.alloc(1) }).subarray(0, 28);
  hdr.writeUInt32BE(64 << 20, 24);
  throwsCode(() => w.push(hdr), ErrorCode.NBD_REQUEST_TOO_LARGE);
  const c = new NbdClientStream();
  c.push(clientHandshake);
  const s = new NbdServerStream(c, () => undefined);
  s.push(serverHandshake);
  throwsCode(() => s.push(encodeSimpleReply(0, 0, 77)), ErrorCode.NBD_PROTOCOL, 'reply for a cookie not in flight');
  throwsCode(() => new NbdServerStream(c, () => undefined).push(Buffer.alloc(18)), ErrorCode.NBD_PROTOCOL);
  // Replaying the handshake to a restarted server: a refused GO ends the held connection.
  const refused = Buffer.concat([encodeGreeting(), encodeRepError(Opt.GO, Rep.ERR_UNKNOWN, 'no such export')]);
  throwsCode(() => new NbdServerStream(c, () => undefined, true).push(refused), ErrorCode.NBD_UNKNOWN_EXPORT);
  assert.equal(new NbdServerStream(c, () => undefined, false).push(refused).done, false, 'a first handshake may go on after a refusal');
});
