/** `nvmf-nbd disconnect-all`: the daemon detaches and closes every controller. */
import type { Verb } from '../verb';
import { stateDir } from '../../config/state-dir';
import { ControlVerb } from '../../wire/control';
import { CONTROL_OPTION, requestDaemon } from '../daemon-client';

export const verb: Verb = {
  name: 'disconnect-all',
  summary: 'detach and close every controller of the daemon',
  usage: 'nvmf-nbd disconnect-all [--control PATH]',
  options: [CONTROL_OPTION],
  async run(opts) {
    const r = (await requestDaemon(opts, stateDir(), ControlVerb.DISCONNECT_ALL)) as { disconnected: string[] };
    process.stdout.write(`disconnected ${r.disconnected.length} controller(s)${r.disconnected.length > 0 ? `: ${r.disconnected.join(' ')}` : ''}\n`);
    return 0;
  },
};
