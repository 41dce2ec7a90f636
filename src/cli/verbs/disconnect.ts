/**
 * `nvmf-nbd disconnect -n SUBNQN | -d nvmeX | /dev/nbdX | -a ADDR [-s PORT] [-n SUBNQN]`: the
 * daemon detaches, drains, shuts down (CC.SHN) and forgets what is named (state file too).
 *
 * With multipath (issue 12) a subsystem has several paths, each a controller (`nvme0`,
 * `nvme1`, …): `-d nvmeX` and `-a ADDR [-s PORT]` remove that path only while others remain —
 * the namespaces keep their exports and /dev/nbdX, their I/O moves to the other paths — and the
 * subsystem with its last path. `-n SUBNQN` removes every path of the subsystem, and a
 * /dev/nbdX the whole subsystem serving it.
 */
import type { Verb } from '../verb';
import { usageError } from '../args';
import { stateDir } from '../../config/state-dir';
import { ControlVerb } from '../../wire/control';
import { CONTROL_OPTION, requestDaemon } from '../daemon-client';

/** The control request for disconnect's flags and positional. */
export function disconnectTarget(opts: Record<string, unknown>, positionals: readonly string[]): Record<string, string | number> {
  const given: Array<Record<string, string | number>> = [];
  if (typeof opts.traddr === 'string') {
    // One path (or the paths) at this address, of this subsystem when -n is given too.
    given.push({
      traddr: opts.traddr,
      ...(typeof opts.trsvcid === 'number' ? { trsvcid: opts.trsvcid } : {}),
      ...(typeof opts.nqn === 'string' ? { nqn: opts.nqn } : {}),
      ...(typeof opts['host-traddr'] === 'string' ? { 'host-traddr': opts['host-traddr'] } : {}),
    });
  } else {
    if (typeof opts.trsvcid === 'number' || typeof opts['host-traddr'] === 'string') usageError('-s/--trsvcid and -w/--host-traddr need -a/--traddr');
    if (typeof opts.nqn === 'string') given.push({ nqn: opts.nqn });
  }
  if (typeof opts.device === 'string') {
    const d = opts.device;
    given.push(/^\/dev\/nbd\d+$/.test(d) ? { device: d } : /^(nvme|disc)\d+$/.test(d) ? { name: d } : usageError(`-d/--device: '${d}' is neither nvmeX, discX nor /dev/nbdX`));
  }
  for (const p of positionals) {
    given.push(/^\/dev\/nbd\d+$/.test(p) ? { device: p } : /^(nvme|disc)\d+$/.test(p) ? { name: p } : usageError(`'${p}' is neither nvmeX, discX nor /dev/nbdX`));
  }
  if (given.length !== 1) usageError('give exactly one of -n SUBNQN, -d nvmeX|discX, /dev/nbdX, or -a ADDR [-s PORT] [-n SUBNQN]');
  return given[0] as Record<string, string | number>;
}

export const verb: Verb = {
  name: 'disconnect',
  summary: 'detach and close a subsystem of the daemon, or one of its paths',
  usage: 'nvmf-nbd disconnect -n SUBNQN | -d nvmeX | /dev/nbdX | -a ADDR [-s PORT] [-n SUBNQN] [-w HOST_ADDR] [--control PATH]',
  options: [
    { long: 'nqn', short: 'n', type: 'string', metavar: 'SUBNQN', help: 'disconnect every path of this subsystem (with -a: only its paths at that address)' },
    { long: 'device', short: 'd', type: 'string', metavar: 'nvmeX', help: 'disconnect this controller — one path of a multipath subsystem — (or the subsystem serving /dev/nbdX)' },
    { long: 'traddr', short: 'a', type: 'string', metavar: 'ADDR', help: 'disconnect the path(s) at this target address' },
    { long: 'trsvcid', short: 's', type: 'int', metavar: 'PORT', min: 1, max: 65535, help: 'with -a: the target port' },
    { long: 'host-traddr', short: 'w', type: 'string', metavar: 'ADDR', help: 'with -a: the path from this source address' },
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
