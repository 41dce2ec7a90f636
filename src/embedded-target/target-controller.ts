/**
 * One controller (association) of the embedded target: the fabrics property registers
 * (CAP/VS/CC/CSTS), granted queues, features, keep-alive enforcement and asynchronous events.
 * Created by an admin-queue Connect; I/O queues join it by cntlid. Destroyed when its admin
 * queue closes, its keep-alive timer expires, or the target closes — one teardown path.
 */
import { CommandSpecificStatus, Property, Sct, Shn, Shst, decodeCc, decodeCsts, encodeCap, encodeCsts } from '../wire';
import { fail, ok, type Completion, type TargetContext, type TargetSubsystem } from './context';
import { NVME_VERSION } from './pages';
import { AEN_ANA_CHANGE_DW0, AEN_CFG_ANA_CHANGE } from '../wire/ana';
import type { TargetPort } from './ports';

/** A queue (connection) as the controller sees it. */
export interface ControllerQueue {
  readonly qid: number;
  /** Close the connection without further PDUs. */
  destroy(reason: string): void;
}

/** CSTS with its shutdown status replaced. */
function withShst(csts: number, shst: number): number {
  return encodeCsts({ ...decodeCsts(csts), shst });
}

/** AEN: type 2 (notice), info 0 (namespace attribute changed), log page 04h. */
export const AEN_NS_ATTR_CHANGED = 0x02 | (0x00 << 8) | (0x04 << 16);
/** Async Event Configuration bit for namespace attribute notices. */
export const AEC_NS_ATTR = 1 << 8;
/** Async Event Configuration bit 11: ANA change notices. */
export const AEC_ANA_CHANGE = AEN_CFG_ANA_CHANGE;
/**
 * Largest KATO accepted (ms, ≈ 12.4 days). Node's timers hold at most 2^31 − 1 ms and fire
 * after 1 ms beyond that, so KATO plus its grace must stay below; larger values are refused
 * with Invalid Field rather than silently shortened (issue 14 finding 10).
 */
export const KATO_MAX_MS = 2 ** 30;
/** Node's largest timer delay. */
const TIMER_MAX_MS = 2 ** 31 - 1;

/** AEN: type 2 (notice), info F0h (Discovery Log Page Change), log page 70h (NVMe-oF 1.1 §5.3). */
export const AEN_DISCOVERY_LOG_CHANGED = 0x02 | (0xf0 << 8) | (0x70 << 16);
/** Async Event Configuration bit 31: Discovery Log Page Change notices (discovery controllers). */
export const AEC_DISCOVERY_LOG = 0x80000000;
/** Changed Namespace List holds at most this many entries before it reports "more". */
const CHANGED_NS_MAX = 1024;

/** One controller of the target. */
export class TargetController {
  readonly cntlid: number;
  readonly subsys: TargetSubsystem;
  readonly hostnqn: string;
  readonly hostid: Buffer;
  /** The port the admin queue connected on: its ANA states are this controller's. */
  readonly port: TargetPort;
  /** Keep Alive Timeout in ms (0 = disabled). */
  kato: number;
  readonly io = new Map<number, ControllerQueue>();
  admin: ControllerQueue | undefined;

  cc = 0;
  csts = 0;
  /** I/O queues granted by Set Features Number of Queues (defaults to the maximum). */
  grantedQueues: number;
  /** Async Event Configuration (Set Features 0Bh). */
  aec = 0;
  /** Volatile Write Cache Enable (feature 06h): reported, writes are handled the same either way. */
  vwce = 1;

  private readonly ctx: TargetContext;
  private aerWaiters: Array<(c: Completion) => void> = [];
  private events: number[] = [];
  private changedNs: number[] = [];
  private discNoticeMasked = false;
  private changedOverflow = false;
  /** The namespace notice was reported and stays masked until the log page is read. */
  private nsNoticeMasked = false;
  /** The ANA change notice was reported and stays masked until the ANA log is read without RAE. */
  private anaNoticeMasked = false;
  private kaTimer: NodeJS.Timeout | undefined;
  private destroyed = false;

  constructor(ctx: TargetContext, o: { cntlid: number; subsys: TargetSubsystem; hostnqn: string; hostid: Buffer; kato: number; port: TargetPort }) {
    this.ctx = ctx;
    this.port = o.port;
    this.cntlid = o.cntlid;
    this.subsys = o.subsys;
    this.hostnqn = o.hostnqn;
    this.hostid = o.hostid;
    this.kato = o.kato;
    this.grantedQueues = o.subsys.discovery ? 0 : ctx.cfg.maxIoQueues;
    ctx.controllers.set(this.cntlid, this);
    o.subsys.controllers.add(this);
    o.port.controllers.add(this);
    ctx.stats.controllers = ctx.controllers.size;
    this.armKeepAlive();
  }

  /** CSTS.RDY: the host enabled the controller. */
  get ready(): boolean {
    return decodeCsts(this.csts).rdy;
  }

  get isDestroyed(): boolean {
    return this.destroyed;
  }

  /** Any command on any queue of the association counts as keep-alive traffic. */
  touch(): void {
    this.kaTimer?.refresh();
  }

  /**
   * (Re)start the keep-alive timer after a KATO change. A controller with KATO 0 (keep-alive
   * off: nvme-cli `-k 0`, one-shot admin verbs, discovery) gets the idle limit instead, so no
   * association lives forever without traffic (issue 14 finding 11).
   */
  armKeepAlive(): void {
    if (this.kaTimer !== undefined) clearTimeout(this.kaTimer);
    this.kaTimer = undefined;
    if (this.destroyed) return;
    const idle = this.kato === 0;
    const ms = idle
      ? this.ctx.cfg.idleTimeoutMs
      : Math.min(TIMER_MAX_MS, this.kato + Math.max(this.ctx.cfg.keepAliveGraceMs, Math.floor(this.kato / 2)));
    this.kaTimer = setTimeout(() => {
      this.ctx.stats.keepAliveTimeouts++;
      this.ctx.log('warn', `controller ${this.cntlid} (${this.hostnqn}): ${idle ? 'idle' : 'keep-alive'} timeout after ${ms} ms, dropping the association`);
      this.destroy(idle ? 'idle timeout' : 'keep-alive timeout');
    }, ms);
    this.kaTimer.unref();
  }

  /** CAP: MQES, CQR, TO (500 ms units), CSS NVM, MPSMIN = MPSMAX = 0 (4 KiB). */
  cap(): bigint {
    return encodeCap({ mqes: this.ctx.cfg.queueSize - 1, cqr: true, to: 10, css: 1 });
  }

  /** Property Get: the value, or undefined for an invalid offset/size. */
  propertyGet(offset: number, size8: boolean): bigint | undefined {
    if (size8) return offset === Property.CAP ? this.cap() : undefined;
    switch (offset) {
      case Property.CAP:
        return this.cap() & 0xffffffffn;
      case Property.CAP + 4:
        return this.cap() >> 32n;
      case Property.VS:
        return BigInt(NVME_VERSION);
      case Property.CC:
        return BigInt(this.cc);
      case Property.CSTS:
        return BigInt(this.csts);
      default:
        return undefined;
    }
  }

  /** Property Set: false for an invalid offset/size. Only CC is writable. */
  propertySet(offset: number, size8: boolean, value: bigint): boolean {
    if (size8 || offset !== Property.CC) return false;
    const next = Number(value & 0xffffffffn);
    const cc = decodeCc(next);
    const was = decodeCc(this.cc);
    this.cc = next;
    if (cc.en && !was.en) {
      const badQes = !this.subsys.discovery && (cc.iosqes !== 6 || cc.iocqes !== 4);
      if (cc.mps !== 0 || badQes || (cc.css !== 0 && cc.css !== 7)) {
        // Linux's nvme_wait_ready fails on CFS: a clear error instead of a hang.
        this.csts |= encodeCsts({ cfs: true });
        this.ctx.log('warn', `controller ${this.cntlid}: bad CC 0x${next.toString(16)} (mps ${cc.mps}, iosqes ${cc.iosqes}, iocqes ${cc.iocqes}, css ${cc.css})`);
      } else {
        this.csts = encodeCsts({ rdy: true });
      }
    } else if (!cc.en && was.en) {
      this.csts = 0;
    }
    if (cc.shn !== Shn.NONE && was.shn === Shn.NONE) {
      this.csts = withShst(this.csts, Shst.OCCURRING);
      // Shutdown makes written data durable before reporting completion.
      const flushes = [...this.subsys.namespaces.values()].map((ns) => ns.backend.flush().catch(() => undefined));
      void Promise.all(flushes).then(() => {
        this.csts = withShst(this.csts, Shst.COMPLETE);
      });
    } else if (cc.shn === Shn.NONE && was.shn !== Shn.NONE) {
      this.csts = withShst(this.csts, Shst.NORMAL);
    }
    return true;
  }

  /** Asynchronous Event Request: completes now if an event is pending, else when one occurs. */
  queueAer(): Completion | Promise<Completion> {
    const ev = this.events.shift();
    if (ev !== undefined) return ok(ev);
    if (this.aerWaiters.length > this.ctx.cfg.aerl) {
      return fail(Sct.COMMAND_SPECIFIC, CommandSpecificStatus.AER_LIMIT_EXCEEDED);
    }
    return new Promise<Completion>((resolve) => this.aerWaiters.push(resolve));
  }

  /** A namespace of the subsystem was added, removed or resized. */
  namespaceChanged(nsid: number): void {
    if (!this.changedNs.includes(nsid)) {
      if (this.changedNs.length >= CHANGED_NS_MAX) this.changedOverflow = true;
      else this.changedNs.push(nsid);
    }
    if (this.nsNoticeMasked || (this.aec & AEC_NS_ATTR) === 0) return;
    this.nsNoticeMasked = true;
    this.postEvent(AEN_NS_ATTR_CHANGED);
  }

  /**
   * The discovery log changed (a subsystem, port or referral came or went). Like the namespace
   * notice, it is sent once and masked until the host reads the log with RAE cleared.
   */
  discoveryLogChanged(): void {
    if (this.discNoticeMasked || (this.aec & AEC_DISCOVERY_LOG) === 0) return;
    this.discNoticeMasked = true;
    this.postEvent(AEN_DISCOVERY_LOG_CHANGED >>> 0);
  }

  /**
   * The ANA log this controller reports changed (a group's state on its port, or which
   * namespaces a group holds): the ANA change notice (info 03h, log 0Ch) once, masked until the
   * host reads the ANA log without RAE.
   */
  anaChanged(): void {
    if (this.anaNoticeMasked || (this.aec & AEC_ANA_CHANGE) === 0) return;
    this.anaNoticeMasked = true;
    this.postEvent(AEN_ANA_CHANGE_DW0);
  }

  /** The host read the ANA log: without RAE the notice is unmasked again. */
  readAnaLog(rae: boolean): void {
    if (!rae) this.anaNoticeMasked = false;
  }

  /** The host read the discovery log: without RAE the notice is unmasked again. */
  readDiscoveryLog(rae: boolean): void {
    if (!rae) this.discNoticeMasked = false;
  }

  /** The Changed Namespace List log page; reading it without RAE clears it and unmasks the event. */
  readChangedNs(rae: boolean): number[] {
    // On overflow the log holds FFFFFFFFh alone: the host must rescan everything.
    const list = this.changedOverflow ? [0xffffffff] : [...this.changedNs];
    if (!rae) {
      this.changedNs = [];
      this.changedOverflow = false;
      this.nsNoticeMasked = false;
    }
    return list;
  }

  private postEvent(dw0: number): void {
    const w = this.aerWaiters.shift();
    if (w !== undefined) w(ok(dw0));
    else this.events.push(dw0);
  }

  /** Tear the association down: every queue closes, pending AERs are dropped. Idempotent. */
  destroy(reason: string): void {
    if (this.destroyed) return;
    this.destroyed = true;
    if (this.kaTimer !== undefined) clearTimeout(this.kaTimer);
    this.kaTimer = undefined;
    this.aerWaiters = [];
    this.ctx.controllers.delete(this.cntlid);
    this.subsys.controllers.delete(this);
    this.port.controllers.delete(this);
    this.ctx.stats.controllers = this.ctx.controllers.size;
    this.ctx.log('debug', `controller ${this.cntlid} (${this.subsys.nqn}): destroyed: ${reason}`);
    const queues = [...this.io.values()];
    this.io.clear();
    for (const q of queues) q.destroy(reason);
    const a = this.admin;
    this.admin = undefined;
    a?.destroy(reason);
  }
}
