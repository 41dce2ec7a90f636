/**
 * Defence in depth (issue 15 item 3): the embedded target's storage backends check their own
 * ranges — offset and length non-negative safe integers, offset + length within the namespace —
 * with NVMF_ERR_STORAGE_RANGE, and a refused call changes nothing. The command layer checks the
 * LBA range first; these tests call the backends directly, as a buggy caller would.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ErrorCode } from '../../src/errors';
import { FileBackend, MemoryBackend, type StorageBackend } from '../../src/embedded-target';
import { rejectsCode, throwsCode } from '../helpers/assert-code';

const SIZE = 3 * 4096 + 512; // not a multiple of the chunk size: the last chunk is short
const CHUNK = 4096;

/** Ranges every backend must refuse: [offset, length, why]. */
const BAD: Array<[number, number, string]> = [
  [SIZE, 1, 'one byte past the end'],
  [SIZE - 1, 2, 'last byte plus one'],
  [0, SIZE + 1, 'whole namespace plus one'],
  [SIZE + 4096, 512, 'wholly past the end'],
  [-1, 1, 'negative offset'],
  [-512, 512, 'negative offset ending at 0'],
  [0, -1, 'negative length'],
  [1.5, 1, 'fractional offset'],
  [0, 0.5, 'fractional length'],
  [Number.NaN, 1, 'NaN offset'],
  [0, Number.NaN, 'NaN length'],
  [0, Number.POSITIVE_INFINITY, 'infinite length'],
  [Number.MAX_SAFE_INTEGER + 1, 0, 'offset past 2^53'],
];

interface Subject {
  name: string;
  make(): Promise<StorageBackend>;
  /** Bytes the backend holds (allocated chunks, file size), to see that a refused call changed nothing. */
  footprint(b: StorageBackend): number;
}

let dir = '';
before(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nvmf-storage-range-'));
});
after(() => fs.rmSync(dir, { recursive: true, force: true }));

let fileNo = 0;
const subjects: Subject[] = [
  {
    name: 'MemoryBackend',
    make: () => Promise.resolve(new MemoryBackend(SIZE, CHUNK)),
    footprint: (b) => (b as MemoryBackend).allocatedBytes,
  },
  {
    name: 'FileBackend',
    make: () => FileBackend.open(path.join(dir, `ns${fileNo++}.img`), SIZE),
    footprint: (b) => fs.statSync(b.description.slice('file:'.length)).size,
  },
];

for (const s of subjects) {
  describe(`${s.name} checks its own ranges`, () => {
    it('the first and the last byte, the whole namespace and an empty range at the end are served', async () => {
      const b = await s.make();
      try {
        await b.write(0, Buffer.from([0xa1]));
        await b.write(SIZE - 1, Buffer.from([0xb2]));
        assert.deepEqual(await b.read(0, 1), Buffer.from([0xa1]));
        assert.deepEqual(await b.read(SIZE - 1, 1), Buffer.from([0xb2]));
        const all = await b.read(0, SIZE);
        assert.equal(all.length, SIZE);
        assert.equal(all[0], 0xa1);
        assert.equal(all[SIZE - 1], 0xb2);
        assert.equal((await b.read(SIZE, 0)).length, 0);
        await b.write(SIZE, Buffer.alloc(0));
        await b.writeZeroes(SIZE - 1, 1);
        assert.deepEqual(await b.read(SIZE - 2, 2), Buffer.from([0, 0]));
        await b.write(SIZE - 1, Buffer.from([0xc3]));
        await b.deallocate(SIZE - 1, 1);
        assert.deepEqual(await b.read(SIZE - 1, 1), Buffer.from([0]));
        assert.equal((await b.read(0, 1))[0], 0xa1, 'the first byte is untouched');
      } finally {
        await b.close();
      }
    });

    for (const [offset, length, why] of BAD) {
      it(`refuses ${why} (offset ${offset}, length ${length}) on every call, changing nothing`, async () => {
        const b = await s.make();
        try {
          await b.write(SIZE - 512, Buffer.alloc(512, 0x5a));
          const before = s.footprint(b);
          const e = await rejectsCode(b.read(offset, length), ErrorCode.STORAGE_RANGE, 'read');
          assert.match(e.message, /outside the namespace/);
          await rejectsCode(b.deallocate(offset, length), ErrorCode.STORAGE_RANGE, 'deallocate');
          await rejectsCode(b.writeZeroes(offset, length), ErrorCode.STORAGE_RANGE, 'writeZeroes');
          if (Number.isSafeInteger(length) && length >= 0 && length <= 2 * SIZE) {
            await rejectsCode(b.write(offset, Buffer.alloc(length, 0xee)), ErrorCode.STORAGE_RANGE, 'write');
          }
          assert.equal(s.footprint(b), before, 'no allocation or file growth');
          assert.ok((await b.read(SIZE - 512, 512)).every((x) => x === 0x5a), 'the last block still holds its data');
          assert.ok((await b.read(0, SIZE - 512)).every((x) => x === 0), 'nothing else was written');
        } finally {
          await b.close();
        }
      });
    }
  });
}

describe('MemoryBackend size checks', () => {
  it('a size or chunk size that is not a positive integer is NVMF_ERR_STORAGE_RANGE', () => {
    for (const size of [0, -4096, 4096.5, Number.NaN, Number.POSITIVE_INFINITY]) {
      throwsCode(() => new MemoryBackend(size), ErrorCode.STORAGE_RANGE, `size ${size}`);
    }
    for (const chunk of [0, -1, 0.5]) {
      throwsCode(() => new MemoryBackend(4096, chunk), ErrorCode.STORAGE_RANGE, `chunk ${chunk}`);
    }
    assert.equal(new MemoryBackend(1, 1).size, 1);
  });
});

describe('storage backends: messages name the operation, partial chunks, file edge cases', () => {
  it('a refused call names its operation and the namespace in the message', async () => {
    const m = new MemoryBackend(SIZE, CHUNK);
    const f = await FileBackend.open(path.join(dir, `ns${fileNo++}.img`), SIZE);
    try {
      for (const b of [m, f]) {
        assert.match((await rejectsCode(b.read(SIZE, 1), ErrorCode.STORAGE_RANGE)).message, /: read of 1 bytes at \d+ is outside/);
        assert.match((await rejectsCode(b.write(SIZE, Buffer.alloc(1)), ErrorCode.STORAGE_RANGE)).message, /: write of 1 bytes/);
        assert.match((await rejectsCode(b.writeZeroes(SIZE, 1), ErrorCode.STORAGE_RANGE)).message, /: (write zeroes|deallocate) of 1 bytes/);
      }
      assert.match((await rejectsCode(m.deallocate(SIZE, 1), ErrorCode.STORAGE_RANGE)).message, /^memory: deallocate of 1 bytes/);
      assert.match((await rejectsCode(f.writeZeroes(SIZE, 1), ErrorCode.STORAGE_RANGE)).message, /^file:.*: write zeroes of 1 bytes/);
      assert.match(throwsCode(() => new MemoryBackend(0), ErrorCode.STORAGE_RANGE).message, /^memory: size 0 is not a positive integer/);
      assert.match(throwsCode(() => new MemoryBackend(8, 0), ErrorCode.STORAGE_RANGE).message, /^memory chunk: size 0 is not a positive integer/);
    } finally {
      await f.close();
    }
  });

  it('MemoryBackend deallocate: a chunk is freed only when wholly covered (also the short last chunk); partial ranges at a chunk start or end keep the rest', async () => {
    const m = new MemoryBackend(SIZE, CHUNK);
    await m.deallocate(0, CHUNK); // never written: nothing to free, no error
    const all = Buffer.alloc(SIZE);
    for (let i = 0; i < SIZE; i++) all[i] = (i % 251) + 1;
    await m.write(0, all);
    assert.equal(m.allocatedBytes, 4 * CHUNK);
    await m.deallocate(0, 100); // start of chunk 0
    await m.deallocate(CHUNK - 96, 96); // end of chunk 0
    await m.deallocate(2 * CHUNK - 50, 200); // end of chunk 1, start of chunk 2
    assert.equal(m.allocatedBytes, 4 * CHUNK, 'no chunk wholly covered');
    const want = Buffer.from(all);
    want.fill(0, 0, 100);
    want.fill(0, CHUNK - 96, CHUNK);
    want.fill(0, 2 * CHUNK - 50, 2 * CHUNK + 150);
    assert.deepEqual(await m.read(0, SIZE), want);
    await m.deallocate(3 * CHUNK, SIZE - 3 * CHUNK); // the whole short last chunk
    assert.equal(m.allocatedBytes, 3 * CHUNK, 'the short last chunk is freed');
    assert.ok((await m.read(3 * CHUNK, SIZE - 3 * CHUNK)).every((b) => b === 0));
  });

  it('FileBackend: not a regular file / cannot open → CFG_ERR_INVALID with the cause; no size and a missing file creates nothing', async () => {
    const e1 = await rejectsCode(FileBackend.open(dir, 4096), ErrorCode.CFG_INVALID);
    assert.match(e1.message, /is not a regular file|cannot open/);
    const e2 = await rejectsCode(FileBackend.open(path.join(dir, 'no-such-dir', 'ns.img'), 4096), ErrorCode.CFG_INVALID);
    assert.match(e2.message, /^cannot open namespace file .*no-such-dir/);
    assert.ok(e2.cause instanceof Error);
    const missing = path.join(dir, 'missing.img');
    await rejectsCode(FileBackend.open(missing), ErrorCode.CFG_INVALID);
    assert.equal(fs.existsSync(missing), false, 'opened without a size: never created');
    const empty = path.join(dir, 'empty.img');
    fs.writeFileSync(empty, '');
    assert.match((await rejectsCode(FileBackend.open(empty), ErrorCode.CFG_INVALID)).message, /is empty: give a size/);
  });

  it('FileBackend: a character device is not a regular file; write zeroes larger than its 1 MiB chunk zeroes exactly the range', async () => {
    assert.match((await rejectsCode(FileBackend.open('/dev/null', 4096), ErrorCode.CFG_INVALID)).message, /is not a regular file/);
    const MiB = 1 << 20;
    const img = path.join(dir, 'zeroes.img');
    fs.writeFileSync(img, Buffer.alloc(4 * MiB, 0x3c));
    const f = await FileBackend.open(img);
    try {
      await f.writeZeroes(MiB / 2, MiB + MiB / 2 + 512); // 2 MiB + 512 bytes: three zero writes
      const all = await f.read(0, 4 * MiB);
      const end = MiB / 2 + MiB + MiB / 2 + 512;
      assert.ok(all.subarray(0, MiB / 2).every((b) => b === 0x3c), 'before the range kept');
      assert.ok(all.subarray(MiB / 2, end).every((b) => b === 0), 'the range zeroed');
      assert.ok(all.subarray(end).every((b) => b === 0x3c), 'after the range kept');
      await f.write(MiB, Buffer.alloc(MiB + 7, 0x11)); // one write larger than 1 MiB
      assert.ok((await f.read(MiB, MiB + 7)).every((b) => b === 0x11));
      assert.deepEqual(await f.read(2 * MiB + 7, 1), Buffer.from([0]), "the write ended where it should");
      assert.equal((await f.read(end, 1))[0], 0x3c);
    } finally {
      await f.close();
    }
  });

  it('FileBackend: a larger file is not truncated to a smaller size; a smaller one is extended; reads past a file cut short are zeroes; flush is datasync; closed means closed', async () => {
    const big = path.join(dir, 'big.img');
    fs.writeFileSync(big, Buffer.alloc(3 * 4096, 7));
    const f = await FileBackend.open(big, 4096);
    assert.equal(f.size, 4096);
    assert.equal(fs.statSync(big).size, 3 * 4096, 'never truncated');
    await f.close();
    const g = await FileBackend.open(big, 4 * 4096);
    assert.equal(fs.statSync(big).size, 4 * 4096, 'extended');
    fs.truncateSync(big, 4096 + 100); // shorter than the namespace behind its back
    const r = await g.read(4096, 4096);
    assert.ok(r.subarray(0, 100).every((b) => b === 7));
    assert.ok(r.subarray(100).every((b) => b === 0), 'past EOF: zeroes');
    const fh = (g as unknown as { fh: { datasync(): Promise<void> } }).fh;
    let syncs = 0;
    const datasync = fh.datasync.bind(fh);
    fh.datasync = () => { syncs++; return datasync(); };
    await g.flush();
    assert.equal(syncs, 1);
    await g.close();
    await assert.rejects(g.read(0, 1), 'a closed backend does not read');
  });
});
