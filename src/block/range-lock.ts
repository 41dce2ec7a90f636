/**
 * Byte-range lock of one block device, shared by every NBD connection of its export: a
 * read-modify-write of partial blocks takes its (block-rounded) range exclusively, every other
 * request takes its range shared. Shared holders never wait for each other (NVMe itself orders
 * nothing between concurrent commands), an exclusive holder waits for every overlapping holder
 * and is waited for by every overlapping later request.
 *
 * Grants are FIFO among overlapping requests: a request waits for every earlier waiting request
 * it conflicts with, so a stream of shared requests cannot starve an RMW and vice versa.
 * Requests that overlap nothing in conflict are granted at once, synchronously (no promise).
 *
 * The record path's fast lane ({@link RangeLock.tryShared}): while no exclusive request is held
 * or waiting, a shared request is only counted — no entry, no closure. An exclusive request then
 * waits for every counted holder (a superset of the overlapping ones: correct, and RMWs are rare),
 * and while one is held or waiting new shared requests take the entry path, so the count drains.
 */

/** One holder or waiter: [start, end) in bytes. */
interface Entry {
  readonly start: number;
  readonly end: number;
  readonly exclusive: boolean;
  /** Set for waiters: called once when granted. */
  grant: (() => void) | undefined;
}

function conflict(a: Entry, start: number, end: number, exclusive: boolean): boolean {
  return (a.exclusive || exclusive) && a.start < end && start < a.end;
}

/** Release function handed to a holder; call exactly once. */
export type Release = () => void;

/** See the module comment. */
export class RangeLock {
  private readonly held = new Set<Entry>();
  private readonly waiting: Entry[] = [];
  /** Exclusive entries held or waiting: while 0, a shared request needs no scan. */
  private exclusives = 0;
  /** Shared holders granted by {@link tryShared} (counted, range not recorded). */
  private counted = 0;

  /** Held plus waiting (for tests and stats). */
  get size(): number {
    return this.held.size + this.waiting.length + this.counted;
  }

  /**
   * Take a shared range without an entry when nothing exclusive is held or waiting: true when
   * granted (then call {@link releaseShared} exactly once), false when the caller must use
   * {@link acquire}.
   */
  tryShared(): boolean {
    if (this.exclusives !== 0) return false;
    this.counted++;
    return true;
  }

  /** Release a range granted by {@link tryShared}. */
  releaseShared(): void {
    if (--this.counted === 0 && this.waiting.length > 0) this.grantWaiters();
  }

  /**
   * Take [start, end): returns the release function when granted at once, else a promise of it.
   * Callers must call the release exactly once, after the request completed (success or not).
   */
  acquire(start: number, end: number, exclusive: boolean): Release | Promise<Release> {
    const e: Entry = { start, end, exclusive, grant: undefined };
    if (exclusive) this.exclusives++;
    // Fast path: a shared request while no exclusive one is held or waiting conflicts with nothing.
    if ((!exclusive && this.exclusives === 0) || !this.blocked(e, this.waiting.length)) {
      this.held.add(e);
      return () => this.release(e);
    }
    return new Promise<Release>((resolve) => {
      e.grant = () => resolve(() => this.release(e));
      this.waiting.push(e);
    });
  }

  /** Does `e` conflict with a holder, or with one of the first `before` waiters? */
  private blocked(e: Entry, before: number): boolean {
    // Counted shared holders have no recorded range: an exclusive request waits for all of them.
    if (e.exclusive && this.counted > 0) return true;
    for (const h of this.held) if (conflict(h, e.start, e.end, e.exclusive)) return true;
    for (let i = 0; i < before; i++) if (conflict(this.waiting[i] as Entry, e.start, e.end, e.exclusive)) return true;
    return false;
  }

  private release(e: Entry): void {
    if (!this.held.delete(e)) return;
    if (e.exclusive) this.exclusives--;
    this.grantWaiters();
  }

  /** Grant, in order, every waiter that no holder and no earlier waiter blocks. */
  private grantWaiters(): void {
    for (let i = 0; i < this.waiting.length;) {
      const w = this.waiting[i] as Entry;
      if (this.blocked(w, i)) {
        i++;
        continue;
      }
      this.waiting.splice(i, 1);
      this.held.add(w);
      (w.grant as () => void)();
    }
  }
}
