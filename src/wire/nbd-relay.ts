/**
 * The NBD relay's stream trackers (pure: no sockets, no timers), used by the sticky-endpoint
 * holder: {@link NbdClientStream} follows the client → server bytes, {@link NbdServerStream} the
 * server → client bytes of one connection, so a relay can record the handshake (to replay it to a
 * restarted server), cut transmission into whole requests and replies, and re-send what had no
 * reply. Every failure is an {@link NvmfNbdError} with a stable code (the fuzz harness calls
 * these entry points directly).
 *
 * The handshake is a conversation: after NBD_OPT_GO or NBD_OPT_EXPORT_NAME the client may pipeline
 * requests before the server answered (the daemon's own server accepts that), and what those
 * bytes are depends on the answer — requests after an ACK, more options after a refusal. So the
 * client tracker keeps bytes after such an option unparsed until the server tracker reports the
 * answer. Each phase has its own header slot: an option header is never read as a request.
 */
import { ErrorCode, NvmfNbdError } from '../errors';
import {
  ChunkQueue, ClientFlag, Cmd, InfoType, MAX_OPTION_LENGTH, NBD_IHAVEOPT, NBD_MAGIC, NBD_OPT_REPLY_MAGIC, NBD_REQUEST_MAGIC,
  NBD_SIMPLE_REPLY_MAGIC, Opt, REQUEST_HEADER_SIZE, Rep, SIMPLE_REPLY_SIZE,
} from './nbd';

/** Option header: IHAVEOPT u64 | option u32 | length u32 (proto.md "Option haggling"). */
const OPTION_HEADER_SIZE = 16;
/** Option reply header: magic u64 | option u32 | type u32 | length u32. */
const OPTION_REPLY_HEADER_SIZE = 20;
/** Server greeting: NBDMAGIC u64 | IHAVEOPT u64 | handshake flags u16. */
const GREETING_SIZE = 18;
/** Reply types with the error bit set are final refusals. */
const REP_ERROR_BIT = 0x80000000;

/** One request as the client sent it, kept until its reply arrives. */
export interface HeldRequest {
  readonly cookie: bigint;
  readonly type: number;
  readonly length: number;
  /** Header and (WRITE) payload, ready to be re-sent. */
  readonly bytes: Buffer[];
  /** Bytes of `bytes` (header + WRITE payload). */
  readonly size: number;
  /** What the request costs a relay until its reply is out: `size`, plus the READ data. */
  readonly cost: number;
}

/** Client tracker phases. `answer`: a GO/EXPORT_NAME is out; later bytes wait for the answer. */
type ClientPhase = 'flags' | 'options' | 'optionData' | 'answer' | 'transmission';

/**
 * The client → server byte stream of one NBD connection. During the handshake it records the
 * raw bytes (to replay them to a new server) and the options in order; in transmission it cuts
 * the stream into requests.
 * @throws NBD_ERR_PROTOCOL / NBD_ERR_OPTION_TOO_LARGE / NBD_ERR_BAD_MAGIC /
 *         NBD_ERR_REQUEST_TOO_LARGE on bad input
 */
export class NbdClientStream {
  private readonly q = new ChunkQueue();
  private phase: ClientPhase = 'flags';
  /** Option header waiting for its data (handshake only). */
  private optionHeader: Buffer | undefined;
  /** Request header waiting for its WRITE payload (transmission only). */
  private requestHeader: Buffer | undefined;
  /** Every handshake byte the client sent (up to and including the option that was answered). */
  readonly handshake: Buffer[] = [];
  /** Options in the order sent (the server tracker matches answers against them). */
  readonly options: number[] = [];
  /** Client flags (NO_ZEROES matters for EXPORT_NAME). */
  clientFlags = 0;

  constructor(private readonly maxPayload = 32 * 1024 * 1024) {}

  /** The last option sent (-1: none yet). */
  get lastOption(): number {
    return this.options[this.options.length - 1] ?? -1;
  }

  /** True while bytes after a GO/EXPORT_NAME wait for the server's answer. */
  get awaitingAnswer(): boolean {
    return this.phase === 'answer';
  }

  /** Bytes received and not yet parsed. */
  get buffered(): number {
    return this.q.length;
  }

  /** Server reached transmission: from now on bytes are requests. */
  startTransmission(): void {
    this.phase = 'transmission';
    this.optionHeader = undefined;
  }

  /** The server refused the GO: the bytes after it are more options. */
  resumeOptions(): void {
    if (this.phase === 'answer') this.phase = 'options';
  }

  /**
   * Feed bytes (an empty buffer re-parses what waited for an answer); returns the requests
   * completed (none during the handshake).
   */
  push(chunk: Buffer): HeldRequest[] {
    this.q.push(chunk);
    const out: HeldRequest[] = [];
    for (;;) {
      switch (this.phase) {
        case 'flags': {
          // client flags u32
          if (this.q.length < 4) return out;
          const b = Buffer.from(this.q.take(4));
          this.clientFlags = b.readUInt32BE(0);
          this.handshake.push(b);
          this.phase = 'options';
          break;
        }
        case 'options': {
          // IHAVEOPT u64 | option u32 | length u32 | data
          if (this.q.length < OPTION_HEADER_SIZE) return out;
          const h = Buffer.from(this.q.take(OPTION_HEADER_SIZE));
          if (h.readBigUInt64BE(0) !== NBD_IHAVEOPT) throw new NvmfNbdError(ErrorCode.NBD_PROTOCOL, 'option without IHAVEOPT');
          if (h.readUInt32BE(12) > MAX_OPTION_LENGTH) throw new NvmfNbdError(ErrorCode.NBD_OPTION_TOO_LARGE, `option of ${h.readUInt32BE(12)} bytes`);
          this.optionHeader = h;
          this.phase = 'optionData';
          break;
        }
        case 'optionData': {
          const h = this.optionHeader;
          if (h === undefined) throw new NvmfNbdError(ErrorCode.NBD_PROTOCOL, 'option data without a header');
          const len = h.readUInt32BE(12);
          if (this.q.length < len) return out;
          this.handshake.push(h, Buffer.from(this.q.take(len)));
          const option = h.readUInt32BE(8);
          this.options.push(option);
          this.optionHeader = undefined;
          // What follows GO/EXPORT_NAME depends on the server's answer.
          this.phase = option === Opt.GO || option === Opt.EXPORT_NAME ? 'answer' : 'options';
          break;
        }
        case 'answer':
          return out;
        case 'transmission': {
          // magic u32 | flags u16 | type u16 | cookie u64 | offset u64 | length u32 | [WRITE data]
          if (this.requestHeader === undefined) {
            if (this.q.length < REQUEST_HEADER_SIZE) return out;
            const h = Buffer.from(this.q.take(REQUEST_HEADER_SIZE));
            if (h.readUInt32BE(0) !== NBD_REQUEST_MAGIC) throw new NvmfNbdError(ErrorCode.NBD_BAD_MAGIC, 'bad request magic');
            if (h.readUInt16BE(6) === Cmd.WRITE && h.readUInt32BE(24) > this.maxPayload) {
              throw new NvmfNbdError(ErrorCode.NBD_REQUEST_TOO_LARGE, `write of ${h.readUInt32BE(24)} bytes`);
            }
            this.requestHeader = h;
          }
          const h = this.requestHeader;
          const type = h.readUInt16BE(6);
          const length = h.readUInt32BE(24);
          const payload = type === Cmd.WRITE ? length : 0;
          if (this.q.length < payload) return out;
          this.requestHeader = undefined;
          const bytes = payload > 0 ? [h, Buffer.from(this.q.take(payload))] : [h];
          const size = REQUEST_HEADER_SIZE + payload;
          out.push({ cookie: h.readBigUInt64BE(8), type, length, bytes, size, cost: size + (type === Cmd.READ ? length : 0) });
          break;
        }
        default: {
          const never: never = this.phase;
          throw new NvmfNbdError(ErrorCode.NBD_PROTOCOL, `bad phase ${String(never)}`);
        }
      }
    }
  }
}

/** What the server side of the handshake said. */
export interface NbdServerHandshake {
  /** Export size from NBD_INFO_EXPORT or the EXPORT_NAME reply. */
  size: bigint | undefined;
  /** The server accepted structured replies. */
  structured: boolean;
}

type ServerPhase = 'greeting' | 'replies' | 'replyData' | 'exportName' | 'transmission';

/**
 * The server → client byte stream. Handshake: greeting, option replies (matched in order to the
 * client's options), until the ACK of NBD_OPT_GO or the EXPORT_NAME reply; then simple replies,
 * each returned whole (header and READ data) so a relay never forwards half a reply.
 * @throws NBD_ERR_PROTOCOL / NBD_ERR_OPTION_TOO_LARGE / NBD_ERR_BAD_MAGIC; NBD_ERR_UNKNOWN_EXPORT
 *         when a replayed handshake's final GO is refused
 */
export class NbdServerStream {
  private readonly q = new ChunkQueue();
  private phase: ServerPhase = 'greeting';
  /** Option reply header waiting for its data (handshake only). */
  private optionReply: Buffer | undefined;
  /** Simple reply header waiting for its READ data (transmission only). */
  private simpleReply: Buffer | undefined;
  /** Client options answered so far (final replies seen). */
  private answered = 0;
  /** Refused GOs seen so far. */
  private goAnswers = 0;
  readonly info: NbdServerHandshake = { size: undefined, structured: false };

  /** Bytes received and not yet parsed. */
  get buffered(): number {
    return this.q.length;
  }

  /**
   * @param client the same connection's client stream (its options and flags decide how the
   *        handshake ends)
   * @param requestOf the in-flight request of a cookie (undefined: not in flight)
   * @param replay replaying a recorded handshake: a refused final GO is final (the export is gone)
   */
  constructor(
    private readonly client: NbdClientStream,
    private readonly requestOf: (cookie: bigint) => { type: number; length: number } | undefined,
    private readonly replay = false,
  ) {}

  /**
   * Feed bytes. `done` is true when these bytes ended the handshake; then parsing stops there
   * (bytes after it stay queued: push an empty buffer to parse them). `replies` are the complete
   * replies of the transmission phase.
   */
  push(chunk: Buffer): { done: boolean; replies: Array<{ cookie: bigint; bytes: Buffer[] }> } {
    this.q.push(chunk);
    const replies: Array<{ cookie: bigint; bytes: Buffer[] }> = [];
    let done = false;
    const transmission = (): void => {
      done = true;
      this.phase = 'transmission';
      this.optionReply = undefined;
      if (!this.replay) this.client.startTransmission();
    };
    for (;;) {
      switch (this.phase) {
        case 'greeting': {
          if (this.q.length < GREETING_SIZE) return { done, replies };
          const g = Buffer.from(this.q.take(GREETING_SIZE));
          if (g.readBigUInt64BE(0) !== NBD_MAGIC || g.readBigUInt64BE(8) !== NBD_IHAVEOPT) throw new NvmfNbdError(ErrorCode.NBD_PROTOCOL, 'not a fixed-newstyle NBD server');
          this.phase = 'replies';
          break;
        }
        case 'replies': {
          // EXPORT_NAME has no reply header: size u64 | flags u16 | [124 zeroes]
          if (this.client.options[this.answered] === Opt.EXPORT_NAME) {
            this.phase = 'exportName';
            break;
          }
          // magic u64 | option u32 | type u32 | length u32 | data
          if (this.q.length < OPTION_REPLY_HEADER_SIZE) return { done, replies };
          const h = Buffer.from(this.q.take(OPTION_REPLY_HEADER_SIZE));
          if (h.readBigUInt64BE(0) !== NBD_OPT_REPLY_MAGIC) throw new NvmfNbdError(ErrorCode.NBD_PROTOCOL, 'bad option reply magic');
          if (h.readUInt32BE(16) > MAX_OPTION_LENGTH) throw new NvmfNbdError(ErrorCode.NBD_OPTION_TOO_LARGE, `option reply of ${h.readUInt32BE(16)} bytes`);
          this.optionReply = h;
          this.phase = 'replyData';
          break;
        }
        case 'replyData': {
          const h = this.optionReply;
          if (h === undefined) throw new NvmfNbdError(ErrorCode.NBD_PROTOCOL, 'option reply data without a header');
          const len = h.readUInt32BE(16);
          if (this.q.length < len) return { done, replies };
          const data = Buffer.from(this.q.take(len));
          this.optionReply = undefined;
          this.phase = 'replies';
          const option = h.readUInt32BE(8);
          const type = h.readUInt32BE(12);
          // NBD_INFO_EXPORT: type u16 | size u64 | transmission flags u16
          if (type === Rep.INFO && data.length >= 12 && data.readUInt16BE(0) === InfoType.EXPORT) this.info.size = data.readBigUInt64BE(2);
          const refused = (type & REP_ERROR_BIT) !== 0;
          if (type !== Rep.ACK && !refused) break;
          // A final reply answers the oldest unanswered option.
          this.answered++;
          if (option === Opt.STRUCTURED_REPLY && type === Rep.ACK) this.info.structured = true;
          if (option === Opt.GO && type === Rep.ACK) {
            transmission();
            // Stop here: the caller registers the requests that were pipelined after the GO
            // before any reply to them is parsed (push an empty buffer to go on).
            return { done, replies };
          }
          if (option === Opt.GO && refused) {
            // Replaying, only the refusal of the last GO recorded is final (an earlier one
            // was refused the first time too, and the client went on).
            this.goAnswers++;
            if (this.replay && this.goAnswers >= this.client.options.filter((x) => x === Opt.GO).length) {
              throw new NvmfNbdError(ErrorCode.NBD_UNKNOWN_EXPORT, `the restarted server refused the export (reply type 0x${type.toString(16)})`);
            }
            if (!this.replay) this.client.resumeOptions();
          }
          break;
        }
        case 'exportName': {
          const n = 10 + ((this.client.clientFlags & ClientFlag.NO_ZEROES) !== 0 ? 0 : 124);
          if (this.q.length < n) return { done, replies };
          this.info.size = Buffer.from(this.q.take(n)).readBigUInt64BE(0);
          this.answered++;
          transmission();
          return { done, replies };
        }
        case 'transmission': {
          // magic u32 | error u32 | cookie u64 | [READ data when error is 0]
          if (this.simpleReply === undefined) {
            if (this.q.length < SIMPLE_REPLY_SIZE) return { done, replies };
            const h = Buffer.from(this.q.take(SIMPLE_REPLY_SIZE));
            if (h.readUInt32BE(0) !== NBD_SIMPLE_REPLY_MAGIC) throw new NvmfNbdError(ErrorCode.NBD_BAD_MAGIC, 'not a simple reply');
            this.simpleReply = h;
          }
          const h = this.simpleReply;
          const cookie = h.readBigUInt64BE(8);
          const req = this.requestOf(cookie);
          if (req === undefined) throw new NvmfNbdError(ErrorCode.NBD_PROTOCOL, `reply for unknown cookie ${cookie}`);
          const data = req.type === Cmd.READ && h.readUInt32BE(4) === 0 ? req.length : 0;
          if (this.q.length < data) return { done, replies };
          this.simpleReply = undefined;
          replies.push({ cookie, bytes: data > 0 ? [h, Buffer.from(this.q.take(data))] : [h] });
          break;
        }
        default: {
          const never: never = this.phase;
          throw new NvmfNbdError(ErrorCode.NBD_PROTOCOL, `bad phase ${String(never)}`);
        }
      }
    }
  }
}
