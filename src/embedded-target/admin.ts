/**
 * Admin commands of the embedded target (after Connect and CC.EN): Identify, Get Log Page,
 * Set/Get Features, Asynchronous Event Request, Keep Alive, Abort. Anything else is Invalid
 * Command Opcode with DNR.
 */
import { AdminOpcode, CommandSpecificStatus, GenericStatus, Sct, type ParsedSqe } from '../wire';
import { fail, ok, type Completion, type TargetContext } from './context';
import { AEC_ANA_CHANGE, AEC_DISCOVERY_LOG, AEC_NS_ATTR, KATO_MAX_MS, type TargetController } from './target-controller';
import { ANA_LOG_RGO, Anacap, LID_ANA } from '../wire/ana';
import { MAX_ANA_GROUPS } from './ports';
import {
  ControllerType, encodeActiveNamespaceList, encodeChangedNsLog, encodeErrorLog, encodeFirmwareLog,
  encodeIdentifyController, encodeIdentifyNamespace, encodeNsDescriptors, encodeSmartLog, IDENTIFY_SIZE,
} from './pages';

const G = GenericStatus;
const CS = CommandSpecificStatus;

/** Feature identifiers the target implements. */
const Fid = { VOLATILE_WRITE_CACHE: 0x06, NUMBER_OF_QUEUES: 0x07, ASYNC_EVENT_CONFIG: 0x0b, KEEP_ALIVE_TIMER: 0x0f } as const;
/** Log page identifiers the target implements. */
const Lid = { ERROR: 0x01, SMART: 0x02, FIRMWARE: 0x03, CHANGED_NS: 0x04, ANA: LID_ANA, DISCOVERY: 0x70 } as const;
/** Every ANA state can be reported; ANAGRPID may change while attached (so no bit 6). */
const ANACAP = Anacap.OPTIMIZED | Anacap.NON_OPTIMIZED | Anacap.INACCESSIBLE | Anacap.PERSISTENT_LOSS | Anacap.CHANGE;
/** Identify CNS values the target implements. */
const Cns = { NAMESPACE: 0x00, CONTROLLER: 0x01, ACTIVE_NS_LIST: 0x02, NS_DESCRIPTORS: 0x03, CSI_CONTROLLER: 0x06 } as const;

function invalidField(): Completion {
  return fail(Sct.GENERIC, G.INVALID_FIELD);
}

function invalidNamespace(): Completion {
  return fail(Sct.GENERIC, G.INVALID_NAMESPACE_OR_FORMAT);
}

/** Execute one admin command. `maxData` is the host's buffer size (SGL length). */
export function adminCommand(ctx: TargetContext, ctrl: TargetController, s: ParsedSqe, maxData: number): Completion | Promise<Completion> {
  switch (s.opcode) {
    case AdminOpcode.IDENTIFY:
      return identify(ctx, ctrl, s);
    case AdminOpcode.GET_LOG_PAGE:
      return getLogPage(ctx, ctrl, s, maxData);
    case AdminOpcode.SET_FEATURES:
      return setFeatures(ctx, ctrl, s);
    case AdminOpcode.GET_FEATURES:
      return getFeatures(ctx, ctrl, s);
    case AdminOpcode.ASYNC_EVENT_REQUEST:
      return ctrl.queueAer();
    case AdminOpcode.KEEP_ALIVE:
      // The queue already refreshed the timer for this command.
      return ok();
    case AdminOpcode.ABORT:
      // DW0 bit 0 set: the command was not aborted (commands here finish on their own).
      return ok(1);
    default:
      return fail(Sct.GENERIC, G.INVALID_OPCODE);
  }
}

function identify(ctx: TargetContext, ctrl: TargetController, s: ParsedSqe): Completion {
  const cns = s.cdw10 & 0xff;
  const csi = s.cdw11 >>> 24;
  const sub = ctrl.subsys;
  const cfg = ctx.cfg;
  if (cns === Cns.CONTROLLER) {
    return ok(0, encodeIdentifyController({
      serial: sub.serial,
      model: sub.model,
      firmware: cfg.firmware,
      mdts: cfg.mdts,
      cntlid: ctrl.cntlid,
      type: sub.discovery ? ControllerType.DISCOVERY : ControllerType.IO,
      kas: cfg.kas,
      maxcmd: cfg.queueSize,
      nn: sub.discovery ? 0 : cfg.nn,
      aerl: cfg.aerl,
      subnqn: sub.nqn,
      ioccsz: (64 + cfg.inCapsuleDataSize) / 16,
      ...(sub.discovery ? {} : { ana: { anatt: cfg.anatt, anacap: ANACAP, maxGroups: MAX_ANA_GROUPS }, cqt: cfg.cqtMs }),
    }));
  }
  if (sub.discovery) return invalidField();
  switch (cns) {
    case Cns.NAMESPACE: {
      if (s.nsid === 0 || s.nsid > cfg.nn) return invalidNamespace();
      const ns = sub.namespaces.get(s.nsid);
      // An inactive NSID in range reads as a zero-filled structure (NVMe Base 2.0 §5.17.2.1).
      if (ns === undefined) return ok(0, Buffer.alloc(IDENTIFY_SIZE));
      return ok(0, encodeIdentifyNamespace({ nsze: BigInt(ns.blocks), lbads: ns.lbads, ids: ns.ids, anagrpid: ns.anaGroup }));
    }
    case Cns.ACTIVE_NS_LIST:
      if (s.nsid >= 0xfffffffe) return invalidNamespace();
      return ok(0, encodeActiveNamespaceList([...sub.namespaces.keys()], s.nsid));
    case Cns.NS_DESCRIPTORS: {
      const ns = sub.namespaces.get(s.nsid);
      if (ns === undefined) return invalidNamespace();
      return ok(0, encodeNsDescriptors(ns.ids));
    }
    case Cns.CSI_CONTROLLER:
      // NVM command set specific Identify Controller: all zero = no extra limits.
      return csi === 0 ? ok(0, Buffer.alloc(IDENTIFY_SIZE)) : invalidField();
    default:
      return invalidField();
  }
}

function getLogPage(ctx: TargetContext, ctrl: TargetController, s: ParsedSqe, maxData: number): Completion {
  const lid = s.cdw10 & 0xff;
  const rae = (s.cdw10 & 0x8000) !== 0;
  const numd = ((s.cdw11 & 0xffff) * 0x10000 + (s.cdw10 >>> 16)) + 1;
  const len = numd * 4;
  const offset = s.cdw13 * 0x100000000 + s.cdw12;
  // Bound the allocation by the host's buffer before building anything.
  if (len > maxData || offset % 4 !== 0) return invalidField();
  let page: Buffer;
  const disc = ctrl.subsys.discovery;
  switch (lid) {
    case Lid.ERROR:
      page = encodeErrorLog();
      break;
    case Lid.SMART: {
      const st = ctx.stats;
      page = encodeSmartLog({
        unitsRead: BigInt(Math.ceil(st.bytesRead / 512_000)),
        unitsWritten: BigInt(Math.ceil(st.bytesWritten / 512_000)),
        readCmds: BigInt(st.readCommands),
        writeCmds: BigInt(st.writeCommands),
      });
      break;
    }
    case Lid.FIRMWARE:
      page = encodeFirmwareLog(ctx.cfg.firmware);
      break;
    case Lid.CHANGED_NS:
      if (disc) return fail(Sct.COMMAND_SPECIFIC, CS.INVALID_LOG_PAGE);
      page = encodeChangedNsLog(ctrl.readChangedNs(rae));
      break;
    case Lid.ANA:
      if (disc) return fail(Sct.COMMAND_SPECIFIC, CS.INVALID_LOG_PAGE);
      // LSP bit 0 (CDW10 bit 8): Return Groups Only.
      page = ctx.anaLog(ctrl, ((s.cdw10 >>> 8) & ANA_LOG_RGO) !== 0);
      ctrl.readAnaLog(rae);
      break;
    case Lid.DISCOVERY:
      if (!disc) return fail(Sct.COMMAND_SPECIFIC, CS.INVALID_LOG_PAGE);
      page = ctx.discoveryLog();
      ctrl.readDiscoveryLog(rae);
      break;
    default:
      return fail(Sct.COMMAND_SPECIFIC, CS.INVALID_LOG_PAGE);
  }
  if (offset > page.length) return invalidField();
  const out = Buffer.alloc(len);
  page.copy(out, 0, offset, Math.min(page.length, offset + len));
  return ok(0, out);
}

function setFeatures(ctx: TargetContext, ctrl: TargetController, s: ParsedSqe): Completion {
  const fid = s.cdw10 & 0xff;
  if ((s.cdw10 & 0x80000000) !== 0) return fail(Sct.COMMAND_SPECIFIC, CS.FEATURE_NOT_SAVEABLE);
  const disc = ctrl.subsys.discovery;
  switch (fid) {
    case Fid.NUMBER_OF_QUEUES: {
      if (disc) return invalidField();
      // Fixed once I/O queues exist (NVMe Base 2.0 §5.27.1.5).
      if (ctrl.io.size > 0) return fail(Sct.GENERIC, G.COMMAND_SEQUENCE_ERROR);
      const nsqr = s.cdw11 & 0xffff;
      const ncqr = s.cdw11 >>> 16;
      if (nsqr === 0xffff || ncqr === 0xffff) return invalidField();
      const n = Math.min(nsqr + 1, ncqr + 1, ctx.cfg.maxIoQueues);
      ctrl.grantedQueues = n;
      return ok((n - 1) | ((n - 1) << 16));
    }
    case Fid.ASYNC_EVENT_CONFIG:
      // Each controller type keeps the one notice it can raise.
      ctrl.aec = (disc ? s.cdw11 & AEC_DISCOVERY_LOG : s.cdw11 & (AEC_NS_ATTR | AEC_ANA_CHANGE)) >>> 0;
      return ok();
    case Fid.KEEP_ALIVE_TIMER: {
      const kato = s.cdw11 >>> 0;
      // Same bound as Connect (Node timers overflow past 2^31 ms).
      if (kato > KATO_MAX_MS) return invalidField();
      ctrl.kato = kato;
      ctrl.armKeepAlive();
      return ok();
    }
    case Fid.VOLATILE_WRITE_CACHE:
      if (disc) return invalidField();
      ctrl.vwce = s.cdw11 & 1;
      return ok();
    default:
      return invalidField();
  }
}

function getFeatures(ctx: TargetContext, ctrl: TargetController, s: ParsedSqe): Completion {
  const fid = s.cdw10 & 0xff;
  const sel = (s.cdw10 >>> 8) & 7;
  const disc = ctrl.subsys.discovery;
  const known = fid === Fid.ASYNC_EVENT_CONFIG || fid === Fid.KEEP_ALIVE_TIMER ||
    (!disc && (fid === Fid.NUMBER_OF_QUEUES || fid === Fid.VOLATILE_WRITE_CACHE));
  if (!known) return invalidField();
  // SEL 3: capabilities — changeable (bit 2), not saveable, not namespace specific.
  if (sel === 3) return ok(0x4);
  if (sel > 3) return invalidField();
  switch (fid) {
    case Fid.NUMBER_OF_QUEUES: {
      const n = Math.max(ctrl.grantedQueues, 1);
      return ok((n - 1) | ((n - 1) << 16));
    }
    case Fid.ASYNC_EVENT_CONFIG:
      return ok(sel === 1 ? 0 : ctrl.aec);
    case Fid.KEEP_ALIVE_TIMER:
      return ok(ctrl.kato);
    case Fid.VOLATILE_WRITE_CACHE:
      return ok(ctrl.vwce);
    default:
      return invalidField();
  }
}
