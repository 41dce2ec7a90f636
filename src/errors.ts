/**
 * One error base class for the whole project, with stable codes.
 *
 * Callers and tests tell errors apart by `code`, never by message text (STYLE.md §8).
 * Codes are grouped by prefix: `NVMF_ERR_*` for the NVMe/TCP side (wire, transport,
 * controller, target), `NBD_ERR_*` for the NBD side, `CLI_ERR_*` / `CFG_ERR_*` for user input.
 */

/** NVMe completion status, as carried in CQE DW3 bits 31:17. */
export interface NvmeStatus {
  /** Status Code Type (3 bits). 0 generic, 1 command specific, 2 media, 3 path, 7 vendor. */
  readonly sct: number;
  /** Status Code (8 bits). */
  readonly sc: number;
  /** Do Not Retry. */
  readonly dnr: boolean;
  /** More information available in the Error log. */
  readonly more: boolean;
  /** Command Retry Delay index (2 bits). */
  readonly crd: number;
}

/** Every stable error code the project raises. Add new ones here, never reuse one. */
export const ErrorCode = {
  // Wire / transport (NVMe/TCP PDUs)
  PDU_INVALID_TYPE: 'NVMF_ERR_PDU_INVALID_TYPE',
  PDU_INVALID_HEADER: 'NVMF_ERR_PDU_INVALID_HEADER',
  PDU_TOO_LARGE: 'NVMF_ERR_PDU_TOO_LARGE',
  PDU_SEQUENCE: 'NVMF_ERR_PDU_SEQUENCE',
  HEADER_DIGEST: 'NVMF_ERR_HEADER_DIGEST',
  DATA_DIGEST: 'NVMF_ERR_DATA_DIGEST',
  DATA_OUT_OF_RANGE: 'NVMF_ERR_DATA_OUT_OF_RANGE',
  UNKNOWN_CCCID: 'NVMF_ERR_UNKNOWN_CCCID',
  ICRESP_INVALID: 'NVMF_ERR_ICRESP_INVALID',
  TERM_REQ_RECEIVED: 'NVMF_ERR_TERM_REQ_RECEIVED',
  SHORT_READ: 'NVMF_ERR_SHORT_READ',
  // Connection lifecycle
  CONNECTION_CLOSED: 'NVMF_ERR_CONNECTION_CLOSED',
  CONNECT_FAILED: 'NVMF_ERR_CONNECT_FAILED',
  TIMEOUT: 'NVMF_ERR_TIMEOUT',
  KEEPALIVE_TIMEOUT: 'NVMF_ERR_KEEPALIVE_TIMEOUT',
  ABORTED: 'NVMF_ERR_ABORTED',
  // Controller
  NVME_STATUS: 'NVMF_ERR_NVME_STATUS',
  CONTROLLER_FATAL: 'NVMF_ERR_CONTROLLER_FATAL',
  ENABLE_TIMEOUT: 'NVMF_ERR_ENABLE_TIMEOUT',
  UNSUPPORTED: 'NVMF_ERR_UNSUPPORTED',
  NAMESPACE_NOT_FOUND: 'NVMF_ERR_NAMESPACE_NOT_FOUND',
  NAMESPACE_UNSUPPORTED: 'NVMF_ERR_NAMESPACE_UNSUPPORTED',
  INVALID_ARGUMENT: 'NVMF_ERR_INVALID_ARGUMENT',
  CONTROLLER_LOST: 'NVMF_ERR_CONTROLLER_LOST',
  DISCOVERY_LOG_CHANGED: 'NVMF_ERR_DISCOVERY_LOG_CHANGED',
  // NBD
  NBD_BAD_MAGIC: 'NBD_ERR_BAD_MAGIC',
  NBD_BAD_FLAGS: 'NBD_ERR_BAD_FLAGS',
  NBD_OPTION_TOO_LARGE: 'NBD_ERR_OPTION_TOO_LARGE',
  NBD_REQUEST_TOO_LARGE: 'NBD_ERR_REQUEST_TOO_LARGE',
  NBD_PROTOCOL: 'NBD_ERR_PROTOCOL',
  NBD_TRUNCATED: 'NBD_ERR_TRUNCATED',
  NBD_UNKNOWN_EXPORT: 'NBD_ERR_UNKNOWN_EXPORT',
  NBD_ATTACH_FAILED: 'NBD_ERR_ATTACH_FAILED',
  NBD_CLIENT_MISSING: 'NBD_ERR_CLIENT_MISSING',
  NBD_MODULE_MISSING: 'NBD_ERR_MODULE_MISSING',
  // User input
  CLI_USAGE: 'CLI_ERR_USAGE',
  CFG_INVALID: 'CFG_ERR_INVALID',
  DAEMON_UNAVAILABLE: 'CLI_ERR_DAEMON_UNAVAILABLE',
  // NBD server and attach (appended)
  NBD_EXPORT_EXISTS: 'NBD_ERR_EXPORT_EXISTS',
  NBD_LISTEN_FAILED: 'NBD_ERR_LISTEN_FAILED',
  NBD_HANDSHAKE_TIMEOUT: 'NBD_ERR_HANDSHAKE_TIMEOUT',
  NBD_NO_FREE_DEVICE: 'NBD_ERR_NO_FREE_DEVICE',
  NBD_DETACH_FAILED: 'NBD_ERR_DETACH_FAILED',
  // Daemon and control socket (appended)
  CONTROL_PROTOCOL: 'CLI_ERR_CONTROL_PROTOCOL',
  CONTROL_LINE_TOO_LONG: 'CLI_ERR_CONTROL_LINE_TOO_LONG',
  CONTROL_UNKNOWN_VERB: 'CLI_ERR_CONTROL_UNKNOWN_VERB',
  DAEMON_RUNNING: 'CLI_ERR_DAEMON_RUNNING',
  NO_SUCH_CONTROLLER: 'CLI_ERR_NO_SUCH_CONTROLLER',
  ALREADY_CONNECTED: 'CLI_ERR_ALREADY_CONNECTED',
  /** A connect adding a path sets an export-level option (nbd, attach, iopolicy…) to another value than the subsystem has. */
  PATH_OPTION_CONFLICT: 'CLI_ERR_PATH_OPTION_CONFLICT',
  STATE_FILE_INVALID: 'CFG_ERR_STATE_FILE_INVALID',
  // Controller resilience (appended)
  TARGET_UNRESPONSIVE: 'NVMF_ERR_TARGET_UNRESPONSIVE',
  SUBSYSTEM_CHANGED: 'NVMF_ERR_SUBSYSTEM_CHANGED',
  HOLD_QUEUE_FULL: 'NVMF_ERR_HOLD_QUEUE_FULL',
  CONTROLLER_DELETED: 'NVMF_ERR_CONTROLLER_DELETED',
  // Review fixes (appended)
  NAMESPACE_LIST_INVALID: 'NVMF_ERR_NAMESPACE_LIST_INVALID',
  NBD_TOO_MANY_OPTIONS: 'NBD_ERR_TOO_MANY_OPTIONS',
  // In-band authentication, DH-HMAC-CHAP (appended)
  AUTH_FAILED: 'NVMF_ERR_AUTH_FAILED',
  DHCHAP_KEY_INVALID: 'CFG_ERR_DHCHAP_KEY_INVALID',
  // Config files: /etc/nvme/discovery.conf, /etc/nvme/config.json (appended)
  CFG_SYNTAX: 'CFG_ERR_SYNTAX',
  CFG_UNKNOWN_KEY: 'CFG_ERR_UNKNOWN_KEY',
  CFG_BAD_VALUE: 'CFG_ERR_BAD_VALUE',
  CFG_MISSING_KEY: 'CFG_ERR_MISSING_KEY',
  CFG_UNSUPPORTED: 'CFG_ERR_UNSUPPORTED',
  CFG_TOO_LARGE: 'CFG_ERR_TOO_LARGE',
  // Security hardening: hostile targets and NBD clients (issue 14, appended)
  TOO_MANY_NAMESPACES: 'NVMF_ERR_TOO_MANY_NAMESPACES',
  NBD_TOO_MANY_CONNECTIONS: 'NBD_ERR_TOO_MANY_CONNECTIONS',
  NBD_IDLE_TIMEOUT: 'NBD_ERR_IDLE_TIMEOUT',
  // Secure channels: NVMe/TCP TLS and NBD TLS (appended)
  TLS_HANDSHAKE: 'NVMF_ERR_TLS_HANDSHAKE',
  TLS_UNSUPPORTED_KEY: 'NVMF_ERR_TLS_UNSUPPORTED_KEY',
  TLS_KEY_INVALID: 'NVMF_ERR_TLS_KEY_INVALID',
  TLS_KEY_NOT_FOUND: 'NVMF_ERR_TLS_KEY_NOT_FOUND',
  TLS_REQUIRED: 'NVMF_ERR_TLS_REQUIRED',
  /** Embedded target: a Connect's host/subsystem NQN differs from the TLS PSK identity's. */
  TLS_IDENTITY_MISMATCH: 'NVMF_ERR_TLS_IDENTITY_MISMATCH',
  KEY_FILE_INSECURE: 'CFG_ERR_KEY_FILE_INSECURE',
  /** An existing socket/state directory belongs to someone else or is group/other-writable. */
  UNSAFE_DIR: 'CFG_ERR_UNSAFE_DIR',
  NBD_TLS_REQUIRED: 'NBD_ERR_TLS_REQUIRED',
  NBD_INSECURE_BIND: 'NBD_ERR_INSECURE_BIND',
  // Multipath / ANA (issue 12, appended)
  /** A peer's ANA log page (LID 0Ch) is malformed (descriptor past the end, group id 0, duplicate group). */
  ANA_LOG_INVALID: 'NVMF_ERR_ANA_LOG_INVALID',
  /** A loopback TCP NBD peer owned by another local user (issue 14, finding 1). */
  NBD_PEER_REFUSED: 'NBD_ERR_PEER_REFUSED',
  // Embedded target storage (issue 15, appended)
  /** A storage backend was asked for a range outside its namespace, or not a non-negative integer one. */
  STORAGE_RANGE: 'NVMF_ERR_STORAGE_RANGE',
  /** --sticky-nbd with NBD TLS: the holder cannot hold what it cannot read. */
  NBD_STICKY_TLS_UNSUPPORTED: 'NBD_ERR_STICKY_TLS_UNSUPPORTED',
  // Host multipath (issue 12, appended)
  /** The same NSID reports other identifiers (NGUID / EUI-64 / UUID) or block size on two paths: never merged. */
  MULTIPATH_NS_MISMATCH: 'NVMF_ERR_MULTIPATH_NS_MISMATCH',
  /** A path added to a subsystem reached another subsystem NQN. */
  MULTIPATH_SUBSYSTEM_MISMATCH: 'NVMF_ERR_MULTIPATH_SUBSYSTEM_MISMATCH',
  /** A path's association died while an I/O command was outstanding (internal: the multipath layer re-issues it). */
  PATH_LOST: 'NVMF_ERR_PATH_LOST',
  /** No path can serve the namespace (every path in persistent loss, or none usable within the wait). */
  NO_USABLE_PATH: 'NVMF_ERR_MULTIPATH_NO_USABLE_PATH',
} as const;

export type ErrorCodeValue = (typeof ErrorCode)[keyof typeof ErrorCode];

/** Options for {@link NvmfNbdError}. */
export interface ErrorOptions {
  /** The underlying error, if any. */
  cause?: unknown;
  /** NVMe completion status, when the error came from a CQE. */
  status?: NvmeStatus;
  /** NBD errno to report to an NBD client for this error (EIO when absent). */
  errno?: number;
  /** NVMe/TCP Fatal Error Status to put in a TermReq, when this error ends a connection. */
  fes?: number;
  /** Byte offset of the offending field (TermReq FEI). */
  fei?: number;
  /** In-band authentication failure: the reason code and its explanation (AUTH_Failure1/2). */
  auth?: { readonly reason: number; readonly explanation: number };
}

/**
 * The project's error. `code` is stable; `status` carries the NVMe status when there is one.
 * `retriable` is false when the target set DNR, or for errors that retrying cannot fix.
 */
export class NvmfNbdError extends Error {
  readonly code: ErrorCodeValue;
  readonly status: NvmeStatus | undefined;
  readonly errno: number | undefined;
  readonly fes: number | undefined;
  readonly fei: number | undefined;
  /** DH-HMAC-CHAP failure reason code / explanation, when authentication failed. */
  readonly auth: { readonly reason: number; readonly explanation: number } | undefined;

  constructor(code: ErrorCodeValue, message: string, options: ErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'NvmfNbdError';
    this.code = code;
    this.status = options.status;
    this.errno = options.errno;
    this.fes = options.fes;
    this.fei = options.fei;
    this.auth = options.auth;
  }

  /** False when the target said Do Not Retry. */
  get retriable(): boolean {
    return this.status === undefined ? true : !this.status.dnr;
  }
}

/** True when `err` is one of ours with the given code. */
export function isErrorCode(err: unknown, code: ErrorCodeValue): err is NvmfNbdError {
  return err instanceof NvmfNbdError && err.code === code;
}
