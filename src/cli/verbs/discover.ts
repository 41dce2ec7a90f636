/**
 * `nvmf-nbd discover`: read the discovery log of a discovery controller (port 8009 by default;
 * Linux nvmet also answers on its I/O port) and print its entries.
 */
import * as fs from 'node:fs';
import type { OptionSpec } from '../args';
import type { Verb } from '../verb';
import { ADRFAM_NAMES, DEFAULT_DISCOVERY_TIMEOUT_MS, SUBTYPE_NAMES, TRTYPE_NAMES, discover } from '../../controller/discovery';
import type { DiscoveryLog } from '../../controller/discovery';
import { ADDRESS_OPTIONS, addressFromArgs } from './connect';
import { ControlVerb } from '../../wire/control';
import { CONTROL_OPTION, connectArgsForDaemon, requestDaemon } from '../daemon-client';
import { stateDir } from '../../config/state-dir';
import { formatJson, formatTable } from '../output';
import { TLS_OPTIONS, tlsFromArgs } from '../tls-args';
import { DISCOVERY_NQN } from '../../embedded-target/target';

/** Default discovery port (IANA 8009). */
export const DEFAULT_DISCOVERY_PORT = 8009;

const TREQ_NAMES: Readonly<Record<number, string>> = { 0: 'not specified', 1: 'required', 2: 'not required' };

/** `--timeout SEC`: the whole discovery's budget (connect, log reads, retries). */
export const DISCOVERY_TIMEOUT_OPTION: OptionSpec = {
  long: 'timeout', type: 'int', metavar: 'SEC', min: 1, max: 4294967,
  help: 'budget for the whole discovery (connect, every log page read, retries)', default: DEFAULT_DISCOVERY_TIMEOUT_MS / 1000,
};

/** `--timeout` and `--io-timeout` (seconds) → the discover() budget options. */
export function discoveryBudgetFromArgs(opts: Record<string, unknown>): { timeoutMs?: number; ioTimeoutMs?: number } {
  const out: { timeoutMs?: number; ioTimeoutMs?: number } = {};
  if (typeof opts.timeout === 'number') out.timeoutMs = opts.timeout * 1000;
  if (typeof opts['io-timeout'] === 'number') out.ioTimeoutMs = opts['io-timeout'] * 1000;
  return out;
}

/** nvme-cli's `-r/--raw FILE`: the discovery log page as read, written to FILE (0644, replaced). */
export const RAW_OPTION: OptionSpec = { long: 'raw', short: 'r', type: 'string', metavar: 'FILE', help: 'also write the raw discovery log page to FILE (as nvme-cli)' };

const OPTIONS: readonly OptionSpec[] = [
  ...ADDRESS_OPTIONS.map((o) => (o.long === 'trsvcid' ? { ...o, default: DEFAULT_DISCOVERY_PORT } : o)),
  { long: 'override-traddr', type: 'string', metavar: 'ADDR', help: 'show ADDR instead of each entry\'s advertised address (NAT, port forwards)' },
  { long: 'override-trsvcid', type: 'string', metavar: 'PORT', help: 'show PORT instead of each entry\'s advertised port' },
  RAW_OPTION,
  { long: 'persistent', short: 'p', type: 'boolean', help: 'then keep the discovery controller connected in the daemon (KATO, log-change AEN; `list` shows it)' },
  CONTROL_OPTION,
  DISCOVERY_TIMEOUT_OPTION,
  { long: 'io-timeout', type: 'int', metavar: 'SEC', min: 1, max: 4294967, help: 'per-command timeout', default: 30 },
  ...TLS_OPTIONS,
];

/** TCP TSAS sectype names (nvme-cli's spelling). */
const SECTYPE_NAMES: Readonly<Record<number, string>> = { 0: 'none', 1: 'tls12', 2: 'tls13' };

/** The secure channel an entry asks for: "required, tls13", "not specified, none", … */
export function secureChannel(e: { treq: number; tsas: Buffer }): string {
  const sec = SECTYPE_NAMES[e.tsas[0] ?? 0] ?? String(e.tsas[0]);
  return `${TREQ_NAMES[e.treq & 3] ?? String(e.treq & 3)}, ${sec}`;
}

/** `--tls…` on a discovery verb: the PSK for the discovery NQN (the Linux host does the same). */
export function discoveryTls(opts: Record<string, unknown>, hostnqn: string): { tls?: NonNullable<ReturnType<typeof tlsFromArgs>> } {
  const tls = tlsFromArgs(opts, hostnqn, DISCOVERY_NQN);
  return tls === undefined ? {} : { tls };
}


/** Write the raw log for `-r/--raw` when asked. */
export function writeRawLog(opts: Record<string, unknown>, log: DiscoveryLog): void {
  if (typeof opts.raw !== 'string') return;
  fs.writeFileSync(opts.raw, log.raw ?? Buffer.alloc(0));
}

/** nvme-cli-like JSON of a discovery log. */
export function discoveryJson(log: DiscoveryLog): Record<string, unknown> {
  return {
    genctr: log.genctr,
    records: log.entries.map((e) => ({
      trtype: TRTYPE_NAMES[e.trtype] ?? String(e.trtype),
      adrfam: ADRFAM_NAMES[e.adrfam] ?? String(e.adrfam),
      subtype: SUBTYPE_NAMES[e.subtype] ?? String(e.subtype),
      treq: TREQ_NAMES[e.treq & 3] ?? String(e.treq),
      sectype: SECTYPE_NAMES[e.tsas[0] ?? 0] ?? String(e.tsas[0]),
      portid: e.portid,
      trsvcid: e.trsvcid,
      subnqn: e.subnqn,
      traddr: e.traddr,
      cntlid: e.cntlid,
      asqsz: e.asqsz,
    })),
  };
}

/** Human table of a discovery log. */
export function discoveryTable(log: DiscoveryLog): string {
  const rows = log.entries.map((e, i) => [
    String(i), TRTYPE_NAMES[e.trtype] ?? String(e.trtype), ADRFAM_NAMES[e.adrfam] ?? String(e.adrfam),
    SUBTYPE_NAMES[e.subtype] ?? String(e.subtype), String(e.portid), e.traddr, e.trsvcid, e.subnqn,
    TREQ_NAMES[e.treq & 3] ?? String(e.treq & 3), SECTYPE_NAMES[e.tsas[0] ?? 0] ?? String(e.tsas[0]),
  ]);
  return `Discovery Log Number of Records ${log.entries.length}, Generation counter ${log.genctr}\n` +
    formatTable(['#', 'TRTYPE', 'ADRFAM', 'SUBTYPE', 'PORTID', 'TRADDR', 'TRSVCID', 'SUBNQN', 'TREQ', 'SECTYPE'], rows);
}

export const verb: Verb = {
  name: 'discover',
  summary: 'read and print the discovery log of an NVMe/TCP discovery controller',
  usage: 'nvmf-nbd discover -t tcp -a ADDR [-s 8009] [-q HOSTNQN] [-I HOSTID] [-S SECRET [-C CTRL_SECRET]] [-g] [-G] [-r FILE] [-p] [-o normal|json]',
  options: OPTIONS,
  async run(opts) {
    const a = addressFromArgs(opts);
    const log = await discover({
      traddr: a.traddr, trsvcid: a.trsvcid, hostnqn: a.hostnqn, hostid: a.hostid, hdgst: a.hdgst, ddgst: a.ddgst,
      ...(a.dhchap !== undefined ? { dhchap: a.dhchap } : {}),
      overrideTraddr: typeof opts['override-traddr'] === 'string' ? opts['override-traddr'] : undefined,
      overrideTrsvcid: typeof opts['override-trsvcid'] === 'string' ? opts['override-trsvcid'] : undefined,
      ...discoveryBudgetFromArgs(opts),
      ...discoveryTls(opts, a.hostnqn),
    });
    writeRawLog(opts, log);
    process.stdout.write(a.format === 'json' ? formatJson(discoveryJson(log)) : discoveryTable(log));
    if (opts.persistent === true) {
      // nvme-cli leaves the kernel's discovery controller connected; here the daemon keeps it.
      const { DISCOVERY_KEYS, pick } = require('./connect-all') as typeof import('./connect-all');
      const r = (await requestDaemon(opts, stateDir(), ControlVerb.ADD_DISCOVERY, {
        discovery: pick(connectArgsForDaemon(opts), DISCOVERY_KEYS), connect: {}, persistent: true, watchOnly: true,
      })) as { name: string; existing?: boolean };
      process.stderr.write(`${r.name}: persistent discovery controller kept by the daemon${r.existing === true ? ' (already running)' : ''}\n`);
    }
    return 0;
  },
};
