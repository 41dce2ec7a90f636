/**
 * The declaration of one command-line option. The CLI parses argv with it (`cli/args.ts`), and
 * the daemon checks the arguments of a control-socket connect (or a restored state entry)
 * against the same declarations, so it lives below both.
 */

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
