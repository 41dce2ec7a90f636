/**
 * Namespace (src/controller/namespace.ts) at its edges, over a scripted record path that keeps
 * every record it is given until the test completes it (issue 15 item 2, controller survivors):
 * - byte → LBA math on the first and the last block, one block past the end, negative and
 *   unaligned offsets / lengths (each side alone), the errno per operation (ENOSPC only for
 *   write / zeroes), read-only (EPERM) before every other check;
 * - the record path: what the record carries down (nsid, slba, nlb, a destination of the right
 *   size, FUA only with a volatile write cache, the owner), completion never synchronous, the
 *   errno of a failure by the record's own operation, records not made by createRequest;
 * - trim ranges split at 2^24 blocks, zero-fill writes in 1 MiB parts with a short last part;
 * - constructor limits (2^53 bytes exactly), capability bits, retire (code, errno, first reason
 *   kept) for new, in-flight and held requests, and drained() on mocked timers.
 * The fixture uses an NSID (7), block size (512) and size (40 blocks) all different, so a
 * swapped field shows.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Namespace, NAMESPACE_MAX_REQUEST, type NamespacePath } from '../../src/controller/namespace';
import { IoRequest } from '../../src/controller/io-request';
import { BlockOpCode, SimpleBlockRequest, type BlockHandler, type BlockRequest, type BlockOpCodeValue } from '../../src/block/types';
import { NbdErrno } from '../../src/block/errno';
import { ErrorCode, NvmfNbdError } from '../../src/errors';
import { statusError } from '../../src/wire/status';
import { rejectsCode, throwsCode } from '../helpers/assert-code';

const NSID = 7;
const BS = 512;
const BLOCKS = 40n;
const SIZE = 40 * BS;

/** What a record carried when the path got it (the record itself is reused / cleared later). */
interface Sent {
  op: BlockOpCodeValue;
  nsid: number;
  slba: bigint;
  nlb: number;
  fua: boolean;
  dataLength: number | undefined;
}

/**
 * A record path that keeps every record until the test completes it (`complete(i, err)`), or
 * completes each on the next tick by itself (`auto`). A completed READ gets byte `0x40 + slba`
 * in every byte of its destination, so a wrong slba or a wrong buffer shows in the data.
 */
class ScriptedPath implements NamespacePath {
  readonly held: IoRequest[] = [];
  readonly sent: Sent[] = [];
  readonly deallocs: Array<{ nsid: number; ranges: Array<{ slba: bigint; nlb: number }>; ns: Namespace | undefined }> = [];
  readonly zeroes: Array<{ nsid: number; slba: bigint; nlb: number; o: { deallocate?: boolean; fua?: boolean }; ns: Namespace | undefined }> = [];
  /** Failure for the next submitted records (by the auto mode) / for deallocate and writeZeroes. */
  fail: NvmfNbdError | undefined;
  /** deallocate throws synchronously instead of returning a promise. */
  throwSync: unknown;

  constructor(readonly oncs = 0x0c, readonly volatileWriteCache = true, readonly auto = false) {}

  submitIo(req: IoRequest): void {
    // A path only ever gets the namespace's own records (a controller writes its SQE into them).
    assert.ok(req instanceof IoRequest, 'the path gets IoRequest records only');
    this.sent.push({ op: req.op, nsid: req.nsid, slba: req.slba, nlb: req.nlb, fua: req.fua, dataLength: req.data?.length ?? (req.op === BlockOpCode.READ ? req.dataInLength : undefined) });
    this.held.push(req);
    if (this.auto) {
      const err = this.fail;
      process.nextTick(() => this.finish(req, err));
    }
  }

  /** Complete held record `i` (removed from `held`). */
  complete(i: number, err?: NvmfNbdError): void {
    const req = this.held[i] as IoRequest;
    this.finish(req, err);
  }

  private finish(req: IoRequest, err: NvmfNbdError | undefined): void {
    const i = this.held.indexOf(req);
    if (i >= 0) this.held.splice(i, 1);
    // A read's destination is made when the path sends it, as the queue pair does at issue.
    if (err === undefined && req.op === BlockOpCode.READ) req.allocDataIn().fill(0x40 + Number(req.slba));
    assert.ok(req.owner !== undefined, 'a record reaches the path with its owner set');
    req.owner.onIoDone(req, err);
  }

  deallocate(nsid: number, ranges: ReadonlyArray<{ slba: bigint; nlb: number }>, ns?: Namespace): Promise<void> {
    if (this.throwSync !== undefined) throw this.throwSync;
    this.deallocs.push({ nsid, ranges: ranges.map((r) => ({ ...r })), ns });
    return this.fail === undefined ? Promise.resolve() : Promise.reject(this.fail);
  }

  writeZeroes(nsid: number, slba: bigint, nlb: number, o: { deallocate?: boolean; fua?: boolean }, ns?: Namespace): Promise<void> {
    this.zeroes.push({ nsid, slba, nlb, o: { ...o }, ns });
    return this.fail === undefined ? Promise.resolve() : Promise.reject(this.fail);
  }
}

function ns(path: NamespacePath, o: { blocks?: bigint; bs?: number; readOnly?: boolean } = {}): Namespace {
  return new Namespace(path, { nsid: NSID, lbaSize: o.bs ?? BS, nsze: o.blocks ?? BLOCKS, usable: true }, { readOnly: o.readOnly ?? false });
}

/** Records every handler call, in order. */
class Handler implements BlockHandler {
  readonly calls: Array<{ req: BlockRequest; err: NvmfNbdError | undefined }> = [];
  onBlockComplete(req: BlockRequest): void {
    this.calls.push({ req, err: undefined });
  }
  onBlockError(req: BlockRequest, err: NvmfNbdError): void {
    this.calls.push({ req, err });
  }
}

function record(d: Namespace, h: BlockHandler, op: BlockOpCodeValue, offset: number, length: number, data?: Buffer, fua = false): IoRequest {
  const req = d.createRequest();
  req.op = op;
  req.offset = offset;
  req.length = length;
  req.data = data;
  req.fua = fua;
  req.handler = h;
  return req;
}

/** Lets queued nextTicks and promise reactions run. */
const settle = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

const lbaOutOfRange = (): NvmfNbdError => statusError({ sct: 0, sc: 0x80, dnr: true, more: false, crd: 0 }, 'LBA Out of Range');

/** errno and code of a rejection. */
async function failure(p: Promise<unknown>): Promise<{ errno: number | undefined; code: string }> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof NvmfNbdError, `expected NvmfNbdError, got ${String(err)}`);
    return { errno: err.errno, code: err.code };
  }
  assert.fail('expected a rejection');
}

// ---- constructor, capabilities ------------------------------------------------------------------

test('constructor: size, block size, blocks, nsid and limits from the namespace info', () => {
  const d = ns(new ScriptedPath());
  assert.deepEqual([d.nsid, d.blockSize, d.blocks, d.size, d.maxRequest, d.readOnly], [NSID, BS, BLOCKS, SIZE, 32 << 20, false]);
  assert.equal(NAMESPACE_MAX_REQUEST, 33554432);
  assert.equal(d.canWriteZeroes, true, 'Write Zeroes is always offered (emulated without ONCS bit 3)');
  assert.equal(ns(new ScriptedPath(), { readOnly: true }).readOnly, true);
  assert.equal(new Namespace(new ScriptedPath(), { nsid: 1, lbaSize: BS, nsze: 1n, usable: true }).readOnly, false, 'readOnly defaults to false');
});

test('constructor: an unusable namespace → NAMESPACE_UNSUPPORTED / ENOTSUP naming the nsid and the reason', () => {
  const p = new ScriptedPath();
  const e = throwsCode(() => new Namespace(p, { nsid: 9, lbaSize: BS, nsze: 8n, usable: false, reasonIfNot: 'metadata per block' }), ErrorCode.NAMESPACE_UNSUPPORTED);
  assert.equal(e.errno, NbdErrno.ENOTSUP);
  assert.equal(e.message, 'namespace 9: metadata per block');
  const bare = throwsCode(() => new Namespace(p, { nsid: 9, lbaSize: BS, nsze: 8n, usable: false }), ErrorCode.NAMESPACE_UNSUPPORTED);
  assert.equal(bare.message, 'namespace 9: unsupported');
});

test('constructor: exactly 2^53 − 1 bytes is served, one byte more is NAMESPACE_UNSUPPORTED / ENOTSUP', () => {
  const p = new ScriptedPath();
  const max = BigInt(Number.MAX_SAFE_INTEGER);
  assert.equal(new Namespace(p, { nsid: 3, lbaSize: 1, nsze: max, usable: true }).size, Number.MAX_SAFE_INTEGER);
  const e = throwsCode(() => new Namespace(p, { nsid: 3, lbaSize: 1, nsze: max + 1n, usable: true }), ErrorCode.NAMESPACE_UNSUPPORTED);
  assert.equal(e.errno, NbdErrno.ENOTSUP);
  assert.equal(e.message, 'namespace 3 is larger than 2^53 bytes');
});

test('capabilities: DSM is ONCS bit 2 alone, Write Zeroes bit 3 alone, flush / FUA follow VWC', () => {
  const caps = (oncs: number, vwc: boolean): boolean[] => {
    const d = ns(new ScriptedPath(oncs, vwc));
    return [d.canTrim, d.canFastZero, d.canFlush, d.canFua];
  };
  assert.deepEqual(caps(0x04, false), [true, false, false, false]);
  assert.deepEqual(caps(0x08, true), [false, true, true, true]);
  assert.deepEqual(caps(0xf3, true), [false, false, true, true], 'every other ONCS bit set');
});

// ---- byte → LBA, bounds, alignment, read-only ----------------------------------------------------

test('read: first and last block, whole device; slba / nlb / destination size exact', async () => {
  const p = new ScriptedPath(0x0c, true, true);
  const d = ns(p);
  assert.deepEqual(await d.read(0, BS), Buffer.alloc(BS, 0x40));
  assert.deepEqual(await d.read(SIZE - BS, BS), Buffer.alloc(BS, 0x40 + 39));
  assert.deepEqual(await d.read(3 * BS, 2 * BS), Buffer.alloc(2 * BS, 0x43));
  assert.equal((await d.read(0, SIZE)).length, SIZE);
  assert.deepEqual(p.sent, [
    { op: BlockOpCode.READ, nsid: NSID, slba: 0n, nlb: 1, fua: false, dataLength: BS },
    { op: BlockOpCode.READ, nsid: NSID, slba: 39n, nlb: 1, fua: false, dataLength: BS },
    { op: BlockOpCode.READ, nsid: NSID, slba: 3n, nlb: 2, fua: false, dataLength: 2 * BS },
    { op: BlockOpCode.READ, nsid: NSID, slba: 0n, nlb: 40, fua: false, dataLength: SIZE },
  ]);
  assert.equal(d.inFlight, 0);
});

test('read: large reads (16 KiB ± one block, 256 KiB, 1 MiB + one block) get a destination of exactly their length', async () => {
  const p = new ScriptedPath(0x0c, true, true);
  const d = ns(p, { blocks: 8192n });
  for (const len of [16384 - BS, 16384, 16384 + BS, 256 * 1024, (1 << 20) + BS]) {
    const b = await d.read(BS, len);
    assert.equal(b.length, len);
    assert.ok(b.every((x) => x === 0x41), `${len} bytes all read`);
  }
  assert.deepEqual(p.sent.map((s) => s.dataLength), [16384 - BS, 16384, 16384 + BS, 256 * 1024, (1 << 20) + BS]);
});

test('read: one block past the end, a run over the end, a negative offset → EINVAL; nothing sent', async () => {
  const p = new ScriptedPath(0x0c, true, true);
  const d = ns(p);
  for (const [offset, length] of [[SIZE, BS], [SIZE - BS, 2 * BS], [-BS, BS], [-BS, 2 * BS]] as const) {
    const e = await rejectsCode(d.read(offset, length), ErrorCode.INVALID_ARGUMENT, `read ${offset}+${length}`);
    assert.equal(e.errno, NbdErrno.EINVAL);
    assert.equal(e.message, `read ${offset}+${length} beyond the device (${SIZE} bytes)`);
  }
  assert.deepEqual(p.sent, []);
  assert.equal(d.inFlight, 0);
});

test('unaligned offset alone, unaligned length alone → EINVAL naming the block size, for read / write / trim / zeroes', async () => {
  const p = new ScriptedPath(0x0c, true, true);
  const d = ns(p);
  const zo = { mayDeallocate: false, fua: false, fastOnly: false };
  const cases: Array<[string, number, number, () => Promise<unknown>]> = [
    ['read', 1, BS, () => d.read(1, BS)],
    ['read', BS, BS + 1, () => d.read(BS, BS + 1)],
    ['write', BS + 256, BS, () => d.write(BS + 256, Buffer.alloc(BS), false)],
    ['write', 0, 100, () => d.write(0, Buffer.alloc(100), false)],
    ['trim', 2, BS, () => d.trim(2, BS)],
    ['trim', 0, BS - 1, () => d.trim(0, BS - 1)],
    ['zeroes', 7, BS, () => d.writeZeroes(7, BS, zo)],
    ['zeroes', 0, 3 * BS + 1, () => d.writeZeroes(0, 3 * BS + 1, zo)],
  ];
  for (const [op, offset, length, f] of cases) {
    const e = await rejectsCode(f, ErrorCode.INVALID_ARGUMENT, `${op} ${offset}+${length}`);
    assert.equal(e.errno, NbdErrno.EINVAL, `${op} ${offset}+${length}`);
    assert.equal(e.message, `${op} ${offset}+${length} not aligned to ${BS}`);
  }
  assert.deepEqual([p.sent, p.deallocs, p.zeroes], [[], [], []]);
});

test('past the end: write and zeroes → ENOSPC, trim and read → EINVAL; the last block itself is fine', async () => {
  const p = new ScriptedPath(0x0c, true, true);
  const d = ns(p);
  const zo = { mayDeallocate: false, fua: false, fastOnly: false };
  assert.deepEqual(await failure(d.write(SIZE, Buffer.alloc(BS), false)), { errno: NbdErrno.ENOSPC, code: ErrorCode.INVALID_ARGUMENT });
  assert.deepEqual(await failure(d.write(SIZE - BS, Buffer.alloc(2 * BS), false)), { errno: NbdErrno.ENOSPC, code: ErrorCode.INVALID_ARGUMENT });
  assert.deepEqual(await failure(d.writeZeroes(SIZE, BS, zo)), { errno: NbdErrno.ENOSPC, code: ErrorCode.INVALID_ARGUMENT });
  assert.deepEqual(await failure(d.trim(SIZE, BS)), { errno: NbdErrno.EINVAL, code: ErrorCode.INVALID_ARGUMENT });
  assert.deepEqual(await failure(d.read(SIZE, BS)), { errno: NbdErrno.EINVAL, code: ErrorCode.INVALID_ARGUMENT });
  assert.deepEqual(p.sent, []);
  await d.write(SIZE - BS, Buffer.alloc(BS, 1), true);
  await d.trim(SIZE - BS, BS);
  await d.writeZeroes(SIZE - BS, BS, zo);
  assert.deepEqual(p.sent, [{ op: BlockOpCode.WRITE, nsid: NSID, slba: 39n, nlb: 1, fua: true, dataLength: BS }]);
  assert.deepEqual(p.deallocs, [{ nsid: NSID, ranges: [{ slba: 39n, nlb: 1 }], ns: d }]);
  assert.deepEqual(p.zeroes, [{ nsid: NSID, slba: 39n, nlb: 1, o: { deallocate: false, fua: false }, ns: d }]);
});

test('read-only: write, trim and zeroes → EPERM before any other check (even empty or misaligned); read still works', async () => {
  const p = new ScriptedPath(0x00, true, true);
  const d = ns(p, { readOnly: true });
  const zo = { mayDeallocate: true, fua: false, fastOnly: true };
  const cases: Array<() => Promise<unknown>> = [
    () => d.write(0, Buffer.alloc(BS), false),
    () => d.write(0, Buffer.alloc(0), false),
    () => d.write(3, Buffer.alloc(BS), false),
    () => d.trim(0, BS), // no DSM either: EPERM first
    () => d.trim(0, 0),
    () => d.writeZeroes(0, 0, zo),
    () => d.writeZeroes(1, BS, zo),
  ];
  for (const f of cases) {
    const e = await rejectsCode(f, ErrorCode.INVALID_ARGUMENT);
    assert.equal(e.errno, NbdErrno.EPERM);
    assert.equal(e.message, 'device is read-only');
  }
  assert.deepEqual([p.sent, p.deallocs, p.zeroes], [[], [], []]);
  assert.equal((await d.read(0, BS)).length, BS);
});

// ---- the record path -------------------------------------------------------------------------------

test('submit: READ record carries nsid / slba / nlb / destination size (no buffer yet) / owner / ns; completes later, not in submit', async () => {
  const p = new ScriptedPath();
  const d = ns(p);
  const h = new Handler();
  const req = record(d, h, BlockOpCode.READ, 5 * BS, 3 * BS);
  d.submit(req);
  assert.equal(p.held.length, 1);
  assert.equal(p.held[0], req, 'the record itself goes down');
  assert.deepEqual([req.nsid, req.slba, req.nlb, req.data, req.dataInLength], [NSID, 5n, 3, undefined, 3 * BS]);
  assert.equal(req.owner, d);
  assert.equal(req.ns, d);
  assert.equal(d.inFlight, 1);
  p.complete(0);
  assert.equal(d.inFlight, 0);
  assert.equal(h.calls.length, 1);
  assert.equal(h.calls[0]?.err, undefined);
  assert.deepEqual(req.data, Buffer.alloc(3 * BS, 0x45));
  assert.equal(req.owner, undefined, 'the owner is cleared on completion');
  assert.equal(req.ns, undefined, 'the issuing namespace is cleared on completion');
});

test('submit: a record of length 0 (READ) or an empty WRITE completes on a later tick without reaching the path', async () => {
  const p = new ScriptedPath();
  const d = ns(p);
  const h = new Handler();
  const r = record(d, h, BlockOpCode.READ, SIZE * 4, 0); // far past the end: not checked for 0 bytes
  d.submit(r);
  const w = record(d, h, BlockOpCode.WRITE, 3, 0, Buffer.alloc(0));
  d.submit(w);
  assert.equal(h.calls.length, 0, 'never synchronously');
  await settle();
  assert.deepEqual(h.calls.map((c) => [c.req, c.err]), [[r, undefined], [w, undefined]]);
  assert.deepEqual(r.data, Buffer.alloc(0));
  assert.deepEqual([p.sent, d.inFlight], [[], 0]);
});

test('submit: a bad READ / WRITE record fails on a later tick with its errno, never reaching the path', async () => {
  const p = new ScriptedPath();
  const d = ns(p);
  const ro = ns(p, { readOnly: true });
  const h = new Handler();
  const a = record(d, h, BlockOpCode.READ, SIZE, BS);
  const b = record(d, h, BlockOpCode.WRITE, SIZE, BS, Buffer.alloc(BS));
  const c = record(d, h, BlockOpCode.WRITE, 1, BS, Buffer.alloc(BS));
  const e = record(ro, h, BlockOpCode.WRITE, 0, 0, Buffer.alloc(0));
  for (const r of [a, b]) d.submit(r);
  d.submit(c);
  ro.submit(e);
  assert.equal(h.calls.length, 0, 'never synchronously');
  await settle();
  assert.deepEqual(h.calls.map((x) => [x.req, x.err?.code, x.err?.errno]), [
    [a, ErrorCode.INVALID_ARGUMENT, NbdErrno.EINVAL],
    [b, ErrorCode.INVALID_ARGUMENT, NbdErrno.ENOSPC],
    [c, ErrorCode.INVALID_ARGUMENT, NbdErrno.EINVAL],
    [e, ErrorCode.INVALID_ARGUMENT, NbdErrno.EPERM],
  ]);
  assert.deepEqual([p.sent, d.inFlight, ro.inFlight], [[], 0, 0]);
});

test('submit: WRITE record — slba / nlb from the payload, FUA kept with a volatile write cache and dropped without', () => {
  const p = new ScriptedPath(0x0c, true);
  const q = new ScriptedPath(0x0c, false);
  const h = new Handler();
  const payload = Buffer.alloc(4 * BS, 0x5a);
  const d = ns(p);
  const nocache = ns(q);
  d.submit(record(d, h, BlockOpCode.WRITE, 36 * BS, 999, payload, true)); // length ignored: the payload's
  d.submit(record(d, h, BlockOpCode.WRITE, 0, 4 * BS, payload, false));
  nocache.submit(record(nocache, h, BlockOpCode.WRITE, BS, 4 * BS, payload, true));
  assert.deepEqual(p.sent, [
    { op: BlockOpCode.WRITE, nsid: NSID, slba: 36n, nlb: 4, fua: true, dataLength: 4 * BS },
    { op: BlockOpCode.WRITE, nsid: NSID, slba: 0n, nlb: 4, fua: false, dataLength: 4 * BS },
  ]);
  assert.deepEqual(q.sent, [{ op: BlockOpCode.WRITE, nsid: NSID, slba: 1n, nlb: 4, fua: false, dataLength: 4 * BS }]);
  assert.equal(p.held[0]?.data, payload, 'the payload itself, not a copy');
  assert.deepEqual([d.inFlight, nocache.inFlight], [2, 1]);
});

test('submit: FLUSH goes down with a volatile write cache and completes later without one', async () => {
  const p = new ScriptedPath(0x0c, true);
  const q = new ScriptedPath(0x0c, false);
  const h = new Handler();
  const d = ns(p);
  const nocache = ns(q);
  const f = record(d, h, BlockOpCode.FLUSH, 0, 0);
  d.submit(f);
  assert.deepEqual(p.sent.map((s) => [s.op, s.nsid]), [[BlockOpCode.FLUSH, NSID]]);
  const g = record(nocache, h, BlockOpCode.FLUSH, 0, 0);
  nocache.submit(g);
  assert.deepEqual([q.sent, h.calls], [[], []]);
  await settle();
  assert.deepEqual(h.calls.map((c) => [c.req, c.err]), [[g, undefined]]);
  p.complete(0);
  assert.deepEqual(h.calls.map((c) => [c.req, c.err]), [[g, undefined], [f, undefined]]);
  // The promise API: a no-op flush resolves to nothing, a real one too.
  assert.equal(await nocache.flush(), undefined);
});

test('submit: TRIM / ZEROES records and records not made by createRequest run the promise methods', async () => {
  const p = new ScriptedPath(0x0c, true, true);
  const d = ns(p);
  const h = new Handler();
  const t = record(d, h, BlockOpCode.TRIM, 2 * BS, 3 * BS);
  const z = record(d, h, BlockOpCode.ZEROES, 4 * BS, BS);
  z.mayDeallocate = true;
  z.fua = true;
  d.submit(t);
  d.submit(z);
  const plain = new SimpleBlockRequest();
  plain.op = BlockOpCode.READ;
  plain.offset = 6 * BS;
  plain.length = BS;
  plain.handler = h;
  d.submit(plain);
  assert.equal(h.calls.length, 0);
  await settle();
  await settle();
  assert.deepEqual(h.calls.map((c) => [c.req, c.err]), [[t, undefined], [z, undefined], [plain, undefined]]);
  assert.deepEqual(p.deallocs, [{ nsid: NSID, ranges: [{ slba: 2n, nlb: 3 }], ns: d }]);
  assert.deepEqual(p.zeroes, [{ nsid: NSID, slba: 4n, nlb: 1, o: { deallocate: true, fua: true }, ns: d }]);
  assert.deepEqual(plain.data, Buffer.alloc(BS, 0x46));
  assert.deepEqual(p.sent.map((s) => [s.op, s.slba, s.nlb]), [[BlockOpCode.READ, 6n, 1]]);
});

test('a failed record: errno by its own operation (LBA Out of Range: WRITE ENOSPC, READ EINVAL), code and status kept', () => {
  const p = new ScriptedPath();
  const d = ns(p);
  const h = new Handler();
  const w = record(d, h, BlockOpCode.WRITE, 0, BS, Buffer.alloc(BS));
  const r = record(d, h, BlockOpCode.READ, 0, BS);
  const f = record(d, h, BlockOpCode.FLUSH, 0, 0);
  d.submit(w);
  d.submit(r);
  d.submit(f);
  const oor = lbaOutOfRange();
  p.complete(0, oor);
  p.complete(0, oor);
  p.complete(0, oor);
  assert.deepEqual(h.calls.map((c) => [c.req, c.err?.code, c.err?.errno, c.err?.status?.sc]), [
    [w, ErrorCode.NVME_STATUS, NbdErrno.ENOSPC, 0x80],
    [r, ErrorCode.NVME_STATUS, NbdErrno.EINVAL, 0x80],
    [f, ErrorCode.NVME_STATUS, NbdErrno.EINVAL, 0x80],
  ]);
  assert.equal(h.calls[0]?.err?.cause, oor, 'a copy with errno set, the original as its cause');
  // An error whose errno the controller layer decided (ESHUTDOWN while deleting) passes as it is.
  const deleting = new NvmfNbdError(ErrorCode.CONTROLLER_DELETED, 'deleting', { errno: NbdErrno.ESHUTDOWN });
  d.submit(record(d, h, BlockOpCode.WRITE, 0, BS, Buffer.alloc(BS)));
  p.complete(0, deleting);
  assert.equal(h.calls[3]?.err, deleting);
  assert.equal(d.inFlight, 0);
});

test('a failure that is no NvmfNbdError names the operation of the record (read / write / flush failed)', async () => {
  const p = new ScriptedPath();
  const d = ns(p);
  const h = new Handler();
  d.submit(record(d, h, BlockOpCode.READ, 0, BS));
  d.submit(record(d, h, BlockOpCode.WRITE, 0, BS, Buffer.alloc(BS)));
  d.submit(record(d, h, BlockOpCode.FLUSH, 0, 0));
  for (let i = 0; i < 3; i++) p.complete(0, new Error('boom') as NvmfNbdError);
  assert.deepEqual(h.calls.map((c) => [c.err?.code, c.err?.errno, c.err?.message]), [
    [ErrorCode.CONNECTION_CLOSED, NbdErrno.EIO, 'read failed: Error: boom'],
    [ErrorCode.CONNECTION_CLOSED, NbdErrno.EIO, 'write failed: Error: boom'],
    [ErrorCode.CONNECTION_CLOSED, NbdErrno.EIO, 'flush failed: Error: boom'],
  ]);
});

test('promise API: write resolves to nothing, read to the destination; failures mapped per operation', async () => {
  const p = new ScriptedPath(0x0c, true, true);
  const d = ns(p);
  assert.equal(await d.write(BS, Buffer.alloc(BS), false), undefined);
  assert.equal(await d.flush(), undefined);
  p.fail = lbaOutOfRange();
  assert.deepEqual(await failure(d.write(0, Buffer.alloc(BS), false)), { errno: NbdErrno.ENOSPC, code: ErrorCode.NVME_STATUS });
  assert.deepEqual(await failure(d.read(0, BS)), { errno: NbdErrno.EINVAL, code: ErrorCode.NVME_STATUS });
  assert.deepEqual(await failure(d.trim(0, BS)), { errno: NbdErrno.EINVAL, code: ErrorCode.NVME_STATUS });
  assert.deepEqual(await failure(d.writeZeroes(0, BS, { mayDeallocate: false, fua: false, fastOnly: false })), { errno: NbdErrno.ENOSPC, code: ErrorCode.NVME_STATUS });
  assert.deepEqual(p.sent.map((s) => [s.op, s.slba, s.fua]), [[BlockOpCode.WRITE, 1n, false], [BlockOpCode.FLUSH, 0n, false], [BlockOpCode.WRITE, 0n, false], [BlockOpCode.READ, 0n, false]]);
  assert.equal(d.inFlight, 0);
});

// ---- trim / write zeroes -------------------------------------------------------------------------

test('trim: ranges of at most 2^24 blocks, the short last one exact; exactly 2^24 blocks is one range', async () => {
  const big = (1n << 24n) * 2n + 100n;
  const p = new ScriptedPath(0x04, false, true);
  const d = ns(p, { blocks: big });
  await d.trim(5 * BS, ((1 << 24) + 3) * BS);
  await d.trim(0, (1 << 24) * BS);
  await d.trim(BS, 2 * (1 << 24) * BS);
  assert.deepEqual(p.deallocs.map((x) => x.ranges), [
    [{ slba: 5n, nlb: 1 << 24 }, { slba: 5n + (1n << 24n), nlb: 3 }],
    [{ slba: 0n, nlb: 1 << 24 }],
    [{ slba: 1n, nlb: 1 << 24 }, { slba: 1n + (1n << 24n), nlb: 1 << 24 }],
  ]);
  assert.ok(p.deallocs.every((x) => x.nsid === NSID && x.ns === d));
});

test('trim: without DSM → UNSUPPORTED / ENOTSUP even for 0 bytes; 0 bytes with DSM resolves without a command', async () => {
  const none = ns(new ScriptedPath(0x08, true, true));
  for (const len of [BS, 0]) {
    const e = await rejectsCode(none.trim(0, len), ErrorCode.UNSUPPORTED);
    assert.equal(e.errno, NbdErrno.ENOTSUP);
    assert.equal(e.message, 'deallocate is not supported by the controller');
  }
  const p = new ScriptedPath(0x04, true, true);
  const d = ns(p);
  await d.trim(SIZE * 2, 0); // not bounds-checked: nothing to do
  assert.deepEqual(p.deallocs, []);
});

test('trim: a deallocate that throws synchronously is mapped (errno set) and not left in flight', async () => {
  const p = new ScriptedPath(0x04, true, true);
  const d = ns(p);
  p.throwSync = new NvmfNbdError(ErrorCode.UNSUPPORTED, 'no ranges today');
  const e = await rejectsCode(d.trim(0, BS), ErrorCode.UNSUPPORTED);
  assert.equal(e.errno, NbdErrno.ENOTSUP);
  assert.equal(e.message, 'no ranges today');
  assert.equal(d.inFlight, 0);
  p.throwSync = 'plain';
  const f = await rejectsCode(d.trim(BS, BS), ErrorCode.CONNECTION_CLOSED);
  assert.deepEqual([f.errno, f.message], [NbdErrno.EIO, 'trim failed: plain']);
  assert.equal(d.inFlight, 0);
  // inFlight is 0 and the count was not left negative: drained resolves at once.
  await d.drained(10);
});

test('write zeroes with ONCS bit 3: one command, deallocate and FUA passed (FUA only with a volatile write cache)', async () => {
  const p = new ScriptedPath(0x08, true, true);
  const q = new ScriptedPath(0x08, false, true);
  const d = ns(p);
  const nocache = ns(q);
  await d.writeZeroes(2 * BS, 38 * BS, { mayDeallocate: true, fua: true, fastOnly: true });
  await d.writeZeroes(0, BS, { mayDeallocate: false, fua: false, fastOnly: false });
  await nocache.writeZeroes(BS, BS, { mayDeallocate: false, fua: true, fastOnly: false });
  assert.deepEqual(p.zeroes, [
    { nsid: NSID, slba: 2n, nlb: 38, o: { deallocate: true, fua: true }, ns: d },
    { nsid: NSID, slba: 0n, nlb: 1, o: { deallocate: false, fua: false }, ns: d },
  ]);
  assert.deepEqual(q.zeroes, [{ nsid: NSID, slba: 1n, nlb: 1, o: { deallocate: false, fua: false }, ns: nocache }]);
  assert.deepEqual(p.sent, [], 'no data written');
});

test('write zeroes of 0 bytes resolves without a command, also past the end and with fastOnly without Write Zeroes', async () => {
  const p = new ScriptedPath(0x00, true, true);
  const d = ns(p);
  await d.writeZeroes(SIZE * 3, 0, { mayDeallocate: false, fua: false, fastOnly: true });
  assert.deepEqual([p.sent, p.zeroes], [[], []]);
});

test('write zeroes without ONCS bit 3: fastOnly → UNSUPPORTED / ENOTSUP after the bounds check', async () => {
  const p = new ScriptedPath(0x04, true, true);
  const d = ns(p);
  const e = await rejectsCode(d.writeZeroes(0, BS, { mayDeallocate: true, fua: false, fastOnly: true }), ErrorCode.UNSUPPORTED);
  assert.equal(e.errno, NbdErrno.ENOTSUP);
  assert.equal(e.message, 'Write Zeroes is not supported by the controller');
  // Out of range is reported as such first (ENOSPC), not as ENOTSUP.
  assert.deepEqual(await failure(d.writeZeroes(SIZE, BS, { mayDeallocate: true, fua: false, fastOnly: true })), { errno: NbdErrno.ENOSPC, code: ErrorCode.INVALID_ARGUMENT });
  assert.deepEqual([p.sent, p.zeroes], [[], []]);
});

test('write zeroes without ONCS bit 3: zero-filled writes in 1 MiB parts, the short last part exact, FUA on each', async () => {
  const blocks = 8192n; // 4 MiB of 512-byte blocks
  const p = new ScriptedPath(0x04, true, true);
  const d = ns(p, { blocks });
  const payloads: Buffer[] = [];
  const submitIo = p.submitIo.bind(p);
  p.submitIo = (req: IoRequest): void => {
    payloads.push(Buffer.from(req.data as Buffer));
    assert.equal(req.ns, d, 'each part names the namespace');
    submitIo(req);
  };
  // 1 MiB + 3 blocks from block 10: parts of 2048 blocks and 3 blocks.
  await d.writeZeroes(10 * BS, (1 << 20) + 3 * BS, { mayDeallocate: true, fua: true, fastOnly: false });
  // Less than 1 MiB: one part of exactly the length.
  await d.writeZeroes(0, 5 * BS, { mayDeallocate: false, fua: false, fastOnly: false });
  // Exactly 2 MiB: two full parts, no empty third.
  await d.writeZeroes(0, 2 << 20, { mayDeallocate: false, fua: false, fastOnly: false });
  assert.deepEqual(p.sent, [
    { op: BlockOpCode.WRITE, nsid: NSID, slba: 10n, nlb: 2048, fua: true, dataLength: 1 << 20 },
    { op: BlockOpCode.WRITE, nsid: NSID, slba: 2058n, nlb: 3, fua: true, dataLength: 3 * BS },
    { op: BlockOpCode.WRITE, nsid: NSID, slba: 0n, nlb: 5, fua: false, dataLength: 5 * BS },
    { op: BlockOpCode.WRITE, nsid: NSID, slba: 0n, nlb: 2048, fua: false, dataLength: 1 << 20 },
    { op: BlockOpCode.WRITE, nsid: NSID, slba: 2048n, nlb: 2048, fua: false, dataLength: 1 << 20 },
  ]);
  assert.ok(payloads.every((b) => b.every((x) => x === 0)), 'zeroes only');
  assert.deepEqual(p.zeroes, []);
  assert.equal(d.inFlight, 0);
});

test('write zeroes without ONCS bit 3: FUA dropped without a volatile write cache; a failed part fails the request (ENOSPC)', async () => {
  const p = new ScriptedPath(0x00, false, true);
  const d = ns(p, { blocks: 8192n });
  await d.writeZeroes(0, 2 * BS, { mayDeallocate: false, fua: true, fastOnly: false });
  assert.deepEqual(p.sent.map((s) => [s.slba, s.nlb, s.fua]), [[0n, 2, false]]);
  p.fail = lbaOutOfRange();
  assert.deepEqual(await failure(d.writeZeroes(0, 3 << 20, { mayDeallocate: false, fua: false, fastOnly: false })), { errno: NbdErrno.ENOSPC, code: ErrorCode.NVME_STATUS });
  assert.equal(p.sent.length, 2, 'stops at the first failed part');
  assert.equal(d.inFlight, 0);
});

// ---- retire, in flight, drained ---------------------------------------------------------------------

test('retire: removed → NAMESPACE_NOT_FOUND / EIO, reformatted → NAMESPACE_UNSUPPORTED / EIO; the first reason stays', () => {
  const a = ns(new ScriptedPath());
  assert.deepEqual([a.retired, a.retiredReason], [false, undefined]);
  a.retire('removed');
  assert.equal(a.retired, true);
  const r = a.retiredReason as NvmfNbdError;
  assert.deepEqual([r.code, r.errno, r.message], [ErrorCode.NAMESPACE_NOT_FOUND, NbdErrno.EIO, `namespace ${NSID} was removed`]);
  a.retire('reformatted');
  assert.equal(a.retiredReason, r, 'idempotent: the first reason stays');
  const b = ns(new ScriptedPath());
  b.retire('reformatted');
  const f = b.retiredReason as NvmfNbdError;
  assert.deepEqual([f.code, f.errno, f.message], [ErrorCode.NAMESPACE_UNSUPPORTED, NbdErrno.EIO, `namespace ${NSID} changed its block size; its export must be rebuilt`]);
});

test('retired: every new request (record or promise, any operation, even empty or invalid) → the retire error, nothing sent', async () => {
  const p = new ScriptedPath(0x0c, true, true);
  const d = ns(p);
  d.retire('removed');
  const gone = d.retiredReason;
  const h = new Handler();
  const recs = [
    record(d, h, BlockOpCode.READ, 0, BS),
    record(d, h, BlockOpCode.READ, 0, 0),
    record(d, h, BlockOpCode.WRITE, 0, BS, Buffer.alloc(BS)),
    record(d, h, BlockOpCode.FLUSH, 0, 0),
    record(d, h, BlockOpCode.TRIM, 0, BS),
  ];
  for (const r of recs) d.submit(r);
  assert.equal(h.calls.length, 0, 'never synchronously');
  await settle();
  assert.deepEqual(h.calls.map((c) => [c.req, c.err]), recs.map((r) => [r, gone]));
  const zo = { mayDeallocate: false, fua: false, fastOnly: false };
  for (const f of [() => d.read(0, BS), () => d.write(0, Buffer.alloc(BS), false), () => d.flush(), () => d.trim(0, 0), () => d.trim(SIZE, BS), () => d.writeZeroes(0, 0, zo), () => d.writeZeroes(1, BS, zo)]) {
    await assert.rejects(f(), (e: unknown) => e === gone);
  }
  assert.deepEqual([p.sent, p.deallocs, p.zeroes, d.inFlight], [[], [], [], 0]);
});

test('retired with requests in flight: a failing one gets the retire error (EIO), not the errno of its status; a succeeding one succeeds', async () => {
  const p = new ScriptedPath();
  const d = ns(p);
  const h = new Handler();
  const w = record(d, h, BlockOpCode.WRITE, 0, BS, Buffer.alloc(BS));
  const r = record(d, h, BlockOpCode.READ, BS, BS);
  d.submit(w);
  d.submit(r);
  d.retire('reformatted');
  p.complete(0, lbaOutOfRange()); // would be ENOSPC
  p.complete(0);
  assert.deepEqual(h.calls.map((c) => [c.req, c.err]), [[w, d.retiredReason], [r, undefined]]);
  assert.equal(d.inFlight, 0);
  // The promise path too (trim in flight at retirement).
  const q = new ScriptedPath(0x04, true);
  const e = ns(q);
  let reject!: (err: unknown) => void;
  q.deallocate = () => new Promise<void>((_resolve, rej) => { reject = rej; });
  const t = e.trim(0, BS);
  assert.equal(e.inFlight, 1);
  e.retire('removed');
  reject(new NvmfNbdError(ErrorCode.CONNECTION_CLOSED, 'lost'));
  await assert.rejects(t, (x: unknown) => x === e.retiredReason);
  assert.equal(e.inFlight, 0);
});

test('inFlight counts records until completion and promise operations until settlement', async () => {
  const p = new ScriptedPath(0x0c, true);
  const d = ns(p);
  const h = new Handler();
  d.submit(record(d, h, BlockOpCode.READ, 0, BS));
  d.submit(record(d, h, BlockOpCode.WRITE, 0, BS, Buffer.alloc(BS)));
  d.submit(record(d, h, BlockOpCode.FLUSH, 0, 0));
  assert.equal(d.inFlight, 3);
  p.complete(1);
  assert.equal(d.inFlight, 2);
  p.complete(0, lbaOutOfRange());
  assert.equal(d.inFlight, 1);
  p.complete(0);
  assert.equal(d.inFlight, 0);
  let resolveZ!: () => void;
  p.writeZeroes = () => new Promise<void>((resolve) => { resolveZ = resolve; });
  const z = d.writeZeroes(0, BS, { mayDeallocate: false, fua: false, fastOnly: false });
  assert.equal(d.inFlight, 1);
  resolveZ();
  await z;
  assert.equal(d.inFlight, 0);
});

test('drained: at once when idle (no timer), else when the last request completes, else after ms (mocked timers)', { timeout: 5000 }, async (t) => {
  t.mock.timers.enable({ apis: ['setTimeout'] });
  const p = new ScriptedPath();
  const d = ns(p);
  const h = new Handler();
  await d.drained(60_000); // idle: resolves without any timer tick
  d.submit(record(d, h, BlockOpCode.READ, 0, BS));
  d.submit(record(d, h, BlockOpCode.READ, BS, BS));
  let done = false;
  const w = d.drained(60_000).then(() => { done = true; });
  p.complete(0);
  await settle();
  assert.equal(done, false, 'one still in flight');
  p.complete(0);
  await w;
  assert.equal(done, true);
  // Timeout: resolves after exactly ms with a request still running.
  d.submit(record(d, h, BlockOpCode.READ, 0, BS));
  let timedOut = false;
  const x = d.drained(500).then(() => { timedOut = true; });
  t.mock.timers.tick(499);
  await settle();
  assert.equal(timedOut, false);
  t.mock.timers.tick(1);
  await x;
  assert.equal(timedOut, true);
  p.complete(0);
  assert.equal(d.inFlight, 0);
});

test('drained: the first wait\'s timer is cleared when it ends idle, so it cannot cancel a later wait', { timeout: 5000 }, async (t) => {
  t.mock.timers.enable({ apis: ['setTimeout'] });
  const p = new ScriptedPath();
  const d = ns(p);
  const h = new Handler();
  d.submit(record(d, h, BlockOpCode.READ, 0, BS));
  const first = d.drained(100);
  p.complete(0);
  await first;
  d.submit(record(d, h, BlockOpCode.READ, 0, BS));
  let second = false;
  const w = d.drained(10_000).then(() => { second = true; });
  t.mock.timers.tick(100); // the first wait's timer, had it been left running
  await settle();
  assert.equal(second, false);
  p.complete(0); // must still wake the second wait
  await w;
  assert.equal(second, true);
});

test('drained: resolves after the completion\'s handler and what it queued on the next tick (the NBD reply)', { timeout: 5000 }, async () => {
  const p = new ScriptedPath();
  const d = ns(p);
  const order: string[] = [];
  const h: BlockHandler = {
    onBlockComplete: () => { order.push('handler'); process.nextTick(() => order.push('reply')); },
    onBlockError: () => assert.fail('no error'),
  };
  d.submit(record(d, h, BlockOpCode.READ, 0, BS));
  const w = d.drained(60_000).then(() => order.push('drained'));
  p.complete(0);
  await w;
  assert.deepEqual(order, ['handler', 'reply', 'drained']);
});
