/**
 * The parameters one config entry carries, under libnvme's JSON key names (config.json
 * `ports[]` keys; discovery.conf flags are mapped onto them), and the typed error every config
 * parser raises. Pure: no I/O.
 */
import { ErrorCode, NvmfNbdError } from '../errors';
import type { ErrorCodeValue } from '../errors';

/** A config error: a stable `CFG_ERR_*` code plus where (`FILE:LINE` or `FILE:$.json.path`). */
export class ConfigError extends NvmfNbdError {
  /** `discovery.conf:3` or `config.json:$[0].subsystems[1].ports[0].trsvcid`. */
  readonly where: string;

  constructor(code: ErrorCodeValue, where: string, message: string) {
    super(code, `${where}: ${message}`);
    this.name = 'ConfigError';
    this.where = where;
  }
}

/** Largest config file accepted (bytes); a bigger one is `CFG_ERR_TOO_LARGE` before parsing. */
export const MAX_CONFIG_BYTES = 1 << 20;
/** Most entries (discovery.conf lines or config.json ports) accepted in one file. */
export const MAX_CONFIG_ENTRIES = 1024;

/** How a parameter's value is checked. */
interface ParamSpec {
  readonly type: 'string' | 'int' | 'bool';
  readonly min?: number;
  readonly max?: number;
  /** Never echoed in errors, list output or dumps. */
  readonly secret?: boolean;
}

/** Every parameter a port (or discovery.conf line) may carry, by libnvme key name. */
export const PARAM_SPECS = {
  transport: { type: 'string' },
  traddr: { type: 'string' },
  trsvcid: { type: 'int', min: 1, max: 65535 },
  nqn: { type: 'string' },
  hostnqn: { type: 'string' },
  hostid: { type: 'string' },
  host_traddr: { type: 'string' },
  host_iface: { type: 'string' },
  nr_io_queues: { type: 'int', min: 0, max: 65535 },
  nr_write_queues: { type: 'int', min: 0, max: 65535 },
  nr_poll_queues: { type: 'int', min: 0, max: 65535 },
  queue_size: { type: 'int', min: 0, max: 65536 },
  keep_alive_tmo: { type: 'int', min: 0, max: 4294967 },
  reconnect_delay: { type: 'int', min: 0, max: 86400 },
  ctrl_loss_tmo: { type: 'int', min: -1, max: 31536000 },
  fast_io_fail_tmo: { type: 'int', min: -1, max: 31536000 },
  tos: { type: 'int', min: -1, max: 255 },
  duplicate_connect: { type: 'bool' },
  disable_sqflow: { type: 'bool' },
  hdr_digest: { type: 'bool' },
  data_digest: { type: 'bool' },
  tls: { type: 'bool' },
  concat: { type: 'bool' },
  persistent: { type: 'bool' },
  discovery: { type: 'bool' },
  dhchap_key: { type: 'string', secret: true },
  dhchap_ctrl_key: { type: 'string', secret: true },
  keyring: { type: 'string' },
  tls_key: { type: 'string', secret: true },
  tls_key_identity: { type: 'string' },
} as const satisfies Record<string, ParamSpec>;

export type ParamName = keyof typeof PARAM_SPECS;

/** One entry's parameters (absent = not given). */
export type ConfigParams = { -readonly [K in ParamName]?: (typeof PARAM_SPECS)[K]['type'] extends 'int' ? number : (typeof PARAM_SPECS)[K]['type'] extends 'bool' ? boolean : string };

/** What an entry asks for: a discovery controller (discover, then connect its log) or one I/O controller. */
export type EntryKind = 'discovery' | 'io';

/** One parsed entry. */
export interface ConfigEntry {
  /** Where it was read (file:line or file:json-path), for messages. */
  readonly where: string;
  readonly kind: EntryKind;
  readonly params: ConfigParams;
}

/** The well-known discovery subsystem NQN. */
export const DISCOVERY_SUBNQN = 'nqn.2014-08.org.nvmexpress.discovery';

/** True when `name` is a parameter name. */
export function isParamName(name: string): name is ParamName {
  return Object.prototype.hasOwnProperty.call(PARAM_SPECS, name);
}

/** True when the parameter holds a secret (never shown). */
export function isSecretParam(name: ParamName): boolean {
  return (PARAM_SPECS[name] as ParamSpec).secret === true;
}

/**
 * Check and convert one value (text from discovery.conf, or a JSON value) for parameter `name`.
 * Ints accept JSON numbers or decimal text (libnvme writes trsvcid as a string); bools accept
 * JSON booleans only (a flag without value in discovery.conf is passed as `true`).
 * @throws ConfigError CFG_ERR_BAD_VALUE
 */
export function checkParam(name: ParamName, value: unknown, where: string): string | number | boolean {
  const spec = PARAM_SPECS[name] as ParamSpec;
  const show = spec.secret === true ? '(secret)' : JSON.stringify(value)?.slice(0, 80) ?? String(value);
  if (spec.type === 'bool') {
    if (typeof value !== 'boolean') throw new ConfigError(ErrorCode.CFG_BAD_VALUE, where, `${name} must be true or false, not ${show}`);
    return value;
  }
  if (spec.type === 'int') {
    let n: number;
    if (typeof value === 'number') n = value;
    else if (typeof value === 'string' && /^-?\d{1,10}$/.test(value)) n = Number(value);
    else throw new ConfigError(ErrorCode.CFG_BAD_VALUE, where, `${name} must be an integer, not ${show}`);
    if (!Number.isSafeInteger(n) || (spec.min !== undefined && n < spec.min) || (spec.max !== undefined && n > spec.max)) {
      throw new ConfigError(ErrorCode.CFG_BAD_VALUE, where, `${name} ${show} is out of range ${String(spec.min)}..${String(spec.max)}`);
    }
    return n;
  }
  if (typeof value !== 'string') throw new ConfigError(ErrorCode.CFG_BAD_VALUE, where, `${name} must be a string, not ${show}`);
  // NQNs and addresses are short printable text; keys are too. Control bytes never belong here.
  if (value.length === 0 || value.length > 1024 || /[\u0000-\u001f\u007f]/.test(value)) {
    throw new ConfigError(ErrorCode.CFG_BAD_VALUE, where, `${name} must be 1..1024 printable characters`);
  }
  return value;
}

/** Set `params[name]` after checking; a repeated parameter is an error (which one would win?). */
export function setParam(params: ConfigParams, name: ParamName, value: unknown, where: string): void {
  if (params[name] !== undefined) throw new ConfigError(ErrorCode.CFG_BAD_VALUE, where, `${name} given twice`);
  (params as Record<string, unknown>)[name] = checkParam(name, value, where);
}

/** The entry's kind from its parameters, and the checks every entry must pass. */
export function finishEntry(where: string, params: ConfigParams, forceDiscovery: boolean): ConfigEntry {
  if (params.transport === undefined) throw new ConfigError(ErrorCode.CFG_MISSING_KEY, where, 'transport is required');
  if (params.traddr === undefined) throw new ConfigError(ErrorCode.CFG_MISSING_KEY, where, 'traddr is required');
  const discovery = forceDiscovery || params.discovery === true || params.nqn === undefined || params.nqn === DISCOVERY_SUBNQN;
  return { where, kind: discovery ? 'discovery' : 'io', params };
}

/** Refuse oversized input before parsing. */
export function checkSize(text: string, file: string): void {
  if (text.length > MAX_CONFIG_BYTES) throw new ConfigError(ErrorCode.CFG_TOO_LARGE, file, `larger than ${MAX_CONFIG_BYTES} bytes`);
}
