/**
 * `nvmf-nbd disconnect -n SUBNQN | -d nvmeX | /dev/nbdX`: the daemon detaches the controller's
 * devices, drains its NBD exports, shuts it down (CC.SHN) and forgets it (state file too).
 * A /dev/nbdX names the controller that serves it; the whole controller is disconnected.
 */
import type { Verb } from '../verb';
import { usageError } from '../args';
import { stateDir } from '../../config/state-dir';
import { ControlVerb } from '../../wire/control';
import { CONTROL_OPTION, requestDaemon } from '../daemon-client';

/** The control request for disconnect's flags and positional. */
export function disconnectTarget(opts: Record<string, unknown>, positionals: readonly string[]): Record<string, string> {
  const given: Array<Record<string, string>> = [];
  if (typeof opts.nqn === 'string') given.push({ nqn: opts.nqn });
  if (typeof opts.device === 'string') {
    const d = opts.device;
    given.push(/^\/dev\/nbd\d+$/.test(d) ? { device: d } : /^(nvme|disc)\d+$/.test(d) ? { name: d } : usageError(`-d/--device: '${d}' is neither nvmeX, discX nor /dev/nbdX`));
  }
  for (const p of positionals) {
    given.push(/^\/dev\/nbd\d+$/.test(p) ? { device: p } : /^(nvme|disc)\d+$/.test(p) ? { name: p } : usageError(`'${p}' is neither nvmeX, discX nor /dev/nbdX`));
  }
  if (given.length !== 1) usageError('give exactly one of -n SUBNQN, -d nvmeX|discX, or /dev/nbdX');
  return given[0] as Record<string, string>;
}

export const verb: Verb = {
  name: 'disconnect',
  summary: 'detach and close one controller of the daemon',
  usage: 'nvmf-nbd disconnect -n SUBNQN | -d nvmeX | /dev/nbdX [--control PATH]',
  options: [
    { long: 'nqn', short: 'n', type: 'string', metavar: 'SUBNQN', help: 'disconnect every controller of this subsystem' },
    { long: 'device', short: 'd', type: 'string', metavar: 'nvmeX', help: 'disconnect this controller (or the one serving /dev/nbdX)' },
    CONTROL_OPTION,
  ],
  positionals: true,
  async run(opts, positionals) {
    const target = disconnectTarget(opts, positionals);
    const r = (await requestDaemon(opts, stateDir(), ControlVerb.DISCONNECT, target)) as { disconnected: string[] };
    process.stdout.write(`disconnected ${r.disconnected.length} controller(s): ${r.disconnected.join(' ')}\n`);
    return 0;
  },
};
