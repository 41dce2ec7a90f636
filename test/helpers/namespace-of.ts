/**
 * Namespaces over test paths. `namespaceOf(path, nsid)` builds a {@link Namespace} for a namespace
 * a path lists (a Controller, a ResilientController, or a fake backend): what
 * `new NvmeNamespaceDevice(c, nsid)` was before the namespace became the unit. Code under test
 * uses the controller's own object (`ResilientController.namespace(nsid)`); this builds extra ones
 * (read-only, fake paths). `promisePath(backend)` turns a promise-style fake backend into a
 * {@link NamespacePath} (the record path completing through the backend's promises).
 */
import { ErrorCode, NvmfNbdError } from '../../src/errors';
import { Namespace, type NamespaceOptions, type NamespacePath } from '../../src/controller/namespace';
import type { IoOwner, IoRequest } from '../../src/controller/io-request';
import { BlockOpCode } from '../../src/block/types';

/** The namespace facts a path lists (the subset of NamespaceInfo a Namespace needs). */
export interface ListedNamespace {
  readonly lbaSize: number;
  readonly nsze: bigint;
  readonly usable: boolean;
  readonly reasonIfNot?: string;
}

/** A fake backend in the old promise style (what tests script). */
export interface PromiseBackend {
  readonly oncs: number;
  readonly volatileWriteCache: boolean;
  read(nsid: number, slba: bigint, nlb: number, into?: Buffer): Promise<Buffer>;
  write(nsid: number, slba: bigint, data: Buffer, o: { fua?: boolean }): Promise<void>;
  flush(nsid: number): Promise<void>;
  deallocate(nsid: number, ranges: ReadonlyArray<{ slba: bigint; nlb: number }>): Promise<void>;
  writeZeroes(nsid: number, slba: bigint, nlb: number, o: { deallocate?: boolean; fua?: boolean }): Promise<void>;
}

/** A path (or fake backend) plus its namespace map. */
export type ListingPath = (NamespacePath | PromiseBackend) & { readonly namespaces: ReadonlyMap<number, ListedNamespace> };

/** The record path over a promise-style backend. */
export function promisePath(b: PromiseBackend): NamespacePath {
  return {
    get oncs() { return b.oncs; },
    get volatileWriteCache() { return b.volatileWriteCache; },
    submitIo(req: IoRequest): void {
      let p: Promise<unknown>;
      try {
        if (req.op === BlockOpCode.READ) {
          // The destination is the path's to make (NamespacePath.submitIo), as the queue pair does.
          if (req.data === undefined) req.data = req.allocDataIn();
          p = b.read(req.nsid, req.slba, req.nlb, req.data).then((d) => {
            if (d !== req.data) d.copy(req.data as Buffer);
          });
        } else if (req.op === BlockOpCode.WRITE) {
          p = b.write(req.nsid, req.slba, req.data as Buffer, { fua: req.fua });
        } else {
          p = b.flush(req.nsid);
        }
      } catch (err) {
        p = Promise.reject(err);
      }
      p.then(() => (req.owner as IoOwner).onIoDone(req, undefined), (err: unknown) => (req.owner as IoOwner).onIoDone(req, err as NvmfNbdError));
    },
    deallocate: (nsid, ranges) => b.deallocate(nsid, ranges),
    writeZeroes: (nsid, slba, nlb, o) => b.writeZeroes(nsid, slba, nlb, o),
  };
}

/** A Namespace for `nsid` of `path`. @throws NAMESPACE_NOT_FOUND when the path does not list it. */
export function namespaceOf(path: ListingPath, nsid: number, o: NamespaceOptions = {}): Namespace {
  const info = path.namespaces.get(nsid);
  if (info === undefined) throw new NvmfNbdError(ErrorCode.NAMESPACE_NOT_FOUND, `namespace ${nsid} is not active`);
  const p: NamespacePath = 'submitIo' in path ? path : promisePath(path);
  return new Namespace(p, { nsid, lbaSize: info.lbaSize, nsze: info.nsze, usable: info.usable, ...(info.reasonIfNot !== undefined ? { reasonIfNot: info.reasonIfNot } : {}) }, o);
}

/** A promise-style fake backend with its namespace map (what unit tests script). */
export type FakeBackend = PromiseBackend & { readonly namespaces: ReadonlyMap<number, ListedNamespace> };
