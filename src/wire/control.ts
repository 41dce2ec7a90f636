/**
 * The daemon's control protocol codec: newline-delimited JSON over a Unix socket (the analogue of
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
 * Pure: no sockets, no timers. The client is `engine/control-client.ts`, the server the daemon.
 */
import { ErrorCode, NvmfNbdError } from '../errors';
import type { ErrorCodeValue } from '../errors';

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
  /** Every subsystem with its namespaces and their paths (ANA state, I/O counts, current path): `{ subsystems }`. */
  SHOW_TOPOLOGY: 'show-topology',
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
