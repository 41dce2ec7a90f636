/**
 * The declaration of one command-line option. The CLI parses argv with it (`cli/args.ts`), and
 * the daemon checks the arguments of a control-socket connect (or a restored state entry)
 * against the same declarations, so it lives below both.
 */
// Path selection policies (Linux `nvme_core` `iopolicy` names) belong to the multipath layer.
import { IoPolicy } from '../controller/multipath';
import type { IoPolicyValue } from '../controller/multipath';

export { DEFAULT_IOPOLICY, IoPolicy } from '../controller/multipath';
export type { IoPolicyValue } from '../controller/multipath';

/** Declaration of one option. */
export interface OptionSpec {
  /** Long name without dashes, e.g. `traddr`. Also the key in the parsed result. */
  readonly long: string;
  /** Optional one-letter alias without dash, e.g. `a`. */
  readonly short?: string;
  /** `boolean` flags take no value; `string` and `int` take one. */
  readonly type: 'boolean' | 'string' | 'int';
  /** One line of help text. */
  readonly help: string;
  /** Value name shown in help, e.g. `ADDR`. */
  readonly metavar?: string;
  /** Default value when the option is absent. */
  readonly default?: string | number | boolean;
  /** Inclusive bounds for `int` options. */
  readonly min?: number;
  readonly max?: number;
  /** The option may be repeated; values are collected in an array. */
  readonly repeat?: boolean;
  /** Other long spellings accepted (e.g. nvme-cli's `fast_io_fail_tmo`); not shown in help. */
  readonly aliases?: readonly string[];
}

const IOPOLICIES: ReadonlySet<string> = new Set(Object.values(IoPolicy));

/**
 * `--iopolicy` of connect, connect-all and daemon. No declared default: a connect that does not
 * give one takes the daemon's (`daemon --iopolicy`), else {@link DEFAULT_IOPOLICY}.
 */
export const IOPOLICY_OPTION: OptionSpec = {
  long: 'iopolicy', type: 'string', metavar: 'numa|round-robin|queue-depth',
  help: 'multipath path selection: numa = first optimized path (Linux default), round-robin, queue-depth = fewest commands in flight',
};

/** Is `v` an iopolicy name? */
export function isIoPolicy(v: unknown): v is IoPolicyValue {
  return typeof v === 'string' && IOPOLICIES.has(v);
}

/**
 * `--iopolicy` → its value; absent → `fallback`.
 * @throws the error `bad(message)` returns (a usage error) for anything else
 */
export function ioPolicyFromArg(v: unknown, fallback: IoPolicyValue, bad: (message: string) => never): IoPolicyValue {
  if (v === undefined) return fallback;
  if (isIoPolicy(v)) return v;
  return bad(`--iopolicy '${String(v).slice(0, 32)}': expected numa, round-robin or queue-depth`);
}
