/**
 * Printers shared by the verbs: aligned human tables, `key : value` listings (as nvme-cli prints
 * Identify data) and JSON that survives bigints and Buffers.
 */
import type { OptionSpec } from './args';

/** One row of cells; every cell is already text. */
export type Row = readonly string[];

/**
 * Escape C0/C1 control characters and DEL as `\xNN` (and a backslash as `\\`) for human output:
 * strings a target sends (discovery log, Identify: NQNs, model, serial, firmware, traddr) could
 * otherwise carry terminal escape sequences. JSON output stays exact (JSON escapes them itself).
 */
export function escapeControl(s: string): string {
  // eslint-disable-next-line no-control-regex
  if (!/[\x00-\x1f\x7f-\x9f\\]/.test(s)) return s;
  // eslint-disable-next-line no-control-regex
  return s.replace(/[\x00-\x1f\x7f-\x9f\\]/g, (c) => (c === '\\' ? '\\\\' : `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`));
}

/** Render an aligned table with a header row and a dashed rule, like `nvme list` (cells escaped). */
export function formatTable(headers: Row, rawRows: readonly Row[]): string {
  const rows = rawRows.map((r) => r.map(escapeControl));
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (r: Row): string => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i] ?? 0))).join('  ').trimEnd();
  const rule = widths.map((w) => '-'.repeat(w)).join('  ');
  return [line(headers), rule, ...rows.map(line)].join('\n') + '\n';
}

/** Render `key : value` lines with the keys padded to one column (values escaped). */
export function formatFields(fields: ReadonlyArray<readonly [string, string | number | bigint | boolean]>): string {
  const w = Math.max(0, ...fields.map(([k]) => k.length));
  return fields.map(([k, v]) => `${k.padEnd(w)} : ${typeof v === 'number' && Number.isInteger(v) && k !== 'nsid' ? formatNumber(v) : escapeControl(String(v))}`).join('\n') + '\n';
}

function formatNumber(v: number): string {
  return v > 9 ? `${v} (0x${v.toString(16)})` : String(v);
}

/** JSON.stringify replacer: bigints as numbers when safe (else strings), Buffers as hex. */
export function jsonReplacer(_key: string, value: unknown): unknown {
  if (typeof value === 'bigint') return value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(value) : value.toString();
  if (value !== null && typeof value === 'object' && (value as { type?: unknown }).type === 'Buffer' && Array.isArray((value as { data?: unknown }).data)) {
    return Buffer.from((value as { data: number[] }).data).toString('hex');
  }
  return value;
}

/** Pretty JSON followed by a newline. */
export function formatJson(value: unknown): string {
  return JSON.stringify(value, jsonReplacer, 2) + '\n';
}

/** Human size: 67108864 → "64.00 MiB". */
export function formatBytes(n: number | bigint): string {
  const v = Number(n);
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let i = 0;
  let x = v;
  while (x >= 1024 && i < units.length - 1) {
    x /= 1024;
    i++;
  }
  return i === 0 ? `${v} B` : `${x.toFixed(2)} ${units[i] as string}`;
}

/** The output format flag shared by verbs (`-o normal|json`). */
export type OutputFormat = 'normal' | 'json';

/** Validate `-o`; throws a usage error for anything else. */
export function outputFormat(v: unknown, usageError: (m: string) => never): OutputFormat {
  if (v === undefined || v === 'normal') return 'normal';
  if (v === 'json') return 'json';
  return usageError(`-o/--output-format: '${String(v)}' is not one of normal, json`);
}

/** `-o normal|json` as verbs declare it. */
export const OUTPUT_FORMAT_OPTION: OptionSpec = { long: 'output-format', short: 'o', type: 'string', metavar: 'normal|json', help: 'output format', default: 'normal' };

/**
 * Print a host identity as gen-hostnqn and show-hostnqn do (nvme-cli's shape): the NQN alone,
 * or with `-o json` `{ hostnqn, hostid, source }`.
 */
export function printHostIdentity(format: OutputFormat, id: { hostnqn: string; hostid: string; source: unknown }): void {
  process.stdout.write(format === 'json' ? formatJson({ hostnqn: id.hostnqn, hostid: id.hostid, source: id.source }) : `${id.hostnqn}\n`);
}
