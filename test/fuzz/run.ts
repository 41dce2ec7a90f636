/**
 * `npm run fuzz [-- --inputs N] [--seed S] [--sessions N] [--only WORD]`: every parser target
 * gets N mutated inputs (default 10^6), then the connection-level fuzzers run N hostile
 * sessions each (default 3000) against the NBD server, the embedded target and the control
 * socket. Prints one table; exit status 1 when anything crashed or hung.
 */
import { fuzzParser, formatTable, type FuzzResult } from './lib';
import { parserTargets } from './parsers';
import { sessionFuzzers } from './sessions';

function arg(name: string, def: number): number {
  const i = process.argv.indexOf(`--${name}`);
  const v = i >= 0 ? Number(process.argv[i + 1]) : NaN;
  return Number.isFinite(v) ? v : def;
}

async function main(): Promise<void> {
  const inputs = arg('inputs', 1_000_000);
  const sessions = arg('sessions', 3000);
  const seed = arg('seed', 1);
  const oi = process.argv.indexOf('--only');
  const only = oi >= 0 ? process.argv[oi + 1] ?? '' : '';
  const rows: FuzzResult[] = [];
  for (const t of parserTargets()) {
    if (only !== '' && !t.name.includes(only)) continue;
    const r = fuzzParser(t, { inputs, seed });
    rows.push(r);
    process.stderr.write(`${r.name}: ${r.inputs} inputs, ${r.crashes} crashes, ${r.hangs} hangs, ${r.seconds} s\n`);
    for (const s of r.samples) process.stderr.write(`  crash: ${s}\n`);
  }
  for (const f of sessionFuzzers()) {
    if (only !== '' && !f.name.includes(only)) continue;
    const r = await f.run({ sessions, seed });
    rows.push(r);
    process.stderr.write(`${r.name}: ${r.inputs} sessions, ${r.crashes} untyped/unclean, ${r.hangs} hangs, ${r.seconds} s\n`);
    for (const s of r.samples) process.stderr.write(`  problem: ${s}\n`);
  }
  process.stdout.write(`${formatTable(rows)}\n`);
  process.exitCode = rows.some((r) => r.crashes > 0 || r.hangs > 0) ? 1 : 0;
}

void main();
