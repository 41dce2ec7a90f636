/**
 * NVMe completion status names (NVMe Base 2.0 §4.2.3, Fabrics 1.1 §2.2 / Figure 33).
 * Used to turn a CQE status into a readable error; callers branch on `sct`/`sc`, not on names.
 */
import { ErrorCode, NvmfNbdError, type NvmeStatus } from '../errors';

/** Status Code Type. */
export const Sct = { GENERIC: 0, COMMAND_SPECIFIC: 1, MEDIA: 2, PATH: 3, VENDOR: 7 } as const;

/** Generic command status (SCT 0). */
export const GenericStatus = {
  SUCCESS: 0x00,
  INVALID_OPCODE: 0x01,
  INVALID_FIELD: 0x02,
  CID_CONFLICT: 0x03,
  DATA_TRANSFER_ERROR: 0x04,
  ABORTED_POWER_LOSS: 0x05,
  INTERNAL_ERROR: 0x06,
  ABORT_REQUESTED: 0x07,
  ABORTED_SQ_DELETION: 0x08,
  INVALID_NAMESPACE_OR_FORMAT: 0x0b,
  COMMAND_SEQUENCE_ERROR: 0x0c,
  SGL_DESCRIPTOR_TYPE_INVALID: 0x11,
  SGL_OFFSET_INVALID: 0x16,
  HOST_ID_INCONSISTENT_FORMAT: 0x18,
  KEEP_ALIVE_EXPIRED: 0x19,
  KEEP_ALIVE_INVALID: 0x1a,
  NS_WRITE_PROTECTED: 0x20,
  COMMAND_INTERRUPTED: 0x21,
  TRANSIENT_TRANSPORT_ERROR: 0x22,
  LBA_OUT_OF_RANGE: 0x80,
  CAPACITY_EXCEEDED: 0x81,
  NS_NOT_READY: 0x82,
  RESERVATION_CONFLICT: 0x83,
  FORMAT_IN_PROGRESS: 0x84,
} as const;

/** Command specific status (SCT 1) common to admin commands. */
export const CommandSpecificStatus = {
  CQ_INVALID: 0x00,
  INVALID_QUEUE_ID: 0x01,
  INVALID_QUEUE_SIZE: 0x02,
  ABORT_LIMIT_EXCEEDED: 0x03,
  AER_LIMIT_EXCEEDED: 0x05,
  INVALID_FIRMWARE_SLOT: 0x06,
  INVALID_LOG_PAGE: 0x09,
  INVALID_FORMAT: 0x0a,
  FEATURE_NOT_SAVEABLE: 0x0d,
  FEATURE_NOT_CHANGEABLE: 0x0e,
} as const;

/** Command specific status (SCT 1) of Fabrics Connect / discovery. */
export const FabricsStatus = {
  INCOMPATIBLE_FORMAT: 0x80,
  CONTROLLER_BUSY: 0x81,
  CONNECT_INVALID_PARAMETERS: 0x82,
  CONNECT_RESTART_DISCOVERY: 0x83,
  CONNECT_INVALID_HOST: 0x84,
  INVALID_QUEUE_TYPE: 0x85,
  DISCOVER_RESTART: 0x90,
  AUTH_REQUIRED: 0x91,
} as const;

/** Media and data integrity errors (SCT 2). */
export const MediaStatus = {
  WRITE_FAULT: 0x80,
  UNRECOVERED_READ_ERROR: 0x81,
  GUARD_CHECK_ERROR: 0x82,
  APP_TAG_CHECK_ERROR: 0x83,
  REF_TAG_CHECK_ERROR: 0x84,
  COMPARE_FAILURE: 0x85,
  ACCESS_DENIED: 0x86,
  DEALLOCATED_OR_UNWRITTEN: 0x87,
} as const;

/** Path related status (SCT 3). */
export const PathStatus = {
  INTERNAL_PATH_ERROR: 0x00,
  ANA_PERSISTENT_LOSS: 0x01,
  ANA_INACCESSIBLE: 0x02,
  ANA_TRANSITION: 0x03,
  CONTROLLER_PATHING_ERROR: 0x60,
  HOST_PATHING_ERROR: 0x70,
  ABORTED_BY_HOST: 0x71,
} as const;

const GENERIC_NAMES: Readonly<Record<number, string>> = {
  0x00: 'Successful Completion',
  0x01: 'Invalid Command Opcode',
  0x02: 'Invalid Field in Command',
  0x03: 'Command ID Conflict',
  0x04: 'Data Transfer Error',
  0x05: 'Commands Aborted due to Power Loss Notification',
  0x06: 'Internal Error',
  0x07: 'Command Abort Requested',
  0x08: 'Command Aborted due to SQ Deletion',
  0x09: 'Command Aborted due to Failed Fused Command',
  0x0a: 'Command Aborted due to Missing Fused Command',
  0x0b: 'Invalid Namespace or Format',
  0x0c: 'Command Sequence Error',
  0x0d: 'Invalid SGL Segment Descriptor',
  0x0e: 'Invalid Number of SGL Descriptors',
  0x0f: 'Data SGL Length Invalid',
  0x10: 'Metadata SGL Length Invalid',
  0x11: 'SGL Descriptor Type Invalid',
  0x12: 'Invalid Use of Controller Memory Buffer',
  0x13: 'PRP Offset Invalid',
  0x14: 'Atomic Write Unit Exceeded',
  0x15: 'Operation Denied',
  0x16: 'SGL Offset Invalid',
  0x18: 'Host Identifier Inconsistent Format',
  0x19: 'Keep Alive Timer Expired',
  0x1a: 'Keep Alive Timeout Invalid',
  0x1b: 'Command Aborted due to Preempt and Abort',
  0x1c: 'Sanitize Failed',
  0x1d: 'Sanitize In Progress',
  0x1e: 'SGL Data Block Granularity Invalid',
  0x1f: 'Command Not Supported for Queue in CMB',
  0x20: 'Namespace is Write Protected',
  0x21: 'Command Interrupted',
  0x22: 'Transient Transport Error',
  0x80: 'LBA Out of Range',
  0x81: 'Capacity Exceeded',
  0x82: 'Namespace Not Ready',
  0x83: 'Reservation Conflict',
  0x84: 'Format In Progress',
  0x85: 'Invalid Value Size',
  0x86: 'Invalid Key Size',
};

const COMMAND_SPECIFIC_NAMES: Readonly<Record<number, string>> = {
  0x00: 'Completion Queue Invalid',
  0x01: 'Invalid Queue Identifier',
  0x02: 'Invalid Queue Size',
  0x03: 'Abort Command Limit Exceeded',
  0x05: 'Asynchronous Event Request Limit Exceeded',
  0x06: 'Invalid Firmware Slot',
  0x07: 'Invalid Firmware Image',
  0x08: 'Invalid Interrupt Vector',
  0x09: 'Invalid Log Page',
  0x0a: 'Invalid Format',
  0x0b: 'Firmware Activation Requires Conventional Reset',
  0x0c: 'Invalid Queue Deletion',
  0x0d: 'Feature Identifier Not Saveable',
  0x0e: 'Feature Not Changeable',
  0x0f: 'Feature Not Namespace Specific',
  0x10: 'Firmware Activation Requires NVM Subsystem Reset',
  0x11: 'Firmware Activation Requires Controller Level Reset',
  0x12: 'Firmware Activation Requires Maximum Time Violation',
  0x13: 'Firmware Activation Prohibited',
  0x14: 'Overlapping Range',
  0x15: 'Namespace Insufficient Capacity',
  0x16: 'Namespace Identifier Unavailable',
  0x18: 'Namespace Already Attached',
  0x19: 'Namespace Is Private',
  0x1a: 'Namespace Not Attached',
  0x1b: 'Thin Provisioning Not Supported',
  0x1c: 'Controller List Invalid',
  0x1d: 'Device Self-test In Progress',
  0x1e: 'Boot Partition Write Prohibited',
  0x1f: 'Invalid Controller Identifier',
  // 0x80.. are defined per command; these are the Fabrics Connect / discovery ones, the only
  // command-specific codes this host's own commands can see at 0x80 and above.
  0x80: 'Incompatible Format',
  0x81: 'Controller Busy',
  0x82: 'Connect Invalid Parameters',
  0x83: 'Connect Restart Discovery',
  0x84: 'Connect Invalid Host',
  0x85: 'Invalid Queue Type',
  0x90: 'Discover Restart',
  0x91: 'Authentication Required',
};

/** I/O command specific codes (NVM Command Set), which reuse 0x80.. for other meanings. */
const IO_COMMAND_SPECIFIC_NAMES: Readonly<Record<number, string>> = {
  0x80: 'Conflicting Attributes',
  0x81: 'Invalid Protection Information',
  0x82: 'Attempted Write to Read Only Range',
  0x83: 'Command Size Limit Exceeded',
};

const MEDIA_NAMES: Readonly<Record<number, string>> = {
  0x80: 'Write Fault',
  0x81: 'Unrecovered Read Error',
  0x82: 'End-to-end Guard Check Error',
  0x83: 'End-to-end Application Tag Check Error',
  0x84: 'End-to-end Reference Tag Check Error',
  0x85: 'Compare Failure',
  0x86: 'Access Denied',
  0x87: 'Deallocated or Unwritten Logical Block',
  0x88: 'End-to-end Storage Tag Check Error',
};

const PATH_NAMES: Readonly<Record<number, string>> = {
  0x00: 'Internal Path Error',
  0x01: 'Asymmetric Access Persistent Loss',
  0x02: 'Asymmetric Access Inaccessible',
  0x03: 'Asymmetric Access Transition',
  0x60: 'Controller Pathing Error',
  0x70: 'Host Pathing Error',
  0x71: 'Command Aborted By Host',
};

/**
 * Human name of a status. Command-specific codes at 0x80 and above differ per command: by
 * default they are named as Fabrics Connect/discovery statuses; pass `{ io: true }` for an
 * I/O (NVM command set) command. Unknown combinations give "Unknown status".
 */
export function statusName(sct: number, sc: number, opts: { io?: boolean } = {}): string {
  let name: string | undefined;
  switch (sct) {
    case Sct.GENERIC:
      name = GENERIC_NAMES[sc];
      break;
    case Sct.COMMAND_SPECIFIC:
      name = (opts.io === true ? IO_COMMAND_SPECIFIC_NAMES[sc] : undefined) ?? COMMAND_SPECIFIC_NAMES[sc];
      break;
    case Sct.MEDIA:
      name = MEDIA_NAMES[sc];
      break;
    case Sct.PATH:
      name = PATH_NAMES[sc];
      break;
    case Sct.VENDOR:
      name = 'Vendor Specific';
      break;
    default:
      name = undefined;
  }
  return name ?? 'Unknown status';
}

/**
 * `Invalid Field in Command (sct 0 sc 0x02)`; with DNR set:
 * `Invalid Field in Command (sct 0 sc 0x02, dnr)`.
 */
export function formatStatus(s: NvmeStatus, opts: { io?: boolean } = {}): string {
  const sc = s.sc.toString(16).padStart(2, '0');
  return `${statusName(s.sct, s.sc, opts)} (sct ${s.sct} sc 0x${sc}${s.dnr ? ', dnr' : ''})`;
}

/** An `NVMF_ERR_NVME_STATUS` error carrying `s`; message `<what>: <formatStatus(s)>`. */
export function statusError(s: NvmeStatus, what: string, opts: { io?: boolean } = {}): NvmfNbdError {
  return new NvmfNbdError(ErrorCode.NVME_STATUS, `${what}: ${formatStatus(s, opts)}`, { status: s });
}
