/**
 * The bench tools' command lines are input like any other: an unknown option, a missing value or
 * a bad number is one clear line on stderr and exit status 2 — never a stack trace.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';

const BENCH = path.resolve(__dirname, '..', '..', 'bench');

for (const [tool, args, pattern] of [
  ['engine-bench', ['--bogus'], /^engine-bench: unknown option --bogus \(known: /],
  ['engine-bench', ['--runtime'], /^engine-bench: --runtime needs a value$/],
  ['nbd-bench', ['--runtime', 'soon'], /^nbd-bench: --runtime soon: not a non-negative number$/],
  ['nbd-bench', ['stray'], /^nbd-bench: unexpected argument 'stray'$/],
  ['engine-bench', ['--jobs', 'nope'], /^engine-bench: unknown job 'nope' \(jobs: /],
] as const) {
  test(`${tool} ${args.join(' ')}: one line, exit 2`, () => {
    const r = spawnSync(process.execPath, [path.join(BENCH, `${tool}.js`), ...args], { encoding: 'utf8', timeout: 30_000, env: { ...process.env, NVMF_NBD_DEBUG: '' } });
    assert.equal(r.status, 2, r.stderr);
    const lines = r.stderr.trimEnd().split('\n');
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0] as string, pattern);
    assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
  });
}
