/**
 * Shared shapes of the embedded target: its resolved configuration, subsystems and namespaces,
 * counters, and the context object queues and controllers use to reach the target.
 */
import type { StorageBackend } from './storage';
import type { NamespaceIds } from './pages';
import type { TargetController } from './target-controller';
import type { TargetAuthPolicy, TargetHostKeys } from './target-auth';


/**
 * When the target completes a successful read with C2HData SUCCESS (no CapsuleResp):
 * `spec` — only when the host disabled SQ flow control (TP 8000, Linux nvmet);
 * `spdk` — always, whatever was negotiated (SPDK nvmf_tgt's default `c2h_success`), the foreign
 * behaviour hosts must tolerate; `always-resp` — never, every command gets a CapsuleResp.
 */
export const C2hSuccessMode = { SPEC: 'spec', SPDK: 'spdk', ALWAYS_RESP: 'always-resp' } as const;
export type C2hSuccessMode = (typeof C2hSuccessMode)[keyof typeof C2hSuccessMode];

/** Log levels of {@link TargetLogger}. */
export type TargetLogLevel = 'debug' | 'info' | 'warn' | 'error';

/** Receives the target's log lines. Protocol violations by a host are logged at 'error'. */
export type TargetLogger = (level: TargetLogLevel, message: string) => void;

/** Resolved limits and behaviour of a target (every field set). */
export interface TargetConfig {
  /** CAP.MQES + 1: the largest SQ a host may create. */
  readonly queueSize: number;
  readonly maxIoQueues: number;
  /** MDTS exponent: max transfer = 2^mdts × 4 KiB. */
  readonly mdts: number;
  /** Largest data transfer of one command in bytes (from MDTS). */
  readonly maxTransfer: number;
  /** In-capsule data accepted on I/O queues (IOCCSZ × 16 − 64). */
  readonly inCapsuleDataSize: number;
  /** In-capsule data accepted on the admin queue (fixed at 8 KiB by TP 8000). */
  readonly adminInCapsuleDataSize: number;
  /** MAXH2CDATA announced in ICResp. */
  readonly maxH2CData: number;
  /** Largest C2HData PDU we send. */
  readonly maxC2HData: number;
  /** KAS in 100 ms units. */
  readonly kas: number;
  /** AERL (0-based). */
  readonly aerl: number;
  /** NN: largest NSID. */
  readonly nn: number;
  /** When a successful read ends with C2HData SUCCESS instead of a CapsuleResp. */
  readonly c2hSuccess: C2hSuccessMode;
  /** Answers handed to the socket at most this many at a time within one iteration (Infinity: once). */
  readonly flushEvery: number;
  /** Extra time past KATO before an association is dropped. */
  readonly keepAliveGraceMs: number;
  /** A connection that has not completed Connect within this time is closed. */
  readonly connectTimeoutMs: number;
  /** Open TCP connections at most; more are closed at accept (hostile-host bound). */
  readonly maxConnections: number;
  /** Live controllers (associations) at most, all hosts together. */
  readonly maxControllers: number;
  /** Live controllers per host NQN at most. */
  readonly maxControllersPerHost: number;
  /** A controller with KATO 0 (keep-alive off) is dropped after this long without a command. */
  readonly idleTimeoutMs: number;
  readonly firmware: string;
  /** ANATT advertised: seconds a group may stay in the ANA change state. */
  readonly anatt: number;
  /** CQT advertised: ms commands may still execute after the association is lost. */
  readonly cqtMs: number;
}

/** One namespace being served. */
export interface TargetNamespace {
  readonly nsid: number;
  readonly lbaSize: 512 | 4096;
  /** log2(lbaSize). */
  readonly lbads: number;
  /** Size in logical blocks. */
  readonly blocks: number;
  readonly backend: StorageBackend;
  readonly ids: NamespaceIds;
  /** ANA group (ANAGRPID, 1..MAX_ANA_GROUPS); its state is per port. */
  anaGroup: number;
}

/** An NVM subsystem or the discovery subsystem. */
export interface TargetSubsystem {
  readonly nqn: string;
  readonly serial: string;
  readonly model: string;
  readonly discovery: boolean;
  readonly namespaces: Map<number, TargetNamespace>;
  readonly controllers: Set<TargetController>;
}

/** Counters returned by `NvmeTarget.stats()`. */
export interface TargetStats {
  /** Connections currently open. */
  connections: number;
  /** Connections accepted since start. */
  connectionsTotal: number;
  /** Controllers (associations) currently live. */
  controllers: number;
  commands: number;
  readCommands: number;
  writeCommands: number;
  bytesRead: number;
  bytesWritten: number;
  /** Fatal protocol errors (C2HTermReq sent or connection dropped for a violation). */
  protocolErrors: number;
  /** Data digest mismatches (command failed, connection kept). */
  dataDigestErrors: number;
  /** Associations dropped because the keep-alive timer expired. */
  keepAliveTimeouts: number;
  /** H2CTermReq received from hosts. */
  termReqsReceived: number;
  /** DH-HMAC-CHAP authentications that succeeded (per queue). */
  authentications: number;
  /** DH-HMAC-CHAP authentications that failed or timed out (per queue). */
  authFailures: number;
  /** Connections closed at accept because maxConnections were open. */
  connectionsRefused: number;
  /** Admin Connects refused because of maxControllers / maxControllersPerHost. */
  controllersRefused: number;
  /** Connects over TLS refused because their NQNs differ from the PSK identity's (set on the first). */
  tlsIdentityMismatches?: number;
}

/** What queues and controllers need from the target. */
export interface TargetContext {
  readonly cfg: TargetConfig;
  readonly stats: TargetStats;
  readonly controllers: Map<number, TargetController>;
  subsystem(nqn: string): TargetSubsystem | undefined;
  hostAllowed(hostnqn: string): boolean;
  /** DH-HMAC-CHAP keys of a host; such a host must authenticate every queue. */
  hostKeys(hostnqn: string): TargetHostKeys | undefined;
  /** Hashes and DH groups offered, transaction timeout. */
  readonly authPolicy: TargetAuthPolicy;
  /** A free controller id, or undefined when all are in use. */
  newCntlid(): number | undefined;
  discoveryLog(): Buffer;
  /** The ANA log page (LID 0Ch) as controller `ctrl` (its subsystem, its port) reports it. */
  anaLog(ctrl: TargetController, groupsOnly: boolean): Buffer;
  log(level: TargetLogLevel, message: string): void;
}

/** Result of executing one command: the CQE fields and, for controller-to-host commands, data. */
export interface Completion {
  sct?: number;
  sc?: number;
  dnr?: boolean;
  dw0?: number;
  dw1?: number;
  data?: Buffer;
}

/** Successful completion. */
export function ok(dw0 = 0, data?: Buffer): Completion {
  return data === undefined ? { dw0 } : { dw0, data };
}

/** Failed completion with Do Not Retry set unless `dnr` is false. */
export function fail(sct: number, sc: number, dnr = true, dw0 = 0): Completion {
  return { sct, sc, dnr, dw0 };
}

/** True when the completion carries success status. */
export function isOk(c: Completion): boolean {
  return (c.sct ?? 0) === 0 && (c.sc ?? 0) === 0;
}
