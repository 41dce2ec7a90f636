/**
 * NBD server driven over real sockets by a small raw client written here: handshake options,
 * transmission, one test per protocol violation, out-of-order replies, backpressure, shutdown,
 * and a seeded garbage-input run.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as net from 'node:net';
import { execFileSync } from 'node:child_process';
import { Duplex, PassThrough } from 'node:stream';
import * as os from 'node:os';
import * as path from 'node:path';
import { promises as fsp } from 'node:fs';
import { ErrorCode, NvmfNbdError } from '../../src/errors';
import { MemoryBlockDevice } from '../../src/block/memory-device';
import { SimpleBlockRequest, submitViaPromises, type BlockDevice, type BlockRequest } from '../../src/block/types';
import { NbdServer, type NbdLogEntry } from '../../src/nbd/server';
import {
  Cmd,
  CmdFlag,
  InfoType,
  NbdErrno,
  Opt,
  Rep,
  ReplyFlag,
  ReplyType,
  TransmissionFlag,
  encodeInfoRequest,
  encodeMetaContextRequest,
  encodeOption,
  encodeRequest,
} from '../../src/wire/nbd';
import { throwsCode, rejectsCode } from '../helpers/assert-code';
import { realSleep, until } from '../helpers/clock';

const T = { timeout: 10_000 };
const MiB = 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Raw client
// ---------------------------------------------------------------------------------------------

/** A byte-level client: send bytes, wait for exact byte counts, observe the close. */
class Raw {
  private buf = Buffer.alloc(0);
  private wake: (() => void) | undefined;
  closed = false;
  readonly closedP: Promise<void>;

  private constructor(readonly sock: net.Socket) {
    sock.on('data', (d: Buffer) => {
      this.buf = Buffer.concat([this.buf, d]);
      this.wake?.();
    });
    sock.on('error', () => undefined);
    this.closedP = new Promise((resolve) => {
      sock.on('close', () => {
        this.closed = true;
        this.wake?.();
        resolve();
      });
    });
  }

  static connect(port: number): Promise<Raw> {
    return new Promise((resolve, reject) => {
      const s = net.connect(port, '127.0.0.1', () => resolve(new Raw(s)));
      s.once('error', reject);
    });
  }

  static connectUnix(p: string): Promise<Raw> {
    return new Promise((resolve, reject) => {
      const s = net.connect(p, () => resolve(new Raw(s)));
      s.once('error', reject);
    });
  }

  send(b: Buffer): void {
    this.sock.write(b);
  }

  async read(n: number): Promise<Buffer> {
    while (this.buf.length < n) {
      if (this.closed) throw new Error(`connection closed with ${this.buf.length}/${n} bytes`);
      await new Promise<void>((r) => (this.wake = r));
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }

  /** Resolves when the server has closed the connection (no more bytes expected). */
  async expectClose(): Promise<Buffer> {
    await this.closedP;
    return this.buf;
  }

  get pending(): number {
    return this.buf.length;
  }

  close(): void {
    this.sock.destroy();
  }
}

interface OptReply {
  option: number;
  type: number;
  data: Buffer;
}

async function readOptReply(c: Raw): Promise<OptReply> {
  const h = await c.read(20);
  assert.equal(h.readBigUInt64BE(0), 0x3e889045565a9n, 'option reply magic');
  const len = h.readUInt32BE(16);
  return { option: h.readUInt32BE(8), type: h.readUInt32BE(12), data: await c.read(len) };
}

/** Read replies up to and including the final one (ACK or an error). */
async function readOptReplies(c: Raw): Promise<OptReply[]> {
  const out: OptReply[] = [];
  for (;;) {
    const r = await readOptReply(c);
    out.push(r);
    if (r.type === Rep.ACK || r.type >= 0x80000000) return out;
  }
}

async function greet(c: Raw, clientFlags = 3): Promise<void> {
  const g = await c.read(18);
  assert.equal(g.toString('latin1', 0, 16), 'NBDMAGICIHAVEOPT');
  assert.equal(g.readUInt16BE(16), 3);
  const f = Buffer.alloc(4);
  f.writeUInt32BE(clientFlags >>> 0);
  c.send(f);
}

interface Negotiated {
  size: number;
  flags: number;
  blockSizes?: [number, number, number];
  replies: OptReply[];
}

async function go(c: Raw, name: string, infos: number[] = []): Promise<Negotiated> {
  c.send(encodeOption(Opt.GO, encodeInfoRequest(name, infos)));
  const replies = await readOptReplies(c);
  const last = replies[replies.length - 1] as OptReply;
  assert.equal(last.type, Rep.ACK, `GO answered 0x${last.type.toString(16)}`);
  const exp = replies.find((r) => r.type === Rep.INFO && r.data.readUInt16BE(0) === InfoType.EXPORT) as OptReply;
  const bs = replies.find((r) => r.type === Rep.INFO && r.data.readUInt16BE(0) === InfoType.BLOCK_SIZE);
  const n: Negotiated = { size: Number(exp.data.readBigUInt64BE(2)), flags: exp.data.readUInt16BE(10), replies };
  if (bs !== undefined) n.blockSizes = [bs.data.readUInt32BE(2), bs.data.readUInt32BE(6), bs.data.readUInt32BE(10)];
  return n;
}

let cookieSeq = 100n;
function req(c: Raw, type: number, offset: number, length: number, o: { flags?: number; data?: Buffer; cookie?: bigint } = {}): bigint {
  const cookie = o.cookie ?? ++cookieSeq;
  const r: Parameters<typeof encodeRequest>[0] = { type, flags: o.flags ?? 0, cookie, offset, length };
  if (o.data !== undefined) r.data = o.data;
  c.send(encodeRequest(r));
  return cookie;
}

async function simpleReply(c: Raw, readLen = 0): Promise<{ error: number; cookie: bigint; data: Buffer }> {
  const h = await c.read(16);
  assert.equal(h.readUInt32BE(0), 0x67446698, 'simple reply magic');
  const error = h.readUInt32BE(4);
  const data = error === 0 && readLen > 0 ? await c.read(readLen) : Buffer.alloc(0);
  return { error, cookie: h.readBigUInt64BE(8), data };
}

async function chunk(c: Raw): Promise<{ flags: number; type: number; cookie: bigint; payload: Buffer }> {
  const h = await c.read(20);
  assert.equal(h.readUInt32BE(0), 0x668e33ef, 'structured reply magic');
  return { flags: h.readUInt16BE(4), type: h.readUInt16BE(6), cookie: h.readBigUInt64BE(8), payload: await c.read(h.readUInt32BE(16)) };
}

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

interface Fixture {
  server: NbdServer;
  port: number;
  logs: NbdLogEntry[];
  dev: MemoryBlockDevice;
  ro: MemoryBlockDevice;
}

async function start(o: { maxInFlight?: number; maxInFlightBytes?: number; dev?: BlockDevice } = {}): Promise<Fixture> {
  const logs: NbdLogEntry[] = [];
  const opts: ConstructorParameters<typeof NbdServer>[0] = { log: (e) => logs.push(e), handshakeTimeoutMs: 0 };
  if (o.maxInFlight !== undefined) opts.maxInFlight = o.maxInFlight;
  if (o.maxInFlightBytes !== undefined) opts.maxInFlightBytes = o.maxInFlightBytes;
  const server = new NbdServer(opts);
  const dev = new MemoryBlockDevice({ size: 8 * MiB });
  const ro = new MemoryBlockDevice({ size: 1 * MiB, blockSize: 4096, readOnly: true });
  server.addExport('disk', o.dev ?? dev, { description: 'the disk' });
  server.addExport('ro', ro);
  const ep = await server.listen({ tcp: { port: 0 } });
  assert.ok('tcp' in ep);
  return { server, port: ep.tcp.port, logs, dev, ro };
}

async function connectGo(f: Fixture, name = 'disk', infos: number[] = []): Promise<{ c: Raw; n: Negotiated }> {
  const c = await Raw.connect(f.port);
  await greet(c);
  const n = await go(c, name, infos);
  return { c, n };
}

function hasCode(f: Fixture, code: string): boolean {
  return f.logs.some((e) => e.code === code);
}

/** Wraps a device; `gate(op, offset)` may delay or fail individual calls. */
class Wrapped implements BlockDevice {
  active = 0;
  maxActive = 0;
  constructor(
    readonly inner: BlockDevice,
    readonly gate: (op: string, offset: number) => Promise<void> = () => Promise.resolve(),
  ) {}
  get size(): number { return this.inner.size; }
  get blockSize(): number { return this.inner.blockSize; }
  get maxRequest(): number { return this.inner.maxRequest; }
  get readOnly(): boolean { return this.inner.readOnly; }
  get canFlush(): boolean { return this.inner.canFlush; }
  get canFua(): boolean { return this.inner.canFua; }
  get canTrim(): boolean { return this.inner.canTrim; }
  get canWriteZeroes(): boolean { return this.inner.canWriteZeroes; }
  get canFastZero(): boolean { return this.inner.canFastZero; }
  private async run<X>(op: string, offset: number, fn: () => Promise<X>): Promise<X> {
    this.active++;
    this.maxActive = Math.max(this.maxActive, this.active);
    try {
      await this.gate(op, offset);
      return await fn();
    } finally {
      this.active--;
    }
  }
  read(o: number, l: number): Promise<Buffer> { return this.run('read', o, () => this.inner.read(o, l)); }
  write(o: number, d: Buffer, fua: boolean): Promise<void> { return this.run('write', o, () => this.inner.write(o, d, fua)); }
  flush(): Promise<void> { return this.run('flush', 0, () => this.inner.flush()); }
  trim(o: number, l: number): Promise<void> { return this.run('trim', o, () => this.inner.trim(o, l)); }
  writeZeroes(o: number, l: number, x: { mayDeallocate: boolean; fua: boolean; fastOnly: boolean }): Promise<void> {
    return this.run('zero', o, () => this.inner.writeZeroes(o, l, x));
  }
  createRequest(): BlockRequest { return new SimpleBlockRequest(); }
  submit(r: BlockRequest): void { submitViaPromises(this, r); }
}

/**
 * A gate for device calls: each `hold()` waits until the test releases it, so a test sees a
 * request in flight (by {@link Wrapped.active}) instead of hoping a sleep was long enough.
 */
class Gate {
  private readonly waiting: Array<() => void> = [];
  get count(): number { return this.waiting.length; }
  hold = (): Promise<void> => new Promise((r) => this.waiting.push(r));
  /** Release every call waiting now. */
  releaseAll(): void { for (const r of this.waiting.splice(0)) r(); }
}

/** Release the gate's calls as they come until `done()` (the I/O runs in between). */
async function drain(g: Gate, done: () => boolean): Promise<void> {
  while (!done()) {
    g.releaseAll();
    await realSleep(1);
  }
}

// ---------------------------------------------------------------------------------------------
// Handshake
// ---------------------------------------------------------------------------------------------

test('GO on the default export: size, flags from capabilities, block sizes', T, async () => {
  const f = await start();
  try {
    const c = await Raw.connect(f.port);
    await greet(c);
    const n = await go(c, '');
    assert.equal(n.size, 8 * MiB);
    const F = TransmissionFlag;
    const want = F.HAS_FLAGS | F.SEND_FLUSH | F.SEND_FUA | F.SEND_TRIM | F.SEND_WRITE_ZEROES | F.SEND_FAST_ZERO | F.CAN_MULTI_CONN | F.SEND_CACHE;
    assert.equal(n.flags, want, 'no READ_ONLY, no DF without structured replies');
    assert.deepEqual(n.blockSizes, [512, 4096, 32 * MiB]);
    // transmission works right after
    req(c, Cmd.FLUSH, 0, 0, { cookie: 7n });
    assert.deepEqual(await simpleReply(c), { error: 0, cookie: 7n, data: Buffer.alloc(0) });
    c.close();
  } finally {
    await f.server.close();
  }
});

test('INFO answers NAME/DESCRIPTION/BLOCK_SIZE and stays in option haggling; LIST lists both', T, async () => {
  const f = await start();
  try {
    const c = await Raw.connect(f.port);
    await greet(c);
    c.send(encodeOption(Opt.INFO, encodeInfoRequest('ro', [InfoType.NAME, InfoType.DESCRIPTION, InfoType.BLOCK_SIZE])));
    const rs = await readOptReplies(c);
    const infos = rs.filter((r) => r.type === Rep.INFO).map((r) => r.data.readUInt16BE(0));
    assert.deepEqual(infos.sort(), [InfoType.EXPORT, InfoType.NAME, InfoType.BLOCK_SIZE]); // 'ro' has no description
    const exp = rs.find((r) => r.data.readUInt16BE(0) === InfoType.EXPORT) as OptReply;
    assert.ok((exp.data.readUInt16BE(10) & TransmissionFlag.READ_ONLY) !== 0);
    assert.equal((exp.data.readUInt16BE(10) & TransmissionFlag.SEND_TRIM), 0, 'no TRIM on a read-only export');
    const bs = rs.find((r) => r.data.readUInt16BE(0) === InfoType.BLOCK_SIZE) as OptReply;
    assert.equal(bs.data.readUInt32BE(2), 4096);

    c.send(encodeOption(Opt.INFO, encodeInfoRequest('disk', [InfoType.DESCRIPTION])));
    const rs2 = await readOptReplies(c);
    const d = rs2.find((r) => r.type === Rep.INFO && r.data.readUInt16BE(0) === InfoType.DESCRIPTION) as OptReply;
    assert.equal(d.data.toString('utf8', 2), 'the disk');

    c.send(encodeOption(Opt.LIST));
    const list = await readOptReplies(c);
    const names = list.filter((r) => r.type === Rep.SERVER).map((r) => r.data.toString('utf8', 4, 4 + r.data.readUInt32BE(0)));
    assert.deepEqual(names, ['disk', 'ro']);
    assert.equal(list[list.length - 1]?.type, Rep.ACK);

    c.send(encodeOption(Opt.LIST, Buffer.from('x')));
    assert.equal((await readOptReply(c)).type, Rep.ERR_INVALID);
    c.close();
  } finally {
    await f.server.close();
  }
});

test('unknown options and STARTTLS get ERR_UNSUP; unknown export ERR_UNKNOWN; still in sync', T, async () => {
  const f = await start();
  try {
    const c = await Raw.connect(f.port);
    await greet(c);
    c.send(encodeOption(99, Buffer.from('some data the server must skip')));
    const r1 = await readOptReply(c);
    assert.deepEqual([r1.option, r1.type], [99, Rep.ERR_UNSUP]);
    c.send(encodeOption(Opt.STARTTLS));
    assert.equal((await readOptReply(c)).type, Rep.ERR_UNSUP);
    c.send(encodeOption(Opt.GO, encodeInfoRequest('nope')));
    assert.equal((await readOptReply(c)).type, Rep.ERR_UNKNOWN);
    c.send(encodeOption(Opt.GO, Buffer.from([0, 0, 0, 9])));
    assert.equal((await readOptReply(c)).type, Rep.ERR_INVALID, 'malformed GO');
    const n = await go(c, 'disk');
    assert.equal(n.size, 8 * MiB);
    c.close();
  } finally {
    await f.server.close();
  }
});

test('EXPORT_NAME: 10-byte reply with NO_ZEROES, 134 without; unknown name closes', T, async () => {
  const f = await start();
  try {
    const a = await Raw.connect(f.port);
    await greet(a, 3);
    a.send(encodeOption(Opt.EXPORT_NAME, Buffer.from('ro')));
    const r = await a.read(10);
    assert.equal(Number(r.readBigUInt64BE(0)), 1 * MiB);
    assert.ok((r.readUInt16BE(8) & TransmissionFlag.READ_ONLY) !== 0);
    req(a, Cmd.READ, 0, 4096, { cookie: 1n });
    const rr = await simpleReply(a, 4096);
    assert.equal(rr.error, 0);
    assert.equal(rr.data.length, 4096);
    a.close();

    const b = await Raw.connect(f.port);
    await greet(b, 1);
    b.send(encodeOption(Opt.EXPORT_NAME, Buffer.alloc(0)));
    const r2 = await b.read(134);
    assert.equal(Number(r2.readBigUInt64BE(0)), 8 * MiB, 'empty name = default export');
    b.close();

    const c = await Raw.connect(f.port);
    await greet(c);
    c.send(encodeOption(Opt.EXPORT_NAME, Buffer.from('missing')));
    assert.equal((await c.expectClose()).length, 0);
    assert.ok(hasCode(f, ErrorCode.NBD_UNKNOWN_EXPORT));
  } finally {
    await f.server.close();
  }
});

test('ABORT is acknowledged and the server closes', T, async () => {
  const f = await start();
  try {
    const c = await Raw.connect(f.port);
    await greet(c);
    c.send(encodeOption(Opt.ABORT));
    assert.equal((await readOptReply(c)).type, Rep.ACK);
    await c.expectClose();
  } finally {
    await f.server.close();
  }
});

test('structured replies and base:allocation: DF advertised, OFFSET_DATA, BLOCK_STATUS, error chunks', T, async () => {
  const f = await start();
  try {
    const c = await Raw.connect(f.port);
    await greet(c);
    c.send(encodeOption(Opt.LIST_META_CONTEXT, encodeMetaContextRequest('disk', [])));
    assert.equal((await readOptReply(c)).type, Rep.ERR_INVALID, 'meta context needs structured replies first');
    c.send(encodeOption(Opt.STRUCTURED_REPLY));
    assert.equal((await readOptReply(c)).type, Rep.ACK);
    c.send(encodeOption(Opt.LIST_META_CONTEXT, encodeMetaContextRequest('disk', [])));
    const list = await readOptReplies(c);
    assert.equal(list[0]?.type, Rep.META_CONTEXT);
    assert.equal(list[0]?.data.toString('utf8', 4), 'base:allocation');
    c.send(encodeOption(Opt.SET_META_CONTEXT, encodeMetaContextRequest('disk', ['base:allocation', 'x-other:thing'])));
    const set = await readOptReplies(c);
    assert.equal(set.length, 2);
    const ctxId = (set[0] as OptReply).data.readUInt32BE(0);
    assert.notEqual(ctxId, 0);
    const n = await go(c, 'disk');
    assert.ok((n.flags & TransmissionFlag.SEND_DF) !== 0);

    const data = Buffer.alloc(4096, 0x3c);
    req(c, Cmd.WRITE, 8192, 4096, { data, cookie: 1n });
    assert.equal((await simpleReply(c)).error, 0);
    req(c, Cmd.READ, 8192, 4096, { flags: CmdFlag.DF, cookie: 2n });
    const ch = await chunk(c);
    assert.equal(ch.type, ReplyType.OFFSET_DATA);
    assert.equal(ch.flags, ReplyFlag.DONE);
    assert.equal(ch.cookie, 2n);
    assert.equal(Number(ch.payload.readBigUInt64BE(0)), 8192);
    assert.ok(ch.payload.subarray(8).equals(data));

    req(c, Cmd.BLOCK_STATUS, 0, 65536, { cookie: 3n, flags: CmdFlag.REQ_ONE });
    const bs = await chunk(c);
    assert.equal(bs.type, ReplyType.BLOCK_STATUS);
    assert.equal(bs.flags, ReplyFlag.DONE);
    assert.equal(bs.payload.readUInt32BE(0), ctxId);
    assert.deepEqual([bs.payload.readUInt32BE(4), bs.payload.readUInt32BE(8)], [65536, 0]);

    req(c, Cmd.READ, 8 * MiB, 512, { cookie: 4n });
    const err = await chunk(c);
    assert.equal(err.type, ReplyType.ERROR, 'a failed READ gets an error chunk, never a simple reply');
    assert.equal(err.payload.readUInt32BE(0), NbdErrno.EINVAL);
    c.close();
  } finally {
    await f.server.close();
  }
});

// ---------------------------------------------------------------------------------------------
// Transmission
// ---------------------------------------------------------------------------------------------

test('write/read/FUA/trim/zeroes/cache round trip with simple replies and counters', T, async () => {
  const f = await start();
  try {
    const { c } = await connectGo(f);
    const data = Buffer.alloc(64 * 1024);
    for (let i = 0; i < data.length; i++) data[i] = (i * 7) & 0xff;
    req(c, Cmd.WRITE, 4096, data.length, { data, flags: CmdFlag.FUA, cookie: 1n });
    assert.equal((await simpleReply(c)).error, 0);
    assert.equal(f.dev.counters.fuaWrites, 1);
    req(c, Cmd.READ, 4096, data.length, { cookie: 2n });
    assert.ok((await simpleReply(c, data.length)).data.equals(data));
    req(c, Cmd.WRITE_ZEROES, 4096, 512, { flags: CmdFlag.NO_HOLE | CmdFlag.FAST_ZERO, cookie: 3n });
    assert.equal((await simpleReply(c)).error, 0);
    req(c, Cmd.TRIM, 8192, 4096, { cookie: 4n });
    assert.equal((await simpleReply(c)).error, 0);
    req(c, Cmd.CACHE, 0, 4096, { cookie: 5n });
    assert.equal((await simpleReply(c)).error, 0);
    req(c, Cmd.READ, 4096, 8192, { cookie: 6n });
    const back = (await simpleReply(c, 8192)).data;
    assert.ok(back.subarray(0, 512).every((b) => b === 0), 'zeroed');
    assert.ok(back.subarray(512, 4096).equals(data.subarray(512, 4096)), 'untouched');
    assert.ok(back.subarray(4096).every((b) => b === 0), 'trimmed reads as zeroes here');
    const st = f.server.stats().find((s) => s.name === 'disk');
    assert.deepEqual(
      st && [st.reads, st.writes, st.bytesWritten, st.bytesRead, st.trims, st.zeroes, st.errors, st.connections],
      [2, 1, 65536, 65536 + 8192, 1, 1, 0, 1],
    );
    c.close();
  } finally {
    await f.server.close();
  }
});

test('TRIM and WRITE_ZEROES up to 4 GiB - 1 block pass through whole to the device', T, async () => {
  const seen: Array<[string, number]> = [];
  const inner = new MemoryBlockDevice({ size: 8 * 1024 * MiB, blockSize: 4096, chunkSize: 1024 * 1024 });
  const dev = new Wrapped(inner, async (op) => {
    seen.push([op, 0]);
  });
  const trim = dev.trim.bind(dev);
  const zero = dev.writeZeroes.bind(dev);
  dev.trim = (o, l) => (seen.push(['trim-len', l]), trim(o, l));
  dev.writeZeroes = (o, l, x) => (seen.push(['zero-len', l]), zero(o, l, x));
  const f = await start({ dev });
  try {
    const { c } = await connectGo(f);
    req(c, Cmd.TRIM, 4096, 0xfffff000, { cookie: 1n });
    assert.deepEqual(await simpleReply(c), { error: 0, cookie: 1n, data: Buffer.alloc(0) });
    req(c, Cmd.WRITE_ZEROES, 4 * 1024 * MiB, 0xfffff000, { cookie: 2n });
    assert.equal((await simpleReply(c)).error, 0);
    assert.deepEqual(seen.filter(([k]) => k.endsWith('-len')), [['trim-len', 0xfffff000], ['zero-len', 0xfffff000]]);
    c.close();
  } finally {
    await f.server.close();
  }
});

test('replies go out of order: a slow READ is answered after a later fast one', T, async () => {
  let release!: () => void;
  const held = new Promise<void>((r) => (release = r));
  const dev = new Wrapped(new MemoryBlockDevice({ size: 1 * MiB }), (op, off) => (op === 'read' && off === 0 ? held : Promise.resolve()));
  const f = await start({ dev });
  try {
    const { c } = await connectGo(f);
    req(c, Cmd.READ, 0, 512, { cookie: 1n });
    req(c, Cmd.READ, 4096, 512, { cookie: 2n });
    const first = await simpleReply(c, 512);
    assert.equal(first.cookie, 2n);
    release();
    const second = await simpleReply(c, 512);
    assert.equal(second.cookie, 1n);
    c.close();
  } finally {
    await f.server.close();
  }
});

test('pipelining is bounded: at most maxInFlight requests reach the device, all get answered', T, async () => {
  const inner = new MemoryBlockDevice({ size: 4 * MiB });
  const gate = new Gate();
  const dev = new Wrapped(inner, gate.hold);
  const f = await start({ dev, maxInFlight: 16 });
  try {
    const { c } = await connectGo(f);
    const N = 200;
    const batch: Buffer[] = [];
    for (let i = 0; i < N; i++) batch.push(encodeRequest({ type: Cmd.READ, cookie: BigInt(i + 1), offset: (i % 64) * 4096, length: 4096 }));
    c.send(Buffer.concat(batch));
    // Nothing completes until released: the server dispatches up to its limit and stops there.
    await until(() => gate.count === 16, '16 requests at the device');
    const seen = new Set<bigint>();
    const replies = (async () => {
      for (let i = 0; i < N; i++) {
        const r = await simpleReply(c, 4096);
        assert.equal(r.error, 0);
        seen.add(r.cookie);
      }
    })();
    await drain(gate, () => seen.size === N);
    await replies;
    assert.equal(seen.size, N);
    assert.equal(dev.maxActive, 16, 'exactly the limit was reached and never exceeded');
    c.close();
  } finally {
    await f.server.close();
  }
});

test('in-flight bytes are bounded: reads stop being dispatched above maxInFlightBytes', T, async () => {
  const gate = new Gate();
  const dev = new Wrapped(new MemoryBlockDevice({ size: 4 * MiB }), gate.hold);
  const f = await start({ dev, maxInFlightBytes: 64 * 1024 });
  try {
    const { c } = await connectGo(f);
    const N = 20;
    for (let i = 0; i < N; i++) req(c, Cmd.READ, i * 32 * 1024, 32 * 1024, { cookie: BigInt(i + 1) });
    await until(() => gate.count === 2, 'two 32 KiB reads at the device');
    let answered = 0;
    const replies = (async () => {
      for (let i = 0; i < N; i++, answered++) assert.equal((await simpleReply(c, 32 * 1024)).error, 0);
    })();
    await drain(gate, () => answered === N);
    await replies;
    assert.equal(dev.maxActive, 2, '64 KiB budget / 32 KiB reads');
    c.close();
  } finally {
    await f.server.close();
  }
});

test('serveSocket serves any duplex stream (the --stdio path)', T, async () => {
  const server = new NbdServer({ log: () => undefined, handshakeTimeoutMs: 0 });
  server.addExport('m', new MemoryBlockDevice({ size: MiB }));
  const toServer = new PassThrough();
  const fromServer = new PassThrough();
  server.serveSocket(Duplex.from({ readable: toServer, writable: fromServer }));
  let got = Buffer.alloc(0);
  fromServer.on('data', (d: Buffer) => (got = Buffer.concat([got, d])));
  const take = async (n: number): Promise<Buffer> => {
    while (got.length < n) await new Promise((r) => fromServer.once('data', r));
    const out = got.subarray(0, n);
    got = got.subarray(n);
    return out;
  };
  assert.equal((await take(18)).toString('latin1', 0, 8), 'NBDMAGIC');
  toServer.write(Buffer.from([0, 0, 0, 3]));
  toServer.write(encodeOption(Opt.EXPORT_NAME, Buffer.from('m')));
  assert.equal(Number((await take(10)).readBigUInt64BE(0)), MiB);
  toServer.write(encodeRequest({ type: Cmd.WRITE, cookie: 5n, offset: 512, length: 512, data: Buffer.alloc(512, 0x77) }));
  const r = await take(16);
  assert.deepEqual([r.readUInt32BE(4), r.readBigUInt64BE(8)], [0, 5n]);
  assert.equal(server.stats()[0]?.writes, 1);
  await server.close();
});

test('a failing device call fails only that request, with its errno (EIO when absent)', T, async () => {
  const dev = new Wrapped(new MemoryBlockDevice({ size: 1 * MiB }), async (op, off) => {
    if (op === 'write' && off === 0) throw new NvmfNbdError(ErrorCode.NVME_STATUS, 'media error', { errno: NbdErrno.ENOSPC });
    if (op === 'read' && off === 0) throw new Error('plain error');
  });
  const f = await start({ dev });
  try {
    const { c } = await connectGo(f);
    req(c, Cmd.WRITE, 0, 512, { data: Buffer.alloc(512, 1), cookie: 1n });
    assert.deepEqual(await simpleReply(c), { error: NbdErrno.ENOSPC, cookie: 1n, data: Buffer.alloc(0) });
    req(c, Cmd.READ, 0, 512, { cookie: 2n });
    assert.equal((await simpleReply(c)).error, NbdErrno.EIO);
    req(c, Cmd.WRITE, 512, 512, { data: Buffer.alloc(512, 1), cookie: 3n });
    assert.equal((await simpleReply(c)).error, 0, 'the connection carries on');
    assert.equal(f.server.stats()[0]?.errors, 2);
    c.close();
  } finally {
    await f.server.close();
  }
});

test('a TRIM / WRITE_ZEROES rejected with undefined (or null) is a failure (EIO), not a success', T, async () => {
  const dev = new MemoryBlockDevice({ size: 1 * MiB });
  // A device's promise may reject with any value; the reply must follow the rejection, not the value.
  dev.trim = () => Promise.reject(undefined);
  dev.writeZeroes = () => Promise.reject(null);
  const f = await start({ dev });
  try {
    const { c } = await connectGo(f);
    req(c, Cmd.TRIM, 0, 512, { cookie: 1n });
    assert.deepEqual(await simpleReply(c), { error: NbdErrno.EIO, cookie: 1n, data: Buffer.alloc(0) });
    req(c, Cmd.WRITE_ZEROES, 0, 512, { cookie: 2n });
    assert.deepEqual(await simpleReply(c), { error: NbdErrno.EIO, cookie: 2n, data: Buffer.alloc(0) });
    assert.equal(f.server.stats()[0]?.errors, 2);
    c.close();
  } finally {
    await f.server.close();
  }
});

test('DISC: in-flight replies are sent, then the server closes', T, async () => {
  const gate = new Gate();
  const dev = new Wrapped(new MemoryBlockDevice({ size: 1 * MiB }), (op) => (op === 'write' ? gate.hold() : Promise.resolve()));
  const f = await start({ dev });
  try {
    const { c } = await connectGo(f);
    req(c, Cmd.WRITE, 0, 512, { data: Buffer.alloc(512, 9), cookie: 1n });
    req(c, Cmd.DISC, 0, 0, { cookie: 2n });
    // The write is still at the device when the server reads the DISC.
    await until(() => gate.count === 1 && f.logs.some((e) => e.msg === 'client sent DISC'), 'DISC read with the write in flight');
    gate.releaseAll();
    const r = await simpleReply(c);
    assert.deepEqual([r.error, r.cookie], [0, 1n]);
    assert.equal((await c.expectClose()).length, 0, 'no reply to DISC');
  } finally {
    await f.server.close();
  }
});

test('half-close after complete requests: queued ones still run and are answered, then close', T, async () => {
  const gate = new Gate();
  const dev = new Wrapped(new MemoryBlockDevice({ size: 1 * MiB }), gate.hold);
  const f = await start({ dev, maxInFlight: 2 });
  try {
    const { c } = await connectGo(f);
    const reqs: Buffer[] = [];
    for (let i = 0; i < 10; i++) reqs.push(encodeRequest({ type: Cmd.READ, cookie: BigInt(i + 1), offset: i * 512, length: 512 }));
    c.sock.end(Buffer.concat(reqs)); // most of these wait behind maxInFlight when the FIN arrives
    await until(() => gate.count === 2, 'two reads at the device, the rest queued');
    let answered = 0;
    const replies = (async () => {
      for (let i = 0; i < 10; i++, answered++) assert.equal((await simpleReply(c, 512)).error, 0);
    })();
    await drain(gate, () => answered === 10);
    await replies;
    await c.expectClose();
    assert.ok(!hasCode(f, ErrorCode.NBD_TRUNCATED));
  } finally {
    await f.server.close();
  }
});

// ---------------------------------------------------------------------------------------------
// Protocol violations
// ---------------------------------------------------------------------------------------------

test('violation: unknown client flags → closed, NBD_ERR_BAD_FLAGS', T, async () => {
  const f = await start();
  try {
    const c = await Raw.connect(f.port);
    await greet(c, 0x21);
    await c.expectClose();
    assert.ok(hasCode(f, ErrorCode.NBD_BAD_FLAGS));
  } finally {
    await f.server.close();
  }
});

test('violation: bad init magic (IHAVEOPT of the first option) → closed, NBD_ERR_BAD_MAGIC', T, async () => {
  const f = await start();
  try {
    const c = await Raw.connect(f.port);
    await greet(c);
    const o = encodeOption(Opt.LIST);
    o.write('IHAVEOPX', 0, 'latin1');
    c.send(o);
    assert.equal((await c.expectClose()).length, 0);
    assert.ok(hasCode(f, ErrorCode.NBD_BAD_MAGIC));
  } finally {
    await f.server.close();
  }
});

test('violation: option longer than 64 KiB → ERR_TOO_BIG, closed, NBD_ERR_OPTION_TOO_LARGE', T, async () => {
  const f = await start();
  try {
    const c = await Raw.connect(f.port);
    await greet(c);
    const h = encodeOption(Opt.GO);
    h.writeUInt32BE(64 * 1024 + 1, 12);
    c.send(h);
    const r = await readOptReply(c);
    assert.equal(r.type, Rep.ERR_TOO_BIG);
    await c.expectClose();
    assert.ok(hasCode(f, ErrorCode.NBD_OPTION_TOO_LARGE));
  } finally {
    await f.server.close();
  }
});

test('violation: bad request magic → closed, NBD_ERR_BAD_MAGIC', T, async () => {
  const f = await start();
  try {
    const { c } = await connectGo(f);
    const r = encodeRequest({ type: Cmd.READ, cookie: 1n, offset: 0, length: 512 });
    r.writeUInt32BE(0x25609514, 0);
    c.send(r);
    assert.equal((await c.expectClose()).length, 0);
    assert.ok(hasCode(f, ErrorCode.NBD_BAD_MAGIC));
  } finally {
    await f.server.close();
  }
});

test('violations answered with an errno while the connection stays usable (a client that negotiated block sizes)', T, async () => {
  const f = await start();
  try {
    const { c } = await connectGo(f, 'disk', [InfoType.BLOCK_SIZE]);
    const cases: Array<[string, () => bigint, number]> = [
      ['unknown command', () => req(c, 42, 0, 512), NbdErrno.EINVAL],
      ['unknown flag', () => req(c, Cmd.READ, 0, 512, { flags: 0x8000 }), NbdErrno.EINVAL],
      ['flag not valid for the command', () => req(c, Cmd.READ, 0, 512, { flags: CmdFlag.NO_HOLE }), NbdErrno.EINVAL],
      ['DF without structured replies', () => req(c, Cmd.READ, 0, 512, { flags: CmdFlag.DF }), NbdErrno.EINVAL],
      ['BLOCK_STATUS without a meta context', () => req(c, Cmd.BLOCK_STATUS, 0, 512), NbdErrno.EINVAL],
      ['read out of range', () => req(c, Cmd.READ, 8 * MiB - 512, 1024), NbdErrno.EINVAL],
      ['read at a huge offset', () => req(c, Cmd.READ, 2 ** 62, 512), NbdErrno.EINVAL],
      ['trim out of range', () => req(c, Cmd.TRIM, 8 * MiB, 512), NbdErrno.EINVAL],
      ['write-zeroes out of range', () => req(c, Cmd.WRITE_ZEROES, 8 * MiB - 512, 0xfffffe00), NbdErrno.ENOSPC],
      ['misaligned offset', () => req(c, Cmd.READ, 100, 512), NbdErrno.EINVAL],
      ['misaligned length', () => req(c, Cmd.READ, 0, 100), NbdErrno.EINVAL],
      ['zero length', () => req(c, Cmd.READ, 0, 0), NbdErrno.EINVAL],
      ['read larger than the maximum block size', () => req(c, Cmd.READ, 0, 32 * MiB + 512), NbdErrno.EOVERFLOW],
      ['write past the end (payload consumed)', () => req(c, Cmd.WRITE, 8 * MiB, 1024, { data: Buffer.alloc(1024, 0xee) }), NbdErrno.ENOSPC],
      ['misaligned write (payload consumed)', () => req(c, Cmd.WRITE, 10, 1000, { data: Buffer.alloc(1000, 0xee) }), NbdErrno.EINVAL],
    ];
    for (const [what, send, errno] of cases) {
      const cookie = send();
      const r = await simpleReply(c);
      assert.deepEqual([r.cookie, r.error], [cookie, errno], what);
    }
    // still in sync after the rejected payloads
    req(c, Cmd.READ, 0, 512, { cookie: 9n });
    assert.equal((await simpleReply(c, 512)).error, 0);
    assert.equal(f.dev.allocatedBytes, 0, 'nothing rejected was written');
    c.close();
  } finally {
    await f.server.close();
  }
});

test('violation: write/trim/zero on a read-only export → EPERM, payload consumed', T, async () => {
  const f = await start();
  try {
    const { c } = await connectGo(f, 'ro');
    req(c, Cmd.WRITE, 0, 4096, { data: Buffer.alloc(4096, 1), cookie: 1n });
    assert.equal((await simpleReply(c)).error, NbdErrno.EPERM);
    req(c, Cmd.TRIM, 0, 4096, { cookie: 2n });
    assert.equal((await simpleReply(c)).error, NbdErrno.EPERM);
    req(c, Cmd.WRITE_ZEROES, 0, 4096, { cookie: 3n });
    assert.equal((await simpleReply(c)).error, NbdErrno.EPERM);
    req(c, Cmd.READ, 0, 4096, { cookie: 4n });
    const r = await simpleReply(c, 4096);
    assert.deepEqual([r.error, r.cookie], [0, 4n]);
    assert.equal(f.ro.allocatedBytes, 0);
    c.close();
  } finally {
    await f.server.close();
  }
});

test('violation: WRITE longer than the maximum block size → closed, NBD_ERR_REQUEST_TOO_LARGE', T, async () => {
  // 32 MiB for a client that negotiated block sizes, 64 MiB for one that did not.
  for (const [infos, max] of [[[InfoType.BLOCK_SIZE], 32 * MiB], [[], 64 * MiB]] as const) {
    const f = await start();
    try {
      const { c } = await connectGo(f, 'disk', [...infos]);
      // Only the header: the server must refuse before waiting for (or buffering) the payload.
      c.send(encodeRequest({ type: Cmd.WRITE, cookie: 1n, offset: 0, length: max + 512 }).subarray(0, 28));
      assert.equal((await c.expectClose()).length, 0);
      assert.ok(hasCode(f, ErrorCode.NBD_REQUEST_TOO_LARGE));
    } finally {
      await f.server.close();
    }
  }
});

test('violation: truncated WRITE payload then close → NBD_ERR_TRUNCATED, nothing written', T, async () => {
  const f = await start();
  try {
    const { c } = await connectGo(f);
    const r = encodeRequest({ type: Cmd.WRITE, cookie: 1n, offset: 0, length: 4096, data: Buffer.alloc(4096, 7) });
    c.sock.end(r.subarray(0, 28 + 1000));
    await c.expectClose();
    assert.ok(hasCode(f, ErrorCode.NBD_TRUNCATED));
    assert.equal(f.dev.counters.writes, 0);
  } finally {
    await f.server.close();
  }
});

test('violation: truncated request header then close → NBD_ERR_TRUNCATED', T, async () => {
  const f = await start();
  try {
    const { c } = await connectGo(f);
    c.sock.end(encodeRequest({ type: Cmd.READ, cookie: 1n, offset: 0, length: 512 }).subarray(0, 13));
    await c.expectClose();
    assert.ok(hasCode(f, ErrorCode.NBD_TRUNCATED));
  } finally {
    await f.server.close();
  }
});

// ---------------------------------------------------------------------------------------------
// Export removal, shutdown, Unix sockets
// ---------------------------------------------------------------------------------------------

test('removeExport: in-flight request answered ESHUTDOWN, connection closed, export gone', T, async () => {
  let release!: () => void;
  const held = new Promise<void>((r) => (release = r));
  const dev = new Wrapped(new MemoryBlockDevice({ size: 1 * MiB }), () => held);
  const f = await start({ dev });
  try {
    const { c } = await connectGo(f);
    req(c, Cmd.READ, 0, 512, { cookie: 1n });
    await until(() => dev.active === 1, 'the read at the device');
    const removed = f.server.removeExport('disk');
    release();
    const r = await simpleReply(c);
    assert.deepEqual([r.cookie, r.error], [1n, NbdErrno.ESHUTDOWN]);
    await c.expectClose();
    await removed;
    assert.deepEqual(f.server.exportNames(), ['ro']);
    const c2 = await Raw.connect(f.port);
    await greet(c2);
    c2.send(encodeOption(Opt.GO, encodeInfoRequest('disk')));
    assert.equal((await readOptReply(c2)).type, Rep.ERR_UNKNOWN);
    c2.close();
  } finally {
    await f.server.close();
  }
});

test('close(): drains in-flight requests with real results, then closes everything', T, async () => {
  const gate = new Gate();
  const dev = new Wrapped(new MemoryBlockDevice({ size: 1 * MiB }), (op) => (op === 'read' ? gate.hold() : Promise.resolve()));
  const f = await start({ dev });
  const { c } = await connectGo(f);
  const idle = await Raw.connect(f.port);
  await greet(idle);
  req(c, Cmd.READ, 0, 512, { cookie: 1n });
  await until(() => gate.count === 1, 'the read at the device');
  const closing = f.server.close();
  gate.releaseAll();
  const r = await simpleReply(c, 512);
  assert.deepEqual([r.cookie, r.error], [1n, 0]);
  await c.expectClose();
  await idle.expectClose();
  await closing;
  await assert.rejects(Raw.connect(f.port));
});

test('Unix socket: mode 0600 in a fresh 0700 directory; a stale socket is replaced', T, async () => {
  const base = await fsp.mkdtemp(path.join(os.tmpdir(), 'nbd-unix-'));
  const dir = path.join(base, 'run');
  const sock = path.join(dir, 'nbd.sock');
  try {
    const s1 = new NbdServer({ log: () => undefined });
    s1.addExport('m', new MemoryBlockDevice({ size: MiB }));
    const ep = await s1.listen({ unix: sock });
    assert.deepEqual(ep, { unix: sock });
    assert.equal((await fsp.stat(sock)).mode & 0o777, 0o600);
    assert.equal((await fsp.stat(dir)).mode & 0o777, 0o700);
    const c = await Raw.connectUnix(sock);
    await greet(c);
    assert.equal((await go(c, 'm')).size, MiB);
    c.close();

    const s2 = new NbdServer({ log: () => undefined });
    await rejectsCode(s2.listen({ unix: sock }), ErrorCode.NBD_LISTEN_FAILED);
    await s1.close();

    // leave a stale socket file behind, as a crashed server would (SIGKILL skips the unlink)
    try {
      execFileSync(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(sock)}, () => process.kill(process.pid, 'SIGKILL'))`]);
    } catch {
      // killed by design
    }
    assert.ok((await fsp.lstat(sock)).isSocket(), 'stale socket present');
    const s3 = new NbdServer({ log: () => undefined });
    s3.addExport('m', new MemoryBlockDevice({ size: MiB }));
    await s3.listen({ unix: sock });
    const c3 = await Raw.connectUnix(sock);
    await greet(c3);
    assert.equal((await go(c3, '')).size, MiB);
    c3.close();
    await s3.close();
  } finally {
    await fsp.rm(base, { recursive: true, force: true });
  }
});

test('addExport rejects duplicates with NBD_ERR_EXPORT_EXISTS', () => {
  const s = new NbdServer({ log: () => undefined });
  s.addExport('a', new MemoryBlockDevice({ size: MiB }));
  throwsCode(() => s.addExport('a', new MemoryBlockDevice({ size: MiB })), ErrorCode.NBD_EXPORT_EXISTS);
});

// ---------------------------------------------------------------------------------------------
// Garbage input
// ---------------------------------------------------------------------------------------------

/** mulberry32: small seeded PRNG so failures reproduce. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

test('seeded garbage: the server survives, stays bounded and keeps serving', { timeout: 30_000 }, async () => {
  const f = await start();
  const rnd = prng(0x5eed);
  const int = (n: number): number => Math.floor(rnd() * n);
  const bytes = (n: number): Buffer => Buffer.from(Array.from({ length: n }, () => int(256)));
  const heapBefore = process.memoryUsage().heapUsed;
  try {
    for (let round = 0; round < 60; round++) {
      const c = await Raw.connect(f.port);
      await c.read(18);
      const mode = int(3);
      if (mode === 0) {
        c.send(bytes(1 + int(200))); // garbage from the first byte
      } else {
        c.send(Buffer.from([0, 0, 0, 3]));
        if (mode === 1) {
          // random options, sometimes valid magic
          for (let i = 0; i < 5; i++) {
            const o = encodeOption(int(12), bytes(int(40)));
            if (int(4) === 0) o.writeUInt32BE(int(0x7fffffff), 12);
            c.send(o);
          }
        } else {
          c.send(encodeOption(Opt.GO, encodeInfoRequest('disk')));
          for (let i = 0; i < 20; i++) {
            const r = encodeRequest({
              type: int(10),
              flags: int(4) === 0 ? int(0x10000) : 0,
              cookie: BigInt(i),
              offset: int(4) === 0 ? int(2 ** 31) : int(64) * 512,
              length: int(4) === 0 ? int(2 ** 31) : int(16) * 512,
            });
            if (int(10) === 0) r.writeUInt32BE(int(2 ** 32), 0);
            c.send(r);
            if (r.readUInt16BE(6) === Cmd.WRITE) c.send(bytes(int(2000)));
          }
        }
      }
      c.close();
      // Each garbage connection is released (closed by the server or after our close).
      await until(() => f.server.stats()[0]?.connections === 0, `round ${round}: connection released`);
    }
    // still serves a well-behaved client
    const { c } = await connectGo(f);
    req(c, Cmd.WRITE, 0, 512, { data: Buffer.alloc(512, 0x42), cookie: 1n });
    assert.equal((await simpleReply(c)).error, 0);
    req(c, Cmd.READ, 0, 512, { cookie: 2n });
    assert.ok((await simpleReply(c, 512)).data.every((b) => b === 0x42));
    c.close();
    await until(() => f.server.stats()[0]?.connections === 0, 'every connection released');
    assert.ok(f.dev.allocatedBytes <= 8 * MiB);
    const growth = process.memoryUsage().heapUsed - heapBefore;
    assert.ok(growth < 64 * MiB, `heap grew by ${growth} bytes`);
  } finally {
    await f.server.close();
  }
});
