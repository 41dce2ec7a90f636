/**
 * The request side of src/controller/multipath.ts, pinned for the mutation runs
 *   npm run mutate -- src/controller/multipath.ts:801-1185 (and :401-800, :1-400)
 *     --tests=multipath-ana-invalid,multipath-ana,multipath-failover,multipath-scenario-harness,
 *     ana-wire,mut-ctrl-multipath,mut-ctrl-multipath2 --concurrency 1 --timeoutMS 5000
 * with recording fake paths (test/helpers/mp-fake-path.ts) and a hand-driven clock: deallocate /
 * write zeroes as promise operations (arguments passed through, the fenced range from the lowest
 * to the highest block, a lost one held until KATO + CQT from the loss and then sent on the other
 * path, one fence however often it is lost, an overlapping one waiting, path statuses and
 * CONTROLLER_LOST moves bounded at 16, closing / retired / no usable path refused); records
 * (path statuses retried at most 16 times, not for a retired namespace or while closing; a lost
 * read re-issued once; a flush fences nothing; a fence covers its blocks and namespace only; a
 * blocked write waits for every overlapping fence; a held write of a retired namespace drops its
 * fence; per-path counters by op); waiting for ANA (the hold limit, ctrl_loss_tmo not restarted,
 * 0 and −1); path statuses correcting the group state and re-reading the log once; the policies;
 * topology fields; holdTimeMs; close (what fails, what completes, timers cleared).
 */
import { strict as assert } from 'node:assert';
import { describe, it } from 'node:test';
import { MultipathController } from '../../src/controller/multipath';
import { ErrorCode, NvmfNbdError } from '../../src/errors';
import { NbdErrno } from '../../src/block/errno';
import { AnaState } from '../../src/wire/ana';
import { PathStatus } from '../../src/wire';
import { rejectsCode } from '../helpers/assert-code';
import { FakeClock, FakePath, NGUID, nsInfo, pathOpts, pathStatus, tick, track } from '../helpers/mp-fake-path';

const HOLD = 5000 + 6000;
const NGUID2 = Buffer.from('fedcba9876543210fedcba9876543210', 'hex');

async function two(o: { clock?: FakeClock; policy?: 'numa' | 'round-robin' | 'queue-depth' } = {}): Promise<{ mp: MultipathController; a: FakePath; b: FakePath; clock: FakeClock }> {
  const clock = o.clock ?? new FakeClock();
  const a = new FakePath(pathOpts(4420), 1);
  const b = new FakePath(pathOpts(4421), 2);
  const mp = MultipathController.fromPath(a, { clock, ...(o.policy !== undefined ? { iopolicy: o.policy } : {}) });
  await mp.attachPath(b);
  return { mp, a, b, clock };
}

const lost = (): NvmfNbdError => new NvmfNbdError(ErrorCode.PATH_LOST, 'lost in flight', { errno: NbdErrno.EIO });

describe('multipath promise operations', () => {
  it('deallocate runs on the chosen path with its arguments; counted as other; queue depth while running', async () => {
    const { mp, a, b } = await two();
    const ns = mp.namespace(1)!;
    const ranges = [{ slba: 100n, nlb: 10 }, { slba: 20n, nlb: 5 }];
    const d = track(mp.deallocate(1, ranges, ns));
    await tick();
    assert.equal(a.ops.length, 1);
    assert.equal(b.ops.length, 0);
    assert.deepEqual(a.ops[0]!.args, [1, ranges, ns]);
    assert.equal(mp.topology().paths[0]!.queueDepth, 1);
    a.ops[0]!.resolve();
    await d.p;
    const t = mp.topology().paths[0]!;
    assert.equal(t.queueDepth, 0);
    assert.deepEqual(t.io, { reads: 0, writes: 0, other: 1, bytesRead: 0, bytesWritten: 0, failovers: 0, pathErrors: 0 });
    const z = track(mp.writeZeroes(1, 40n, 8, { deallocate: true, fua: true }, ns));
    await tick();
    assert.deepEqual(a.ops[1]!.args, [1, 40n, 8, { deallocate: true, fua: true }, ns]);
    a.ops[1]!.resolve();
    await z.p;
    const z2 = track(mp.writeZeroes(1, 48n, 1));
    await tick();
    assert.deepEqual(a.ops[2]!.args, [1, 48n, 1, {}, undefined]);
    a.ops[2]!.resolve();
    await z2.p;
    await mp.close();
  });

  it('a deallocate lost with its path fences from its first to its last block until KATO + CQT, then runs on the other path', async () => {
    const clock = new FakeClock();
    const { mp, a, b } = await two({ clock });
    const ns = mp.namespace(1)!;
    const d = track(mp.deallocate(1, [{ slba: 100n, nlb: 10 }, { slba: 20n, nlb: 5 }], ns));
    await tick();
    a.setState('connecting');
    clock.advance(2000);
    a.ops[0]!.reject(lost());
    await tick();
    assert.equal(mp.heldWrites(1), 1);
    assert.equal(mp.heldWrites(2), 0);
    assert.equal(mp.topology().paths[0]!.io.failovers, 1);
    // Block 19 and 110 are outside [20, 110); 20 and 109 inside.
    const outside = [track(ns.write(19 * 512, Buffer.alloc(512), false)), track(ns.write(110 * 512, Buffer.alloc(512), false))];
    const inside = [track(ns.write(20 * 512, Buffer.alloc(512), false)), track(ns.write(109 * 512, Buffer.alloc(1024), false))];
    await tick();
    assert.deepEqual(b.running.map((r) => r.slba), [19n, 110n], 'only the writes outside the range run');
    b.complete();
    b.complete();
    await Promise.all(outside.map((x) => x.p));
    clock.advance(HOLD - 2000 - 1);
    await tick();
    assert.equal(b.ops.length, 0, 'not before the deadline (KATO + CQT from the loss, not from the rejection)');
    clock.advance(1);
    await tick();
    assert.equal(b.ops.length, 1, 'sent again on the other path');
    assert.equal(b.running.length, 0, 'the overlapping writes still wait');
    b.ops[0]!.resolve();
    await d.p;
    await tick();
    assert.deepEqual(b.running.map((r) => r.slba), [20n, 109n]);
    assert.equal(mp.heldWrites(), 0);
    b.complete();
    b.complete();
    await Promise.all(inside.map((x) => x.p));
    await mp.close();
  });

  it('a deallocate with no range runs without waiting for any fence', async () => {
    const { mp, a, b } = await two();
    const w = track(mp.namespace(1)!.write(0, Buffer.alloc(512), false));
    await tick();
    a.fail();
    const d = track(mp.deallocate(1, []));
    await tick();
    assert.equal(b.ops.length, 1);
    b.ops[0]!.resolve();
    await d.p;
    assert.equal(w.done, false);
    void mp.close();
  });

  it('a write zeroes overlapping a held write waits for the write\'s re-issue to complete', async () => {
    const clock = new FakeClock();
    const { mp, a, b } = await two({ clock });
    const ns = mp.namespace(1)!;
    const w = track(ns.write(0, Buffer.alloc(4096), false));
    await tick();
    a.fail();
    const z = track(mp.writeZeroes(1, 7n, 4, {}, ns));
    const apart = track(mp.writeZeroes(1, 8n, 4, {}, ns));
    await tick();
    assert.equal(b.ops.length, 1, 'the disjoint one runs');
    assert.deepEqual(b.ops[0]!.args.slice(0, 3), [1, 8n, 4]);
    b.ops[0]!.resolve();
    await apart.p;
    clock.advance(HOLD);
    await tick();
    assert.equal(b.running.length, 1);
    assert.equal(b.ops.length, 1, 'still waiting behind the re-issue');
    b.complete();
    await w.p;
    await tick();
    assert.equal(b.ops.length, 2);
    b.ops[1]!.resolve();
    await z.p;
    await mp.close();
  });

  it('path statuses: retried on the other path, at most 16 times, then the status', async () => {
    const { mp, a, b } = await two();
    const d = track(mp.deallocate(1, [{ slba: 0n, nlb: 1 }]));
    for (let i = 0; i < 17; i++) {
      await tick();
      const p = i % 2 === 0 ? a : b;
      const op = p.ops.shift();
      assert.ok(op !== undefined, `send ${i + 1} on ${p.options.trsvcid}`);
      op.reject(pathStatus(PathStatus.HOST_PATHING_ERROR));
    }
    await tick();
    assert.equal(d.done, true);
    assert.equal((d.error as NvmfNbdError).code, ErrorCode.NVME_STATUS);
    assert.equal(a.ops.length + b.ops.length, 0);
    assert.deepEqual(mp.topology().paths.map((p) => p.io.pathErrors), [8, 8], 'the 17th status is returned, not noted');
    await mp.close();
  });

  it('CONTROLLER_LOST from a reconnecting path that gave up: moved to a live path; from a live path: the error', async () => {
    const { mp, a, b } = await two();
    const d = track(mp.deallocate(1, [{ slba: 0n, nlb: 1 }]));
    await tick();
    a.holdsOverride = false;
    a.setState('connecting');
    const gaveUp = new NvmfNbdError(ErrorCode.CONTROLLER_LOST, 'fast_io_fail_tmo', { errno: NbdErrno.EIO });
    a.ops[0]!.reject(gaveUp);
    await tick();
    assert.equal(b.ops.length, 1);
    b.ops[0]!.resolve();
    await d.p;
    const d2 = track(mp.deallocate(1, [{ slba: 0n, nlb: 1 }]));
    await tick();
    b.ops[1]!.reject(gaveUp);
    await tick();
    assert.equal(d2.error, gaveUp, 'b is live: not retried');
    // a still holding I/O: its error is final too.
    a.holdsOverride = undefined;
    a.setState('live');
    const d3 = track(mp.deallocate(1, [{ slba: 0n, nlb: 1 }]));
    await tick();
    a.setState('connecting');
    a.ops[1]!.reject(gaveUp);
    await tick();
    assert.equal(d3.error, gaveUp, 'a holds I/O: not moved');
    await mp.close();
  });

  it('CONTROLLER_LOST with no other path that could serve: the error', async () => {
    const { mp, a, b } = await two();
    b.setState('dead');
    const d = track(mp.deallocate(1, [{ slba: 0n, nlb: 1 }]));
    await tick();
    a.state = 'connecting';
    a.holdsOverride = false;
    const gaveUp = new NvmfNbdError(ErrorCode.CONTROLLER_LOST, 'fast_io_fail_tmo', { errno: NbdErrno.EIO });
    a.ops[0]!.reject(gaveUp);
    await tick();
    assert.equal(d.error, gaveUp);
    void mp.close();
  });

  it('an error that is no NvmfNbdError is thrown as it is; other statuses too', async () => {
    const { mp, a } = await two();
    const d = track(mp.deallocate(1, [{ slba: 0n, nlb: 1 }]));
    await tick();
    const odd = new RangeError('odd');
    a.ops[0]!.reject(odd);
    await tick();
    assert.equal(d.error, odd);
    assert.equal(mp.topology().paths[0]!.queueDepth, 0);
    await mp.close();
  });

  it('refused: closing (ESHUTDOWN), retired namespace, no usable path (EIO)', async () => {
    const a = new FakePath(pathOpts(4420), 1);
    a.setAna([[1, AnaState.PERSISTENT_LOSS, [1]]], false);
    const mp = MultipathController.fromPath(a, { clock: new FakeClock() });
    const ns = mp.namespace(1)!;
    const f = await rejectsCode(mp.deallocate(1, [{ slba: 0n, nlb: 1 }], ns), ErrorCode.NO_USABLE_PATH);
    assert.equal(f.errno, NbdErrno.EIO);
    assert.equal(f.message, 'namespace 1 of nqn.2014-08.org.nvmf-nbd:mut-mp: no path can serve it');
    ns.retire('removed');
    await rejectsCode(mp.writeZeroes(1, 0n, 1, {}, ns), ErrorCode.NAMESPACE_NOT_FOUND);
    void mp.close();
    const e = await rejectsCode(mp.deallocate(1, [{ slba: 0n, nlb: 1 }]), ErrorCode.CONTROLLER_DELETED);
    assert.equal(e.errno, NbdErrno.ESHUTDOWN);
    assert.equal(e.message, 'subsystem is being closed');
    assert.equal(a.ops.length, 0);
  });

  it('no usable path yet (ANA inaccessible): the operation waits for the ANA change', async () => {
    const a = new FakePath(pathOpts(4420), 1);
    a.setAna([[1, AnaState.INACCESSIBLE, [1]]], false);
    const mp = MultipathController.fromPath(a, { clock: new FakeClock() });
    const d = track(mp.deallocate(1, [{ slba: 0n, nlb: 1 }]));
    await tick();
    assert.equal(a.ops.length, 0);
    a.setAna([[1, AnaState.OPTIMIZED, [1]]]);
    await tick();
    assert.equal(a.ops.length, 1);
    a.ops[0]!.resolve();
    await d.p;
    await mp.close();
  });
});

describe('multipath records', () => {
  it('per-path counters by op: reads, writes with bytes, flush as other', async () => {
    const { mp, a } = await two();
    const ns = mp.namespace(1)!;
    const ps = [track(ns.read(0, 1024)), track(ns.write(0, Buffer.alloc(1536), false)), track(ns.flush())];
    await tick();
    while (a.running.length > 0) a.complete();
    await Promise.all(ps.map((x) => x.p));
    assert.deepEqual(mp.topology().paths[0]!.io, { reads: 1, writes: 1, other: 1, bytesRead: 1024, bytesWritten: 1536, failovers: 0, pathErrors: 0 });
    await mp.close();
  });

  it('a record with path statuses: sent 17 times (16 retries), then the status', async () => {
    const { mp, a, b } = await two();
    const r = track(mp.namespace(1)!.read(0, 512));
    for (let i = 0; i < 17; i++) {
      await tick();
      const p = i % 2 === 0 ? a : b;
      assert.equal(p.running.length, 1, `send ${i + 1}`);
      p.complete(undefined, pathStatus(PathStatus.INTERNAL_PATH_ERROR));
    }
    await tick();
    assert.equal(r.done, true);
    assert.equal((r.error as NvmfNbdError).code, ErrorCode.NVME_STATUS);
    assert.equal(a.running.length + b.running.length, 0);
    await mp.close();
  });

  it('a path status of a retired namespace or while closing is not retried', async () => {
    const { mp, a, b } = await two();
    const ns = mp.namespace(1)!;
    const r = track(ns.read(0, 512));
    await tick();
    ns.retire('removed');
    a.complete(undefined, pathStatus(PathStatus.ANA_INACCESSIBLE));
    await tick();
    assert.equal(b.running.length, 0);
    assert.equal((r.error as NvmfNbdError).code, ErrorCode.NAMESPACE_NOT_FOUND);
    assert.equal(mp.topology().paths[0]!.io.pathErrors, 0, 'not noted');
    assert.equal(mp.topology().namespaces[0]!.paths[0]!.anaState, 'optimized', 'the group state not corrected from it');
    await mp.close();
    const t = await two();
    const r2 = track(t.mp.namespace(1)!.read(0, 512));
    await tick();
    const closing = t.mp.close();
    const st = pathStatus(PathStatus.ANA_INACCESSIBLE);
    t.a.complete(undefined, st);
    await tick();
    assert.equal(t.b.running.length, 0);
    assert.equal((r2.error as NvmfNbdError).code, ErrorCode.NVME_STATUS);
    assert.equal((r2.error as NvmfNbdError).status?.sc, PathStatus.ANA_INACCESSIBLE);
    await closing;
  });

  it('path statuses set the group state (inaccessible, persistent loss, change); other path statuses do not', async () => {
    for (const [sc, name] of [[PathStatus.ANA_INACCESSIBLE, 'inaccessible'], [PathStatus.ANA_PERSISTENT_LOSS, 'persistent-loss'], [PathStatus.ANA_TRANSITION, 'change'], [PathStatus.CONTROLLER_PATHING_ERROR, 'optimized']] as const) {
      const clock = new FakeClock();
      const { mp, a, b } = await two({ clock });
      a.anaReporting = true;
      a.refreshResult = 'pending';
      const r = track(mp.namespace(1)!.read(0, 512));
      await tick();
      a.complete(undefined, pathStatus(sc));
      await tick();
      assert.equal(a.refreshes, 1, 'the log is re-read');
      const t = mp.topology().namespaces[0]!.paths[0]!;
      assert.equal(t.anaState, name, `SC ${sc}`);
      assert.equal(t.usable, name === 'optimized');
      assert.equal(clock.timers.length, name === 'change' ? 1 : 0, 'ANATT armed only for change');
      b.complete();
      await r.p;
      // A second status while the refresh runs does not start another.
      const r2 = track(mp.namespace(1)!.read(0, 512));
      await tick();
      if (a.running.length > 0) {
        a.complete(undefined, pathStatus(sc));
        await tick();
        assert.equal(a.refreshes, 1);
      }
      while (b.running.length > 0) b.complete();
      await r2.p;
      await mp.close();
    }
  });

  it('a failed log refresh is a warning; the next status refreshes again', async () => {
    const { mp, a, b } = await two();
    a.anaReporting = true;
    a.refreshResult = 'reject';
    const warnings: unknown[] = [];
    mp.on('warning', (e) => warnings.push(e));
    const r = track(mp.namespace(1)!.read(0, 512));
    await tick();
    a.complete(undefined, pathStatus(PathStatus.CONTROLLER_PATHING_ERROR));
    await tick();
    await tick();
    assert.equal(warnings.length, 1);
    assert.equal((warnings[0] as Error).message, 'no ANA');
    b.complete();
    await r.p;
    const r2 = track(mp.namespace(1)!.read(0, 512));
    await tick();
    a.complete(undefined, pathStatus(PathStatus.CONTROLLER_PATHING_ERROR));
    await tick();
    assert.equal(a.refreshes, 2);
    b.complete();
    await r2.p;
    await mp.close();
  });

  it('a held flush fences no range: a new write runs at once', async () => {
    const { mp, a, b } = await two();
    const ns = mp.namespace(1)!;
    const f = track(ns.flush());
    await tick();
    a.fail();
    assert.equal(mp.heldWrites(1), 1);
    const w = track(ns.write(0, Buffer.alloc(512), false));
    await tick();
    assert.equal(b.running.length, 1);
    b.complete();
    await w.p;
    assert.equal(f.done, false);
    void mp.close();
  });

  it('a re-issued write lost again keeps one fence, held from the second loss', async () => {
    const clock = new FakeClock();
    const { mp, a, b } = await two({ clock });
    const w = track(mp.namespace(1)!.write(0, Buffer.alloc(512), false));
    await tick();
    a.fail();
    clock.advance(HOLD);
    await tick();
    assert.equal(b.running.length, 1);
    b.fail();
    assert.equal(mp.heldWrites(), 1);
    a.revive(1); // same cntlid: no proof for b's loss either
    await tick();
    clock.advance(HOLD - 1);
    await tick();
    assert.equal(a.running.length, 0, 'held KATO + CQT from the second loss');
    clock.advance(1);
    await tick();
    assert.equal(a.running.length, 1);
    a.complete();
    await w.p;
    assert.equal(mp.heldWrites(), 0);
    await mp.close();
  });

  it('closing while a lost record comes back: CONTROLLER_DELETED, ESHUTDOWN', async () => {
    const { mp, a } = await two();
    const w = track(mp.namespace(1)!.write(0, Buffer.alloc(512), false));
    await tick();
    let done!: () => void;
    a.close = () => new Promise<void>((r) => { done = r; });
    const closing = mp.close();
    a.fail();
    await tick();
    const e = w.error as NvmfNbdError;
    assert.equal(e.code, ErrorCode.CONTROLLER_DELETED);
    assert.equal(e.errno, NbdErrno.ESHUTDOWN);
    assert.equal(e.message, 'subsystem is being closed');
    done();
    await closing;
  });
});

describe('multipath waiting for ANA', () => {
  function inaccessible(extra: Parameters<typeof pathOpts>[1] = {}): { mp: MultipathController; a: FakePath; clock: FakeClock } {
    const clock = new FakeClock();
    const a = new FakePath(pathOpts(4420, extra), 1);
    a.setAna([[1, AnaState.INACCESSIBLE, [1]]], false);
    return { mp: MultipathController.fromPath(a, { clock }), a, clock };
  }

  it('the hold limit: bytes up to it wait, one byte more is HOLD_QUEUE_FULL', async () => {
    const { mp, a, clock } = inaccessible({ holdLimitBytes: 1024 });
    const ns = mp.namespace(1)!;
    const r1 = track(ns.read(0, 512));
    const r2 = track(ns.read(512, 512));
    const r3 = track(ns.read(1024, 512));
    await tick();
    const e = r3.error as NvmfNbdError;
    assert.equal(e.code, ErrorCode.HOLD_QUEUE_FULL);
    assert.equal(e.message, 'no usable path: 1024 bytes of I/O already waiting (limit 1024)');
    assert.equal(r1.done || r2.done, false);
    assert.deepEqual(clock.timers.map((t) => t.ms), [600_000], 'ctrl_loss_tmo default');
    a.setAna([[1, AnaState.OPTIMIZED, [1]]]);
    assert.equal(a.running.length, 2);
    assert.equal(clock.timers.length, 0, 'the wait timer is cleared');
    a.complete();
    a.complete();
    await Promise.all([r1.p, r2.p]);
    // The waiting bytes were reset: 1024 more may wait again.
    a.setAna([[1, AnaState.INACCESSIBLE, [1]]]);
    const r4 = track(ns.read(0, 1024));
    await tick();
    assert.equal(r4.done, false);
    await mp.close();
    assert.equal((r4.error as NvmfNbdError).code, ErrorCode.CONTROLLER_DELETED);
  });

  it('ctrl_loss_tmo bounds the wait (NO_USABLE_PATH, EIO); −1 waits forever', async () => {
    const { mp, clock } = inaccessible({ ctrlLossTmoMs: 5000 });
    const r = track(mp.namespace(1)!.read(0, 512));
    const r2 = track(mp.namespace(1)!.read(0, 512));
    await tick();
    clock.advance(4999);
    await tick();
    assert.equal(r.done, false);
    clock.advance(1);
    await tick();
    const e = r.error as NvmfNbdError;
    assert.equal(e.code, ErrorCode.NO_USABLE_PATH);
    assert.equal(e.errno, NbdErrno.EIO);
    assert.match(e.message, /no usable path \(ANA\) within ctrl_loss_tmo \(5000 ms\)/);
    assert.equal((r2.error as NvmfNbdError).code, ErrorCode.NO_USABLE_PATH);
    // A new wait arms a new timer.
    const r3 = track(mp.namespace(1)!.read(0, 512));
    await tick();
    assert.equal(clock.timers.length, 1);
    await mp.close();
    assert.equal((r3.error as NvmfNbdError).code, ErrorCode.CONTROLLER_DELETED);
    const w = inaccessible({ ctrlLossTmoMs: -1 });
    const r4 = track(w.mp.namespace(1)!.read(0, 512));
    await tick();
    assert.equal(w.clock.timers.length, 0);
    assert.equal(r4.done, false);
    w.clock.advance(10 ** 9);
    await tick();
    assert.equal(r4.done, false);
    await w.mp.close();
  });

  it('ctrl_loss_tmo 0 gives up at once', async () => {
    const { mp, clock } = inaccessible({ ctrlLossTmoMs: 0 });
    const r = track(mp.namespace(1)!.read(0, 512));
    await tick();
    assert.equal(clock.timers.length, 1);
    clock.advance(0);
    await tick();
    assert.equal((r.error as NvmfNbdError).code, ErrorCode.NO_USABLE_PATH);
    await mp.close();
  });
});

describe('multipath policies and topology', () => {
  it('round-robin alternates; queue-depth takes the path with fewer in flight; topology current follows', async () => {
    const { mp, a, b } = await two({ policy: 'round-robin' });
    const ns = mp.namespace(1)!;
    assert.deepEqual(mp.topology().namespaces[0]!.paths.map((p) => p.current), [true, false]);
    const rs = [0, 1, 2, 3].map((i) => track(ns.read(i * 512, 512)));
    await tick();
    assert.deepEqual([a.running.length, b.running.length], [2, 2]);
    assert.deepEqual(a.running.map((r) => r.slba), [0n, 2n]);
    assert.deepEqual(mp.topology().namespaces[0]!.paths.map((p) => p.current), [true, false]);
    mp.iopolicy = 'queue-depth';
    a.complete();
    assert.deepEqual(mp.topology().namespaces[0]!.paths.map((p) => p.current), [true, false], 'a has fewer in flight');
    b.complete();
    b.complete();
    assert.deepEqual(mp.topology().paths.map((p) => p.queueDepth), [1, 0]);
    assert.deepEqual(mp.topology().namespaces[0]!.paths.map((p) => p.current), [false, true]);
    const q = track(ns.read(0, 512));
    await tick();
    assert.equal(b.running.length, 1, 'queue-depth: b has fewer');
    a.complete();
    b.complete();
    await Promise.all([...rs, q].map((x) => x.p));
    mp.iopolicy = 'numa';
    assert.deepEqual(mp.topology().namespaces[0]!.paths.map((p) => p.current), [true, false]);
    await mp.close();
  });

  it('non-optimized only without an optimized path; the retry avoids the path that answered', async () => {
    const { mp, a, b } = await two();
    a.setAna([[1, AnaState.NON_OPTIMIZED, [1]]]);
    const ns = mp.namespace(1)!;
    const r = track(ns.read(0, 512));
    await tick();
    assert.equal(b.running.length, 1, 'b optimized');
    b.complete();
    await r.p;
    b.setAna([[1, AnaState.NON_OPTIMIZED, [1]]]);
    assert.deepEqual(mp.topology().namespaces[0]!.paths.map((p) => [p.anaState, p.usable, p.current]), [['non-optimized', true, true], ['non-optimized', true, false]]);
    const r2 = track(ns.read(0, 512));
    await tick();
    assert.equal(a.running.length, 1);
    a.complete(undefined, pathStatus(PathStatus.CONTROLLER_PATHING_ERROR));
    await tick();
    assert.equal(b.running.length, 1, 'sent again on the other path');
    b.complete();
    await r2.p;
    await mp.close();
  });

  it('topology: path fields, lastError only when set, source address only when given, namespaces sorted', async () => {
    const a = new FakePath(pathOpts(4420), 1, { namespaces: [nsInfo(3), nsInfo(1)] });
    const b = new FakePath(pathOpts(4421, { hostTraddr: '127.0.0.2' }), 2, { namespaces: [nsInfo(1)] });
    const mp = MultipathController.fromPath(a, { clock: new FakeClock() });
    await mp.attachPath(b);
    a.lastError = new NvmfNbdError(ErrorCode.CONNECTION_CLOSED, 'earlier loss');
    a.reconnects = 2;
    const t = mp.topology();
    assert.equal(t.iopolicy, 'numa');
    assert.equal(t.state, 'live');
    assert.deepEqual(t.paths[0], {
      id: '127.0.0.1:4420', traddr: '127.0.0.1', trsvcid: 4420, cntlid: 1, state: 'live', reconnects: 2,
      lastError: { code: ErrorCode.CONNECTION_CLOSED, message: 'earlier loss' }, anaGroups: [], queueDepth: 0,
      io: { reads: 0, writes: 0, other: 0, bytesRead: 0, bytesWritten: 0, failovers: 0, pathErrors: 0 },
    });
    assert.equal(t.paths[1]!.hostTraddr, '127.0.0.2');
    assert.equal('lastError' in t.paths[1]!, false);
    assert.equal('hostTraddr' in t.paths[0]!, false);
    assert.deepEqual(t.namespaces.map((n) => n.nsid), [1, 3]);
    assert.deepEqual(t.namespaces[1]!.paths.map((p) => p.id), ['127.0.0.1:4420'], 'only the paths that have it');
    assert.deepEqual(t.namespaces[0]!.paths.map((p) => ({ id: p.id, g: p.anaGroup, usable: p.usable })), [{ id: '127.0.0.1:4420', g: 1, usable: true }, { id: '127.0.0.1:4421@127.0.0.2', g: 1, usable: true }]);
    b.setState('connecting');
    assert.deepEqual(mp.topology().namespaces[0]!.paths.map((p) => p.usable), [true, false], 'not live: not usable');
    await mp.close();
  });

  it('holdTimeMs: the override; KATO 5000 by default; the target grace without CQT', async () => {
    const a = new FakePath(pathOpts(4420, { kato: undefined }), 1);
    const b = new FakePath(pathOpts(4421, { kato: 2000, targetKeepAliveGraceMs: 700 }), 2, { cqt: 0 });
    const mp = MultipathController.fromPath(a, { clock: new FakeClock() });
    await mp.attachPath(b);
    assert.equal(mp.holdTimeMs(mp.paths[0]!), 5000 + 6000);
    assert.equal(mp.holdTimeMs(mp.paths[1]!), 2000 + 2000 + 700);
    const mp2 = MultipathController.fromPath(new FakePath(pathOpts(4422), 3), { clock: new FakeClock(), writeHoldMs: 42 });
    assert.equal(mp2.holdTimeMs(mp2.paths[0]!), 42);
    await mp.close();
    await mp2.close();
  });

  it('adminCommand goes to the primary (the first live) path', async () => {
    const { mp, a, b } = await two();
    const [na, nb] = [a.admin.length, b.admin.length];
    const sqe = Buffer.alloc(64, 0x11);
    await mp.adminCommand(sqe);
    assert.equal(a.admin.at(-1), sqe);
    assert.deepEqual(a.adminOptions.at(-1), {});
    await mp.adminCommand(sqe, { timeoutMs: 77 });
    assert.deepEqual(a.adminOptions.at(-1), { timeoutMs: 77 });
    a.admin.pop();
    assert.deepEqual([a.admin.length - na, b.admin.length - nb], [1, 0]);
    a.setState('connecting');
    await mp.adminCommand(sqe);
    assert.deepEqual([a.admin.length - na, b.admin.length - nb], [1, 1]);
    await mp.close();
  });
});

describe('multipath close', () => {
  it('fails waiting, held and blocked requests (CONTROLLER_DELETED, ESHUTDOWN), closes every path, emits close once', async () => {
    const clock = new FakeClock();
    const { mp, a, b } = await two({ clock });
    const ns = mp.namespace(1)!;
    const held = track(ns.write(0, Buffer.alloc(512), false));
    await tick();
    a.fail();
    const blocked = track(ns.write(0, Buffer.alloc(512), false));
    const op = track(mp.writeZeroes(1, 0n, 1));
    b.setAna([[1, AnaState.INACCESSIBLE, [1]]]);
    const waiting = track(ns.read(4096, 512));
    await tick();
    assert.equal(b.running.length, 0);
    a.closeRejects = true;
    const closes: unknown[] = [];
    mp.on('close', (e) => closes.push(e));
    const c1 = mp.close();
    const c2 = mp.close();
    assert.equal(c1, c2);
    await c1;
    await tick();
    for (const x of [held, blocked, waiting]) assert.equal((x.error as NvmfNbdError).message, 'subsystem closed');
    for (const x of [held, blocked, waiting, op]) {
      const e = x.error as NvmfNbdError;
      assert.equal(e.code, ErrorCode.CONTROLLER_DELETED);
      assert.equal(e.errno, NbdErrno.ESHUTDOWN);
    }
    assert.equal(a.closed && b.closed, true);
    assert.deepEqual(closes, [undefined]);
    assert.equal(mp.state, 'dead');
    assert.equal(clock.timers.length, 0, 'no timer left');
    const late = track(ns.read(0, 512));
    await tick();
    assert.equal((late.error as NvmfNbdError).code, ErrorCode.CONTROLLER_DELETED);
  });
});

describe('multipath close (more)', () => {
  it('a held write already re-issued is not failed by close: it completes from its path', async () => {
    const clock = new FakeClock();
    const { mp, a, b } = await two({ clock });
    const w = track(mp.namespace(1)!.write(0, Buffer.alloc(512), false));
    await tick();
    a.fail();
    clock.advance(HOLD);
    await tick();
    assert.equal(b.running.length, 1);
    b.close = () => new Promise(() => undefined);
    void mp.close();
    await tick();
    assert.equal(w.done, false);
    b.complete();
    await tick();
    assert.equal(w.done, true);
    assert.equal(w.error, undefined);
  });

  it('ANATT timers are cleared by close', async () => {
    const clock = new FakeClock();
    const a = new FakePath(pathOpts(4420), 1);
    const mp = MultipathController.fromPath(a, { clock });
    a.setAna([[1, AnaState.CHANGE, [1]]]);
    assert.equal(clock.timers.length, 1);
    a.close = () => Promise.resolve();
    await mp.close();
    assert.equal(clock.timers.length, 0);
  });

  it('a promise operation waiting for ANA is failed by close', async () => {
    const a = new FakePath(pathOpts(4420), 1);
    a.setAna([[1, AnaState.INACCESSIBLE, [1]]], false);
    const mp = MultipathController.fromPath(a, { clock: new FakeClock() });
    const d = track(mp.deallocate(1, [{ slba: 0n, nlb: 1 }]));
    await tick();
    await mp.close();
    await tick();
    assert.equal((d.error as NvmfNbdError).code, ErrorCode.CONTROLLER_DELETED);
    assert.equal((d.error as NvmfNbdError).errno, NbdErrno.ESHUTDOWN);
  });
});

describe('multipath identifier texts', () => {
  it('the mismatch names every identifier of each side, "none" for a side without any', async () => {
    const EUI = Buffer.from('0a0b0c0d0e0f1011', 'hex');
    const U = Buffer.from('99999999888877776666555555555555', 'hex');
    const a = new FakePath(pathOpts(4420), 1, { namespaces: [nsInfo(1, { nguid: Buffer.alloc(16) })], ids: 'reject' });
    const b = new FakePath(pathOpts(4421), 2, { namespaces: [nsInfo(1, { nguid: NGUID2, eui64: EUI })], ids: new Map([[1, { nguid: NGUID2, eui64: EUI, uuid: U }]]) });
    const mp = MultipathController.fromPath(a, { clock: new FakeClock() });
    const e = await rejectsCode(mp.attachPath(b), ErrorCode.MULTIPATH_NS_MISMATCH);
    assert.equal(e.message, `namespace 1 on path 127.0.0.1:4421 has other identifiers (NGUID ${NGUID2.toString('hex')}, EUI-64 ${EUI.toString('hex')}, UUID 99999999-8888-7777-6666-555555555555) than on path 127.0.0.1:4420 (none): not the same namespace, not merged`);
    await mp.close();
  });
});

describe('multipath promise operations (bounds)', () => {
  it('CONTROLLER_LOST from paths that gave up: moved at most 16 times, then the error', async () => {
    const { mp, a, b } = await two();
    const d = track(mp.deallocate(1, [{ slba: 0n, nlb: 1 }]));
    const gaveUp = new NvmfNbdError(ErrorCode.CONTROLLER_LOST, 'fast_io_fail_tmo', { errno: NbdErrno.EIO });
    for (let i = 0; i < 17; i++) {
      await tick();
      const [p, q] = i % 2 === 0 ? [a, b] : [b, a];
      const op = p.ops.shift();
      assert.ok(op !== undefined, `send ${i + 1}`);
      q.holdsOverride = undefined;
      q.setState('live');
      p.holdsOverride = false;
      p.setState('connecting');
      op.reject(gaveUp);
    }
    await tick();
    assert.equal(d.error, gaveUp);
    assert.equal(a.ops.length + b.ops.length, 0);
    void mp.close();
  });
});

describe('multipath fences (more)', () => {
  it('a lost read re-issued elsewhere and then answered with an error: the error, not a second failover', async () => {
    const { mp, a, b } = await two();
    const r = track(mp.namespace(1)!.read(0, 512));
    await tick();
    a.fail();
    assert.equal(b.running.length, 1);
    const media = new NvmfNbdError(ErrorCode.NVME_STATUS, 'media', { errno: NbdErrno.EIO, status: { sct: 2, sc: 0x81, dnr: true, more: false, crd: 0 } });
    b.complete(undefined, media);
    await tick();
    assert.equal(r.error, media);
    assert.equal(b.running.length, 0);
    assert.deepEqual(mp.topology().paths.map((p) => p.io.failovers), [1, 0]);
    void mp.close();
  });

  it('a held write of a namespace retired meanwhile fails at its deadline and drops its fence', async () => {
    const clock = new FakeClock();
    const { mp, a, b } = await two({ clock });
    const ns = mp.namespace(1)!;
    const w = track(ns.write(0, Buffer.alloc(512), false));
    await tick();
    a.fail();
    ns.retire('removed');
    clock.advance(HOLD);
    await tick();
    assert.equal(b.running.length, 0);
    assert.equal((w.error as NvmfNbdError).code, ErrorCode.NAMESPACE_NOT_FOUND);
    assert.equal(mp.heldWrites(), 0);
    void mp.close();
  });

  it('the fence of a held write covers its blocks only (not from block 0), and its namespace only', async () => {
    const a = new FakePath(pathOpts(4420), 1, { namespaces: [nsInfo(1), nsInfo(2, { nguid: NGUID2 })] });
    const b = new FakePath(pathOpts(4421), 2, { namespaces: [nsInfo(1), nsInfo(2, { nguid: NGUID2 })] });
    const mp = MultipathController.fromPath(a, { clock: new FakeClock() });
    await mp.attachPath(b);
    const ns = mp.namespace(1)!;
    const w = track(ns.write(8 * 512, Buffer.alloc(8 * 512), false));
    await tick();
    a.fail();
    const below = track(ns.write(0, Buffer.alloc(8 * 512), false));
    const above = track(ns.write(16 * 512, Buffer.alloc(512), false));
    const other = track(mp.namespace(2)!.write(8 * 512, Buffer.alloc(512), false));
    const near = track(mp.deallocate(1, [{ slba: 6n, nlb: 1 }]));
    await tick();
    assert.deepEqual(b.running.map((r) => [r.nsid, r.slba]), [[1, 0n], [1, 16n], [2, 8n]]);
    assert.equal(b.ops.length, 1, 'a deallocate below the range runs');
    b.ops[0]!.resolve();
    while (b.running.length > 0) b.complete();
    await Promise.all([below.p, above.p, other.p, near.p]);
    assert.equal(w.done, false);
    void mp.close();
  });

  it('a blocked write waits until no fence overlaps it any more', async () => {
    const clock = new FakeClock();
    const { mp, a, b } = await two({ clock });
    const ns = mp.namespace(1)!;
    const w1 = track(ns.write(0, Buffer.alloc(512), false));
    const w2 = track(ns.write(8 * 512, Buffer.alloc(512), false));
    await tick();
    a.fail();
    const big = track(ns.write(0, Buffer.alloc(16 * 512), false));
    clock.advance(HOLD);
    await tick();
    assert.deepEqual(b.running.map((r) => r.slba), [0n, 8n]);
    b.complete(b.running[0]);
    await w1.p;
    await tick();
    assert.equal(b.running.length, 1, 'still overlaps the second held write');
    b.complete();
    await w2.p;
    await tick();
    assert.deepEqual(b.running.map((r) => r.nlb), [16]);
    b.complete();
    await big.p;
    await mp.close();
  });

  it('deallocate fences from its lowest block (ranges in any order, block 0 included)', async () => {
    for (const ranges of [[{ slba: 20n, nlb: 5 }, { slba: 100n, nlb: 10 }], [{ slba: 0n, nlb: 1 }, { slba: 50n, nlb: 1 }]]) {
      const clock = new FakeClock();
      const { mp, a, b } = await two({ clock });
      const ns = mp.namespace(1)!;
      const d = track(mp.deallocate(1, ranges, ns));
      await tick();
      a.fail();
      a.ops[0]!.reject(lost());
      await tick();
      const lo = ranges[0]!.slba;
      const w = track(ns.write(Number(lo) * 512, Buffer.alloc(512), false));
      await tick();
      assert.equal(b.running.length, 0, `block ${lo} is fenced`);
      assert.equal(w.done, false);
      void mp.close();
      void d;
    }
  });

  it('a deallocate lost twice keeps one fence; none left once it completes', async () => {
    const clock = new FakeClock();
    const { mp, a, b } = await two({ clock });
    const d = track(mp.deallocate(1, [{ slba: 0n, nlb: 4 }]));
    await tick();
    a.setState('connecting');
    a.ops[0]!.reject(lost());
    await tick();
    clock.advance(HOLD);
    await tick();
    assert.equal(b.ops.length, 1);
    b.setState('connecting');
    a.revive(1);
    b.ops[0]!.reject(lost());
    await tick();
    assert.equal(mp.heldWrites(), 1);
    clock.advance(HOLD);
    await tick();
    assert.equal(a.ops.length, 2);
    a.ops[1]!.resolve();
    await d.p;
    assert.equal(mp.heldWrites(), 0);
    const w = track(mp.namespace(1)!.write(0, Buffer.alloc(512), false));
    await tick();
    assert.equal(a.running.length, 1, 'nothing fences block 0 any more');
    a.complete();
    await w.p;
    await mp.close();
  });

  it('close while a lost deallocate waits for its deadline: CONTROLLER_DELETED', async () => {
    const { mp, a } = await two();
    const d = track(mp.deallocate(1, [{ slba: 0n, nlb: 4 }]));
    await tick();
    a.setState('connecting');
    a.ops[0]!.reject(lost());
    await tick();
    await mp.close();
    await tick();
    assert.equal((d.error as NvmfNbdError).code, ErrorCode.CONTROLLER_DELETED);
  });

  it('an error object that only looks like PATH_LOST is thrown as it is', async () => {
    const { mp, a, b } = await two();
    const d = track(mp.deallocate(1, [{ slba: 0n, nlb: 1 }]));
    await tick();
    const fake = Object.assign(new Error('not ours'), { code: ErrorCode.PATH_LOST });
    a.ops[0]!.reject(fake);
    await tick();
    assert.equal(d.error, fake);
    assert.equal(mp.heldWrites(), 0);
    assert.equal(b.ops.length, 0);
    await mp.close();
  });

  it('other errors from a path that gave up, and CONTROLLER_LOST from a live path, are not moved', async () => {
    const { mp, a, b } = await two();
    const d = track(mp.deallocate(1, [{ slba: 0n, nlb: 1 }]));
    await tick();
    a.holdsOverride = false;
    a.setState('connecting');
    const media = new NvmfNbdError(ErrorCode.NVME_STATUS, 'media', { errno: NbdErrno.EIO, status: { sct: 2, sc: 0x81, dnr: true, more: false, crd: 0 } });
    a.ops[0]!.reject(media);
    await tick();
    assert.equal(d.error, media);
    assert.equal(b.ops.length, 0);
    a.holdsOverride = undefined;
    a.setState('live');
    const d2 = track(mp.deallocate(1, [{ slba: 0n, nlb: 1 }]));
    await tick();
    const gone = new NvmfNbdError(ErrorCode.CONTROLLER_LOST, 'lost', { errno: NbdErrno.EIO });
    a.ops[1]!.reject(gone);
    await tick();
    assert.equal(d2.error, gone, 'a still live: final');
    assert.equal(b.ops.length, 0);
    await mp.close();
  });

  it('the wait bound is not restarted by a change that leaves the request waiting', async () => {
    const clock = new FakeClock();
    const a = new FakePath(pathOpts(4420, { ctrlLossTmoMs: 5000 }), 1);
    a.setAna([[1, AnaState.INACCESSIBLE, [1]]], false);
    const mp = MultipathController.fromPath(a, { clock });
    const r = track(mp.namespace(1)!.read(0, 512));
    await tick();
    clock.advance(3000);
    a.setAna([[1, AnaState.INACCESSIBLE, [1]]]);
    assert.equal(clock.timers.length, 1);
    clock.advance(2000);
    await tick();
    assert.equal((r.error as NvmfNbdError).code, ErrorCode.NO_USABLE_PATH);
    await mp.close();
  });

  it('topology ids come from any path that has them cached', async () => {
    const U = Buffer.from('abababababababababababababababab', 'hex');
    const a = new FakePath(pathOpts(4420), 1, { ids: new Map([[1, { nguid: NGUID, uuid: U }]]) });
    const b = new FakePath(pathOpts(4421), 2, { ids: new Map([[1, { nguid: NGUID, uuid: U }]]) });
    const mp = MultipathController.fromPath(a, { clock: new FakeClock() });
    await mp.attachPath(b);
    a.emit('namespaces', { added: [], removed: [], resized: [1] });
    assert.equal(mp.topology().namespaces[0]!.ids?.uuid, 'abababab-abab-abab-abab-abababababab');
    await mp.close();
  });
});
