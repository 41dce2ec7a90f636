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
