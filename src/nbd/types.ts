/**
 * What the pieces of one NBD connection share: the export as a connection sees it, the log
 * record, and what a connection needs from its server. Types only (plus {@link blockSizes}).
 */
import type { ErrorCodeValue } from '../errors';
import type { BlockDevice } from '../block/types';
import type { SubBlockDevice } from '../block/sub-block';

/** A connection as its export tracks it (the server closes these on removal). */
export interface NbdExportConnection {
  shutdown(failInFlight: boolean): void;
  /** Resolves once the connection is closed. */
  readonly closed: Promise<void>;
}

/** One log record. `code` is a stable error code when the record reports a failure. */
export interface NbdLogEntry {
  level: 'debug' | 'info' | 'warn' | 'error';
  code?: ErrorCodeValue;
  msg: string;
  /** Connection number (server-wide sequence). */
  conn?: number;
  export?: string;
}

/** Per-export counters, shared by all connections of the export. */
export interface NbdExportCounters {
  reads: number;
  writes: number;
  bytesRead: number;
  bytesWritten: number;
  flushes: number;
  trims: number;
  zeroes: number;
  /** Requests answered with a nonzero error. */
  errors: number;
}

/** An export as the connection sees it (owned by the server). */
export interface NbdExportEntry {
  readonly name: string;
  readonly device: BlockDevice;
  /**
   * The same device behind the export's range lock: every request of every connection goes
   * through it, so read-modify-writes of partial blocks are serialized against everything.
   */
  readonly sub: SubBlockDevice;
  readonly description: string;
  readonly counters: NbdExportCounters;
  readonly connections: Set<NbdExportConnection>;
  removed: boolean;
}

/** What a connection needs from its server. */
export interface NbdConnectionHost {
  /** The export called `name`; the empty name selects the default (first) export. */
  findExport(name: string): NbdExportEntry | undefined;
  listExports(): NbdExportEntry[];
  log(e: NbdLogEntry): void;
  readonly shuttingDown: boolean;
  readonly maxInFlight: number;
  readonly maxInFlightBytes: number;
  readonly handshakeTimeoutMs: number;
  /** After our FIN, how long a client that does not read may keep the socket (then destroyed). */
  readonly closeGraceMs: number;
  /** Connections in transmission on one export at most; GO beyond → ERR_POLICY. */
  readonly maxConnectionsPerExport: number;
  /** Transmission phase: close a connection that sent nothing for this long with nothing in flight (0 = never). */
  readonly idleTimeoutMs: number;
  /**
   * The server-wide budget of request bytes in flight plus reply bytes not yet taken by clients,
   * shared by every connection: true when it is used up. A connection holding bytes then stops
   * reading (those that do not read their replies keep holding them); one holding nothing may
   * still take one request, so a well-behaved client always makes progress.
   */
  budgetExhausted(): boolean;
  /** Call `resume` once when some connection released budget. */
  waitBudget(resume: () => void): void;
  /** A connection released budget (a reply was taken, a request ended). */
  budgetReleased(): void;
}

/** NBD block-size constraints of a device: min = blockSize, preferred = max(4096, blockSize),
 *  max = maxRequest (the BlockDevice contract makes it at least 32 MiB). */
export function blockSizes(dev: BlockDevice): { min: number; preferred: number; max: number } {
  return { min: dev.blockSize, preferred: Math.max(4096, dev.blockSize), max: dev.maxRequest };
}
