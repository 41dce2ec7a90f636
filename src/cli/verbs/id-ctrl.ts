/**
 * `nvmf-nbd id-ctrl`: connect the admin queue of a controller, print Identify Controller, close.
 * (With the daemon, a later issue lets it name an already connected `nvmeX`.)
 */
import type { OptionSpec } from '../args';
import type { Verb } from '../verb';
import { Controller } from '../../controller/controller';
import { ADDRESS_OPTIONS, addressFromArgs, requireString } from './connect';
import { formatFields, formatJson } from '../output';

/** Connection flags of the admin-only verbs: `--nqn` plus the address flags. */
export function adminVerbOptions(nqnShort: boolean): OptionSpec[] {
  return [
    ...ADDRESS_OPTIONS.slice(0, 3),
    nqnShort
      ? { long: 'nqn', short: 'n', type: 'string', metavar: 'SUBNQN', help: 'subsystem NQN (required)' }
      : { long: 'nqn', type: 'string', metavar: 'SUBNQN', help: 'subsystem NQN (required)' },
    ...ADDRESS_OPTIONS.slice(3),
  ];
}

/** Connect the admin queue only (no I/O queues, no keep-alive) for a one-shot admin verb. */
export async function connectAdminOnly(opts: Record<string, unknown>): Promise<{ ctrl: Controller; format: 'normal' | 'json' }> {
  const a = addressFromArgs(opts);
  const subnqn = requireString(opts, 'nqn', '--nqn');
  const ctrl = await Controller.connect({
    traddr: a.traddr, trsvcid: a.trsvcid, subnqn, hostnqn: a.hostnqn, hostid: a.hostid, hdgst: a.hdgst, ddgst: a.ddgst,
    nrIoQueues: 0, kato: 0,
  });
  return { ctrl, format: a.format };
}

export const verb: Verb = {
  name: 'id-ctrl',
  summary: 'print Identify Controller of a remote controller',
  usage: 'nvmf-nbd id-ctrl -t tcp -a ADDR [-s PORT] -n SUBNQN [-q HOSTNQN] [-I HOSTID] [-o normal|json]',
  options: adminVerbOptions(true),
  async run(opts) {
    const { ctrl, format } = await connectAdminOnly(opts);
    try {
      const id = ctrl.identify;
      if (format === 'json') {
        process.stdout.write(formatJson(id));
      } else {
        const fields = Object.entries(id).filter(([, v]) => typeof v !== 'object') as Array<[string, string | number | boolean]>;
        process.stdout.write(`NVMe Identify Controller (cntlid ${ctrl.cntlid}):\n` + formatFields(fields));
      }
      return 0;
    } finally {
      await ctrl.close();
    }
  },
};
