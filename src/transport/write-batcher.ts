/**
 * Per-socket write batching: every message written while handling one event (one socket read,
 * one batch of promise completions) leaves in one `writev` at the end of the tick.
 *
 * Why: corking around each message costs one syscall per PDU / NBD reply (2.2 syscalls per 4 KiB
 * I/O in the bridge). The batcher corks on the first write of a tick and uncorks once from
 * `process.nextTick`. A tick callback queued during a socket callback runs after the microtasks
 * of that callback are drained, so replies produced by promise chains that a socket read
 * resolved (NVMe completion → NBD reply) still join the same batch.
 */
import type { Writable } from 'node:stream';

/** What the batcher needs from a socket (any `Writable`: `net.Socket`, a test `PassThrough`). */
export type BatchTarget = Pick<Writable, 'cork' | 'uncork' | 'write'>;

/** Corks `out` on the first write of a tick and uncorks it once at the end of the tick. */
export class WriteBatcher {
  private pending = false;
  /** Bound once: no closure allocated per batch. */
  private readonly onTick = (): void => this.flush();

  constructor(private readonly out: BatchTarget) {}

  /** True while writes of the current tick are held back (corked). */
  get corked(): boolean {
    return this.pending;
  }

  /** Queue one buffer (a view, never copied) for the end-of-tick writev. */
  write(b: Buffer): void {
    if (!this.pending) this.open();
    this.out.write(b);
  }

  /** Queue header, payload view(s) and digest of one message, in order. */
  writeAll(parts: readonly Buffer[]): void {
    if (!this.pending) this.open();
    for (let i = 0; i < parts.length; i++) this.out.write(parts[i] as Buffer);
  }

  /**
   * Hand everything queued so far to the socket now. Called by the tick callback, and by
   * teardown paths before `destroy()` (which would drop corked data). Idempotent.
   */
  flush(): void {
    if (!this.pending) return;
    this.pending = false;
    this.out.uncork();
  }

  private open(): void {
    this.pending = true;
    this.out.cork();
    process.nextTick(this.onTick);
  }
}
