/**
 * A {@link Namespace} over any path that also lists its namespaces (a Controller, a
 * ResilientController, or a fake backend in unit tests): what `new NvmeNamespaceDevice(c, nsid)`
 * was before the namespace became the unit. Code under test uses the controller's own object
 * (`ResilientController.namespace(nsid)`); this builds extra ones (read-only, fake paths).
 */
import { ErrorCode, NvmfNbdError } from '../../src/errors';
import { Namespace, type NamespaceOptions, type NamespacePath } from '../../src/controller/namespace';

/** The namespace facts a path lists (the subset of NamespaceInfo a Namespace needs). */
export interface ListedNamespace {
  readonly lbaSize: number;
  readonly nsze: bigint;
  readonly usable: boolean;
  readonly reasonIfNot?: string;
}

/** A path plus its namespace map (a fake backend in tests). */
export type ListingPath = NamespacePath & { readonly namespaces: ReadonlyMap<number, ListedNamespace> };

/** A Namespace for `nsid` of `path`. @throws NAMESPACE_NOT_FOUND when the path does not list it. */
export function namespaceOf(path: ListingPath, nsid: number, o: NamespaceOptions = {}): Namespace {
  const info = path.namespaces.get(nsid);
  if (info === undefined) throw new NvmfNbdError(ErrorCode.NAMESPACE_NOT_FOUND, `namespace ${nsid} is not active`);
  return new Namespace(path, { nsid, lbaSize: info.lbaSize, nsze: info.nsze, usable: info.usable, ...(info.reasonIfNot !== undefined ? { reasonIfNot: info.reasonIfNot } : {}) }, o);
}
