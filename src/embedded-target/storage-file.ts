/**
 * File-backed namespace storage through `fs.promises.FileHandle` positional I/O. Node cannot
 * punch holes, so deallocate and write-zeroes write zeroes in bounded chunks.
 */
import * as fs from 'node:fs';
import { ErrorCode, NvmfNbdError } from '../errors';
import { checkStorageRange, type StorageBackend } from './storage';

/** Largest zero-write issued at once (bounds memory and keeps the event loop responsive). */
const ZERO_CHUNK = 1 << 20;
let zeroes: Buffer | undefined;

/** A {@link StorageBackend} on a regular file. Create with {@link FileBackend.open}. */
export class FileBackend implements StorageBackend {
  readonly size: number;
  readonly description: string;
  private readonly fh: fs.promises.FileHandle;

  private constructor(fh: fs.promises.FileHandle, size: number, path: string) {
    this.fh = fh;
    this.size = size;
    this.description = `file:${path}`;
  }

  /**
   * Open (or create) `path`. With `size`, a shorter file is extended to it (sparse); without,
   * the file's current size is used and must be non-zero.
   */
  static async open(path: string, size?: number): Promise<FileBackend> {
    let fh: fs.promises.FileHandle;
    try {
      fh = await fs.promises.open(path, size === undefined ? 'r+' : fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600);
    } catch (err) {
      throw new NvmfNbdError(ErrorCode.CFG_INVALID, `cannot open namespace file ${path}: ${(err as Error).message}`, { cause: err });
    }
    try {
      const st = await fh.stat();
      if (!st.isFile()) throw new NvmfNbdError(ErrorCode.CFG_INVALID, `${path} is not a regular file`);
      let n = size ?? st.size;
      if (size !== undefined && st.size < size) await fh.truncate(size);
      if (n <= 0) throw new NvmfNbdError(ErrorCode.CFG_INVALID, `${path} is empty: give a size (PATH:SIZE)`);
      n = Math.floor(n);
      return new FileBackend(fh, n, path);
    } catch (err) {
      await fh.close();
      throw err;
    }
  }

  async read(offset: number, length: number): Promise<Buffer> {
    checkStorageRange(this, 'read', offset, length);
    const out = Buffer.alloc(length);
    let done = 0;
    while (done < length) {
      const { bytesRead } = await this.fh.read(out, done, length - done, offset + done);
      if (bytesRead === 0) break; // past EOF of a file shorter than the namespace: zeroes
      done += bytesRead;
    }
    return out;
  }

  async write(offset: number, data: Buffer): Promise<void> {
    checkStorageRange(this, 'write', offset, data.length);
    let done = 0;
    while (done < data.length) {
      const { bytesWritten } = await this.fh.write(data, done, data.length - done, offset + done);
      done += bytesWritten;
    }
  }

  flush(): Promise<void> {
    return this.fh.datasync();
  }

  deallocate(offset: number, length: number): Promise<void> {
    return this.writeZeroes(offset, length); // checks the range
  }

  async writeZeroes(offset: number, length: number): Promise<void> {
    checkStorageRange(this, 'write zeroes', offset, length);
    zeroes ??= Buffer.alloc(ZERO_CHUNK);
    let done = 0;
    while (done < length) {
      const n = Math.min(ZERO_CHUNK, length - done);
      await this.write(offset + done, zeroes.subarray(0, n));
      done += n;
    }
  }

  close(): Promise<void> {
    return this.fh.close();
  }
}
