/**
 * The TLS key tools, like nvme-cli 2.13's (same inputs → same key and identity text):
 *
 *   gen-tls-key    a configured PSK in interchange format, random or from --secret HEX;
 *                  --insert derives the TLS PSK for --hostnqn/--subsysnqn and stores it
 *   check-tls-key  validate a key (CRC-32) and print the PSK identity it gives; --insert stores it
 *   tls-key        --export / --import / --revoke ID on the key store (nvme-cli's key file format)
 *
 * The key store replaces the kernel keyring Node cannot reach (see src/tls/keystore.ts).
 * Only gen-tls-key prints key material, and only the configured key it was asked to make.
 */
import * as fs from 'node:fs';
import { randomBytes } from 'node:crypto';
import type { OptionSpec } from '../args';
import { usageError } from '../args';
import type { Verb } from '../verb';
import { loadHostIdentity } from '../../controller/host-identity';
import { stateDir } from '../../config/state-dir';
import { deriveTlsPsk, formatInterchangeKey, parseInterchangeKey } from '../../tls/psk';
import type { IdentityVersion, InterchangeKey, PskHmac } from '../../tls/psk';
import { readSecretFile } from '../../tls/keystore';
import { keyStoreFromArgs } from '../tls-args';

const KEYRING: OptionSpec = { long: 'keyring', short: 'k', type: 'string', metavar: 'FILE', help: 'key store file (default STATE_DIR/tls-keys, mode 0600)' };
const KEYTYPE: OptionSpec = { long: 'keytype', short: 't', type: 'string', metavar: 'psk', help: 'key type (only psk)', default: 'psk' };
const HOSTNQN: OptionSpec = { long: 'hostnqn', short: 'n', type: 'string', metavar: 'NQN', help: 'host NQN for the retained key (default /etc/nvme/hostnqn)' };
const SUBSYSNQN: OptionSpec = { long: 'subsysnqn', short: 'c', type: 'string', metavar: 'NQN', help: 'subsystem NQN for the retained key' };
const IDENTITY: OptionSpec = { long: 'identity', short: 'I', type: 'int', min: 0, max: 255, metavar: '0|1', help: 'TLS identity version (0 = NVMe TCP 1.0c, 1 = NVMe TCP 2.0)', default: 0 };
const INSERT: OptionSpec = { long: 'insert', short: 'i', type: 'boolean', help: 'derive the TLS PSK and insert it into the key store' };

function checkKeytype(opts: Record<string, unknown>): void {
  if (opts.keytype !== 'psk') usageError(`-t/--keytype: '${String(opts.keytype)}' is not supported (only psk)`);
}

function identityVersion(opts: Record<string, unknown>): IdentityVersion {
  const v = opts.identity as number;
  if (v > 1) usageError(`Invalid TLS identity version ${v}`);
  return v as IdentityVersion;
}

function hostnqnOf(opts: Record<string, unknown>): string {
  return typeof opts.hostnqn === 'string' ? opts.hostnqn : loadHostIdentity({ stateDir: stateDir() }).hostnqn;
}

/** Derive and store; prints the identity it was stored under (never the key). */
function insert(opts: Record<string, unknown>, k: InterchangeKey, version: IdentityVersion): void {
  const subnqn = opts.subsysnqn as string;
  const p = deriveTlsPsk(k, hostnqnOf(opts), subnqn, version);
  const store = keyStoreFromArgs(opts);
  store.insert(p);
  p.psk.fill(0);
  process.stdout.write(`Inserted TLS key '${p.identity}' into ${store.file}\n`);
}

/** Parse --secret as nvme-cli does: hex pairs, exactly keyLen bytes (excess is skipped with a note). */
function secretBytes(hex: string, keyLen: number): Buffer {
  const out: number[] = [];
  for (let i = 0; i < hex.length; i += 2) {
    const pair = hex.slice(i, i + 2);
    if (!/^[0-9a-fA-F]{1,2}$/.test(pair)) usageError('Invalid secret (not hexadecimal)');
    if (i >= keyLen * 2) {
      process.stderr.write('Skipping excess secret bytes\n');
      break;
    }
    out.push(parseInt(pair, 16));
  }
  if (out.length !== keyLen) usageError(`Invalid key length (${out.length} bytes)`);
  return Buffer.from(out);
}

export const genVerb: Verb = {
  name: 'gen-tls-key',
  summary: 'generate a TLS PSK in NVMe PSK interchange format (like nvme gen-tls-key)',
  usage: 'nvmf-nbd gen-tls-key [-s HEX] [-m 1|2] [-n HOSTNQN] [-c SUBSYSNQN] [-I 0|1] [-i] [-k FILE]',
  options: [
    KEYRING, KEYTYPE, HOSTNQN, SUBSYSNQN,
    { long: 'secret', short: 's', type: 'string', metavar: 'HEX', help: 'the key bytes in hex (default random)' },
    { long: 'hmac', short: 'm', type: 'int', min: 0, max: 255, metavar: '1|2', help: 'hash of the retained key (1 = SHA-256, 2 = SHA-384)', default: 1 },
    IDENTITY, INSERT,
  ],
  async run(opts) {
    checkKeytype(opts);
    const hmac = opts.hmac as number;
    if (hmac < 1 || hmac > 2) usageError(`Invalid HMAC identifier ${hmac}`);
    const version = identityVersion(opts);
    if (opts.insert === true && typeof opts.subsysnqn !== 'string') usageError('No subsystem NQN specified');
    const keyLen = hmac === 2 ? 48 : 32;
    const key = typeof opts.secret === 'string' ? secretBytes(opts.secret, keyLen) : randomBytes(keyLen);
    // nvme-cli exports the key with the hash its length implies (nvme_export_tls_key).
    process.stdout.write(`${formatInterchangeKey(key, keyLen === 48 ? 2 : 1)}\n`);
    if (opts.insert === true) insert(opts, { version: 1, hmac: hmac as PskHmac, key }, version);
    key.fill(0);
    return 0;
  },
};

export const checkVerb: Verb = {
  name: 'check-tls-key',
  summary: 'validate a TLS PSK (interchange format) and print its PSK identity (like nvme check-tls-key)',
  usage: 'nvmf-nbd check-tls-key -d KEY|FILE -c SUBSYSNQN [-n HOSTNQN] [-I 0|1] [-i] [-k FILE]',
  options: [
    KEYRING, KEYTYPE, HOSTNQN, SUBSYSNQN,
    { long: 'keydata', short: 'd', type: 'string', metavar: 'KEY|FILE', help: 'the key (interchange format), inline or in a 0600 file' },
    IDENTITY, INSERT,
  ],
  async run(opts) {
    checkKeytype(opts);
    if (typeof opts.keydata !== 'string') usageError('No key data');
    const version = identityVersion(opts);
    const text = opts.keydata.startsWith('NVMeTLSkey-') ? opts.keydata : readSecretFile(opts.keydata, '--keydata file');
    const k = parseInterchangeKey(text);
    if (typeof opts.subsysnqn !== 'string') usageError('Need to specify a subsystem NQN');
    if (opts.insert === true) {
      insert(opts, k, version);
    } else {
      const p = deriveTlsPsk(k, hostnqnOf(opts), opts.subsysnqn, version);
      p.psk.fill(0);
      process.stdout.write(`${p.identity}\n`);
    }
    k.key.fill(0);
    return 0;
  },
};

export const verb: Verb = {
  name: 'tls-key',
  summary: 'export, import or revoke the TLS PSKs of the key store (like nvme tls-key)',
  usage: 'nvmf-nbd tls-key --export|--import|--revoke ID [-f FILE] [-k FILE]',
  options: [
    KEYRING, KEYTYPE,
    { long: 'keyfile', short: 'f', type: 'string', metavar: 'FILE', help: 'file to export to (made 0600) or import from (default stdout/stdin)' },
    { long: 'import', short: 'i', type: 'boolean', help: 'import every "<identity> <key>" line into the key store' },
    { long: 'export', short: 'e', type: 'boolean', help: 'export the key store as "<identity> <key>" lines' },
    { long: 'revoke', short: 'r', type: 'string', metavar: 'ID', help: 'remove the key with this identity' },
  ],
  async run(opts) {
    checkKeytype(opts);
    const n = [opts.import === true, opts.export === true, typeof opts.revoke === 'string'].filter(Boolean).length;
    if (n !== 1) usageError('Must specify either --import, --export or --revoke');
    const store = keyStoreFromArgs(opts);
    const file = typeof opts.keyfile === 'string' ? opts.keyfile : undefined;
    if (opts.export === true) {
      const text = store.exportText();
      if (file === undefined) process.stdout.write(text);
      else {
        fs.writeFileSync(file, text, { mode: 0o600 });
        fs.chmodSync(file, 0o600);
      }
      return 0;
    }
    if (opts.import === true) {
      const text = file === undefined ? fs.readFileSync(0, 'utf8') : readSecretFile(file, '--keyfile');
      const count = store.importText(text);
      process.stderr.write(`imported ${count} key(s) into ${store.file}\n`);
      return 0;
    }
    const id = opts.revoke as string;
    if (!store.revoke(id)) {
      process.stderr.write(`Failed to revoke key '${id}': not in ${store.file}\n`);
      return 1;
    }
    return 0;
  },
};
