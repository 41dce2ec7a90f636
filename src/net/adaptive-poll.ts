/**
 * Adaptive polling (opt-in, `--poll-us N`): while work is outstanding, keep the event loop from
 * sleeping in epoll for at most N µs after the last I/O event — a setImmediate loop, so libuv
 * polls with a zero timeout — like Linux's polled queues or SPDK's pollers.
 *
 * Why: on a VM, a vCPU that went idle costs tens of µs to wake (the hypervisor halts it); at QD1
 * every reply from a peer on the other core pays that. Spinning trades CPU time for latency, so
 * it stops as soon as nothing is outstanding (`busy()` false) or the window has passed without
 * an event. Measured effect and cost: docs/ARCHITECTURE.md "Benchmarks" (QD1).
 */

/** Options of {@link AdaptivePoller}. */
export interface AdaptivePollerOptions {
  /** Spin window after the last event, in µs (> 0). */
  readonly windowUs: number;
  /** True while replies are awaited (commands in flight): spinning is useless otherwise. */
  readonly busy: () => boolean;
  /**
   * Optional: a counter that moves on every I/O event (e.g. the queues' socket reads), read on
   * each spin turn, so events seen while spinning reopen the window without a kick() per event.
   */
  readonly progress?: () => number;
}

/** One poller per process (or per event loop); call {@link kick} on every I/O event. */
export class AdaptivePoller {
  private readonly windowNs: bigint;
  private readonly busy: () => boolean;
  private readonly progress: (() => number) | undefined;
  private lastProgress = 0;
  private lastEvent = 0n;
  private spinning = false;
  /** Loop turns spent spinning, and spin episodes (for the benchmark's report). */
  spins = 0;
  episodes = 0;
  private readonly turn = (): void => this.onTurn();

  constructor(o: AdaptivePollerOptions) {
    if (!(o.windowUs > 0)) throw new RangeError(`poll window ${o.windowUs} µs: must be > 0`);
    this.windowNs = BigInt(Math.round(o.windowUs * 1000));
    this.busy = o.busy;
    this.progress = o.progress;
  }

  /** An I/O event happened (a socket read, a submission): (re)open the spin window. */
  kick(): void {
    this.lastEvent = process.hrtime.bigint();
    if (this.spinning) return;
    this.spinning = true;
    this.episodes++;
    setImmediate(this.turn);
  }

  private onTurn(): void {
    const now = process.hrtime.bigint();
    if (this.progress !== undefined) {
      const p = this.progress();
      if (p !== this.lastProgress) {
        this.lastProgress = p;
        this.lastEvent = now;
      }
    }
    if (this.busy() && now - this.lastEvent < this.windowNs) {
      this.spins++;
      setImmediate(this.turn);
      return;
    }
    this.spinning = false;
  }
}
