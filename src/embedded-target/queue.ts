/**
 * One NVMe/TCP connection of the embedded target (controller side of a queue pair, TP 8000):
 * ICReq/ICResp, CapsuleCmd dispatch, in-capsule data, R2T → H2CData with validation, C2HData
 * (with the SUCCESS optimisation when the host disabled SQ flow control), CapsuleResp with SQHD,
 * and C2HTermReq on fatal errors. Fabrics Connect and Property Get/Set are handled here; admin
 * and I/O commands go to `admin.ts` / `io.ts`.
 *
 * Every failure ends in `destroy()` (one teardown path); a fatal protocol error first sends a
 * C2HTermReq with the matching FES.
 */
import type * as net from 'node:net';
import { ErrorCode, NvmfNbdError, type ErrorCodeValue } from '../errors';
// Straight from the codec modules, not the '../wire' barrel: its CommonJS re-exports are getters,
// a call per use on the per-PDU path.
import {
  encodeC2HData, encodeCapsuleResp, encodeIcResp, encodeR2T, encodeTermReq, Fes, PduParser, PduType,
  type Pdu, type PduOptions,
} from '../wire/pdu';
import {
  AdminOpcode, DataDirection, FabricsType, SglType, dataDirection, parseConnectData, parseSqe, type ParsedSqe,
} from '../wire/sqe';
import { encodeCqe } from '../wire/cqe';
import { FabricsStatus, GenericStatus, Sct } from '../wire/status';
import { adminCommand } from './admin';
import { C2hSuccessMode, fail, isOk, ok, type Completion, type TargetContext } from './context';
import { KATO_MAX_MS, TargetController, type ControllerQueue } from './target-controller';
import { ioCommand, ioPrecheck } from './io';
import { WriteBatcher } from '../net/write-batcher';
import { FabricsAuthType } from '../wire/auth';
import { AssociationAuth, QueueAuth } from './target-auth';
import { tlsPeerIdentity } from '../tls/channel';
import { identityNqns } from '../tls/psk';
import type { TargetPort } from './ports';

/** Connect response DW0 bit 17: AUTHREQ.ATR, the host must authenticate this queue. */
const AUTHREQ_ATR = 1 << 17;
/** Replay state of DH-HMAC-CHAP, per association. */
const associationAuth = new WeakMap<TargetController, AssociationAuth>();

const G = GenericStatus;
/** Data SGL Length Invalid (generic 0Fh). */
const DATA_SGL_LENGTH_INVALID = 0x0f;
/** Connect CATTR bit 2: disable SQ flow control. */
const CATTR_DISABLE_SQ_FC = 0x04;
/** Commands a connection may have outstanding before Connect sets the queue size. */
const PRE_CONNECT_DEPTH = 4;
/** Pause reading from a host when this much response data waits in the socket. */
const WRITE_HIGH_WATER = 8 << 20;

const QueueState = { AWAIT_ICREQ: 0, READY: 1, CLOSED: 2 } as const;
type QueueStateValue = (typeof QueueState)[keyof typeof QueueState];

/** Per-command state while a command is outstanding. */
interface Inflight {
  readonly cid: number;
  readonly sqe: ParsedSqe;
  readonly dir: number;
  /** R2T transfer: buffer, bytes received so far, transfer tag. */
  buf?: Buffer;
  received: number;
  ttag?: number;
  digestFailed: boolean;
}

/** A fatal transport error: the queue sends C2HTermReq(fes, fei) and closes. */
function protocolError(code: ErrorCodeValue, msg: string, fes: number, fei: number): NvmfNbdError {
  return new NvmfNbdError(code, msg, { fes, fei });
}

function invalidConnectParam(iattr: 0 | 1, ipo: number): Completion {
  // DW0: IPO (15:0) = byte offset of the bad field, IATTR (bit 16) = 1 when it is in the data.
  return fail(Sct.COMMAND_SPECIFIC, FabricsStatus.CONNECT_INVALID_PARAMETERS, true, (iattr << 16) | ipo);
}

/** Authentication Required (SCT 1, SC 91h), DNR: the queue has not authenticated yet. */
function authRequired(): Completion {
  return fail(Sct.COMMAND_SPECIFIC, FabricsStatus.AUTH_REQUIRED, true);
}

let nextConnectionId = 1;

/** One host connection (one NVMe queue once Connect succeeds). */
export class TargetQueue implements ControllerQueue {
  /** Connection number, for logs. */
  readonly id = nextConnectionId++;
  /** Queue id after Connect (0 = admin), -1 before. */
  qid = -1;
  ctrl: TargetController | undefined;

  private readonly ctx: TargetContext;
  private readonly sock: net.Socket;
  /** PDUs produced in one tick leave in one writev (see net/write-batcher.ts). */
  private readonly out: WriteBatcher;
  private readonly parser: PduParser;
  private readonly peer: string;
  private state: QueueStateValue = QueueState.AWAIT_ICREQ;
  private tx: PduOptions = { hdgst: false, ddgst: false, pda: 0 };
  /** SQ entries (Connect sqsize + 1); 0 before Connect. */
  private sqEntries = 0;
  private sqhd = 0;
  private sqFlowDisabled = false;
  private readonly inflight = new Map<number, Inflight>();
  private readonly r2t = new Map<number, Inflight>();
  private nextTtag = 0;
  private connectTimer: NodeJS.Timeout | undefined;
  private readonly onClosed: (q: TargetQueue) => void;
  /** DH-HMAC-CHAP state when the host has keys (then nothing but authentication runs until it succeeds). */
  private auth: QueueAuth | undefined;
  /** The port (listener) this connection was accepted on. */
  private readonly port: TargetPort;

  constructor(ctx: TargetContext, sock: net.Socket, onClosed: (q: TargetQueue) => void, port: TargetPort) {
    this.ctx = ctx;
    this.port = port;
    this.sock = sock;
    this.out = new WriteBatcher(sock, ctx.cfg.flushEvery);
    this.onClosed = onClosed;
    this.peer = `${sock.remoteAddress ?? '?'}:${sock.remotePort ?? '?'}`;
    const cfg = ctx.cfg;
    this.parser = new PduParser({
      role: 'controller',
      maxData: Math.max(cfg.maxH2CData, cfg.inCapsuleDataSize, cfg.adminInCapsuleDataSize),
      pda: 0,
      placeData: (type, cccid, ttag, datao, datal) => (type === PduType.H2C_DATA ? this.placeH2CData(cccid, ttag, datao, datal) : undefined),
    });
    sock.setNoDelay(true);
    sock.on('data', (chunk: Buffer) => this.onData(chunk));
    sock.on('drain', () => {
      if (this.state !== QueueState.CLOSED) sock.resume();
    });
    sock.on('error', (err) => this.ctx.log('debug', `conn ${this.id} ${this.peer}: socket error: ${err.message}`));
    sock.on('close', () => this.destroy('connection closed'));
    this.connectTimer = setTimeout(() => {
      this.ctx.log('warn', `conn ${this.id} ${this.peer}: no Connect within ${cfg.connectTimeoutMs} ms, closing`);
      this.destroy('connect timeout');
    }, cfg.connectTimeoutMs);
    this.connectTimer.unref();
  }

  /**
   * Close the connection (one teardown path, idempotent) and detach from the controller. With
   * `flush`, data already written (a C2HTermReq) is flushed before the socket closes.
   */
  destroy(reason: string, flush = false): void {
    if (this.state === QueueState.CLOSED) return;
    this.state = QueueState.CLOSED;
    if (this.connectTimer !== undefined) clearTimeout(this.connectTimer);
    this.connectTimer = undefined;
    this.auth?.dispose();
    this.inflight.clear();
    this.r2t.clear();
    // Responses already produced this tick still go out (destroy would drop corked data).
    this.out.flush();
    if (flush) {
      this.sock.pause();
      this.sock.end();
      setTimeout(() => this.sock.destroy(), 1000).unref();
    } else {
      this.sock.destroy();
    }
    const ctrl = this.ctrl;
    this.ctrl = undefined;
    if (ctrl !== undefined) {
      // The admin queue owns the association: losing it ends every I/O queue too.
      if (this.qid === 0) ctrl.destroy(`admin queue closed (${reason})`);
      else if (ctrl.io.get(this.qid) === this) ctrl.io.delete(this.qid);
    }
    this.ctx.log('debug', `conn ${this.id} ${this.peer} qid ${this.qid}: closed: ${reason}`);
    this.onClosed(this);
  }

  private onData(chunk: Buffer): void {
    if (this.state === QueueState.CLOSED) return;
    try {
      this.parser.push(chunk, (pdu) => this.onPdu(pdu));
    } catch (err) {
      this.fatal(err);
    }
  }

  /** Send C2HTermReq for a fatal error (FES from the error, else Invalid Header Field) and close. */
  private fatal(err: unknown): void {
    if (this.state === QueueState.CLOSED) return;
    this.ctx.stats.protocolErrors++;
    const e = err instanceof NvmfNbdError ? err : undefined;
    const fes = e?.fes ?? Fes.INVALID_HEADER_FIELD;
    const fei = e?.fei ?? 0;
    this.ctx.log('error', `conn ${this.id} ${this.peer} qid ${this.qid}: protocol error, sending C2HTermReq fes ${fes} fei ${fei}: ${(err as Error)?.message ?? String(err)}${e ? ` (${e.code})` : ''}`);
    // The TermReq is the last PDU on the connection.
    this.out.write(encodeTermReq(PduType.C2H_TERM_REQ, fes, fei));
    this.destroy('protocol error', true);
  }

  private write(bufs: Buffer[]): void {
    this.out.writeAll(bufs);
  }

  private onPdu(pdu: Pdu): void {
    if (this.state === QueueState.CLOSED) return;
    switch (pdu.type) {
      case PduType.IC_REQ:
        this.onIcReq(pdu);
        return;
      case PduType.H2C_TERM_REQ:
        this.ctx.stats.termReqsReceived++;
        this.ctx.log('warn', `conn ${this.id} ${this.peer}: host sent H2CTermReq fes ${pdu.fes} fei ${pdu.fei}`);
        this.destroy('H2CTermReq received');
        return;
      case PduType.CAPSULE_CMD:
        if (this.state !== QueueState.READY) throw protocolError(ErrorCode.PDU_SEQUENCE, 'CapsuleCmd before ICReq', Fes.PDU_SEQUENCE_ERROR, 0);
        this.onCapsule(pdu.sqe, pdu.data, pdu.dataDigestOk);
        return;
      case PduType.H2C_DATA:
        if (this.state !== QueueState.READY) throw protocolError(ErrorCode.PDU_SEQUENCE, 'H2CData before ICReq', Fes.PDU_SEQUENCE_ERROR, 0);
        this.onH2CData(pdu);
        return;
      case PduType.IC_RESP:
      case PduType.C2H_TERM_REQ:
      case PduType.CAPSULE_RESP:
      case PduType.C2H_DATA:
      case PduType.R2T:
        // The controller-role parser never yields these.
        throw protocolError(ErrorCode.PDU_INVALID_TYPE, `unexpected PDU type ${pdu.type}`, Fes.INVALID_HEADER_FIELD, 0);
      default: {
        const never: never = pdu;
        throw new Error(`unreachable PDU ${String(never)}`);
      }
    }
  }

  private onIcReq(pdu: Extract<Pdu, { type: 0x00 }>): void {
    if (this.state !== QueueState.AWAIT_ICREQ) throw protocolError(ErrorCode.PDU_SEQUENCE, 'second ICReq', Fes.PDU_SEQUENCE_ERROR, 0);
    if (pdu.pfv !== 0) throw protocolError(ErrorCode.PDU_INVALID_HEADER, `unsupported PFV ${pdu.pfv}`, Fes.UNSUPPORTED_PARAMETER, 8);
    if (pdu.hpda > 31) throw protocolError(ErrorCode.PDU_INVALID_HEADER, `HPDA ${pdu.hpda} > 31`, Fes.INVALID_HEADER_FIELD, 10);
    // Both digests are supported: grant what the host asked for.
    this.tx = { hdgst: pdu.hdgst, ddgst: pdu.ddgst, pda: pdu.hpda };
    this.out.write(encodeIcResp({ cpda: 0, hdgst: pdu.hdgst, ddgst: pdu.ddgst, maxh2cdata: this.ctx.cfg.maxH2CData }));
    this.parser.setDigests(pdu.hdgst, pdu.ddgst);
    this.state = QueueState.READY;
    this.ctx.log('debug', `conn ${this.id} ${this.peer}: ICReq hpda ${pdu.hpda} maxr2t ${pdu.maxr2t} hdgst ${pdu.hdgst ? 1 : 0} ddgst ${pdu.ddgst ? 1 : 0}`);
  }

  private onCapsule(raw: Buffer, data: Buffer | undefined, dataDigestOk: boolean): void {
    const cfg = this.ctx.cfg;
    const icdMax = this.qid > 0 ? cfg.inCapsuleDataSize
      : this.qid === 0 ? cfg.adminInCapsuleDataSize
        : Math.max(cfg.inCapsuleDataSize, cfg.adminInCapsuleDataSize);
    if (data !== undefined && data.length > icdMax) {
      throw protocolError(ErrorCode.PDU_TOO_LARGE, `in-capsule data ${data.length} exceeds ${icdMax}`, Fes.DATA_LIMIT_EXCEEDED, 4);
    }
    const sqe = parseSqe(raw);
    this.ctx.stats.commands++;
    this.ctrl?.touch();
    if (this.sqEntries > 0) this.sqhd = (this.sqhd + 1) % this.sqEntries;
    const depth = this.sqEntries > 0 ? this.sqEntries : PRE_CONNECT_DEPTH;
    if (this.inflight.size >= depth) {
      throw protocolError(ErrorCode.PDU_SEQUENCE, `more than ${depth} commands outstanding (SQ overflow)`, Fes.PDU_SEQUENCE_ERROR, 0);
    }
    if (this.inflight.has(sqe.cid)) {
      this.sendCqe(sqe.cid, fail(Sct.GENERIC, G.CID_CONFLICT));
      return;
    }
    let dir: number;
    try {
      dir = dataDirection(raw);
    } catch {
      dir = -1;
    }
    const cmd: Inflight = { cid: sqe.cid, sqe, dir, received: 0, digestFailed: false };
    this.inflight.set(sqe.cid, cmd);
    if (dir < 0) {
      this.complete(cmd, fail(Sct.GENERIC, G.INVALID_FIELD));
      return;
    }
    const sgl = sqe.sgl;
    if (data !== undefined) {
      if (dir !== DataDirection.HOST_TO_CTRL) return this.complete(cmd, fail(Sct.GENERIC, G.INVALID_FIELD));
      if (sgl.type !== SglType.DATA_BLOCK_OFFSET) return this.complete(cmd, fail(Sct.GENERIC, G.SGL_DESCRIPTOR_TYPE_INVALID));
      if (sgl.addr !== 0n) return this.complete(cmd, fail(Sct.GENERIC, G.SGL_OFFSET_INVALID));
      if (sgl.length !== data.length) return this.complete(cmd, fail(Sct.GENERIC, DATA_SGL_LENGTH_INVALID));
      if (!dataDigestOk) return this.dataDigestFailed(cmd);
      this.run(cmd, data);
      return;
    }
    if (dir === DataDirection.HOST_TO_CTRL && sgl.length > 0) {
      if (sgl.type === SglType.DATA_BLOCK_OFFSET) return this.complete(cmd, fail(Sct.GENERIC, DATA_SGL_LENGTH_INVALID));
      if (sgl.type !== SglType.TRANSPORT_DATA_BLOCK) return this.complete(cmd, fail(Sct.GENERIC, G.SGL_DESCRIPTOR_TYPE_INVALID));
      if (sgl.length > cfg.maxTransfer) return this.complete(cmd, fail(Sct.GENERIC, G.INVALID_FIELD));
      const pre = this.precheck(sqe);
      if (pre !== undefined) return this.complete(cmd, pre);
      this.requestData(cmd);
      return;
    }
    if (dir === DataDirection.CTRL_TO_HOST && sgl.length > 0) {
      if (sgl.type !== SglType.TRANSPORT_DATA_BLOCK) return this.complete(cmd, fail(Sct.GENERIC, G.SGL_DESCRIPTOR_TYPE_INVALID));
      if (sgl.length > cfg.maxTransfer) return this.complete(cmd, fail(Sct.GENERIC, G.INVALID_FIELD));
    }
    this.run(cmd, undefined);
  }

  /** Validation that must happen before asking the host for data (R2T). */
  private precheck(sqe: ParsedSqe): Completion | undefined {
    if (sqe.opcode !== AdminOpcode.FABRICS && this.auth !== undefined && !this.auth.authenticated) return authRequired();
    if (sqe.opcode === AdminOpcode.FABRICS || this.ctrl === undefined || this.qid === 0) return undefined;
    if (!this.ctrl.ready) return fail(Sct.GENERIC, G.COMMAND_SEQUENCE_ERROR);
    return ioPrecheck(this.ctx, this.ctrl, sqe);
  }

  /** One R2T for the whole transfer; the host splits it into H2CData PDUs at MAXH2CDATA. */
  private requestData(cmd: Inflight): void {
    const len = cmd.sqe.sgl.length;
    // Allocated only now: the length was checked against MDTS and the command prevalidated.
    cmd.buf = Buffer.allocUnsafe(len);
    let ttag = this.nextTtag;
    while (this.r2t.has(ttag)) ttag = (ttag + 1) & 0xffff;
    this.nextTtag = (ttag + 1) & 0xffff;
    cmd.ttag = ttag;
    this.r2t.set(ttag, cmd);
    this.write(encodeR2T({ cccid: cmd.cid, ttag, r2to: 0, r2tl: len }, this.tx));
  }

  /**
   * The parser's placeData hook: an H2CData payload that matches its R2T goes straight from the
   * socket chunks into the command's buffer. Anything else is left to onH2CData, which raises
   * the matching error with the whole PDU.
   */
  private placeH2CData(cccid: number, ttag: number, datao: number, datal: number): Buffer | undefined {
    const cmd = this.r2t.get(ttag);
    const buf = cmd?.buf;
    if (cmd === undefined || buf === undefined || cmd.cid !== cccid || datal > this.ctx.cfg.maxH2CData) return undefined;
    if (datao !== cmd.received || datao + datal > buf.length) return undefined;
    return buf.subarray(datao, datao + datal);
  }

  private onH2CData(pdu: Extract<Pdu, { type: 0x06 }>): void {
    const cmd = this.r2t.get(pdu.ttag);
    if (cmd === undefined || cmd.buf === undefined) {
      throw protocolError(ErrorCode.UNKNOWN_CCCID, `H2CData with unknown ttag ${pdu.ttag}`, Fes.INVALID_HEADER_FIELD, 10);
    }
    if (pdu.cccid !== cmd.cid) {
      throw protocolError(ErrorCode.UNKNOWN_CCCID, `H2CData cccid ${pdu.cccid} does not match ttag ${pdu.ttag} (cid ${cmd.cid})`, Fes.INVALID_HEADER_FIELD, 8);
    }
    const len = pdu.data.length;
    if (len > this.ctx.cfg.maxH2CData) {
      throw protocolError(ErrorCode.PDU_TOO_LARGE, `H2CData ${len} bytes exceeds MAXH2CDATA`, Fes.DATA_LIMIT_EXCEEDED, 16);
    }
    const total = cmd.buf.length;
    if (pdu.datao + len > total) {
      throw protocolError(ErrorCode.DATA_OUT_OF_RANGE, `H2CData ${pdu.datao}+${len} beyond R2T length ${total}`, Fes.DATA_OUT_OF_RANGE, 12);
    }
    if (pdu.datao !== cmd.received) {
      throw protocolError(ErrorCode.PDU_SEQUENCE, `H2CData datao ${pdu.datao}, expected ${cmd.received}`, Fes.PDU_SEQUENCE_ERROR, 12);
    }
    const done = cmd.received + len === total;
    if (done !== pdu.last) {
      throw protocolError(ErrorCode.PDU_SEQUENCE, done ? 'LAST_PDU missing on the final H2CData' : 'LAST_PDU before the R2T range is complete',
        Fes.PDU_SEQUENCE_ERROR, 1);
    }
    // Placed by placeH2CData: already in cmd.buf.
    if (pdu.data.buffer !== cmd.buf.buffer || pdu.data.byteOffset !== cmd.buf.byteOffset + pdu.datao) pdu.data.copy(cmd.buf, pdu.datao);
    cmd.received += len;
    if (!pdu.dataDigestOk) cmd.digestFailed = true;
    if (!done) return;
    this.r2t.delete(pdu.ttag);
    const buf = cmd.buf;
    cmd.buf = undefined;
    if (cmd.digestFailed) this.dataDigestFailed(cmd);
    else this.run(cmd, buf);
  }

  /** A data digest mismatch fails the command only; the connection stays up (WIRE.md). */
  private dataDigestFailed(cmd: Inflight): void {
    this.ctx.stats.dataDigestErrors++;
    this.ctx.log('warn', `conn ${this.id} qid ${this.qid}: data digest error on cid ${cmd.cid}`);
    this.complete(cmd, fail(Sct.GENERIC, G.DATA_TRANSFER_ERROR, false));
  }

  private run(cmd: Inflight, data: Buffer | undefined): void {
    let result: Completion | Promise<Completion>;
    try {
      result = this.execute(cmd.sqe, data);
    } catch (err) {
      result = this.internalError(cmd, err);
    }
    if (result instanceof Promise) {
      result.then((c) => this.safeComplete(cmd, c), (err: unknown) => this.safeComplete(cmd, this.internalError(cmd, err)));
    } else {
      this.complete(cmd, result);
    }
  }

  /** complete() from a promise callback: a bug there must close this connection, not the process. */
  private safeComplete(cmd: Inflight, c: Completion): void {
    try {
      this.complete(cmd, c);
    } catch (err) {
      this.ctx.log('error', `conn ${this.id} qid ${this.qid}: completing cid ${cmd.cid} failed: ${(err as Error)?.message ?? String(err)}`);
      this.destroy('internal error');
    }
  }

  private internalError(cmd: Inflight, err: unknown): Completion {
    this.ctx.log('error', `conn ${this.id} qid ${this.qid}: cid ${cmd.cid} opcode 0x${cmd.sqe.opcode.toString(16)} failed: ${(err as Error)?.message ?? String(err)}`);
    return fail(Sct.GENERIC, G.INTERNAL_ERROR, false);
  }

  private execute(s: ParsedSqe, data: Buffer | undefined): Completion | Promise<Completion> {
    const auth = this.auth;
    if (auth !== undefined && !auth.authenticated) {
      // Until the host has authenticated this queue only the authentication commands run.
      const isAuth = s.opcode === AdminOpcode.FABRICS && (s.fctype === FabricsAuthType.AUTH_SEND || s.fctype === FabricsAuthType.AUTH_RECEIVE);
      if (!isAuth) return authRequired();
    }
    if (s.opcode === AdminOpcode.FABRICS) return this.fabrics(s, data);
    const ctrl = this.ctrl;
    if (ctrl === undefined) return fail(Sct.GENERIC, G.COMMAND_SEQUENCE_ERROR);
    if (s.fuse !== 0) return fail(Sct.GENERIC, G.INVALID_FIELD);
    if (!ctrl.ready) return fail(Sct.GENERIC, G.COMMAND_SEQUENCE_ERROR);
    if (this.qid === 0) return adminCommand(this.ctx, ctrl, s, s.sgl.length);
    return ioCommand(this.ctx, ctrl, s, data);
  }

  private fabrics(s: ParsedSqe, data: Buffer | undefined): Completion {
    switch (s.fctype) {
      case FabricsType.CONNECT:
        if (this.ctrl !== undefined) return fail(Sct.GENERIC, G.COMMAND_SEQUENCE_ERROR);
        return this.connect(s, data);
      case FabricsType.PROPERTY_GET: {
        if (this.ctrl === undefined) return fail(Sct.GENERIC, G.COMMAND_SEQUENCE_ERROR);
        if (this.qid !== 0) return fail(Sct.GENERIC, G.INVALID_FIELD);
        const v = this.ctrl.propertyGet(s.cdw11 >>> 0, (s.cdw10 & 1) !== 0);
        if (v === undefined) return fail(Sct.GENERIC, G.INVALID_FIELD);
        return { dw0: Number(v & 0xffffffffn), dw1: Number(v >> 32n) };
      }
      case FabricsType.PROPERTY_SET: {
        if (this.ctrl === undefined) return fail(Sct.GENERIC, G.COMMAND_SEQUENCE_ERROR);
        if (this.qid !== 0) return fail(Sct.GENERIC, G.INVALID_FIELD);
        const value = (BigInt(s.cdw13 >>> 0) << 32n) | BigInt(s.cdw12 >>> 0);
        if (!this.ctrl.propertySet(s.cdw11 >>> 0, (s.cdw10 & 1) !== 0, value)) return fail(Sct.GENERIC, G.INVALID_FIELD);
        return ok();
      }
      case FabricsAuthType.AUTH_SEND:
        if (this.auth === undefined) return fail(Sct.GENERIC, this.ctrl === undefined ? G.COMMAND_SEQUENCE_ERROR : G.INVALID_OPCODE);
        return this.auth.send(s.cdw10, s.cdw11, data);
      case FabricsAuthType.AUTH_RECEIVE:
        if (this.auth === undefined) return fail(Sct.GENERIC, this.ctrl === undefined ? G.COMMAND_SEQUENCE_ERROR : G.INVALID_OPCODE);
        return this.auth.receive(s.cdw10, s.cdw11);
      default:
        return fail(Sct.GENERIC, G.INVALID_OPCODE);
    }
  }

  /** Controller-initiated re-authentication; false when this queue does not authenticate. */
  requireReauthentication(): boolean {
    if (this.auth === undefined || this.state === QueueState.CLOSED) return false;
    this.auth.requireReauthentication();
    return true;
  }

  /**
   * A queue that came up over TLS may only Connect as the host, to the subsystem, that its PSK
   * identity names (`NVMe0R0x <hostnqn> <subnqn>`, TP 8011): otherwise a host holding the PSK of
   * one subsystem (or of another host) could use it for any. Refused with Connect Invalid
   * Parameters pointing at the differing field (IATTR 1, IPO 512 hostnqn / 256 subnqn); an
   * identity not of that form names nothing and is refused at the hostnqn. Plain queues pass.
   */
  private checkTlsIdentity(hostnqn: string, subnqn: string): Completion | undefined {
    const identity = tlsPeerIdentity(this.sock);
    if (identity === undefined) return undefined;
    const named = identityNqns(identity);
    const field = named === undefined || named.hostnqn !== hostnqn ? 'host' : named.subnqn !== subnqn ? 'subsystem' : undefined;
    if (field === undefined) return undefined;
    this.ctx.stats.tlsIdentityMismatches = (this.ctx.stats.tlsIdentityMismatches ?? 0) + 1;
    this.ctx.log('warn', `conn ${this.id} ${this.peer}: ${ErrorCode.TLS_IDENTITY_MISMATCH}: Connect as host '${hostnqn}' to '${subnqn}' refused: the TLS PSK identity '${identity.split(' ').slice(0, 3).join(' ')}' names ${named === undefined ? 'no NQNs' : `${field === 'host' ? `host '${named.hostnqn}'` : `subsystem '${named.subnqn}'`}`}`);
    return invalidConnectParam(1, field === 'subsystem' ? 256 : 512);
  }

  /** Fabrics Connect (NVMe-oF 1.1 §3.3): creates the controller (admin) or joins it (I/O). */
  private connect(s: ParsedSqe, data: Buffer | undefined): Completion {
    const ctx = this.ctx;
    const recfmt = s.cdw10 & 0xffff;
    const qid = s.cdw10 >>> 16;
    const sqsize = s.cdw11 & 0xffff;
    const cattr = (s.cdw11 >>> 16) & 0xff;
    const kato = s.cdw12 >>> 0;
    if (recfmt !== 0) return fail(Sct.COMMAND_SPECIFIC, FabricsStatus.INCOMPATIBLE_FORMAT);
    if (data === undefined || data.length < 1024) return fail(Sct.GENERIC, DATA_SGL_LENGTH_INVALID);
    const cd = parseConnectData(data);
    const sub = ctx.subsystem(cd.subnqn);
    if (sub === undefined) {
      ctx.log('info', `conn ${this.id} ${this.peer}: Connect to unknown subsystem '${cd.subnqn}'`);
      return invalidConnectParam(1, 256);
    }
    if (cd.hostnqn === '') return invalidConnectParam(1, 512);
    const tlsRefusal = this.checkTlsIdentity(cd.hostnqn, cd.subnqn);
    if (tlsRefusal !== undefined) return tlsRefusal;
    if (!ctx.hostAllowed(cd.hostnqn)) {
      ctx.log('info', `conn ${this.id} ${this.peer}: host '${cd.hostnqn}' not allowed`);
      return fail(Sct.COMMAND_SPECIFIC, FabricsStatus.CONNECT_INVALID_HOST);
    }
    if (sqsize === 0 || sqsize > ctx.cfg.queueSize - 1) return invalidConnectParam(0, 44);
    let ctrl: TargetController;
    if (qid === 0) {
      if (cd.cntlid !== 0xffff) return invalidConnectParam(1, 16);
      // KATO (SQE byte 48) is bounded so the keep-alive timer cannot overflow (issue 14
      // finding 10). KATO 0 is accepted but gets the idle limit (see armKeepAlive).
      if (kato > KATO_MAX_MS) {
        ctx.log('info', `conn ${this.id} ${this.peer}: Connect with KATO ${kato} ms refused (maximum ${KATO_MAX_MS} ms)`);
        return invalidConnectParam(0, 48);
      }
      let forHost = 0;
      for (const c of ctx.controllers.values()) if (c.hostnqn === cd.hostnqn) forHost++;
      if (ctx.controllers.size >= ctx.cfg.maxControllers || forHost >= ctx.cfg.maxControllersPerHost) {
        ctx.stats.controllersRefused++;
        ctx.log('warn', `conn ${this.id} ${this.peer}: Connect from '${cd.hostnqn}' refused: ${forHost >= ctx.cfg.maxControllersPerHost ? `${forHost} controllers for this host (maximum ${ctx.cfg.maxControllersPerHost})` : `${ctx.controllers.size} controllers (maximum ${ctx.cfg.maxControllers})`}`);
        return fail(Sct.COMMAND_SPECIFIC, FabricsStatus.CONTROLLER_BUSY);
      }
      const cntlid = ctx.newCntlid();
      if (cntlid === undefined) return fail(Sct.COMMAND_SPECIFIC, FabricsStatus.CONTROLLER_BUSY);
      ctrl = new TargetController(ctx, { cntlid, subsys: sub, hostnqn: cd.hostnqn, hostid: cd.hostid, kato, port: this.port });
      ctrl.admin = this;
    } else {
      const c = ctx.controllers.get(cd.cntlid);
      // A controller's queues all use the port its admin queue connected on.
      if (c === undefined || c.subsys !== sub || c.hostnqn !== cd.hostnqn || !c.ready || c.port !== this.port) return invalidConnectParam(1, 16);
      if (qid > c.grantedQueues || c.io.has(qid)) return invalidConnectParam(0, 42);
      ctrl = c;
      ctrl.io.set(qid, this);
      ctrl.touch();
    }
    this.ctrl = ctrl;
    this.qid = qid;
    this.sqEntries = sqsize + 1;
    this.sqhd = 1 % this.sqEntries; // the Connect command itself was consumed
    this.sqFlowDisabled = (cattr & CATTR_DISABLE_SQ_FC) !== 0;
    if (this.connectTimer !== undefined) clearTimeout(this.connectTimer);
    this.connectTimer = undefined;
    ctx.log('debug', `conn ${this.id} ${this.peer}: qid ${qid} connected to ${sub.nqn} cntlid ${ctrl.cntlid} sqsize ${sqsize}${this.sqFlowDisabled ? ' (SQ flow control disabled)' : ''}`);
    // Discovery controllers do not authenticate (as Linux nvmet).
    const keys = sub.discovery ? undefined : ctx.hostKeys(cd.hostnqn);
    if (keys === undefined) return ok(ctrl.cntlid);
    let assoc = associationAuth.get(ctrl);
    if (assoc === undefined) {
      assoc = new AssociationAuth();
      associationAuth.set(ctrl, assoc);
    }
    this.auth = new QueueAuth(qid, keys, sub.nqn, ctx.authPolicy, assoc, ctx.stats, {
      log: (level, msg) => ctx.log(level, `conn ${this.id} ${this.peer}: ${msg}`),
      close: (reason) => this.destroy(reason, true),
    });
    return ok(ctrl.cntlid | AUTHREQ_ATR);
  }

  private sendCqe(cid: number, c: Completion): void {
    const cqe = encodeCqe({
      dw0: c.dw0 ?? 0, dw1: c.dw1 ?? 0,
      sqhd: this.sqFlowDisabled ? 0xffff : this.sqhd,
      sqid: Math.max(this.qid, 0), cid,
      sct: c.sct ?? 0, sc: c.sc ?? 0, dnr: c.dnr ?? false,
    });
    this.write(encodeCapsuleResp(cqe, this.tx));
  }

  /** Send the command's data (if any) and its completion, then forget it. */
  private complete(cmd: Inflight, c: Completion): void {
    if (this.state === QueueState.CLOSED) return;
    if (this.inflight.get(cmd.cid) !== cmd) return;
    this.inflight.delete(cmd.cid);
    if (cmd.ttag !== undefined) this.r2t.delete(cmd.ttag);
    const want = cmd.sqe.sgl.length;
    const sock = this.sock;
    if (c.data !== undefined && isOk(c) && cmd.dir === DataDirection.CTRL_TO_HOST && want > 0) {
      // Exactly the SGL length: NVMe has no short transfers (pad/truncate admin structures).
      let data = c.data;
      if (data.length > want) data = data.subarray(0, want);
      else if (data.length < want) {
        const padded = Buffer.alloc(want);
        data.copy(padded);
        data = padded;
      }
      const mode = this.ctx.cfg.c2hSuccess;
      const success = mode === C2hSuccessMode.SPDK || (mode === C2hSuccessMode.SPEC && this.sqFlowDisabled);
      const max = this.ctx.cfg.maxC2HData;
      for (let off = 0; off < data.length; off += max) {
        const n = Math.min(max, data.length - off);
        const last = off + n === data.length;
        this.write(encodeC2HData({ cccid: cmd.cid, datao: off, last, success: last && success }, data.subarray(off, off + n), this.tx));
      }
      if (!success) this.sendCqe(cmd.cid, c);
    } else {
      this.sendCqe(cmd.cid, c);
    }
    // Backpressure: stop taking commands from a host that does not read its responses.
    if (sock.writableLength > WRITE_HIGH_WATER) sock.pause();
  }
}
