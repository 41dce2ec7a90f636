/**
 * The daemon's admin verbs (id-ctrl, id-ns, get-log, admin-passthru): control-socket arguments
 * checked and turned into one admin command on a live session's controller. Split from
 * daemon.ts, which keeps the controllers' lifecycle.
 */
import { ErrorCode, NvmfNbdError } from '../errors';
import { AdminOpcode, Cns, sqeGetLogPage, sqeIdentify } from '../wire';
import type { ControllerSession } from './session';
import { argInt } from './daemon-args';

/** Largest data transfer of get-log / admin-passthru over the control socket (base64 must fit a line). */
export const MAX_PASSTHRU_DATA = 512 * 1024;

/** Identify Controller through the session's admin queue (the `id-ctrl` verb). */
export async function daemonIdCtrl(s: ControllerSession): Promise<unknown> {
  const r = await s.controller.adminCommand(sqeIdentify(Cns.CONTROLLER), { dataInLength: 4096 });
  return { name: s.name, cntlid: s.controller.cntlid, raw: (r.data as Buffer).toString('base64') };
}

/** Identify Namespace of an active namespace (the `id-ns` verb). */
export async function daemonIdNs(s: ControllerSession, a: Record<string, unknown>): Promise<unknown> {
  const nsid = argInt(a, 'nsid', 1, 0xfffffffe);
  // As the direct id-ns: an inactive namespace is an error, not a page of zeroes.
  if (!s.controller.namespaces.has(nsid)) throw new NvmfNbdError(ErrorCode.NAMESPACE_NOT_FOUND, `namespace ${nsid} is not active on ${s.name}`);
  const r = await s.controller.adminCommand(sqeIdentify(Cns.NAMESPACE, nsid), { dataInLength: 4096 });
  return { name: s.name, nsid, raw: (r.data as Buffer).toString('base64') };
}

/** Get Log Page (the `get-log` verb). */
export async function daemonGetLog(s: ControllerSession, a: Record<string, unknown>): Promise<unknown> {
  const lid = argInt(a, 'lid', 0, 255);
  const len = argInt(a, 'len', 4, MAX_PASSTHRU_DATA);
  if (len % 4 !== 0) throw new NvmfNbdError(ErrorCode.CLI_USAGE, 'log length must be a multiple of 4');
  const nsid = argInt(a, 'nsid', 0, 0xffffffff, 0xffffffff);
  const offset = argInt(a, 'offset', 0, Number.MAX_SAFE_INTEGER, 0);
  const lsp = argInt(a, 'lsp', 0, 127, 0);
  const r = await s.controller.adminCommand(sqeGetLogPage(lid, len, nsid, offset, lsp, a.rae === true), { dataInLength: len });
  return { name: s.name, lid, data: (r.data as Buffer).toString('base64') };
}

/** A user admin command (the `admin-passthru` verb); never re-sent after a lost association. */
export async function daemonAdminPassthru(s: ControllerSession, a: Record<string, unknown>): Promise<unknown> {
  const opcode = argInt(a, 'opcode', 0, 255);
  // These would break the session itself: Fabrics commands change properties/queues, and an
  // extra Asynchronous Event Request never completes.
  if (opcode === AdminOpcode.FABRICS || opcode === AdminOpcode.ASYNC_EVENT_REQUEST) {
    throw new NvmfNbdError(ErrorCode.INVALID_ARGUMENT, `opcode 0x${opcode.toString(16)} is reserved for the daemon's own use`);
  }
  const dataLen = argInt(a, 'dataLen', 0, MAX_PASSTHRU_DATA, 0);
  const sqe = Buffer.alloc(64);
  sqe[0] = opcode;
  sqe.writeUInt32LE(argInt(a, 'nsid', 0, 0xffffffff, 0), 4);
  sqe.writeUInt32LE(argInt(a, 'cdw2', 0, 0xffffffff, 0), 8);
  sqe.writeUInt32LE(argInt(a, 'cdw3', 0, 0xffffffff, 0), 12);
  for (let i = 10; i <= 15; i++) sqe.writeUInt32LE(argInt(a, `cdw${i}`, 0, 0xffffffff, 0), 40 + (i - 10) * 4);
  // Direction: as asked (`direction`: read|write|none), else from opcode bits 1:0.
  const dir = a.direction === 'write' ? 1 : a.direction === 'read' ? 2 : a.direction === 'none' ? 0 : opcode & 3;
  const o: { dataOut?: Buffer; dataInLength?: number; timeoutMs?: number } = {};
  if (typeof a.timeoutMs === 'number' && a.timeoutMs > 0) o.timeoutMs = a.timeoutMs;
  if (dir === 3) throw new NvmfNbdError(ErrorCode.UNSUPPORTED, 'bidirectional opcodes are not supported');
  if (dir === 1) {
    const data = typeof a.data === 'string' ? Buffer.from(a.data, 'base64') : Buffer.alloc(dataLen);
    if (data.length === 0 || data.length > MAX_PASSTHRU_DATA) throw new NvmfNbdError(ErrorCode.CLI_USAGE, 'a host-to-controller opcode needs 1..512 KiB of data');
    o.dataOut = data;
  } else if (dir === 2) {
    if (dataLen === 0) throw new NvmfNbdError(ErrorCode.CLI_USAGE, 'a controller-to-host opcode needs --data-len');
    o.dataInLength = dataLen;
  } else if (dataLen !== 0 || a.data !== undefined) {
    throw new NvmfNbdError(ErrorCode.CLI_USAGE, `opcode 0x${opcode.toString(16)} transfers no data (bits 1:0 are 00b)`);
  }
  // passthru: never re-sent after a lost association (the target may have executed it).
  const r = await s.controller.adminCommand(sqe, { ...o, passthru: true });
  return {
    name: s.name,
    dw0: r.cqe.dw0,
    dw1: r.cqe.dw1,
    status: r.cqe.status,
    data: r.data !== undefined ? r.data.toString('base64') : null,
  };
}
