/**
 * ANA states of the embedded target's ports as people write them: the `--ana-state
 * PORT:GROUP:STATE` flag and the `--ana-state-file` file (one `PORT GROUP STATE` per line, `#`
 * starts a comment, blank lines skipped), which `nvmf-nbd target` re-reads on SIGHUP. STATE is
 * a Linux name (optimized, non-optimized, inaccessible, persistent-loss, change) or its number.
 * Pure: text in, entries or a {@link ConfigError} out; the whole file is checked before
 * anything is returned, so a bad edit never applies half a file.
 */
import { ErrorCode } from '../errors';
import { parseAnaState, type AnaState } from '../wire/ana';
import { ConfigError, MAX_CONFIG_ENTRIES, checkSize } from './params';

/** One port/group/state triple. */
export interface AnaStateEntry {
  port: number;
  group: number;
  state: AnaState;
}

/** Largest ANA group id the target serves (its ANAGRPMAX). */
const MAX_GROUP = 128;

function parseTriple(port: string, group: string, state: string, where: string): AnaStateEntry {
  const p = /^\d{1,5}$/.test(port) ? Number(port) : NaN;
  if (!(p >= 1 && p <= 0xffef)) throw new ConfigError(ErrorCode.CFG_BAD_VALUE, where, `port id '${port}' must be 1..65519`);
  const g = /^\d{1,3}$/.test(group) ? Number(group) : NaN;
  if (!(g >= 1 && g <= MAX_GROUP)) throw new ConfigError(ErrorCode.CFG_BAD_VALUE, where, `ANA group '${group}' must be 1..${MAX_GROUP}`);
  const s = parseAnaState(state);
  if (s === undefined) {
    throw new ConfigError(ErrorCode.CFG_BAD_VALUE, where, `ANA state '${state}' must be optimized, non-optimized, inaccessible, persistent-loss or change`);
  }
  return { port: p, group: g, state: s };
}

/** `PORT:GROUP:STATE` (the `--ana-state` flag). @throws ConfigError CFG_ERR_SYNTAX / CFG_ERR_BAD_VALUE */
export function parseAnaStateSpec(spec: string, where = '--ana-state'): AnaStateEntry {
  const parts = spec.split(':');
  if (parts.length !== 3) throw new ConfigError(ErrorCode.CFG_SYNTAX, where, `'${spec}': expected PORT:GROUP:STATE`);
  return parseTriple(parts[0]!.trim(), parts[1]!.trim(), parts[2]!.trim(), where);
}

/**
 * An ANA state file. `file` names it in errors (`ana.conf:3: …`). A port/group given twice is an
 * error (which line would win is not obvious). @throws ConfigError (CFG_ERR_SYNTAX,
 * CFG_ERR_BAD_VALUE, CFG_ERR_TOO_LARGE)
 */
export function parseAnaStateFile(text: string, file = 'ana-state-file'): AnaStateEntry[] {
  checkSize(text, file);
  const out: AnaStateEntry[] = [];
  const seen = new Map<string, number>();
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const where = `${file}:${i + 1}`;
    const line = (lines[i] as string).replace(/#.*$/, '').trim();
    if (line === '') continue;
    const words = line.split(/\s+/);
    if (words.length !== 3) throw new ConfigError(ErrorCode.CFG_SYNTAX, where, `expected 'PORT GROUP STATE', got '${line}'`);
    const e = parseTriple(words[0]!, words[1]!, words[2]!, where);
    const key = `${e.port}/${e.group}`;
    const prev = seen.get(key);
    if (prev !== undefined) throw new ConfigError(ErrorCode.CFG_BAD_VALUE, where, `port ${e.port} group ${e.group} already set on line ${prev}`);
    seen.set(key, i + 1);
    if (out.length >= MAX_CONFIG_ENTRIES) throw new ConfigError(ErrorCode.CFG_TOO_LARGE, where, `more than ${MAX_CONFIG_ENTRIES} entries`);
    out.push(e);
  }
  return out;
}
