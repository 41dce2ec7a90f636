/**
 * `nvmf-nbd gen-dhchap-key`: print a new DH-HMAC-CHAP secret, same inputs → same output as
 * nvme-cli's `nvme gen-dhchap-key` (`DHHC-1:hh:<base64(key || crc32)>:`). With `--hmac` 1..3
 * the key is transformed with the NQN (`--nqn`, default this host's NQN) as nvme-cli does.
 */
import { usageError } from '../args';
import type { Verb } from '../verb';
import { formatDhchapKey, generateDhchapKey } from '../../wire/dhchap';
import { loadHostIdentity } from '../../controller/host-identity';
import { stateDir } from '../../config/state-dir';

export const verb: Verb = {
  name: 'gen-dhchap-key',
  summary: 'generate a DH-HMAC-CHAP secret for in-band authentication (as nvme gen-dhchap-key)',
  usage: 'nvmf-nbd gen-dhchap-key [--secret HEX] [--key-length 32|48|64] [--hmac 0..3] [--nqn NQN]',
  options: [
    { long: 'secret', short: 's', type: 'string', metavar: 'HEX', help: 'secret in hexadecimal to use instead of random bytes' },
    { long: 'key-length', short: 'l', type: 'int', metavar: '32|48|64', min: 1, max: 1024, help: 'key length in bytes (default 32, or the length of the hash)' },
    { long: 'hmac', short: 'm', type: 'int', metavar: '0..3', min: 0, max: 3, help: 'transform the key with HMAC: 0 none, 1 SHA-256, 2 SHA-384, 3 SHA-512', default: 0 },
    { long: 'nqn', short: 'n', type: 'string', metavar: 'NQN', help: 'NQN the key is transformed with (default this host\'s NQN)' },
  ],
  run(opts, positionals) {
    if (positionals.length > 0) usageError(`unexpected argument '${positionals[0] as string}'`);
    let secret: Buffer | undefined;
    if (typeof opts.secret === 'string') {
      if (!/^([0-9a-fA-F]{2})+$/.test(opts.secret)) usageError('--secret must be an even number of hexadecimal digits');
      secret = Buffer.from(opts.secret, 'hex');
    }
    const hmac = opts.hmac as number;
    const nqn = typeof opts.nqn === 'string' ? opts.nqn : hmac > 0 ? loadHostIdentity({ stateDir: stateDir() }).hostnqn : undefined;
    const key = generateDhchapKey({
      ...(secret !== undefined ? { secret } : {}),
      ...(typeof opts['key-length'] === 'number' ? { keyLength: opts['key-length'] } : {}),
      hmac,
      ...(nqn !== undefined ? { nqn } : {}),
    });
    process.stdout.write(`${formatDhchapKey(key)}\n`);
    return Promise.resolve(0);
  },
};
