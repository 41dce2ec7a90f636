/**
 * The byte-addressed block device the NBD server serves. The NVMe namespace mapping
 * (`src/block/nvme-device.ts`) and the in-memory device used in tests both implement it, so the
 * NBD layer knows nothing of NVMe.
 *
 * Offsets and lengths are in bytes and are already checked by the caller to be inside the device
 * and multiples of `blockSize`. Implementations split requests larger than what the backend
 * accepts in one command. Failures are `NvmfNbdError`s whose `errno` is the NBD error to report.
 */
export interface BlockDevice {
  /** Size in bytes (a multiple of blockSize). */
  readonly size: number;
  /** Logical block size in bytes (512 or 4096 typically): the NBD minimum block size. */
  readonly blockSize: number;
  /** Largest single request accepted, in bytes (the NBD maximum block size, at least 32 MiB). */
  readonly maxRequest: number;
  readonly readOnly: boolean;
  /** The device honours flush (NBD SEND_FLUSH). */
  readonly canFlush: boolean;
  /** The device honours force-unit-access writes (NBD SEND_FUA). */
  readonly canFua: boolean;
  /** Deallocate is supported (NBD SEND_TRIM). */
  readonly canTrim: boolean;
  /** Write Zeroes is supported (NBD SEND_WRITE_ZEROES). */
  readonly canWriteZeroes: boolean;
  /** Zeroing can be done without writing data (NBD SEND_FAST_ZERO). */
  readonly canFastZero: boolean;

  /** Read `length` bytes at `offset`. The returned buffer is owned by the caller. */
  read(offset: number, length: number): Promise<Buffer>;
  /** Write `data` at `offset`; with `fua` the data is durable when the promise resolves. */
  write(offset: number, data: Buffer, fua: boolean): Promise<void>;
  /** Make every completed write durable. */
  flush(): Promise<void>;
  /** Deallocate the range; reads afterwards may return anything (NVMe: often zeroes). */
  trim(offset: number, length: number): Promise<void>;
  /**
   * Zero the range. `mayDeallocate` (NBD without NO_HOLE) lets the backend punch a hole;
   * `fastOnly` (NBD FAST_ZERO) asks to fail with ENOTSUP rather than fall back to writing zeroes.
   */
  writeZeroes(offset: number, length: number, opts: { mayDeallocate: boolean; fua: boolean; fastOnly: boolean }): Promise<void>;
}
