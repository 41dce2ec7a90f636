/**
 * Waiting for a `net.Server` to listen, with its first error as the rejection (and no listener
 * left behind either way).
 */
import type * as net from 'node:net';

/** Resolve once `server` listens; reject with its first error. */
export function waitListening(server: net.Server): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    // listen({ fd }) on an already listening socket may have emitted 'listening' by now.
    if (server.listening) {
      resolve();
      return;
    }
    const onErr = (err: Error): void => {
      server.off('listening', onOk);
      reject(err);
    };
    const onOk = (): void => {
      server.off('error', onErr);
      resolve();
    };
    server.once('error', onErr);
    server.once('listening', onOk);
  });
}
