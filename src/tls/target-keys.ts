/**
 * The embedded target's PSKs (`target --psk FILE`, mode 0600). One entry a line:
 *
 *   <hostnqn> NVMeTLSkey-1:01:…:      a configured PSK for that host: the target derives the TLS
 *                                     PSK for every subsystem it serves, identities v0 and v1
 *   NVMe0R01 <hostnqn> <subnqn> NVMeTLSkey-…   a derived TLS PSK under its identity (the format of
 *                                     `nvme tls-key --export` and of our key store)
 *
 * Lines starting with # and blank lines are ignored. The error for a bad line names its number only.
 */
import { ErrorCode, NvmfNbdError } from '../errors';
import { decodeStoreKey, parseStore, readSecretFile } from './keystore';
import { deriveTlsPsk, parseInterchangeKey } from './psk';

/** identity → TLS PSK for the given subsystems (and the discovery NQN). */
export function targetPskTable(text: string, subnqns: readonly string[], file = 'PSK file'): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  const identityLines: string[] = [];
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    if (line.startsWith('NVMe')) {
      identityLines.push(line);
      return;
    }
    const m = /^(\S+)\s+(NVMeTLSkey-\S+)$/.exec(line);
    if (m === null || !m[1]!.startsWith('nqn.')) {
      throw new NvmfNbdError(ErrorCode.TLS_KEY_INVALID, `${file}: line ${i + 1} is neither '<hostnqn> <key>' nor '<identity> <key>'`);
    }
    let k;
    try {
      k = parseInterchangeKey(m[2]!);
    } catch (err) {
      throw new NvmfNbdError(ErrorCode.TLS_KEY_INVALID, `${file}: line ${i + 1}: ${(err as Error).message}`);
    }
    for (const subnqn of subnqns) {
      for (const v of [0, 1] as const) {
        const p = deriveTlsPsk(k, m[1]!, subnqn, v);
        out.set(p.identity, p.psk);
      }
    }
    k.key.fill(0);
  });
  for (const e of parseStore(identityLines.join('\n'), file)) out.set(e.identity, decodeStoreKey(e.key));
  return out;
}

/** Read `--psk FILE` (refused unless 0600 and ours) into an identity → PSK table. */
export function loadTargetPsks(file: string, subnqns: readonly string[]): Map<string, Buffer> {
  return targetPskTable(readSecretFile(file, '--psk file'), subnqns, file);
}
