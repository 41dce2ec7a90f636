/**
 * Mutation-driven pins for the embedded target's NVM I/O handler (src/embedded-target/io.ts,
 * issue 15). target-io-commands.test.ts covers the command set; these add the cases a surviving
 * mutant showed were not asserted: Dataset Management whose data never arrived, the largest
 * range count (NR is 0-based in CDW10 bits 7:0, upper bits reserved), and 64-bit range ends that
 * must not wrap. Every case asserts the exact completion and the exact backend calls.
 */
import { strict as assert } from 'node:assert';
import { describe, it } from 'node:test';
import { encodeDsmRanges, GenericStatus, parseSqe, Sct, setSgl, SglType, sqeDatasetManagement } from '../../src/wire';
import { AnaState } from '../../src/wire/ana';
import { ioCommand } from '../../src/embedded-target/io';
import type { Completion, TargetContext, TargetNamespace } from '../../src/embedded-target/context';
import type { TargetController } from '../../src/embedded-target/target-controller';
import type { StorageBackend } from '../../src/embedded-target';

const LBA = 4096;
const BLOCKS = 1000;
const DATA_SGL_LENGTH_INVALID = 0x0f;
const G = GenericStatus;

/** A backend that records deallocate calls; any other call is a test failure. */
class DeallocRecorder implements StorageBackend {
  readonly calls: Array<[number, number]> = [];
  readonly description = 'dealloc-recorder';
  readonly size = BLOCKS * LBA;
  read(): Promise<Buffer> {
    return Promise.reject(new Error('unexpected read'));
  }
  write(): Promise<void> {
    return Promise.reject(new Error('unexpected write'));
  }
  flush(): Promise<void> {
    return Promise.reject(new Error('unexpected flush'));
  }
  deallocate(offset: number, length: number): Promise<void> {
    this.calls.push([offset, length]);
    return Promise.resolve();
  }
  writeZeroes(): Promise<void> {
    return Promise.reject(new Error('unexpected writeZeroes'));
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
}

/** One namespace (NSID 1, optimized) of BLOCKS blocks of LBA bytes. */
function rig(): { ctx: TargetContext; ctrl: TargetController; backend: DeallocRecorder } {
  const backend = new DeallocRecorder();
  const ns = { nsid: 1, backend, blocks: BLOCKS, lbaSize: LBA, anaGroup: 1 } as unknown as TargetNamespace;
  const ctx = { cfg: { maxTransfer: 32 * LBA }, stats: {} } as unknown as TargetContext;
  const ctrl = {
    subsys: { namespaces: new Map([[1, ns]]) },
    port: { anaState: () => AnaState.OPTIMIZED, io: {} },
  } as unknown as TargetController;
  return { ctx, ctrl, backend };
}

function dsm(nr: number, deallocate: boolean, sgl: number) {
  const sqe = sqeDatasetManagement(1, nr, deallocate);
  setSgl(sqe, SglType.TRANSPORT_DATA_BLOCK, sgl);
  return parseSqe(sqe);
}

const status = (c: Completion): [number, number, boolean] | 'ok' =>
  (c.sct ?? 0) === 0 && (c.sc ?? 0) === 0 ? 'ok' : [c.sct ?? 0, c.sc ?? 0, c.dnr ?? false];

describe('embedded target I/O: Dataset Management edge cases', () => {
  it('DSM whose data is missing completes with Data SGL Length Invalid (DNR) and never throws', async () => {
    // The queue calls ioCommand with data undefined when no data was transferred; the handler
    // must answer with a status, not reject with a TypeError (which would become Internal Error).
    const r = rig();
    const c = await ioCommand(r.ctx, r.ctrl, dsm(1, true, 16), undefined);
    assert.deepEqual(status(c), [Sct.GENERIC, DATA_SGL_LENGTH_INVALID, true]);
    assert.deepEqual(r.backend.calls, []);
  });

  it('NR 256 (CDW10 7:0 = FFh): all 256 ranges of a 4 KiB buffer are deallocated, in order', async () => {
    const r = rig();
    const ranges = Array.from({ length: 256 }, (_, i) => ({ slba: BigInt(i * 3), nlb: (i % 3) + 1 }));
    const data = encodeDsmRanges(ranges);
    assert.equal(data.length, 4096);
    assert.equal(status(await ioCommand(r.ctx, r.ctrl, dsm(256, true, 4096), data)), 'ok');
    assert.deepEqual(r.backend.calls, ranges.map((x) => [Number(x.slba) * LBA, x.nlb * LBA]));
  });

  it('CDW10 bits above NR are reserved: NR 2 with bit 8 set still means two ranges', async () => {
    const r = rig();
    const sqe = sqeDatasetManagement(1, 2, true);
    sqe.writeUInt32LE(0x0101, 40); // NR 0-based 1 (two ranges) plus reserved bit 8
    setSgl(sqe, SglType.TRANSPORT_DATA_BLOCK, 4096);
    const data = Buffer.alloc(4096);
    encodeDsmRanges([{ slba: 7n, nlb: 2 }, { slba: 20n, nlb: 1 }, { slba: 40n, nlb: 4 }]).copy(data);
    assert.equal(status(await ioCommand(r.ctx, r.ctrl, parseSqe(sqe), data)), 'ok');
    assert.deepEqual(r.backend.calls, [[7 * LBA, 2 * LBA], [20 * LBA, LBA]]);
  });

  it('a range that ends exactly at the last LBA is served; 64-bit SLBAs near 2^64 do not wrap into range', async () => {
    const r = rig();
    const edge = encodeDsmRanges([{ slba: BigInt(BLOCKS - 4), nlb: 4 }]);
    assert.equal(status(await ioCommand(r.ctx, r.ctrl, dsm(1, true, 16), edge)), 'ok');
    assert.deepEqual(r.backend.calls, [[(BLOCKS - 4) * LBA, 4 * LBA]]);
    r.backend.calls.length = 0;
    for (const [slba, nlb] of [[(1n << 64n) - 1n, 1], [(1n << 64n) - 2n, 0xffffffff], [1n << 53n, 1], [BigInt(BLOCKS), 1]] as const) {
      const bad = encodeDsmRanges([{ slba: 0n, nlb: 1 }, { slba, nlb }]);
      assert.deepEqual(status(await ioCommand(r.ctx, r.ctrl, dsm(2, true, 32), bad)), [Sct.GENERIC, G.LBA_OUT_OF_RANGE, true], `slba ${slba} nlb ${nlb}`);
    }
    assert.deepEqual(r.backend.calls, [], 'a bad range fails the whole command before any deallocation');
  });
});
