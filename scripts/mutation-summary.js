#!/usr/bin/env node
// Prints the mutation score per module and every survivor from a Stryker JSON report
// (mutation-testing-report-schema), for `npm run mutate` (scripts/mutate.sh).
//
// Usage: node scripts/mutation-summary.js [REPORT.json] [--merged] [--no-survivors]
//   REPORT.json      a run's report (default reports/mutation/mutation.json); it is merged into
//                    reports/mutation/merged.json (per mutant, newest run wins, so line-range runs of
//                    one file add up; a file whose source changed since its run is dropped)
//   --merged         print the merged table (every module measured so far) instead of this run's
//   --no-survivors   the table only
//
// Score = (killed + timeout) / (killed + timeout + survived + no coverage), as Stryker counts it.
// Mutants listed in test/mutation/equivalent*.json (file, mutator, the original code and the
// replacement, with the reason) are equivalent: they are shown in their own column with the
// reason, and counted neither as killed nor in the score; compile/runtime errors are not counted.
// One list per layer (equivalent.json, equivalent-nbd.json, ...) keeps the lists short to review.
'use strict';
const fs = require('node:fs');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const args = process.argv.slice(2);
const showMerged = args.includes('--merged');
const showSurvivors = !args.includes('--no-survivors');
const reportPath = path.resolve(root, args.find((a) => !a.startsWith('--')) ?? 'reports/mutation/mutation.json');
const mergedPath = path.join(root, 'reports/mutation/merged.json');
const equivalentDir = path.join(root, 'test/mutation');

function readJson(p) {
  return JSON.parse(fs.readFileSync(p, 'utf8'));
}

/** Module of a source file: its folder under src/ (the embedded target's I/O path by name). */
function moduleOf(file) {
  const parts = file.split('/');
  if (parts[0] !== 'src' || parts.length < 3) return parts.slice(0, -1).join('/') || file;
  return `src/${parts[1]}/`;
}

/** The source text a mutant replaces (its location: lines and columns are 1-based). */
function originalOf(source, loc) {
  const lines = source.split('\n');
  const { start, end } = loc;
  if (start.line === end.line) return (lines[start.line - 1] ?? '').slice(start.column - 1, end.column - 1);
  const out = [(lines[start.line - 1] ?? '').slice(start.column - 1)];
  for (let l = start.line; l < end.line - 1; l++) out.push(lines[l] ?? '');
  out.push((lines[end.line - 1] ?? '').slice(0, end.column - 1));
  return out.join('\n');
}

const squash = (s) => String(s).replace(/\s+/g, ' ').trim();

const equivalents = [];
if (fs.existsSync(equivalentDir)) {
  for (const f of fs.readdirSync(equivalentDir).sort()) {
    if (/^equivalent.*\.json$/.test(f)) equivalents.push(...readJson(path.join(equivalentDir, f)));
  }
}
function equivalentReason(file, mutant, original) {
  for (const e of equivalents) {
    if (e.file !== file || e.mutator !== mutant.mutatorName) continue;
    if (e.original !== undefined && squash(e.original) !== squash(original)) continue;
    if (e.replacement !== undefined && squash(e.replacement) !== squash(mutant.replacement ?? '')) continue;
    if (e.line !== undefined && e.line !== mutant.location.start.line) continue;
    return e.reason;
  }
  return undefined;
}

let merged = { files: {} };
if (fs.existsSync(mergedPath)) {
  try {
    merged = readJson(mergedPath);
  } catch {
    merged = { files: {} };
  }
}
let run = { files: {} };
if (fs.existsSync(reportPath)) run = readJson(reportPath);
else if (!showMerged) {
  console.error(`mutation-summary: no report at ${path.relative(root, reportPath)}`);
  process.exit(2);
}
/** A mutant's identity within one version of a file: where, which mutator, what it writes. */
const mutantKey = (m) => {
  const { start, end } = m.location;
  return `${start.line}:${start.column}-${end.line}:${end.column} ${m.mutatorName} ${m.replacement ?? ''}`;
};
// Per mutant, not per file: runs over different line ranges of one file add up, and a rerun of a
// range replaces just the mutants it tested. A run against other source text replaces the file.
for (const [file, data] of Object.entries(run.files)) {
  const before = merged.files[file];
  if (before === undefined || before.source !== data.source) {
    merged.files[file] = data;
    continue;
  }
  const byKey = new Map(before.mutants.map((m) => [mutantKey(m), m]));
  for (const m of data.mutants) byKey.set(mutantKey(m), m);
  merged.files[file] = { ...data, mutants: [...byKey.values()] };
}
for (const [file, data] of Object.entries(merged.files)) {
  const abs = path.join(root, file);
  if (!fs.existsSync(abs) || fs.readFileSync(abs, 'utf8') !== data.source) delete merged.files[file];
}
fs.mkdirSync(path.dirname(mergedPath), { recursive: true });
fs.writeFileSync(mergedPath, JSON.stringify(merged));

const report = showMerged ? merged : run;
const rows = new Map();
const survivors = [];
const equivalentList = [];
const row = (name) => {
  if (!rows.has(name)) rows.set(name, { killed: 0, timeout: 0, survived: 0, noCoverage: 0, equivalent: 0, errors: 0, ignored: 0 });
  return rows.get(name);
};
for (const [file, data] of Object.entries(report.files).sort(([a], [b]) => a.localeCompare(b))) {
  for (const m of data.mutants) {
    const targets = [row(moduleOf(file)), row(file)];
    const original = originalOf(data.source, m.location);
    const where = `${file}:${m.location.start.line}:${m.location.start.column}`;
    const describe = `${where} ${m.mutatorName}: ${squash(original).slice(0, 60)} → ${squash(m.replacement ?? '').slice(0, 60)}`;
    let key;
    switch (m.status) {
      case 'Killed': key = 'killed'; break;
      case 'Timeout': key = 'timeout'; break;
      case 'Survived':
      case 'NoCoverage': {
        const reason = equivalentReason(file, m, original);
        if (reason !== undefined) {
          key = 'equivalent';
          equivalentList.push(`${describe}\n      equivalent: ${reason}`);
        } else {
          key = m.status === 'Survived' ? 'survived' : 'noCoverage';
          survivors.push(`${describe}${m.status === 'NoCoverage' ? ' (no test covers it)' : ''}`);
        }
        break;
      }
      case 'Ignored': key = 'ignored'; break;
      default: key = 'errors';
    }
    for (const t of targets) t[key]++;
  }
}

const score = (r) => {
  const detected = r.killed + r.timeout;
  const valid = detected + r.survived + r.noCoverage;
  return valid === 0 ? 'n/a' : `${((100 * detected) / valid).toFixed(2)} %`;
};
const header = ['module / file', 'score', 'killed', 'timeout', 'survived', 'no cov', 'equiv', 'errors'];
const table = [...rows.entries()]
  .sort(([a], [b]) => {
    const ma = moduleOf(a) === a ? a : moduleOf(a);
    const mb = moduleOf(b) === b ? b : moduleOf(b);
    return ma === mb ? (a.endsWith('/') ? -1 : b.endsWith('/') ? 1 : a.localeCompare(b)) : ma.localeCompare(mb);
  })
  .map(([name, r]) => [name.endsWith('/') ? name : `  ${name}`, score(r), r.killed, r.timeout, r.survived, r.noCoverage, r.equivalent, r.errors].map(String));
const widths = header.map((h, i) => Math.max(h.length, ...table.map((t) => t[i].length)));
const line = (cells) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ');
console.log(`\nMutation score per module (${showMerged ? 'merged runs' : path.relative(root, reportPath)}):`);
console.log(line(header));
for (const t of table) console.log(line(t));
if (showSurvivors) {
  console.log(`\nSurvivors (${survivors.length}):`);
  for (const s of survivors) console.log(`  ${s}`);
  if (equivalentList.length > 0) {
    console.log(`\nEquivalent mutants (${equivalentList.length}, test/mutation/equivalent.json):`);
    for (const s of equivalentList) console.log(`  ${s}`);
  }
}
