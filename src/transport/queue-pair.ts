/**
 * One NVMe/TCP queue pair (host side) over a `net.Socket`: ICReq/ICResp, Fabrics Connect,
 * command identifiers, in-capsule data, R2T → H2CData, C2HData reassembly, digests, SQ flow
 * control and TermReq (NVMe/TCP transport spec, TP 8000 §3.3 and §3.6).
 *
 * Every failure ends in {@link QueuePair.destroy}, which rejects every in-flight and waiting
 * command exactly once and emits `close` with the error.
 */
import { EventEmitter } from 'node:events';
import * as net from 'node:net';
import { ErrorCode, NvmfNbdError } from '../errors';
import { tlsConnect } from '../tls/channel';
import type { TlsPsk } from '../tls/psk';
// Straight from the codec modules, not the '../wire' barrel: its CommonJS re-exports are getters,
// a call per use on the per-command path.
import { Fes, PduFlag, PduParser, PduType, encodeCapsuleCmd, encodeH2CData, encodeIcReq, encodeTermReq } from '../wire/pdu';
import type { HostPduSink, Pdu, PduOptions } from '../wire/pdu';
import { SglType, encodeConnectData, setCid, setSgl, sqeConnect } from '../wire/sqe';
import { decodeStatusField, parseCqe } from '../wire/cqe';
import type { Cqe } from '../wire/cqe';
import type { NvmeStatus } from '../errors';
import { FabricsStatus, Sct, formatStatus, statusError } from '../wire/status';
import { sqeAuthReceive, sqeAuthSend } from '../wire/auth';
import { WriteBatcher } from '../net/write-batcher';
import { PromiseCommand, QueueCommand, failLater } from './queue-command';
import type { Completion } from './queue-command';
import { connectFailureDetail } from './connect-failure';

export { QueueCommand } from './queue-command';
export type { Completion } from './queue-command';

/** Largest in-capsule write on an admin queue (TP 8000: admin capsules carry up to 8 KiB). */
export const ADMIN_IN_CAPSULE_MAX = 8192;
/** Admin queue depth the host asks for (Linux uses 32 too). */
export const ADMIN_QUEUE_SIZE = 32;
/** Size of the Connect command's data (always in-capsule). */
const CONNECT_DATA_LEN = 1024;

/**
 * Receive path of a plain-TCP queue (`net.Socket` `onread`): every socket read lands in one
 * buffer per queue, or — for the rest of a large C2HData payload — straight in the read's
 * destination, so the kernel's copy out of the socket is the only copy (see ARCHITECTURE
 * "Benchmarks": why reads cost twice writes). No Buffer, ArrayBuffer or closure per read.
 */
const RX_SCRATCH = 64 * 1024;
/**
 * Scratch size while large payloads stream in: enough for a run of CapsuleResps and the next
 * C2HData header, little enough that most of the next payload is left for a direct read.
 */
const RX_SMALL = 1024;
/** Payload rest (bytes) worth a read of its own straight into the destination. */
const RX_DIRECT_MIN = 16 * 1024;

/** Options of {@link QueuePair.connect}. */
export interface QueuePairOptions {
  /** Target address (IPv4/IPv6 literal or host name). */
  readonly host: string;
  readonly port: number;
  /** Local address to bind before connecting (nvme-cli host_traddr); undefined: any. */
  readonly localAddress?: string;
  /** Queue ID: 0 = admin, 1..n = I/O. */
  readonly qid: number;
  /** Queue depth in entries (1-based; Connect carries it 0-based). At least 2. */
  readonly queueSize: number;
  readonly subnqn: string;
  readonly hostnqn: string;
  /** 16-byte host identifier. */
  readonly hostid: Buffer;
  /** 0xFFFF (dynamic) on the admin queue; the admin queue's cntlid on I/O queues. */
  readonly cntlid: number;
  /** Keep Alive Timeout in ms for Connect (admin queue only; 0 disables). */
  readonly kato?: number;
  readonly hdgst?: boolean;
  readonly ddgst?: boolean;
  /** Ask the controller to disable SQ flow control (Connect CATTR bit 2). */
  readonly disableSqFlowControl?: boolean;
  /** Largest write carried in the command capsule; bigger writes wait for R2T. */
  readonly inCapsuleMax?: number;
  /** Largest data transfer of one command in bytes; also bounds one received PDU. */
  readonly maxTransfer?: number;
  /** Budget for TCP connect + ICReq/ICResp + Fabrics Connect. Default 10 s. */
  readonly connectTimeoutMs?: number;
  /** Default per-command timeout. Default 30 s. */
  readonly timeoutMs?: number;
  /**
   * In-band authentication of this queue (DH-HMAC-CHAP, `controller/auth.ts`): run after Fabrics
   * Connect when the response's AUTHREQ.ATR asks for it (or always with `authenticateAlways`),
   * and again when a command completes with Authentication Required (the command is then
   * retried once). Its rejection fails the connect / ends the queue.
   */
  readonly authenticate?: (qp: QueuePair) => Promise<unknown>;
  /** Authenticate even when the controller does not ask (the host wants the controller authenticated). */
  readonly authenticateAlways?: boolean;
  /** Run TLS 1.3 with this PSK before ICReq (NVMe/TCP secure channel); absent = plain TCP. */
  readonly tls?: TlsPsk;
}

/** Options of one {@link QueuePair.submit}. */
export interface SubmitOptions {
  /** Host-to-controller data (writes). Sent as a view, never copied. */
  readonly dataOut?: Buffer;
  /** Controller-to-host data length (reads). One Buffer of this size is allocated at submit. */
  readonly dataInLength?: number;
  /**
   * Controller-to-host destination (reads), instead of `dataInLength`: C2HData payloads are
   * copied straight from the socket chunks into it at their datao (no intermediate buffer) and
   * the completion's `data` is this same Buffer (or view).
   */
  readonly dataIn?: Buffer;
  /** Per-command timeout; defaults to the queue's. `Infinity`: no deadline (Asynchronous Event Request). */
  readonly timeoutMs?: number;
  /** Force in-capsule data whatever its size (Fabrics Connect). */
  readonly inCapsule?: boolean;
  /** Resolve with the CQE even when its status is an error (the caller decodes DW0). */
  readonly acceptErrorStatus?: boolean;
}

/** Connect response DW0 bits 31:16 (AUTHREQ): ATR (bit 17) authentication required, ASCR (bit 18) secure channel. */
const AUTHREQ_ATR = 1 << 17;
const AUTHREQ_ASCR = 1 << 18;

/** Counters shown by `list` and `stats()`. */
export interface QueueStats {
  qid: number;
  commands: number;
  bytesIn: number;
  bytesOut: number;
  errors: number;
  inFlight: number;
  waiting: number;
  /** False when the controller disabled SQ flow control. */
  sqFlowControl: boolean;
  /** Reads completed by C2HData SUCCESS (no CapsuleResp). */
  c2hSuccess: number;
  /**
   * Of those, how many arrived while SQ flow control was on: a deviation from TP 8000 that SPDK's
   * nvmf_tgt makes by default (its `c2h_success` option). Tolerated and counted.
   */
  c2hSuccessWithSqFlow: number;
}

/** The status of every successful completion (shared, frozen: completions allocate no status). */
const STATUS_OK: NvmeStatus = Object.freeze({ sct: 0, sc: 0, dnr: false, more: false, crd: 0 });

const QpState = { CONNECTING: 'connecting', READY: 'ready', CLOSED: 'closed' } as const;
type QpState = (typeof QpState)[keyof typeof QpState];

function fatal(code: (typeof ErrorCode)[keyof typeof ErrorCode], message: string, fes: number, fei = 0): NvmfNbdError {
  return new NvmfNbdError(code, message, { fes, fei });
}

/**
 * A connected NVMe/TCP queue pair. Create with {@link QueuePair.connect}; events:
 * `close(err: NvmfNbdError | undefined)` once, when the connection ends for any reason.
 */
export class QueuePair extends EventEmitter {
  readonly qid: number;
  readonly queueSize: number;
  /** Controller ID returned by Fabrics Connect. */
  cntlid = 0xffff;
  /** MAXH2CDATA from ICResp. */
  maxH2CData = 0;
  /** Digests in force after ICReq/ICResp. */
  hdgst: boolean;
  ddgst: boolean;
  /** False when the controller disabled SQ flow control (Connect SQHD 0xFFFF). */
  sqFlowControl = true;

  private readonly socket: net.Socket;
  /**
   * Receive scratch (onread). TLS queues read through onread too: node:tls copies each record's
   * plaintext into the buffer we hand it, so a large payload is decrypted straight into its
   * destination instead of into a fresh Buffer per 16 KiB record that the parser copies again.
   */
  private readonly rxScratch: Buffer | undefined;
  private readonly rxSmall: Buffer | undefined;
  /** The payload view last handed to the socket as its read buffer, if any. */
  private rxDirect: Buffer | undefined;
  /** The last C2HData placed was large: read headers into the small scratch (RX_SMALL). */
  private rxLarge = false;
  /** The one PDU callback (a closure per socket read costs an allocation per read). */
  private readonly onPduFn = (pdu: Pdu): void => this.onPdu(pdu);
  /** PDUs written in one tick leave in one writev (see write-batcher.ts). */
  private readonly out: WriteBatcher;
  private readonly parser: PduParser;
  private state: QpState = QpState.CONNECTING;
  private txOpts: PduOptions = { hdgst: false, ddgst: false, pda: 0 };
  private inCapsuleMax: number;
  private readonly maxTransfer: number;
  private readonly timeoutMs: number;
  /** Commands in flight by cid (an array: a Map costs a hash lookup per set/get/delete). */
  private readonly inflight: Array<QueueCommand | undefined>;
  private inflightCount = 0;
  /**
   * The CQE handed to `onQpComplete`, refilled per completion (valid only during the call; the
   * promise wrapper copies it): no Cqe, status or view object per I/O.
   */
  private readonly rxCqe: Cqe = { dw0: 0, dw1: 0, sqhd: 0, sqid: 0, cid: 0, status: STATUS_OK, ok: true };
  /** Free command identifiers, FIFO so a cid is not reused right away (stale replies stand out). */
  private readonly freeCids: Uint16Array;
  /** Ring over freeCids (Array.shift is a C++ builtin call per command): oldest free cid, count. */
  private cidHead = 0;
  private cidCount = 0;
  private readonly waiters: QueueCommand[] = [];
  /**
   * SQ flow control as sequence numbers, not ring indices: commands issued so far, and how many of
   * them the controller is known to have fetched. A CQE's SQHD (a ring index) is converted to the
   * newest sequence number it can denote; a C2HData SUCCESS (no CQE, so no SQHD) proves its own
   * command was fetched, hence every earlier one too (one TCP stream, fetched in order). The
   * known head only moves forward, so a SQHD older than a SUCCESS already seen changes nothing.
   */
  private sqIssued = 0;
  private sqFetched = 0;
  /** The newest head a CQE reported (SQHD as a sequence number): SQHDs may not go below it. */
  private sqReported = 0;
  private timer: NodeJS.Timeout | undefined;
  private timerArmed = false;
  private readonly tickMs: number;
  private icWaiter: { resolve(): void; reject(e: Error): void } | undefined;
  private closeError: NvmfNbdError | undefined;
  private readonly counters = { commands: 0, bytesIn: 0, bytesOut: 0, errors: 0, c2hSuccess: 0, c2hSuccessWithSqFlow: 0 };
  /** Commands in flight without a deadline (Asynchronous Event Requests wait forever). */
  private untimed = 0;
  /**
   * Count of socket reads. The controller's receive watchdog compares it between ticks: a queue
   * with commands awaiting a reply whose count does not move has a silent (stalled) peer.
   */
  rxEvents = 0;
  /** The TLS handshake finished (secure channel up). */
  private tlsUp = false;
  private tcpUp = false;
  /** Resolves once the TCP socket is fully closed (nothing of this association can still be sent). */
  readonly socketClosed: Promise<void>;
  /** Authentications of this queue that succeeded (the first one and re-authentications). */
  authentications = 0;
  private readonly authenticate: ((qp: QueuePair) => Promise<unknown>) | undefined;
  private reauth: Promise<void> | undefined;

  private constructor(socket: net.Socket, opts: QueuePairOptions, rxScratch?: Buffer) {
    super();
    this.socket = socket;
    this.rxScratch = rxScratch;
    // TLS: no small scratch. node:tls fills whatever we hand it from a whole decrypted record
    // (up to 16 KiB), so 1 KiB buffers would only mean 16 callbacks per record.
    this.rxSmall = opts.tls !== undefined ? rxScratch : rxScratch?.subarray(0, RX_SMALL);
    this.out = new WriteBatcher(socket);
    this.qid = opts.qid;
    this.queueSize = opts.queueSize;
    this.hdgst = opts.hdgst === true;
    this.ddgst = opts.ddgst === true;
    this.inCapsuleMax = opts.inCapsuleMax ?? (opts.qid === 0 ? ADMIN_IN_CAPSULE_MAX : 0);
    this.maxTransfer = opts.maxTransfer ?? 1 << 20;
    this.timeoutMs = opts.timeoutMs ?? 30_000;
    this.authenticate = opts.authenticate;
    this.tickMs = Math.max(5, Math.min(1000, Math.floor(this.timeoutMs / 8)));
    // A circular SQ of N entries holds N-1 commands; cids are bounded the same way.
    this.freeCids = new Uint16Array(Math.max(1, opts.queueSize - 1));
    for (let cid = 0; cid < opts.queueSize - 1; cid++) this.freeCids[cid] = cid;
    this.cidCount = opts.queueSize - 1;
    this.inflight = new Array<QueueCommand | undefined>(this.freeCids.length).fill(undefined);
    const sink: HostPduSink = {
      onCapsuleResp: (b, o) => this.onCqe(b, o),
      onC2HData: (cccid, datao, flags, data, ok) => this.onC2HData(cccid, datao, flags, data, ok),
    };
    this.parser = new PduParser({
      role: 'host',
      maxData: Math.max(this.maxTransfer, 8192),
      placeData: (_type, cccid, _ttag, datao, datal) => this.placeC2HData(cccid, datao, datal),
      reusesChunks: rxScratch !== undefined,
      sink,
    });
    socket.setNoDelay(true);
    this.socketClosed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
    if (rxScratch === undefined) socket.on('data', (chunk: Buffer) => this.onData(chunk, chunk.length));
    socket.on('error', (err) => {
      // Before secureConnect a TLS socket's error is the handshake's (wrong key, no TLS there).
      const handshaking = opts.tls !== undefined && this.tcpUp && !this.tlsUp;
      const code = handshaking ? ErrorCode.TLS_HANDSHAKE : this.state === QpState.CONNECTING ? ErrorCode.CONNECT_FAILED : ErrorCode.CONNECTION_CLOSED;
      this.destroy(new NvmfNbdError(code, `queue ${this.qid} (${opts.host}:${opts.port}): ${err.message}`, { cause: err }));
    });
    socket.on('close', () => this.destroy(opts.tls !== undefined && this.tcpUp && !this.tlsUp
      ? new NvmfNbdError(ErrorCode.TLS_HANDSHAKE, `queue ${this.qid} (${opts.host}:${opts.port}): the target closed the connection during the TLS handshake (no TLS on that port, or it does not know PSK identity '${opts.tls.identity}')`)
      : new NvmfNbdError(ErrorCode.CONNECTION_CLOSED, `queue ${this.qid}: connection closed by the target`)));
    if (opts.tls !== undefined) socket.once('connect', () => { this.tcpUp = true; });
  }

  /**
   * Dial the target, negotiate ICReq/ICResp and run Fabrics Connect for queue `opts.qid`.
   * Rejects with `NVMF_ERR_CONNECT_FAILED` (NVMe status attached when the target refused),
   * `NVMF_ERR_ICRESP_INVALID`, or `NVMF_ERR_TIMEOUT`.
   */
  static async connect(opts: QueuePairOptions): Promise<QueuePair> {
    if (!(opts.queueSize >= 2 && opts.queueSize <= 65536)) {
      throw new NvmfNbdError(ErrorCode.INVALID_ARGUMENT, `queue size ${opts.queueSize} out of range 2..65536`);
    }
    const budget = opts.connectTimeoutMs ?? 10_000;
    const local = opts.localAddress !== undefined ? { localAddress: opts.localAddress } : {};
    // Plain TCP reads into the queue's own buffers (onread); the socket asks for the first one
    // while connecting, before the queue pair exists.
    const rxScratch = Buffer.allocUnsafeSlow(RX_SCRATCH);
    let qpRef: QueuePair | undefined;
    const onread = {
      buffer: () => (qpRef === undefined ? rxScratch : qpRef.rxBuffer()),
      // true: keep reading (false would pause the socket).
      callback: (n: number, buf: Uint8Array): boolean => { qpRef?.onRead(n, buf as Buffer); return true; },
    };
    const socket = opts.tls !== undefined
      ? tlsConnect(opts.host, opts.port, opts.tls, { ...local, onread })
      : net.connect({ host: opts.host, port: opts.port, ...local, onread });
    const qp = new QueuePair(socket, opts, rxScratch);
    qpRef = qp;
    const timer = setTimeout(() => {
      qp.destroy(new NvmfNbdError(ErrorCode.TIMEOUT, `queue ${opts.qid}: connect to ${opts.host}:${opts.port} timed out after ${budget} ms`));
    }, budget);
    try {
      await new Promise<void>((resolve, reject) => {
        qp.once('close', (err?: Error) => reject(err ?? new NvmfNbdError(ErrorCode.CONNECTION_CLOSED, 'closed')));
        if (opts.tls !== undefined) {
          socket.once('secureConnect', () => {
            qp.tlsUp = true;
            resolve();
          });
        } else {
          socket.once('connect', () => resolve());
        }
      });
      await qp.initialize();
      await qp.fabricsConnect(opts);
      return qp;
    } catch (err) {
      qp.destroy(err instanceof NvmfNbdError ? err : new NvmfNbdError(ErrorCode.CONNECT_FAILED, String(err), { cause: err }));
      throw err;
    } finally {
      clearTimeout(timer);
    }
  }

  /** ICReq → ICResp, validating the controller's answers (TP 8000 §3.6.2.2/3). */
  private initialize(): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.icWaiter = { resolve, reject };
      // hpda 0: we accept C2H data at any offset; maxr2t 0: one outstanding R2T per command.
      this.socket.write(encodeIcReq({ hpda: 0, hdgst: this.hdgst, ddgst: this.ddgst, maxr2t: 0 }));
    });
  }

  private onIcResp(pdu: Extract<Pdu, { type: 0x01 }>): void {
    const w = this.icWaiter;
    this.icWaiter = undefined;
    if (w === undefined) throw fatal(ErrorCode.PDU_SEQUENCE, `queue ${this.qid}: unexpected ICResp`, Fes.PDU_SEQUENCE_ERROR);
    const bad = (why: string): void => {
      const err = new NvmfNbdError(ErrorCode.ICRESP_INVALID, `queue ${this.qid}: invalid ICResp: ${why}`, { fes: Fes.INVALID_HEADER_FIELD });
      w.reject(err);
      this.sendTermReqAndDestroy(err);
    };
    if (pdu.pfv !== 0) return bad(`PDU format version ${pdu.pfv}`);
    if (pdu.maxh2cdata < 4096 || pdu.maxh2cdata % 4 !== 0) return bad(`MAXH2CDATA ${pdu.maxh2cdata} (must be >= 4096 and a multiple of 4)`);
    if (pdu.cpda > 31) return bad(`CPDA ${pdu.cpda}`);
    if (pdu.hdgst !== this.hdgst) return bad(`header digest ${pdu.hdgst ? 'enabled' : 'refused'} (asked ${this.hdgst ? 'on' : 'off'})`);
    if (pdu.ddgst !== this.ddgst) return bad(`data digest ${pdu.ddgst ? 'enabled' : 'refused'} (asked ${this.ddgst ? 'on' : 'off'})`);
    this.maxH2CData = pdu.maxh2cdata;
    this.txOpts = { hdgst: this.hdgst, ddgst: this.ddgst, pda: pdu.cpda };
    this.parser.setDigests(this.hdgst, this.ddgst);
    this.state = QpState.READY;
    w.resolve();
  }

  /** Fabrics Connect (NVMe-oF §3.3): one capsule with 1 KiB in-capsule data. */
  private async fabricsConnect(opts: QueuePairOptions): Promise<void> {
    const sqe = sqeConnect({
      qid: opts.qid,
      sqsize: opts.queueSize - 1,
      kato: opts.qid === 0 ? opts.kato ?? 0 : 0,
      disableSqFlowControl: opts.disableSqFlowControl === true,
    });
    const data = encodeConnectData({ hostid: opts.hostid, cntlid: opts.cntlid, subnqn: opts.subnqn, hostnqn: opts.hostnqn });
    const { cqe } = await this.submit(sqe, { dataOut: data, inCapsule: true, acceptErrorStatus: true });
    if (!cqe.ok) {
      throw new NvmfNbdError(ErrorCode.CONNECT_FAILED,
        `Fabrics Connect (queue ${opts.qid}, subsystem ${opts.subnqn}) refused: ${formatStatus(cqe.status)}${connectFailureDetail(cqe, opts)}`,
        { status: cqe.status });
    }
    this.cntlid = cqe.dw0 & 0xffff;
    // Any other SQHD was already taken by onCapsuleResp.
    if (cqe.sqhd === 0xffff) this.sqFlowControl = false;
    if ((cqe.dw0 & AUTHREQ_ASCR) !== 0) {
      throw new NvmfNbdError(ErrorCode.AUTH_FAILED, `Fabrics Connect (queue ${opts.qid}): the target requires a secure channel (AUTHREQ.ASCR), which is not supported`);
    }
    if ((cqe.dw0 & AUTHREQ_ATR) !== 0 || opts.authenticateAlways === true) {
      if (this.authenticate === undefined) {
        throw new NvmfNbdError(ErrorCode.AUTH_FAILED,
          `Fabrics Connect (queue ${opts.qid}, subsystem ${opts.subnqn}): the target requires in-band authentication; give a DH-HMAC-CHAP secret (-S/--dhchap-secret)`);
      }
      await this.authenticate(this);
      this.authentications++;
    }
  }

  /** Authentication Send (Fabrics 05h) of `data` (DH-HMAC-CHAP, see controller/auth.ts). */
  async authSend(data: Buffer, timeoutMs: number): Promise<void> {
    await this.submit(sqeAuthSend(data.length), { dataOut: data, timeoutMs });
  }

  /** Authentication Receive (Fabrics 06h) with allocation length `al`: resolves with the data. */
  async authReceive(al: number, timeoutMs: number): Promise<Buffer> {
    const c = await this.submit(sqeAuthReceive(al), { dataInLength: al, timeoutMs });
    return c.data as Buffer;
  }

  /**
   * The controller answered Authentication Required: authenticate again (once for every command
   * refused meanwhile), then retry `w` once. A failed re-authentication ends the queue.
   */
  private reauthenticateAndRetry(w: QueueCommand): void {
    const run = this.authenticate;
    if (run === undefined) return;
    this.reauth ??= run(this).then(() => {
      this.authentications++;
      this.reauth = undefined;
    }, (err: unknown) => {
      this.reauth = undefined;
      const e = err instanceof NvmfNbdError ? err : new NvmfNbdError(ErrorCode.AUTH_FAILED, `queue ${this.qid}: re-authentication failed: ${String(err)}`, { cause: err });
      this.destroy(e);
      throw e;
    });
    this.reauth.then(() => {
      // The retry gets a fresh deadline: the re-authentication took part of the old one.
      w.deadline = Date.now() + (w.timeoutMs >= 0 ? w.timeoutMs : this.timeoutMs);
      w.authRetried = true;
      if (this.state === QpState.CLOSED) w.onQpError(this.closeError ?? new NvmfNbdError(ErrorCode.CONNECTION_CLOSED, `queue ${this.qid} closed`));
      else if (this.waiters.length === 0 && this.canIssue()) this.issue(w);
      else {
        this.waiters.push(w);
        if (Number.isFinite(w.deadline)) this.armTimer();
      }
    }, (err: unknown) => w.onQpError(err instanceof NvmfNbdError ? err : new NvmfNbdError(ErrorCode.AUTH_FAILED, String(err), { cause: err })));
  }

  /** Update the in-capsule limit once Identify Controller is known (IOCCSZ*16 − 64). */
  setInCapsuleMax(bytes: number): void {
    this.inCapsuleMax = Math.max(0, bytes);
  }

  /** True until the queue is destroyed. */
  get connected(): boolean {
    return this.state !== QpState.CLOSED;
  }

  /** Commands in flight that have a deadline, i.e. expect a reply (AERs excluded). */
  get awaitingReply(): number {
    return this.inflightCount - this.untimed;
  }

  /** Commands in flight plus waiting. */
  get load(): number {
    return this.inflightCount + this.waiters.length;
  }

  /** Counters for `list`. */
  stats(): QueueStats {
    return { qid: this.qid, ...this.counters, inFlight: this.inflightCount, waiting: this.waiters.length, sqFlowControl: this.sqFlowControl };
  }

  /**
   * Submit one command (the SQE is modified: cid and SGL are set here). Resolves with the CQE
   * and the read data; rejects with `NVMF_ERR_NVME_STATUS` (status attached) when the
   * controller failed it, or the transport error that ended the queue.
   */
  submit(sqe: Buffer, opts: SubmitOptions = {}): Promise<Completion> {
    return new Promise<Completion>((resolve, reject) => {
      const cmd = new PromiseCommand(resolve, reject);
      cmd.sqe = sqe;
      cmd.dataOut = opts.dataOut;
      cmd.dataIn = opts.dataIn;
      cmd.dataInLength = opts.dataInLength ?? 0;
      cmd.timeoutMs = opts.timeoutMs ?? -1;
      cmd.inCapsule = opts.inCapsule === true;
      cmd.acceptErrorStatus = opts.acceptErrorStatus === true;
      this.submitCommand(cmd);
    });
  }

  /**
   * Submit one command record (the record path: no promise, no closure). Its `sqe` is modified
   * (cid and SGL are set here). Completes exactly once through `cmd.onQpComplete` /
   * `cmd.onQpError` (`NVMF_ERR_NVME_STATUS` with the status attached when the controller failed
   * it, or the transport error that ended the queue), never synchronously inside this call.
   * The record must not be submitted again before it completed.
   */
  submitCommand(cmd: QueueCommand): void {
    if (this.state === QpState.CLOSED) {
      failLater(cmd, this.closeError ?? new NvmfNbdError(ErrorCode.CONNECTION_CLOSED, `queue ${this.qid} is closed`));
      return;
    }
    const inLen = cmd.dataIn?.length ?? cmd.dataInLength;
    const outLen = cmd.dataOut?.length ?? 0;
    if (inLen > 0 && outLen > 0) {
      failLater(cmd, new NvmfNbdError(ErrorCode.INVALID_ARGUMENT, 'bidirectional commands are not supported'));
      return;
    }
    if (inLen > this.maxTransfer || (outLen > this.maxTransfer && !cmd.inCapsule)) {
      failLater(cmd, new NvmfNbdError(ErrorCode.INVALID_ARGUMENT, `transfer of ${Math.max(inLen, outLen)} bytes exceeds the queue limit ${this.maxTransfer}`));
      return;
    }
    cmd.deadline = Date.now() + (cmd.timeoutMs >= 0 ? cmd.timeoutMs : this.timeoutMs);
    cmd.authRetried = false;
    if (this.waiters.length === 0 && this.canIssue()) {
      this.issue(cmd);
    } else {
      this.waiters.push(cmd);
      if (Number.isFinite(cmd.deadline)) this.armTimer();
    }
  }

  private canIssue(): boolean {
    if (this.state !== QpState.READY || this.cidCount === 0) return false;
    if (!this.sqFlowControl) return true;
    // A circular SQ of N entries holds N-1 commands not yet fetched.
    return this.sqIssued - this.sqFetched < this.queueSize - 1;
  }

  /** The controller has fetched every command up to sequence number `seq` (exclusive). */
  private advanceSqHead(seq: number): void {
    if (seq > this.sqFetched) this.sqFetched = seq;
  }

  private issue(p: QueueCommand): void {
    const cid = this.freeCids[this.cidHead] as number;
    this.cidHead = this.cidHead + 1 === this.freeCids.length ? 0 : this.cidHead + 1;
    this.cidCount--;
    const sqe = p.sqe;
    setCid(sqe, cid);
    const dataOut = p.dataOut;
    let inCapsule: Buffer | undefined;
    let deferred: Buffer | undefined;
    if (dataOut !== undefined && dataOut.length > 0) {
      if (p.inCapsule || dataOut.length <= this.inCapsuleMax) {
        setSgl(sqe, SglType.DATA_BLOCK_OFFSET, dataOut.length);
        inCapsule = dataOut;
      } else {
        setSgl(sqe, SglType.TRANSPORT_DATA_BLOCK, dataOut.length);
        deferred = dataOut;
      }
    } else {
      setSgl(sqe, SglType.TRANSPORT_DATA_BLOCK, p.dataIn?.length ?? p.dataInLength);
    }
    if (p.dataIn === undefined && p.dataInLength > 0) p.dataIn = p.allocDataIn();
    p.cid = cid;
    p.opcode = sqe[0] as number;
    p.r2tData = deferred;
    p.h2cNext = 0;
    p.received = 0;
    p.c2hDone = false;
    p.digestError = false;
    p.sqSeq = this.sqIssued;
    this.inflight[cid] = p;
    this.inflightCount++;
    if (!Number.isFinite(p.deadline)) this.untimed++;
    this.counters.commands++;
    this.sqIssued++;
    if (inCapsule !== undefined) this.counters.bytesOut += inCapsule.length;
    this.writePdu(encodeCapsuleCmd(sqe, inCapsule, this.txOpts));
    this.armTimer();
  }

  /** Header, payload view and digest (and every other PDU of this tick) leave in one writev. */
  private writePdu(parts: readonly Buffer[]): void {
    this.out.writeAll(parts);
  }

  private drainWaiters(): void {
    while (this.waiters.length > 0 && this.canIssue()) this.issue(this.waiters.shift() as QueueCommand);
  }

  /**
   * Arm the queue's one timer unless it is already running. Never push a running timer back:
   * a steady stream of new commands must not postpone noticing an old one that is stuck.
   */
  private armTimer(): void {
    if (this.timerArmed) return;
    this.timerArmed = true;
    if (this.timer === undefined) {
      this.timer = setTimeout(() => this.onTick(), this.tickMs);
      this.timer.unref();
    } else {
      this.timer.refresh();
    }
  }

  private onTick(): void {
    this.timerArmed = false;
    if (this.state === QpState.CLOSED || (this.inflightCount === 0 && this.waiters.length === 0)) return;
    const now = Date.now();
    const late = this.inFlightOldestFirst().find((p) => p.deadline <= now);
    if (late !== undefined) {
      // A timed-out cid cannot be reused safely (its completion may still come): like Linux,
      // tear the queue down; the controller layer decides whether to reconnect.
      this.destroy(new NvmfNbdError(ErrorCode.TIMEOUT, `queue ${this.qid}: command 0x${late.opcode.toString(16)} (cid ${late.cid}) timed out`));
      return;
    }
    // Waiters are FIFO with deadlines from submission, but timeouts may differ: scan them all.
    // A command that could not even get a slot within its timeout means the queue makes no
    // progress (e.g. the SQ looks full forever): the same teardown as an in-flight timeout.
    for (const w of this.waiters) {
      if (w.deadline <= now) {
        this.destroy(new NvmfNbdError(ErrorCode.TIMEOUT,
          `queue ${this.qid}: command 0x${(w.sqe[0] as number).toString(16)} timed out waiting for a submission slot (${this.inflightCount} in flight)`));
        return;
      }
    }
    this.armTimer();
  }

  /** The next socket read buffer (onread): the rest of a large payload, else the scratch. */
  private rxBuffer(): Buffer {
    const d = this.state === QpState.CLOSED ? undefined : this.parser.directTarget(RX_DIRECT_MIN);
    this.rxDirect = d;
    return d ?? ((this.rxLarge ? this.rxSmall : this.rxScratch) as Buffer);
  }

  /** `n` bytes were read into `buf`, the buffer rxBuffer returned last (onread). */
  private onRead(n: number, buf: Buffer): void {
    if (buf !== this.rxDirect) {
      this.onData(buf, n);
      return;
    }
    if (this.state === QpState.CLOSED) return;
    this.rxEvents++;
    try {
      this.parser.pushDirect(n, this.onPduFn);
    } catch (err) {
      this.onRxError(err);
    }
  }

  private onData(chunk: Buffer, n: number): void {
    if (this.state === QpState.CLOSED) return;
    this.rxEvents++;
    try {
      this.parser.push(chunk, this.onPduFn, n);
    } catch (err) {
      this.onRxError(err);
    }
  }

  private onRxError(err: unknown): void {
    const e = err instanceof NvmfNbdError ? err : new NvmfNbdError(ErrorCode.PDU_INVALID_HEADER, `queue ${this.qid}: ${String(err)}`, { cause: err, fes: Fes.INVALID_HEADER_FIELD });
    this.counters.errors++;
    this.sendTermReqAndDestroy(e);
  }

  private onPdu(pdu: Pdu): void {
    if (this.state === QpState.CLOSED) return;
    switch (pdu.type) {
      case PduType.IC_RESP:
        this.onIcResp(pdu);
        return;
      case PduType.C2H_TERM_REQ:
        throw new NvmfNbdError(ErrorCode.TERM_REQ_RECEIVED,
          `queue ${this.qid}: target terminated the connection (C2HTermReq fes ${pdu.fes}, fei ${pdu.fei})`, { fes: pdu.fes, fei: pdu.fei });
      // With the parser's sink these two come to onCqe / onC2HData instead; kept for completeness.
      case PduType.CAPSULE_RESP:
        this.requireReady(pdu.type);
        this.onCapsuleResp(parseCqe(pdu.cqe));
        return;
      case PduType.C2H_DATA:
        this.requireReady(pdu.type);
        this.onC2HData(pdu.cccid, pdu.datao, (pdu.last ? PduFlag.LAST_PDU : 0) | (pdu.success ? PduFlag.SUCCESS : 0), pdu.data, pdu.dataDigestOk);
        return;
      case PduType.R2T:
        this.requireReady(pdu.type);
        this.onR2T(pdu);
        return;
      case PduType.IC_REQ:
      case PduType.H2C_TERM_REQ:
      case PduType.CAPSULE_CMD:
      case PduType.H2C_DATA:
        throw fatal(ErrorCode.PDU_INVALID_TYPE, `queue ${this.qid}: controller sent a host PDU (type ${pdu.type})`, Fes.INVALID_HEADER_FIELD, 0);
      default: {
        const never: never = pdu;
        throw fatal(ErrorCode.PDU_INVALID_TYPE, `queue ${this.qid}: unknown PDU ${String((never as { type: unknown }).type)}`, Fes.INVALID_HEADER_FIELD, 0);
      }
    }
  }

  private requireReady(type: number): void {
    if (this.state !== QpState.READY) {
      throw fatal(ErrorCode.PDU_SEQUENCE, `queue ${this.qid}: PDU type ${type} before ICResp`, Fes.PDU_SEQUENCE_ERROR);
    }
  }

  /** The commands in flight in the order they were issued. */
  private inFlightOldestFirst(): QueueCommand[] {
    const all: QueueCommand[] = [];
    for (const p of this.inflight) if (p !== undefined) all.push(p);
    return all.sort((a, b) => a.sqSeq - b.sqSeq);
  }

  private lookup(cid: number, what: string): QueueCommand {
    const p = cid < this.inflight.length ? this.inflight[cid] : undefined;
    if (p === undefined) {
      throw fatal(ErrorCode.UNKNOWN_CCCID, `queue ${this.qid}: ${what} for command id ${cid}, which is not in flight`, Fes.INVALID_HEADER_FIELD, 8);
    }
    return p;
  }

  /** A CapsuleResp from the parser's sink: the CQE at `b[o, o + 16)`, decoded into {@link rxCqe}. */
  private onCqe(b: Buffer, o: number): void {
    if (this.state === QpState.CLOSED) return;
    this.requireReady(PduType.CAPSULE_RESP);
    const s = b.readUInt16LE(o + 14);
    const cqe = this.rxCqe;
    cqe.dw0 = b.readUInt32LE(o);
    cqe.dw1 = b.readUInt32LE(o + 4);
    cqe.sqhd = b.readUInt16LE(o + 8);
    cqe.sqid = b.readUInt16LE(o + 10);
    cqe.cid = b.readUInt16LE(o + 12);
    // Bit 0 is the phase tag (meaningless over fabrics): any other bit set → decode in full.
    cqe.status = (s & 0xfffe) === 0 ? STATUS_OK : decodeStatusField(s);
    cqe.ok = cqe.status.sct === 0 && cqe.status.sc === 0;
    this.onCapsuleResp(cqe);
  }

  private onCapsuleResp(cqe: Cqe): void {
    const p = this.lookup(cqe.cid, 'CapsuleResp');
    if (this.sqFlowControl && cqe.sqhd !== 0xffff) {
      if (cqe.sqhd >= this.queueSize) {
        throw fatal(ErrorCode.PDU_INVALID_HEADER, `queue ${this.qid}: SQHD ${cqe.sqhd} beyond queue size ${this.queueSize}`, Fes.INVALID_HEADER_FIELD, 16);
      }
      // Ring index → the newest sequence number with that index (at most N-1 behind the tail).
      const n = this.queueSize;
      const seq = this.sqIssued - ((this.sqIssued % n - cqe.sqhd + n) % n);
      // The head only moves forward over entries the host submitted: it must lie in the range
      // [last head a CQE reported, tail]. Anything else (e.g. one past the tail, which would
      // make the SQ look full forever) is a lying controller: fatal, not a wedge. It may lie
      // behind a head that a C2HData SUCCESS implied (SPDK counts completions, not fetches):
      // then it changes nothing.
      if (seq < this.sqReported) {
        throw fatal(ErrorCode.PDU_INVALID_HEADER,
          `queue ${this.qid}: SQHD ${cqe.sqhd} outside the submitted range (head ${this.sqReported % n}, tail ${this.sqIssued % n})`, Fes.INVALID_HEADER_FIELD, 16);
      }
      this.sqReported = seq;
      this.advanceSqHead(seq);
    }
    let err: NvmfNbdError | undefined;
    if (!cqe.ok && cqe.status.sct === Sct.COMMAND_SPECIFIC && cqe.status.sc === FabricsStatus.AUTH_REQUIRED
      && this.authenticate !== undefined && !p.authRetried && p.opcode !== 0x7f) {
      // Re-authentication asked by the controller; Fabrics commands (auth itself) never retry.
      this.release(p);
      this.reauthenticateAndRetry(p);
      this.drainWaiters();
      return;
    }
    if (!cqe.ok && p.acceptErrorStatus) {
      // The caller decodes the status itself (Fabrics Connect reads IATTR/IPO from DW0).
    } else if (!cqe.ok) {
      err = statusError(cqe.status, `queue ${this.qid} command 0x${p.opcode.toString(16)}`, { io: this.qid > 0 });
    } else if (p.digestError) {
      err = new NvmfNbdError(ErrorCode.DATA_DIGEST, `queue ${this.qid}: data digest error on command id ${p.cid}`);
    } else if (p.dataIn !== undefined && p.received !== p.dataIn.length) {
      err = new NvmfNbdError(ErrorCode.SHORT_READ, `queue ${this.qid}: command id ${p.cid} completed with ${p.received} of ${p.dataIn.length} bytes`);
    }
    this.complete(p, err, cqe);
  }

  /** Forget an in-flight command and free its cid. */
  private release(p: QueueCommand): void {
    this.inflight[p.cid] = undefined;
    this.inflightCount--;
    if (!Number.isFinite(p.deadline)) this.untimed--;
    const tail = this.cidHead + this.cidCount;
    this.freeCids[tail >= this.freeCids.length ? tail - this.freeCids.length : tail] = p.cid;
    this.cidCount++;
  }

  private complete(p: QueueCommand, err: NvmfNbdError | undefined, cqe: Cqe): void {
    this.release(p);
    // The record may be reused from inside its completion: nothing below reads it.
    if (err !== undefined) {
      this.counters.errors++;
      p.onQpError(err);
    } else {
      if (p.dataIn !== undefined) this.counters.bytesIn += p.dataIn.length;
      p.onQpComplete(cqe);
    }
    this.drainWaiters();
  }

  /**
   * The parser's placeData hook: checks a C2HData header against its command before any payload
   * byte is read and returns where the payload goes (a view of the command's data-in buffer), so
   * the parser copies it there straight from the socket chunks.
   */
  private placeC2HData(cccid: number, datao: number, datal: number): Buffer | undefined {
    if (this.state !== QpState.READY) return undefined;
    const p = this.lookup(cccid, 'C2HData');
    const dataIn = p.dataIn;
    // Errors are reported by onC2HData with the full PDU (same codes); just do not place.
    if (dataIn === undefined || p.c2hDone || datao !== p.received || datao + datal > dataIn.length) return undefined;
    this.rxLarge = datal >= RX_DIRECT_MIN;
    // The usual case (one PDU carries the whole read): the buffer itself, no view to allocate.
    return datao === 0 && datal === dataIn.length ? dataIn : dataIn.subarray(datao, datao + datal);
  }

  /** A C2HData (from the parser's sink): header fields as numbers, the payload placed or a view. */
  private onC2HData(cccid: number, datao: number, flags: number, data: Buffer, dataDigestOk: boolean): void {
    if (this.state === QpState.CLOSED) return;
    this.requireReady(PduType.C2H_DATA);
    const last = (flags & PduFlag.LAST_PDU) !== 0;
    const success = (flags & PduFlag.SUCCESS) !== 0;
    const p = this.lookup(cccid, 'C2HData');
    const dataIn = p.dataIn;
    if (dataIn === undefined || p.c2hDone) {
      throw fatal(ErrorCode.PDU_SEQUENCE, `queue ${this.qid}: unexpected C2HData for command id ${p.cid}`, Fes.PDU_SEQUENCE_ERROR);
    }
    const len = data.length;
    if (datao !== p.received) {
      throw fatal(ErrorCode.DATA_OUT_OF_RANGE, `queue ${this.qid}: C2HData offset ${datao}, expected ${p.received}`, Fes.DATA_OUT_OF_RANGE, 12);
    }
    if (datao + len > dataIn.length) {
      throw fatal(ErrorCode.DATA_OUT_OF_RANGE, `queue ${this.qid}: C2HData ${datao}+${len} beyond the command's ${dataIn.length} bytes`, Fes.DATA_OUT_OF_RANGE, 16);
    }
    if (success && !last) {
      throw fatal(ErrorCode.PDU_SEQUENCE, `queue ${this.qid}: C2HData SUCCESS without LAST_PDU`, Fes.INVALID_HEADER_FIELD, 1);
    }
    // Placed by placeC2HData: already in dataIn (the parser copied it there from the chunks).
    if (data.buffer !== dataIn.buffer || data.byteOffset !== dataIn.byteOffset + datao) data.copy(dataIn, datao);
    p.received += len;
    if (!dataDigestOk) p.digestError = true;
    if (!last && p.received === dataIn.length) {
      throw fatal(ErrorCode.PDU_SEQUENCE, `queue ${this.qid}: C2HData completed the transfer without LAST_PDU`, Fes.PDU_SEQUENCE_ERROR, 1);
    }
    if (last) p.c2hDone = true;
    if (success) {
      // No CapsuleResp follows: complete the command as if a successful CQE arrived. TP 8000 ties
      // SUCCESS to SQ flow control being off, but SPDK sends it whatever was negotiated (and
      // Linux's host accepts it): tolerate it, count it, and since no CQE will carry an SQHD for
      // this command, take its fetch (and that of every earlier one) as the new SQ head.
      this.counters.c2hSuccess++;
      if (this.sqFlowControl) {
        this.counters.c2hSuccessWithSqFlow++;
        this.advanceSqHead(p.sqSeq + 1);
      }
      const cqe = this.rxCqe;
      cqe.dw0 = 0;
      cqe.dw1 = 0;
      cqe.sqhd = 0xffff;
      cqe.sqid = this.qid;
      cqe.cid = p.cid;
      cqe.status = STATUS_OK;
      cqe.ok = true;
      let err: NvmfNbdError | undefined;
      if (p.digestError) err = new NvmfNbdError(ErrorCode.DATA_DIGEST, `queue ${this.qid}: data digest error on command id ${p.cid}`);
      else if (p.received !== dataIn.length) err = new NvmfNbdError(ErrorCode.SHORT_READ, `queue ${this.qid}: command id ${p.cid} completed with ${p.received} of ${dataIn.length} bytes`);
      this.complete(p, err, cqe);
    }
  }

  private onR2T(pdu: Extract<Pdu, { type: 0x09 }>): void {
    const p = this.lookup(pdu.cccid, 'R2T');
    const out = p.r2tData;
    if (out === undefined) {
      throw fatal(ErrorCode.PDU_SEQUENCE, `queue ${this.qid}: R2T for command id ${p.cid}, which has no data to send`, Fes.PDU_SEQUENCE_ERROR);
    }
    if (pdu.r2tl === 0 || pdu.r2to !== p.h2cNext || pdu.r2to + pdu.r2tl > out.length) {
      throw fatal(ErrorCode.DATA_OUT_OF_RANGE,
        `queue ${this.qid}: R2T ${pdu.r2to}+${pdu.r2tl} invalid (next offset ${p.h2cNext}, command has ${out.length} bytes)`, Fes.DATA_OUT_OF_RANGE, 12);
    }
    const end = pdu.r2to + pdu.r2tl;
    for (let off = pdu.r2to; off < end; off += this.maxH2CData) {
      const stop = Math.min(end, off + this.maxH2CData);
      // Each H2CData payload is a view into the caller's buffer: never copied.
      this.writePdu(encodeH2CData({ cccid: p.cid, ttag: pdu.ttag, datao: off, last: stop === end }, out.subarray(off, stop), this.txOpts));
    }
    p.h2cNext = end;
    this.counters.bytesOut += pdu.r2tl;
  }

  private sendTermReqAndDestroy(err: NvmfNbdError): void {
    if (this.state === QpState.CLOSED) return;
    // Never answer a TermReq with a TermReq (TP 8000 §3.6.2.9).
    if (err.code !== ErrorCode.TERM_REQ_RECEIVED && err.fes !== undefined) {
      try {
        this.socket.write(encodeTermReq(PduType.H2C_TERM_REQ, err.fes, err.fei ?? 0));
      } catch {
        // The socket may already be gone; the teardown below still runs.
      }
    }
    this.destroy(err);
  }

  /**
   * Tear the queue down: reject every in-flight and waiting command with `err` (or
   * `NVMF_ERR_CONNECTION_CLOSED` when closed on purpose), close the socket, emit `close` once.
   * Idempotent.
   */
  destroy(err?: NvmfNbdError): void {
    if (this.state === QpState.CLOSED) return;
    this.state = QpState.CLOSED;
    this.closeError = err;
    if (this.timer !== undefined) clearTimeout(this.timer);
    const failWith = err ?? new NvmfNbdError(ErrorCode.CONNECTION_CLOSED, `queue ${this.qid} closed`);
    if (this.icWaiter !== undefined) {
      this.icWaiter.reject(failWith);
      this.icWaiter = undefined;
    }
    const pend = this.inFlightOldestFirst();
    const waiting = this.waiters.splice(0);
    this.inflight.fill(undefined);
    this.inflightCount = 0;
    this.untimed = 0;
    for (const p of pend) p.onQpError(failWith);
    for (const w of waiting) w.onQpError(failWith);
    this.counters.errors += pend.length + waiting.length;
    if (this.rxDirect !== undefined) {
      // The socket's read buffer is a command's destination, which now belongs to its caller
      // again: read nothing more into it; close once a queued TermReq is flushed.
      this.rxDirect = undefined;
      this.socket.pause();
      this.socket.destroySoon();
    } else {
      // end() lets a queued TermReq flush; destroySoon-like behaviour without hanging forever.
      this.socket.end();
    }
    setTimeout(() => this.socket.destroy(), 1000).unref();
    this.emit('close', err);
  }
}
