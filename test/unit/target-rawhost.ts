/**
 * A raw NVMe/TCP host for the target's unit tests: speaks PDUs directly (wire codecs only, no
 * host engine) so tests can send exactly the bytes they want, including malformed ones.
 */
import * as net from 'node:net';
import {
  encodeCapsuleCmd, encodeConnectData, encodeH2CData, encodeIcReq, parseCqe, PduParser, PduType, setCid, setSgl,
  sqeConnect, sqePropertyGet, sqePropertySet, SglType, type Cqe, type Pdu, type PduOptions,
} from '../../src/wire';

export const HOSTNQN = 'nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555';
export const HOSTID = Buffer.alloc(16, 0x11);

/** Result of one command. */
export interface Reply {
  cqe: Cqe;
  data: Buffer;
  /** True when the completion came as C2HData SUCCESS (no CapsuleResp). */
  viaSuccess: boolean;
  /** C2HData PDUs received for the command. */
  c2hPdus: number;
  /** LAST_PDU flag of each C2HData PDU, in arrival order. */
  lastFlags: boolean[];
}

interface Pending {
  resolve: (r: Reply) => void;
  reject: (e: Error) => void;
  out: Buffer | undefined;
  chunks: Buffer;
  c2hPdus: number;
  lastFlags: boolean[];
}

/** A raw host connection. Every wait has a timeout so a broken target fails the test, not hangs it. */
export class RawHost {
  readonly sock: net.Socket;
  tx: PduOptions = { hdgst: false, ddgst: false, pda: 0 };
  maxh2cdata = 0;
  termReq: { fes: number; fei: number } | undefined;
  closed = false;
  /** PDUs not matched to a pending command (for assertions). */
  readonly stray: Pdu[] = [];
  /** Optional interceptor for R2T (tests that send bad H2CData). */
  onR2T: ((r2t: Extract<Pdu, { type: 0x09 }>) => boolean) | undefined;
  /** Break header digests of outgoing capsules / data digests of in-capsule data. */
  private readonly parser = new PduParser({ role: 'host', maxData: 1 << 20 });
  private readonly pending = new Map<number, Pending>();
  private nextCid = 1;
  private icresp: ((p: Extract<Pdu, { type: 0x01 }>) => void) | undefined;
  private readonly closeWaiters: Array<() => void> = [];

  private constructor(sock: net.Socket) {
    this.sock = sock;
    sock.on('data', (c: Buffer) => {
      try {
        this.parser.push(c, (p) => this.onPdu(p));
      } catch (err) {
        this.stray.push({ type: 0x03, fes: -1, fei: -1, header: Buffer.from(String(err)) });
        sock.destroy();
      }
    });
    sock.on('error', () => undefined);
    sock.on('close', () => {
      this.closed = true;
      for (const p of this.pending.values()) p.reject(new Error('connection closed'));
      this.pending.clear();
      for (const w of this.closeWaiters.splice(0)) w();
    });
  }

  static connect(port: number): Promise<RawHost> {
    return new Promise((resolve, reject) => {
      const s = net.connect(port, '127.0.0.1', () => resolve(new RawHost(s)));
      s.once('error', reject);
    });
  }

  private onPdu(p: Pdu): void {
    switch (p.type) {
      case PduType.IC_RESP:
        this.icresp?.(p);
        return;
      case PduType.C2H_TERM_REQ:
        this.termReq = { fes: p.fes, fei: p.fei };
        return;
      case PduType.CAPSULE_RESP: {
        const cqe = parseCqe(p.cqe);
        const w = this.pending.get(cqe.cid);
        if (w === undefined) {
          this.stray.push(p);
          return;
        }
        this.pending.delete(cqe.cid);
        w.resolve({ cqe, data: w.chunks, viaSuccess: false, c2hPdus: w.c2hPdus, lastFlags: w.lastFlags });
        return;
      }
      case PduType.C2H_DATA: {
        const w = this.pending.get(p.cccid);
        if (w === undefined) {
          this.stray.push(p);
          return;
        }
        w.c2hPdus++;
        w.lastFlags.push(p.last);
        if (!p.dataDigestOk) throw new Error('C2HData digest mismatch');
        if (p.datao + p.data.length > w.chunks.length) {
          const b = Buffer.alloc(p.datao + p.data.length);
          w.chunks.copy(b);
          w.chunks = b;
        }
        p.data.copy(w.chunks, p.datao);
        if (p.success) {
          this.pending.delete(p.cccid);
          const cqe: Cqe = { dw0: 0, dw1: 0, sqhd: 0, sqid: 0, cid: p.cccid, ok: true, status: { sct: 0, sc: 0, dnr: false, more: false, crd: 0 } };
          w.resolve({ cqe, data: w.chunks, viaSuccess: true, c2hPdus: w.c2hPdus, lastFlags: w.lastFlags });
        }
        return;
      }
      case PduType.R2T: {
        if (this.onR2T?.(p) === true) return;
        const w = this.pending.get(p.cccid);
        if (w === undefined || w.out === undefined) {
          this.stray.push(p);
          return;
        }
        const step = this.maxh2cdata;
        for (let off = p.r2to; off < p.r2to + p.r2tl; off += step) {
          const n = Math.min(step, p.r2to + p.r2tl - off);
          this.send(encodeH2CData({ cccid: p.cccid, ttag: p.ttag, datao: off, last: off + n === p.r2to + p.r2tl }, w.out.subarray(off, off + n), this.tx));
        }
        return;
      }
      default:
        this.stray.push(p);
    }
  }

  send(bufs: Buffer | Buffer[]): void {
    const list = Array.isArray(bufs) ? bufs : [bufs];
    this.sock.cork();
    for (const b of list) this.sock.write(b);
    this.sock.uncork();
  }

  /** ICReq → ICResp; switches digests on as negotiated. */
  async icreq(o: { hdgst?: boolean; ddgst?: boolean; hpda?: number; pfv?: number } = {}, timeoutMs = 3000): Promise<Extract<Pdu, { type: 0x01 }>> {
    const req = encodeIcReq({ hpda: o.hpda ?? 0, hdgst: o.hdgst ?? false, ddgst: o.ddgst ?? false, maxr2t: 0 });
    if (o.pfv !== undefined) req.writeUInt16LE(o.pfv, 8);
    const got = new Promise<Extract<Pdu, { type: 0x01 }>>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('no ICResp')), timeoutMs);
      this.icresp = (p) => {
        clearTimeout(t);
        resolve(p);
      };
    });
    this.send(req);
    const r = await got;
    this.parser.setDigests(r.hdgst, r.ddgst);
    this.tx = { hdgst: r.hdgst, ddgst: r.ddgst, pda: r.cpda };
    this.maxh2cdata = r.maxh2cdata;
    return r;
  }

  /**
   * Submit `sqe` (cid and SGL set here). `write` data goes in-capsule when `inCapsule` (default:
   * when ≤ 8192 bytes), else via R2T; `readLength` sets a controller-to-host buffer. `edit` may
   * change the SQE last (after cid and SGL are set), e.g. to send a malformed SGL.
   */
  submit(sqe: Buffer, o: { write?: Buffer; readLength?: number; inCapsule?: boolean; cid?: number; timeoutMs?: number; badDataDigest?: boolean; edit?: (sqe: Buffer) => void } = {}): Promise<Reply> {
    const cid = o.cid ?? this.nextCid++ & 0xffff;
    setCid(sqe, cid);
    let capsuleData: Buffer | undefined;
    if (o.write !== undefined) {
      const inCapsule = o.inCapsule ?? o.write.length <= 8192;
      setSgl(sqe, inCapsule ? SglType.DATA_BLOCK_OFFSET : SglType.TRANSPORT_DATA_BLOCK, o.write.length);
      if (inCapsule) capsuleData = o.write;
    } else {
      setSgl(sqe, SglType.TRANSPORT_DATA_BLOCK, o.readLength ?? 0);
    }
    o.edit?.(sqe);
    const timeoutMs = o.timeoutMs ?? 5000;
    const p = new Promise<Reply>((resolve, reject) => {
      const t = setTimeout(() => {
        this.pending.delete(cid);
        reject(new Error(`cid ${cid}: no completion within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(cid, {
        resolve: (r) => { clearTimeout(t); resolve(r); },
        reject: (e) => { clearTimeout(t); reject(e); },
        out: capsuleData === undefined ? o.write : undefined,
        chunks: Buffer.alloc(0),
        c2hPdus: 0,
        lastFlags: [],
      });
    });
    const bufs = encodeCapsuleCmd(sqe, capsuleData, this.tx);
    // Corrupt the trailing data digest of the in-capsule data.
    if (o.badDataDigest === true) bufs[bufs.length - 1] = Buffer.from([0xef, 0xbe, 0xad, 0xde]);
    this.send(bufs);
    return p;
  }

  /** Resolves when the target closed the connection (rejects after `timeoutMs`). */
  waitClosed(timeoutMs = 3000): Promise<void> {
    if (this.closed) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('connection not closed by the target')), timeoutMs);
      this.closeWaiters.push(() => { clearTimeout(t); resolve(); });
    });
  }

  close(): void {
    this.sock.destroy();
  }
}

/** Connect an admin queue (ICReq + Fabrics Connect). Resolves with the Connect reply. */
export async function connectAdmin(h: RawHost, subnqn: string, o: { kato?: number; hostnqn?: string; sqsize?: number } = {}): Promise<Reply> {
  const sqe = sqeConnect({ qid: 0, sqsize: o.sqsize ?? 31, kato: o.kato ?? 0, disableSqFlowControl: false });
  const data = encodeConnectData({ hostid: HOSTID, cntlid: 0xffff, subnqn, hostnqn: o.hostnqn ?? HOSTNQN });
  return h.submit(sqe, { write: data });
}

/** Connect an I/O queue of controller `cntlid`. */
export async function connectIo(h: RawHost, subnqn: string, cntlid: number, o: { qid?: number; sqsize?: number; disableSqFc?: boolean } = {}): Promise<Reply> {
  const sqe = sqeConnect({ qid: o.qid ?? 1, sqsize: o.sqsize ?? 31, kato: 0, disableSqFlowControl: o.disableSqFc ?? false });
  const data = encodeConnectData({ hostid: HOSTID, cntlid, subnqn, hostnqn: HOSTNQN });
  return h.submit(sqe, { write: data });
}

/** CC: EN, IOSQES 6, IOCQES 4, MPS 0, CSS NVM. */
export const CC_ENABLE = 0x00460001n;

/** Write CC = enable and read CSTS; resolves with CSTS. */
export async function enable(h: RawHost): Promise<number> {
  const set = await h.submit(sqePropertySet(0x14, false, CC_ENABLE));
  if (!set.cqe.ok) throw new Error(`Property Set CC failed: sc ${set.cqe.status.sc}`);
  const csts = await h.submit(sqePropertyGet(0x1c, false));
  return csts.cqe.dw0;
}

/** A connected, enabled controller on `port` with I/O queue 1 on a second connection. */
export async function openIoQueue(port: number, subnqn: string): Promise<{ admin: RawHost; io: RawHost; cntlid: number }> {
  const admin = await RawHost.connect(port);
  await admin.icreq();
  const c = await connectAdmin(admin, subnqn);
  if (!c.cqe.ok) throw new Error(`admin Connect failed: sc ${c.cqe.status.sc}`);
  await enable(admin);
  const io = await RawHost.connect(port);
  await io.icreq();
  const ic = await connectIo(io, subnqn, c.cqe.dw0);
  if (!ic.cqe.ok) throw new Error(`I/O Connect failed: sc ${ic.cqe.status.sc}`);
  return { admin, io, cntlid: c.cqe.dw0 };
}
