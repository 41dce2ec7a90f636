/**
 * Namespace Identification Descriptor list (Identify CNS 03h, NVMe Base 2.0 §5.17.2.3, Figure
 * 283): a 4096-byte list of descriptors `NIDT(1) NIDL(1) reserved(2) NID(NIDL)`, ended by a
 * descriptor with NIDT 0. Types: 1 EUI-64 (8 bytes), 2 NGUID (16), 3 UUID (16), 4 Command Set
 * Identifier (1). Pure: no I/O. Unknown types are skipped by their length; a wrong length for a
 * known type, or a descriptor running past the buffer, ends the walk (what came before counts).
 */

/** The identifiers of one namespace (absent when not reported or all zero). */
export interface NamespaceIdentifiers {
  eui64?: Buffer;
  nguid?: Buffer;
  uuid?: Buffer;
  csi?: number;
}

/** Descriptor types (NIDT). */
export const Nidt = { EUI64: 1, NGUID: 2, UUID: 3, CSI: 4 } as const;
const LENGTHS: Readonly<Record<number, number>> = { 1: 8, 2: 16, 3: 16, 4: 1 };

const isZero = (b: Buffer): boolean => b.every((x) => x === 0);

/** Parse a Namespace Identification Descriptor list. */
export function parseNsIdDescriptors(b: Buffer): NamespaceIdentifiers {
  const out: NamespaceIdentifiers = {};
  let at = 0;
  while (at + 4 <= b.length) {
    const type = b[at] as number;
    const len = b[at + 1] as number;
    if (type === 0) break;
    if (at + 4 + len > b.length) break;
    const want = LENGTHS[type];
    if (want !== undefined && len !== want) break;
    const nid = Buffer.from(b.subarray(at + 4, at + 4 + len));
    if (type === Nidt.EUI64 && !isZero(nid)) out.eui64 ??= nid;
    else if (type === Nidt.NGUID && !isZero(nid)) out.nguid ??= nid;
    else if (type === Nidt.UUID && !isZero(nid)) out.uuid ??= nid;
    else if (type === Nidt.CSI) out.csi ??= nid[0] as number;
    at += 4 + len;
  }
  return out;
}

/** Encode a descriptor list (4096 bytes) — the counterpart for tests and the target. */
export function encodeNsIdDescriptors(ids: NamespaceIdentifiers): Buffer {
  const b = Buffer.alloc(4096);
  let at = 0;
  const put = (type: number, nid: Buffer): void => {
    b[at] = type;
    b[at + 1] = nid.length;
    nid.copy(b, at + 4);
    at += 4 + nid.length;
  };
  if (ids.eui64 !== undefined) put(Nidt.EUI64, ids.eui64);
  if (ids.nguid !== undefined) put(Nidt.NGUID, ids.nguid);
  if (ids.uuid !== undefined) put(Nidt.UUID, ids.uuid);
  if (ids.csi !== undefined) put(Nidt.CSI, Buffer.from([ids.csi]));
  return b;
}

/** UUID text (8-4-4-4-12, lower case) of 16 bytes. */
export function formatUuid(b: Buffer): string {
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20, 32)}`;
}

/**
 * The stable identifier of a namespace for device names: its UUID (text), else its NGUID (32
 * hex digits), else its EUI-64 (16 hex digits); undefined when it reports none. These are what
 * Linux's own `/dev/disk/by-id/nvme-uuid.*`, `nvme-eui.*` names use, and they do not change when
 * the namespace is reached over another path or after a reboot.
 */
export function stableNamespaceId(ids: NamespaceIdentifiers): string | undefined {
  if (ids.uuid !== undefined) return formatUuid(ids.uuid);
  if (ids.nguid !== undefined) return ids.nguid.toString('hex');
  if (ids.eui64 !== undefined) return ids.eui64.toString('hex');
  return undefined;
}

/** The NBD backend identifier nvmf-nbd gives `nbd-client -i` (what /sys/block/nbdX/backend shows). */
export function nbdBackendIdentifier(stableId: string): string {
  return `nvmf-nbd-${stableId}`;
}
