/**
 * A persistent discovery controller (nvme-cli `discover -p`, `connect-all -p`): the discovery
 * controller stays connected with keep-alive, Discovery Log Page Change notices are enabled
 * (Async Event Configuration bit 31) and each one re-reads the log; the NVM entries found (on
 * this controller and on the discovery services its referrals name, followed loop-safe) are
 * handed to `onLog`, which connects new subsystems and, when asked, disconnects those gone.
 *
 * The discovery controller's own loss is repaired like an I/O controller's: reconnect every
 * reconnect delay until ctrl_loss_tmo (−1: forever), then re-read the log (changes made while
 * it was away are seen then). A controller without the notice (OAES bit 31 clear) is polled.
 */
import { EventEmitter } from 'node:events';
import { Controller } from '../controller/controller';
import type { ControllerOptions } from '../controller/controller';
import { AEN_INFO_DISCOVERY_LOG_CHANGED } from '../controller/controller';
import { discover, readDiscoveryLog } from '../controller/discovery';
import type { DiscoveryEntry } from '../controller/discovery';
import { ErrorCode, NvmfNbdError } from '../errors';
import { DISCOVERY_NQN, SubType, TrType } from '../wire';

/** Persistent discovery controller states (as `list` shows them). */
export const DiscoveryState = { CONNECTING: 'connecting', LIVE: 'live', DEAD: 'dead', CLOSED: 'closed' } as const;
export type DiscoveryStateValue = (typeof DiscoveryState)[keyof typeof DiscoveryState];

/** Default keep-alive of a persistent discovery controller (Linux NVMF_DEF_DISC_TMO), ms. */
export const PERSISTENT_DISCOVERY_KATO_MS = 30_000;
/** Re-read period when the controller cannot notify (OAES bit 31 clear), ms. */
export const DISCOVERY_POLL_MS = 60_000;
/** Referrals followed at most this deep (each discovery service is read once per refresh). */
export const MAX_REFERRAL_DEPTH = 4;

/** Options of {@link PersistentDiscovery}. */
export interface PersistentDiscoveryOptions {
  readonly name: string;
  /** The discovery controller (subnqn defaults to the well-known discovery NQN). */
  readonly controller: Omit<ControllerOptions, 'subnqn'> & { subnqn?: string };
  /** Replace the traddr/trsvcid of every NVM entry (NAT, port forwards). */
  readonly overrideTraddr?: string;
  readonly overrideTrsvcid?: string;
  readonly reconnectDelayMs?: number;
  /** −1: never give up. */
  readonly ctrlLossTmoMs?: number;
  readonly pollMs?: number;
  /** Stop after the first successful read (a one-shot discovery that retries until it works). */
  readonly once?: boolean;
  /** The NVM/TCP entries after each read (this controller's and its referrals'). */
  readonly onLog: (entries: DiscoveryEntry[]) => Promise<void>;
  readonly log?: (msg: string) => void;
  /** Controller factory (tests). */
  readonly connect?: (o: ControllerOptions) => Promise<Controller>;
  /** One-shot discovery of a referral (tests). */
  readonly discoverReferral?: typeof discover;
}

const key = (traddr: string, trsvcid: string | number): string => `${traddr}:${String(trsvcid)}`;

/** One persistent discovery controller. Events: `refresh(entries)`, `state(s)`. */
export class PersistentDiscovery extends EventEmitter {
  state: DiscoveryStateValue = DiscoveryState.CONNECTING;
  genctr: bigint | undefined;
  reconnects = 0;
  reads = 0;
  notices = 0;
  lastError: { code: string; message: string } | undefined;
  /** Discovery services reached through referrals at the last read. */
  referrals: string[] = [];
  /** NVM entries at the last read. */
  entries: DiscoveryEntry[] = [];
  private ctrl: Controller | undefined;
  private timer: NodeJS.Timeout | undefined;
  private poll: NodeJS.Timeout | undefined;
  private work: Promise<void> = Promise.resolve();
  private lostAt: number | undefined;
  private closed = false;
  private readonly connectFn: (o: ControllerOptions) => Promise<Controller>;

  constructor(readonly o: PersistentDiscoveryOptions) {
    super();
    this.connectFn = o.connect ?? ((c) => Controller.connect(c));
  }

  /** Start connecting (in the background). */
  start(): void {
    void this.attempt();
  }

  /** Resolves after the current read (if any) has been applied. */
  settled(): Promise<void> {
    return this.work;
  }

  private log(m: string): void {
    this.o.log?.(`${this.o.name}: ${m}`);
  }

  private setState(s: DiscoveryStateValue): void {
    if (this.state === s) return;
    this.state = s;
    this.emit('state', s);
  }

  private async attempt(): Promise<void> {
    this.timer = undefined;
    if (this.closed) return;
    let ctrl: Controller;
    try {
      ctrl = await this.connectFn({
        kato: PERSISTENT_DISCOVERY_KATO_MS,
        ...this.o.controller,
        subnqn: this.o.controller.subnqn ?? DISCOVERY_NQN,
        discovery: true, nrIoQueues: 0, discoveryLogEvents: this.o.once !== true,
      });
    } catch (err) {
      this.failed(err);
      return;
    }
    if (this.closed) {
      await ctrl.close().catch(() => undefined);
      return;
    }
    this.ctrl = ctrl;
    this.lostAt = undefined;
    this.setState(DiscoveryState.LIVE);
    ctrl.on('error', () => undefined);
    ctrl.on('warning', () => undefined);
    ctrl.on('aen', (ev: { type: number; info: number }) => {
      if (ev.type === 2 && ev.info === AEN_INFO_DISCOVERY_LOG_CHANGED) {
        this.notices++;
        this.log('discovery log changed (AEN): re-reading');
        this.refresh();
      }
    });
    ctrl.once('close', (err?: Error) => {
      if (this.closed || this.ctrl !== ctrl) return;
      this.ctrl = undefined;
      if (this.poll !== undefined) clearInterval(this.poll);
      this.poll = undefined;
      this.failed(err ?? new NvmfNbdError(ErrorCode.CONNECTION_CLOSED, 'discovery controller closed'));
    });
    if (this.o.once !== true && !ctrl.discoveryLogEventsSupported) {
      this.log('the discovery controller sends no log-change notices (OAES bit 31 clear): polling');
      this.poll = setInterval(() => this.refresh(), this.o.pollMs ?? DISCOVERY_POLL_MS);
      this.poll.unref();
    }
    this.refresh();
  }

  private failed(err: unknown): void {
    if (this.closed) return;
    this.lastError = { code: (err as { code?: string }).code ?? 'error', message: (err as Error).message };
    this.lostAt ??= Date.now();
    const loss = this.o.ctrlLossTmoMs ?? -1;
    if (loss >= 0 && Date.now() - this.lostAt > loss) {
      this.setState(DiscoveryState.DEAD);
      this.log(`giving up after ctrl-loss-tmo: ${this.lastError.message}`);
      return;
    }
    this.setState(DiscoveryState.CONNECTING);
    this.reconnects++;
    this.log(`${this.lastError.message}; reconnecting in ${Math.round((this.o.reconnectDelayMs ?? 10_000) / 1000)} s`);
    this.timer = setTimeout(() => void this.attempt(), this.o.reconnectDelayMs ?? 10_000);
  }

  /** Re-read the log (serialized: one read at a time, a notice during a read reads again). */
  refresh(): void {
    this.work = this.work.then(() => this.readAndApply()).catch((err: unknown) => {
      if (this.closed) return;
      this.lastError = { code: (err as { code?: string }).code ?? 'error', message: (err as Error).message };
      this.log(`reading the discovery log failed: ${this.lastError.message}`);
      // A failed read on a live controller: drop the association so the reconnect path reads again.
      this.ctrl?.destroy(err instanceof NvmfNbdError ? err : new NvmfNbdError(ErrorCode.CONTROLLER_LOST, String(err)));
    });
  }

  private async readAndApply(): Promise<void> {
    const ctrl = this.ctrl;
    if (ctrl === undefined || this.closed) return;
    const log = await readDiscoveryLog(ctrl);
    this.reads++;
    this.genctr = log.genctr;
    const root = key(this.o.controller.traddr, this.o.controller.trsvcid);
    const visited = new Set<string>([root]);
    const found: DiscoveryEntry[] = [];
    await this.collect(log.entries, visited, found, 0);
    this.referrals = [...visited].filter((k) => k !== root);
    for (const e of found) {
      if (this.o.overrideTraddr !== undefined) e.traddr = this.o.overrideTraddr;
      if (this.o.overrideTrsvcid !== undefined) e.trsvcid = this.o.overrideTrsvcid;
    }
    // One entry per subsystem and address (a referral may list what the root lists too).
    const seen = new Set<string>();
    this.entries = found.filter((e) => {
      const k = `${e.subnqn}|${e.traddr}|${e.trsvcid}`;
      if (seen.has(k)) return false;
      seen.add(k);
      return true;
    });
    await this.o.onLog(this.entries);
    this.emit('refresh', this.entries);
    if (this.o.once === true) await this.close();
  }

  /** NVM/TCP entries of `entries`, plus those of referred discovery services not yet visited. */
  private async collect(entries: readonly DiscoveryEntry[], visited: Set<string>, out: DiscoveryEntry[], depth: number): Promise<void> {
    for (const e of entries) {
      if (e.trtype !== TrType.TCP) continue;
      if (e.subtype === SubType.NVM) {
        out.push(e);
        continue;
      }
      if (e.subtype !== SubType.REFERRAL || depth >= MAX_REFERRAL_DEPTH) continue;
      const port = Number(e.trsvcid);
      const k = key(e.traddr, e.trsvcid);
      if (visited.has(k) || !Number.isInteger(port) || port < 1 || port > 65535) continue;
      visited.add(k);
      try {
        const c = this.o.controller;
        const sub = await (this.o.discoverReferral ?? discover)({
          traddr: e.traddr, trsvcid: port, hostnqn: c.hostnqn, hostid: c.hostid, hdgst: c.hdgst, ddgst: c.ddgst,
          ...(c.hostTraddr !== undefined ? { hostTraddr: c.hostTraddr } : {}),
        });
        await this.collect(sub.entries, visited, out, depth + 1);
      } catch (err) {
        this.log(`referral ${k}: ${(err as Error).message}`);
      }
    }
  }

  /** What `list` shows. */
  describe(): Record<string, unknown> {
    const c = this.o.controller;
    return {
      name: this.o.name, state: this.state, traddr: c.traddr, trsvcid: c.trsvcid, subnqn: c.subnqn ?? DISCOVERY_NQN,
      hostnqn: c.hostnqn, genctr: this.genctr ?? null, reads: this.reads, notices: this.notices, reconnects: this.reconnects,
      referrals: this.referrals, subsystems: this.entries.map((e) => ({ subnqn: e.subnqn, traddr: e.traddr, trsvcid: e.trsvcid })),
      notify: this.ctrl?.discoveryLogEventsSupported ?? null, lastError: this.lastError ?? null,
    };
  }

  /** Disconnect and stop; safe to call twice. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.timer !== undefined) clearTimeout(this.timer);
    if (this.poll !== undefined) clearInterval(this.poll);
    this.setState(DiscoveryState.CLOSED);
    const c = this.ctrl;
    this.ctrl = undefined;
    if (c !== undefined) await c.close().catch(() => undefined);
  }
}
