/**
 * The rig of the controller bring-up mutation tests (mut-ctrl-bringup3/4/5): the scripted fake
 * target of fake-target.ts behind a wrapper that patches Identify Controller and admin answers,
 * records every command, holds a queue's Connect answer, and lets a test take commands to
 * answer them itself (or never); plus helpers for ANA logs, AERs and keep-alive on mocked time.
 */
import type { TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { Controller } from '../../src/controller/controller';
import type { ControllerOptions } from '../../src/controller/controller';
import type { NvmfNbdError } from '../../src/errors';
import type { AnaLog } from '../../src/wire';
import { FakeTarget, serveController } from './fake-target';
import type { ControllerModel, FakeConn } from './fake-target';
import type { QueuePair } from '../../src/transport/queue-pair';
import { until } from './clock';

export const T = { timeout: 30_000 };

/** A command the target received: its connection, queue, opcode, fctype, cid and raw SQE. */
export interface Seen { c: FakeConn; qid: number; opcode: number; fctype: number; cid: number; sqe: Buffer }

export interface Hooks {
  /** Change the Identify Controller data (a copy) before it is sent. */
  identify?: (b: Buffer) => void;
  /** Change a response on the admin queue before it is sent: (SQE, response fields). */
  respond?: (sqe: Buffer, o: RespondFields) => RespondFields;
  /** Return true to take the command: the model never sees it, the test answers it (or not). */
  take?: (s: Seen) => boolean;
  /** The Fabrics Connect answer of a queue waits for this (per qid). */
  holdConnect?: (qid: number) => Promise<void> | undefined;
}
export type RespondFields = { sqhd?: number; sc?: number; sct?: number; dnr?: boolean; dw0?: number; dw1?: number };

export type NsModel = { data: Buffer; lbaSize: number };

export function model(o: Partial<ControllerModel> = {}): ControllerModel {
  return { namespaces: new Map<number, NsModel>([[1, { data: Buffer.alloc(64 * 512), lbaSize: 512 }]]), ...o };
}

export const SUBNQN = 'nqn.2024-01.io.test:mut-up3';
export const BASE: Omit<ControllerOptions, 'trsvcid'> = {
  traddr: '127.0.0.1', subnqn: SUBNQN, hostnqn: 'nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-00000000003c',
  hostid: '00000000-0000-0000-0000-00000000003c', nrIoQueues: 1, queueSize: 16, kato: 0, connectTimeoutMs: 5000, ioTimeoutMs: 8000,
};

export interface Rig { target: FakeTarget; seen: Seen[]; taken: Seen[]; conn(qid: number): FakeConn | undefined }

export async function start(m: ControllerModel, h: Hooks = {}): Promise<Rig> {
  const seen: Seen[] = [];
  const taken: Seen[] = [];
  const byQid = new Map<number, FakeConn>();
  const target = await FakeTarget.start((c: FakeConn) => {
    const byCid = new Map<number, Buffer>();
    let connectQid = -1;
    const next = c.nextPdu.bind(c);
    c.nextPdu = async () => {
      for (;;) {
        const pdu = await next();
        if (pdu === undefined || pdu.type !== 0x04) return pdu;
        const sqe = Buffer.from(pdu.sqe);
        const cid = sqe.readUInt16LE(2);
        const isConnect = sqe[0] === 0x7f && sqe[4] === 0x01;
        if (isConnect) {
          connectQid = sqe.readUInt16LE(42);
          byQid.set(connectQid, c);
        }
        const s: Seen = { c, qid: isConnect ? connectQid : c.qid, opcode: sqe[0] as number, fctype: sqe[4] as number, cid, sqe };
        seen.push(s);
        byCid.set(cid, sqe);
        if (!isConnect && h.take?.(s) === true) {
          taken.push(s);
          continue;
        }
        return pdu;
      }
    };
    const c2h = c.c2h.bind(c);
    c.c2h = (cid, datao, data, o) => {
      const sqe = byCid.get(cid);
      if (h.identify !== undefined && sqe !== undefined && sqe[0] === 0x06 && (sqe.readUInt32LE(40) & 0xff) === 1 && c.qid === 0) {
        const copy = Buffer.from(data);
        h.identify(copy);
        data = copy;
      }
      c2h(cid, datao, data, o);
    };
    const respond = c.respond.bind(c);
    c.respond = (cid, o = {}) => {
      const sqe = byCid.get(cid);
      if (sqe !== undefined && sqe[0] === 0x7f && sqe[4] === 0x01) {
        const hold = h.holdConnect?.(connectQid);
        if (hold !== undefined) {
          void hold.then(() => respond(cid, o));
          return;
        }
      }
      respond(cid, sqe !== undefined && c.qid === 0 && h.respond !== undefined ? h.respond(sqe, o) : o);
    };
    return serveController(c, m);
  });
  return { target, seen, taken, conn: (qid) => byQid.get(qid) };
}

export async function rig(m: ControllerModel, h: Hooks = {}, o: Partial<ControllerOptions> = {}): Promise<Rig & { ctrl: Controller; close(): Promise<void> }> {
  const r = await start(m, h);
  try {
    const ctrl = await Controller.connect({ ...BASE, trsvcid: r.target.port, ...o });
    return { ...r, ctrl, close: async () => { await ctrl.close(); await r.target.close(); } };
  } catch (err) {
    await r.target.close();
    throw err;
  }
}

/** Answer a taken command (SQHD FFFFh: no flow-control bookkeeping for it). */
export function answer(s: Seen, o: RespondFields = {}, data?: Buffer): void {
  if (data !== undefined) s.c.c2h(s.cid, 0, data, { last: true });
  s.c.respond(s.cid, { sqhd: 0xffff, ...o });
}

export const isProp = (s: Seen, fctype: number, offset: number): boolean => s.opcode === 0x7f && s.fctype === fctype && s.sqe.readUInt32LE(44) === offset;
export const isLog = (s: Seen, lid: number): boolean => s.qid === 0 && s.opcode === 0x02 && (s.sqe.readUInt32LE(40) & 0xff) === lid;
export const isAer = (s: Seen): boolean => s.qid === 0 && s.opcode === 0x0c;
export const isKa = (s: Seen): boolean => s.qid === 0 && s.opcode === 0x18;
export const count = (seen: Seen[], f: (s: Seen) => boolean): number => seen.filter(f).length;
export const ioQueues = (c: Controller): QueuePair[] => (c as unknown as { ioQueues: QueuePair[] }).ioQueues;
export const adminOf = (c: Controller): QueuePair => (c as unknown as { admin: QueuePair }).admin;
export const kaSentAt = (c: Controller): number | undefined => (c as unknown as { kaSentAt: number | undefined }).kaSentAt;
/**
 * Run the queue's deadline check now. Its timer re-arms with Timeout.refresh(), which
 * node:test's mocked timers (Node 20) ignore: after a mocked tick the test asks for the check.
 */
export const checkDeadlines = (qp: QueuePair): void => (qp as unknown as { onTick(): void }).onTick();

/** Record every Controller.destroy call (synchronous, so a mocked tick can be checked at once). */
export function spyDestroy(t: TestContext): Array<{ ctrl: Controller; err: NvmfNbdError | undefined }> {
  const calls: Array<{ ctrl: Controller; err: NvmfNbdError | undefined }> = [];
  const orig = Controller.prototype.destroy;
  Controller.prototype.destroy = function destroy(this: Controller, err?: NvmfNbdError): void {
    calls.push({ ctrl: this, err });
    orig.call(this, err);
  };
  t.after(() => { Controller.prototype.destroy = orig; });
  return calls;
}

export function isPropSqe(sqe: Buffer, offset: number): boolean {
  return sqe[0] === 0x7f && sqe[4] === 0x04 && sqe.readUInt32LE(44) === offset;
}

export const ANA_LOG: AnaLog = {
  chgcnt: 0x1122334455n,
  groups: [
    { grpid: 3, chgcnt: 0x77n, state: 0x01, nsids: [1] },
    { grpid: 9, chgcnt: 0x99n, state: 0x02, nsids: [] },
  ],
};

/** Identify patch: CMIC ANA, NANAGRPID, NN, OAES. */
export function anaIdentify(o: { nanagrpid?: number; nn?: number; oaes?: number } = {}): (b: Buffer) => void {
  return (b) => {
    b[76] = 0x08;
    b.writeUInt32LE(o.nanagrpid ?? 2, 348);
    if (o.nn !== undefined) b.writeUInt32LE(o.nn, 516);
    b.writeUInt32LE((o.oaes ?? 0) >>> 0, 92);
  };
}

/** Answer every ANA log read with `log()` padded to the length asked. */
export function anaTaker(log: () => Buffer | 'status' | 'hold', lengths?: number[]): (s: Seen) => boolean {
  return (s) => {
    if (!isLog(s, 0x0c)) return false;
    const cdw10 = s.sqe.readUInt32LE(40);
    const n = (((cdw10 >>> 16) | ((s.sqe.readUInt32LE(44) & 0xffff) << 16)) + 1) * 4;
    lengths?.push(n);
    const l = log();
    if (l === 'hold') return true;
    if (l === 'status') answer(s, { sc: 0x02 });
    else {
      const b = Buffer.alloc(n);
      l.copy(b);
      answer(s, {}, b);
    }
    return true;
  };
}

export interface AerRig extends Awaited<ReturnType<typeof rig>> {
  /** Complete the outstanding AER with `dw0`, then wait until the host posted the next one. */
  fire(dw0: number): void;
  aers(): Seen[];
}

export async function aerRig(m: ControllerModel, h: Hooks, o: Partial<ControllerOptions> = {}): Promise<AerRig> {
  const take = h.take;
  const r = await rig(m, { ...h, take: (s) => isAer(s) || take?.(s) === true }, { nrIoQueues: 0, ...o });
  await until(() => count(r.seen, isAer) === 1, 'first AER posted');
  const aers = (): Seen[] => r.taken.filter(isAer);
  let answered = 0;
  return {
    ...r,
    aers,
    fire: (dw0) => {
      const a = aers()[answered++];
      assert.ok(a !== undefined, 'an AER outstanding');
      answer(a, { dw0 });
    },
  };
}

export async function kaRig(t: TestContext, h: Hooks, o: Partial<ControllerOptions>): Promise<Rig & { ctrl: Controller; kas(): Seen[] }> {
  const r = await start(model(), h);
  t.mock.timers.enable({ apis: ['setTimeout', 'setInterval', 'Date'], now: 0 });
  try {
    const ctrl = await Controller.connect({ ...BASE, trsvcid: r.target.port, ...o });
    return { ...r, ctrl, kas: () => r.seen.filter(isKa) };
  } catch (err) {
    t.mock.timers.reset();
    await r.target.close();
    throw err;
  }
}

export async function kaDone(r: { ctrl: Controller }, what: string): Promise<void> {
  await until(() => kaSentAt(r.ctrl) === undefined, what);
}

/** Tick `n` keep-alive periods of 500 ms, waiting for each Keep Alive's answer. */
export async function periods(t: TestContext, r: { ctrl: Controller }, n: number): Promise<void> {
  for (let i = 0; i < n && r.ctrl.alive; i++) {
    t.mock.timers.tick(500);
    if (r.ctrl.alive) await kaDone(r, 'Keep Alive answered');
  }
}

/** Count the controller's (private) AER posts; each still runs. */
export function spyPostAer(c: Controller): { calls: number } {
  const s = { calls: 0 };
  const inner = c as unknown as { postAer(): void };
  const orig = inner.postAer.bind(c);
  inner.postAer = () => { s.calls++; orig(); };
  return s;
}
