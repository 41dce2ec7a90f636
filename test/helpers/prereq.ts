/**
 * Prerequisite checks for tests. On a user's machine a missing prerequisite (not root, no QEMU,
 * no nbd-client…) skips the test with the reason; under CI (`CI=true`) it fails the test, so a
 * broken CI setup can never pass by skipping.
 */
import { execFileSync } from 'node:child_process';
import type { TestContext } from 'node:test';

/** True when running under CI, where every prerequisite must be present. */
export const inCI = process.env.CI === 'true';

/** True when `cmd` is on PATH. */
export function haveCommand(cmd: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** True when the process runs as root. */
export function isRoot(): boolean {
  return typeof process.getuid === 'function' && process.getuid() === 0;
}

/**
 * Skip the test (or fail it under CI) unless `ok`. Returns `ok`, so tests write
 * `if (!need(t, haveCommand('qemu-io'), 'qemu-io missing: run scripts/setup.sh')) return;`
 */
export function need(t: TestContext, ok: boolean, reason: string): boolean {
  if (ok) return true;
  if (inCI) throw new Error(`prerequisite missing under CI: ${reason}`);
  t.skip(reason);
  return false;
}

/** `need` for a list of commands. */
export function needCommands(t: TestContext, cmds: readonly string[]): boolean {
  const missing = cmds.filter((c) => !haveCommand(c));
  return need(t, missing.length === 0, `missing ${missing.join(', ')}: run 'bash scripts/setup.sh' as root`);
}
