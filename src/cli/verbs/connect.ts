/**
 * `nvmf-nbd connect`: connect one controller (admin + I/O queues), print it and its namespaces,
 * serve every namespace as an NBD export (`nvme0n1`, …), optionally attach them as /dev/nbdX, and
 * stay up until SIGINT/SIGTERM; then detach, drain NBD, and shut the controller down (CC.SHN).
 *
 * Also the home of the nvme-cli connection flags shared by id-ctrl, id-ns and list-ns.
 */
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { usageError } from '../args';
import type { OptionSpec } from '../args';
import type { Verb } from '../verb';
import { Controller } from '../../controller/controller';
import type { ControllerOptions, NamespaceInfo } from '../../controller/controller';
import type { ResilienceOptions } from '../../controller/resilient';
import { isUuid, loadHostIdentity } from '../../controller/host-identity';
import { stateDir } from '../../config/state-dir';
import { ControllerSession, parseNbdSpec, socketActivationFd } from '../../engine/session';
import { protectFromOomKiller } from '../../engine/oom';
import { formatEndpoint } from '../../nbd/server';
import type { NbdAccessPolicy } from '../../nbd/access';
import { NBD_SECURITY_OPTIONS, absoluteNbdTlsPaths, checkNbdEndpointArg, nbdAccessFromArgs, nbdTlsFilesFromArgs } from '../nbd-tls-args';
import { escapeControl, formatBytes, formatJson, formatTable, outputFormat } from '../output';
import type { OutputFormat } from '../output';
import { waitForShutdownSignal } from '../signals';
import { HANDOFF_OPTIONS, handOffConnect } from '../daemon-client';
import { ErrorCode, NvmfNbdError } from '../../errors';
import { describeOutcome, type AuthOutcome, type DhchapHostOptions } from '../../controller/auth';
import { loadDhchapSecret } from '../../controller/dhchap-secret';
import { TLS_OPTIONS, tlsArgsForHandoff, tlsFromArgs } from '../tls-args';
import { DEFAULT_IOPOLICY, IOPOLICY_OPTION, ioPolicyFromArg } from '../../config/option-spec';
import type { IoPolicyValue } from '../../config/option-spec';

/** Default NVMe/TCP I/O port (IANA 4420). */
export const DEFAULT_IO_PORT = 4420;

/** Address flags shared by every verb that dials a target. */
export const ADDRESS_OPTIONS: readonly OptionSpec[] = [
  { long: 'transport', short: 't', type: 'string', metavar: 'tcp', help: 'transport type (only tcp)', default: 'tcp' },
  { long: 'traddr', short: 'a', type: 'string', metavar: 'ADDR', help: 'target address (required)' },
  { long: 'trsvcid', short: 's', type: 'int', metavar: 'PORT', min: 1, max: 65535, help: 'target port', default: DEFAULT_IO_PORT },
  { long: 'hostnqn', short: 'q', type: 'string', metavar: 'NQN', help: 'host NQN (default /etc/nvme/hostnqn, else generated and kept)' },
  { long: 'hostid', short: 'I', type: 'string', metavar: 'UUID', help: 'host ID (default /etc/nvme/hostid, else generated and kept)' },
  { long: 'hdr-digest', short: 'g', type: 'boolean', help: 'enable the PDU header digest (CRC32C)' },
  { long: 'data-digest', short: 'G', type: 'boolean', help: 'enable the PDU data digest (CRC32C)' },
  { long: 'output-format', short: 'o', type: 'string', metavar: 'normal|json', help: 'output format', default: 'normal' },
  // nvme-cli's spellings. The value is a DHHC-1 secret or file:PATH (a 0600 file holding one).
  { long: 'dhchap-secret', short: 'S', type: 'string', metavar: 'DHHC-1:..|file:PATH', help: 'DH-HMAC-CHAP host secret for in-band authentication (inline, or file:PATH of a 0600 key file)' },
  { long: 'dhchap-ctrl-secret', short: 'C', type: 'string', metavar: 'DHHC-1:..|file:PATH', help: 'DH-HMAC-CHAP controller secret: the controller must authenticate itself too (needs -S)' },
];

/**
 * Make `file:PATH` secret references absolute (in place), so a daemon that takes the connection
 * over — whose working directory is not ours — and its state file name the same file.
 */
export function absoluteSecretReferences(opts: Record<string, unknown>): void {
  absoluteNbdTlsPaths(opts);
  for (const k of ['dhchap-secret', 'dhchap-ctrl-secret']) {
    const v = opts[k];
    if (typeof v === 'string' && v.startsWith('file:') && v.length > 5 && !path.isAbsolute(v.slice(5))) opts[k] = `file:${path.resolve(v.slice(5))}`;
  }
}

/**
 * -S/--dhchap-secret and -C/--dhchap-ctrl-secret → DH-HMAC-CHAP options (undefined without -S).
 * @throws CLI_ERR_USAGE for -C without -S; CFG_ERR_DHCHAP_KEY_INVALID for a bad key or key file
 */
export function dhchapFromArgs(opts: Record<string, unknown>): DhchapHostOptions | undefined {
  const s = opts['dhchap-secret'];
  const c = opts['dhchap-ctrl-secret'];
  if (typeof s !== 'string' || s === '') {
    if (typeof c === 'string' && c !== '') usageError('-C/--dhchap-ctrl-secret needs -S/--dhchap-secret');
    return undefined;
  }
  const secret = loadDhchapSecret(s, '-S/--dhchap-secret');
  if (typeof c !== 'string' || c === '') return { secret };
  return { secret, ctrlSecret: loadDhchapSecret(c, '-C/--dhchap-ctrl-secret') };
}

/** Controller flags of connect. */
export const CONTROLLER_OPTIONS: readonly OptionSpec[] = [
  { long: 'max-namespaces', type: 'int', metavar: 'N', min: 1, max: 1 << 20, help: 'serve at most N namespaces of the controller (the lowest NSIDs; the rest are skipped)', default: 4096 },
  { long: 'nr-io-queues', short: 'i', type: 'int', metavar: 'N', min: 1, max: 65535, help: 'number of I/O queues (default: CPU count, capped by the controller)' },
  { long: 'queue-size', short: 'Q', type: 'int', metavar: 'N', min: 2, max: 65536, help: 'I/O queue depth', default: 128 },
  { long: 'keep-alive-tmo', short: 'k', type: 'int', metavar: 'SEC', min: 0, max: 4294967, help: 'keep-alive timeout in seconds (connect needs ≥ 1: it makes the target drop a lost association before held writes are re-driven)', default: 5 },
  // Recovery (Linux nvme-fabrics reconnect_delay, ctrl_loss_tmo, fast_io_fail_tmo; nvme_core io_timeout).
  { long: 'reconnect-delay', short: 'c', type: 'int', metavar: 'SEC', min: 1, max: 86400, help: 'seconds between reconnect attempts after a lost connection', default: 10 },
  { long: 'ctrl-loss-tmo', short: 'l', type: 'int', metavar: 'SEC', min: -1, max: 31536000, help: 'give up reconnecting (I/O fails with EIO) after SEC; -1 = never', default: 600 },
  { long: 'fast-io-fail-tmo', short: 'F', aliases: ['fast_io_fail_tmo'], type: 'int', metavar: 'SEC', min: -1, max: 31536000, help: 'fail held I/O with EIO after SEC while reconnecting goes on; -1 = off (nvme-cli spelling --fast_io_fail_tmo too)', default: -1 },
  { long: 'io-timeout', type: 'int', metavar: 'SEC', min: 1, max: 4294967, help: 'per-command timeout; a timeout reconnects the controller', default: 30 },
  { long: 'disable-sqflow', type: 'boolean', help: 'ask the controller to disable SQ flow control (Connect CATTR bit 2; nvme-cli spelling)' },
  IOPOLICY_OPTION,
];

/**
 * `--iopolicy` of a connect (checked); absent → `fallback` (the daemon's, else numa).
 * @throws CLI_ERR_USAGE
 */
export function ioPolicyFromArgs(opts: Record<string, unknown>, fallback: IoPolicyValue = DEFAULT_IOPOLICY): IoPolicyValue {
  return ioPolicyFromArg(opts.iopolicy, fallback, usageError);
}

/** nvme-cli's path and scripting flags of connect (and connect-all). */
export const PARITY_OPTIONS: readonly OptionSpec[] = [
  { long: 'host-traddr', short: 'w', type: 'string', metavar: 'ADDR', help: 'source address of every queue connection' },
  { long: 'host-iface', short: 'f', type: 'string', metavar: 'IFACE', help: 'source interface: resolved to its address (Node cannot bind a socket to a device)' },
  { long: 'tos', short: 'T', type: 'int', metavar: 'TOS', min: -1, max: 255, help: 'IP type of service (refused: Node cannot set it)' },
  { long: 'duplicate-connect', short: 'D', type: 'boolean', help: 'connect even when this subsystem is already connected over this path (a second association)' },
  { long: 'quiet', type: 'boolean', help: 'print nothing but errors' },
];

/** Options of connect (exported so the NBD server can append `--nbd`/`--attach`). */
export const CONNECT_OPTIONS: OptionSpec[] = [
  ...ADDRESS_OPTIONS.slice(0, 3),
  { long: 'nqn', short: 'n', type: 'string', metavar: 'SUBNQN', help: 'subsystem NQN (required)' },
  ...ADDRESS_OPTIONS.slice(3),
  ...CONTROLLER_OPTIONS,
  ...PARITY_OPTIONS,
  ...TLS_OPTIONS,
];

/**
 * `-w/--host-traddr` or `-f/--host-iface` → the local address to bind (undefined: the kernel
 * picks). An interface resolves to its first address of the target's family.
 * @throws CLI_ERR_USAGE (unknown interface, no address of that family, both flags, bad address)
 */
export function sourceAddressFromArgs(opts: Record<string, unknown>, traddr: string, interfaces: NodeJS.Dict<os.NetworkInterfaceInfo[]> = os.networkInterfaces()): string | undefined {
  const w = typeof opts['host-traddr'] === 'string' ? opts['host-traddr'] : undefined;
  const f = typeof opts['host-iface'] === 'string' ? opts['host-iface'] : undefined;
  if (w !== undefined && f !== undefined) usageError(`-w/--host-traddr '${w}' and -f/--host-iface '${f}': give one`);
  if (w !== undefined) {
    if (net.isIP(w) === 0) usageError(`-w/--host-traddr: '${w}' is not an IP address`);
    return w;
  }
  if (f === undefined) return undefined;
  const list = interfaces[f];
  if (list === undefined) usageError(`-f/--host-iface: no interface '${f}'`);
  const family = net.isIPv6(traddr) ? 'IPv6' : 'IPv4';
  const a = list.find((x) => x.family === family);
  if (a === undefined) usageError(`-f/--host-iface: interface '${f}' has no ${family} address`);
  return a.address;
}

/**
 * `-T/--tos`: Node.js has no way to set IP_TOS on a socket (no setsockopt), so any value but
 * -1 (the default: unset) is refused rather than silently not applied.
 * @throws NVMF_ERR_UNSUPPORTED
 */
export function checkTos(opts: Record<string, unknown>): void {
  const tos = opts.tos;
  if (typeof tos === 'number' && tos !== -1) {
    throw new NvmfNbdError(ErrorCode.UNSUPPORTED, `-T/--tos ${tos}: not supported (Node.js cannot set the IP type of service of a socket)`);
  }
}

/** Read a required string option or raise a usage error. */
export function requireString(opts: Record<string, unknown>, name: string, flag: string): string {
  const v = opts[name];
  if (typeof v !== 'string' || v === '') usageError(`${flag} is required`);
  return v;
}

/** Check -t and return the address part of the options. */
export function addressFromArgs(opts: Record<string, unknown>): { traddr: string; trsvcid: number; hostnqn: string; hostid: string; hdgst: boolean; ddgst: boolean; format: OutputFormat; dhchap?: DhchapHostOptions } {
  if (opts.transport !== 'tcp') usageError(`-t/--transport: '${String(opts.transport)}' is not supported (only tcp)`);
  const traddr = requireString(opts, 'traddr', '-a/--traddr');
  const format = outputFormat(opts['output-format'], usageError);
  let hostnqn = typeof opts.hostnqn === 'string' ? opts.hostnqn : undefined;
  let hostid = typeof opts.hostid === 'string' ? opts.hostid : undefined;
  if (hostid !== undefined && !isUuid(hostid)) usageError(`-I/--hostid: '${hostid}' is not a UUID`);
  if (hostnqn !== undefined && (!hostnqn.startsWith('nqn.') || Buffer.byteLength(hostnqn) > 223)) usageError(`-q/--hostnqn: '${hostnqn}' is not an NQN`);
  if (hostnqn === undefined || hostid === undefined) {
    const id = loadHostIdentity({ stateDir: stateDir() });
    hostnqn ??= id.hostnqn;
    hostid ??= id.hostid;
  }
  const dhchap = dhchapFromArgs(opts);
  return {
    traddr, trsvcid: opts.trsvcid as number, hostnqn, hostid, hdgst: opts['hdr-digest'] === true, ddgst: opts['data-digest'] === true, format,
    ...(dhchap !== undefined ? { dhchap } : {}),
  };
}

/** Build ControllerOptions from connect's parsed flags (Linux defaults for what is absent). */
export function controllerOptionsFromArgs(opts: Record<string, unknown>): ControllerOptions & ResilienceOptions & { format: OutputFormat } {
  const a = addressFromArgs(opts);
  const subnqn = requireString(opts, 'nqn', '-n/--nqn');
  if (Buffer.byteLength(subnqn) > 223) usageError('-n/--nqn: longer than 223 bytes');
  const kato = typeof opts['keep-alive-tmo'] === 'number' ? opts['keep-alive-tmo'] * 1000 : 5000;
  // Without keep-alive the target never drops a lost association, and a stale write of it could
  // land after a re-driven or newer one (see "Why the quiesce time" in docs/ARCHITECTURE.md).
  if (kato === 0) usageError('-k/--keep-alive-tmo 0: keep-alive is required for safe reconnects');
  checkTos(opts);
  ioPolicyFromArgs(opts);
  const hostTraddr = sourceAddressFromArgs(opts, a.traddr);
  const tls = tlsFromArgs(opts, a.hostnqn, subnqn);
  return {
    ...(tls !== undefined ? { tls } : {}),
    traddr: a.traddr, trsvcid: a.trsvcid, subnqn, hostnqn: a.hostnqn, hostid: a.hostid, hdgst: a.hdgst, ddgst: a.ddgst,
    ...(hostTraddr !== undefined ? { hostTraddr } : {}),
    ...(a.dhchap !== undefined ? { dhchap: a.dhchap } : {}),
    nrIoQueues: typeof opts['nr-io-queues'] === 'number' ? opts['nr-io-queues'] : os.cpus().length,
    ...(typeof opts['max-namespaces'] === 'number' ? { maxNamespaces: opts['max-namespaces'] } : {}),
    queueSize: typeof opts['queue-size'] === 'number' ? opts['queue-size'] : 128,
    kato,
    ...(opts['disable-sqflow'] === true ? { disableSqFlowControl: true } : {}),
    ...resilienceFromArgs(opts),
    format: a.format,
  };
}

/**
 * NBD server options from the connect flags (`--nbd-idle-timeout` SEC → idleTimeoutMs; the
 * access policy of `--nbd-tls*`, `--nbd-insecure`, `--nbd-allow-any-local-user`, which loads
 * and checks the TLS key files).
 */
export function nbdServerFromArgs(opts: Record<string, unknown>): { idleTimeoutMs?: number; access: NbdAccessPolicy } {
  const v = opts['nbd-idle-timeout'];
  return { ...(typeof v === 'number' ? { idleTimeoutMs: v * 1000 } : {}), access: nbdAccessFromArgs(opts) };
}

/** -c/-l/--fast-io-fail-tmo/--io-timeout (seconds) → ms options; absent flags stay absent. */
export function resilienceFromArgs(opts: Record<string, unknown>): ResilienceOptions & { ioTimeoutMs?: number } {
  const ms = (name: string): number | undefined => {
    const v = opts[name];
    if (typeof v !== 'number') return undefined;
    return v < 0 ? -1 : v * 1000;
  };
  const out: ResilienceOptions & { ioTimeoutMs?: number } = {
    reconnectDelayMs: ms('reconnect-delay'), ctrlLossTmoMs: ms('ctrl-loss-tmo'),
    fastIoFailTmoMs: ms('fast-io-fail-tmo'), ioTimeoutMs: ms('io-timeout'),
  };
  for (const k of Object.keys(out) as Array<keyof typeof out>) if (out[k] === undefined) delete out[k];
  return out;
}

/** Linux's host defaults: queue size 128, I/O queues = CPU count (capped by the controller), KATO 5 s. */
export function withLinuxDefaults<T extends ControllerOptions>(o: T): T {
  return { nrIoQueues: os.cpus().length, queueSize: 128, kato: 5000, ...o };
}

/**
 * Connect a controller with Linux's defaults filled in (digests off unless asked). The engine
 * and scripts reuse it; the connect verb goes through ControllerSession, which serves NBD too.
 */
export function connectController(o: ControllerOptions): Promise<Controller> {
  return Controller.connect(withLinuxDefaults(o));
}

/** A JSON-friendly description of a namespace. */
export function describeNamespace(ns: NamespaceInfo): Record<string, unknown> {
  return {
    nsid: ns.nsid,
    blocks: ns.nsze,
    lbaSize: ns.lbaSize,
    size: ns.usable ? Number(ns.nsze) * ns.lbaSize : 0,
    usable: ns.usable,
    ...(ns.reasonIfNot !== undefined ? { reason: ns.reasonIfNot } : {}),
  };
}

/** What describeController/formatController read: a Controller or a ResilientController. */
export type DescribableController = Pick<Controller, 'cntlid' | 'options' | 'identify' | 'ioQueueCount' | 'maxTransfer'> & {
  readonly namespaces: ReadonlyMap<number, NamespaceInfo>;
  /** DH-HMAC-CHAP outcome of the admin queue, when it authenticated. */
  readonly authentication?: AuthOutcome | undefined;
};

/** A JSON-friendly description of a connected controller. */
export function describeController(c: DescribableController): Record<string, unknown> {
  return {
    cntlid: c.cntlid,
    subnqn: c.options.subnqn,
    traddr: c.options.traddr,
    trsvcid: c.options.trsvcid,
    hostnqn: c.options.hostnqn,
    model: c.identify.mn,
    serial: c.identify.sn,
    firmware: c.identify.fr,
    ioQueues: c.ioQueueCount,
    maxTransfer: c.maxTransfer,
    ...(c.authentication !== undefined ? { authentication: describeOutcome(c.authentication) } : {}),
    namespaces: [...c.namespaces.values()].map(describeNamespace),
  };
}

/** `{ authentication: 'sha256 ffdhe2048 bidirectional' }` when the controller authenticated, else `{}`. */
export function authenticationField(c: { readonly authentication?: AuthOutcome | undefined }): { authentication?: string } {
  return c.authentication !== undefined ? { authentication: describeOutcome(c.authentication) } : {};
}

/** Human rendering of {@link describeController}. */
export function formatController(c: DescribableController): string {
  const e = escapeControl;
  const head = `controller ${c.cntlid}: ${e(c.options.subnqn)} at ${e(c.options.traddr)}:${c.options.trsvcid}\n` +
    `  model ${e(c.identify.mn)}, serial ${e(c.identify.sn)}, firmware ${e(c.identify.fr)}, ${c.ioQueueCount} I/O queues\n` +
    (c.authentication !== undefined ? `  authenticated (DH-HMAC-CHAP ${describeOutcome(c.authentication)})\n` : '');
  const rows = [...c.namespaces.values()].map((ns) => [
    String(ns.nsid), ns.usable ? formatBytes(Number(ns.nsze) * ns.lbaSize) : '-', String(ns.lbaSize), String(ns.nsze), ns.usable ? 'yes' : `no: ${ns.reasonIfNot ?? ''}`,
  ]);
  return head + formatTable(['NSID', 'SIZE', 'LBA', 'BLOCKS', 'USABLE'], rows);
}

/** NBD flags of connect. */
export const NBD_OPTIONS: readonly OptionSpec[] = [
  { long: 'nbd', type: 'string', metavar: 'unix:DIR|tcp:HOST:PORT|fd:N|stdio', help: 'where to serve the namespaces over NBD (default unix:STATE_DIR/nbd: a 0700 directory of 0600 sockets; fd:3 when started by systemd socket activation)' },
  { long: 'stdio', type: 'boolean', help: 'serve one NBD connection on stdin/stdout and exit when it ends (for nbdinfo -- CMD, nbd_connect_command); messages go to stderr' },
  { long: 'attach', type: 'boolean', help: 'attach every namespace to a /dev/nbdX with nbd-client (root, nbd module)' },
  // Long-only: -C is nvme-cli's --dhchap-ctrl-secret.
  { long: 'connections', type: 'int', metavar: 'N', min: 1, max: 16, help: 'nbd-client connections per device with --attach', default: 1 },
  // No -r: in nvme-cli -r is --raw FILE (discover, connect-all); read-only has its long name only.
  { long: 'read-only', type: 'boolean', help: 'serve the namespaces read-only' },
  { long: 'nbd-idle-timeout', type: 'int', metavar: 'SEC', min: 1, max: 2147483, help: 'close an NBD connection that sent nothing for SEC seconds after choosing its export (default: never)' },
  ...NBD_SECURITY_OPTIONS,
];

/** Human rendering of a session's exports. */
export function formatExports(s: ControllerSession): string {
  const rows = s.exports.map((e) => [
    e.name, String(e.nsid), formatBytes(e.size), String(e.blockSize),
    formatEndpoint(e.endpoint), e.device ?? '-',
  ]);
  return formatTable(['EXPORT', 'NSID', 'SIZE', 'LBA', 'NBD ENDPOINT', 'DEVICE'], rows);
}

export const verb: Verb = {
  name: 'connect',
  summary: 'connect an NVMe/TCP controller and serve its namespaces over NBD until Ctrl-C',
  usage: 'nvmf-nbd connect -t tcp -a ADDR [-s PORT] -n SUBNQN [-q HOSTNQN] [-I HOSTID] [-i N] [-Q N] [-k SEC] [-g] [-G] [--iopolicy numa|round-robin|queue-depth] [--tls [--tls-key FILE|KEY] [--tls-key-identity ID] [--keyring FILE]] [--disable-sqflow] [-S SECRET] [-C CTRL_SECRET] [--nbd unix:DIR|tcp:HOST:PORT] [--attach] [--connections N] [-o normal|json] [--foreground] [--control PATH]',
  options: [...CONNECT_OPTIONS, ...NBD_OPTIONS, ...HANDOFF_OPTIONS],
  async run(opts) {
    absoluteSecretReferences(opts);
    const { format, ...copts } = controllerOptionsFromArgs(opts);
    const activated = socketActivationFd();
    const nbdArg = opts.stdio === true ? 'stdio' : typeof opts.nbd === 'string' ? opts.nbd : activated !== undefined ? `fd:${activated}` : undefined;
    checkNbdEndpointArg(nbdArg, opts);
    if (opts.attach === true && nbdTlsFilesFromArgs(opts) !== undefined) {
      usageError('--attach with --nbd-tls: nbd-client would dial the TLS endpoint in the clear; attach from the default Unix socket (no --nbd) and give remote clients TLS');
    }
    // Loads (and checks: 0600, format) the NBD TLS files before anything connects.
    const nbdServer = nbdServerFromArgs(opts);
    // stdio and an inherited socket belong to this process: never hand those off to a daemon.
    if (opts.foreground !== true && nbdArg !== 'stdio' && !(nbdArg ?? '').startsWith('fd:')) {
      // A running daemon takes the connection over (its answer is printed as we would print
      // it); with none we say so and stay in the foreground (containers rely on this).
      const handed = await handOffConnect(tlsArgsForHandoff(opts, copts.hostnqn, copts.subnqn), stateDir());
      if (handed !== undefined) {
        // Idempotent: an existing association is the answer (exit 0), said on stderr.
        if (handed.existing === true && opts.quiet !== true) process.stderr.write(`${String(opts.nqn)} is already connected as ${handed.name} (-D/--duplicate-connect for a second association)\n`);
        // Another address of a connected subsystem: a new path of it (native multipath).
        if (handed.addedPath === true && opts.quiet !== true) process.stderr.write(`${String(opts.nqn)}: path ${handed.path ?? ''} added to ${handed.name} (${(handed.paths ?? []).length} paths; -D/--duplicate-connect for a separate disk)\n`);
        if (opts.quiet !== true) process.stdout.write(format === 'json' ? formatJson(handed.json) : handed.text);
        return 0;
      }
    }
    const nbd = parseNbdSpec(nbdArg ?? `unix:${path.join(stateDir(), 'nbd')}`);
    if ('stdio' in nbd && opts.attach === true) usageError('--stdio and --attach cannot be combined');
    // With --stdio stdout is the NBD stream; under socket activation it is the starter's
    // (e.g. nbdinfo's JSON): either way, everything for people goes to stderr.
    const out = 'stdio' in nbd || 'fd' in nbd ? process.stderr : process.stdout;
    if (opts.attach === true) protectFromOomKiller();
    const session = await ControllerSession.open({
      name: 'nvme0',
      controller: withLinuxDefaults(copts),
      iopolicy: ioPolicyFromArgs(opts),
      nbd,
      attach: opts.attach === true,
      connections: opts.connections as number,
      readOnly: opts['read-only'] === true,
      nbdServer,
      log: (msg) => process.stderr.write(`${msg}\n`),
    });
    const ctrl = session.controller;
    let lost: Error | undefined;
    const stopped = new Promise<void>((resolve) => ctrl.once('close', (err?: Error) => { lost = err; resolve(); }));
    ctrl.on('error', () => undefined);
    // Listen for the signal before printing: a script that reads our output and then sends
    // SIGINT must never find us without the handler (the default action would kill us).
    const signalled = waitForShutdownSignal();
    if (opts.quiet !== true) {
      out.write(format === 'json'
        ? formatJson({ ...session.describe(), ...authenticationField(ctrl), namespaces: describeController(ctrl).namespaces })
        : `${formatController(ctrl)}\n${formatExports(session)}`);
    }
    await Promise.race([signalled, stopped, ...(session.stdioClosed !== undefined ? [session.stdioClosed] : [])]);
    await session.close();
    if (lost !== undefined) {
      process.stderr.write(`nvmf-nbd connect: ${lost.message} (${(lost as { code?: string }).code ?? 'error'})\n`);
      return 1;
    }
    return 0;
  },
};
