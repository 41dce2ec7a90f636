/**
 * Host NQN and Host ID, as nvme-cli finds them: `/etc/nvme/hostnqn` and `/etc/nvme/hostid` when
 * present; otherwise generated once (`nqn.2014-08.org.nvmexpress:uuid:<uuid>`) and kept in the
 * state directory so every run presents the same identity to targets (host ACLs depend on it).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { randomUUID } from 'node:crypto';
import { ErrorCode, NvmfNbdError } from '../errors';

/** The host's identity towards NVMe-oF targets. */
export interface HostIdentity {
  hostnqn: string;
  /** UUID text (8-4-4-4-12). */
  hostid: string;
  /** Where each value came from, for `--help`/diagnostics. */
  source: { hostnqn: string; hostid: string };
}

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const NQN_UUID_PREFIX = 'nqn.2014-08.org.nvmexpress:uuid:';

/**
 * The engine's state directory: `$NVMF_NBD_STATE_DIR`, else /var/lib/nvmf-nbd for root, else
 * ~/.local/state/nvmf-nbd.
 */
export function stateDir(env: NodeJS.ProcessEnv = process.env): string {
  const fromEnv = env.NVMF_NBD_STATE_DIR;
  if (fromEnv !== undefined && fromEnv !== '') return fromEnv;
  if (typeof process.getuid === 'function' && process.getuid() === 0) return '/var/lib/nvmf-nbd';
  return path.join(os.homedir(), '.local', 'state', 'nvmf-nbd');
}

function readTrimmed(file: string): string | undefined {
  try {
    const s = fs.readFileSync(file, 'utf8').trim();
    return s === '' ? undefined : s;
  } catch {
    return undefined;
  }
}

function persist(file: string, value: string): void {
  fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  // Write then rename so a concurrent reader never sees a half-written identity.
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, `${value}\n`, { mode: 0o644 });
  fs.renameSync(tmp, file);
}

/**
 * Load (or create and persist) the host identity.
 * @param o.etcDir  where nvme-cli keeps hostnqn/hostid (default /etc/nvme)
 * @param o.stateDir where generated values are kept (default {@link stateDir})
 */
export function loadHostIdentity(o: { etcDir?: string; stateDir?: string } = {}): HostIdentity {
  const etc = o.etcDir ?? '/etc/nvme';
  const state = o.stateDir ?? stateDir();
  let hostnqn = readTrimmed(path.join(etc, 'hostnqn'));
  let nqnSource = path.join(etc, 'hostnqn');
  if (hostnqn === undefined) {
    nqnSource = path.join(state, 'hostnqn');
    hostnqn = readTrimmed(nqnSource);
  }
  let hostid = readTrimmed(path.join(etc, 'hostid'));
  let idSource = path.join(etc, 'hostid');
  if (hostid === undefined) {
    idSource = path.join(state, 'hostid');
    hostid = readTrimmed(idSource);
  }
  if (hostid === undefined) {
    // Reuse the UUID of a uuid-form host NQN, as nvme-cli does, so both name the same host.
    const fromNqn = hostnqn?.startsWith(NQN_UUID_PREFIX) === true ? hostnqn.slice(NQN_UUID_PREFIX.length) : undefined;
    hostid = fromNqn !== undefined && UUID_RE.test(fromNqn) ? fromNqn : randomUUID();
    idSource = path.join(state, 'hostid');
    persistOrExplain(idSource, hostid);
  }
  if (hostnqn === undefined) {
    hostnqn = `${NQN_UUID_PREFIX}${hostid}`;
    nqnSource = path.join(state, 'hostnqn');
    persistOrExplain(nqnSource, hostnqn);
  }
  if (!UUID_RE.test(hostid)) {
    throw new NvmfNbdError(ErrorCode.CFG_INVALID, `host ID '${hostid}' in ${idSource} is not a UUID`);
  }
  return { hostnqn, hostid: hostid.toLowerCase(), source: { hostnqn: nqnSource, hostid: idSource } };
}

function persistOrExplain(file: string, value: string): void {
  try {
    persist(file, value);
  } catch (err) {
    throw new NvmfNbdError(ErrorCode.CFG_INVALID,
      `cannot keep the generated host identity in ${file}: ${(err as Error).message} (set NVMF_NBD_STATE_DIR or pass -q/-I)`, { cause: err });
  }
}

/** True when `s` looks like a UUID (the -I/--hostid format). */
export function isUuid(s: string): boolean {
  return UUID_RE.test(s);
}

/** Async form of {@link loadHostIdentity} with the default locations (used by the engine). */
export async function resolveHostIdentity(o: { etcDir?: string; stateDir?: string } = {}): Promise<HostIdentity> {
  return loadHostIdentity(o);
}
