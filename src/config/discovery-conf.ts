/**
 * `/etc/nvme/discovery.conf` (nvme-cli): one discovery controller per line, written as the
 * flags `nvme discover` takes (`-t tcp -a 192.0.2.1 -s 8009 -q NQN …`); `#` starts a comment;
 * blank lines are skipped. Pure: text in, entries or a {@link ConfigError} out (line number
 * and a stable `CFG_ERR_*` code); the whole file is checked before anything is returned.
 */
import { ErrorCode } from '../errors';
import { ConfigError, MAX_CONFIG_ENTRIES, checkSize, finishEntry, setParam } from './params';
import type { ConfigEntry, ConfigParams, ParamName } from './params';

/** A flag of discovery.conf: its long and short spellings and the parameter it sets. */
interface Flag { readonly long: string; readonly short?: string; readonly param: ParamName; readonly bool?: boolean }

/** nvme-cli's discover/connect flags, mapped onto libnvme's parameter names. */
const FLAGS: readonly Flag[] = [
  { long: 'transport', short: 't', param: 'transport' },
  { long: 'traddr', short: 'a', param: 'traddr' },
  { long: 'trsvcid', short: 's', param: 'trsvcid' },
  { long: 'nqn', short: 'n', param: 'nqn' },
  { long: 'hostnqn', short: 'q', param: 'hostnqn' },
  { long: 'hostid', short: 'I', param: 'hostid' },
  { long: 'host-traddr', short: 'w', param: 'host_traddr' },
  { long: 'host-iface', short: 'f', param: 'host_iface' },
  { long: 'nr-io-queues', short: 'i', param: 'nr_io_queues' },
  { long: 'nr-write-queues', short: 'W', param: 'nr_write_queues' },
  { long: 'nr-poll-queues', short: 'P', param: 'nr_poll_queues' },
  { long: 'queue-size', short: 'Q', param: 'queue_size' },
  { long: 'keep-alive-tmo', short: 'k', param: 'keep_alive_tmo' },
  { long: 'reconnect-delay', short: 'c', param: 'reconnect_delay' },
  { long: 'ctrl-loss-tmo', short: 'l', param: 'ctrl_loss_tmo' },
  { long: 'fast_io_fail_tmo', short: 'F', param: 'fast_io_fail_tmo' },
  { long: 'fast-io-fail-tmo', param: 'fast_io_fail_tmo' },
  { long: 'tos', short: 'T', param: 'tos' },
  { long: 'duplicate-connect', short: 'D', param: 'duplicate_connect', bool: true },
  { long: 'disable-sqflow', short: 'd', param: 'disable_sqflow', bool: true },
  { long: 'hdr-digest', short: 'g', param: 'hdr_digest', bool: true },
  { long: 'data-digest', short: 'G', param: 'data_digest', bool: true },
  { long: 'persistent', short: 'p', param: 'persistent', bool: true },
  { long: 'tls', param: 'tls', bool: true },
  { long: 'concat', param: 'concat', bool: true },
  { long: 'dhchap-secret', short: 'S', param: 'dhchap_key' },
  { long: 'dhchap-ctrl-secret', short: 'C', param: 'dhchap_ctrl_key' },
  { long: 'keyring', param: 'keyring' },
  { long: 'tls-key', param: 'tls_key' },
  { long: 'tls-key-identity', param: 'tls_key_identity' },
];
const BY_LONG = new Map(FLAGS.map((f) => [f.long, f]));
const BY_SHORT = new Map(FLAGS.filter((f) => f.short !== undefined).map((f) => [f.short as string, f]));
/** Longest line accepted (characters). */
const MAX_LINE = 4096;

/** Strip a comment: `#` at the start of a word to the end of the line. */
function stripComment(line: string): string {
  const m = /(^|\s)#/.exec(line);
  return m === null ? line : line.slice(0, m.index);
}

/**
 * Parse discovery.conf text.
 * @param file name used in error locations (default `discovery.conf`)
 * @throws ConfigError CFG_ERR_TOO_LARGE, CFG_ERR_SYNTAX (not a flag, missing value, stray word),
 *   CFG_ERR_UNKNOWN_KEY (a flag nvme-cli's discover does not have), CFG_ERR_BAD_VALUE,
 *   CFG_ERR_MISSING_KEY (no -t or -a)
 */
export function parseDiscoveryConf(text: string, file = 'discovery.conf'): ConfigEntry[] {
  checkSize(text, file);
  const out: ConfigEntry[] = [];
  const lines = text.split(/\r?\n/);
  for (let n = 0; n < lines.length; n++) {
    const where = `${file}:${n + 1}`;
    const raw = lines[n] as string;
    if (raw.length > MAX_LINE) throw new ConfigError(ErrorCode.CFG_TOO_LARGE, where, `line longer than ${MAX_LINE} characters`);
    const words = stripComment(raw).trim().split(/\s+/).filter((w) => w !== '');
    if (words.length === 0) continue;
    const params: ConfigParams = {};
    for (let i = 0; i < words.length; i++) {
      const word = words[i] as string;
      let flag: Flag | undefined;
      let inline: string | undefined;
      if (word.startsWith('--')) {
        const eq = word.indexOf('=');
        const name = eq < 0 ? word.slice(2) : word.slice(2, eq);
        inline = eq < 0 ? undefined : word.slice(eq + 1);
        flag = BY_LONG.get(name);
        if (flag === undefined) throw new ConfigError(ErrorCode.CFG_UNKNOWN_KEY, where, `unknown flag '--${name.slice(0, 64)}'`);
      } else if (word.startsWith('-') && word.length >= 2) {
        flag = BY_SHORT.get(word[1] as string);
        if (flag === undefined) throw new ConfigError(ErrorCode.CFG_UNKNOWN_KEY, where, `unknown flag '${word.slice(0, 2)}'`);
        if (word.length > 2) inline = word.slice(2).replace(/^=/, '');
      } else {
        throw new ConfigError(ErrorCode.CFG_SYNTAX, where, `'${word.slice(0, 64)}' is not a flag`);
      }
      if (flag.bool === true) {
        if (inline !== undefined) throw new ConfigError(ErrorCode.CFG_SYNTAX, where, `--${flag.long} takes no value`);
        setParam(params, flag.param, true, where);
        continue;
      }
      const value = inline ?? words[++i];
      if (value === undefined) throw new ConfigError(ErrorCode.CFG_SYNTAX, where, `--${flag.long} needs a value`);
      setParam(params, flag.param, value, where);
    }
    out.push(finishEntry(where, params, true));
    if (out.length > MAX_CONFIG_ENTRIES) throw new ConfigError(ErrorCode.CFG_TOO_LARGE, where, `more than ${MAX_CONFIG_ENTRIES} entries`);
  }
  return out;
}
