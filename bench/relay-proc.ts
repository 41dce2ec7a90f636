/**
 * Benchmark helper process: the cheapest Node process that can sit between fio and an NBD
 * server — a byte relay (no parsing) from 127.0.0.1:PORT to an upstream NBD server (`nbdkit`).
 * Its CPU per I/O is the floor for any Node bridge on the same path (fio → Node → server on the
 * other core), so nbd-bench prints it beside the bridge.
 *
 *   node dist/bench/relay-proc.js --to-port P [--to-host 127.0.0.1] [--port 0]
 *
 * Cheap on purpose: each direction reads (net.Socket `onread`) into one reused 64 KiB buffer and
 * writes it out at once; a loopback write nearly always completes synchronously, and when one
 * does not the next read gets a fresh buffer (the pending write still owns the old one). No
 * Buffer per read, no 'data' events, no pipe() machinery.
 * Prints `READY {"port":N}`; SIGTERM/SIGINT exit 0.
 */
import * as net from 'node:net';
import { numArg, parseArgs } from './common';

const BUF = 64 * 1024;
/** Bytes queued in a destination socket beyond which its source stops reading. */
const HIGH_WATER = 4 * 1024 * 1024;

/** One direction: reads of `src` land in a reused buffer and are written to `dst`. */
class Pump {
  private buf = Buffer.allocUnsafeSlow(BUF);
  /** The buffer is held by a write that did not complete synchronously. */
  private held = false;
  dst: net.Socket | undefined;
  src: net.Socket | undefined;
  readonly onread = {
    buffer: (): Buffer => {
      if (this.held) {
        this.buf = Buffer.allocUnsafeSlow(BUF);
        this.held = false;
      }
      return this.buf;
    },
    callback: (n: number, b: Uint8Array): boolean => {
      const dst = this.dst;
      if (dst === undefined || dst.destroyed) return false;
      dst.write(b.subarray(0, n));
      // Still queued: libuv writes from this memory later, so it is not ours to read into.
      if (dst.writableLength > 0) this.held = true;
      if (dst.writableLength < HIGH_WATER) return true;
      dst.once('drain', () => this.src?.resume());
      return false;
    },
  };
}

function main(): void {
  const a = parseArgs(process.argv.slice(2), ['to-port', 'to-host', 'port']);
  const toPort = numArg(a, 'to-port', 0);
  if (toPort === 0) throw new Error('--to-port is required');
  const toHost = a.get('to-host') ?? '127.0.0.1';

  const server = net.createServer({ noDelay: true, pauseOnConnect: true }, (accepted) => {
    const up = new Pump();
    const down = new Pump();
    // An accepted socket takes no `onread` option: wrap its (not yet reading) handle in a
    // socket that has one. Bench-only use of the private `_handle`.
    const handle = (accepted as unknown as { _handle: unknown })._handle;
    const client = new net.Socket({ handle, onread: up.onread, readable: true, writable: true } as net.SocketConstructorOpts);
    const upstream = net.connect({ host: toHost, port: toPort, noDelay: true, onread: down.onread });
    up.dst = upstream;
    up.src = client;
    down.dst = client;
    down.src = upstream;
    client.pause();
    upstream.once('connect', () => client.resume());
    const close = (): void => { client.destroy(); upstream.destroy(); };
    client.on('error', close).on('close', close).on('end', close);
    upstream.on('error', close).on('close', close).on('end', close);
  });
  server.listen({ host: '127.0.0.1', port: numArg(a, 'port', 0) }, () => {
    process.stdout.write(`READY ${JSON.stringify({ port: (server.address() as net.AddressInfo).port })}\n`);
  });
  const stop = (): void => process.exit(0);
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main();
