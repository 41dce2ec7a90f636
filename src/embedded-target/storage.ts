import { ErrorCode, NvmfNbdError } from '../errors';

/**
 * Storage behind one namespace of the embedded target. Offsets and lengths are in bytes. The I/O
 * command handler checks them against the namespace first; every backend checks them again
 * ({@link checkStorageRange}) so that a bug above can never read or write outside the namespace.
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

/**
 * Defence in depth for {@link StorageBackend} implementations: `offset` and `length` must be
 * non-negative safe integers with `offset + length <= size` (a zero length is allowed anywhere
 * up to `size`). Throws {@link ErrorCode.STORAGE_RANGE} otherwise; the target's command layer
 * turns any backend error into an Internal Error completion.
 * @param backend the backend being asked (its `size` and `description` name the namespace)
 * @param op the operation, for the message
 */
export function checkStorageRange(backend: Pick<StorageBackend, 'size' | 'description'>, op: string, offset: number, length: number): void {
  if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0 || offset + length > backend.size) {
    throw new NvmfNbdError(
      ErrorCode.STORAGE_RANGE,
      `${backend.description}: ${op} of ${String(length)} bytes at ${String(offset)} is outside the namespace (${backend.size} bytes)`,
    );
  }
}

/** Checks a backend's size when it is created: a positive safe integer. */
export function checkStorageSize(description: string, size: number): void {
  if (!Number.isSafeInteger(size) || size <= 0) {
    throw new NvmfNbdError(ErrorCode.STORAGE_RANGE, `${description}: size ${String(size)} is not a positive integer number of bytes`);
  }
}
