/**
 * Printers shared by the verbs: aligned human tables, `key : value` listings (as nvme-cli prints
 * Identify data) and JSON that survives bigints and Buffers.
 */

/** One row of cells; every cell is already text. */
export type Row = readonly string[];

/** Render an aligned table with a header row and a dashed rule, like `nvme list`. */
export function formatTable(headers: Row, rows: readonly Row[]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (r: Row): string => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i] ?? 0))).join('  ').trimEnd();
  const rule = widths.map((w) => '-'.repeat(w)).join('  ');
  return [line(headers), rule, ...rows.map(line)].join('\n') + '\n';
}

/** Render `key : value` lines with the keys padded to one column. */
export function formatFields(fields: ReadonlyArray<readonly [string, string | number | bigint | boolean]>): string {
  const w = Math.max(0, ...fields.map(([k]) => k.length));
  return fields.map(([k, v]) => `${k.padEnd(w)} : ${typeof v === 'number' && Number.isInteger(v) && k !== 'nsid' ? formatNumber(v) : String(v)}`).join('\n') + '\n';
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
