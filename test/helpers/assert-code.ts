/**
 * The one way tests assert an error: it must be an {@link NvmfNbdError} (not just any object
 * with a `code` field) and carry exactly the expected stable code. Both helpers return the error
 * so a test can check more (errno, status, message) on the same object.
 */
import assert from 'node:assert/strict';
import { inspect } from 'node:util';
import { NvmfNbdError, type ErrorCodeValue } from '../../src/errors';

function check(err: unknown, code: ErrorCodeValue, message: string | undefined): NvmfNbdError {
  const where = message === undefined ? '' : `${message}: `;
  if (!(err instanceof NvmfNbdError)) {
    assert.fail(`${where}expected NvmfNbdError ${code}, got ${inspect(err, { depth: 1 })}`);
  }
  assert.equal(err.code, code, `${where}expected ${code}, got ${err.code} (${err.message})`);
  return err;
}

/** Calls `fn` and asserts it throws an {@link NvmfNbdError} with `code`; returns the error. */
export function throwsCode(fn: () => unknown, code: ErrorCodeValue, message?: string): NvmfNbdError {
  let result: unknown;
  try {
    result = fn();
  } catch (err) {
    return check(err, code, message);
  }
  if (result instanceof Promise) {
    // A promise means the caller wanted rejectsCode; fail loudly instead of passing vacuously.
    result.catch(() => undefined);
    assert.fail(`${message ?? ''} throwsCode got a promise; use rejectsCode`.trim());
  }
  assert.fail(`${message === undefined ? '' : `${message}: `}expected ${code}, nothing was thrown`);
}

/**
 * Awaits `promise` (or the promise `fn` returns; a synchronous throw from `fn` counts too) and
 * asserts it rejects with an {@link NvmfNbdError} carrying `code`; returns the error.
 */
export async function rejectsCode(
  promise: Promise<unknown> | (() => Promise<unknown>),
  code: ErrorCodeValue,
  message?: string,
): Promise<NvmfNbdError> {
  try {
    await (typeof promise === 'function' ? promise() : promise);
  } catch (err) {
    return check(err, code, message);
  }
  assert.fail(`${message === undefined ? '' : `${message}: `}expected ${code}, the promise resolved`);
}
