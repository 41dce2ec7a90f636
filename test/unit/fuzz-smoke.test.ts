/**
 * Smoke run of `npm run fuzz` (test/fuzz/): every parser target for a couple of seconds and a
 * few hundred hostile sessions per connection-level fuzzer. No crash (untyped exception,
 * uncaught error, code-less log line), no hang. Also checks the harness itself notices an
 * untyped exception, so a green smoke means something.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fuzzParser, formatTable } from '../fuzz/lib';
import { parserTargets } from '../fuzz/parsers';
import { sessionFuzzers } from '../fuzz/sessions';

test('fuzz harness counts an untyped exception as a crash', () => {
  const r = fuzzParser({ name: 'bad', seeds: [Buffer.from([1, 2, 3])], run: (b) => { if (b.length > 0 && (b[0] as number) % 2 === 1) throw new RangeError('x'); } }, { inputs: 200, seed: 7 });
  assert.ok(r.crashes > 0);
});

for (const t of parserTargets()) {
  test(`fuzz smoke: ${t.name}`, { timeout: 60_000 }, () => {
    const r = fuzzParser(t, { inputs: 1_000_000, seed: 20261201, maxSeconds: 2 });
    assert.ok(r.inputs >= 1000, `only ${r.inputs} inputs`);
    assert.equal(r.crashes, 0, `${formatTable([r])}\n${r.samples.join('\n')}`);
    assert.equal(r.hangs, 0, formatTable([r]));
  });
}

for (const f of sessionFuzzers()) {
  test(`fuzz smoke: ${f.name}`, { timeout: 120_000 }, async () => {
    const r = await f.run({ sessions: 300, seed: 20261201 });
    assert.equal(r.inputs, 300);
    assert.equal(r.crashes, 0, `${formatTable([r])}\n${r.samples.join('\n')}`);
    assert.equal(r.hangs, 0, formatTable([r]));
  });
}
