/**
 * Mutation-driven pins for the embedded target's storage backends (issue 15):
 * src/embedded-target/storage-memory.ts and storage-file.ts. target-backend and
 * target-storage-range cover the range checks and chunk bookkeeping; these add what surviving
 * mutants showed unasserted: a second write into an already allocated chunk keeps the chunk's
 * other bytes, and the file backend's read/write loops resume correctly after short transfers
 * (a positional read or write may return fewer bytes than asked: signals, network file
 * systems), at the right buffer offset and the right file position.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { FileBackend, MemoryBackend } from '../../src/embedded-target';

describe('MemoryBackend: writes into an allocated chunk', () => {
  it('a second write into the same chunk keeps the bytes the first one wrote (the chunk is reused, not replaced)', async () => {
    const m = new MemoryBackend(4 * 4096, 4096);
    await m.write(4096 + 10, Buffer.from([0xa1, 0xa2, 0xa3]));
    await m.write(4096 + 2000, Buffer.from([0xb1, 0xb2]));
    // A write spanning chunk 1's end and chunk 2's start: chunk 1 exists, chunk 2 is new.
    await m.write(2 * 4096 - 1, Buffer.from([0xc1, 0xc2]));
    assert.equal(m.allocatedBytes, 2 * 4096);
    const got = await m.read(4096, 2 * 4096);
    const want = Buffer.alloc(2 * 4096);
    want.set([0xa1, 0xa2, 0xa3], 10);
    want.set([0xb1, 0xb2], 2000);
    want.set([0xc1, 0xc2], 4095);
    assert.deepEqual(got, want);
  });
});

/**
 * Wraps a FileBackend's file handle so every positional read and write moves at most `step`
 * bytes, and records each call's (buffer offset, length, file position).
 */
function shortIo(f: FileBackend, step: number): { reads: Array<[number, number, number]>; writes: Array<[number, number, number]> } {
  const fh = (f as unknown as { fh: fs.promises.FileHandle }).fh;
  const log = { reads: [] as Array<[number, number, number]>, writes: [] as Array<[number, number, number]> };
  const read = fh.read.bind(fh) as (b: Buffer, o: number, l: number, p: number) => Promise<{ bytesRead: number; buffer: Buffer }>;
  const write = fh.write.bind(fh) as (b: Buffer, o: number, l: number, p: number) => Promise<{ bytesWritten: number; buffer: Buffer }>;
  Object.assign(fh, {
    read: (b: Buffer, o: number, l: number, p: number) => {
      log.reads.push([o, l, p]);
      return read(b, o, Math.min(l, step), p);
    },
    write: (b: Buffer, o: number, l: number, p: number) => {
      log.writes.push([o, l, p]);
      return write(b, o, Math.min(l, step), p);
    },
  });
  return log;
}

describe('FileBackend: short reads and writes', () => {
  let dir = '';
  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nvmf-mut-target-'));
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('a write that the file system takes in pieces continues from where it stopped, at the right file position', async () => {
    const img = path.join(dir, 'short-write.img');
    fs.writeFileSync(img, Buffer.alloc(8192, 0x77));
    const f = await FileBackend.open(img);
    try {
      const log = shortIo(f, 1000);
      const data = Buffer.alloc(2500);
      for (let i = 0; i < data.length; i++) data[i] = (i * 7 + 3) & 0xff;
      await f.write(3000, data);
      assert.deepEqual(log.writes, [[0, 2500, 3000], [1000, 1500, 4000], [2000, 500, 5000]]);
      const all = fs.readFileSync(img);
      assert.ok(all.subarray(0, 3000).every((b) => b === 0x77), 'before the range untouched');
      assert.deepEqual(all.subarray(3000, 5500), data);
      assert.ok(all.subarray(5500).every((b) => b === 0x77), 'after the range untouched');
    } finally {
      await f.close();
    }
  });

  it('a read returned in pieces is reassembled in order; a read that reaches EOF early leaves the rest zero and stops', async () => {
    const img = path.join(dir, 'short-read.img');
    const content = Buffer.alloc(6000);
    for (let i = 0; i < content.length; i++) content[i] = (i * 13 + 1) & 0xff;
    fs.writeFileSync(img, content);
    const f = await FileBackend.open(img, 8192); // the file is extended to 8192 (zeroes)
    try {
      const log = shortIo(f, 1500);
      assert.deepEqual(await f.read(1000, 4000), content.subarray(1000, 5000));
      assert.deepEqual(log.reads, [[0, 4000, 1000], [1500, 2500, 2500], [3000, 1000, 4000]]);
      log.reads.length = 0;
      fs.truncateSync(img, 6000); // cut short behind the backend's back: EOF inside the read
      const tail = await f.read(5000, 3000);
      assert.deepEqual(tail.subarray(0, 1000), content.subarray(5000, 6000));
      assert.ok(tail.subarray(1000).every((b) => b === 0), 'past EOF: zeroes');
      assert.deepEqual(log.reads, [[0, 3000, 5000], [1000, 2000, 6000]], 'stops at the first 0-byte read');
    } finally {
      await f.close();
    }
  });

  it('write zeroes over short writes zeroes exactly the range', async () => {
    const img = path.join(dir, 'short-zeroes.img');
    fs.writeFileSync(img, Buffer.alloc(8192, 0x5c));
    const f = await FileBackend.open(img);
    try {
      const log = shortIo(f, 700);
      await f.writeZeroes(100, 2000);
      assert.deepEqual(log.writes.map((w) => w[2]), [100, 800, 1500]);
      const all = fs.readFileSync(img);
      assert.ok(all.subarray(0, 100).every((b) => b === 0x5c));
      assert.ok(all.subarray(100, 2100).every((b) => b === 0));
      assert.ok(all.subarray(2100).every((b) => b === 0x5c));
    } finally {
      await f.close();
    }
  });
});
