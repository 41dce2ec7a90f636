/**
 * `nvmf-nbd show-hostnqn`: print the host NQN every connect presents (as `nvme show-hostnqn`):
 * /etc/nvme/hostnqn, else the one kept in the state directory, else the derived one.
 * `-o json` adds the host ID and where each came from.
 */
import type { Verb } from '../verb';
import { usageError } from '../args';
import { loadHostIdentity } from '../../controller/host-identity';
import { stateDir } from '../../config/state-dir';
import { OUTPUT_FORMAT_OPTION, outputFormat, printHostIdentity } from '../output';

export const verb: Verb = {
  name: 'show-hostnqn',
  summary: 'print the host NQN (and with -o json the host ID and their sources) connects use',
  usage: 'nvmf-nbd show-hostnqn [-o normal|json]',
  options: [OUTPUT_FORMAT_OPTION],
  async run(opts) {
    const format = outputFormat(opts['output-format'], usageError);
    const id = loadHostIdentity({ stateDir: stateDir() });
    printHostIdentity(format, id);
    return 0;
  },
};
