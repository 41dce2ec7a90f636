/**
 * Read exact byte counts from a stream (tests that speak a protocol by hand). `read(n)` resolves
 * with n bytes, or rejects when the stream ends first; `closed` resolves when it ended.
 */
import type { Duplex } from 'node:stream';

export class ByteReader {
  private buf = Buffer.alloc(0);
  private waiter: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | undefined;
  private ended = false;
  readonly closed: Promise<void>;

  constructor(private readonly s: Duplex) {
    let done!: () => void;
    this.closed = new Promise((r) => (done = r));
    s.on('data', (c: Buffer) => {
      this.buf = Buffer.concat([this.buf, c]);
      this.wake();
    });
    const end = (): void => {
      this.ended = true;
      this.wake();
      done();
    };
    s.on('end', end);
    s.on('close', end);
    s.on('error', () => end());
  }

  /** Stop reading (hand the stream to something else, e.g. a TLS layer). Unread bytes are returned. */
  detach(): Buffer {
    this.s.removeAllListeners('data');
    this.s.pause();
    const b = this.buf;
    this.buf = Buffer.alloc(0);
    return b;
  }

  read(n: number): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      this.waiter = { n, resolve, reject };
      this.wake();
    });
  }

  private wake(): void {
    const w = this.waiter;
    if (w === undefined) return;
    if (this.buf.length >= w.n) {
      this.waiter = undefined;
      const out = this.buf.subarray(0, w.n);
      this.buf = this.buf.subarray(w.n);
      w.resolve(Buffer.from(out));
    } else if (this.ended) {
      this.waiter = undefined;
      w.reject(new Error(`stream ended with ${this.buf.length} of ${w.n} bytes`));
    }
  }
}

/** Read one NBD option reply: { option, type, data }. */
export async function readOptionReply(r: ByteReader): Promise<{ option: number; type: number; data: Buffer }> {
  const h = await r.read(20);
  const len = h.readUInt32BE(16);
  return { option: h.readUInt32BE(8), type: h.readUInt32BE(12), data: len > 0 ? await r.read(len) : Buffer.alloc(0) };
}
