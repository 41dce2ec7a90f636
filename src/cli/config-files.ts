/**
 * Reading the config files for `connect-all` (no address) and the daemon: `--config FILE`, else
 * `/etc/nvme/discovery.conf` and `/etc/nvme/config.json` (the directory is `$NVMF_NBD_NVME_DIR`
 * when set). The parsers are pure (src/config); this module only reads files and turns entries
 * into checked connect options, so a bad entry anywhere stops everything before anything is
 * connected.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ErrorCode, NvmfNbdError } from '../errors';
import { parseConfigJson } from '../config/config-json';
import { parseDiscoveryConf } from '../config/discovery-conf';
import { entryConnectArgs } from '../config/connect-args';
import { ConfigError } from '../config/params';
import type { ConfigEntry, EntryKind } from '../config/params';
import { nvmeEtcDir } from '../controller/host-identity';

/** One entry ready to run: its kind, connect options, and for discovery entries `persistent`. */
export interface PlannedEntry {
  readonly where: string;
  readonly kind: EntryKind;
  readonly args: Record<string, unknown>;
  readonly persistent: boolean;
}

/** What was read. */
export interface LoadedConfig {
  readonly files: string[];
  readonly entries: ConfigEntry[];
}

function readConfigFile(file: string): string | undefined {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new ConfigError(ErrorCode.CFG_INVALID, file, `cannot read: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
}

/** Parse one file: JSON when its first non-blank character is `[` or `{`, else discovery.conf lines. */
export function parseConfigText(text: string, file: string): ConfigEntry[] {
  const first = /\S/.exec(text)?.[0];
  return first === '[' || first === '{' ? parseConfigJson(text, file) : parseDiscoveryConf(text, file);
}

/**
 * Load `--config FILE` (must exist), else the default files that exist.
 * @throws ConfigError (any CFG_ERR_*)
 */
export function loadConfig(o: { file?: string; etcDir?: string } = {}): LoadedConfig {
  if (o.file !== undefined) {
    const text = readConfigFile(o.file);
    if (text === undefined) throw new ConfigError(ErrorCode.CFG_INVALID, o.file, 'no such file');
    return { files: [o.file], entries: parseConfigText(text, o.file) };
  }
  const dir = o.etcDir ?? nvmeEtcDir();
  const files: string[] = [];
  const entries: ConfigEntry[] = [];
  const conf = path.join(dir, 'discovery.conf');
  const confText = readConfigFile(conf);
  if (confText !== undefined) {
    files.push(conf);
    entries.push(...parseDiscoveryConf(confText, conf));
  }
  const json = path.join(dir, 'config.json');
  const jsonText = readConfigFile(json);
  if (jsonText !== undefined) {
    files.push(json);
    entries.push(...parseConfigJson(jsonText, json));
  }
  return { files, entries };
}

/**
 * Entries → checked connect options. `base` (the command line's own connect flags, e.g.
 * `--attach`, `--nbd`) is the default under every entry; the entry's keys win. `check` runs the
 * connect verb's own validation (e.g. controllerOptionsFromArgs) so a bad host ID or address is
 * reported with the entry's location.
 * @throws ConfigError
 */
export function planEntries(
  entries: readonly ConfigEntry[], known: ReadonlySet<string>, base: Record<string, unknown>,
  check: (kind: EntryKind, args: Record<string, unknown>) => void,
): PlannedEntry[] {
  return entries.map((e) => {
    const args: Record<string, unknown> = { ...base, ...entryConnectArgs(e, known) };
    try {
      check(e.kind, args);
    } catch (err) {
      if (err instanceof NvmfNbdError && !(err instanceof ConfigError)) throw new ConfigError(ErrorCode.CFG_BAD_VALUE, e.where, err.message);
      throw err;
    }
    return { where: e.where, kind: e.kind, args, persistent: e.params.persistent === true };
  });
}
