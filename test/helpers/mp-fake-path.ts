/**
 * A recording fake path controller and a hand-driven clock for the multipath mutation tests
 * (test/unit/mut-ctrl-multipath*.test.ts): the test completes every record and promise operation
 * itself, moves time itself, and changes the path's state, namespaces and ANA log by hand.
 */
import { strict as assert } from 'node:assert';
import { EventEmitter } from 'node:events';
import type { MultipathClock, PathController, PathOptions } from '../../src/controller/multipath';
import { classifyNamespace, type NamespaceInfo } from '../../src/controller/namespace-info';
import type { IoRequest } from '../../src/controller/io-request';
import type { CtrlStateValue } from '../../src/controller/resilient';
import { ErrorCode, NvmfNbdError } from '../../src/errors';
import { NbdErrno } from '../../src/block/errno';
import { encodeIdentifyController, encodeIdentifyNamespace, parseIdentifyController, Sct } from '../../src/wire';
import { encodeNsIdDescriptors, type NamespaceIdentifiers } from '../../src/wire/ns-descriptors';
import type { AnaLog } from '../../src/wire';

export const NQN = 'nqn.2014-08.org.nvmf-nbd:mut-mp';
export const NGUID = Buffer.from('00112233445566778899aabbccddeeff', 'hex');

/** Timers fire only when the test moves the clock. */
export class FakeClock implements MultipathClock {
  t = 1_000_000;
  timers: Array<{ at: number; fn: () => void; id: number; ms: number }> = [];
  private next = 1;
  now(): number { return this.t; }
  setTimer(fn: () => void, ms: number): unknown {
    const id = this.next++;
    this.timers.push({ at: this.t + Math.max(0, ms), fn, id, ms });
    return id;
  }
  clearTimer(h: unknown): void { this.timers = this.timers.filter((x) => x.id !== h); }
  advance(ms: number): void {
    const end = this.t + ms;
    for (;;) {
      this.timers.sort((a, b) => a.at - b.at);
      const d = this.timers[0];
      if (d === undefined || d.at > end) break;
      this.timers.shift();
      this.t = d.at;
      d.fn();
    }
    this.t = end;
  }
}

export function nsInfo(nsid = 1, o: { nguid?: Buffer; eui64?: Buffer; lbads?: number; nsze?: bigint; anagrpid?: number } = {}): NamespaceInfo {
  const nsze = o.nsze ?? 8192n;
  return classifyNamespace(nsid, encodeIdentifyNamespace({
    nsze, ncap: nsze, lbaf: [{ ms: 0, lbads: o.lbads ?? 9, rp: 0 }], nguid: o.nguid ?? NGUID, ...(o.eui64 !== undefined ? { eui64: o.eui64 } : {}), anagrpid: o.anagrpid ?? 1,
  }));
}

export function pathStatus(sc: number): NvmfNbdError {
  return new NvmfNbdError(ErrorCode.NVME_STATUS, `path status ${sc}`, { status: { sct: Sct.PATH, sc, dnr: false, more: false, crd: 0 } });
}

export interface FakePathOptions {
  subnqn?: string;
  cqt?: number;
  anatt?: number;
  namespaces?: NamespaceInfo[];
  /** Identifiers CNS 03h answers, per NSID (default: NGUID of the namespace's Identify); 'reject' fails the command. */
  ids?: Map<number, NamespaceIdentifiers> | 'reject';
}

/** A promise operation the test settles. */
export interface PendingOp { kind: 'deallocate' | 'writeZeroes'; args: unknown[]; resolve: () => void; reject: (e: unknown) => void }

/** A path whose I/O the test completes by hand; `fail()` is a lost association (pass-back mode). */
export class FakePath extends EventEmitter implements PathController {
  state: CtrlStateValue = 'live';
  cntlid: number;
  identifyRaw: Buffer;
  identify: ReturnType<typeof parseIdentifyController>;
  readonly namespaces = new Map<number, NamespaceInfo>();
  namespacesOverLimit = 0;
  ioQueueCount = 1;
  maxTransfer = 1 << 20;
  version = 0x20000;
  oncs = 0x0c;
  volatileWriteCache = true;
  reconnects = 0;
  lastError: NvmfNbdError | undefined;
  authentication = undefined;
  anaLog: AnaLog | undefined = undefined;
  anaReporting = false;
  /** Overrides holdsIo (default: connecting). */
  holdsOverride: boolean | undefined;
  readonly running: IoRequest[] = [];
  readonly held: IoRequest[] = [];
  readonly ops: PendingOp[] = [];
  readonly admin: Buffer[] = [];
  readonly adminOptions: unknown[] = [];
  passBack = false;
  passBackCalls: boolean[] = [];
  closed = false;
  closeRejects = false;
  refreshes = 0;
  refreshResult: 'log' | 'reject' | 'pending' = 'log';
  private readonly ids: FakePathOptions['ids'];
  get holdsIo(): boolean { return this.holdsOverride ?? this.state === 'connecting'; }
  constructor(readonly options: PathOptions, cntlid: number, o: FakePathOptions = {}) {
    super();
    this.cntlid = cntlid;
    this.identifyRaw = encodeIdentifyController({ subnqn: o.subnqn ?? NQN, cqt: o.cqt ?? 6000, anatt: o.anatt ?? 10, cmic: 0x0b });
    this.identify = parseIdentifyController(this.identifyRaw);
    for (const i of o.namespaces ?? [nsInfo(1)]) this.namespaces.set(i.nsid, i);
    this.ids = o.ids;
  }
  describeState(): { state: CtrlStateValue; reconnects: number; attempts: number; since: string } {
    return { state: this.state, reconnects: this.reconnects, attempts: this.cntlid * 10, since: new Date(0).toISOString() };
  }
  stats(): never { return { cntlid: this.cntlid } as never; }
  submitIo(req: IoRequest): void {
    if (this.state === 'live') this.running.push(req);
    else if (this.state === 'connecting') this.held.push(req);
    else process.nextTick(() => (req.owner!).onIoDone(req, new NvmfNbdError(ErrorCode.CONTROLLER_LOST, `dead ${this.options.trsvcid}`, { errno: NbdErrno.EIO })));
  }
  private op(kind: PendingOp['kind'], args: unknown[]): Promise<void> {
    return new Promise((resolve, reject) => { this.ops.push({ kind, args, resolve, reject }); });
  }
  deallocate(...args: unknown[]): Promise<void> { return this.op('deallocate', args); }
  writeZeroes(...args: unknown[]): Promise<void> { return this.op('writeZeroes', args); }
  adminCommand(sqe: Buffer, o?: unknown): Promise<{ cqe: never; data: Buffer }> {
    this.admin.push(sqe);
    this.adminOptions.push(o);
    if (this.ids === 'reject') return Promise.reject(new NvmfNbdError(ErrorCode.NVME_STATUS, 'invalid field'));
    const nsid = sqe.readUInt32LE(4);
    const ids = this.ids?.get(nsid) ?? { nguid: this.namespaces.get(nsid)?.identify.nguid ?? NGUID };
    return Promise.resolve({ cqe: undefined as never, data: encodeNsIdDescriptors(ids) });
  }
  refreshAnaLog(): Promise<AnaLog> {
    this.refreshes++;
    if (this.refreshResult === 'pending') return new Promise(() => undefined);
    return this.refreshResult === 'log' && this.anaLog !== undefined ? Promise.resolve(this.anaLog) : Promise.reject(new Error('no ANA'));
  }
  setPassBack(on: boolean): void { this.passBack = on; this.passBackCalls.push(on); }
  takeHeldRecords(): IoRequest[] { return this.held.splice(0); }
  close(): Promise<void> {
    this.closed = true;
    this.setState('dead');
    return this.closeRejects ? Promise.reject(new Error('close failed')) : Promise.resolve();
  }
  setState(s: CtrlStateValue): void {
    this.state = s;
    this.emit('state', s);
  }
  complete(req = this.running[0], err?: NvmfNbdError): void {
    assert.ok(req !== undefined, 'a running request');
    this.running.splice(this.running.indexOf(req), 1);
    (req.owner!).onIoDone(req, err);
  }
  fail(): void {
    this.setState('connecting');
    for (const req of this.running.splice(0)) {
      req.pathLost = true;
      (req.owner!).onIoDone(req, new NvmfNbdError(ErrorCode.CONNECTION_CLOSED, 'lost'));
    }
  }
  revive(cntlid: number): void {
    this.cntlid = cntlid;
    this.reconnects++;
    this.setState('live');
  }
  setAna(groups: Array<[grpid: number, state: number, nsids: number[]]>, emit = true): AnaLog {
    const log: AnaLog = { chgcnt: 1n, groups: groups.map(([grpid, state, nsids]) => ({ grpid, chgcnt: 1n, state, nsids })) };
    this.anaLog = log;
    this.anaReporting = true;
    if (emit) this.emit('ana', log);
    return log;
  }
}

export function pathOpts(port: number, extra: Partial<PathOptions> = {}): PathOptions {
  return { traddr: '127.0.0.1', trsvcid: port, subnqn: NQN, hostnqn: 'nqn.h', hostid: '5d7c1f30-2b4a-4c6d-8e9f-00000000c013', kato: 5000, ...extra };
}

export const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

/** Track a promise's outcome without awaiting it. */
export function track<T>(p: Promise<T>): { done: boolean; value?: T; error?: unknown; p: Promise<T> } {
  const s: { done: boolean; value?: T; error?: unknown; p: Promise<T> } = { done: false, p };
  p.then((v) => { s.done = true; s.value = v; }, (e: unknown) => { s.done = true; s.error = e; });
  return s;
}
