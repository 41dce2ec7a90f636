/**
 * `nvmf-nbd daemon`: the long-running engine. Owns every controller, answers the CLI on the
 * control socket, keeps the state file, and runs in the foreground (systemd `Type=simple`,
 * container entrypoint) until SIGTERM/SIGINT; then detaches, drains, shuts the controllers down
 * (CC.SHN), removes the control socket and exits 0.
 */
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { loadConfig, planEntries } from '../config-files';
import type { PlannedEntry } from '../config-files';
import { DEFAULT_IO_PORT, addressFromArgs } from './connect';
import { DEFAULT_DISCOVERY_PORT } from './discover';
import type { OptionSpec } from '../args';
import type { Verb } from '../verb';
import { stateDir } from '../../config/state-dir';
import { controlSocketPath } from '../../engine/control-client';
import { CONTROL_OPTION } from '../daemon-client';
import { Daemon } from '../../engine/daemon';
import { parseDaemonNbdSpec } from '../../engine/daemon-entry';
import { runHolder } from '../../engine/holder';
import { usageError } from '../args';
import { parseNbdSpec } from '../../engine/session';
import type { ConnectBinding } from '../../engine/daemon';
import type { ControllerSession } from '../../engine/session';
import { protectFromOomKiller } from '../../engine/oom';
import { waitForShutdownSignal } from '../signals';
import { IOPOLICY_OPTION } from '../../config/option-spec';
import { controllerOptionsFromArgs, describeController, ioPolicyFromArgs, formatController, formatExports, nbdServerFromArgs, verb as connectVerb, withLinuxDefaults } from './connect';
import { NBD_SECURITY_KEYS, NBD_SECURITY_OPTIONS, absoluteNbdTlsPaths, checkNbdEndpointArg, nbdAccessFromArgs } from '../nbd-tls-args';

const OPTIONS: readonly OptionSpec[] = [
  CONTROL_OPTION,
  { long: 'nbd', type: 'string', metavar: 'unix:DIR|tcp:HOST:BASEPORT', help: 'default NBD endpoints: a 0700 directory of 0600 sockets, or loopback TCP where nvmeN listens on BASEPORT+N (default unix:STATE_DIR/nbd)' },
  { long: 'keep-attached', type: 'boolean', help: 'on shutdown leave /dev/nbdX attached (a restarted daemon adopts them)' },
  { long: 'sticky-nbd', type: 'boolean', help: 'NBD client connections survive a daemon restart or crash: a holder process per controller owns its endpoint (unix:DIR/nvmeN.sock, or tcp:HOST:BASEPORT+N); not with --nbd-tls' },
  { long: 'hold-time', type: 'int', metavar: 'SEC', min: 1, max: 31536000, help: 'with --sticky-nbd: how long a held connection waits for a daemon', default: 600 },
  // Internal: the holder process that --sticky-nbd starts.
  { long: 'holder', type: 'string', metavar: 'unix:PATH|tcp:HOST:PORT', help: '(internal) run as the NBD holder listening here' },
  { long: 'holder-backend', type: 'string', metavar: 'PATH', help: '(internal) the daemon socket a holder relays to' },
  { long: 'holder-pid-file', type: 'string', metavar: 'PATH', help: '(internal) where a holder records itself' },
  { long: 'config', type: 'string', metavar: 'FILE', help: 'connect the entries of FILE at start (config.json layout or discovery.conf lines) instead of /etc/nvme/discovery.conf and config.json' },
  { long: 'no-config', type: 'boolean', help: 'do not read any config file at start' },
  { long: 'attach', type: 'boolean', help: 'attach the namespaces of config-file entries as /dev/nbdX (containers, DaemonSets: no autoconnect unit there)' },
  { ...IOPOLICY_OPTION, help: 'multipath path selection of subsystems whose connect gives no --iopolicy (kept in the state file with them): numa (default), round-robin, queue-depth' },
  ...NBD_SECURITY_OPTIONS,
];

/**
 * Tell systemd we are ready (Type=notify). Node cannot send on the notify socket itself (no
 * unix datagram sockets), so `systemd-notify --ready` does it; as root `--pid` attributes the
 * message to us even after systemd-notify exits (the unit also sets NotifyAccess=all).
 */
function notifySystemd(status: string): void {
  if (process.env.NOTIFY_SOCKET === undefined || process.env.NOTIFY_SOCKET === '') return;
  const child = spawn('systemd-notify', ['--ready', `--pid=${process.pid}`, `--status=${status}`], { stdio: 'ignore' });
  child.on('error', (err) => process.stderr.write(`systemd-notify: ${err.message}\n`));
}

/** The daemon's view of the connect verb (its options, defaults and output). */
export function connectBinding(): ConnectBinding {
  const specs = connectVerb.options;
  return {
    specs,
    controllerOptions(args) {
      const withDefaults: Record<string, unknown> = {};
      for (const s of specs) if (s.default !== undefined) withDefaults[s.long] = s.default;
      const { format: _format, ...c } = controllerOptionsFromArgs({ ...withDefaults, ...args });
      return withLinuxDefaults(c);
    },
    nbdServerOptions(args) {
      const own = NBD_SECURITY_KEYS.some((k) => args[k] !== undefined && args[k] !== false);
      const { access, ...rest } = nbdServerFromArgs(args);
      return own ? { ...rest, access } : rest;
    },
    render(s: ControllerSession) {
      return {
        text: `${formatController(s.controller)}\n${formatExports(s)}`,
        json: { ...s.describe(), namespaces: describeController(s.controller).namespaces },
      };
    },
  };
}

/** The config entries the daemon applies at start (`--config FILE`, else the /etc/nvme files that exist). */
export function daemonConfigPlan(opts: Record<string, unknown>): PlannedEntry[] {
  const cfg = loadConfig(typeof opts.config === 'string' ? { file: opts.config } : {});
  const known = new Set(connectVerb.options.map((o) => o.long));
  return planEntries(cfg.entries, known, opts.attach === true ? { attach: true } : {}, (kind, args) => {
    args.trsvcid ??= kind === 'discovery' ? DEFAULT_DISCOVERY_PORT : DEFAULT_IO_PORT;
    args['output-format'] ??= 'normal';
    if (kind === 'io') controllerOptionsFromArgs({ ...args, transport: 'tcp' });
    else addressFromArgs({ transport: 'tcp', ...args });
  });
}

export const verb: Verb = {
  name: 'daemon',
  summary: 'run the engine that owns all controllers, with its control socket (foreground)',
  usage: 'nvmf-nbd daemon [--control PATH] [--nbd unix:DIR|tcp:HOST:BASEPORT] [--keep-attached] [--sticky-nbd [--hold-time SEC]] [--iopolicy numa|round-robin|queue-depth]',
  options: OPTIONS,
  async run(opts) {
    const holdMs = (opts['hold-time'] as number) * 1000;
    if (typeof opts.holder === 'string') {
      const h = opts.holder;
      const spec = h.startsWith('unix:') && h.length > 5 ? undefined : parseNbdSpec(h);
      if ((spec !== undefined && !('tcp' in spec)) || typeof opts['holder-backend'] !== 'string' || typeof opts['holder-pid-file'] !== 'string') {
        usageError('--holder unix:PATH|tcp:HOST:PORT needs --holder-backend and --holder-pid-file');
      }
      const listen = spec !== undefined && 'tcp' in spec ? spec.tcp : { unix: path.resolve(h.slice(5)) };
      await runHolder({
        listen, backend: opts['holder-backend'], pidFile: opts['holder-pid-file'], holdMs,
        ...(opts['nbd-allow-any-local-user'] === true ? { allowAnyLocalUser: true } : {}),
        signalled: waitForShutdownSignal(), log: (m) => process.stderr.write(`${new Date().toISOString()} ${m}\n`),
      });
      return 0;
    }
    const dir = stateDir();
    // The config is read and checked before anything starts: a bad file is a clear error and
    // nothing of it is applied.
    const plan = opts['no-config'] === true ? [] : daemonConfigPlan(opts);
    const nbdArg = typeof opts.nbd === 'string' ? opts.nbd : `unix:${path.join(dir, 'nbd')}`;
    absoluteNbdTlsPaths(opts);
    checkNbdEndpointArg(nbdArg, opts);
    const nbd = parseDaemonNbdSpec(nbdArg);
    // Loaded before anything starts: a loose key file is a clear error, not a half-started daemon.
    const nbdAccess = nbdAccessFromArgs(opts);
    const iopolicy = opts.iopolicy !== undefined ? ioPolicyFromArgs(opts) : undefined;
    protectFromOomKiller();
    // Listen for signals before anything can print "ready" (scripts signal right after).
    const signalled = waitForShutdownSignal();
    const d = await Daemon.start({
      stateDir: dir,
      controlPath: controlSocketPath(opts.control, dir),
      nbd,
      keepAttached: opts['keep-attached'] === true,
      nbdAccess,
      ...(iopolicy !== undefined ? { iopolicy } : {}),
      ...(opts['sticky-nbd'] === true ? { sticky: { command: [process.execPath, process.argv[1] as string], holdMs } } : {}),
      connect: connectBinding(),
      log: (m) => process.stderr.write(`${m}\n`),
    });
    const where = 'unixDir' in nbd ? `unix:${nbd.unixDir}` : `tcp:${nbd.tcp.host}:${nbd.tcp.basePort}+N`;
    d.applyConfig(plan);
    process.stdout.write(`nvmf-nbd daemon ready: control ${d.controlPath}, state ${d.stateFile}, nbd ${where}${plan.length > 0 ? `, ${plan.length} config entr${plan.length === 1 ? 'y' : 'ies'}` : ''}\n`);
    notifySystemd(`control ${d.controlPath}`);
    const sig = await signalled;
    process.stderr.write(`${sig}: shutting down\n`);
    await d.shutdown();
    return 0;
  },
};
