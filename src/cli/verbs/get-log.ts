/**
 * `nvmf-nbd get-log nvmeX --log-id ID --log-len N`: Get Log Page through the daemon's admin
 * queue of a connected controller, printed as nvme-cli does (hex dump), as JSON, or raw.
 */
import type { Verb } from '../verb';
import { usageError } from '../args';
import { stateDir } from '../../config/state-dir';
import { ControlVerb } from '../../wire/control';
import { CONTROL_OPTION, requestDaemon } from '../daemon-client';
import { MAX_PASSTHRU_DATA } from '../../engine/daemon-admin';
import { formatJson } from '../output';

/** nvme-cli style hex dump: offset, 16 bytes in hex, printable ASCII. */
export function hexDump(b: Buffer): string {
  const lines = ['       0  1  2  3  4  5  6  7  8  9  a  b  c  d  e  f'];
  for (let off = 0; off < b.length; off += 16) {
    const row = b.subarray(off, Math.min(b.length, off + 16));
    const hex = [...row].map((x) => x.toString(16).padStart(2, '0')).join(' ');
    const text = [...row].map((x) => (x >= 0x20 && x < 0x7f ? String.fromCharCode(x) : '.')).join('');
    lines.push(`${off.toString(16).padStart(4, '0')}: ${hex.padEnd(47)} "${text}"`);
  }
  return `${lines.join('\n')}\n`;
}

/** `nvmeX` as the first positional, or a usage error. */
export function controllerName(positionals: readonly string[]): string {
  const name = positionals[0];
  if (name === undefined || !/^nvme\d+$/.test(name) || positionals.length > 1) usageError('expected one controller name nvmeX (see nvmf-nbd list)');
  return name;
}

/** `-o normal|json|binary`. */
export function dataFormat(opts: Record<string, unknown>): 'normal' | 'json' | 'binary' {
  if (opts['raw-binary'] === true) return 'binary';
  const f = opts['output-format'];
  if (f === undefined || f === 'normal' || f === 'json' || f === 'binary') return (f ?? 'normal') as 'normal' | 'json' | 'binary';
  return usageError(`-o/--output-format: '${String(f)}' is not one of normal, json, binary`);
}

export const verb: Verb = {
  name: 'get-log',
  summary: 'read a log page of a connected controller (through the daemon)',
  usage: 'nvmf-nbd get-log nvmeX -i LOG_ID -l LEN [-n NSID] [-s LSP] [--lpo OFFSET] [-r] [-b] [-o normal|json|binary]',
  options: [
    { long: 'log-id', short: 'i', type: 'int', metavar: 'ID', min: 0, max: 255, help: 'log page identifier (required)' },
    { long: 'log-len', short: 'l', type: 'int', metavar: 'LEN', min: 4, max: MAX_PASSTHRU_DATA, help: 'bytes to read, a multiple of 4 (required)' },
    { long: 'namespace-id', short: 'n', type: 'int', metavar: 'NSID', min: 0, max: 0xffffffff, help: 'namespace (default 0xffffffff: controller-wide)' },
    { long: 'lsp', short: 's', type: 'int', metavar: 'LSP', min: 0, max: 127, help: 'log specific field', default: 0 },
    { long: 'lpo', type: 'int', metavar: 'OFFSET', min: 0, help: 'log page offset in bytes', default: 0 },
    { long: 'rae', short: 'r', type: 'boolean', help: 'retain asynchronous event' },
    { long: 'raw-binary', short: 'b', type: 'boolean', help: 'write the raw log to stdout' },
    { long: 'output-format', short: 'o', type: 'string', metavar: 'normal|json|binary', help: 'output format', default: 'normal' },
    CONTROL_OPTION,
  ],
  positionals: true,
  async run(opts, positionals) {
    const name = controllerName(positionals);
    const format = dataFormat(opts);
    const lid = opts['log-id'];
    const len = opts['log-len'];
    if (typeof lid !== 'number') usageError('-i/--log-id is required');
    if (typeof len !== 'number') usageError('-l/--log-len is required');
    if (len % 4 !== 0) usageError('-l/--log-len must be a multiple of 4');
    const nsid = typeof opts['namespace-id'] === 'number' ? opts['namespace-id'] : 0xffffffff;
    const r = (await requestDaemon(opts, stateDir(), ControlVerb.GET_LOG, {
      name, lid, len, nsid, lsp: opts.lsp, offset: opts.lpo, rae: opts.rae === true,
    })) as { data: string };
    const data = Buffer.from(r.data, 'base64');
    if (format === 'binary') process.stdout.write(data);
    else if (format === 'json') process.stdout.write(formatJson({ name, logId: lid, namespaceId: nsid, length: data.length, data: data.toString('hex') }));
    else process.stdout.write(`Device:${name} log_id:0x${lid.toString(16).padStart(2, '0')} namespace_id:0x${nsid.toString(16)}\n${hexDump(data)}`);
    return 0;
  },
};
