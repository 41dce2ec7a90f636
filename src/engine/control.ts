/**
 * The daemon's control protocol: newline-delimited JSON over a Unix socket (the analogue of
 * FreeBSD's `/dev/nvmf` ioctls). One request per line, one response per line:
 *
 * ```
 * → {"id":1,"verb":"connect","args":{...}}\n
 * ← {"id":1,"ok":true,"result":{...}}\n
 * ← {"id":1,"ok":false,"error":{"code":"CLI_ERR_NO_SUCH_CONTROLLER","message":"..."}}\n
 * ```
 *
 * A line longer than {@link MAX_CONTROL_LINE} is refused before it is buffered whole: the
 * server answers with an error (id 0) and closes, since it cannot find the next request.
 *
 * The first half of this file is a pure codec (no sockets, no timers); the client at the end
 * owns the socket.
 */
import * as net from 'node:net';
import * as path from 'node:path';
import { ErrorCode, NvmfNbdError } from '../errors';
import type { ErrorCodeValue } from '../errors';
import type { OptionSpec } from '../cli/args';

/** Longest accepted line, newline excluded (1 MiB). */
export const MAX_CONTROL_LINE = 1 << 20;

/** Every verb the daemon answers. */
export const ControlVerb = {
  PING: 'ping',
  CONNECT: 'connect',
  DISCONNECT: 'disconnect',
  DISCONNECT_ALL: 'disconnect-all',
  LIST: 'list',
  ID_CTRL: 'id-ctrl',
  ID_NS: 'id-ns',
  GET_LOG: 'get-log',
  ADMIN_PASSTHRU: 'admin-passthru',
  /** Add a (persistent) discovery controller: `{ discovery, connect, persistent, disconnectRemoved }`. */
  ADD_DISCOVERY: 'add-discovery',
} as const;
export type ControlVerbValue = (typeof ControlVerb)[keyof typeof ControlVerb];

const VERBS: ReadonlySet<string> = new Set(Object.values(ControlVerb));
const CODES: ReadonlySet<string> = new Set(Object.values(ErrorCode));

/** One request. `id` is chosen by the client and echoed in the response. */
export interface ControlRequest {
  readonly id: number;
  readonly verb: ControlVerbValue;
  readonly args: Record<string, unknown>;
}

/** Error part of a failed response. */
export interface ControlError {
  readonly code: string;
  readonly message: string;
}

/** One response. */
export type ControlResponse =
  | { readonly id: number; readonly ok: true; readonly result: unknown }
  | { readonly id: number; readonly ok: false; readonly error: ControlError };

// ---------------------------------------------------------------------------------------------
// Codec (pure)
// ---------------------------------------------------------------------------------------------

/**
 * Splits a byte stream into lines without re-scanning: only the new chunk is searched for a
 * newline, and bytes of an unfinished line are kept as a list of views (copied once, when the
 * line completes). Pull style: `push()` then `next()` until undefined.
 */
export class LineDecoder {
  private readonly parts: Buffer[] = [];
  private partLength = 0;
  private readonly ready: string[] = [];
  private failed: NvmfNbdError | undefined;

  constructor(private readonly maxLine = MAX_CONTROL_LINE) {}

  /**
   * Feed bytes. Throws `CLI_ERR_CONTROL_LINE_TOO_LONG` as soon as the unfinished line exceeds
   * the limit (the decoder stays failed).
   */
  push(chunk: Buffer): void {
    if (this.failed !== undefined) throw this.failed;
    let at = 0;
    while (at < chunk.length) {
      const nl = chunk.indexOf(0x0a, at);
      const end = nl < 0 ? chunk.length : nl;
      if (this.partLength + (end - at) > this.maxLine) {
        this.failed = new NvmfNbdError(ErrorCode.CONTROL_LINE_TOO_LONG, `control line longer than ${this.maxLine} bytes`);
        this.parts.length = 0;
        this.partLength = 0;
        throw this.failed;
      }
      if (nl < 0) {
        this.parts.push(chunk.subarray(at));
        this.partLength += chunk.length - at;
        return;
      }
      const piece = chunk.subarray(at, nl);
      const line = this.parts.length === 0 ? piece : Buffer.concat([...this.parts, piece], this.partLength + piece.length);
      this.parts.length = 0;
      this.partLength = 0;
      this.ready.push(line.toString('utf8'));
      at = nl + 1;
    }
  }

  /** The next complete line (without the newline), or undefined. */
  next(): string | undefined {
    return this.ready.shift();
  }

  /** Bytes held for an unfinished line. */
  get buffered(): number {
    return this.partLength;
  }
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function parseJson(line: string): unknown {
  try {
    return JSON.parse(line) as unknown;
  } catch (err) {
    throw new NvmfNbdError(ErrorCode.CONTROL_PROTOCOL, `control message is not JSON: ${(err as Error).message}`);
  }
}

/**
 * Parse one request line.
 * @throws CLI_ERR_CONTROL_PROTOCOL (not JSON, missing or mistyped fields),
 *         CLI_ERR_CONTROL_UNKNOWN_VERB
 */
export function parseRequest(line: string): ControlRequest {
  const v = parseJson(line);
  if (!isRecord(v)) throw new NvmfNbdError(ErrorCode.CONTROL_PROTOCOL, 'control request is not an object');
  const { id, verb, args } = v;
  if (typeof id !== 'number' || !Number.isSafeInteger(id) || id < 0) throw new NvmfNbdError(ErrorCode.CONTROL_PROTOCOL, 'control request needs a non-negative integer id');
  if (typeof verb !== 'string') throw new NvmfNbdError(ErrorCode.CONTROL_PROTOCOL, 'control request needs a verb');
  if (!VERBS.has(verb)) throw new NvmfNbdError(ErrorCode.CONTROL_UNKNOWN_VERB, `unknown control verb '${verb.slice(0, 64)}'`);
  if (args !== undefined && !isRecord(args)) throw new NvmfNbdError(ErrorCode.CONTROL_PROTOCOL, 'control request args must be an object');
  return { id, verb: verb as ControlVerbValue, args: args ?? {} };
}

/** The id of a request line when it can be read, so an error response can echo it; else 0. */
export function requestIdOf(line: string): number {
  try {
    const v = JSON.parse(line) as unknown;
    if (isRecord(v) && typeof v.id === 'number' && Number.isSafeInteger(v.id) && v.id >= 0) return v.id;
  } catch {
    // fall through
  }
  return 0;
}

/**
 * Parse one response line.
 * @throws CLI_ERR_CONTROL_PROTOCOL
 */
export function parseResponse(line: string): ControlResponse {
  const v = parseJson(line);
  if (!isRecord(v) || typeof v.id !== 'number' || typeof v.ok !== 'boolean') {
    throw new NvmfNbdError(ErrorCode.CONTROL_PROTOCOL, 'control response needs id and ok');
  }
  if (v.ok) return { id: v.id, ok: true, result: v.result };
  const e = v.error;
  if (!isRecord(e) || typeof e.code !== 'string' || typeof e.message !== 'string') {
    throw new NvmfNbdError(ErrorCode.CONTROL_PROTOCOL, 'control error response needs error.code and error.message');
  }
  return { id: v.id, ok: false, error: { code: e.code, message: e.message } };
}

/** JSON replacer: bigints as numbers when safe (else strings), Buffers as hex. */
function replacer(_key: string, value: unknown): unknown {
  if (typeof value === 'bigint') return value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(value) : value.toString();
  if (isRecord(value) && value.type === 'Buffer' && Array.isArray(value.data)) return Buffer.from(value.data as number[]).toString('hex');
  return value;
}

function encodeLine(v: unknown, maxLine: number): Buffer {
  const b = Buffer.from(`${JSON.stringify(v, replacer)}\n`, 'utf8');
  if (b.length - 1 > maxLine) throw new NvmfNbdError(ErrorCode.CONTROL_LINE_TOO_LONG, `control message of ${b.length - 1} bytes is over ${maxLine}`);
  return b;
}

/** Encode a request line (newline included). @throws CLI_ERR_CONTROL_LINE_TOO_LONG */
export function encodeRequest(r: ControlRequest, maxLine = MAX_CONTROL_LINE): Buffer {
  return encodeLine({ id: r.id, verb: r.verb, args: r.args }, maxLine);
}

/**
 * Encode a response line. A result too large for one line becomes an error response instead,
 * so the client is always answered.
 */
export function encodeResponse(r: ControlResponse, maxLine = MAX_CONTROL_LINE): Buffer {
  try {
    return encodeLine(r, maxLine);
  } catch (err) {
    return encodeLine(errorResponse(r.id, err), maxLine);
  }
}

/** An error response for `err` (ours keep their code; anything else is an internal error). */
export function errorResponse(id: number, err: unknown): ControlResponse {
  if (err instanceof NvmfNbdError) return { id, ok: false, error: { code: err.code, message: err.message } };
  return { id, ok: false, error: { code: 'INTERNAL', message: err instanceof Error ? err.message : String(err) } };
}

/** Turn an error response back into an NvmfNbdError (unknown codes become CONTROL_PROTOCOL). */
export function responseError(e: ControlError): NvmfNbdError {
  const code = CODES.has(e.code) ? (e.code as ErrorCodeValue) : ErrorCode.CONTROL_PROTOCOL;
  return new NvmfNbdError(code, e.message);
}

// ---------------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// CLI side: the --control option and the connect handoff
// ---------------------------------------------------------------------------------------------

/** `--control PATH`, shared by every verb that talks to the daemon. */
export const CONTROL_OPTION: OptionSpec = {
  long: 'control', type: 'string', metavar: 'PATH', help: 'daemon control socket (default $NVMF_NBD_CONTROL or STATE_DIR/control.sock)',
};

/** Options connect and connect-all add for the handoff. */
export const HANDOFF_OPTIONS: readonly OptionSpec[] = [
  { long: 'foreground', type: 'boolean', help: 'stay in the foreground even when a daemon is running' },
  CONTROL_OPTION,
];

/** Options that only steer the CLI and are not sent to the daemon. */
const CLI_ONLY = new Set(['control', 'foreground', 'output-format', 'quiet']);

/** The connect options as the daemon takes them: CLI-only options and absent values removed. */
export function connectArgsForDaemon(opts: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(opts)) if (!CLI_ONLY.has(k) && v !== undefined) out[k] = v;
  return out;
}

/** What the daemon answers to connect. */
export interface ConnectResult {
  readonly name: string;
  /** The foreground connect's human output. */
  readonly text: string;
  /** The foreground connect's `-o json` output. */
  readonly json: unknown;
  /** True when the subsystem was already connected over this path and that controller is the answer. */
  readonly existing?: boolean;
}

/**
 * Open a client to the daemon, or resolve undefined (after saying so on stderr) when none runs,
 * so the caller stays in the foreground.
 */
export async function daemonOrForeground(opts: Record<string, unknown>, stateDirectory: string, what = 'staying in the foreground'): Promise<ControlClient | undefined> {
  const sock = controlSocketPath(opts.control, stateDirectory);
  try {
    return await ControlClient.connect(sock, 2000);
  } catch (err) {
    if (err instanceof NvmfNbdError && err.code === ErrorCode.DAEMON_UNAVAILABLE) {
      if (opts.quiet !== true) process.stderr.write(`no daemon running (${sock}); ${what}\n`);
      return undefined;
    }
    throw err;
  }
}

/**
 * The connect handoff (like FreeBSD's handoff ioctl): when a daemon answers on the control
 * socket, it takes the connection over and this resolves with its answer; with no daemon this
 * resolves undefined and the caller connects in the foreground.
 */
export async function handOffConnect(opts: Record<string, unknown>, stateDirectory: string): Promise<ConnectResult | undefined> {
  const c = await daemonOrForeground(opts, stateDirectory);
  if (c === undefined) return undefined;
  try {
    return (await c.request(ControlVerb.CONNECT, connectArgsForDaemon(opts))) as ConnectResult;
  } finally {
    c.close();
  }
}

/**
 * One request to the daemon for a verb that needs it (list, disconnect, get-log, …).
 * @throws CLI_ERR_DAEMON_UNAVAILABLE (with a hint to start one), or the daemon's error
 */
export async function requestDaemon(opts: Record<string, unknown>, stateDirectory: string, verb: ControlVerbValue, args: Record<string, unknown> = {}): Promise<unknown> {
  const sock = controlSocketPath(opts.control, stateDirectory);
  let c: ControlClient;
  try {
    c = await ControlClient.connect(sock, 2000);
  } catch (err) {
    if (err instanceof NvmfNbdError && err.code === ErrorCode.DAEMON_UNAVAILABLE) {
      throw new NvmfNbdError(ErrorCode.DAEMON_UNAVAILABLE, `no daemon running (${sock}): start one with 'nvmf-nbd daemon'`, { cause: err });
    }
    throw err;
  }
  try {
    return await c.request(verb, args);
  } finally {
    c.close();
  }
}
