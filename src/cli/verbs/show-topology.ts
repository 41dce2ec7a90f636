/**
 * `nvmf-nbd show-topology [-o normal|json]` (nvme-cli's name): the daemon's subsystems, each
 * namespace (its one NBD export and /dev/nbdX) with its paths — address, controller state, ANA
 * state, commands in flight, I/O counts — and the path new I/O goes to now.
 */
import type { Verb } from '../verb';
import { usageError } from '../args';
import { stateDir } from '../../config/state-dir';
import { ControlVerb } from '../../wire/control';
import { CONTROL_OPTION, requestDaemon } from '../daemon-client';
import { escapeControl, formatBytes, formatJson, outputFormat } from '../output';
import type { TopologyNamespacePath, TopologyPath, TopologySubsystem } from '../../engine/topology';

/** `traddr=…,trsvcid=…[,host_traddr=…]` as nvme-cli prints an address. */
function address(p: TopologyPath): string {
  return `traddr=${escapeControl(p.traddr)},trsvcid=${p.trsvcid}${p.hostTraddr !== undefined ? `,host_traddr=${escapeControl(p.hostTraddr)}` : ''}`;
}

function pathLine(np: TopologyNamespacePath, p: TopologyPath | undefined, last: boolean): string {
  const counts = `in flight ${np.inFlight}, reads ${np.reads}, writes ${np.writes}`;
  const where = p !== undefined ? `tcp ${address(p)} ${p.state}` : 'gone';
  return `    ${last ? '`' : '+'}- ${escapeControl(np.path)} ${where} ${np.anaState}${np.current ? ' (current)' : ''}  ${counts}\n`;
}

/** Human rendering, after nvme-cli's show-topology tree. */
export function formatTopology(subsystems: readonly TopologySubsystem[]): string {
  if (subsystems.length === 0) return 'no subsystems\n';
  let out = '';
  for (const s of subsystems) {
    if (out !== '') out += '\n';
    out += `${escapeControl(s.name)} - NQN=${escapeControl(s.nqn)}\n`;
    out += `  hostnqn=${escapeControl(s.hostnqn)} iopolicy=${s.iopolicy} state=${s.state}\n`;
    const byName = new Map(s.paths.map((p) => [p.name, p]));
    out += '  paths:\n';
    for (const p of s.paths) {
      out += `    ${escapeControl(p.name)} tcp ${address(p)} ${p.state}${p.cntlid !== null ? ` cntlid ${p.cntlid}` : ''}${p.reconnects > 0 ? ` reconnects ${p.reconnects}` : ''}${p.lastError !== undefined ? ` (last error: ${escapeControl(p.lastError.message)})` : ''}\n`;
    }
    for (const ns of s.namespaces) {
      out += `  +- ns ${ns.nsid}: ${escapeControl(ns.export)} ${formatBytes(ns.size)}${ns.device !== null ? ` ${escapeControl(ns.device)}` : ''}${ns.heldWrites !== undefined && ns.heldWrites > 0 ? ` (${ns.heldWrites} writes held)` : ''}\n`;
      ns.paths.forEach((np, i) => { out += pathLine(np, byName.get(np.path), i === ns.paths.length - 1); });
    }
  }
  return out;
}

export const verb: Verb = {
  name: 'show-topology',
  summary: "the daemon's subsystems: each namespace with its paths, ANA states, I/O counts and current path",
  usage: 'nvmf-nbd show-topology [-o normal|json] [--control PATH]',
  options: [
    { long: 'output-format', short: 'o', type: 'string', metavar: 'normal|json', help: 'output format', default: 'normal' },
    CONTROL_OPTION,
  ],
  async run(opts) {
    const format = outputFormat(opts['output-format'], usageError);
    const r = (await requestDaemon(opts, stateDir(), ControlVerb.SHOW_TOPOLOGY)) as { subsystems: TopologySubsystem[] };
    process.stdout.write(format === 'json' ? formatJson(r) : formatTopology(r.subsystems));
    return 0;
  },
};
