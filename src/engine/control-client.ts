/**
 * The client of the daemon's control socket (codec: `wire/control.ts`): one connection,
 * pipelined requests matched to responses by id, and where the socket is.
 */
import * as net from 'node:net';
import * as path from 'node:path';
import { ErrorCode, NvmfNbdError } from '../errors';
import { LineDecoder, encodeRequest, parseResponse, responseError } from '../wire/control';
import type { ControlVerbValue } from '../wire/control';

/**
 * Path of the control socket: `--control PATH`, else `$NVMF_NBD_CONTROL`, else
 * `<stateDir>/control.sock`.
 */
export function controlSocketPath(explicit: unknown, stateDirectory: string, env: NodeJS.ProcessEnv = process.env): string {
  if (typeof explicit === 'string' && explicit !== '') return explicit;
  const fromEnv = env.NVMF_NBD_CONTROL;
  if (fromEnv !== undefined && fromEnv !== '') return fromEnv;
  return path.join(stateDirectory, 'control.sock');
}

/** A connection to the daemon; requests may be pipelined. */
export class ControlClient {
  private readonly decoder = new LineDecoder();
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: NvmfNbdError) => void }>();
  private nextId = 1;
  private closedWith: NvmfNbdError | undefined;

  private constructor(private readonly sock: net.Socket, readonly socketPath: string) {
    sock.on('data', (chunk: Buffer) => this.onData(chunk));
    sock.on('error', () => undefined);
    sock.on('close', () => this.fail(new NvmfNbdError(ErrorCode.CONNECTION_CLOSED, `daemon closed the control connection (${socketPath})`)));
  }

  /**
   * Connect to the daemon's control socket.
   * @throws CLI_ERR_DAEMON_UNAVAILABLE when nothing listens there (no socket, refused, timeout)
   */
  static connect(socketPath: string, timeoutMs = 5000): Promise<ControlClient> {
    return new Promise((resolve, reject) => {
      const sock = net.connect(socketPath);
      const timer = setTimeout(() => {
        sock.destroy();
        reject(new NvmfNbdError(ErrorCode.DAEMON_UNAVAILABLE, `no daemon answers on ${socketPath} (timeout)`));
      }, timeoutMs);
      sock.once('connect', () => {
        clearTimeout(timer);
        sock.removeAllListeners('error');
        resolve(new ControlClient(sock, socketPath));
      });
      sock.once('error', (err: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        // EACCES too: a daemon we may not talk to is no daemon for this user.
        reject(new NvmfNbdError(ErrorCode.DAEMON_UNAVAILABLE, `cannot reach the daemon at ${socketPath}: ${err.code ?? err.message}`, { cause: err }));
      });
    });
  }

  /** Send one request and wait for its response; error responses reject with their code. */
  request(verb: ControlVerbValue, args: Record<string, unknown> = {}): Promise<unknown> {
    if (this.closedWith !== undefined) return Promise.reject(this.closedWith);
    const id = this.nextId++;
    let line: Buffer;
    try {
      line = encodeRequest({ id, verb, args });
    } catch (err) {
      return Promise.reject(err);
    }
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.sock.write(line);
    });
  }

  /** Close the connection; pending requests reject. */
  close(): void {
    this.sock.end();
    this.sock.destroy();
  }

  private onData(chunk: Buffer): void {
    try {
      this.decoder.push(chunk);
      for (let line = this.decoder.next(); line !== undefined; line = this.decoder.next()) {
        const r = parseResponse(line);
        const p = this.pending.get(r.id);
        if (p === undefined) {
          // An error for a request the daemon could not read (id 0): fail everything.
          if (!r.ok) throw responseError(r.error);
          throw new NvmfNbdError(ErrorCode.CONTROL_PROTOCOL, `response for unknown request ${r.id}`);
        }
        this.pending.delete(r.id);
        if (r.ok) p.resolve(r.result);
        else p.reject(responseError(r.error));
      }
    } catch (err) {
      this.fail(err instanceof NvmfNbdError ? err : new NvmfNbdError(ErrorCode.CONTROL_PROTOCOL, String(err)));
      this.sock.destroy();
    }
  }

  private fail(err: NvmfNbdError): void {
    this.closedWith ??= err;
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
  }
}

/**
 * One request on a fresh connection, then close.
 * @throws CLI_ERR_DAEMON_UNAVAILABLE when no daemon listens, or the daemon's error
 */
export async function callDaemon(socketPath: string, verb: ControlVerbValue, args: Record<string, unknown> = {}, connectTimeoutMs = 5000): Promise<unknown> {
  const c = await ControlClient.connect(socketPath, connectTimeoutMs);
  try {
    return await c.request(verb, args);
  } finally {
    c.close();
  }
}
