/**
 * `nvmf-nbd admin-passthru nvmeX --opcode OP …`: send one admin command through the daemon's
 * admin queue of a connected controller, with nvme-cli's flags (`--cdw10`…, `--data-len`,
 * `--read`/`--write`, `--input-file`). Prints the completion's DW0 and the data read.
 */
import { promises as fsp } from 'node:fs';
import type { OptionSpec } from '../args';
import type { Verb } from '../verb';
import { usageError } from '../args';
import { stateDir } from '../../config/state-dir';
import { ControlVerb } from '../../wire/control';
import { CONTROL_OPTION, requestDaemon } from '../daemon-client';
import { MAX_PASSTHRU_DATA } from '../../engine/daemon-admin';
import { formatJson } from '../output';
import { controllerName, dataFormat, hexDump } from './get-log';

const U32 = 0xffffffff;

const OPTIONS: OptionSpec[] = [
  { long: 'opcode', short: 'O', type: 'int', metavar: 'OP', min: 0, max: 255, help: 'admin opcode (required)' },
  { long: 'namespace-id', short: 'n', type: 'int', metavar: 'NSID', min: 0, max: U32, help: 'namespace ID', default: 0 },
  { long: 'cdw2', type: 'int', metavar: 'N', min: 0, max: U32, help: 'command dword 2', default: 0 },
  { long: 'cdw3', type: 'int', metavar: 'N', min: 0, max: U32, help: 'command dword 3', default: 0 },
  ...[10, 11, 12, 13, 14, 15].map((i): OptionSpec => ({ long: `cdw${i}`, short: String(i - 6), type: 'int', metavar: 'N', min: 0, max: U32, help: `command dword ${i}`, default: 0 })),
  { long: 'data-len', short: 'l', type: 'int', metavar: 'LEN', min: 0, max: MAX_PASSTHRU_DATA, help: 'data transfer length in bytes', default: 0 },
  { long: 'read', short: 'r', type: 'boolean', help: 'the command reads data from the controller' },
  { long: 'write', short: 'w', type: 'boolean', help: 'the command writes data to the controller' },
  { long: 'input-file', short: 'i', type: 'string', metavar: 'FILE', help: 'data to write (default zeroes)' },
  { long: 'timeout', short: 't', type: 'int', metavar: 'MS', min: 1, max: 3_600_000, help: 'command timeout in milliseconds' },
  { long: 'raw-binary', short: 'b', type: 'boolean', help: 'write the data read to stdout, raw' },
  { long: 'output-format', short: 'o', type: 'string', metavar: 'normal|json|binary', help: 'output format', default: 'normal' },
  CONTROL_OPTION,
];

/** The control request for admin-passthru's flags (the input file already read). */
export function passthruRequest(name: string, opts: Record<string, unknown>, input: Buffer | undefined): Record<string, unknown> {
  const opcode = opts.opcode;
  if (typeof opcode !== 'number') usageError('-O/--opcode is required');
  if (opts.read === true && opts.write === true) usageError('give --read or --write, not both');
  const dataLen = opts['data-len'] as number;
  const req: Record<string, unknown> = { name, opcode, nsid: opts['namespace-id'], cdw2: opts.cdw2, cdw3: opts.cdw3, dataLen };
  for (let i = 10; i <= 15; i++) req[`cdw${i}`] = opts[`cdw${i}`];
  if (typeof opts.timeout === 'number') req.timeoutMs = opts.timeout;
  if (opts.write === true || (opts.read !== true && (opcode & 3) === 1)) {
    if (dataLen === 0 && input === undefined) usageError('a write needs --data-len or --input-file');
    let data = input ?? Buffer.alloc(dataLen);
    if (dataLen > 0 && data.length !== dataLen) {
      // nvme-cli sends exactly data-len bytes: pad a short file with zeroes, cut a long one.
      const b = Buffer.alloc(dataLen);
      data.copy(b, 0, 0, Math.min(data.length, dataLen));
      data = b;
    }
    if (data.length > MAX_PASSTHRU_DATA) usageError(`input larger than ${MAX_PASSTHRU_DATA} bytes`);
    req.direction = 'write';
    req.data = data.toString('base64');
    req.dataLen = data.length;
  } else if (opts.read === true || (opcode & 3) === 2) {
    if (dataLen === 0) usageError('a read needs --data-len');
    req.direction = 'read';
  } else {
    if (dataLen !== 0) usageError(`opcode 0x${opcode.toString(16)} transfers no data: add --read or --write`);
    req.direction = 'none';
  }
  return req;
}

export const verb: Verb = {
  name: 'admin-passthru',
  summary: 'send an admin command to a connected controller (through the daemon)',
  usage: 'nvmf-nbd admin-passthru nvmeX -O OPCODE [-n NSID] [--cdw10 N]... [-l LEN] [-r|-w] [-i FILE] [-b] [-o normal|json|binary]',
  options: OPTIONS,
  positionals: true,
  async run(opts, positionals) {
    const name = controllerName(positionals);
    const format = dataFormat(opts);
    const input = typeof opts['input-file'] === 'string' ? await fsp.readFile(opts['input-file']) : undefined;
    const req = passthruRequest(name, opts, input);
    const r = (await requestDaemon(opts, stateDir(), ControlVerb.ADMIN_PASSTHRU, req)) as { dw0: number; dw1: number; data: string | null };
    const data = r.data !== null ? Buffer.from(r.data, 'base64') : undefined;
    if (format === 'binary') {
      if (data !== undefined) process.stdout.write(data);
    } else if (format === 'json') {
      process.stdout.write(formatJson({ name, opcode: req.opcode, result: r.dw0, dw1: r.dw1, data: data?.toString('hex') ?? null }));
    } else {
      process.stdout.write(`NVMe command result:${(r.dw0 >>> 0).toString(16).padStart(8, '0')}\n${data !== undefined && data.length > 0 ? hexDump(data) : ''}`);
    }
    return 0;
  },
};
