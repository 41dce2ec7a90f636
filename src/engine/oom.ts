/**
 * Keep the OOM killer away from the process that serves /dev/nbdX.
 *
 * Under memory pressure the kernel writes back dirty pages — including those of /dev/nbdX,
 * which only this process can complete. Killing it then would lose those writes and wedge the
 * device, so it asks for oom_score_adj -1000 (never kill). Only root (CAP_SYS_RESOURCE) may
 * lower the score; elsewhere this is a no-op that reports false.
 */
import { writeFileSync } from 'node:fs';

/**
 * Write -1000 to `/proc/self/oom_score_adj`, best effort.
 * @returns true when the value was written.
 */
export function protectFromOomKiller(file = '/proc/self/oom_score_adj'): boolean {
  try {
    writeFileSync(file, '-1000\n');
    return true;
  } catch {
    return false;
  }
}
