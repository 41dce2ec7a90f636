/**
 * A config entry's parameters → the connect verb's options (long names), given the options the
 * build has. A parameter whose option does not exist here (for instance `dhchap_key` before
 * DH-HMAC-CHAP support, `tls` before TLS) is refused with `CFG_ERR_UNSUPPORTED` unless its value
 * is the "off" default: never silently dropped, since several are security settings. Pure.
 */
import { ErrorCode } from '../errors';
import { ConfigError } from './params';
import type { ConfigEntry, ParamName } from './params';

/** libnvme parameter → connect option long name (undefined: no option of ours carries it). */
const OPTION_OF: Readonly<Record<ParamName, string | undefined>> = {
  transport: 'transport',
  traddr: 'traddr',
  trsvcid: 'trsvcid',
  nqn: 'nqn',
  hostnqn: 'hostnqn',
  hostid: 'hostid',
  host_traddr: 'host-traddr',
  host_iface: 'host-iface',
  nr_io_queues: 'nr-io-queues',
  nr_write_queues: undefined,
  nr_poll_queues: undefined,
  queue_size: 'queue-size',
  keep_alive_tmo: 'keep-alive-tmo',
  reconnect_delay: 'reconnect-delay',
  ctrl_loss_tmo: 'ctrl-loss-tmo',
  fast_io_fail_tmo: 'fast-io-fail-tmo',
  tos: 'tos',
  duplicate_connect: 'duplicate-connect',
  disable_sqflow: 'disable-sqflow',
  hdr_digest: 'hdr-digest',
  data_digest: 'data-digest',
  tls: 'tls',
  concat: 'concat',
  persistent: undefined,
  discovery: undefined,
  dhchap_key: 'dhchap-secret',
  dhchap_ctrl_key: 'dhchap-ctrl-secret',
  keyring: 'keyring',
  tls_key: 'tls-key',
  tls_key_identity: 'tls-key-identity',
};

/** Values that mean "not set" (libnvme's defaults), which need no option to honour. */
function isOff(name: ParamName, v: unknown): boolean {
  if (v === false) return true;
  if ((name === 'nr_write_queues' || name === 'nr_poll_queues' || name === 'nr_io_queues' || name === 'queue_size' || name === 'keep_alive_tmo' || name === 'reconnect_delay') && v === 0) return true;
  if (name === 'tos' && v === -1) return true;
  return false;
}

/**
 * The connect options for `entry` (its discovery-only keys `persistent`/`discovery` left out;
 * the caller reads them from `entry.params`). Zero-valued counts are dropped so the verb's own
 * defaults apply, as libnvme treats 0 as "default".
 * @param known the connect verb's option long names
 * @throws ConfigError CFG_ERR_UNSUPPORTED (transport not tcp; a parameter with no option here)
 */
export function entryConnectArgs(entry: ConfigEntry, known: ReadonlySet<string>): Record<string, string | number | boolean> {
  const out: Record<string, string | number | boolean> = {};
  if (entry.params.transport !== 'tcp') {
    throw new ConfigError(ErrorCode.CFG_UNSUPPORTED, `${entry.where}.transport`, `transport '${String(entry.params.transport).slice(0, 16)}' is not supported (only tcp)`);
  }
  for (const [k, v] of Object.entries(entry.params) as Array<[ParamName, string | number | boolean]>) {
    if (v === undefined || k === 'persistent' || k === 'discovery') continue;
    if (isOff(k, v)) continue;
    const opt = OPTION_OF[k];
    if (opt === undefined || !known.has(opt)) {
      throw new ConfigError(ErrorCode.CFG_UNSUPPORTED, `${entry.where}.${k}`, `'${k}' is not supported by this build${opt !== undefined ? ` (no --${opt})` : ''}; refusing rather than ignoring it`);
    }
    out[opt] = v;
  }
  return out;
}

/** The connect options → config parameters (for `--dump-config`); unknown options are skipped. */
export function connectArgsParams(args: Readonly<Record<string, unknown>>): Record<string, unknown> {
  const out: Record<string, unknown> = { transport: 'tcp' };
  for (const [param, opt] of Object.entries(OPTION_OF)) {
    if (opt === undefined) continue;
    const v = args[opt];
    if (v !== undefined && v !== null) out[param] = v;
  }
  return out;
}
