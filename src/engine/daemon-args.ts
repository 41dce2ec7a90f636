/**
 * The daemon's checks and reshaping of connect / discovery arguments as they arrive over the
 * control socket or from its state files (plain records, checked against the connect verb's
 * option specs). Pure: no sockets, no files.
 */
import { ErrorCode, NvmfNbdError } from '../errors';
import type { OptionSpec } from '../config/option-spec';
import { parseNbdSpec } from './session';
import type { NbdSpec } from './session';

/** `args` without absent values. */
export function withoutUndefined(args: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(args)) if (v !== undefined) out[k] = v;
  return out;
}

/** Check `args` against option specs: known names, right types, bounds. @throws CLI_ERR_USAGE */
export function checkArgs(args: Record<string, unknown>, specs: readonly OptionSpec[]): void {
  const byLong = new Map(specs.map((s) => [s.long, s]));
  for (const [k, v] of Object.entries(args)) {
    const spec = byLong.get(k);
    if (spec === undefined) throw new NvmfNbdError(ErrorCode.CLI_USAGE, `unknown connect option '${k.slice(0, 64)}'`);
    // JSON has no undefined; null would skip the check and then override a default
    // (`trsvcid: null` reaching net.connect): refused like any other bad value.
    if (v === undefined) continue;
    if (v === null) throw new NvmfNbdError(ErrorCode.CLI_USAGE, `connect option --${k}: null is not a value`);
    const values = spec.repeat === true && Array.isArray(v) ? (v as unknown[]) : [v];
    for (const x of values) {
      const ok = spec.type === 'boolean' ? typeof x === 'boolean'
        : spec.type === 'string' ? typeof x === 'string'
          : typeof x === 'number' && Number.isSafeInteger(x) && (spec.min === undefined || x >= spec.min) && (spec.max === undefined || x <= spec.max);
      if (!ok) throw new NvmfNbdError(ErrorCode.CLI_USAGE, `connect option --${k}: bad value ${JSON.stringify(x)?.slice(0, 64) ?? ''}`);
    }
  }
}

/**
 * A per-connect `nbd` spec as the daemon accepts it: `unix:DIR` or `tcp:HOST:PORT` only. `stdio`
 * would serve NBD on the daemon's own log stream and `fd:N` on whatever descriptor N is in the
 * daemon: both belong to a foreground process.
 * @throws CLI_ERR_USAGE
 */
export function parseConnectNbdSpec(s: string): NbdSpec {
  const n = parseNbdSpec(s);
  if ('unixDir' in n || 'tcp' in n) return n;
  throw new NvmfNbdError(ErrorCode.CLI_USAGE, `--nbd '${s.slice(0, 64)}': a daemon serves unix:DIR or tcp:HOST:PORT only (stdio and fd:N are for a foreground connect)`);
}

/** `args[k]` when it is a string. */
export function argString(args: Record<string, unknown>, k: string): string | undefined {
  const v = args[k];
  return typeof v === 'string' ? v : undefined;
}

/** `args[k]` (or `def`) as an integer in min..max. @throws CLI_ERR_USAGE */
export function argInt(args: Record<string, unknown>, k: string, min: number, max: number, def?: number): number {
  const v = args[k] ?? def;
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) {
    throw new NvmfNbdError(ErrorCode.CLI_USAGE, `${k}: expected an integer in ${min}..${max}`);
  }
  return v;
}

/** A plain object (not null, not an array). */
export function isRecordArg(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Connect options without the discovery-entry address overrides. */
export function withoutOverrides(a: Record<string, unknown>): Record<string, unknown> {
  const { 'override-traddr': _t, 'override-trsvcid': _s, ...rest } = a;
  return rest;
}

/** Subsystem + path of a controller's connect options (what makes two connects the same). */
export function pathKey(a: Record<string, unknown>): string {
  return JSON.stringify(['nqn', 'traddr', 'trsvcid', 'hostnqn', 'host-traddr', 'host-iface'].map((k) => a[k] ?? null));
}

/** The lowest free `discN`. */
export function allocateDiscoveryName(used: Iterable<string>): string {
  const taken = new Set(used);
  for (let i = 0; ; i++) if (!taken.has(`disc${i}`)) return `disc${i}`;
}

/** Keys of connect options that configure the discovery controller itself. */
const DISCOVERY_ARG_KEYS = new Set(['transport', 'traddr', 'trsvcid', 'nqn', 'hostnqn', 'hostid', 'hdr-digest', 'data-digest', 'host-traddr', 'host-iface', 'reconnect-delay', 'ctrl-loss-tmo', 'override-traddr', 'override-trsvcid', 'dhchap-secret', 'dhchap-ctrl-secret']);

/** A discovery entry's options → the discovery controller's and those for the subsystems it lists. */
export function splitDiscoveryArgs(args: Record<string, unknown>, specs: readonly OptionSpec[]): { dargs: Record<string, unknown>; cargs: Record<string, unknown> } {
  const known = new Set(specs.map((s) => s.long));
  const dargs: Record<string, unknown> = {};
  const cargs: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(args)) {
    if (v === undefined) continue;
    if (DISCOVERY_ARG_KEYS.has(k)) dargs[k] = v;
    if (known.has(k) && !['transport', 'traddr', 'trsvcid', 'nqn'].includes(k)) cargs[k] = v;
  }
  return { dargs, cargs };
}
