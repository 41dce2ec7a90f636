/**
 * udev-less stable names (containers, minimal hosts): the daemon keeps
 * `$NVMF_NBD_STATE_DIR/by-id/nvmf-nbd-<id>` → `/dev/nbdX` and `nvmf-nbd-<id>-part<N>` →
 * `/dev/nbdXp<N>`, the same names the shipped udev rule makes under /dev/disk/by-id. `<id>` is
 * the namespace's UUID, else NGUID, else EUI-64 ({@link stableNamespaceId}). Links are
 * replaced atomically (symlink + rename) and stale `nvmf-nbd-*` entries removed; nothing else in
 * the directory is touched.
 */
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { spawn } from 'node:child_process';

/** One attached namespace: its stable id and its device (`/dev/nbdX`). */
export interface ByIdWant { readonly id: string; readonly device: string }

const PREFIX = 'nvmf-nbd-';

/**
 * The links wanted (name → target), given each device's partition numbers. Pure. An id that
 * two devices claim (two paths of one namespace attached twice) names the first one listed.
 */
export function planByIdLinks(wants: readonly ByIdWant[], partitions: ReadonlyMap<string, readonly number[]>): Map<string, string> {
  const out = new Map<string, string>();
  for (const w of wants) {
    if (!/^[0-9a-f-]{16,36}$/.test(w.id) || !/^\/dev\/nbd\d+$/.test(w.device)) continue;
    const name = `${PREFIX}${w.id}`;
    if (out.has(name)) continue;
    out.set(name, w.device);
    for (const n of partitions.get(w.device) ?? []) out.set(`${name}-part${n}`, `${w.device}p${n}`);
  }
  return out;
}

function retrigger(device: string, sysfsRoot: string): void {
  const child = spawn('udevadm', ['trigger', '--action=change', path.join(sysfsRoot, 'block', path.basename(device))], { stdio: 'ignore' });
  child.on('error', () => undefined);
}

/** Partition numbers of /dev/nbdX from sysfs (`/sys/block/nbdX/nbdXp<N>`). */
async function partitionsOf(device: string, sysfsRoot: string): Promise<number[]> {
  const base = path.basename(device);
  try {
    const names = await fsp.readdir(path.join(sysfsRoot, 'block', base));
    return names.map((n) => new RegExp(`^${base}p(\\d+)$`).exec(n)?.[1]).filter((x): x is string => x !== undefined).map(Number).sort((a, b) => a - b);
  } catch {
    return [];
  }
}

/**
 * Make `dir` hold exactly the wanted `nvmf-nbd-*` links. Resolves with the link names.
 * @param o.sysfsRoot default /sys (tests use a fake tree)
 */
export async function syncByIdLinks(dir: string, wants: readonly ByIdWant[], o: { sysfsRoot?: string; udevTrigger?: boolean } = {}): Promise<string[]> {
  const parts = new Map<string, number[]>();
  for (const w of wants) parts.set(w.device, await partitionsOf(w.device, o.sysfsRoot ?? '/sys'));
  const plan = planByIdLinks(wants, parts);
  await fsp.mkdir(dir, { recursive: true, mode: 0o755 });
  for (const name of await fsp.readdir(dir)) {
    if (!name.startsWith(PREFIX) || plan.has(name)) continue;
    await fsp.unlink(path.join(dir, name)).catch(() => undefined);
  }
  const changed: string[] = [];
  for (const [name, target] of plan) {
    const p = path.join(dir, name);
    const cur = await fsp.readlink(p).catch(() => undefined);
    if (cur === target) continue;
    if (!name.includes('-part')) changed.push(target);
    const tmp = path.join(dir, `.${name}.${process.pid}.tmp`);
    await fsp.unlink(tmp).catch(() => undefined);
    await fsp.symlink(target, tmp);
    await fsp.rename(tmp, p);
  }
  // With an nbd-client too old for -i, the udev helper names devices from these links: let udev
  // look again now that they exist (no udevadm, e.g. in a container: nothing to do).
  if (o.udevTrigger !== false) for (const d of changed) retrigger(d, o.sysfsRoot ?? '/sys');
  return [...plan.keys()].sort();
}
