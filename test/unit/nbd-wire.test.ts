/**
 * NBD codecs: byte fixtures for every message, parsers fed at every split offset, limits
 * checked before buffering.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ErrorCode } from '../../src/errors';
import {
  ChunkQueue,
  Cmd,
  CmdFlag,
  InfoType,
  NbdErrno,
  NbdOptionParser,
  NbdRequestParser,
  Opt,
  Rep,
  ReplyFlag,
  cookieOf,
  encodeBlockStatus,
  encodeChunkError,
  encodeChunkHeader,
  encodeChunkNone,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoBlockSize,
  encodeInfoDescription,
  encodeInfoExport,
  encodeInfoName,
  encodeInfoRequest,
  encodeMetaContextRequest,
  encodeOffsetDataHeader,
  encodeOffsetHole,
  encodeOption,
  encodeOptionReply,
  encodeRepAck,
  encodeRepError,
  encodeRepMetaContext,
  encodeRepServer,
  encodeRequest,
  encodeSimpleReply,
  nbdErrno,
  parseInfoRequest,
  parseMetaContextRequest,
  type HandshakeEvent,
  type NbdRequest,
} from '../../src/wire/nbd';
import { throwsCode } from '../helpers/assert-code';

const hex = (b: Buffer): string => b.toString('hex');
const REPLY_MAGIC = '0003e889045565a9';

test('greeting: NBDMAGIC IHAVEOPT, FIXED_NEWSTYLE|NO_ZEROES', () => {
  assert.equal(hex(encodeGreeting()), '4e42444d41474943' + '49484156454f5054' + '0003');
});

test('option reply fixtures', () => {
  assert.equal(hex(encodeRepAck(Opt.GO)), REPLY_MAGIC + '00000007' + '00000001' + '00000000');
  assert.equal(hex(encodeOptionReply(3, Rep.SERVER, Buffer.from('ab'))), REPLY_MAGIC + '00000003' + '00000002' + '00000002' + '6162');
  assert.equal(hex(encodeRepError(99, Rep.ERR_UNSUP)), REPLY_MAGIC + '00000063' + '80000001' + '00000000');
  assert.equal(hex(encodeRepError(7, Rep.ERR_UNKNOWN, 'x')), REPLY_MAGIC + '00000007' + '80000006' + '00000001' + '78');
  assert.equal(hex(encodeRepError(0, Rep.ERR_TOO_BIG)), REPLY_MAGIC + '00000000' + '80000009' + '00000000');
  // SERVER: name length, name, description
  assert.equal(hex(encodeRepServer(Opt.LIST, 'ab', 'd')), REPLY_MAGIC + '00000003' + '00000002' + '00000007' + '00000002' + '6162' + '64');
  // INFO EXPORT: type 0, size u64, flags u16
  assert.equal(
    hex(encodeInfoExport(Opt.GO, 0x1_0000_0200, 0x0d6f)),
    REPLY_MAGIC + '00000007' + '00000003' + '0000000c' + '0000' + '0000000100000200' + '0d6f',
  );
  assert.equal(hex(encodeInfoName(Opt.INFO, 'n')), REPLY_MAGIC + '00000006' + '00000003' + '00000003' + '0001' + '6e');
  assert.equal(hex(encodeInfoDescription(Opt.INFO, 'dd')), REPLY_MAGIC + '00000006' + '00000003' + '00000004' + '0002' + '6464');
  assert.equal(
    hex(encodeInfoBlockSize(Opt.GO, 512, 4096, 32 << 20)),
    REPLY_MAGIC + '00000007' + '00000003' + '0000000e' + '0003' + '00000200' + '00001000' + '02000000',
  );
  assert.equal(
    hex(encodeRepMetaContext(Opt.SET_META_CONTEXT, 1, 'base:allocation')),
    REPLY_MAGIC + '0000000a' + '00000004' + '00000013' + '00000001' + Buffer.from('base:allocation').toString('hex'),
  );
});

test('EXPORT_NAME reply: 10 bytes with NO_ZEROES, 134 without', () => {
  const short = encodeExportNameReply(1 << 20, 0x0001, true);
  assert.equal(hex(short), '0000000000100000' + '0001');
  const long = encodeExportNameReply(1 << 20, 0x0001, false);
  assert.equal(long.length, 134);
  assert.equal(hex(long.subarray(0, 10)), hex(short));
  assert.ok(long.subarray(10).every((b) => b === 0));
});

test('transmission reply fixtures', () => {
  assert.equal(hex(encodeSimpleReply(22, 0x01020304, 0x05060708)), '67446698' + '00000016' + '0102030405060708');
  assert.equal(hex(encodeChunkHeader(1, 5, 0, 9, 12)), '668e33ef' + '0001' + '0005' + '0000000000000009' + '0000000c');
  assert.equal(hex(encodeChunkNone(0, 1)), '668e33ef' + '0001' + '0000' + '0000000000000001' + '00000000');
  // OFFSET_DATA header: length = 8 + data, then the offset
  assert.equal(
    hex(encodeOffsetDataHeader(ReplyFlag.DONE, 0, 2, 0x1_0000_1000, 4096)),
    '668e33ef' + '0001' + '0001' + '0000000000000002' + '00001008' + '0000000100001000',
  );
  assert.equal(
    hex(encodeOffsetHole(0, 0, 3, 512, 1024)),
    '668e33ef' + '0000' + '0002' + '0000000000000003' + '0000000c' + '0000000000000200' + '00000400',
  );
  assert.equal(
    hex(encodeBlockStatus(ReplyFlag.DONE, 0, 4, 1, [{ length: 65536, flags: 0 }, { length: 512, flags: 3 }])),
    '668e33ef' + '0001' + '0005' + '0000000000000004' + '00000014' + '00000001' + '00010000' + '00000000' + '00000200' + '00000003',
  );
  assert.equal(
    hex(encodeChunkError(ReplyFlag.DONE, 0, 5, NbdErrno.EIO, 'e')),
    '668e33ef' + '0001' + '8001' + '0000000000000005' + '00000007' + '00000005' + '0001' + '65',
  );
});

test('request encoder fixture and cookie halves', () => {
  const b = encodeRequest({ flags: CmdFlag.FUA, type: Cmd.WRITE, cookie: 0x1122334455667788n, offset: 4096, length: 2, data: Buffer.from([9, 8]) });
  assert.equal(hex(b), '25609513' + '0001' + '0001' + '1122334455667788' + '0000000000001000' + '00000002' + '0908');
  const p = new NbdRequestParser(1 << 20);
  p.push(b);
  const r = p.next() as NbdRequest;
  assert.equal(cookieOf(r), 0x1122334455667788n);
  assert.equal(r.cookieHi, 0x11223344);
  assert.equal(r.cookieLo, 0x55667788);
});

test('errno mapping keeps NBD values and turns the rest into EIO', () => {
  assert.equal(nbdErrno(NbdErrno.ENOSPC), 28);
  assert.equal(nbdErrno(NbdErrno.ENOTSUP), 95);
  assert.equal(nbdErrno(undefined), NbdErrno.EIO);
  assert.equal(nbdErrno(2 /* ENOENT */), NbdErrno.EIO);
});

test('INFO/GO and META_CONTEXT option data round-trip and reject malformed input', () => {
  const info = encodeInfoRequest('disk', [InfoType.NAME, InfoType.BLOCK_SIZE]);
  assert.equal(hex(info), '00000004' + '6469736b' + '0002' + '0001' + '0003');
  assert.deepEqual(parseInfoRequest(info), { name: 'disk', infos: [1, 3] });
  throwsCode(() => parseInfoRequest(info.subarray(0, 9)), ErrorCode.NBD_PROTOCOL);
  throwsCode(() => parseInfoRequest(Buffer.concat([info, Buffer.from([0])])), ErrorCode.NBD_PROTOCOL);
  const huge = Buffer.alloc(10);
  huge.writeUInt32BE(0xffffffff, 0);
  throwsCode(() => parseInfoRequest(huge), ErrorCode.NBD_PROTOCOL);

  const meta = encodeMetaContextRequest('d', ['base:allocation', 'x-a:b']);
  assert.deepEqual(parseMetaContextRequest(meta), { name: 'd', queries: ['base:allocation', 'x-a:b'] });
  throwsCode(() => parseMetaContextRequest(meta.subarray(0, meta.length - 1)), ErrorCode.NBD_PROTOCOL);
  const lying = Buffer.from(meta);
  lying.writeUInt32BE(1000, 5); // query count far beyond the data
  throwsCode(() => parseMetaContextRequest(lying), ErrorCode.NBD_PROTOCOL);
});

/** Feed `stream` to a parser split into the given pieces and collect everything it yields. */
function feedOptions(pieces: Buffer[]): HandshakeEvent[] {
  const p = new NbdOptionParser();
  const out: HandshakeEvent[] = [];
  for (const piece of pieces) {
    p.push(piece);
    for (let ev = p.next(); ev !== undefined; ev = p.next()) out.push(ev);
  }
  return out;
}

function normalizeEvents(evs: HandshakeEvent[]): unknown[] {
  return evs.map((e) => (e.kind === 'option' ? { kind: e.kind, option: e.option, data: hex(e.data) } : e));
}

test('option parser yields the same events for every split of the stream', () => {
  const flags = Buffer.from('00000003', 'hex');
  const stream = Buffer.concat([
    flags,
    encodeOption(Opt.STRUCTURED_REPLY),
    encodeOption(Opt.SET_META_CONTEXT, encodeMetaContextRequest('a', ['base:allocation'])),
    encodeOption(Opt.GO, encodeInfoRequest('a', [InfoType.BLOCK_SIZE])),
  ]);
  const expected = normalizeEvents(feedOptions([stream]));
  assert.equal(expected.length, 4);
  assert.deepEqual(expected[0], { kind: 'clientFlags', flags: 3 });
  for (let i = 1; i < stream.length; i++) {
    assert.deepEqual(normalizeEvents(feedOptions([stream.subarray(0, i), stream.subarray(i)])), expected, `split at ${i}`);
  }
  const bytes = [...stream].map((b) => Buffer.from([b]));
  assert.deepEqual(normalizeEvents(feedOptions(bytes)), expected, 'byte by byte');
});

test('option parser leaves bytes after the last option for transmission', () => {
  const p = new NbdOptionParser();
  const req = encodeRequest({ type: Cmd.FLUSH, cookie: 1n, offset: 0, length: 0 });
  p.push(Buffer.concat([Buffer.from('00000001', 'hex'), encodeOption(Opt.GO, encodeInfoRequest('')), req]));
  assert.equal(p.next()?.kind, 'clientFlags');
  assert.equal(p.next()?.kind, 'option');
  assert.equal(hex(Buffer.concat(p.drain())), hex(req));
  assert.equal(p.buffered, 0);
});

test('option parser: bad magic and oversized length are errors before any data is buffered', () => {
  const p = new NbdOptionParser();
  p.push(Buffer.from('00000001', 'hex'));
  p.next();
  const bad = encodeOption(Opt.LIST);
  bad.writeUInt8(bad.readUInt8(0) ^ 0xff, 0);
  p.push(bad);
  throwsCode(() => p.next(), ErrorCode.NBD_BAD_MAGIC);

  const q = new NbdOptionParser();
  q.push(Buffer.from('00000001', 'hex'));
  q.next();
  const hdr = encodeOption(Opt.GO).subarray(0, 16);
  hdr.writeUInt32BE(64 * 1024 + 1, 12);
  q.push(hdr); // header only: the length must be refused before waiting for data
  throwsCode(() => q.next(), ErrorCode.NBD_OPTION_TOO_LARGE);

  const ok = new NbdOptionParser();
  ok.push(Buffer.from('00000001', 'hex'));
  ok.next();
  const edge = encodeOption(Opt.GO).subarray(0, 16);
  edge.writeUInt32BE(64 * 1024, 12);
  ok.push(edge);
  assert.equal(ok.next(), undefined, 'exactly 64 KiB is accepted and waits for data');
  assert.equal(ok.partial, true);
});

function normalizeReqs(rs: NbdRequest[]): unknown[] {
  return rs.map((r) => ({ ...r, data: r.data === undefined ? undefined : hex(r.data) }));
}

function feedRequests(pieces: Buffer[], max = 1 << 20): NbdRequest[] {
  const p = new NbdRequestParser(max);
  const out: NbdRequest[] = [];
  for (const piece of pieces) {
    p.push(piece);
    for (let r = p.next(); r !== undefined; r = p.next()) out.push(r);
  }
  assert.equal(p.partial, false);
  return out;
}

test('request parser yields the same requests for every split of the stream', () => {
  const payload = Buffer.from(Array.from({ length: 100 }, (_, i) => i));
  const stream = Buffer.concat([
    encodeRequest({ type: Cmd.READ, cookie: 1n, offset: 0, length: 4096 }),
    encodeRequest({ type: Cmd.WRITE, flags: CmdFlag.FUA, cookie: 2n, offset: 512, length: payload.length, data: payload }),
    encodeRequest({ type: Cmd.FLUSH, cookie: 3n, offset: 0, length: 0 }),
    encodeRequest({ type: Cmd.WRITE_ZEROES, flags: CmdFlag.NO_HOLE, cookie: 4n, offset: 2 ** 40, length: 0xffffffff }),
    encodeRequest({ type: Cmd.DISC, cookie: 5n, offset: 0, length: 0 }),
  ]);
  const expected = normalizeReqs(feedRequests([stream]));
  assert.equal(expected.length, 5);
  assert.deepEqual(expected[1], { flags: 1, type: 1, cookieHi: 0, cookieLo: 2, offset: 512, length: 100, data: hex(payload) });
  assert.equal((expected[3] as NbdRequest).offset, 2 ** 40);
  for (let i = 1; i < stream.length; i++) {
    assert.deepEqual(normalizeReqs(feedRequests([stream.subarray(0, i), stream.subarray(i)])), expected, `split at ${i}`);
  }
  // three pieces around the payload
  for (let i = 30; i < 160; i += 7) {
    for (let j = i + 1; j < 200; j += 11) {
      assert.deepEqual(
        normalizeReqs(feedRequests([stream.subarray(0, i), stream.subarray(i, j), stream.subarray(j)])),
        expected,
        `split at ${i},${j}`,
      );
    }
  }
  assert.deepEqual(normalizeReqs(feedRequests([...stream].map((b) => Buffer.from([b])))), expected, 'byte by byte');
});

test('WRITE payload is a view of the chunk when contiguous and one copy when split', () => {
  const payload = Buffer.alloc(4096, 0x5a);
  const wire = encodeRequest({ type: Cmd.WRITE, cookie: 1n, offset: 0, length: 4096, data: payload });
  const p = new NbdRequestParser(1 << 20);
  p.push(wire);
  const r = p.next() as NbdRequest;
  assert.equal(r.data?.buffer, wire.buffer, 'view into the received chunk');
  assert.equal(r.data?.byteOffset, wire.byteOffset + 28);

  const q = new NbdRequestParser(1 << 20);
  q.push(wire.subarray(0, 1000));
  assert.equal(q.next(), undefined);
  assert.equal(q.buffered, 1000 - 28, 'payload bytes moved into the assembly buffer');
  q.push(wire.subarray(1000));
  const s = q.next() as NbdRequest;
  assert.notEqual(s.data?.buffer, wire.buffer);
  assert.ok(s.data?.equals(payload));
});

test('request parser: bad magic, and an oversized WRITE refused on its header', () => {
  const p = new NbdRequestParser(4096);
  const bad = encodeRequest({ type: Cmd.READ, cookie: 1n, offset: 0, length: 512 });
  bad.writeUInt32BE(0xdeadbeef, 0);
  p.push(bad);
  throwsCode(() => p.next(), ErrorCode.NBD_BAD_MAGIC);

  const q = new NbdRequestParser(4096);
  q.push(encodeRequest({ type: Cmd.WRITE, cookie: 1n, offset: 0, length: 4097 }).subarray(0, 28));
  throwsCode(() => q.next(), ErrorCode.NBD_REQUEST_TOO_LARGE);

  // A READ of any length has no payload: the parser passes it on for the server to answer.
  const r = new NbdRequestParser(4096);
  r.push(encodeRequest({ type: Cmd.READ, cookie: 1n, offset: 0, length: 0xffffffff }));
  assert.equal(r.next()?.length, 0xffffffff);
});

test('ChunkQueue: views for contiguous takes, a copy across chunks, drain returns the rest', () => {
  const q = new ChunkQueue();
  // Buffer.alloc never uses the shared pool, so buffer identity tells views from copies.
  const a = Buffer.alloc(4);
  a.write('abcd');
  const b = Buffer.alloc(4);
  b.write('efgh');
  q.push(a);
  q.push(b);
  const v = q.take(2);
  assert.equal(v.buffer, a.buffer);
  assert.equal(v.toString(), 'ab');
  const c = q.take(4);
  assert.equal(c.toString(), 'cdef');
  assert.notEqual(c.buffer, a.buffer);
  assert.equal(q.length, 2);
  assert.equal(Buffer.concat(q.drain()).toString(), 'gh');
  assert.equal(q.length, 0);
});
