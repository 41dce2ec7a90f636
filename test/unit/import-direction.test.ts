/**
 * Imports point down (issue 9 item 3; docs/ARCHITECTURE.md "Layers"). Every relative `import` /
 * `export … from` / `require()` / `import()` under src/ is mapped to the layers of its two ends;
 * a module may import its own folder and folders of a lower rank only. An upward or sideways
 * edge, or a folder (or top-level file) with no rank, fails with the list of offending lines.
 * Type-only imports count: they are dependencies of the design as much as value imports.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';

const REPO = path.resolve(__dirname, '../../..');
const SRC = path.join(REPO, 'src');

/**
 * Rank of each folder of src/ (and of the top-level files): lowest first. Keep in step with the
 * table in docs/ARCHITECTURE.md.
 */
const RANK: Readonly<Record<string, number>> = {
  'errors.ts': 0,
  wire: 1,
  net: 2,
  tls: 3,
  block: 3,
  transport: 4,
  controller: 5,
  nbd: 6,
  'embedded-target': 6,
  attach: 7,
  config: 7,
  engine: 8,
  cli: 9,
};

/**
 * Edges allowed although they break the rule, each with the reason and who removes it. Empty:
 * nothing is excused today.
 */
const ALLOWED: ReadonlyArray<{ from: string; to: string; why: string }> = [];

/** `src/a/b.ts` → `a`; `src/errors.ts` → `errors.ts`. */
function layerOf(file: string): string {
  return path.relative(SRC, file).split(path.sep)[0] as string;
}

/** The file a relative specifier names (`./x` → `x.ts` or `x/index.ts`). */
function resolveSpecifier(from: string, spec: string): string {
  const base = path.resolve(path.dirname(from), spec);
  for (const cand of [`${base}.ts`, path.join(base, 'index.ts'), base]) if (fs.existsSync(cand) && fs.statSync(cand).isFile()) return cand;
  return `${base}.ts`;
}

function sourceFiles(dir: string): string[] {
  const out: string[] = [];
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...sourceFiles(p));
    else if (e.name.endsWith('.ts')) out.push(p);
  }
  return out.sort();
}

/** Relative module specifiers of one file, with their line numbers. */
function importsOf(text: string): Array<{ line: number; spec: string }> {
  const out: Array<{ line: number; spec: string }> = [];
  const re = /(?:\bfrom\s*|\brequire\(\s*|\bimport\(\s*|^\s*import\s+)['"](\.{1,2}\/[^'"]*)['"]/gm;
  for (const m of text.matchAll(re)) {
    const line = text.slice(0, m.index).split('\n').length;
    out.push({ line, spec: m[1] as string });
  }
  return out;
}

interface Edge { file: string; line: number; spec: string; from: string; to: string }

function allEdges(): Edge[] {
  const edges: Edge[] = [];
  for (const file of sourceFiles(SRC)) {
    const from = layerOf(file);
    for (const { line, spec } of importsOf(fs.readFileSync(file, 'utf8'))) {
      const target = resolveSpecifier(file, spec);
      if (!target.startsWith(SRC + path.sep)) {
        edges.push({ file, line, spec, from, to: '(outside src/)' });
        continue;
      }
      edges.push({ file, line, spec, from, to: layerOf(target) });
    }
  }
  return edges;
}

test('the import scanner sees every form of import (self-check)', () => {
  const text = [
    "import { a } from '../wire/pdu';",
    "import type { B } from './b';",
    "export { c } from '../net/probe';",
    "import '../side-effect';",
    "const d = require('../cli/args') as typeof import('../cli/args');",
    'import {',
    '  e,',
    "} from '../block/types';",
    "import * as net from 'node:net';",
  ].join('\n');
  assert.deepEqual(importsOf(text).map((x) => [x.line, x.spec]), [
    [1, '../wire/pdu'], [2, './b'], [3, '../net/probe'], [4, '../side-effect'], [5, '../cli/args'], [5, '../cli/args'], [8, '../block/types'],
  ]);
});

test('every folder of src/ has a rank', () => {
  const unknown = fs.readdirSync(SRC).filter((n) => RANK[n] === undefined && (n.endsWith('.ts') || fs.statSync(path.join(SRC, n)).isDirectory()));
  assert.deepEqual(unknown, [], `folders/files of src/ without a rank (add them to RANK here and to docs/ARCHITECTURE.md "Layers"): ${unknown.join(', ')}`);
});

test('imports point down: no module imports a higher layer or a sibling layer', () => {
  const edges = allEdges();
  assert.ok(edges.length > 300, `only ${edges.length} imports found: the scanner is broken`);
  const bad = edges.filter((e) => {
    if (e.from === e.to) return false;
    if (ALLOWED.some((a) => a.from === path.relative(REPO, e.file) && a.to === e.spec)) return false;
    const rf = RANK[e.from];
    const rt = RANK[e.to];
    return rf === undefined || rt === undefined || rt >= rf;
  });
  const lines = bad.map((e) => `  ${path.relative(REPO, e.file)}:${e.line} (${e.from}, rank ${RANK[e.from] ?? '?'}) imports '${e.spec}' (${e.to}, rank ${RANK[e.to] ?? '?'})`);
  assert.deepEqual(lines, [], `upward or sideways imports:\n${lines.join('\n')}`);
});

test('the allow-list holds only edges that still exist', () => {
  const edges = allEdges();
  const stale = ALLOWED.filter((a) => !edges.some((e) => path.relative(REPO, e.file) === a.from && e.spec === a.to));
  assert.deepEqual(stale, [], 'remove these entries from ALLOWED: the import is gone');
});
