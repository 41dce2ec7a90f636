/**
 * Waiting without the wall clock (issue 15 item 4). Tests that need time to pass use
 * `t.mock.timers` (node:test) and advance it themselves; these helpers wait for the real I/O in
 * between (sockets still run on the real event loop) by condition, with a generous real-time
 * limit that only turns a hang into a failure — never an assertion on how long something took.
 *
 * The real `setTimeout` is captured when this module loads, before any test mocks the global.
 */
import type { TestContext } from 'node:test';

const realSetTimeout = globalThis.setTimeout;
const realClearTimeout = globalThis.clearTimeout;

/** A few turns of the real event loop (setImmediate is never mocked here): lets I/O callbacks and promise chains run. */
export async function turns(n = 5): Promise<void> {
  for (let i = 0; i < n; i++) await new Promise<void>((r) => setImmediate(r));
}

/**
 * Resolves once `cond()` is true, checking every few real milliseconds; rejects after `limitMs`
 * real milliseconds with `what` (a hang guard, generous on purpose: the machine is loaded).
 */
export async function until(cond: () => boolean, what: string, limitMs = 20_000): Promise<void> {
  let expired = false;
  const guard = realSetTimeout(() => { expired = true; }, limitMs);
  try {
    while (!cond()) {
      if (expired) throw new Error(`not reached within ${limitMs} ms: ${what}`);
      await new Promise<void>((r) => realSetTimeout(r, 2));
    }
  } finally {
    realClearTimeout(guard);
  }
}

/** The settled state of a promise, tracked without an unhandled rejection. */
export function track<T>(p: Promise<T>): { readonly done: boolean; readonly promise: Promise<T> } {
  const s = { done: false, promise: p };
  p.then(() => { s.done = true; }, () => { s.done = true; });
  return s;
}

/**
 * Advance the mocked timers by `stepMs` at a time (real I/O runs between steps) until `cond()`
 * holds; fails after `maxSteps`. For a mocked reconnect loop: each attempt's sleep is a mocked
 * timer, its connect real I/O.
 */
export async function tickUntil(t: TestContext, cond: () => boolean, what: string, stepMs = 50, maxSteps = 2000): Promise<void> {
  for (let i = 0; !cond(); i++) {
    if (i >= maxSteps) throw new Error(`not reached after ${maxSteps} steps of ${stepMs} mocked ms: ${what}`);
    t.mock.timers.tick(stepMs);
    await new Promise<void>((r) => realSetTimeout(r, 2));
  }
}

/** A real-time sleep for pacing a loop (never for proving that something did not happen). */
export function realSleep(ms: number): Promise<void> {
  return new Promise((r) => realSetTimeout(r, ms));
}
