/**
 * `nvmf-nbd connect-all -t tcp -a ADDR [-s 8009]`: read the discovery log and connect every NVM
 * subsystem entry on TCP. With a daemon running each connect is handed to it; without one, all
 * controllers are served in the foreground until SIGINT/SIGTERM.
 *
 * Without `-a` (nvme-cli behaviour) the entries come from `--config FILE`, else from
 * `/etc/nvme/discovery.conf` (discovery controllers) and `/etc/nvme/config.json` (subsystems
 * and discovery controllers); every entry is checked before anything is connected. `-p` (or an
 * entry's `persistent`) hands the discovery controller to the daemon, which keeps it connected
 * and follows the log's changes (`--disconnect-removed`). Exit status 1 when any entry failed.
 *
 * `--override-traddr/--override-trsvcid` replace each entry's advertised address: behind NAT or
 * port forwards (the QEMU guest advertises 10.0.2.15, which the host must not dial).
 */
import * as path from 'node:path';
import type { OptionSpec } from '../args';
import { usageError } from '../args';
import type { Verb } from '../verb';
import { discover } from '../../controller/discovery';
import { stateDir } from '../../config/state-dir';
import { ControlVerb } from '../../wire/control';
import { HANDOFF_OPTIONS, connectArgsForDaemon, daemonOrForeground } from '../daemon-client';
import type { ConnectResult } from '../daemon-client';
import { ControllerSession, parseNbdSpec } from '../../engine/session';
import { checkNbdEndpointArg } from '../nbd-tls-args';
import { protectFromOomKiller } from '../../engine/oom';
import { ErrorCode, NvmfNbdError } from '../../errors';
import { SubType, TrType } from '../../wire';
import { TcpSecType, Treq } from '../../wire/discovery-log';
import { tlsRequested } from '../tls-args';
import { ADDRESS_OPTIONS, DEFAULT_IO_PORT, absoluteSecretReferences, addressFromArgs, checkTos, controllerOptionsFromArgs, describeController, formatController, formatExports, ioPolicyFromArgs, nbdServerFromArgs, sourceAddressFromArgs, verb as connectVerb, withLinuxDefaults } from './connect';
import { groupBySubsystem } from '../../engine/topology';
import { pathKey } from '../../engine/daemon-args';
import { loadConfig, planEntries } from '../config-files';
import type { PlannedEntry } from '../config-files';
import { nvmeEtcDir } from '../../controller/host-identity';
import { formatConfigJson } from '../../config/config-json';
import { connectArgsParams } from '../../config/connect-args';
import type { ConfigParams } from '../../config/params';
import { DEFAULT_DISCOVERY_PORT, DISCOVERY_TIMEOUT_OPTION, RAW_OPTION, discoveryBudgetFromArgs, discoveryTls, secureChannel, writeRawLog } from './discover';
import { formatJson, outputFormat } from '../output';
import { waitForShutdownSignal } from '../signals';

/** Connect flags that come from the discovery entry or from the address flags here. */
const FROM_ENTRY = new Set(['raw', 'transport', 'traddr', 'trsvcid', 'nqn', 'hostnqn', 'hostid', 'hdr-digest', 'data-digest', 'output-format', ...HANDOFF_OPTIONS.map((o) => o.long)]);

function options(): OptionSpec[] {
  return [
    ...ADDRESS_OPTIONS.map((o) => (o.long === 'trsvcid' ? { ...o, help: 'discovery controller port', default: DEFAULT_DISCOVERY_PORT } : o)),
    { long: 'override-traddr', type: 'string', metavar: 'ADDR', help: "dial ADDR instead of each entry's advertised address (NAT, port forwards)" },
    { long: 'override-trsvcid', type: 'string', metavar: 'PORT', help: "dial PORT instead of each entry's advertised port" },
    RAW_OPTION,
    DISCOVERY_TIMEOUT_OPTION,
    { long: 'persistent', short: 'p', type: 'boolean', help: 'keep the discovery controller connected (in the daemon) and follow its log changes' },
    { long: 'disconnect-removed', type: 'boolean', help: 'with -p: disconnect controllers whose subsystem left the discovery log' },
    { long: 'config', type: 'string', metavar: 'FILE', help: 'read entries from FILE (config.json layout, or discovery.conf lines) instead of /etc/nvme' },
    { long: 'dump-config', type: 'boolean', help: 'print what is connected as config.json (libnvme layout, no secrets)' },
    ...connectVerb.options.filter((o) => !FROM_ENTRY.has(o.long)),
    ...HANDOFF_OPTIONS,
  ];
}

/** Options of the discovery controller itself (what add-discovery takes as `discovery`). */
export const DISCOVERY_KEYS = ['transport', 'traddr', 'trsvcid', 'nqn', 'hostnqn', 'hostid', 'hdr-digest', 'data-digest', 'host-traddr', 'host-iface', 'reconnect-delay', 'ctrl-loss-tmo', 'override-traddr', 'override-trsvcid', 'dhchap-secret', 'dhchap-ctrl-secret'];

export function pick(o: Record<string, unknown>, keys: readonly string[]): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const k of keys) if (o[k] !== undefined) out[k] = o[k];
  return out;
}

/**
 * The entries to run: the command line's discovery controller, or the config files' entries
 * (each checked; the first bad one stops everything with its CFG_ERR_* code and location).
 */
export function connectAllPlan(opts: Record<string, unknown>, etcDir?: string): PlannedEntry[] {
  if (typeof opts.traddr === 'string') return [{ where: 'command line', kind: 'discovery', args: opts, persistent: opts.persistent === true }];
  const cfg = loadConfig({ ...(typeof opts.config === 'string' ? { file: opts.config } : {}), ...(etcDir !== undefined ? { etcDir } : {}) });
  if (cfg.entries.length === 0) {
    usageError(`-a/--traddr is required (no entries in ${cfg.files.length > 0 ? cfg.files.join(', ') : `${nvmeEtcDir()}/discovery.conf or config.json`})`);
  }
  const known = new Set(connectVerb.options.map((o) => o.long));
  // The command line's connect flags (and the overrides, for discovery entries) under each entry.
  const rest = pick(opts, [...known, 'override-traddr', 'override-trsvcid'].filter((k) => !['traddr', 'trsvcid', 'nqn'].includes(k)));
  return planEntries(cfg.entries, known, rest, (kind, args) => {
    args.trsvcid ??= kind === 'discovery' ? DEFAULT_DISCOVERY_PORT : DEFAULT_IO_PORT;
    if (kind === 'io') controllerOptionsFromArgs(args);
    else {
      const a = addressFromArgs(args);
      checkTos(args);
      sourceAddressFromArgs(args, a.traddr);
    }
  }).map((p) => ({ ...p, persistent: p.persistent || (p.kind === 'discovery' && opts.persistent === true) }));
}

/** Read the log of one (non-persistent) discovery entry: its NVM/TCP entries as connect options. */
async function discoverEntry(opts: Record<string, unknown>, p: PlannedEntry): Promise<Array<Record<string, unknown>>> {
  const a = addressFromArgs(p.args);
  const hostTraddr = sourceAddressFromArgs(p.args, a.traddr);
  const log = await discover({
    traddr: a.traddr, trsvcid: a.trsvcid, hostnqn: a.hostnqn, hostid: a.hostid, hdgst: a.hdgst, ddgst: a.ddgst,
    ...(a.dhchap !== undefined ? { dhchap: a.dhchap } : {}),
    ...(hostTraddr !== undefined ? { hostTraddr } : {}),
    ...(typeof p.args.nqn === 'string' ? { subnqn: p.args.nqn } : {}),
    overrideTraddr: typeof opts['override-traddr'] === 'string' ? opts['override-traddr'] : undefined,
    overrideTrsvcid: typeof opts['override-trsvcid'] === 'string' ? opts['override-trsvcid'] : undefined,
    // --timeout bounds the whole discovery; --io-timeout (a connect flag) each of its commands.
    ...discoveryBudgetFromArgs(opts),
    ...discoveryTls(p.args, a.hostnqn),
  });
  writeRawLog(opts, log);
  // An entry whose port requires a secure channel is connected over TLS or not at all (never
  // plain); one that offers TLS as optional uses it when TLS flags are given.
  const entries = log.entries.filter((e) => {
    if (e.subtype !== SubType.NVM || e.trtype !== TrType.TCP) return false;
    const required = (e.treq & 3) === Treq.REQUIRED || (e.tsas[0] === TcpSecType.TLS13 && (e.treq & 3) === Treq.NOT_SPECIFIED);
    if (required && !tlsRequested(p.args)) {
      process.stderr.write(`${e.subnqn}: the port requires a secure channel (${secureChannel(e)}); give --tls or --tls-key (${ErrorCode.TLS_REQUIRED})\n`);
      return false;
    }
    return true;
  });
  if (entries.length === 0 && opts.quiet !== true) process.stderr.write(`${p.where}: the discovery log of ${a.traddr}:${a.trsvcid} has no NVM subsystem on TCP\n`);
  // The discovery entry's identity (hostnqn/hostid) goes with every subsystem it lists.
  return entries.map((e) => entryConnectOptions({ ...p.args, hostnqn: a.hostnqn, hostid: a.hostid }, e));
}

/** The connect options for one discovery entry. */
export function entryConnectOptions(opts: Record<string, unknown>, e: { traddr: string; trsvcid: string; subnqn: string }): Record<string, unknown> {
  const port = Number(e.trsvcid);
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new NvmfNbdError(ErrorCode.INVALID_ARGUMENT, `entry ${e.subnqn}: trsvcid '${e.trsvcid}' is not a TCP port`);
  const out: Record<string, unknown> = {};
  const known = new Set(connectVerb.options.map((o) => o.long));
  for (const [k, v] of Object.entries(opts)) if (known.has(k) && v !== undefined && !['traddr', 'trsvcid', 'nqn'].includes(k)) out[k] = v;
  return { ...out, transport: 'tcp', traddr: e.traddr, trsvcid: port, nqn: e.subnqn };
}

export const verb: Verb = {
  name: 'connect-all',
  summary: 'connect every NVM subsystem of a discovery log (through the daemon when one runs)',
  usage: 'nvmf-nbd connect-all [-t tcp -a ADDR [-s 8009]] [--config FILE] [-p [--disconnect-removed]] [-r FILE] [--override-traddr ADDR] [--override-trsvcid PORT] [connect flags] [--dump-config] [--quiet] [--foreground] [-o normal|json]',
  get options() {
    return options();
  },
  async run(opts) {
    absoluteSecretReferences(opts);
    const format = outputFormat(opts['output-format'], usageError);
    const quiet = opts.quiet === true;
    const plan = connectAllPlan(opts);
    const persistent = plan.filter((p) => p.kind === 'discovery' && p.persistent);
    const client = opts.foreground === true && persistent.length === 0 ? undefined : await daemonOrForeground(opts, stateDir(), 'connecting in the foreground');
    if (client === undefined && persistent.length > 0) {
      throw new NvmfNbdError(ErrorCode.DAEMON_UNAVAILABLE, `persistent discovery (${persistent[0]?.where ?? ''}) is kept by the daemon: start 'nvmf-nbd daemon' (nvmf-nbd.service) first`);
    }
    let failed = 0;
    const say = (m: string): void => {
      if (!quiet) process.stderr.write(`${m}\n`);
    };
    const perEntry: Array<Record<string, unknown>> = [];
    for (const p of plan) {
      if (p.kind === 'io') {
        const { 'override-traddr': _t, 'override-trsvcid': _s, ...io } = p.args;
        perEntry.push(io);
        continue;
      }
      if (p.persistent) continue;
      try {
        perEntry.push(...await discoverEntry(opts, p));
      } catch (err) {
        // One discovery controller (the command line's): its error is the verb's error.
        if (plan.length === 1) throw err;
        failed++;
        process.stderr.write(`${p.where}: ${(err as Error).message} (${(err as { code?: string }).code ?? 'error'})\n`);
      }
    }
    if (plan.length === 1 && plan[0]?.persistent !== true && perEntry.length === 0 && failed === 0) return 1;
    if (client !== undefined) {
      const results: unknown[] = [];
      try {
        for (const p of persistent) {
          try {
            const r = (await client.request(ControlVerb.ADD_DISCOVERY, {
              discovery: pick(connectArgsForDaemon(p.args), DISCOVERY_KEYS),
              connect: connectArgsForDaemon(templateOf(p.args)),
              persistent: true,
              disconnectRemoved: opts['disconnect-removed'] === true,
            })) as { name: string; existing?: boolean; controllers: string[] };
            results.push(r);
            if (format !== 'json' && !quiet && opts['dump-config'] !== true) {
              process.stdout.write(`${r.name}: persistent discovery ${String(p.args.traddr)}:${String(p.args.trsvcid)}${r.existing === true ? ' (already running)' : ''}; controllers: ${r.controllers.join(' ') || '-'}\n`);
            }
          } catch (err) {
            failed++;
            process.stderr.write(`${p.where}: ${(err as Error).message} (${(err as { code?: string }).code ?? 'error'})\n`);
          }
        }
        for (const o of perEntry) {
          try {
            const r = (await client.request(ControlVerb.CONNECT, connectArgsForDaemon(o))) as ConnectResult;
            results.push(r.json);
            if (r.existing === true) say(`${String(o.nqn)}: already connected as ${r.name}`);
            else if (r.addedPath === true) say(`${String(o.nqn)}: path ${r.path ?? ''} (${String(o.traddr)}:${String(o.trsvcid)}) added to ${r.name}`);
            else if (format !== 'json' && !quiet && opts['dump-config'] !== true) process.stdout.write(`${r.name}: ${String(o.nqn)}\n${r.text}\n`);
          } catch (err) {
            failed++;
            process.stderr.write(`${String(o.nqn)}: ${(err as Error).message} (${(err as { code?: string }).code ?? 'error'})\n`);
          }
        }
        if (opts['dump-config'] === true) {
          const l = (await client.request(ControlVerb.LIST)) as { controllers: Array<{ args?: Record<string, unknown>; hostnqn?: string }> };
          process.stdout.write(dumpConfig(l.controllers.map((c) => ({ ...(c.args ?? {}), ...(c.hostnqn !== undefined && c.args?.hostnqn === undefined ? { hostnqn: c.hostnqn } : {}) }))));
        } else if (format === 'json') {
          process.stdout.write(formatJson({ controllers: results }));
        }
      } finally {
        client.close();
      }
      return failed === 0 ? 0 : 1;
    }
    if (perEntry.length === 0) return 1;
    return foreground(opts, perEntry, format, failed);
  },
};

/** The connect options for the subsystems a discovery entry finds (its address keys removed). */
function templateOf(args: Record<string, unknown>): Record<string, unknown> {
  const known = new Set(connectVerb.options.map((o) => o.long));
  const out: Record<string, unknown> = {};
  const skip = new Set(['transport', 'traddr', 'trsvcid', 'nqn', 'output-format', ...HANDOFF_OPTIONS.map((o) => o.long)]);
  for (const [k, v] of Object.entries(args)) if (known.has(k) && !skip.has(k) && v !== undefined) out[k] = v;
  return out;
}

/** config.json text for a list of connect options. */
export function dumpConfig(list: ReadonlyArray<Record<string, unknown>>): string {
  return formatConfigJson(list.map((a) => ({ params: connectArgsParams(a) as ConfigParams })));
}

/**
 * The entries grouped by subsystem (NQN + host NQN): one session per subsystem, the other
 * addresses of it its paths (one export per namespace). `-D` keeps each entry apart.
 */
export function subsystemsOf(perEntry: ReadonlyArray<Record<string, unknown>>): Array<{ nqn: string; hostnqn: string; paths: Array<Record<string, unknown>> }> {
  return groupBySubsystem(perEntry, (o) => controllerOptionsFromArgs(o).hostnqn, (o) => pathKey({ ...o, hostnqn: controllerOptionsFromArgs(o).hostnqn }), (o) => o['duplicate-connect'] === true);
}

/** No daemon: serve every entry from this process until a signal. */
async function foreground(opts: Record<string, unknown>, perEntry: Array<Record<string, unknown>>, format: 'normal' | 'json', failedBefore: number): Promise<number> {
  const nbdArg = typeof opts.nbd === 'string' ? opts.nbd : `unix:${path.join(stateDir(), 'nbd')}`;
  checkNbdEndpointArg(nbdArg, opts);
  const nbd = parseNbdSpec(nbdArg);
  const groups = subsystemsOf(perEntry);
  if ('tcp' in nbd && nbd.tcp.port !== 0 && groups.length > 1) usageError('--nbd tcp:HOST:PORT with several subsystems in the foreground: use port 0 or a daemon');
  if (opts.attach === true) protectFromOomKiller();
  const signalled = waitForShutdownSignal();
  const sessions: ControllerSession[] = [];
  const connected: Array<Record<string, unknown>> = [];
  let failed = failedBefore;
  // Controller names: one per path; a subsystem's session takes the name of its first path.
  let next = 0;
  for (const g of groups) {
    const [o, ...more] = g.paths as [Record<string, unknown>, ...Array<Record<string, unknown>>];
    const { format: _f, ...copts } = controllerOptionsFromArgs(o);
    let s: ControllerSession;
    try {
      const name = `nvme${next++}`;
      s = await ControllerSession.open({
        name, controller: withLinuxDefaults(copts), iopolicy: ioPolicyFromArgs(o), nbd, attach: o.attach === true,
        connections: typeof o.connections === 'number' ? o.connections : 1, readOnly: o['read-only'] === true,
        nbdServer: nbdServerFromArgs(o),
        log: (m) => process.stderr.write(`${m}\n`),
      });
      sessions.push(s);
      connected.push({ ...o, hostnqn: copts.hostnqn, hostid: copts.hostid });
    } catch (err) {
      failed++;
      process.stderr.write(`${String(o.nqn)}: ${(err as Error).message} (${(err as { code?: string }).code ?? 'error'})\n`);
      // Its other addresses would be paths of a subsystem that is not there: each one a try of its own.
      if (more.length > 0) groups.splice(groups.indexOf(g) + 1, 0, { ...g, paths: more });
      continue;
    }
    for (const p of more) {
      const { format: _pf, ...popts } = controllerOptionsFromArgs(p);
      const name = `nvme${next++}`;
      try {
        await s.addPath(name, withLinuxDefaults(popts));
        connected.push({ ...p, hostnqn: popts.hostnqn, hostid: popts.hostid });
        if (opts.quiet !== true) process.stderr.write(`${String(p.nqn)}: path ${name} (${String(p.traddr)}:${String(p.trsvcid)}) added to ${s.name}\n`);
      } catch (err) {
        failed++;
        process.stderr.write(`${String(p.nqn)} at ${String(p.traddr)}:${String(p.trsvcid)}: ${(err as Error).message} (${(err as { code?: string }).code ?? 'error'})\n`);
      }
    }
  }
  if (sessions.length === 0) return 1;
  if (opts['dump-config'] === true) process.stdout.write(dumpConfig(connected));
  else if (opts.quiet === true) { /* nothing but errors */ } else process.stdout.write(format === 'json'
    ? formatJson({ controllers: sessions.map((s) => ({ ...s.describe(), namespaces: describeController(s.controller).namespaces })) })
    : sessions.map((s) => `${s.name}: ${formatController(s.controller)}\n${formatExports(s)}`).join('\n'));
  await signalled;
  for (const s of sessions) await s.close().catch((err: unknown) => process.stderr.write(`${s.name}: ${(err as Error).message}\n`));
  return failed === 0 ? 0 : 1;
}
