/**
 * Storage behind one namespace of the embedded target. Offsets and lengths are in bytes and are
 * already checked by the caller (the I/O command handler) to lie inside `size`.
 */
export interface StorageBackend {
  /** Size in bytes. */
  readonly size: number;
  /** Human description (`memory`, `file:PATH`), for logs and the CLI. */
  readonly description: string;
  /** Read `length` bytes at `offset` into a fresh buffer owned by the caller. */
  read(offset: number, length: number): Promise<Buffer>;
  /** Write `data` at `offset`. The data buffer is not retained after the promise resolves. */
  write(offset: number, data: Buffer): Promise<void>;
  /** Make every completed write durable. */
  flush(): Promise<void>;
  /** Deallocate the range; later reads of it return zeroes (DLFEAT 001b). */
  deallocate(offset: number, length: number): Promise<void>;
  /** Zero the range. */
  writeZeroes(offset: number, length: number): Promise<void>;
  /** Release resources (file handles, memory). Further calls fail. */
  close(): Promise<void>;
}
