/**
 * NVMe completion status and transport errors → NBD errno (NBD `doc/proto.md` "Error values").
 *
 * | NVMe status (SCT/SC)                                  | NBD errno                       |
 * |-------------------------------------------------------|---------------------------------|
 * | 0/0x80 LBA Out of Range                               | ENOSPC on writes, EINVAL else   |
 * | 0/0x81 Capacity Exceeded                              | ENOSPC                          |
 * | 0/0x20 Namespace Is Write Protected                   | EPERM                           |
 * | 2/0x86 Access Denied                                  | EPERM                           |
 * | 1/0x82 Attempted Write to Read Only Range             | EPERM                           |
 * | 0/0x02 Invalid Field, 0/0x0B Invalid NS or Format     | EINVAL                          |
 * | 0/0x01 Invalid Opcode, 1/0x80 Conflicting Attributes* | ENOTSUP (*EINVAL)               |
 * | 2/0x80 Write Fault, 2/0x81 Unrecovered Read Error     | EIO                             |
 * | anything else, any transport error                    | EIO                             |
 * | NVMF_ERR_UNSUPPORTED / NAMESPACE_UNSUPPORTED          | ENOTSUP                         |
 * | NVMF_ERR_INVALID_ARGUMENT                             | EINVAL                          |
 *
 * The errno is decided once and never overwritten: the resilience layer marks the errors of its
 * controller state (ESHUTDOWN while deleting, EIO after ctrl_loss_tmo); everything else is decided
 * at the edge of the namespace object (`controller/namespace.ts`, the one caller of
 * {@link withErrno}): a retired namespace (removed or reformatted: EIO), the request's bounds and
 * mode (EINVAL, ENOSPC, EPERM, ENOTSUP), and an error that arrives without one (an NVMe status,
 * a transport error) from the table above and the operation.
 */
import type { NvmeStatus } from '../errors';
import { ErrorCode, NvmfNbdError } from '../errors';
import { NbdErrno } from '../wire/nbd';

/** The NBD error values: the wire codec's table (one source of truth). */
export { NbdErrno };
export type NbdErrnoValue = (typeof NbdErrno)[keyof typeof NbdErrno];

/** What the failed request was doing (LBA Out of Range means ENOSPC only for writes). */
export type BlockOp = 'read' | 'write' | 'flush' | 'trim' | 'zeroes';

/** Map one NVMe status to the NBD errno. */
export function nvmeStatusToErrno(s: NvmeStatus, op: BlockOp): NbdErrnoValue {
  switch (s.sct) {
    case 0: // generic
      switch (s.sc) {
        case 0x01: return NbdErrno.ENOTSUP;
        case 0x02: return NbdErrno.EINVAL;
        case 0x0b: return NbdErrno.EINVAL;
        case 0x20: return NbdErrno.EPERM;
        case 0x80: return op === 'write' || op === 'zeroes' ? NbdErrno.ENOSPC : NbdErrno.EINVAL;
        case 0x81: return NbdErrno.ENOSPC;
        default: return NbdErrno.EIO;
      }
    case 1: // command specific
      switch (s.sc) {
        case 0x80: return NbdErrno.EINVAL;
        case 0x82: return NbdErrno.EPERM;
        default: return NbdErrno.EIO;
      }
    case 2: // media and data integrity
      return s.sc === 0x86 ? NbdErrno.EPERM : NbdErrno.EIO;
    default:
      return NbdErrno.EIO;
  }
}

/** The NBD errno of any error of the host engine: the one already decided, else from the table. */
export function errorToErrno(err: unknown, op: BlockOp): NbdErrnoValue {
  if (!(err instanceof NvmfNbdError)) return NbdErrno.EIO;
  if (err.errno !== undefined) return err.errno as NbdErrnoValue;
  if (err.status !== undefined) return nvmeStatusToErrno(err.status, op);
  switch (err.code) {
    case ErrorCode.UNSUPPORTED:
    case ErrorCode.NAMESPACE_UNSUPPORTED:
      return NbdErrno.ENOTSUP;
    case ErrorCode.INVALID_ARGUMENT:
      return NbdErrno.EINVAL;
    default:
      return NbdErrno.EIO;
  }
}

/**
 * Return an `NvmfNbdError` with `errno` set for the NBD layer: the error itself when a lower
 * layer already decided its errno (never overwritten), else a copy with the errno from the
 * table, keeping the original code and NVMe status (the original error becomes the cause).
 */
export function withErrno(err: unknown, op: BlockOp): NvmfNbdError {
  if (err instanceof NvmfNbdError && err.errno !== undefined) return err;
  const errno = errorToErrno(err, op);
  if (err instanceof NvmfNbdError) {
    return new NvmfNbdError(err.code, err.message, { cause: err, status: err.status, errno, fes: err.fes, fei: err.fei });
  }
  return new NvmfNbdError(ErrorCode.CONNECTION_CLOSED, `${op} failed: ${String(err)}`, { cause: err, errno });
}
