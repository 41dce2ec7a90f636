/**
 * The embedded target's NVM I/O command handler (src/embedded-target/io.ts) called directly with
 * a recording storage backend (issue 15 item 2): LBA range boundaries (first/last LBA, one past
 * the end, 64-bit SLBA), every cdw flag (FUA on Write and Write Zeroes, DEAC, DSM AD, NR), the
 * SGL-length and MDTS prechecks, per-port ANA path status with DNR clear, Flush of one namespace
 * and of all reachable ones, statistics, and the unknown-opcode answer — each asserted on the
 * exact completion and the exact backend calls.
 */
import { strict as assert } from 'node:assert';
import { describe, it } from 'node:test';
import {
  encodeDsmRanges, GenericStatus, parseSqe, PathStatus, Sct, setSgl, SglType, sqeDatasetManagement, sqeFlush, sqeRead,
  sqeWrite, sqeWriteZeroes,
} from '../../src/wire';
import { AnaState } from '../../src/wire/ana';
import { ioCommand, ioPrecheck } from '../../src/embedded-target/io';
import type { Completion, TargetContext, TargetNamespace } from '../../src/embedded-target/context';
import type { TargetController } from '../../src/embedded-target/target-controller';
import type { StorageBackend } from '../../src/embedded-target';

const LBA = 512;
const BLOCKS = 64;
const NSID_ALL = 0xffffffff;
const DATA_SGL_LENGTH_INVALID = 0x0f;

/** A backend that records every call (and serves reads as a pattern of its offset). */
class Recorder implements StorageBackend {
  readonly calls: string[] = [];
  readonly description = 'recorder';
  constructor(readonly size: number, private readonly tag = '') {}
  read(offset: number, length: number): Promise<Buffer> {
    this.calls.push(`${this.tag}read ${offset} ${length}`);
    return Promise.resolve(Buffer.alloc(length, offset & 0xff));
  }
  write(offset: number, data: Buffer): Promise<void> {
    this.calls.push(`${this.tag}write ${offset} ${data.length}`);
    return Promise.resolve();
  }
  flush(): Promise<void> {
    this.calls.push(`${this.tag}flush`);
    return Promise.resolve();
  }
  deallocate(offset: number, length: number): Promise<void> {
    this.calls.push(`${this.tag}deallocate ${offset} ${length}`);
    return Promise.resolve();
  }
  writeZeroes(offset: number, length: number): Promise<void> {
    this.calls.push(`${this.tag}zeroes ${offset} ${length}`);
    return Promise.resolve();
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
}

interface Rig {
  ctx: TargetContext;
  ctrl: TargetController;
  backends: Map<number, Recorder>;
  ana: Map<number, AnaState>;
  stats: { readCommands: number; bytesRead: number; writeCommands: number; bytesWritten: number };
  portIo: { readCommands: number; bytesRead: number; writeCommands: number; bytesWritten: number };
}

/** Namespaces 1 (group 1) and 2 (group 2), BLOCKS blocks of LBA bytes each; maxTransfer 16 blocks. */
function rig(): Rig {
  const backends = new Map<number, Recorder>();
  const namespaces = new Map<number, TargetNamespace>();
  for (const nsid of [1, 2]) {
    const b = new Recorder(BLOCKS * LBA, nsid === 1 ? '' : 'ns2 ');
    backends.set(nsid, b);
    namespaces.set(nsid, { nsid, backend: b, blocks: BLOCKS, lbaSize: LBA, anaGroup: nsid } as unknown as TargetNamespace);
  }
  const ana = new Map<number, AnaState>([[1, AnaState.OPTIMIZED], [2, AnaState.NON_OPTIMIZED]]);
  const stats = { readCommands: 0, bytesRead: 0, writeCommands: 0, bytesWritten: 0 };
  const portIo = { readCommands: 0, bytesRead: 0, writeCommands: 0, bytesWritten: 0 };
  const ctx = { cfg: { maxTransfer: 16 * LBA }, stats } as unknown as TargetContext;
  const ctrl = {
    subsys: { namespaces },
    port: { anaState: (g: number) => ana.get(g) ?? AnaState.OPTIMIZED, io: portIo },
  } as unknown as TargetController;
  return { ctx, ctrl, backends, ana, stats, portIo };
}

/** Parse an SQE with its SGL length set to `sgl` bytes. */
function cmd(sqe: Buffer, sgl = 0) {
  setSgl(sqe, SglType.TRANSPORT_DATA_BLOCK, sgl);
  return parseSqe(sqe);
}

const status = (c: Completion): [number, number, boolean] | 'ok' =>
  (c.sct ?? 0) === 0 && (c.sc ?? 0) === 0 ? 'ok' : [c.sct ?? 0, c.sc ?? 0, c.dnr ?? false];
const G = GenericStatus;

describe('embedded target I/O: LBA range', () => {
  it('reads and writes the first and the last LBA; one past the end and crossing it fail with LBA Out of Range (DNR)', async () => {
    const r = rig();
    const ns1 = r.backends.get(1)!;
    const first = await ioCommand(r.ctx, r.ctrl, cmd(sqeRead(1, 0n, 1), LBA), undefined);
    assert.equal(status(first), 'ok');
    assert.equal(first.data?.length, LBA);
    const last = await ioCommand(r.ctx, r.ctrl, cmd(sqeRead(1, BigInt(BLOCKS - 1), 1), LBA), undefined);
    assert.equal(status(last), 'ok');
    assert.deepEqual(last.data, Buffer.alloc(LBA, ((BLOCKS - 1) * LBA) & 0xff));
    assert.equal(status(await ioCommand(r.ctx, r.ctrl, cmd(sqeWrite(1, BigInt(BLOCKS - 2), 2, false), 2 * LBA), Buffer.alloc(2 * LBA))), 'ok');
    assert.deepEqual(ns1.calls, ['read 0 512', `read ${(BLOCKS - 1) * LBA} 512`, `write ${(BLOCKS - 2) * LBA} 1024`]);
    ns1.calls.length = 0;
    for (const [slba, nlb] of [[BLOCKS, 1], [BLOCKS - 1, 2], [BLOCKS - 2, 3], [BLOCKS + 100, 1], [2 ** 40, 1]] as const) {
      assert.deepEqual(status(await ioCommand(r.ctx, r.ctrl, cmd(sqeRead(1, BigInt(slba), nlb), nlb * LBA), undefined)), [Sct.GENERIC, G.LBA_OUT_OF_RANGE, true], `read ${slba}+${nlb}`);
      assert.deepEqual(status(await ioCommand(r.ctx, r.ctrl, cmd(sqeWrite(1, BigInt(slba), nlb, false), nlb * LBA), Buffer.alloc(nlb * LBA))), [Sct.GENERIC, G.LBA_OUT_OF_RANGE, true], `write ${slba}+${nlb}`);
      assert.deepEqual(status(await ioCommand(r.ctx, r.ctrl, cmd(sqeWriteZeroes(1, BigInt(slba), nlb, { deallocate: false, fua: false })), undefined)), [Sct.GENERIC, G.LBA_OUT_OF_RANGE, true], `zeroes ${slba}+${nlb}`);
    }
    // The upper 32 bits of the SLBA (CDW11) count: 2^32 is not LBA 0.
    assert.deepEqual(status(await ioCommand(r.ctx, r.ctrl, cmd(sqeRead(1, 1n << 32n, 1), LBA), undefined)), [Sct.GENERIC, G.LBA_OUT_OF_RANGE, true]);
    assert.deepEqual(ns1.calls, [], 'nothing out of range reached the backend');
  });

  it('NLB is 0-based: nlb 1 in CDW12 = 0 transfers one block at the right byte offset', async () => {
    const r = rig();
    const c = await ioCommand(r.ctx, r.ctrl, cmd(sqeWrite(1, 5n, 3, false), 3 * LBA), Buffer.alloc(3 * LBA));
    assert.equal(status(c), 'ok');
    assert.deepEqual(r.backends.get(1)!.calls, [`write ${5 * LBA} ${3 * LBA}`]);
  });

  it('an unknown namespace is Invalid Namespace or Format for every opcode', async () => {
    const r = rig();
    const bad = [Sct.GENERIC, G.INVALID_NAMESPACE_OR_FORMAT, true];
    assert.deepEqual(status(await ioCommand(r.ctx, r.ctrl, cmd(sqeRead(3, 0n, 1), LBA), undefined)), bad);
    assert.deepEqual(status(await ioCommand(r.ctx, r.ctrl, cmd(sqeWrite(3, 0n, 1, false), LBA), Buffer.alloc(LBA))), bad);
    assert.deepEqual(status(await ioCommand(r.ctx, r.ctrl, cmd(sqeFlush(3)), undefined)), bad);
    assert.deepEqual(status(await ioCommand(r.ctx, r.ctrl, cmd(sqeWriteZeroes(3, 0n, 1, { deallocate: true, fua: false })), undefined)), bad);
    assert.deepEqual(status(await ioCommand(r.ctx, r.ctrl, cmd(sqeDatasetManagement(3, 1, true), 16), encodeDsmRanges([{ slba: 0n, nlb: 1 }]))), bad);
  });
});

describe('embedded target I/O: prechecks before data', () => {
  it('Read/Write longer than MDTS → Invalid Field; exactly MDTS is served', async () => {
    const r = rig();
    const max = r.ctx.cfg.maxTransfer / LBA;
    assert.equal(ioPrecheck(r.ctx, r.ctrl, cmd(sqeRead(1, 0n, max), max * LBA)), undefined);
    assert.equal(ioPrecheck(r.ctx, r.ctrl, cmd(sqeWrite(1, 0n, max, false), max * LBA)), undefined);
    assert.deepEqual(status(ioPrecheck(r.ctx, r.ctrl, cmd(sqeRead(1, 0n, max + 1), (max + 1) * LBA))!), [Sct.GENERIC, G.INVALID_FIELD, true]);
    assert.deepEqual(status(ioPrecheck(r.ctx, r.ctrl, cmd(sqeWrite(1, 0n, max + 1, false), (max + 1) * LBA))!), [Sct.GENERIC, G.INVALID_FIELD, true]);
  });

  it('an SGL length that differs from NLB × LBA size (one byte short or long) → Data SGL Length Invalid', async () => {
    const r = rig();
    for (const sgl of [LBA * 2 - 1, LBA * 2 + 1, 0]) {
      assert.deepEqual(status(ioPrecheck(r.ctx, r.ctrl, cmd(sqeRead(1, 0n, 2), sgl))!), [Sct.GENERIC, DATA_SGL_LENGTH_INVALID, true], `read sgl ${sgl}`);
      assert.deepEqual(status(ioPrecheck(r.ctx, r.ctrl, cmd(sqeWrite(1, 0n, 2, false), sgl))!), [Sct.GENERIC, DATA_SGL_LENGTH_INVALID, true], `write sgl ${sgl}`);
    }
  });

  it('Write data that is missing or of the wrong length is refused before the backend', async () => {
    const r = rig();
    const w = (): ReturnType<typeof cmd> => cmd(sqeWrite(1, 0n, 2, false), 2 * LBA);
    assert.deepEqual(status(await ioCommand(r.ctx, r.ctrl, w(), undefined)), [Sct.GENERIC, DATA_SGL_LENGTH_INVALID, true]);
    assert.deepEqual(status(await ioCommand(r.ctx, r.ctrl, w(), Buffer.alloc(2 * LBA - 1))), [Sct.GENERIC, DATA_SGL_LENGTH_INVALID, true]);
    assert.deepEqual(r.backends.get(1)!.calls, []);
    assert.equal(r.stats.writeCommands, 0);
  });

  it('DSM needs NR × 16 bytes of SGL (NR is 0-based); more is accepted (Linux sends 4 KiB)', () => {
    const r = rig();
    assert.equal(ioPrecheck(r.ctx, r.ctrl, cmd(sqeDatasetManagement(1, 3, true), 48)), undefined);
    assert.equal(ioPrecheck(r.ctx, r.ctrl, cmd(sqeDatasetManagement(1, 3, true), 4096)), undefined);
    assert.deepEqual(status(ioPrecheck(r.ctx, r.ctrl, cmd(sqeDatasetManagement(1, 3, true), 47))!), [Sct.GENERIC, DATA_SGL_LENGTH_INVALID, true]);
    assert.deepEqual(status(ioPrecheck(r.ctx, r.ctrl, cmd(sqeDatasetManagement(1, 1, true), 15))!), [Sct.GENERIC, DATA_SGL_LENGTH_INVALID, true]);
    assert.deepEqual(status(ioPrecheck(r.ctx, r.ctrl, cmd(sqeDatasetManagement(9, 1, true), 16))!), [Sct.GENERIC, G.INVALID_NAMESPACE_OR_FORMAT, true]);
    assert.equal(ioPrecheck(r.ctx, r.ctrl, cmd(sqeFlush(1))), undefined, 'Flush needs no precheck');
  });
});

describe('embedded target I/O: flags and backend calls', () => {
  it('Write FUA (CDW12 bit 30) flushes after the write; without FUA no flush', async () => {
    const r = rig();
    const b = r.backends.get(1)!;
    await ioCommand(r.ctx, r.ctrl, cmd(sqeWrite(1, 1n, 1, false), LBA), Buffer.alloc(LBA));
    assert.deepEqual(b.calls, [`write ${LBA} ${LBA}`]);
    b.calls.length = 0;
    await ioCommand(r.ctx, r.ctrl, cmd(sqeWrite(1, 1n, 1, true), LBA), Buffer.alloc(LBA));
    assert.deepEqual(b.calls, [`write ${LBA} ${LBA}`, 'flush']);
  });

  it('Write Zeroes: DEAC (bit 25) deallocates, otherwise zeroes; FUA flushes after', async () => {
    const r = rig();
    const b = r.backends.get(1)!;
    const wz = (o: { deallocate: boolean; fua: boolean }) => ioCommand(r.ctx, r.ctrl, cmd(sqeWriteZeroes(1, 2n, 4, o)), undefined);
    assert.equal(status(await wz({ deallocate: false, fua: false })), 'ok');
    assert.equal(status(await wz({ deallocate: true, fua: false })), 'ok');
    assert.equal(status(await wz({ deallocate: false, fua: true })), 'ok');
    assert.equal(status(await wz({ deallocate: true, fua: true })), 'ok');
    const z = `${2 * LBA} ${4 * LBA}`;
    assert.deepEqual(b.calls, [`zeroes ${z}`, `deallocate ${z}`, `zeroes ${z}`, 'flush', `deallocate ${z}`, 'flush']);
    assert.deepEqual(status(await ioCommand(r.ctx, r.ctrl, cmd(sqeWriteZeroes(1, BigInt(BLOCKS - 1), 1, { deallocate: true, fua: false })), undefined)), 'ok');
  });

  it('DSM: each of NR ranges deallocated with its own offset and length (AD set); none without AD; zero-length ranges skipped; a range past the end fails the command before any deallocation', async () => {
    const r = rig();
    const b = r.backends.get(1)!;
    const ranges = encodeDsmRanges([{ slba: 3n, nlb: 2 }, { slba: 10n, nlb: 0 }, { slba: BigInt(BLOCKS - 5), nlb: 5 }]);
    assert.equal(status(await ioCommand(r.ctx, r.ctrl, cmd(sqeDatasetManagement(1, 3, true), ranges.length), ranges)), 'ok');
    assert.deepEqual(b.calls, [`deallocate ${3 * LBA} ${2 * LBA}`, `deallocate ${(BLOCKS - 5) * LBA} ${5 * LBA}`]);
    b.calls.length = 0;
    assert.equal(status(await ioCommand(r.ctx, r.ctrl, cmd(sqeDatasetManagement(1, 3, false), ranges.length), ranges)), 'ok');
    assert.deepEqual(b.calls, [], 'no Deallocate attribute: advisory only');
    // Only the first NR ranges count: NR = 1 of a buffer holding 3.
    assert.equal(status(await ioCommand(r.ctx, r.ctrl, cmd(sqeDatasetManagement(1, 1, true), ranges.length), ranges)), 'ok');
    assert.deepEqual(b.calls, [`deallocate ${3 * LBA} ${2 * LBA}`]);
    b.calls.length = 0;
    const past = encodeDsmRanges([{ slba: 0n, nlb: 1 }, { slba: BigInt(BLOCKS - 1), nlb: 2 }]);
    assert.deepEqual(status(await ioCommand(r.ctx, r.ctrl, cmd(sqeDatasetManagement(1, 2, true), past.length), past)), [Sct.GENERIC, G.LBA_OUT_OF_RANGE, true]);
    assert.deepEqual(b.calls, []);
    // The data itself must hold NR ranges too (the SGL said so, the data is short).
    assert.deepEqual(status(await ioCommand(r.ctx, r.ctrl, cmd(sqeDatasetManagement(1, 2, true), 32), past.subarray(0, 16))), [Sct.GENERIC, DATA_SGL_LENGTH_INVALID, true]);
  });

  it('Flush of one namespace flushes only it; Flush of NSID FFFFFFFFh flushes every reachable namespace', async () => {
    const r = rig();
    assert.equal(status(await ioCommand(r.ctx, r.ctrl, cmd(sqeFlush(2)), undefined)), 'ok');
    assert.deepEqual([r.backends.get(1)!.calls, r.backends.get(2)!.calls], [[], ['ns2 flush']]);
    r.backends.get(2)!.calls.length = 0;
    assert.equal(status(await ioCommand(r.ctx, r.ctrl, cmd(sqeFlush(NSID_ALL)), undefined)), 'ok');
    assert.deepEqual([r.backends.get(1)!.calls, r.backends.get(2)!.calls], [['flush'], ['ns2 flush']]);
    r.backends.get(1)!.calls.length = 0;
    r.backends.get(2)!.calls.length = 0;
    r.ana.set(2, AnaState.INACCESSIBLE);
    assert.equal(status(await ioCommand(r.ctx, r.ctrl, cmd(sqeFlush(NSID_ALL)), undefined)), 'ok');
    assert.deepEqual([r.backends.get(1)!.calls, r.backends.get(2)!.calls], [['flush'], []], 'an inaccessible namespace is not flushed through this path');
  });

  it('statistics: command and byte counts for the target and the port, reads and writes apart', async () => {
    const r = rig();
    await ioCommand(r.ctx, r.ctrl, cmd(sqeRead(1, 0n, 3), 3 * LBA), undefined);
    await ioCommand(r.ctx, r.ctrl, cmd(sqeRead(1, 0n, 1), LBA), undefined);
    await ioCommand(r.ctx, r.ctrl, cmd(sqeWrite(1, 0n, 2, false), 2 * LBA), Buffer.alloc(2 * LBA));
    const want = { readCommands: 2, bytesRead: 4 * LBA, writeCommands: 1, bytesWritten: 2 * LBA };
    assert.deepEqual(r.stats, want);
    assert.deepEqual(r.portIo, want);
  });

  it('an unknown I/O opcode → Invalid Command Opcode', async () => {
    const r = rig();
    const sqe = sqeFlush(1);
    sqe[0] = 0x7f;
    assert.equal(ioPrecheck(r.ctx, r.ctrl, cmd(sqe)), undefined);
    assert.deepEqual(status(await ioCommand(r.ctx, r.ctrl, cmd(sqe), undefined)), [Sct.GENERIC, G.INVALID_OPCODE, true]);
  });
});

describe('embedded target I/O: ANA path status', () => {
  const cases: Array<[AnaState, number | undefined]> = [
    [AnaState.OPTIMIZED, undefined],
    [AnaState.NON_OPTIMIZED, undefined],
    [AnaState.INACCESSIBLE, PathStatus.ANA_INACCESSIBLE],
    [AnaState.PERSISTENT_LOSS, PathStatus.ANA_PERSISTENT_LOSS],
    [AnaState.CHANGE, PathStatus.ANA_TRANSITION],
  ];
  for (const [state, sc] of cases) {
    it(`ANA state ${state}: ${sc === undefined ? 'served' : `SCT 3h SC ${sc} with DNR clear on every opcode, nothing reaches the backend`}`, async () => {
      const r = rig();
      r.ana.set(1, state);
      const b = r.backends.get(1)!;
      const results = [
        await ioCommand(r.ctx, r.ctrl, cmd(sqeRead(1, 0n, 1), LBA), undefined),
        await ioCommand(r.ctx, r.ctrl, cmd(sqeWrite(1, 0n, 1, false), LBA), Buffer.alloc(LBA)),
        await ioCommand(r.ctx, r.ctrl, cmd(sqeFlush(1)), undefined),
        await ioCommand(r.ctx, r.ctrl, cmd(sqeWriteZeroes(1, 0n, 1, { deallocate: false, fua: false })), undefined),
        await ioCommand(r.ctx, r.ctrl, cmd(sqeDatasetManagement(1, 1, true), 16), encodeDsmRanges([{ slba: 0n, nlb: 1 }])),
      ];
      if (sc === undefined) {
        assert.deepEqual(results.map(status), ['ok', 'ok', 'ok', 'ok', 'ok']);
        assert.equal(b.calls.length, 5);
      } else {
        for (const c of results) assert.deepEqual(status(c), [Sct.PATH, sc, false]);
        assert.deepEqual(b.calls, []);
        // The other namespace (another ANA group) is unaffected.
        assert.equal(status(await ioCommand(r.ctx, r.ctrl, cmd(sqeRead(2, 0n, 1), LBA), undefined)), 'ok');
      }
    });
  }
});
