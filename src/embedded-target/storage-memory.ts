/**
 * Sparse in-memory namespace storage: fixed-size chunks allocated on first write. Reads of
 * chunks never written return zeroes, deallocating a whole chunk frees it, so a 1 GiB namespace
 * costs nothing until it is written. Memory is bounded by the namespace size.
 */
import { checkStorageRange, checkStorageSize, type StorageBackend } from './storage';

/** Default allocation unit: 1 MiB. */
export const MEMORY_CHUNK_SIZE = 1 << 20;

/** A sparse memory-backed {@link StorageBackend}. */
export class MemoryBackend implements StorageBackend {
  readonly size: number;
  readonly description = 'memory';
  private readonly chunkSize: number;
  private readonly chunks = new Map<number, Buffer>();

  /**
   * @param size namespace size in bytes
   * @param chunkSize allocation unit in bytes (tests use small ones)
   */
  constructor(size: number, chunkSize = MEMORY_CHUNK_SIZE) {
    checkStorageSize('memory', size);
    checkStorageSize('memory chunk', chunkSize);
    this.size = size;
    this.chunkSize = chunkSize;
  }

  /** Bytes currently allocated (whole chunks). */
  get allocatedBytes(): number {
    return this.chunks.size * this.chunkSize;
  }

  read(offset: number, length: number): Promise<Buffer> {
    try {
      checkStorageRange(this, 'read', offset, length);
    } catch (err) {
      return Promise.reject(err);
    }
    // A fresh zeroed buffer: the caller hands it to socket.write, which keeps a reference until
    // the kernel took it, so it must never be a view of chunk memory that a later write changes.
    // allocUnsafe: every byte is written below (copied, or zeroed for never-written chunks), so
    // the zero-fill of Buffer.alloc would be a second pass over the data.
    const out = Buffer.allocUnsafe(length);
    this.forEachSpan(offset, length, (idx, at, n, pos) => {
      const c = this.chunks.get(idx);
      if (c !== undefined) c.copy(out, pos, at, at + n);
      else out.fill(0, pos, pos + n);
    });
    return Promise.resolve(out);
  }

  write(offset: number, data: Buffer): Promise<void> {
    try {
      checkStorageRange(this, 'write', offset, data.length);
    } catch (err) {
      return Promise.reject(err);
    }
    this.forEachSpan(offset, data.length, (idx, at, n, pos) => {
      let c = this.chunks.get(idx);
      if (c === undefined) {
        c = Buffer.alloc(this.chunkLength(idx));
        this.chunks.set(idx, c);
      }
      data.copy(c, at, pos, pos + n);
    });
    return Promise.resolve();
  }

  flush(): Promise<void> {
    return Promise.resolve();
  }

  deallocate(offset: number, length: number): Promise<void> {
    try {
      checkStorageRange(this, 'deallocate', offset, length);
    } catch (err) {
      return Promise.reject(err);
    }
    this.forEachSpan(offset, length, (idx, at, n) => {
      const c = this.chunks.get(idx);
      if (c === undefined) return;
      if (at === 0 && n === c.length) this.chunks.delete(idx);
      else c.fill(0, at, at + n);
    });
    return Promise.resolve();
  }

  writeZeroes(offset: number, length: number): Promise<void> {
    // (deallocate checks the range.) Zeroes read back from unallocated chunks, so zeroing is deallocation.
    return this.deallocate(offset, length);
  }

  close(): Promise<void> {
    this.chunks.clear();
    return Promise.resolve();
  }

  private chunkLength(idx: number): number {
    return Math.min(this.chunkSize, this.size - idx * this.chunkSize);
  }

  /** Call `fn(chunkIndex, offsetInChunk, bytes, offsetInRequest)` for each chunk the range touches. */
  private forEachSpan(offset: number, length: number, fn: (idx: number, at: number, n: number, pos: number) => void): void {
    let pos = 0;
    while (pos < length) {
      const abs = offset + pos;
      const idx = Math.floor(abs / this.chunkSize);
      const at = abs - idx * this.chunkSize;
      const n = Math.min(this.chunkSize - at, length - pos);
      fn(idx, at, n, pos);
      pos += n;
    }
  }
}
