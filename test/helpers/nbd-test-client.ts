/**
 * A small NBD client for tests and the write-verify workload: fixed newstyle, NBD_OPT_GO,
 * simple replies, pipelined requests. It is deliberately independent of `src/wire/nbd.ts` so the
 * server is checked against a second, separately written reading of the protocol.
 */
import * as net from 'node:net';
import type { Duplex } from 'node:stream';

const NBDMAGIC = 0x4e42444d41474943n;
const IHAVEOPT = 0x49484156454f5054n;
const OPT_REPLY_MAGIC = 0x3e889045565a9n;
const REQUEST_MAGIC = 0x25609513;
const SIMPLE_REPLY_MAGIC = 0x67446698;

/** NBD command types used by tests. */
export const Cmd = { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3, TRIM: 4, CACHE: 5, WRITE_ZEROES: 6 } as const;
/** NBD command flags. */
export const CmdFlag = { FUA: 1, NO_HOLE: 2, DF: 4, FAST_ZERO: 16 } as const;

/** A reply: NBD errno (0 = success) and READ data. */
export interface Reply {
  error: number;
  data?: Buffer;
}

interface Waiting {
  readLength: number;
  resolve: (r: Reply) => void;
  reject: (e: Error) => void;
}

/** Handshake choices. */
export interface HandshakeOptions {
  /** Ask for NBD_INFO_BLOCK_SIZE in NBD_OPT_GO (agree to the server's block-size constraints). */
  requestBlockSize?: boolean;
}

/** Where to connect. */
export type Endpoint = { host?: string; port: number } | { path: string };

/** A connected NBD client for one export. */
export class NbdTestClient {
  size = 0n;
  transmissionFlags = 0;
  /** NBD_INFO_BLOCK_SIZE as the server answered it (only when the client asked for it). */
  blockSizes: { min: number; preferred: number; max: number } | undefined;
  private cookie = 1n;
  private readonly waiting = new Map<bigint, Waiting>();
  private buf: Buffer = Buffer.alloc(0);
  private closedError: Error | undefined;

  private constructor(private readonly sock: Duplex) {}

  /** Connect and negotiate `exportName` with NBD_OPT_GO. */
  static async connect(ep: Endpoint, exportName: string, timeoutMs = 10_000, o: HandshakeOptions = {}): Promise<NbdTestClient> {
    const sock = 'path' in ep ? net.connect(ep.path) : net.connect(ep.port, ep.host ?? '127.0.0.1');
    sock.setNoDelay?.(true);
    return NbdTestClient.overStream(sock, exportName, timeoutMs, o);
  }

  /** Negotiate `exportName` over an already connected stream (e.g. a child's stdin/stdout). */
  static async overStream(sock: Duplex, exportName: string, timeoutMs = 10_000, o: HandshakeOptions = {}): Promise<NbdTestClient> {
    const c = new NbdTestClient(sock);
    const timer = setTimeout(() => sock.destroy(new Error('NBD handshake timed out')), timeoutMs);
    try {
      await c.handshake(exportName, o.requestBlockSize === true);
    } finally {
      clearTimeout(timer);
    }
    sock.on('data', (d) => c.onData(d));
    sock.on('close', () => c.failAll(c.closedError ?? new Error('NBD connection closed')));
    sock.on('error', (e) => { c.closedError = e; });
    return c;
  }

  private async handshake(name: string, requestBlockSize: boolean): Promise<void> {
    const reader = new HandshakeReader(this.sock);
    const hello = await reader.read(18);
    if (hello.readBigUInt64BE(0) !== NBDMAGIC || hello.readBigUInt64BE(8) !== IHAVEOPT) throw new Error('bad NBD greeting');
    const hsFlags = hello.readUInt16BE(16);
    const noZeroes = (hsFlags & 2) !== 0;
    const cflags = Buffer.alloc(4);
    cflags.writeUInt32BE(1 | (noZeroes ? 2 : 0));
    const nameBuf = Buffer.from(name, 'utf8');
    // With requestBlockSize one info request, NBD_INFO_BLOCK_SIZE (3): the client then agrees to
    // the server's block-size constraints. Without it (like the kernel and nbd-client) it has
    // agreed to none.
    const infos = requestBlockSize ? [3] : [];
    const opt = Buffer.alloc(16 + 4 + nameBuf.length + 2 + 2 * infos.length);
    opt.writeBigUInt64BE(IHAVEOPT, 0);
    opt.writeUInt32BE(7, 8); // NBD_OPT_GO
    opt.writeUInt32BE(4 + nameBuf.length + 2 + 2 * infos.length, 12);
    opt.writeUInt32BE(nameBuf.length, 16);
    nameBuf.copy(opt, 20);
    opt.writeUInt16BE(infos.length, 20 + nameBuf.length);
    infos.forEach((t, i) => opt.writeUInt16BE(t, 22 + nameBuf.length + 2 * i));
    this.sock.write(Buffer.concat([cflags, opt]));
    for (;;) {
      const h = await reader.read(20);
      if (h.readBigUInt64BE(0) !== OPT_REPLY_MAGIC) throw new Error('bad option reply magic');
      const type = h.readUInt32BE(12);
      const len = h.readUInt32BE(16);
      const body = await reader.read(len);
      if (type === 1) break; // ACK
      if (type === 3 && body.readUInt16BE(0) === 0) {
        this.size = body.readBigUInt64BE(2);
        this.transmissionFlags = body.readUInt16BE(10);
        continue;
      }
      if (type === 3 && body.readUInt16BE(0) === 3 && body.length >= 14) {
        this.blockSizes = { min: body.readUInt32BE(2), preferred: body.readUInt32BE(6), max: body.readUInt32BE(10) };
        continue;
      }
      if (type >= 0x80000000) throw Object.assign(new Error(`NBD_OPT_GO refused: 0x${type.toString(16)} ${body.toString()}`), { nbdOptError: type });
    }
    const rest = reader.detach();
    if (rest.length > 0) this.buf = rest;
  }

  private onData(d: Buffer): void {
    this.buf = this.buf.length === 0 ? d : Buffer.concat([this.buf, d]);
    for (;;) {
      if (this.buf.length < 16) return;
      if (this.buf.readUInt32BE(0) !== SIMPLE_REPLY_MAGIC) {
        this.sock.destroy(new Error('bad reply magic'));
        return;
      }
      const error = this.buf.readUInt32BE(4);
      const cookie = this.buf.readBigUInt64BE(8);
      const w = this.waiting.get(cookie);
      if (w === undefined) {
        this.sock.destroy(new Error(`reply for unknown cookie ${cookie}`));
        return;
      }
      const dataLen = error === 0 ? w.readLength : 0;
      if (this.buf.length < 16 + dataLen) return;
      const data = dataLen > 0 ? Buffer.from(this.buf.subarray(16, 16 + dataLen)) : undefined;
      this.buf = this.buf.subarray(16 + dataLen);
      this.waiting.delete(cookie);
      w.resolve({ error, data });
    }
  }

  private failAll(err: Error): void {
    this.closedError ??= err;
    for (const w of this.waiting.values()) w.reject(err);
    this.waiting.clear();
  }

  /** Send one request; resolves with its reply (error is the NBD errno, 0 on success). */
  request(type: number, offset: bigint | number, length: number, opts: { flags?: number; data?: Buffer } = {}): Promise<Reply> {
    if (this.closedError !== undefined) return Promise.reject(this.closedError);
    const cookie = this.cookie++;
    const h = Buffer.alloc(28);
    h.writeUInt32BE(REQUEST_MAGIC, 0);
    h.writeUInt16BE(opts.flags ?? 0, 4);
    h.writeUInt16BE(type, 6);
    h.writeBigUInt64BE(cookie, 8);
    h.writeBigUInt64BE(BigInt(offset), 16);
    h.writeUInt32BE(length, 24);
    return new Promise<Reply>((resolve, reject) => {
      this.waiting.set(cookie, { readLength: type === Cmd.READ ? length : 0, resolve, reject });
      this.sock.cork();
      this.sock.write(h);
      if (opts.data !== undefined) this.sock.write(opts.data);
      this.sock.uncork();
    });
  }

  /** READ that throws on an NBD error. */
  async read(offset: number, length: number): Promise<Buffer> {
    const r = await this.request(Cmd.READ, offset, length);
    if (r.error !== 0) throw Object.assign(new Error(`NBD read error ${r.error}`), { nbdErrno: r.error });
    return r.data ?? Buffer.alloc(0);
  }

  /** WRITE that throws on an NBD error. */
  async write(offset: number, data: Buffer, fua = false): Promise<void> {
    const r = await this.request(Cmd.WRITE, offset, data.length, { data, flags: fua ? CmdFlag.FUA : 0 });
    if (r.error !== 0) throw Object.assign(new Error(`NBD write error ${r.error}`), { nbdErrno: r.error });
  }

  /** FLUSH that throws on an NBD error. */
  async flush(): Promise<void> {
    const r = await this.request(Cmd.FLUSH, 0, 0);
    if (r.error !== 0) throw Object.assign(new Error(`NBD flush error ${r.error}`), { nbdErrno: r.error });
  }

  /** Send NBD_CMD_DISC and wait for the server to close. */
  async disconnect(): Promise<void> {
    if (this.closedError !== undefined) return;
    const h = Buffer.alloc(28);
    h.writeUInt32BE(REQUEST_MAGIC, 0);
    h.writeUInt16BE(Cmd.DISC, 6);
    await new Promise<void>((resolve) => {
      this.sock.once('close', () => resolve());
      this.sock.end(h);
      setTimeout(() => { this.sock.destroy(); resolve(); }, 5000).unref();
    });
  }

  /** Drop the connection without NBD_CMD_DISC. */
  destroy(): void {
    this.sock.destroy();
  }
}

/** Reads exact byte counts from a socket during the handshake. */
class HandshakeReader {
  private buf: Buffer = Buffer.alloc(0);
  private want: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | undefined;
  private readonly onData = (d: Buffer): void => {
    this.buf = Buffer.concat([this.buf, d]);
    this.pump();
  };
  private readonly onEnd = (): void => this.want?.reject(new Error('connection closed during NBD handshake'));

  constructor(private readonly sock: Duplex) {
    sock.on('data', this.onData);
    sock.on('close', this.onEnd);
    sock.on('error', (e) => this.want?.reject(e));
  }

  read(n: number): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      this.want = { n, resolve, reject };
      this.pump();
    });
  }

  private pump(): void {
    if (this.want === undefined || this.buf.length < this.want.n) return;
    const { n, resolve } = this.want;
    this.want = undefined;
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    resolve(out);
  }

  /** Stop listening and return bytes read past the handshake. */
  detach(): Buffer {
    this.sock.off('data', this.onData);
    this.sock.off('close', this.onEnd);
    return this.buf;
  }
}
