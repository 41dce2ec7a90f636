/**
 * Is a kernel NBD device still held? A restarted daemon adopts a device that a persist-mode
 * `nbd-client` still holds instead of attaching it twice.
 */
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';

/**
 * Default device check: the kernel still has a receiver on it (`/sys/block/nbdX/pid`), or an
 * `nbd-client` process for it is alive (persist mode, between reconnects).
 */
export async function kernelDeviceInUse(device: string, sysfsRoot = '/sys', procRoot = '/proc'): Promise<boolean> {
  const name = path.basename(device);
  try {
    await fsp.access(path.join(sysfsRoot, 'block', name, 'pid'));
    return true;
  } catch {
    // not connected right now; maybe reconnecting
  }
  let pids: string[];
  try {
    pids = (await fsp.readdir(procRoot)).filter((p) => /^\d+$/.test(p));
  } catch {
    return false;
  }
  for (const pid of pids) {
    try {
      const argv = (await fsp.readFile(path.join(procRoot, pid, 'cmdline'), 'utf8')).split('\0');
      if (argv.some((a) => path.basename(a) === 'nbd-client') && argv.includes(device)) return true;
    } catch {
      // gone meanwhile
    }
  }
  return false;
}
