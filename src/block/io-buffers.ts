/**
 * Data buffers of block I/O — read destinations and NBD WRITE payloads — and the recycling of
 * the large ones.
 *
 * Why a pool: Node pools only allocations below 4 KiB, so every larger `allocUnsafe` is a fresh
 * malloc'd ArrayBuffer — at 128 KiB and above glibc hands out new pages that fault in (zeroed by
 * the kernel) on first touch, and the old ones wait for V8's GC to be freed. Measured on the
 * engine at 128 KiB randread QD32 (namespace path, `engine-bench`): 40 µs of system CPU per read
 * with a fresh buffer each, 26 µs when the read lands in a reused one; the bridge's RSS grows
 * with the garbage that waits for the GC (4 exports × QD128 128 KiB reads: 162 → 80 MiB of
 * ArrayBuffers). So a consumer that knows when a buffer is no longer referenced (the NBD server,
 * once the socket has taken a READ reply or the device has finished a WRITE) gives it back with
 * {@link releaseIoBuffer}, and the next I/O of the same size reuses it. A consumer that never
 * gives back loses nothing but the reuse: unreleased buffers are ordinary garbage.
 *
 * Safety: only buffers this module allocated are taken back (a device's own storage, a view, a
 * socket chunk are ignored), and a buffer already in the pool is not added twice, so a double
 * release cannot hand one buffer to two I/Os.
 */

/** Buffers up to this size are carved from a shared slab instead (see {@link ioBuffer}). */
export const SLAB_MAX = 16 * 1024;
/** Slab size: 64 reads of 4 KiB per allocation; small enough that a retained view pins little. */
const SLAB_SIZE = 256 * 1024;
/**
 * Idle bytes the pool keeps at most (all sizes together): what a burst gives back at once must
 * fit, or the rest becomes garbage that the next burst replaces with fresh pages. 4 exports ×
 * QD128 × 128 KiB swing by about this much (bridge VmHWM with an 8 or 32 MiB cap ≈ 207 MiB,
 * 64 MiB ≈ 152 MiB); idle memory is dropped again after {@link IO_POOL_IDLE_MS} without use.
 */
export const IO_POOL_MAX_BYTES = 64 * 1024 * 1024;
/** A pool not used for this long (no large buffer taken or given back) drops its idle buffers. */
export const IO_POOL_IDLE_MS = 5000;

let slab = Buffer.allocUnsafeSlow(0);
let slabUsed = 0;

/** Idle large buffers by exact length. */
const idle = new Map<number, Buffer[]>();
let idleBytes = 0;
/** Large-buffer takes and gives since the idle timer last looked. */
let uses = 0;
let idleTimer: NodeJS.Timeout | undefined;
/** Every large buffer this module allocated (weakly: dropped ones are collected). */
const ours = new WeakSet<Buffer>();
/** The large buffers now idle in the pool: guards against a double release. */
const inPool = new WeakSet<Buffer>();

/**
 * A data buffer of `n` bytes (a read's destination, a write's payload). Small ones are
 * consecutive views of a 256 KiB slab (a 4 KiB `allocUnsafe` would be a malloc and a GC-swept
 * ArrayBuffer per I/O; a view pins its slab only while the I/O lives); large ones reuse a released
 * buffer of the same length or allocate one. Contents are uninitialised: the caller writes every
 * byte before using it.
 */
export function ioBuffer(n: number): Buffer {
  if (n > SLAB_MAX) {
    uses++;
    const list = idle.get(n);
    const b = list?.pop();
    if (b !== undefined) {
      idleBytes -= n;
      inPool.delete(b);
      return b;
    }
    const fresh = Buffer.allocUnsafeSlow(n);
    ours.add(fresh);
    return fresh;
  }
  if (slabUsed + n > slab.length) {
    slab = Buffer.allocUnsafeSlow(SLAB_SIZE);
    slabUsed = 0;
  }
  const b = slab.subarray(slabUsed, slabUsed + n);
  slabUsed += n;
  return b;
}

/**
 * Give back the buffer of a finished I/O: the caller guarantees nothing references it any more
 * (a READ reply: the socket's write callback has run; a WRITE: the device completed it). Anything not allocated by {@link ioBuffer}'s
 * pool path, already idle, or beyond {@link IO_POOL_MAX_BYTES} is left to the GC.
 * @returns whether the buffer was taken into the pool.
 */
export function releaseIoBuffer(b: Buffer): boolean {
  if (!ours.has(b) || inPool.has(b)) return false;
  const n = b.length;
  uses++;
  // Sizes the workload moved away from make room for the size in use (1 MiB writes that filled
  // the pool must not keep 128 KiB reads from being pooled).
  if (idleBytes + n > IO_POOL_MAX_BYTES) evictOtherSizes(n, idleBytes + n - IO_POOL_MAX_BYTES);
  if (idleBytes + n > IO_POOL_MAX_BYTES) return false;
  let list = idle.get(n);
  if (list === undefined) {
    list = [];
    idle.set(n, list);
  }
  list.push(b);
  inPool.add(b);
  idleBytes += n;
  if (idleTimer === undefined) armIdleTimer();
  return true;
}

/** Drop idle buffers of lengths other than `keep` until `need` bytes are free (or none are left). */
function evictOtherSizes(keep: number, need: number): void {
  for (const [len, list] of idle) {
    if (len === keep) continue;
    while (need > 0 && list.length > 0) {
      inPool.delete(list.pop() as Buffer);
      idleBytes -= len;
      need -= len;
    }
    if (list.length === 0) idle.delete(len);
    if (need <= 0) return;
  }
}

/**
 * While the pool holds buffers, look every {@link IO_POOL_IDLE_MS}: unused since the last look →
 * drop them all (the GC frees them), so a daemon does not keep a burst's memory forever. The
 * timer is unref'd: it never keeps the process alive.
 */
function armIdleTimer(): void {
  uses = 0;
  idleTimer = setTimeout(onIdleTimer, IO_POOL_IDLE_MS);
  idleTimer.unref();
}

function onIdleTimer(): void {
  idleTimer = undefined;
  if (uses === 0) {
    ioPoolClear();
    return;
  }
  if (idleBytes > 0) armIdleTimer();
}

/** Drop every idle buffer now and stop the idle timer (tests; a caller under memory pressure). */
export function ioPoolClear(): void {
  if (idleTimer !== undefined) clearTimeout(idleTimer);
  idleTimer = undefined;
  for (const list of idle.values()) for (const b of list) inPool.delete(b);
  idle.clear();
  idleBytes = 0;
}

/** Idle bytes now in the pool (tests, diagnostics). */
export function ioPoolIdleBytes(): number {
  return idleBytes;
}
