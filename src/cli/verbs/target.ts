/**
 * `nvmf-nbd target`: run the embedded NVMe/TCP target in the foreground until SIGINT/SIGTERM.
 *
 * With no namespace options it serves one subsystem with one 1 GiB sparse memory namespace, so
 * `nvmf-nbd target` alone is a usable target on 127.0.0.1:4420.
 *
 * Several `--listen` give several ports (ids 1, 2, … in order) of the same subsystem, for
 * multipath hosts; `--ana-group NSID=GROUP` puts namespaces in ANA groups and `--ana-state
 * PORT:GROUP:STATE` sets a port's state for a group. At runtime the states are changed with
 * `--ana-state-file FILE`: edit it (`PORT GROUP STATE` lines) and send SIGHUP; the whole file is
 * checked first and applied only when valid (hosts get the ANA change notice).
 */
import * as fs from 'node:fs';
import { optionSequence, usageError, type OptionSpec } from '../args';
import { loadDhchapSecret } from '../../controller/dhchap-secret';
import type { DhchapKey } from '../../wire/dhchap';
import { parseDhchapGroup, parseDhchapHash, type DhchapGroupId, type DhchapHashId } from '../../wire/auth';
import type { Verb } from '../verb';
import { loadTargetPsks } from '../../tls/target-keys';
import { DISCOVERY_NQN } from '../../embedded-target/target';
import { parseHostPort, parseSizeArg } from '../values';
import { parseAnaStateFile, parseAnaStateSpec, type AnaStateEntry } from '../../config/ana-states';
import { anaStateName } from '../../wire/ana';
import { ErrorCode, NvmfNbdError } from '../../errors';
import {
  C2hSuccessMode, DEFAULT_LISTEN, DEFAULT_NAMESPACE_SIZE, DEFAULT_TARGET_NQN, NvmeTarget, type NamespaceConfig, type TargetLogLevel,
  type TargetPortConfig,
} from '../../embedded-target';

const OPTIONS: readonly OptionSpec[] = [
  { long: 'listen', type: 'string', metavar: 'HOST:PORT', repeat: true, help: `address to listen on (default ${DEFAULT_LISTEN.host}:${DEFAULT_LISTEN.port}); repeat for several ports (ids 1, 2, … in order) of the same subsystem` },
  { long: 'nqn', short: 'n', type: 'string', metavar: 'NQN', help: 'subsystem NQN', default: DEFAULT_TARGET_NQN },
  { long: 'memory', short: 'm', type: 'string', metavar: 'SIZE', repeat: true, help: 'add a sparse memory namespace of SIZE (K/M/G suffixes); repeatable' },
  { long: 'file', short: 'f', type: 'string', metavar: 'PATH[:SIZE]', repeat: true, help: 'add a file-backed namespace (created/extended to SIZE if given); repeatable' },
  { long: 'lba-size', short: 'b', type: 'int', metavar: '512|4096', help: 'logical block size of the namespaces', default: 512 },
  { long: 'allow-host', type: 'string', metavar: 'NQN', repeat: true, help: 'allow only these host NQNs (default: any host); repeatable' },
  { long: 'dhchap-key', type: 'string', metavar: 'DHHC-1:..|file:PATH', repeat: true, help: 'DH-HMAC-CHAP secret of the preceding --allow-host: it must authenticate every queue' },
  { long: 'dhchap-ctrl-key', type: 'string', metavar: 'DHHC-1:..|file:PATH', repeat: true, help: 'controller secret for the preceding --allow-host (bidirectional authentication)' },
  { long: 'dhchap-hash', type: 'string', metavar: 'sha256,sha384,sha512', help: 'hash functions offered, in order of preference (default all)' },
  { long: 'dhchap-dhgroup', type: 'string', metavar: 'ffdhe2048,...,null', help: 'DH groups offered, in order of preference (default ffdhe2048..ffdhe8192,null)' },
  { long: 'tls', type: 'string', metavar: 'required|optional', help: 'NVMe/TCP over TLS 1.3 (PSK): required refuses plain TCP, optional accepts both; needs --psk' },
  { long: 'psk', type: 'string', metavar: 'FILE', help: 'TLS PSKs (0600): "<hostnqn> NVMeTLSkey-1:01:…:" (configured, per host) or "<identity> <key>" lines' },
  { long: 'advertise', type: 'string', metavar: 'HOST:PORT', repeat: true, help: 'address put in the discovery log (behind NAT or port forwards); with several --listen, for the --listen before it' },
  { long: 'ana-group', type: 'string', metavar: 'NSID=GROUP', repeat: true, help: 'ANA group (1..128) of namespace NSID (default group 1); repeatable' },
  { long: 'ana-state', type: 'string', metavar: 'PORT:GROUP:STATE', repeat: true, help: 'ANA state of GROUP on port id PORT: optimized (default), non-optimized, inaccessible, persistent-loss, change; repeatable' },
  { long: 'ana-state-file', type: 'string', metavar: 'FILE', help: "'PORT GROUP STATE' lines applied at start and again on SIGHUP (runtime ANA changes)" },
  { long: 'anatt', type: 'int', metavar: 'SECONDS', min: 1, max: 255, help: 'ANA transition time advertised (ANATT)', default: 10 },
  { long: 'cqt', type: 'int', metavar: 'MS', min: 0, max: 65535, help: 'command quiesce time advertised (CQT; default keep-alive grace + 1000 ms)' },
  { long: 'queue-size', type: 'int', metavar: 'N', min: 2, max: 65536, help: 'largest queue a host may create (CAP.MQES+1)', default: 128 },
  { long: 'nr-io-queues', type: 'int', metavar: 'N', min: 1, max: 1024, help: 'I/O queues per controller', default: 8 },
  { long: 'max-connections', type: 'int', metavar: 'N', min: 1, max: 1 << 20, help: 'open connections at most (more are closed at accept)', default: 1024 },
  { long: 'max-controllers', type: 'int', metavar: 'N', min: 1, max: 0xffef, help: 'live controllers (associations) at most; more Connects get Controller Busy', default: 256 },
  { long: 'max-controllers-per-host', type: 'int', metavar: 'N', min: 1, max: 0xffef, help: 'live controllers per host NQN at most', default: 32 },
  { long: 'idle-timeout', type: 'int', metavar: 'MS', min: 1, max: 2 ** 31 - 1, help: 'drop a controller with keep-alive off (KATO 0) after MS without a command', default: 300000 },
  { long: 'c2h-success', type: 'string', metavar: 'spec|spdk|always-resp', help: 'when a read ends with C2HData SUCCESS instead of a CapsuleResp: spec = only if the host disabled SQ flow control; spdk = always (like SPDK nvmf_tgt); always-resp = never', default: 'spec' },
  { long: 'output-format', short: 'o', type: 'string', metavar: 'normal|json', help: 'output format', default: 'normal' },
  { long: 'verbose', short: 'v', type: 'boolean', help: 'log every connection and controller' },
];

/**
 * The ports from `--listen` (repeatable) and `--advertise`: with one --listen (or none) a single
 * --advertise belongs to it wherever it stands (as before ports); with several, each --advertise
 * belongs to the --listen before it.
 */
export function targetPorts(options: Record<string, unknown>): TargetPortConfig[] {
  const listens = strings(options.listen);
  const advs = strings(options.advertise);
  if (listens.length <= 1) {
    if (advs.length > 1) usageError('several --advertise need as many --listen');
    const l = listens.length === 0 ? { ...DEFAULT_LISTEN } : parseHostPort(listens[0] as string, '--listen');
    return [{ id: 1, host: l.host, port: l.port, ...(advs.length === 1 ? { advertise: parseHostPort(advs[0] as string, '--advertise') } : {}) }];
  }
  const ports: TargetPortConfig[] = [];
  for (const { long, value } of optionSequence(options)) {
    if (long === 'listen') {
      const l = parseHostPort(String(value), '--listen');
      ports.push({ id: ports.length + 1, host: l.host, port: l.port });
    } else if (long === 'advertise') {
      const p = ports[ports.length - 1];
      if (p === undefined) usageError('with several --listen, each --advertise must follow the --listen it belongs to');
      if (p.advertise !== undefined) usageError(`two --advertise for --listen ${p.host}:${p.port}`);
      p.advertise = parseHostPort(String(value), '--advertise');
    }
  }
  return ports;
}

/** Read and check an ANA state file (CFG_ERR_* with the line; unreadable → CFG_ERR_INVALID). */
function readAnaStateFile(file: string): AnaStateEntry[] {
  let text: string;
  try {
    const st = fs.statSync(file);
    if (!st.isFile()) throw new Error('not a regular file');
    if (st.size > 1 << 20) throw new Error('larger than 1 MiB');
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new NvmfNbdError(ErrorCode.CFG_INVALID, `--ana-state-file ${file}: ${(err as Error).message}`, { cause: err });
  }
  return parseAnaStateFile(text, file);
}

/** `PATH` or `PATH:SIZE` (the part after the last colon is a size only when it parses as one). */
export function parseFileArg(s: string): { path: string; size?: number } {
  const i = s.lastIndexOf(':');
  if (i > 0 && /^\d+[KMGT]?(?:i?B)?$/i.test(s.slice(i + 1))) return { path: s.slice(0, i), size: parseSizeArg(s.slice(i + 1), '--file') };
  if (s.length === 0) usageError('--file needs a path');
  return { path: s };
}

function strings(v: unknown): string[] {
  return Array.isArray(v) ? v.map(String) : [];
}

function human(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = bytes;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${Number.isInteger(v) ? v : v.toFixed(2)} ${units[u]}`;
}

/**
 * `--allow-host NQN --dhchap-key K [--dhchap-ctrl-key K]`: each key belongs to the --allow-host
 * before it. Keys may be inline or file:PATH (0600).
 */
export function dhchapTargetOptions(options: Record<string, unknown>): {
  hostKeys?: Array<{ hostnqn: string; key: DhchapKey; ctrlKey?: DhchapKey }>;
  dhchapHashes?: DhchapHashId[];
  dhchapGroups?: DhchapGroupId[];
} {
  const hosts = new Map<string, { key?: string; ctrlKey?: string }>();
  let current: string | undefined;
  for (const { long, value } of optionSequence(options)) {
    if (long === 'allow-host') {
      current = String(value);
      if (!hosts.has(current)) hosts.set(current, {});
    } else if (long === 'dhchap-key' || long === 'dhchap-ctrl-key') {
      if (current === undefined) usageError(`--${long} must follow the --allow-host it belongs to`);
      const h = hosts.get(current) as { key?: string; ctrlKey?: string };
      const field = long === 'dhchap-key' ? 'key' : 'ctrlKey';
      if (h[field] !== undefined) usageError(`two --${long} for host ${current}`);
      h[field] = String(value);
    }
  }
  const hostKeys: Array<{ hostnqn: string; key: DhchapKey; ctrlKey?: DhchapKey }> = [];
  for (const [hostnqn, h] of hosts) {
    if (h.key === undefined) {
      if (h.ctrlKey !== undefined) usageError(`--dhchap-ctrl-key for host ${hostnqn} needs a --dhchap-key`);
      continue;
    }
    const key = loadDhchapSecret(h.key, `--dhchap-key of ${hostnqn}`);
    hostKeys.push(h.ctrlKey === undefined ? { hostnqn, key } : { hostnqn, key, ctrlKey: loadDhchapSecret(h.ctrlKey, `--dhchap-ctrl-key of ${hostnqn}`) });
  }
  const list = <T>(flag: string, v: unknown, parse: (s: string) => T | undefined): T[] | undefined => {
    if (typeof v !== 'string') return undefined;
    return v.split(',').map((s) => {
      const r = parse(s);
      if (r === undefined) usageError(`${flag}: unknown '${s}'`);
      return r;
    });
  };
  const dhchapHashes = list('--dhchap-hash', options['dhchap-hash'], parseDhchapHash);
  const dhchapGroups = list('--dhchap-dhgroup', options['dhchap-dhgroup'], parseDhchapGroup);
  return {
    ...(hostKeys.length > 0 ? { hostKeys } : {}),
    ...(dhchapHashes !== undefined ? { dhchapHashes } : {}),
    ...(dhchapGroups !== undefined ? { dhchapGroups } : {}),
  };
}

export const verb: Verb = {
  name: 'target',
  summary: 'run the embedded NVMe/TCP target (memory- or file-backed namespaces)',
  usage: 'nvmf-nbd target [--listen HOST:PORT [--advertise HOST:PORT]]... [--ana-group NSID=GROUP]... [--ana-state PORT:GROUP:STATE]... [--ana-state-file FILE] [--anatt S] [--cqt MS] [--nqn NQN] [--memory SIZE]... [--file PATH[:SIZE]]... [--lba-size 512|4096] [--allow-host NQN [--dhchap-key KEY [--dhchap-ctrl-key KEY]]]... [--dhchap-hash LIST] [--dhchap-dhgroup LIST] [--tls required|optional --psk FILE] [--advertise HOST:PORT] [--c2h-success spec|spdk|always-resp] [-o json]',
  options: OPTIONS,
  async run(options): Promise<number> {
    const ports = targetPorts(options);
    const advertise = ports[0]?.advertise;
    const lbaSize = Number(options['lba-size']);
    if (lbaSize !== 512 && lbaSize !== 4096) usageError(`--lba-size ${lbaSize}: must be 512 or 4096`);
    const c2hSuccess = String(options['c2h-success']);
    if (!(Object.values(C2hSuccessMode) as string[]).includes(c2hSuccess)) usageError(`--c2h-success ${c2hSuccess}: must be spec, spdk or always-resp`);
    const format = String(options['output-format']);
    if (format !== 'normal' && format !== 'json') usageError(`-o ${format}: must be normal or json`);
    const namespaces: NamespaceConfig[] = [];
    for (const m of strings(options.memory)) namespaces.push({ sizeBytes: parseSizeArg(m, '--memory'), lbaSize, backing: { memory: true } });
    for (const f of strings(options.file)) {
      const { path, size } = parseFileArg(f);
      namespaces.push(size === undefined ? { lbaSize, backing: { file: path } } : { sizeBytes: size, lbaSize, backing: { file: path } });
    }
    if (namespaces.length === 0) namespaces.push({ sizeBytes: DEFAULT_NAMESPACE_SIZE, lbaSize, backing: { memory: true } });
    // NSIDs are given in order (memory namespaces first, then files), as addNamespace assigns them.
    namespaces.forEach((ns, i) => { ns.nsid = i + 1; });
    for (const spec of strings(options['ana-group'])) {
      const m = /^(\d+)=(\d+)$/.exec(spec);
      if (m === null) usageError(`--ana-group '${spec}': expected NSID=GROUP`);
      const ns = namespaces[Number(m[1]) - 1];
      if (ns === undefined) usageError(`--ana-group '${spec}': no namespace ${m[1]} (there are ${namespaces.length})`);
      ns.anaGroup = Number(m[2]);
    }
    const initial: AnaStateEntry[] = strings(options['ana-state']).map((s) => parseAnaStateSpec(s));
    const stateFile = typeof options['ana-state-file'] === 'string' ? options['ana-state-file'] : undefined;
    if (stateFile !== undefined) initial.push(...readAnaStateFile(stateFile));
    for (const e of initial) {
      const p = ports.find((x) => x.id === e.port);
      if (p === undefined) usageError(`ANA state for port ${e.port}: there are ports 1..${ports.length}`);
      (p.ana ??= []).push({ group: e.group, state: e.state });
    }
    const verbose = options.verbose === true;
    const log = (level: TargetLogLevel, msg: string): void => {
      if (level === 'debug' && !verbose) return;
      process.stderr.write(`nvmf-nbd target: ${level}: ${msg}\n`);
    };
    const tlsMode = options.tls;
    if (tlsMode !== undefined && tlsMode !== 'required' && tlsMode !== 'optional') usageError(`--tls ${String(tlsMode)}: must be required or optional`);
    if (tlsMode !== undefined && typeof options.psk !== 'string') usageError('--tls needs --psk FILE');
    if (tlsMode === undefined && typeof options.psk === 'string') usageError('--psk needs --tls required|optional');
    const psks = typeof options.psk === 'string' ? loadTargetPsks(options.psk, [String(options.nqn), DISCOVERY_NQN]) : undefined;
    const target = new NvmeTarget({
      ports,
      anatt: Number(options.anatt),
      ...(options.cqt !== undefined ? { cqtMs: Number(options.cqt) } : {}),
      ...(psks !== undefined ? { tls: { mode: tlsMode as 'required' | 'optional', lookup: (id: string) => psks.get(id) } } : {}),
      subsystems: [{ nqn: String(options.nqn), namespaces }],
      allowHosts: strings(options['allow-host']),
      ...dhchapTargetOptions(options),
      queueSize: Number(options['queue-size']),
      maxIoQueues: Number(options['nr-io-queues']),
      maxConnections: Number(options['max-connections']),
      maxControllers: Number(options['max-controllers']),
      maxControllersPerHost: Number(options['max-controllers-per-host']),
      idleTimeoutMs: Number(options['idle-timeout']),
      c2hSuccess: c2hSuccess as C2hSuccessMode,
      log,
    });
    // Register before listening so a signal during start-up still shuts down cleanly.
    let onSignal: ((sig: NodeJS.Signals) => void) | undefined;
    const stopped = new Promise<NodeJS.Signals>((resolve) => {
      onSignal = (sig) => resolve(sig);
      process.once('SIGINT', onSignal);
      process.once('SIGTERM', onSignal);
    });
    // SIGHUP re-reads the ANA state file (only when there is one: otherwise SIGHUP ends the
    // process as before). An invalid file changes nothing.
    const onHup = stateFile === undefined ? undefined : (): void => {
      try {
        let changed = 0;
        for (const e of readAnaStateFile(stateFile)) if (target.setAnaState(e.port, e.group, e.state)) changed++;
        log('info', `SIGHUP: ${stateFile} applied, ${changed} ANA state(s) changed`);
      } catch (err) {
        const code = err instanceof NvmfNbdError ? ` (${err.code})` : '';
        log('error', `SIGHUP: ${stateFile} not applied: ${(err as Error).message}${code}`);
      }
    };
    if (onHup !== undefined) process.on('SIGHUP', onHup);
    try {
      const addr = await target.listen();
      const subs = target.subsystems();
      const portInfo = target.ports();
      if (format === 'json') {
        const jsonPorts = portInfo.map((p) => ({ id: p.id, host: p.host, port: p.port, advertise: p.advertise ?? { host: p.host, port: p.port }, ana: p.ana.map((a) => ({ group: a.group, state: anaStateName(a.state) })) }));
        process.stdout.write(`${JSON.stringify({ listen: addr, advertise: advertise ?? addr, ports: jsonPorts, subsystems: subs })}\n`);
      } else {
        const hp = (h: string, p: number): string => `${h.includes(':') ? `[${h}]` : h}:${p}`;
        const lines = portInfo.length === 1 ? [`listening on ${hp(addr.host, addr.port)}`] : portInfo.map((p) => `listening on ${hp(p.host, p.port)} (port ${p.id})`);
        for (const p of portInfo) for (const a of p.ana) lines.push(`port ${p.id}: ANA group ${a.group} ${anaStateName(a.state)}`);
        for (const s of subs) {
          lines.push(`subsystem ${s.nqn} (serial ${s.serial})`);
          for (const n of s.namespaces) lines.push(`  nsid ${n.nsid}: ${human(n.sizeBytes)}, ${n.lbaSize}-byte blocks, ${n.backing}`);
        }
        lines.push(`discovery: nqn.2014-08.org.nvmexpress.discovery on the same port; press Ctrl-C to stop`);
        process.stdout.write(`${lines.join('\n')}\n`);
      }
      const sig = await stopped;
      log('info', `${sig}: shutting down`);
      return 0;
    } finally {
      if (onSignal !== undefined) {
        process.off('SIGINT', onSignal);
        process.off('SIGTERM', onSignal);
      }
      if (onHup !== undefined) process.off('SIGHUP', onHup);
      await target.close();
    }
  },
};
