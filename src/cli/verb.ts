/**
 * The shape of one CLI verb. `src/cli/main.ts` keeps the table of verbs; each verb lives in
 * `src/cli/verbs/<name>.ts` and exports a `Verb`.
 */
import type { OptionSpec } from './args';

/** One CLI verb (`discover`, `connect`, `target`, …). */
export interface Verb {
  readonly name: string;
  /** One-line summary for `nvmf-nbd --help`. */
  readonly summary: string;
  /** Usage line, e.g. `nvmf-nbd discover -t tcp -a ADDR [-s PORT]`. */
  readonly usage: string;
  readonly options: readonly OptionSpec[];
  /**
   * True when the verb takes positional arguments (and checks them itself). Otherwise any
   * positional word is a usage error naming it: a stray word is never silently dropped.
   */
  readonly positionals?: boolean;
  /**
   * Run the verb. Resolve with the process exit status. Long-running verbs (connect in the
   * foreground, target, daemon) resolve when they have shut down after SIGINT/SIGTERM.
   */
  run(options: Record<string, unknown>, positionals: string[]): Promise<number>;
}
