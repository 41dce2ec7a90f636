#!/usr/bin/env node
/**
 * Entry point of the `nvmf-nbd` command: dispatches to the verb table, prints usage errors with
 * exit status 2 and runtime errors (with their stable code) with exit status 1.
 */
import { formatHelp, parseArgs, usageError } from './args';
import { ErrorCode, NvmfNbdError } from '../errors';
import type { Verb } from './verb';

// The verb table. Each verb module exports `verb`; keep this list sorted.
const VERBS: ReadonlyArray<() => Verb> = [
  () => (require('./verbs/admin-passthru') as typeof import('./verbs/admin-passthru')).verb,
  () => (require('./verbs/check-dhchap-key') as typeof import('./verbs/check-dhchap-key')).verb,
  () => (require('./verbs/connect') as typeof import('./verbs/connect')).verb,
  () => (require('./verbs/connect-all') as typeof import('./verbs/connect-all')).verb,
  () => (require('./verbs/daemon') as typeof import('./verbs/daemon')).verb,
  () => (require('./verbs/demo') as typeof import('./verbs/demo')).verb,
  () => (require('./verbs/disconnect') as typeof import('./verbs/disconnect')).verb,
  () => (require('./verbs/disconnect-all') as typeof import('./verbs/disconnect-all')).verb,
  () => (require('./verbs/discover') as typeof import('./verbs/discover')).verb,
  () => (require('./verbs/gen-dhchap-key') as typeof import('./verbs/gen-dhchap-key')).verb,
  () => (require('./verbs/gen-hostnqn') as typeof import('./verbs/gen-hostnqn')).verb,
  () => (require('./verbs/get-log') as typeof import('./verbs/get-log')).verb,
  () => (require('./verbs/id-ctrl') as typeof import('./verbs/id-ctrl')).verb,
  () => (require('./verbs/id-ns') as typeof import('./verbs/id-ns')).verb,
  () => (require('./verbs/list') as typeof import('./verbs/list')).verb,
  () => (require('./verbs/list-ns') as typeof import('./verbs/list-ns')).verb,
  () => (require('./verbs/show-hostnqn') as typeof import('./verbs/show-hostnqn')).verb,
  () => (require('./verbs/show-topology') as typeof import('./verbs/show-topology')).verb,
  () => (require('./verbs/target') as typeof import('./verbs/target')).verb,
  () => (require('./verbs/tls-key') as typeof import('./verbs/tls-key')).checkVerb,
  () => (require('./verbs/tls-key') as typeof import('./verbs/tls-key')).genVerb,
  () => (require('./verbs/tls-key') as typeof import('./verbs/tls-key')).verb,
];

function topHelp(verbs: readonly Verb[]): string {
  const rows = verbs.map((v) => `  ${v.name.padEnd(16)} ${v.summary}`);
  return `Usage: nvmf-nbd <verb> [options]\n\nUser-space NVMe/TCP host that serves remote namespaces over NBD.\n\nVerbs:\n${rows.join('\n')}\n\nRun 'nvmf-nbd <verb> --help' for the options of a verb.\n`;
}

/** Run the CLI with `argv` (without node and script). Resolves with the exit status. */
export async function main(argv: readonly string[]): Promise<number> {
  const verbs = VERBS.map((load) => load());
  const [name, ...rest] = argv;
  if (name === undefined || name === '-h' || name === '--help' || name === 'help') {
    process.stdout.write(topHelp(verbs));
    return name === undefined ? 2 : 0;
  }
  const verb = verbs.find((v) => v.name === name);
  if (verb === undefined) {
    process.stderr.write(`nvmf-nbd: unknown verb '${name}' (CLI_ERR_USAGE)\n${topHelp(verbs)}`);
    return 2;
  }
  if (rest.includes('-h') || rest.includes('--help')) {
    process.stdout.write(formatHelp(verb.usage, verb.summary, verb.options));
    return 0;
  }
  try {
    const { options, positionals } = parseArgs(rest, verb.options);
    if (verb.positionals !== true && positionals.length > 0) usageError(`unexpected argument '${positionals[0] as string}'`);
    return await verb.run(options, positionals);
  } catch (err) {
    if (err instanceof NvmfNbdError) {
      process.stderr.write(`nvmf-nbd ${verb.name}: ${err.message} (${err.code})\n`);
      // An NBD endpoint that would serve plain NBD to the network is a usage error too.
      if (err.code === ErrorCode.CLI_USAGE || err.code === ErrorCode.NBD_INSECURE_BIND) {
        process.stderr.write(`Run 'nvmf-nbd ${verb.name} --help' for usage.\n`);
        return 2;
      }
      return 1;
    }
    process.stderr.write(`nvmf-nbd ${verb.name}: internal error: ${(err as Error)?.stack ?? String(err)}\n`);
    return 1;
  }
}

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (code) => { process.exitCode = code; },
    (err: unknown) => { process.stderr.write(`nvmf-nbd: ${String(err)}\n`); process.exitCode = 1; },
  );
}
