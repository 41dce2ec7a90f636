/**
 * A harness for NbdTransmission (src/nbd/transmission.ts) with no socket: a fake owner that
 * records every reply buffer, every pause/resume, destroy and endSocket; a fake host with a
 * settable budget; a fake export whose sub-block front records the submitted records and whose
 * TRIM / WRITE_ZEROES promises the test settles by hand.
 */
import type { MemoryBlockDeviceOptions } from '../../src/block/memory-device';
import type { Duplex } from 'node:stream';
import type { ErrorCodeValue } from '../../src/errors';
import { BlockOpCode, type BlockDevice, type BlockRequest } from '../../src/block/types';
import type { NbdConnectionHost, NbdExportEntry, NbdLogEntry } from '../../src/nbd/types';
import { NbdTransmission, type TransmissionOwner } from '../../src/nbd/transmission';
import type { Negotiated } from '../../src/nbd/handshake';
import { encodeRequest } from '../../src/wire/nbd';
import type { WriteBatcher } from '../../src/net/write-batcher';

/** A fake device's shape: the memory device's options, every one optional. */
export type DevOpts = Partial<Omit<MemoryBlockDeviceOptions, 'chunkSize'>>;

export interface Deferred {
  resolve(): void;
  reject(e: unknown): void;
  args: unknown[];
}

function defer(args: unknown[]): { p: Promise<void>; d: Deferred } {
  let resolve!: () => void;
  let reject!: (e: unknown) => void;
  const p = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { p, d: { resolve, reject, args } };
}

/** The socket as the transmission phase sees it. */
export class FakeSocket {
  writableLength = 0;
  pauses = 0;
  resumes = 0;
  pause(): this {
    this.pauses++;
    return this;
  }
  resume(): this {
    this.resumes++;
    return this;
  }
}

export class TxHarness implements TransmissionOwner {
  readonly sock = new FakeSocket();
  readonly socket = this.sock as unknown as Duplex;
  /** Every buffer written through out.write / out.writeThen, in order. */
  readonly written: Buffer[] = [];
  /** Callbacks given to writeThen, in order. */
  readonly writeCbs: Array<() => void> = [];
  readonly out: WriteBatcher;
  readonly logs: NbdLogEntry[] = [];
  destroyed: { code?: ErrorCodeValue; msg?: string; level?: string } | undefined;
  ended = 0;
  inTransmission = true;
  readonly hostState = {
    shuttingDown: false,
    maxInFlight: 4,
    maxInFlightBytes: 1 << 20,
    exhausted: false,
    waiters: [] as Array<() => void>,
    released: 0,
  };
  readonly host: NbdConnectionHost;
  readonly submitted: BlockRequest[] = [];
  readonly trims: Deferred[] = [];
  readonly zeroes: Deferred[] = [];
  readonly flushes: Deferred[] = [];
  created = 0;
  /** Make sub.submit / trim / writeZeroes throw this synchronously. */
  throwOnSubmit: unknown = undefined;
  /** Complete READ records inside sub.submit (against the device contract) with `length` bytes. */
  syncComplete = false;
  readonly dev: BlockDevice;
  readonly exp: NbdExportEntry;
  tx!: NbdTransmission;

  constructor(devOpts: DevOpts = {}, removed = false) {
    const self = this;
    this.out = {
      write(b: Buffer): void {
        self.written.push(Buffer.from(b));
      },
      writeThen(b: Buffer, cb: () => void): void {
        self.written.push(Buffer.from(b));
        self.writeCbs.push(cb);
      },
    } as unknown as WriteBatcher;
    const hs = this.hostState;
    this.host = {
      findExport: () => undefined,
      listExports: () => [],
      log: () => undefined,
      get shuttingDown() {
        return hs.shuttingDown;
      },
      get maxInFlight() {
        return hs.maxInFlight;
      },
      get maxInFlightBytes() {
        return hs.maxInFlightBytes;
      },
      handshakeTimeoutMs: 0,
      closeGraceMs: 0,
      maxConnectionsPerExport: 1,
      idleTimeoutMs: 0,
      budgetExhausted: () => hs.exhausted,
      waitBudget: (r) => {
        hs.waiters.push(r);
      },
      budgetReleased: () => {
        hs.released++;
      },
    };
    const dev = {
      size: 1 << 20,
      blockSize: 512,
      maxRequest: 32 << 20,
      readOnly: false,
      canFlush: true,
      canFua: true,
      canTrim: true,
      canWriteZeroes: true,
      canFastZero: true,
      ...devOpts,
      flush: () => {
        const { p, d } = defer([]);
        self.flushes.push(d);
        return p;
      },
    };
    this.dev = dev as unknown as BlockDevice;
    const sub = {
      submit(r: BlockRequest): void {
        if (self.throwOnSubmit !== undefined) throw self.throwOnSubmit;
        if (self.syncComplete) {
          r.data = Buffer.alloc(r.length, 0x33);
          (r.handler as NbdTransmission).onBlockComplete(r);
          return;
        }
        self.submitted.push(r);
      },
      createRequest(): BlockRequest {
        self.created++;
        return { op: BlockOpCode.READ, offset: 0, length: 0, data: undefined, fua: false, mayDeallocate: false, fastOnly: false, handler: undefined, upstream: undefined, cookieHi: 0, cookieLo: 0, kind: 0 };
      },
      trim(offset: number, length: number): Promise<void> {
        if (self.throwOnSubmit !== undefined) throw self.throwOnSubmit;
        const { p, d } = defer([offset, length]);
        self.trims.push(d);
        return p;
      },
      writeZeroes(offset: number, length: number, o: unknown): Promise<void> {
        if (self.throwOnSubmit !== undefined) throw self.throwOnSubmit;
        const { p, d } = defer([offset, length, o]);
        self.zeroes.push(d);
        return p;
      },
    };
    this.exp = {
      name: 'e0',
      device: this.dev,
      sub: sub as unknown as NbdExportEntry['sub'],
      description: '',
      counters: { reads: 0, writes: 0, bytesRead: 0, bytesWritten: 0, flushes: 0, trims: 0, zeroes: 0, errors: 0 },
      connections: new Set(),
      removed,
    };
  }

  /** Make the transmission (negotiated as given, with `leftover` chunks already received). */
  start(n: Partial<Negotiated> = {}, leftover: Buffer[] = []): NbdTransmission {
    this.tx = new NbdTransmission(this, this.exp, { structured: false, strictSizes: false, metaActive: false, ...n }, leftover);
    return this.tx;
  }

  log(level: NbdLogEntry['level'], msg: string, code?: ErrorCodeValue): void {
    this.logs.push({ level, msg, ...(code !== undefined ? { code } : {}) });
  }

  destroy(code?: ErrorCodeValue, msg?: string, level?: NbdLogEntry['level']): void {
    this.destroyed = { ...(code !== undefined ? { code } : {}), ...(msg !== undefined ? { msg } : {}), ...(level !== undefined ? { level } : {}) };
    this.inTransmission = false;
  }

  endSocket(): void {
    this.ended++;
    this.inTransmission = false;
  }

  /** Written buffers concatenated, then cleared. */
  take(): Buffer {
    const b = Buffer.concat(this.written);
    this.written.length = 0;
    return b;
  }
}

/** A cookie whose two halves differ: hi 0x0a0b0c0d + n, lo 0x01020304 + n. */
export function cookie(n: number): { big: bigint; hi: number; lo: number } {
  const hi = 0x0a0b0c0d + n;
  const lo = 0x01020304 + n;
  return { big: (BigInt(hi) << 32n) | BigInt(lo), hi, lo };
}

/** One request on the wire. */
export function req(type: number, n: number, offset: number, length: number, flags = 0, data?: Buffer): Buffer {
  return encodeRequest({ type, flags, cookie: cookie(n).big, offset, length, ...(data !== undefined ? { data } : {}) });
}
