/**
 * A scripted NVMe/TCP controller for unit tests: a `net.Server` on 127.0.0.1 that answers ICReq,
 * then lets the test read host PDUs and send raw (possibly malicious) PDUs back.
 *
 *   const t = await FakeTarget.start(async (c) => {
 *     await c.acceptConnect();                 // answers Fabrics Connect
 *     const cmd = await c.nextCommand();
 *     c.send(encodeC2HData({ cccid: cmd.sqe.cid, datao: 0, last: true, success: false }, data, c.opts));
 *   });
 *
 * `serveController(c, model)` plays a small but complete controller (properties, Identify,
 * Set Features, Keep Alive, Read/Write/Flush/DSM/Write Zeroes on memory) for controller tests.
 */
import * as net from 'node:net';
import {
  PduParser,
  encodeCapsuleResp,
  encodeC2HData,
  encodeCqe,
  encodeIcResp,
  encodeR2T,
  parseConnectData,
  parseSqe,
} from '../../src/wire';
import type { ParsedSqe, Pdu, PduOptions } from '../../src/wire';

/** A command capsule received from the host. */
export interface ReceivedCommand {
  sqe: ParsedSqe;
  raw: Buffer;
  /** In-capsule data. */
  data: Buffer | undefined;
}

/** ICResp settings of the fake. */
export interface FakeIcResp {
  cpda?: number;
  maxh2cdata?: number;
  /** Force the digest answer instead of echoing the ICReq. */
  hdgst?: boolean;
  ddgst?: boolean;
  pfv?: number;
}

/** One accepted host connection. */
export class FakeConn {
  readonly socket: net.Socket;
  /** Digest/alignment options for PDUs we send (after ICReq). */
  opts: PduOptions = { hdgst: false, ddgst: false, pda: 0 };
  /** Host PDUs received and not yet consumed. */
  private readonly queue: Pdu[] = [];
  private waiter: ((p: Pdu | undefined) => void) | undefined;
  private readonly parser = new PduParser({ role: 'controller', maxData: 64 << 20 });
  /** TermReqs the host sent us. */
  readonly termReqs: Array<Extract<Pdu, { type: 0x02 | 0x03 }>> = [];
  /** Resolves when the host closed the connection. */
  readonly closed: Promise<void>;
  ended = false;
  /** qid from the Fabrics Connect. */
  qid = -1;
  sqFlowDisabledAsked = false;
  parseError: unknown;

  constructor(socket: net.Socket, private readonly ic: FakeIcResp) {
    this.socket = socket;
    this.closed = new Promise((resolve) => socket.on('close', () => { this.ended = true; this.flush(); resolve(); }));
    socket.on('error', () => undefined);
    socket.on('data', (chunk: Buffer) => {
      try {
        this.parser.push(chunk, (pdu) => this.onPdu(pdu));
      } catch (err) {
        this.parseError = err;
        socket.destroy();
      }
    });
  }

  private onPdu(pdu: Pdu): void {
    if (pdu.type === 0x00) {
      const hdgst = this.ic.hdgst ?? pdu.hdgst;
      const ddgst = this.ic.ddgst ?? pdu.ddgst;
      this.opts = { hdgst, ddgst, pda: pdu.hpda };
      this.parser.setDigests(hdgst, ddgst);
      this.send(encodeIcResp({ cpda: this.ic.cpda ?? 0, hdgst, ddgst, maxh2cdata: this.ic.maxh2cdata ?? 8192 }), this.ic.pfv);
      return;
    }
    if (pdu.type === 0x02) this.termReqs.push(pdu);
    this.queue.push(pdu);
    this.flush();
  }

  private flush(): void {
    const w = this.waiter;
    if (w === undefined) return;
    if (this.queue.length > 0) {
      this.waiter = undefined;
      w(this.queue.shift());
    } else if (this.ended) {
      this.waiter = undefined;
      w(undefined);
    }
  }

  /** PDUs set aside while waiting for one command's H2CData. */
  private readonly stash: Pdu[] = [];

  /** Next host PDU, or undefined when the host closed. */
  nextPdu(): Promise<Pdu | undefined> {
    if (this.stash.length > 0) return Promise.resolve(this.stash.shift());
    return this.rawNext();
  }

  private rawNext(): Promise<Pdu | undefined> {
    return new Promise((resolve) => {
      this.waiter = resolve;
      this.flush();
    });
  }

  /** Next CapsuleCmd; throws if something else (or nothing) arrives. */
  async nextCommand(): Promise<ReceivedCommand> {
    const p = await this.nextPdu();
    if (p === undefined || p.type !== 0x04) throw new Error(`expected a CapsuleCmd, got ${p === undefined ? 'close' : `type ${p.type}`}`);
    return { sqe: parseSqe(p.sqe), raw: Buffer.from(p.sqe), data: p.data === undefined ? undefined : Buffer.from(p.data) };
  }

  /** Write raw bytes or PDU parts (corked). An ICResp `pfv` override patches byte 8. */
  send(parts: Buffer | readonly Buffer[], pfv?: number): void {
    if (this.socket.destroyed) return;
    const list = Buffer.isBuffer(parts) ? [parts] : parts;
    if (pfv !== undefined && list[0] !== undefined) list[0].writeUInt16LE(pfv, 8);
    this.socket.cork();
    for (const b of list) this.socket.write(b);
    this.socket.uncork();
  }

  /** Send a CapsuleResp. */
  respond(cid: number, o: { sqhd?: number; sc?: number; sct?: number; dnr?: boolean; dw0?: number; dw1?: number } = {}): void {
    this.send(encodeCapsuleResp(encodeCqe({ cid, sqhd: o.sqhd ?? 0, sc: o.sc, sct: o.sct, dnr: o.dnr, dw0: o.dw0, dw1: o.dw1 }), this.opts));
  }

  /** Send one C2HData PDU. */
  c2h(cid: number, datao: number, data: Buffer, o: { last?: boolean; success?: boolean } = {}): void {
    this.send(encodeC2HData({ cccid: cid, datao, last: o.last ?? true, success: o.success ?? false }, data, this.opts));
  }

  /** Send an R2T. */
  r2t(cid: number, r2to: number, r2tl: number, ttag = 1): void {
    this.send(encodeR2T({ cccid: cid, ttag, r2to, r2tl }, this.opts));
  }

  /** Receive and accept the Fabrics Connect (cntlid 1 by default). */
  async acceptConnect(o: { cntlid?: number; sqhd?: number; sc?: number; sct?: number; dnr?: boolean } = {}): Promise<ReceivedCommand> {
    const cmd = await this.nextCommand();
    if (cmd.sqe.opcode !== 0x7f || cmd.sqe.fctype !== 0x01) throw new Error('expected Fabrics Connect');
    this.qid = cmd.raw.readUInt16LE(42);
    this.sqFlowDisabledAsked = ((cmd.raw[46] as number) & 4) !== 0;
    if (cmd.data !== undefined) parseConnectData(cmd.data);
    this.respond(cmd.sqe.cid, { dw0: o.cntlid ?? 1, sqhd: o.sqhd ?? 1, sc: o.sc, sct: o.sct, dnr: o.dnr });
    return cmd;
  }

  /**
   * Receive the host's H2CData PDUs for `cid` until LAST_PDU; other PDUs arriving meanwhile are
   * kept for nextPdu(). Returns the concatenated data and the offsets seen.
   */
  async receiveH2C(cid?: number): Promise<{ data: Buffer; pdus: number; offsets: number[] }> {
    const parts: Buffer[] = [];
    const offsets: number[] = [];
    for (;;) {
      const p = await this.rawNext();
      if (p === undefined) throw new Error('host closed while H2CData was expected');
      if (p.type !== 0x06 || (cid !== undefined && p.cccid !== cid)) { this.stash.push(p); continue; }
      parts.push(Buffer.from(p.data));
      offsets.push(p.datao);
      if (p.last) return { data: Buffer.concat(parts), pdus: parts.length, offsets };
    }
  }
}

/** A listening fake target; each connection runs `script`. */
export class FakeTarget {
  readonly conns: FakeConn[] = [];
  readonly errors: unknown[] = [];
  private constructor(private readonly server: net.Server) {}

  get port(): number {
    return (this.server.address() as net.AddressInfo).port;
  }

  /** Listen on 127.0.0.1 (ephemeral port) and run `script` for every connection. */
  static async start(script: (c: FakeConn) => Promise<void> | void, ic: FakeIcResp = {}): Promise<FakeTarget> {
    let target: FakeTarget | undefined;
    const server = net.createServer((sock) => {
      const c = new FakeConn(sock, ic);
      target?.conns.push(c);
      Promise.resolve().then(() => script(c)).catch((err: unknown) => { target?.errors.push(err); sock.destroy(); });
    });
    target = new FakeTarget(server);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    return target;
  }

  /** Stop listening and drop every connection. */
  async close(): Promise<void> {
    for (const c of this.conns) c.socket.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

/** Model of the controller played by {@link serveController}. */
export interface ControllerModel {
  /** Namespaces: nsid → backing memory (its length / lbaSize blocks). */
  namespaces: Map<number, { data: Buffer; lbaSize: number; ms?: number; dps?: number }>;
  mdts?: number;
  oncs?: number;
  vwc?: boolean;
  ioccsz?: number;
  mqes?: number;
  /** Readiness delay after CC.EN (ms). */
  readyDelayMs?: number;
  /** Never become ready. */
  neverReady?: boolean;
  /** Generation counter for each discovery log read (default always 1). */
  discoveryGenctr?: () => bigint;
  /** Discovery log entries (subnqn, traddr, trsvcid) for the discovery NQN. */
  discovery?: Array<{ subnqn: string; traddr: string; trsvcid: string }>;
  /** Shared register state across the connections of one fake target. */
  regs?: { cc: number; csts: number };
  /** CAP.TO in 500 ms units (default 20). */
  capTo?: number;
  /** Only this subsystem NQN (and the discovery NQN) is accepted by Connect. */
  subnqn?: string;
  /**
   * A hostile AER storm: OAES announces namespace notices and every Asynchronous Event Request is
   * completed at once with "namespace attribute changed"; the Changed Namespace List names NSID 1.
   */
  aerStorm?: boolean;
  /** Delay before each Identify Namespace / Get Log Page answer (a slow target, each answer in time). */
  identifyDelayMs?: number;
  logDelayMs?: number;
  /** Commands seen (opcode, qid) for assertions. */
  seen?: Array<{ qid: number; opcode: number; fctype?: number; cdw10: number; nsid: number }>;
}

function fixed(b: Buffer, at: number, len: number, s: string): void {
  Buffer.from(s, 'latin1').copy(b, at, 0, len);
}

/** Identify Controller data for the model (only the fields the host reads). */
export function identifyControllerData(m: ControllerModel, cntlid: number): Buffer {
  const b = Buffer.alloc(4096);
  b.writeUInt16LE(0x1b36, 0);
  fixed(b, 4, 20, 'FAKE0001            ');
  fixed(b, 24, 40, 'fake-target'.padEnd(40));
  fixed(b, 64, 8, '1.0     ');
  b[77] = m.mdts ?? 0;
  b.writeUInt16LE(cntlid, 78);
  b.writeUInt32LE(0x00020000, 80);
  b.writeUInt16LE(m.oncs ?? 0x0c, 520);
  if (m.aerStorm === true) b.writeUInt32LE(1 << 8, 92); // OAES: namespace attribute notices
  b.writeUInt32LE(Math.max(...[0, ...m.namespaces.keys()]), 516);
  b[525] = m.vwc === false ? 0 : 1;
  b.writeUInt32LE(m.ioccsz ?? (64 + 8192) / 16, 1792);
  b.writeUInt32LE(1, 1796);
  fixed(b, 768, 256, 'nqn.fake');
  return b;
}

/** Identify Namespace data. */
export function identifyNamespaceData(ns: { data: Buffer; lbaSize: number; ms?: number; dps?: number }): Buffer {
  const b = Buffer.alloc(4096);
  const blocks = BigInt(ns.data.length / ns.lbaSize);
  b.writeBigUInt64LE(blocks, 0);
  b.writeBigUInt64LE(blocks, 8);
  b.writeBigUInt64LE(blocks, 16);
  b[25] = 0; // nlbaf 0-based: one format
  b[26] = 0; // flbas: format 0
  b[29] = ns.dps ?? 0;
  b.writeUInt32LE(((ns.ms ?? 0) & 0xffff) | (Math.log2(ns.lbaSize) << 16), 128);
  return b;
}

/**
 * Play a controller on `c` until the host closes: Connect, properties, Identify, Set Features,
 * Keep Alive, Get Log Page (discovery), and NVM I/O on the model's memory.
 */
export async function serveController(c: FakeConn, m: ControllerModel): Promise<void> {
  const regs = (m.regs ??= { cc: 0, csts: 0 });
  const cntlid = 7;
  const first = await c.nextCommand();
  if (first.sqe.opcode !== 0x7f || first.sqe.fctype !== 0x01 || first.data === undefined) throw new Error('expected Fabrics Connect');
  c.qid = first.raw.readUInt16LE(42);
  const cd = parseConnectData(first.data);
  if (m.subnqn !== undefined && cd.subnqn !== m.subnqn && cd.subnqn !== 'nqn.2014-08.org.nvmexpress.discovery') {
    // Connect Invalid Parameters (SCT 1, SC 0x82), DNR; DW0 = IATTR (bit 16, in data) | IPO 256 (subnqn), as Linux nvmet.
    c.respond(first.sqe.cid, { sct: 1, sc: 0x82, dnr: true, dw0: (1 << 16) | 256, sqhd: 1 });
    return;
  }
  c.respond(first.sqe.cid, { dw0: cntlid, sqhd: 1 });
  let sqhd = 1;
  const qsize = c.qid === 0 ? 32 : 1 + (m.mqes ?? 127);
  const done = (cid: number, o: { sc?: number; sct?: number; dw0?: number; dw1?: number } = {}): void => {
    sqhd = (sqhd + 1) % qsize;
    c.respond(cid, { ...o, sqhd });
  };
  for (;;) {
    const p = await c.nextPdu();
    if (p === undefined) return;
    if (p.type !== 0x04) continue;
    const sqe = parseSqe(p.sqe);
    const cid = sqe.cid;
    m.seen?.push({ qid: c.qid, opcode: sqe.opcode, fctype: sqe.fctype, cdw10: sqe.cdw10, nsid: sqe.nsid });
    const sendData = (data: Buffer): void => {
      c.c2h(cid, 0, data, { last: true });
      done(cid);
    };
    const getWriteData = async (len: number): Promise<Buffer> => {
      if (p.data !== undefined) return Buffer.from(p.data);
      c.r2t(cid, 0, len);
      return (await c.receiveH2C(cid)).data;
    };
    if (sqe.opcode === 0x7f) {
      const offset = sqe.cdw11;
      if (sqe.fctype === 0x04) {
        let v = 0n;
        if (offset === 0x00) v = BigInt(m.mqes ?? 127) | (BigInt(m.capTo ?? 20) << 24n) | (1n << 37n); // CSS NVM
        else if (offset === 0x08) v = 0x00020000n;
        else if (offset === 0x14) v = BigInt(regs.cc);
        else if (offset === 0x1c) v = BigInt(regs.csts);
        done(cid, { dw0: Number(v & 0xffffffffn), dw1: Number(v >> 32n) });
      } else if (sqe.fctype === 0x00) {
        const value = Number(p.sqe.readBigUInt64LE(48) & 0xffffffffn);
        if (offset === 0x14) {
          regs.cc = value;
          if (value & 1 && !m.neverReady) {
            const ready = (): void => { regs.csts |= 1; };
            if (m.readyDelayMs) setTimeout(ready, m.readyDelayMs); else ready();
          }
          if (((value >>> 14) & 3) === 1) regs.csts = (regs.csts & ~0xc) | (2 << 2);
        }
        done(cid);
      } else {
        done(cid, { sc: 0x01 });
      }
      continue;
    }
    if (c.qid === 0) {
      switch (sqe.opcode) {
        case 0x06: {
          const cns = sqe.cdw10 & 0xff;
          if (cns === 1) sendData(identifyControllerData(m, cntlid));
          else if (cns === 0) {
            if (m.identifyDelayMs !== undefined) await new Promise((r) => setTimeout(r, m.identifyDelayMs));
            const ns = m.namespaces.get(sqe.nsid);
            if (ns === undefined) done(cid, { sc: 0x0b });
            else sendData(identifyNamespaceData(ns));
          } else if (cns === 2) {
            const b = Buffer.alloc(4096);
            [...m.namespaces.keys()].filter((n) => n > sqe.nsid).sort((a, b2) => a - b2).slice(0, 1024).forEach((n, i) => b.writeUInt32LE(n, i * 4));
            sendData(b);
          } else done(cid, { sc: 0x02 });
          break;
        }
        case 0x09: done(cid, { dw0: sqe.cdw11 }); break;
        case 0x18: done(cid); break;
        case 0x0c:
          if (m.aerStorm === true) done(cid, { dw0: 0x02 | (0x04 << 16) });
          else done(cid, { sc: 0x01 });
          break;
        case 0x02: {
          if (m.logDelayMs !== undefined) await new Promise((r) => setTimeout(r, m.logDelayMs));
          if (m.aerStorm === true && (sqe.cdw10 & 0xff) === 0x04) {
            const list = Buffer.alloc(4096);
            list.writeUInt32LE(1, 0);
            sendData(list);
            break;
          }
          const numd = ((sqe.cdw10 >>> 16) | ((sqe.cdw11 & 0xffff) << 16)) + 1;
          const off = sqe.cdw12;
          const entries = m.discovery ?? [];
          const log = Buffer.alloc(1024 * (1 + entries.length));
          log.writeBigUInt64LE(off === 0 && m.discoveryGenctr !== undefined ? m.discoveryGenctr() : 1n, 0);
          log.writeBigUInt64LE(BigInt(entries.length), 8);
          entries.forEach((e, i) => {
            const at = 1024 * (i + 1);
            log[at] = 3; log[at + 1] = 1; log[at + 2] = 2;
            fixed(log, at + 32, 32, e.trsvcid);
            fixed(log, at + 256, 256, e.subnqn);
            fixed(log, at + 512, 256, e.traddr);
          });
          const out = Buffer.alloc(numd * 4);
          log.copy(out, 0, off, off + out.length);
          sendData(out);
          break;
        }
        default: done(cid, { sc: 0x01 });
      }
      continue;
    }
    const ns = m.namespaces.get(sqe.nsid);
    if (ns === undefined) { done(cid, { sc: 0x0b }); continue; }
    const slba = Number(p.sqe.readBigUInt64LE(40));
    const nlb = (sqe.cdw12 & 0xffff) + 1;
    const at = slba * ns.lbaSize;
    const len = nlb * ns.lbaSize;
    switch (sqe.opcode) {
      case 0x02:
        if (at + len > ns.data.length) { done(cid, { sc: 0x80 }); break; }
        sendData(Buffer.from(ns.data.subarray(at, at + len)));
        break;
      case 0x01: {
        if (at + len > ns.data.length) { done(cid, { sc: 0x80 }); break; }
        const data = await getWriteData(len);
        data.copy(ns.data, at);
        done(cid);
        break;
      }
      case 0x08:
        if (at + len > ns.data.length) { done(cid, { sc: 0x80 }); break; }
        ns.data.fill(0, at, at + len);
        done(cid);
        break;
      case 0x09: {
        const nr = (sqe.cdw10 & 0xff) + 1;
        const ranges = await getWriteData(nr * 16);
        for (let i = 0; i < nr; i++) {
          const n = ranges.readUInt32LE(i * 16 + 4);
          const s = Number(ranges.readBigUInt64LE(i * 16 + 8));
          ns.data.fill(0, s * ns.lbaSize, (s + n) * ns.lbaSize);
        }
        done(cid);
        break;
      }
      case 0x00: done(cid); break;
      default: done(cid, { sc: 0x01 });
    }
  }
}
