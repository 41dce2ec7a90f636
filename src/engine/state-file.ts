/**
 * The daemon's state file (`<stateDir>/state.json`): what is connected, so a restarted daemon
 * reconnects the same controllers under the same names and serves the same NBD endpoints (a
 * persist-mode nbd-client then reconnects by itself).
 *
 * Written atomically (temp file in the same directory, fsync, rename): a crash at any moment
 * leaves either the old or the new file, never a torn one. Secrets are never written.
 */
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { ErrorCode, NvmfNbdError } from '../errors';

/** Current format version. */
export const STATE_VERSION = 1;

/** Connect arguments whose values must never reach the disk. */
// (`keyring` is the key store's path and `tls-key-identity` a key's name: references, kept.)
export const SECRET_ARGS: ReadonlySet<string> = new Set(['dhchap-secret', 'dhchap-ctrl-secret', 'tls-key', 'psk']);

/** A device the daemon attached for an export. */
export interface StateDevice {
  readonly export: string;
  readonly device: string;
}

/** One path (controller) of a multipath subsystem. */
export interface StatePath {
  /** `nvme1`, … — the path's controller name, kept across restarts. */
  readonly name: string;
  /** The connect options of that path (secrets removed). */
  readonly args: Record<string, unknown>;
}

/**
 * One subsystem of the state file (its exports are `<name>n<nsid>`). Before multipath (issue 12)
 * this was one controller; it still is when `paths` is absent: one path named `name` with `args`.
 */
export interface StateController {
  /** `nvme0`, … — kept across restarts. */
  readonly name: string;
  /** The connect verb's parsed options (secrets removed) of the connect that made it: session-level settings (nbd, attach, iopolicy…). */
  readonly args: Record<string, unknown>;
  readonly devices: StateDevice[];
  /** Its paths, in the order they were added (absent: the one path `{ name, args }`). */
  readonly paths?: StatePath[];
}

/** The whole file. */
export interface DaemonState {
  readonly version: number;
  readonly controllers: StateController[];
}

/** An empty state. */
export function emptyState(): DaemonState {
  return { version: STATE_VERSION, controllers: [] };
}

/** Secret arguments that may name a reference (`file:PATH`) instead of holding the secret. */
const REFERENCE_ARGS: ReadonlySet<string> = new Set(['dhchap-secret', 'dhchap-ctrl-secret']);

/**
 * `args` without secret values. A DH-HMAC-CHAP secret given as a reference (`file:PATH`) is
 * kept: it names where the key is, not the key, so a restarted daemon can read it again; an
 * inline secret is dropped (after a restart that controller connects without it and fails
 * authentication until it is connected again with the secret).
 */
export function withoutSecrets(args: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(args)) {
    if (v === undefined) continue;
    if (SECRET_ARGS.has(k) && !(REFERENCE_ARGS.has(k) && typeof v === 'string' && v.startsWith('file:'))) continue;
    out[k] = v;
  }
  return out;
}

function invalid(file: string, why: string): NvmfNbdError {
  return new NvmfNbdError(ErrorCode.STATE_FILE_INVALID, `state file ${file}: ${why}`);
}

/**
 * Validate a parsed state document.
 * @throws CFG_ERR_STATE_FILE_INVALID
 */
export function validateState(v: unknown, file = 'state.json'): DaemonState {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw invalid(file, 'not an object');
  const o = v as Record<string, unknown>;
  if (o.version !== STATE_VERSION) throw invalid(file, `unsupported version ${String(o.version)}`);
  if (!Array.isArray(o.controllers)) throw invalid(file, 'controllers is not a list');
  const names = new Set<string>();
  const pathNames = new Set<string>();
  const controllers = o.controllers.map((c: unknown, i): StateController => {
    if (typeof c !== 'object' || c === null) throw invalid(file, `controller ${i} is not an object`);
    const e = c as Record<string, unknown>;
    if (typeof e.name !== 'string' || !/^nvme\d+$/.test(e.name)) throw invalid(file, `controller ${i} has a bad name`);
    if (names.has(e.name)) throw invalid(file, `controller name ${e.name} appears twice`);
    names.add(e.name);
    if (typeof e.args !== 'object' || e.args === null || Array.isArray(e.args)) throw invalid(file, `controller ${e.name} has no args`);
    const devices = Array.isArray(e.devices) ? e.devices : [];
    for (const d of devices as unknown[]) {
      const dd = d as Record<string, unknown> | null;
      if (dd === null || typeof dd !== 'object' || typeof dd.export !== 'string' || typeof dd.device !== 'string' || !/^\/dev\/nbd\d+$/.test(dd.device)) {
        throw invalid(file, `controller ${e.name} has a bad device entry`);
      }
    }
    if (e.paths === undefined) return { name: e.name, args: e.args as Record<string, unknown>, devices: devices as StateDevice[] };
    if (!Array.isArray(e.paths) || e.paths.length === 0) throw invalid(file, `controller ${e.name} has a bad paths list`);
    const paths = (e.paths as unknown[]).map((x, j): StatePath => {
      const pp = x as Record<string, unknown> | null;
      if (pp === null || typeof pp !== 'object' || typeof pp.name !== 'string' || !/^nvme\d+$/.test(pp.name)) throw invalid(file, `controller ${String(e.name)} path ${j} has a bad name`);
      if (typeof pp.args !== 'object' || pp.args === null || Array.isArray(pp.args)) throw invalid(file, `controller ${String(e.name)} path ${pp.name} has no args`);
      if (pathNames.has(pp.name)) throw invalid(file, `path name ${pp.name} appears twice`);
      pathNames.add(pp.name);
      return { name: pp.name, args: pp.args as Record<string, unknown> };
    });
    return { name: e.name, args: e.args as Record<string, unknown>, devices: devices as StateDevice[], paths };
  });
  // A subsystem's own name is the name of its first path, or of a path since removed: it may not
  // be another subsystem's path.
  for (const c of controllers) {
    for (const other of controllers) {
      if (other !== c && other.paths?.some((x) => x.name === c.name) === true) throw invalid(file, `${c.name} is both a subsystem and a path of ${other.name}`);
    }
  }
  return { version: STATE_VERSION, controllers };
}

/**
 * Read the state file; a missing file is an empty state.
 * @throws CFG_ERR_STATE_FILE_INVALID when the file is not valid JSON or not a state document
 */
export async function readState(file: string): Promise<DaemonState> {
  let text: string;
  try {
    text = await fsp.readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return emptyState();
    throw invalid(file, (err as Error).message);
  }
  let v: unknown;
  try {
    v = JSON.parse(text) as unknown;
  } catch (err) {
    throw invalid(file, `not JSON: ${(err as Error).message}`);
  }
  return validateState(v, file);
}

/**
 * Write the state file atomically (mode 0600): temp file + fsync + rename + fsync of the
 * directory. Secret arguments are dropped here whatever the caller passed.
 */
export async function writeState(file: string, state: DaemonState): Promise<void> {
  const clean: DaemonState = {
    version: STATE_VERSION,
    controllers: state.controllers.map((c) => ({
      name: c.name, args: withoutSecrets(c.args), devices: c.devices.map((d) => ({ export: d.export, device: d.device })),
      ...(c.paths !== undefined ? { paths: c.paths.map((x) => ({ name: x.name, args: withoutSecrets(x.args) })) } : {}),
    })),
  };
  const dir = path.dirname(file);
  await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
  const tmp = path.join(dir, `.${path.basename(file)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  const fh = await fsp.open(tmp, 'wx', 0o600);
  try {
    await fh.writeFile(`${JSON.stringify(clean, null, 2)}\n`, 'utf8');
    await fh.sync();
  } finally {
    await fh.close();
  }
  try {
    await fsp.rename(tmp, file);
  } catch (err) {
    await fsp.unlink(tmp).catch(() => undefined);
    throw err;
  }
  // Make the rename itself durable; best effort (some filesystems refuse fsync on a directory).
  try {
    const d = await fsp.open(dir, 'r');
    try {
      await d.sync();
    } finally {
      await d.close();
    }
  } catch {
    // ignore
  }
}

/** The paths of a state entry: its `paths`, or the one path it was before multipath. */
export function statePaths(c: StateController): StatePath[] {
  return c.paths ?? [{ name: c.name, args: c.args }];
}

/** Lowest free controller name `nvmeN` not in `used`. */
export function allocateName(used: Iterable<string>): string {
  const taken = new Set(used);
  for (let i = 0; ; i++) {
    const n = `nvme${i}`;
    if (!taken.has(n)) return n;
  }
}
