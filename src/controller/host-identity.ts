/**
 * Host NQN and Host ID, as nvme-cli/libnvme find them:
 *
 * 1. `/etc/nvme/hostnqn` and `/etc/nvme/hostid` when present (the operator's choice wins);
 * 2. values this project generated and kept in the state directory before (older releases made
 *    a random one; honouring it keeps a host's identity, and the target ACLs keyed on it);
 * 3. otherwise **derived**, never random, so one machine keeps its identity across reinstalls
 *    and two containers of one image on two machines differ:
 *    - the DMI product UUID (`/sys/class/dmi/id/product_uuid`) when it exists and is not a known
 *      firmware placeholder (all zeros, all ones, `03000200-0400-0500-0006-000700080009`, …);
 *    - else a UUID from an HMAC-SHA256 of `/etc/machine-id`, keyed like systemd's
 *      `sd_id128_get_machine_app_specific()` with nvme-cli's application id, so the value is
 *      the one nvme-cli built with systemd would print, and the machine id itself never leaves
 *      the machine;
 *    - only when neither exists: a random UUID, kept in the state directory (said in `source`).
 *
 * The host ID is the UUID of a `uuid:`-form host NQN, as nvme-cli does.
 *
 * Every path is injectable ({@link IdentityPaths}; env `NVMF_NBD_NVME_DIR`, `NVMF_NBD_DMI_UUID`,
 * `NVMF_NBD_MACHINE_ID` for the CLI) so the rules are testable with fake files.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createHmac, randomUUID } from 'node:crypto';
import { ErrorCode, NvmfNbdError } from '../errors';

/** The host's identity towards NVMe-oF targets. */
export interface HostIdentity {
  hostnqn: string;
  /** UUID text (8-4-4-4-12). */
  hostid: string;
  /** Where each value came from (a file path, `dmi:FILE`, `machine-id:FILE` or `random:FILE`). */
  source: { hostnqn: string; hostid: string };
}

/** Where the identity is looked for (defaults: the real system files). */
export interface IdentityPaths {
  /** nvme-cli's directory (default `$NVMF_NBD_NVME_DIR` or /etc/nvme). */
  etcDir?: string;
  /**
   * Where earlier generated values are kept: the engine's state directory (`config/state-dir.ts`
   * `stateDir()` for the CLI). Needed to load an identity, not to derive one.
   */
  stateDir?: string;
  /** DMI product UUID file (default `$NVMF_NBD_DMI_UUID` or /sys/class/dmi/id/product_uuid). */
  dmiUuidFile?: string;
  /** machine-id file (default `$NVMF_NBD_MACHINE_ID` or /etc/machine-id). */
  machineIdFile?: string;
}

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
/** The NQN prefix of a UUID-based host NQN (NVMe base spec §4.5). */
export const NQN_UUID_PREFIX = 'nqn.2014-08.org.nvmexpress:uuid:';

/**
 * nvme-cli's systemd application id for the host NQN (`NVME_HOSTNQN_ID` in nvme-cli/libnvme):
 * c7f46181-12be-4932-8c83-106f9dddd86b.
 */
const NVME_HOSTNQN_APP_ID = Buffer.from('c7f4618112be49328c83106f9dddd86b', 'hex');

/**
 * DMI product UUIDs that firmware ships unset or as a constant for every board: they name no
 * machine, so deriving from them would give a whole fleet one identity.
 */
export const DMI_PLACEHOLDER_UUIDS: ReadonlySet<string> = new Set([
  '00000000-0000-0000-0000-000000000000',
  'ffffffff-ffff-ffff-ffff-ffffffffffff',
  '03000200-0400-0500-0006-000700080009',
  '00020003-0004-0005-0006-000700080009',
  '12345678-1234-5678-90ab-cddeefaabbcc',
  '4c4c4544-0000-2010-8020-80c04f202020',
]);

/** nvme-cli's directory: `$NVMF_NBD_NVME_DIR` (tests, containers), else /etc/nvme. */
export function nvmeEtcDir(env: NodeJS.ProcessEnv = process.env): string {
  const v = env.NVMF_NBD_NVME_DIR;
  return v !== undefined && v !== '' ? v : '/etc/nvme';
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

function resolvePaths(o: IdentityPaths): Required<Omit<IdentityPaths, 'stateDir'>> {
  const env = process.env;
  return {
    etcDir: o.etcDir ?? nvmeEtcDir(env),
    dmiUuidFile: o.dmiUuidFile ?? (env.NVMF_NBD_DMI_UUID !== undefined && env.NVMF_NBD_DMI_UUID !== '' ? env.NVMF_NBD_DMI_UUID : '/sys/class/dmi/id/product_uuid'),
    machineIdFile: o.machineIdFile ?? (env.NVMF_NBD_MACHINE_ID !== undefined && env.NVMF_NBD_MACHINE_ID !== '' ? env.NVMF_NBD_MACHINE_ID : '/etc/machine-id'),
  };
}

/**
 * A valid, non-placeholder DMI product UUID (lower case), or undefined. Pure: the file's text in.
 */
export function dmiUuidFrom(text: string | undefined): string | undefined {
  if (text === undefined) return undefined;
  const u = text.trim().toLowerCase();
  if (!UUID_RE.test(u) || DMI_PLACEHOLDER_UUIDS.has(u)) return undefined;
  return u;
}

/**
 * The application-specific UUID of a machine id (32 hex digits), computed as systemd's
 * `sd_id128_get_machine_app_specific()`: HMAC-SHA256 keyed with the 16-byte machine id over the
 * 16-byte application id, first 16 bytes, marked as a version 4 / variant 1 UUID. Pure.
 * @returns undefined when `text` is not a machine id
 */
export function machineIdUuid(text: string | undefined, appId: Buffer = NVME_HOSTNQN_APP_ID): string | undefined {
  if (text === undefined) return undefined;
  const hex = text.trim().toLowerCase();
  if (!/^[0-9a-f]{32}$/.test(hex) || /^0+$/.test(hex)) return undefined;
  const h = createHmac('sha256', Buffer.from(hex, 'hex')).update(appId).digest().subarray(0, 16);
  h[6] = ((h[6] as number) & 0x0f) | 0x40;
  h[8] = ((h[8] as number) & 0x3f) | 0x80;
  const s = h.toString('hex');
  return `${s.slice(0, 8)}-${s.slice(8, 12)}-${s.slice(12, 16)}-${s.slice(16, 20)}-${s.slice(20)}`;
}

/**
 * The derived host NQN of this machine (what `gen-hostnqn` prints): from the DMI product UUID,
 * else from the machine id; undefined when the machine offers neither.
 */
export function deriveHostNqn(o: IdentityPaths = {}): { hostnqn: string; uuid: string; source: string } | undefined {
  const p = resolvePaths(o);
  const dmi = dmiUuidFrom(readTrimmed(p.dmiUuidFile));
  if (dmi !== undefined) return { hostnqn: `${NQN_UUID_PREFIX}${dmi}`, uuid: dmi, source: `dmi:${p.dmiUuidFile}` };
  const mid = machineIdUuid(readTrimmed(p.machineIdFile));
  if (mid !== undefined) return { hostnqn: `${NQN_UUID_PREFIX}${mid}`, uuid: mid, source: `machine-id:${p.machineIdFile}` };
  return undefined;
}

/**
 * Load the host identity by the rules above. Derived values are not written anywhere (they
 * are recomputed identically); only the random last resort is persisted.
 * @throws CFG_ERR_INVALID for a host ID that is not a UUID, or when a random identity cannot be kept
 */
export function loadHostIdentity(o: IdentityPaths & { stateDir: string }): HostIdentity {
  const p = { ...resolvePaths(o), stateDir: o.stateDir };
  const etcNqn = path.join(p.etcDir, 'hostnqn');
  const etcId = path.join(p.etcDir, 'hostid');
  const keptNqn = path.join(p.stateDir, 'hostnqn');
  const keptId = path.join(p.stateDir, 'hostid');
  let hostnqn = readTrimmed(etcNqn);
  let nqnSource = etcNqn;
  if (hostnqn === undefined) {
    hostnqn = readTrimmed(keptNqn);
    nqnSource = keptNqn;
  }
  let hostid = readTrimmed(etcId);
  let idSource = etcId;
  if (hostid === undefined) {
    hostid = readTrimmed(keptId);
    idSource = keptId;
  }
  if (hostnqn === undefined) {
    const d = deriveHostNqn(p);
    if (d !== undefined) {
      hostnqn = d.hostnqn;
      nqnSource = d.source;
    }
  }
  if (hostid === undefined) {
    // The UUID of a uuid-form host NQN, as nvme-cli does, so both name the same host.
    const fromNqn = hostnqn?.startsWith(NQN_UUID_PREFIX) === true ? hostnqn.slice(NQN_UUID_PREFIX.length) : undefined;
    if (fromNqn !== undefined && UUID_RE.test(fromNqn)) {
      hostid = fromNqn;
      idSource = `${nqnSource} (uuid of the host NQN)`;
    } else if (hostnqn === undefined) {
      // Neither DMI nor machine-id: a random identity, kept so it at least survives restarts.
      hostid = randomUUID();
      idSource = `random:${keptId}`;
      persistOrExplain(keptId, hostid);
    } else {
      // A non-uuid host NQN from a file: derive the ID from the machine, else random and kept.
      const d = deriveHostNqn(p);
      hostid = d?.uuid ?? randomUUID();
      idSource = d?.source ?? `random:${keptId}`;
      if (d === undefined) persistOrExplain(keptId, hostid);
    }
  }
  if (hostnqn === undefined) {
    hostnqn = `${NQN_UUID_PREFIX}${hostid}`;
    nqnSource = `random:${keptNqn}`;
    persistOrExplain(keptNqn, hostnqn);
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
export async function resolveHostIdentity(o: IdentityPaths & { stateDir: string }): Promise<HostIdentity> {
  return loadHostIdentity(o);
}
