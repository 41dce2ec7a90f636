/**
 * One control connection of the daemon: newline-delimited JSON requests in, one response line
 * per request out, answered in order, with two windows so a peer cannot make the daemon buffer
 * without bound (STYLE.md: bad input never means unbounded memory). The daemon supplies the
 * answer to a line; this module owns only the framing and the flow control.
 */
import type * as net from 'node:net';
import { LineDecoder, encodeResponse, errorResponse } from '../wire/control';
import type { ControlResponse } from '../wire/control';

/** Requests queued per control connection before the daemon stops reading it. */
export const MAX_QUEUED_REQUESTS = 16;
/** Reply bytes a control connection may leave unread before the daemon stops answering it. */
export const MAX_UNSENT_REPLY_BYTES = 2 * 1024 * 1024;

/**
 * Serve requests on `sock` until it closes: each complete line goes to `answer` (which never
 * throws) and its response is written back, in request order. An oversized line is answered
 * once with its error and the connection is ended (the stream cannot be resynchronised).
 */
export function serveControlConnection(sock: net.Socket, answer: (line: string) => Promise<ControlResponse>): void {
  const decoder = new LineDecoder();
  let queued = 0;
  let chain = Promise.resolve();
  const reply = (r: ControlResponse): void => {
    if (!sock.destroyed) sock.write(encodeResponse(r));
  };
  // Two windows: requests taken from the decoder and answered bytes the peer has not read yet.
  // A peer that pipelines requests and never reads stops being read (and its decoded lines
  // stay undecoded) until the kernel takes our replies.
  const full = (): boolean => queued >= MAX_QUEUED_REQUESTS || sock.writableLength > MAX_UNSENT_REPLY_BYTES;
  const pump = (): void => {
    while (!full() && !sock.destroyed) {
      const line = decoder.next();
      if (line === undefined) break;
      queued++;
      // Requests of one connection are answered in order.
      chain = chain.then(async () => {
        reply(await answer(line));
        queued--;
        pump();
      });
    }
    if (full()) sock.pause();
    else if (sock.isPaused()) sock.resume();
  };
  sock.on('drain', pump);
  sock.on('data', (chunk: Buffer) => {
    try {
      decoder.push(chunk);
    } catch (err) {
      sock.end(encodeResponse(errorResponse(0, err)));
      sock.destroySoon();
      return;
    }
    pump();
  });
  sock.on('error', () => undefined);
}
