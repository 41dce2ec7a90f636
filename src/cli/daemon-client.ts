/**
 * The CLI side of the daemon: the `--control` option, and how verbs hand a request to a running
 * daemon (connect's handoff, or a verb that needs one) or stay in the foreground.
 */
import { ErrorCode, NvmfNbdError } from '../errors';
import type { OptionSpec } from './args';
import { ControlVerb } from '../wire/control';
import type { ControlVerbValue } from '../wire/control';
import { ControlClient, controlSocketPath } from '../engine/control-client';


/** `--control PATH`, shared by every verb that talks to the daemon. */
export const CONTROL_OPTION: OptionSpec = {
  long: 'control', type: 'string', metavar: 'PATH', help: 'daemon control socket (default $NVMF_NBD_CONTROL or STATE_DIR/control.sock)',
};

/** Options connect and connect-all add for the handoff. */
export const HANDOFF_OPTIONS: readonly OptionSpec[] = [
  { long: 'foreground', type: 'boolean', help: 'stay in the foreground even when a daemon is running' },
  CONTROL_OPTION,
];

/** Options that only steer the CLI and are not sent to the daemon. */
const CLI_ONLY = new Set(['control', 'foreground', 'output-format', 'quiet']);

/** The connect options as the daemon takes them: CLI-only options and absent values removed. */
export function connectArgsForDaemon(opts: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(opts)) if (!CLI_ONLY.has(k) && v !== undefined) out[k] = v;
  return out;
}

/** What the daemon answers to connect. */
export interface ConnectResult {
  readonly name: string;
  /** The foreground connect's human output. */
  readonly text: string;
  /** The foreground connect's `-o json` output. */
  readonly json: unknown;
  /** True when the subsystem was already connected over this path and that controller is the answer. */
  readonly existing?: boolean;
  /** True when the connect added a path to the subsystem `name` (another address of it). */
  readonly addedPath?: boolean;
  /** The new path's controller name, with addedPath. */
  readonly path?: string;
  /** Every path of the subsystem, with addedPath. */
  readonly paths?: string[];
}

/**
 * Open a client to the daemon, or resolve undefined (after saying so on stderr) when none runs,
 * so the caller stays in the foreground.
 */
export async function daemonOrForeground(opts: Record<string, unknown>, stateDirectory: string, what = 'staying in the foreground'): Promise<ControlClient | undefined> {
  const sock = controlSocketPath(opts.control, stateDirectory);
  try {
    return await ControlClient.connect(sock, 2000);
  } catch (err) {
    if (err instanceof NvmfNbdError && err.code === ErrorCode.DAEMON_UNAVAILABLE) {
      if (opts.quiet !== true) process.stderr.write(`no daemon running (${sock}); ${what}\n`);
      return undefined;
    }
    throw err;
  }
}

/**
 * The connect handoff (like FreeBSD's handoff ioctl): when a daemon answers on the control
 * socket, it takes the connection over and this resolves with its answer; with no daemon this
 * resolves undefined and the caller connects in the foreground.
 */
export async function handOffConnect(opts: Record<string, unknown>, stateDirectory: string): Promise<ConnectResult | undefined> {
  const c = await daemonOrForeground(opts, stateDirectory);
  if (c === undefined) return undefined;
  try {
    return (await c.request(ControlVerb.CONNECT, connectArgsForDaemon(opts))) as ConnectResult;
  } finally {
    c.close();
  }
}

/**
 * One request to the daemon for a verb that needs it (list, disconnect, get-log, …).
 * @throws CLI_ERR_DAEMON_UNAVAILABLE (with a hint to start one), or the daemon's error
 */
export async function requestDaemon(opts: Record<string, unknown>, stateDirectory: string, verb: ControlVerbValue, args: Record<string, unknown> = {}): Promise<unknown> {
  const sock = controlSocketPath(opts.control, stateDirectory);
  let c: ControlClient;
  try {
    c = await ControlClient.connect(sock, 2000);
  } catch (err) {
    if (err instanceof NvmfNbdError && err.code === ErrorCode.DAEMON_UNAVAILABLE) {
      throw new NvmfNbdError(ErrorCode.DAEMON_UNAVAILABLE, `no daemon running (${sock}): start one with 'nvmf-nbd daemon'`, { cause: err });
    }
    throw err;
  }
  try {
    return await c.request(verb, args);
  } finally {
    c.close();
  }
}
