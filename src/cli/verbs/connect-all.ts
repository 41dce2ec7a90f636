/**
 * `nvmf-nbd connect-all -t tcp -a ADDR [-s 8009]`: read the discovery log and connect every NVM
 * subsystem entry on TCP. With a daemon running each connect is handed to it; without one, all
 * controllers are served in the foreground until SIGINT/SIGTERM.
 *
 * `--override-traddr/--override-trsvcid` replace each entry's advertised address: behind NAT or
 * port forwards (the QEMU guest advertises 10.0.2.15, which the host must not dial).
 */
import * as path from 'node:path';
import type { OptionSpec } from '../args';
import { usageError } from '../args';
import type { Verb } from '../verb';
import { discover } from '../../controller/discovery';
import { stateDir } from '../../controller/host-identity';
import { ControlVerb, HANDOFF_OPTIONS, connectArgsForDaemon, daemonOrForeground } from '../../engine/control';
import type { ConnectResult } from '../../engine/control';
import { ControllerSession, parseNbdSpec } from '../../engine/session';
import { protectFromOomKiller } from '../../engine/oom';
import { ErrorCode, NvmfNbdError } from '../../errors';
import { SubType, TrType } from '../../wire';
import { ADDRESS_OPTIONS, addressFromArgs, controllerOptionsFromArgs, describeController, formatController, formatExports, verb as connectVerb, withLinuxDefaults } from './connect';
import { DEFAULT_DISCOVERY_PORT, RAW_OPTION, writeRawLog } from './discover';
import { formatJson } from '../output';
import { waitForShutdownSignal } from '../signals';

/** Connect flags that come from the discovery entry or from the address flags here. */
const FROM_ENTRY = new Set(['raw', 'transport', 'traddr', 'trsvcid', 'nqn', 'hostnqn', 'hostid', 'hdr-digest', 'data-digest', 'output-format', ...HANDOFF_OPTIONS.map((o) => o.long)]);

function options(): OptionSpec[] {
  return [
    ...ADDRESS_OPTIONS.map((o) => (o.long === 'trsvcid' ? { ...o, help: 'discovery controller port', default: DEFAULT_DISCOVERY_PORT } : o)),
    { long: 'override-traddr', type: 'string', metavar: 'ADDR', help: "dial ADDR instead of each entry's advertised address (NAT, port forwards)" },
    { long: 'override-trsvcid', type: 'string', metavar: 'PORT', help: "dial PORT instead of each entry's advertised port" },
    RAW_OPTION,
    ...connectVerb.options.filter((o) => !FROM_ENTRY.has(o.long)),
    ...HANDOFF_OPTIONS,
  ];
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
  usage: 'nvmf-nbd connect-all -t tcp -a ADDR [-s 8009] [--override-traddr ADDR] [--override-trsvcid PORT] [connect flags] [--foreground] [-o normal|json]',
  get options() {
    return options();
  },
  async run(opts) {
    const a = addressFromArgs(opts);
    const log = await discover({
      traddr: a.traddr, trsvcid: a.trsvcid, hostnqn: a.hostnqn, hostid: a.hostid, hdgst: a.hdgst, ddgst: a.ddgst,
      ...(a.dhchap !== undefined ? { dhchap: a.dhchap } : {}),
      overrideTraddr: typeof opts['override-traddr'] === 'string' ? opts['override-traddr'] : undefined,
      overrideTrsvcid: typeof opts['override-trsvcid'] === 'string' ? opts['override-trsvcid'] : undefined,
    });
    writeRawLog(opts, log);
    const entries = log.entries.filter((e) => e.subtype === SubType.NVM && e.trtype === TrType.TCP);
    if (entries.length === 0) {
      process.stderr.write('the discovery log has no NVM subsystem on TCP\n');
      return 1;
    }
    const perEntry = entries.map((e) => entryConnectOptions(opts, e));
    const client = opts.foreground === true ? undefined : await daemonOrForeground(opts, stateDir(), 'connecting in the foreground');
    if (client !== undefined) {
      let failed = 0;
      const results: unknown[] = [];
      try {
        for (const o of perEntry) {
          try {
            const r = (await client.request(ControlVerb.CONNECT, connectArgsForDaemon(o))) as ConnectResult;
            results.push(r.json);
            if (a.format !== 'json') process.stdout.write(`${r.name}: ${String(o.nqn)}\n${r.text}\n`);
          } catch (err) {
            if (err instanceof NvmfNbdError && err.code === ErrorCode.ALREADY_CONNECTED) {
              process.stderr.write(`${String(o.nqn)}: ${err.message}\n`);
              continue;
            }
            failed++;
            process.stderr.write(`${String(o.nqn)}: ${(err as Error).message} (${(err as { code?: string }).code ?? 'error'})\n`);
          }
        }
      } finally {
        client.close();
      }
      if (a.format === 'json') process.stdout.write(formatJson({ controllers: results }));
      return failed === 0 ? 0 : 1;
    }
    return foreground(opts, perEntry, a.format);
  },
};

/** No daemon: serve every entry from this process until a signal. */
async function foreground(opts: Record<string, unknown>, perEntry: Array<Record<string, unknown>>, format: 'normal' | 'json'): Promise<number> {
  const nbdArg = typeof opts.nbd === 'string' ? opts.nbd : `unix:${path.join(stateDir(), 'nbd')}`;
  const nbd = parseNbdSpec(nbdArg);
  if ('tcp' in nbd && nbd.tcp.port !== 0 && perEntry.length > 1) usageError('--nbd tcp:HOST:PORT with several subsystems in the foreground: use port 0 or a daemon');
  if (opts.attach === true) protectFromOomKiller();
  const signalled = waitForShutdownSignal();
  const sessions: ControllerSession[] = [];
  let failed = 0;
  for (const o of perEntry) {
    const { format: _f, ...copts } = controllerOptionsFromArgs(o);
    try {
      const s = await ControllerSession.open({
        name: `nvme${sessions.length}`, controller: withLinuxDefaults(copts), nbd, attach: o.attach === true,
        connections: typeof o.connections === 'number' ? o.connections : 1, readOnly: o['read-only'] === true,
        log: (m) => process.stderr.write(`${m}\n`),
      });
      sessions.push(s);
    } catch (err) {
      failed++;
      process.stderr.write(`${String(o.nqn)}: ${(err as Error).message} (${(err as { code?: string }).code ?? 'error'})\n`);
    }
  }
  if (sessions.length === 0) return 1;
  process.stdout.write(format === 'json'
    ? formatJson({ controllers: sessions.map((s) => ({ ...s.describe(), namespaces: describeController(s.controller).namespaces })) })
    : sessions.map((s) => `${s.name}: ${formatController(s.controller)}\n${formatExports(s)}`).join('\n'));
  await signalled;
  for (const s of sessions) await s.close().catch((err: unknown) => process.stderr.write(`${s.name}: ${(err as Error).message}\n`));
  return failed === 0 ? 0 : 1;
}
