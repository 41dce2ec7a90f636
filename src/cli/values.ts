/**
 * Value parsers shared by the verbs: sizes with K/M/G/T suffixes and HOST:PORT pairs.
 * Each raises CLI_ERR_USAGE (exit 2) naming the option it was given for.
 */
import * as net from 'node:net';
import { usageError } from './args';

const SIZE_UNITS: Readonly<Record<string, number>> = { '': 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40 };

/** `512`, `64K`, `256M`, `1G` (powers of 1024). */
export function parseSizeArg(s: string, what: string): number {
  const m = /^(\d+)([KMGT]?)(?:i?B)?$/i.exec(s.trim());
  if (m === null) usageError(`${what} '${s}': expected a size such as 512M or 1G`);
  const n = Number(m[1]) * (SIZE_UNITS[(m[2] as string).toUpperCase()] as number);
  if (!Number.isSafeInteger(n) || n <= 0) usageError(`${what} '${s}': out of range`);
  return n;
}

/** `HOST:PORT` or `[V6]:PORT`. */
export function parseHostPort(s: string, what: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d+)$/.exec(s);
  if (m === null) usageError(`${what} '${s}': expected HOST:PORT`);
  const host = (m[1] ?? m[2]) as string;
  const port = Number(m[3]);
  if (port > 65535) usageError(`${what} '${s}': port out of range`);
  if (m[1] !== undefined && !net.isIPv6(host)) usageError(`${what} '${s}': bad IPv6 address`);
  return { host, port };
}

