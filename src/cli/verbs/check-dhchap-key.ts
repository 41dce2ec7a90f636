/**
 * `nvmf-nbd check-dhchap-key --key DHHC-1:…`: validate a DH-HMAC-CHAP secret (hash indicator,
 * length, CRC-32) and print what nvme-cli's `nvme check-dhchap-key` prints. The key itself is
 * never echoed.
 */
import { usageError } from '../args';
import type { Verb } from '../verb';
import { crc32, parseDhchapKey } from '../../wire/dhchap';

export const verb: Verb = {
  name: 'check-dhchap-key',
  summary: 'check a DH-HMAC-CHAP secret (as nvme check-dhchap-key)',
  usage: 'nvmf-nbd check-dhchap-key --key DHHC-1:hh:BASE64:',
  options: [
    { long: 'key', short: 'k', type: 'string', metavar: 'DHHC-1:..', help: 'the DH-HMAC-CHAP secret to check' },
  ],
  run(opts, positionals) {
    if (positionals.length > 0) usageError(`unexpected argument '${positionals[0] as string}'`);
    if (typeof opts.key !== 'string' || opts.key === '') usageError('--key is required');
    const k = parseDhchapKey(opts.key);
    process.stdout.write(`Key is valid (HMAC ${k.hmac}, length ${k.key.length}, CRC ${crc32(k.key).toString(16).padStart(8, '0')})\n`);
    return Promise.resolve(0);
  },
};
