/**
 * NVM I/O commands of the embedded target: Read, Write (FUA), Flush, Dataset Management
 * (deallocate) and Write Zeroes. `ioPrecheck` validates a command before its data is requested
 * (R2T), so a bad Write never makes the host send data or the target buffer it.
 */
import { GenericStatus, PathStatus, Sct } from '../wire/status';
import { AnaState } from '../wire/ana';
import { IoOpcode, type ParsedSqe } from '../wire/sqe';
import { fail, ok, type Completion, type TargetContext, type TargetNamespace } from './context';
import type { TargetController } from './target-controller';

const G = GenericStatus;
/** Data SGL Length Invalid (generic 0Fh): the SGL does not describe the command's transfer. */
const DATA_SGL_LENGTH_INVALID = 0x0f;
const NSID_ALL = 0xffffffff;
/** Size of one Dataset Management range. */
const DSM_RANGE = 16;

/** A validated LBA range. */
interface Range {
  ns: TargetNamespace;
  offset: number;
  length: number;
}

function slbaOf(s: ParsedSqe): bigint {
  return (BigInt(s.cdw11) << 32n) | BigInt(s.cdw10);
}

/**
 * The path status for a namespace whose ANA group is not accessible on the controller's port
 * (NVMe Base 2.0 §8.1.3): Asymmetric Access Inaccessible / Persistent Loss / Transition (SCT 3h
 * SC 02h / 01h / 03h), DNR clear so a multipath host retries on another path, as Linux nvmet
 * does. Undefined when the group is optimized or non-optimized there.
 */
export function anaStatus(ctrl: TargetController, ns: TargetNamespace): Completion | undefined {
  const state = ctrl.port.anaState(ns.anaGroup);
  switch (state) {
    case AnaState.OPTIMIZED:
    case AnaState.NON_OPTIMIZED:
      return undefined;
    case AnaState.INACCESSIBLE:
      return fail(Sct.PATH, PathStatus.ANA_INACCESSIBLE, false);
    case AnaState.PERSISTENT_LOSS:
      return fail(Sct.PATH, PathStatus.ANA_PERSISTENT_LOSS, false);
    case AnaState.CHANGE:
      return fail(Sct.PATH, PathStatus.ANA_TRANSITION, false);
    default: {
      const never: never = state;
      return never;
    }
  }
}

/** Namespace + ANA + LBA range check shared by Read, Write and Write Zeroes. */
function rangeOf(ctrl: TargetController, s: ParsedSqe): Range | Completion {
  const ns = ctrl.subsys.namespaces.get(s.nsid);
  if (ns === undefined) return fail(Sct.GENERIC, G.INVALID_NAMESPACE_OR_FORMAT);
  const path = anaStatus(ctrl, ns);
  if (path !== undefined) return path;
  const nlb = (s.cdw12 & 0xffff) + 1;
  const slba = slbaOf(s);
  if (slba + BigInt(nlb) > BigInt(ns.blocks)) return fail(Sct.GENERIC, G.LBA_OUT_OF_RANGE);
  return { ns, offset: Number(slba) * ns.lbaSize, length: nlb * ns.lbaSize };
}

function isRange(r: Range | Completion): r is Range {
  return (r as Range).ns !== undefined;
}

/**
 * Checks that need no data: namespace, LBA range, and that the SGL length matches the transfer.
 * Returns a failed completion, or undefined when the command may proceed.
 */
export function ioPrecheck(ctx: TargetContext, ctrl: TargetController, s: ParsedSqe): Completion | undefined {
  switch (s.opcode) {
    case IoOpcode.READ:
    case IoOpcode.WRITE: {
      const r = rangeOf(ctrl, s);
      if (!isRange(r)) return r;
      if (r.length > ctx.cfg.maxTransfer) return fail(Sct.GENERIC, G.INVALID_FIELD);
      if (s.sgl.length !== r.length) return fail(Sct.GENERIC, DATA_SGL_LENGTH_INVALID);
      return undefined;
    }
    case IoOpcode.DATASET_MANAGEMENT: {
      const ns = ctrl.subsys.namespaces.get(s.nsid);
      if (ns === undefined) return fail(Sct.GENERIC, G.INVALID_NAMESPACE_OR_FORMAT);
      const path = anaStatus(ctrl, ns);
      if (path !== undefined) return path;
      const nr = (s.cdw10 & 0xff) + 1;
      // At least NR ranges; Linux always sends a 4 KiB buffer (room for 256 ranges) whatever NR is.
      if (s.sgl.length < nr * DSM_RANGE) return fail(Sct.GENERIC, DATA_SGL_LENGTH_INVALID);
      return undefined;
    }
    default:
      return undefined;
  }
}

/** Execute one I/O command. `data` is the host's data for Write / Dataset Management. */
export async function ioCommand(ctx: TargetContext, ctrl: TargetController, s: ParsedSqe, data: Buffer | undefined): Promise<Completion> {
  const pre = ioPrecheck(ctx, ctrl, s);
  if (pre !== undefined) return pre;
  const st = ctx.stats;
  switch (s.opcode) {
    case IoOpcode.READ: {
      const r = rangeOf(ctrl, s) as Range;
      const buf = await r.ns.backend.read(r.offset, r.length);
      st.readCommands++;
      st.bytesRead += r.length;
      ctrl.port.io.readCommands++;
      ctrl.port.io.bytesRead += r.length;
      return ok(0, buf);
    }
    case IoOpcode.WRITE: {
      const r = rangeOf(ctrl, s) as Range;
      if (data === undefined || data.length !== r.length) return fail(Sct.GENERIC, DATA_SGL_LENGTH_INVALID);
      await r.ns.backend.write(r.offset, data);
      if ((s.cdw12 & (1 << 30)) !== 0) await r.ns.backend.flush();
      st.writeCommands++;
      st.bytesWritten += r.length;
      ctrl.port.io.writeCommands++;
      ctrl.port.io.bytesWritten += r.length;
      return ok();
    }
    case IoOpcode.FLUSH: {
      if (s.nsid === NSID_ALL) {
        // Only the namespaces this path can reach.
        const reachable = [...ctrl.subsys.namespaces.values()].filter((ns) => anaStatus(ctrl, ns) === undefined);
        await Promise.all(reachable.map((ns) => ns.backend.flush()));
        return ok();
      }
      const ns = ctrl.subsys.namespaces.get(s.nsid);
      if (ns === undefined) return fail(Sct.GENERIC, G.INVALID_NAMESPACE_OR_FORMAT);
      const path = anaStatus(ctrl, ns);
      if (path !== undefined) return path;
      await ns.backend.flush();
      return ok();
    }
    case IoOpcode.WRITE_ZEROES: {
      const r = rangeOf(ctrl, s);
      if (!isRange(r)) return r;
      const deac = (s.cdw12 & (1 << 25)) !== 0;
      if (deac) await r.ns.backend.deallocate(r.offset, r.length);
      else await r.ns.backend.writeZeroes(r.offset, r.length);
      if ((s.cdw12 & (1 << 30)) !== 0) await r.ns.backend.flush();
      return ok();
    }
    case IoOpcode.DATASET_MANAGEMENT: {
      const ns = ctrl.subsys.namespaces.get(s.nsid)!;
      const nr = (s.cdw10 & 0xff) + 1;
      if (data === undefined || data.length < nr * DSM_RANGE) return fail(Sct.GENERIC, DATA_SGL_LENGTH_INVALID);
      const ranges: Array<{ offset: number; length: number }> = [];
      for (let i = 0; i < nr; i++) {
        const nlb = data.readUInt32LE(i * DSM_RANGE + 4);
        const slba = data.readBigUInt64LE(i * DSM_RANGE + 8);
        if (slba + BigInt(nlb) > BigInt(ns.blocks)) return fail(Sct.GENERIC, G.LBA_OUT_OF_RANGE);
        ranges.push({ offset: Number(slba) * ns.lbaSize, length: nlb * ns.lbaSize });
      }
      // Only the Deallocate attribute has an effect; integral read/write hints are advisory.
      if ((s.cdw11 & 0x4) !== 0) {
        for (const r of ranges) if (r.length > 0) await ns.backend.deallocate(r.offset, r.length);
      }
      return ok();
    }
    default:
      return fail(Sct.GENERIC, G.INVALID_OPCODE);
  }
}
