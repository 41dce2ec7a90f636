/**
 * `nvmf-nbd list [-o json]`: the daemon's controllers with their state, namespaces, NBD
 * endpoints, /dev/nbdX devices and per-queue counters.
 */
import type { Verb } from '../verb';
import { usageError } from '../args';
import { stateDir } from '../../config/state-dir';
import { ControlVerb } from '../../wire/control';
import { CONTROL_OPTION, requestDaemon } from '../daemon-client';
import { formatBytes, formatJson, formatTable, outputFormat } from '../output';
import { dumpConfig } from './connect-all';
import type { TopologyNamespacePath, TopologyPath } from '../../engine/topology';

interface ListedExport {
  name?: string; nsid?: number; size?: number; blockSize?: number; endpoint?: string; device?: string | null;
  ids?: { nguid?: string; eui64?: string; uuid?: string }; stableId?: string; link?: string;
  /** This namespace on each path (multipath, issue 12). */
  paths?: TopologyNamespacePath[];
}
interface ListedQueue { qid?: number; commands?: number; bytesIn?: number; bytesOut?: number; errors?: number; inFlight?: number; waiting?: number; sqFlowControl?: boolean; c2hSuccess?: number; c2hSuccessWithSqFlow?: number }
interface ListedController {
  name?: string; state?: string; subnqn?: string; traddr?: string; trsvcid?: number; cntlid?: number; model?: string;
  reconnects?: number; lastError?: { code?: string; message?: string } | null; exports?: ListedExport[];
  queues?: { admin?: ListedQueue; io?: ListedQueue[] };
  args?: Record<string, unknown>; hostnqn?: string;
  /** The subsystem's paths (controllers), and its path selection policy. */
  paths?: TopologyPath[]; iopolicy?: string;
}

interface ListedDiscovery {
  name?: string; state?: string; traddr?: string; trsvcid?: number; genctr?: number | null; notices?: number; reconnects?: number;
  referrals?: string[]; controllers?: string[]; persistent?: boolean; notify?: boolean | null; lastError?: { code?: string; message?: string } | null;
}

function cell(v: unknown): string {
  return v === undefined || v === null ? '-' : String(v);
}

/** Reads completed by C2HData SUCCESS; those that came while SQ flow control was on (SPDK) in parentheses. */
function c2hSuccessCell(q: ListedQueue): string {
  if (q.c2hSuccess === undefined) return '-';
  return q.c2hSuccessWithSqFlow !== undefined && q.c2hSuccessWithSqFlow > 0 ? `${q.c2hSuccess} (${q.c2hSuccessWithSqFlow} with SQ flow)` : String(q.c2hSuccess);
}

/** Human table of the daemon's discovery controllers (empty string when there are none). */
export function formatDiscoveryList(ds: readonly ListedDiscovery[]): string {
  if (ds.length === 0) return '';
  return `\n${formatTable(['DISCOVERY', 'STATE', 'ADDRESS', 'GENCTR', 'AEN', 'NOTICES', 'RECONNECTS', 'REFERRALS', 'CONTROLLERS'], ds.map((d) => [
    cell(d.name), cell(d.state), `${cell(d.traddr)}:${cell(d.trsvcid)}`, cell(d.genctr), d.notify === true ? 'yes' : d.notify === false ? 'poll' : '-',
    cell(d.notices ?? 0), cell(d.reconnects ?? 0), (d.referrals ?? []).join(',') || '-', (d.controllers ?? []).join(',') || '-',
  ]))}`;
}

/** Human rendering of the daemon's list result. */
export function formatList(controllers: readonly ListedController[]): string {
  if (controllers.length === 0) return 'no controllers\n';
  const rows = controllers.map((c) => [
    cell(c.name), cell(c.state), cell(c.subnqn), `${cell(c.traddr)}:${cell(c.trsvcid)}`, cell(c.cntlid), cell(c.reconnects ?? 0), cell(c.model),
  ]);
  let out = formatTable(['NAME', 'STATE', 'SUBNQN', 'ADDRESS', 'CNTLID', 'RECONNECTS', 'MODEL'], rows);
  for (const c of controllers) {
    if (c.lastError !== undefined && c.lastError !== null) out += `\n${cell(c.name)}: last error: ${cell(c.lastError.message)} (${cell(c.lastError.code)})\n`;
    const ex = c.exports ?? [];
    if (ex.length > 0) {
      out += `\n${formatTable(['EXPORT', 'NSID', 'SIZE', 'LBA', 'NBD ENDPOINT', 'DEVICE', 'STABLE ID', 'LINK'], ex.map((e) => [
        cell(e.name), cell(e.nsid), e.size !== undefined ? formatBytes(e.size) : '-', cell(e.blockSize), cell(e.endpoint), cell(e.device),
        cell(e.stableId), cell(e.link),
      ]))}`;
      for (const e of ex) {
        const ids = e.ids ?? {};
        const parts = [ids.uuid !== undefined ? `UUID ${ids.uuid}` : '', ids.nguid !== undefined ? `NGUID ${ids.nguid}` : '', ids.eui64 !== undefined ? `EUI-64 ${ids.eui64}` : ''].filter((x) => x !== '');
        if (parts.length > 0) out += `  ${cell(e.name)}: ${parts.join(', ')}\n`;
      }
    }
    const ps = c.paths ?? [];
    if (ps.length > 0) {
      out += `\n${cell(c.name)}: ${ps.length} path${ps.length === 1 ? '' : 's'}${c.iopolicy !== undefined ? `, iopolicy ${c.iopolicy}` : ''}\n`;
      out += formatTable(['PATH', 'ADDRESS', 'STATE', 'CNTLID', 'RECONNECTS'], ps.map((p) => [
        cell(p.name), `${cell(p.traddr)}:${cell(p.trsvcid)}${p.hostTraddr !== undefined ? ` from ${p.hostTraddr}` : ''}`, cell(p.state), cell(p.cntlid), cell(p.reconnects),
      ]));
      const nps = ex.flatMap((e) => (e.paths ?? []).map((np) => [e, np] as const));
      if (nps.length > 0) {
        out += `\n${formatTable(['EXPORT', 'PATH', 'ANA', 'CURRENT', 'IN FLIGHT', 'READS', 'WRITES'], nps.map(([e, np]) => [
          cell(e.name), cell(np.path), cell(np.anaState), np.current ? 'yes' : '-', cell(np.inFlight), cell(np.reads), cell(np.writes),
        ]))}`;
      }
    }
    const qs = [...(c.queues?.admin !== undefined ? [c.queues.admin] : []), ...(c.queues?.io ?? [])];
    if (qs.length > 0) {
      out += `\n${formatTable(['QID', 'COMMANDS', 'IN FLIGHT', 'WAITING', 'BYTES IN', 'BYTES OUT', 'ERRORS', 'SQ FLOW', 'C2H SUCCESS'], qs.map((q) => [
        cell(q.qid), cell(q.commands), cell(q.inFlight), cell(q.waiting), cell(q.bytesIn), cell(q.bytesOut), cell(q.errors),
        q.sqFlowControl === undefined ? '-' : q.sqFlowControl ? 'on' : 'off', c2hSuccessCell(q),
      ]))}`;
    }
  }
  return out;
}

export const verb: Verb = {
  name: 'list',
  summary: "list the daemon's controllers, namespaces, NBD endpoints, devices and queue counters",
  usage: 'nvmf-nbd list [-o normal|json] [--control PATH]',
  options: [
    { long: 'output-format', short: 'o', type: 'string', metavar: 'normal|json', help: 'output format', default: 'normal' },
    { long: 'dump-config', type: 'boolean', help: 'print the connected controllers as config.json (libnvme layout, no secrets)' },
    CONTROL_OPTION,
  ],
  async run(opts) {
    const format = outputFormat(opts['output-format'], usageError);
    const r = (await requestDaemon(opts, stateDir(), ControlVerb.LIST)) as { controllers: ListedController[]; discovery?: ListedDiscovery[] };
    if (opts['dump-config'] === true) {
      process.stdout.write(dumpConfig(r.controllers.map((c) => ({ ...(c.args ?? {}), ...(c.hostnqn !== undefined && c.args?.hostnqn === undefined ? { hostnqn: c.hostnqn } : {}) }))));
      return 0;
    }
    process.stdout.write(format === 'json' ? formatJson(r) : formatList(r.controllers) + formatDiscoveryList(r.discovery ?? []));
    return 0;
  },
};
