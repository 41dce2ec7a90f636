/**
 * A small, strict command-line parser for nvme-cli-style verbs.
 *
 * Each verb declares its options (short and long names, whether they take a value, and how to
 * convert it). Unknown flags, missing values and bad numbers are `CLI_ERR_USAGE` errors, which
 * `main` turns into a message on stderr and exit status 2.
 */
import { ErrorCode, NvmfNbdError } from '../errors';

// The option declaration lives in config/ (the daemon checks control-socket connect arguments
// against the same specs); re-exported so every verb keeps importing it from here.
import type { OptionSpec } from '../config/option-spec';
export type { OptionSpec };

/** Parsed options plus the positional arguments. */
export interface ParsedArgs {
  readonly options: Record<string, string | number | boolean | Array<string | number> | undefined>;
  readonly positionals: string[];
}

/** Every option of a parse, in command-line order (see {@link optionSequence}). */
const SEQUENCE = new WeakMap<object, ReadonlyArray<{ readonly long: string; readonly value: string | number | boolean }>>();

/**
 * The options of a {@link parseArgs} result in the order they were given, for verbs whose
 * options pair up (`--allow-host NQN --dhchap-key KEY`). Empty for objects parseArgs did not make.
 */
export function optionSequence(options: object): ReadonlyArray<{ readonly long: string; readonly value: string | number | boolean }> {
  return SEQUENCE.get(options) ?? [];
}

/** Raise a usage error (exit 2). */
export function usageError(message: string): never {
  throw new NvmfNbdError(ErrorCode.CLI_USAGE, message);
}

/**
 * Parse `argv` (the words after the verb) against `specs`.
 * Accepts `--long value`, `--long=value`, `-s value`, `-svalue`, and `--` to end options.
 */
export function parseArgs(argv: readonly string[], specs: readonly OptionSpec[]): ParsedArgs {
  const byLong = new Map(specs.map((s) => [s.long, s]));
  for (const s of specs) for (const a of s.aliases ?? []) if (!byLong.has(a)) byLong.set(a, s);
  const byShort = new Map(specs.filter((s) => s.short !== undefined).map((s) => [s.short as string, s]));
  const options: Record<string, string | number | boolean | Array<string | number> | undefined> = {};
  for (const s of specs) if (s.default !== undefined) options[s.long] = s.default;
  const positionals: string[] = [];
  const sequence: Array<{ long: string; value: string | number | boolean }> = [];
  SEQUENCE.set(options, sequence);
  let i = 0;
  while (i < argv.length) {
    const word = argv[i++] as string;
    if (word === '--') {
      positionals.push(...argv.slice(i));
      break;
    }
    let spec: OptionSpec | undefined;
    let inline: string | undefined;
    if (word.startsWith('--')) {
      const eq = word.indexOf('=');
      const name = eq < 0 ? word.slice(2) : word.slice(2, eq);
      inline = eq < 0 ? undefined : word.slice(eq + 1);
      spec = byLong.get(name);
      if (spec === undefined) usageError(`unknown option --${name}`);
    } else if (word.startsWith('-') && word.length > 1) {
      spec = byShort.get(word[1] as string);
      if (spec === undefined) usageError(`unknown option ${word.slice(0, 2)}`);
      if (word.length > 2) inline = word.slice(2);
    } else {
      positionals.push(word);
      continue;
    }
    const name = spec.short !== undefined ? `-${spec.short}/--${spec.long}` : `--${spec.long}`;
    let value: string | number | boolean;
    if (spec.type === 'boolean') {
      if (inline !== undefined) usageError(`option ${name} takes no value`);
      value = true;
    } else {
      const raw = inline ?? argv[i++];
      if (raw === undefined) usageError(`option ${name} needs a value (${spec.metavar ?? 'VALUE'})`);
      value = spec.type === 'int' ? parseInteger(raw, name, spec) : raw;
    }
    sequence.push({ long: spec.long, value });
    if (spec.repeat === true && typeof value !== 'boolean') {
      const prev = options[spec.long];
      options[spec.long] = Array.isArray(prev) ? [...prev, value] : [value];
    } else {
      options[spec.long] = value;
    }
  }
  return { options, positionals };
}

function parseInteger(raw: string, name: string, spec: OptionSpec): number {
  if (!/^-?(0x[0-9a-fA-F]+|\d+)$/.test(raw)) usageError(`option ${name}: '${raw}' is not an integer`);
  const n = raw.startsWith('-') ? -Number(raw.slice(1)) : Number(raw);
  if (!Number.isSafeInteger(n)) usageError(`option ${name}: '${raw}' is out of range`);
  if (spec.min !== undefined && n < spec.min) usageError(`option ${name}: ${n} is below ${spec.min}`);
  if (spec.max !== undefined && n > spec.max) usageError(`option ${name}: ${n} is above ${spec.max}`);
  return n;
}

/** Render help text for a verb. */
export function formatHelp(usage: string, description: string, specs: readonly OptionSpec[]): string {
  const rows = specs.map((s) => {
    const names = (s.short !== undefined ? `-${s.short}, ` : '    ') + `--${s.long}` + (s.type === 'boolean' ? '' : ` ${s.metavar ?? 'VALUE'}`);
    const def = s.default !== undefined && s.type !== 'boolean' ? ` (default ${String(s.default)})` : '';
    return `  ${names.padEnd(34)} ${s.help}${def}`;
  });
  return `Usage: ${usage}\n\n${description}\n\nOptions:\n${rows.join('\n')}\n  -h, --help                         show this help\n`;
}
