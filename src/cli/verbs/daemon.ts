/**
 * `nvmf-nbd daemon`: the long-running engine. Owns every controller, answers the CLI on the
 * control socket, keeps the state file, and runs in the foreground (systemd `Type=simple`,
 * container entrypoint) until SIGTERM/SIGINT; then detaches, drains, shuts the controllers down
 * (CC.SHN), removes the control socket and exits 0.
 */
import * as path from 'node:path';
import type { OptionSpec } from '../args';
import type { Verb } from '../verb';
import { stateDir } from '../../controller/host-identity';
import { CONTROL_OPTION, controlSocketPath } from '../../engine/control';
import { Daemon, parseDaemonNbdSpec } from '../../engine/daemon';
import type { ConnectBinding } from '../../engine/daemon';
import type { ControllerSession } from '../../engine/session';
import { protectFromOomKiller } from '../../engine/oom';
import { waitForShutdownSignal } from '../signals';
import { controllerOptionsFromArgs, describeController, formatController, formatExports, verb as connectVerb, withLinuxDefaults } from './connect';

const OPTIONS: readonly OptionSpec[] = [
  CONTROL_OPTION,
  { long: 'nbd', type: 'string', metavar: 'unix:DIR|tcp:HOST:BASEPORT', help: 'default NBD endpoints: a 0700 directory of 0600 sockets, or loopback TCP where nvmeN listens on BASEPORT+N (default unix:STATE_DIR/nbd)' },
  { long: 'keep-attached', type: 'boolean', help: 'on shutdown leave /dev/nbdX attached (a restarted daemon adopts them)' },
];

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
    render(s: ControllerSession) {
      return {
        text: `${formatController(s.controller)}\n${formatExports(s)}`,
        json: { ...s.describe(), namespaces: describeController(s.controller).namespaces },
      };
    },
  };
}

export const verb: Verb = {
  name: 'daemon',
  summary: 'run the engine that owns all controllers, with its control socket (foreground)',
  usage: 'nvmf-nbd daemon [--control PATH] [--nbd unix:DIR|tcp:HOST:BASEPORT] [--keep-attached]',
  options: OPTIONS,
  async run(opts) {
    const dir = stateDir();
    const nbd = parseDaemonNbdSpec(typeof opts.nbd === 'string' ? opts.nbd : `unix:${path.join(dir, 'nbd')}`);
    protectFromOomKiller();
    // Listen for signals before anything can print "ready" (scripts signal right after).
    const signalled = waitForShutdownSignal();
    const d = await Daemon.start({
      stateDir: dir,
      controlPath: controlSocketPath(opts.control, dir),
      nbd,
      keepAttached: opts['keep-attached'] === true,
      connect: connectBinding(),
      log: (m) => process.stderr.write(`${m}\n`),
    });
    const where = 'unixDir' in nbd ? `unix:${nbd.unixDir}` : `tcp:${nbd.tcp.host}:${nbd.tcp.basePort}+N`;
    process.stdout.write(`nvmf-nbd daemon ready: control ${d.controlPath}, state ${d.stateFile}, nbd ${where}\n`);
    const sig = await signalled;
    process.stderr.write(`${sig}: shutting down\n`);
    await d.shutdown();
    return 0;
  },
};
