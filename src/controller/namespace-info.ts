/**
 * What the host knows about a namespace, and how it learns it: the classification of an
 * Identify Namespace page (servable or why not) and the checked paging of the active namespace
 * list. Split from controller.ts, which keeps the association.
 */
import { ErrorCode, NvmfNbdError } from '../errors';
import { Cns, parseIdentifyNamespace, parseNamespaceList, sqeIdentify } from '../wire';
import type { IdentifyNamespace } from '../wire';
import type { Completion } from '../transport/queue-command';

/** What the host knows about one namespace. */
export interface NamespaceInfo {
  readonly nsid: number;
  /** Logical block size in bytes from the current LBA format. */
  readonly lbaSize: number;
  /** Namespace size in logical blocks. */
  readonly nsze: bigint;
  /** False when the host cannot serve it (metadata, protection information, zero size…). */
  readonly usable: boolean;
  readonly reasonIfNot?: string;
  /**
   * Parsed Identify Namespace. The raw 4 KiB page is not kept: a target with thousands of
   * namespaces would cost 4 KiB+ each (issue 14 finding 4); `id-ns` reads it afresh.
   */
  readonly identify: IdentifyNamespace;
}

/**
 * Decide whether the host can serve a namespace: it needs a plain LBA format (no metadata, no
 * protection information), a non-zero size and, given the controller's `maxTransfer` (bytes per
 * command), a block that fits in one command.
 */
export function classifyNamespace(nsid: number, raw: Buffer, maxTransfer = Infinity): NamespaceInfo {
  const identify = parseIdentifyNamespace(raw);
  const { nsze, formatIndex: fmt, metadataSize: ms, dps } = identify;
  // Block sizes above 64 KiB are legal NVMe but no NBD client accepts them.
  const lbaSize = identify.lbaSize <= 65536 ? identify.lbaSize : 0;
  let reasonIfNot: string | undefined;
  if (nsze === 0n) reasonIfNot = 'namespace size is 0 (inactive or unallocated)';
  else if (lbaSize === 0) reasonIfNot = `LBA format ${fmt} has an unsupported block size`;
  else if (ms !== 0) reasonIfNot = `LBA format ${fmt} has ${ms} bytes of metadata per block (not supported)`;
  else if (identify.hasProtection) reasonIfNot = `end-to-end protection information type ${dps & 0x7} is enabled (not supported)`;
  // Byte offsets are JavaScript numbers (and NBD sizes u64): exact only up to 2^53.
  else if (nsze * BigInt(lbaSize) > BigInt(Number.MAX_SAFE_INTEGER)) reasonIfNot = `size ${nsze} × ${lbaSize} bytes is beyond 2^53 bytes (not supported)`;
  // One block must fit in one command, or every I/O would be refused by the queue.
  else if (lbaSize > maxTransfer) reasonIfNot = `block size ${lbaSize} is larger than the controller's maximum transfer of ${maxTransfer} bytes (not supported)`;
  return reasonIfNot === undefined
    ? { nsid, lbaSize, nsze, usable: true, identify }
    : { nsid, lbaSize, nsze, usable: false, reasonIfNot, identify };
}

/**
 * The active namespace list (Identify CNS 02h), paged through `identify` (one 4 KiB Identify per
 * page). A page lists up to 1024 NSIDs greater than the one given, in increasing order. A target that breaks that (ignores the starting
 * NSID, repeats or reorders ids) would have us page forever: every id must be greater than the
 * previous one and than the starting NSID, and no more than NN (Identify Controller; at most
 * 2^20) ids are accepted → NAMESPACE_LIST_INVALID.
 */
export async function readActiveNamespaceIds(identify: (sqe: Buffer) => Promise<Completion>, nn: number): Promise<number[]> {
  const MAX_NAMESPACES = 1 << 20;
  const ids: number[] = [];
  const limit = Math.min(nn > 0 ? nn : MAX_NAMESPACES, MAX_NAMESPACES);
  for (let after = 0; ;) {
    const { data } = await identify(sqeIdentify(Cns.ACTIVE_NS_LIST, after));
    const page = parseNamespaceList(data as Buffer);
    let prev = after;
    for (const nsid of page) {
      if (nsid <= prev) {
        throw new NvmfNbdError(ErrorCode.NAMESPACE_LIST_INVALID,
          `active namespace list from NSID ${after}: NSID ${nsid} after ${prev} (ids must increase and exceed the starting NSID)`);
      }
      prev = nsid;
    }
    if (ids.length + page.length > limit) {
      throw new NvmfNbdError(ErrorCode.NAMESPACE_LIST_INVALID, `active namespace list: more than ${limit} namespaces (NN ${nn})`);
    }
    ids.push(...page);
    if (page.length < 1024) break;
    after = prev;
  }
  return ids;
}
