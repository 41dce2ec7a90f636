/**
 * `nvmf-nbd gen-hostnqn`: print the host NQN derived for this machine, as `nvme gen-hostnqn`
 * does: from the DMI product UUID when it is real, else from an HMAC of /etc/machine-id (the
 * value nvme-cli built with systemd prints), else a random UUID (said on stderr). Nothing is
 * written; to pin it: `nvmf-nbd gen-hostnqn > /etc/nvme/hostnqn`.
 */
import { randomUUID } from 'node:crypto';
import type { Verb } from '../verb';
import { usageError } from '../args';
import { NQN_UUID_PREFIX, deriveHostNqn } from '../../controller/host-identity';
import { OUTPUT_FORMAT_OPTION, outputFormat, printHostIdentity } from '../output';

export const verb: Verb = {
  name: 'gen-hostnqn',
  summary: 'print a host NQN derived from this machine (DMI product UUID, else machine-id)',
  usage: 'nvmf-nbd gen-hostnqn [-o normal|json]',
  options: [OUTPUT_FORMAT_OPTION],
  async run(opts) {
    const format = outputFormat(opts['output-format'], usageError);
    const d = deriveHostNqn();
    const out = d ?? (() => {
      const uuid = randomUUID();
      return { hostnqn: `${NQN_UUID_PREFIX}${uuid}`, uuid, source: 'random' };
    })();
    if (d === undefined && format !== 'json') process.stderr.write('no DMI product UUID or machine-id: the NQN is random\n');
    printHostIdentity(format, { hostnqn: out.hostnqn, hostid: out.uuid, source: out.source });
    return 0;
  },
};
