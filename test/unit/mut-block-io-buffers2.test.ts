/**
 * More pins for the I/O buffer pool (src/block/io-buffers.ts, issue 15): eviction of other sizes
 * stops exactly when enough room is made (not one buffer more) and goes on to the next size when
 * one is not enough; the idle timer is not re-armed for an empty pool, and ioPoolClear() stops the
 * timer armed before it (mocked setTimeout). Each test starts from and leaves an empty pool.
 */
import { afterEach, beforeEach, mock, test } from 'node:test';
import assert from 'node:assert/strict';
import { IO_POOL_IDLE_MS, IO_POOL_MAX_BYTES, ioBuffer, ioPoolClear, ioPoolIdleBytes, releaseIoBuffer } from '../../src/block/io-buffers';

const MiB = 1024 * 1024;

beforeEach(() => {
  ioPoolClear();
  assert.equal(ioPoolIdleBytes(), 0);
});
afterEach(() => ioPoolClear());

/** Fill the pool with `count` fresh buffers of `n` bytes each. */
function fill(n: number, count: number): void {
  const bufs = Array.from({ length: count }, () => ioBuffer(n));
  for (const b of bufs) assert.equal(releaseIoBuffer(b), true);
}

test('eviction for a new size stops when exactly enough room is made: 2 MiB evicts two 1 MiB buffers, not three', () => {
  fill(MiB, IO_POOL_MAX_BYTES / MiB); // the pool full of 1 MiB buffers
  assert.equal(releaseIoBuffer(ioBuffer(2 * MiB)), true);
  assert.equal(ioPoolIdleBytes(), IO_POOL_MAX_BYTES, 'two evicted, the 2 MiB taken: full again');
  const left = Array.from({ length: IO_POOL_MAX_BYTES / MiB }, () => ioBuffer(MiB));
  assert.equal(ioPoolIdleBytes(), 2 * MiB, 'the 62 pooled 1 MiB buffers were reused; the 2 MiB one stays');
  void left;
});

test('eviction goes on to the next size when the first does not free enough', () => {
  fill(MiB, 32); // 32 MiB of 1 MiB buffers
  fill(MiB / 2, 64); // 32 MiB of 512 KiB buffers: the pool is full
  assert.equal(ioPoolIdleBytes(), IO_POOL_MAX_BYTES);
  // 40 MiB needs all 32 MiB of the first size and 8 MiB (16 buffers) of the second.
  assert.equal(releaseIoBuffer(ioBuffer(40 * MiB)), true);
  assert.equal(ioPoolIdleBytes(), IO_POOL_MAX_BYTES);
  const halves = Array.from({ length: 48 }, () => ioBuffer(MiB / 2));
  assert.equal(ioPoolIdleBytes(), 40 * MiB, '48 of the 512 KiB buffers were left, the 40 MiB one stays');
  void halves;
});

test('the idle timer is not re-armed for an empty pool: a later release gets its own full period', () => {
  mock.timers.enable({ apis: ['setTimeout'] });
  try {
    const a = ioBuffer(MiB);
    releaseIoBuffer(a); // arms the timer: fires at 1 × IDLE
    assert.equal(ioBuffer(MiB), a, 'taken again: the pool is empty but was used');
    mock.timers.tick(IO_POOL_IDLE_MS); // used, nothing idle: not re-armed
    mock.timers.tick(IO_POOL_IDLE_MS / 5);
    releaseIoBuffer(a); // arms a new timer: fires 1 × IDLE from now
    mock.timers.tick(IO_POOL_IDLE_MS - 1);
    assert.equal(ioPoolIdleBytes(), MiB, 'its own period has not run out yet');
    mock.timers.tick(1);
    assert.equal(ioPoolIdleBytes(), 0, 'unused for a whole period: dropped');
  } finally {
    mock.timers.reset();
  }
});

test('ioPoolClear() stops the timer armed before it: a buffer released afterwards is kept for its own full period', () => {
  mock.timers.enable({ apis: ['setTimeout'] });
  try {
    releaseIoBuffer(ioBuffer(MiB)); // timer armed for 1 × IDLE
    mock.timers.tick(1);
    ioPoolClear();
    mock.timers.tick(1);
    releaseIoBuffer(ioBuffer(MiB)); // a new timer for 1 × IDLE from now
    mock.timers.tick(IO_POOL_IDLE_MS - 1); // past the old timer's time
    assert.equal(ioPoolIdleBytes(), MiB, 'the cleared timer did not fire');
    mock.timers.tick(1);
    assert.equal(ioPoolIdleBytes(), 0);
  } finally {
    mock.timers.reset();
  }
});
