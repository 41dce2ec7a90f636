/**
 * NbdHandshake (src/nbd/handshake.ts) against a fake owner: every option's reply bytes, the
 * transmission flags of each device capability, what is handed to the transmission phase
 * (structured, strictSizes, metaActive, leftover bytes), limits (option count, connections per
 * export, unsent reply bytes) and parse errors.
 */
import type { DevOpts } from '../helpers/nbd-tx-harness';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { Duplex } from 'node:stream';
import { ErrorCode, type ErrorCodeValue } from '../../src/errors';
import type { BlockDevice } from '../../src/block/types';
import { NbdHandshake, HANDSHAKE_MAX_UNSENT, MAX_HANDSHAKE_OPTIONS, BASE_ALLOCATION_ID, type Negotiated } from '../../src/nbd/handshake';
import type { NbdConnectionHost, NbdExportEntry, NbdLogEntry } from '../../src/nbd/types';
import { blockSizes } from '../../src/nbd/types';
import {
  BASE_ALLOCATION,
  InfoType,
  Opt,
  Rep,
  TransmissionFlag as TF,
  encodeExportNameReply,
  encodeInfoBlockSize,
  encodeInfoDescription,
  encodeInfoExport,
  encodeInfoName,
  encodeInfoRequest,
  encodeMetaContextRequest,
  encodeOption,
  encodeRepAck,
  encodeRepError,
  encodeRepMetaContext,
  encodeRepServer,
  MAX_OPTION_LENGTH,
} from '../../src/wire/nbd';

const BASE_FLAGS = TF.HAS_FLAGS | TF.SEND_CACHE | TF.CAN_MULTI_CONN;


function device(o: DevOpts = {}): BlockDevice {
  return {
    size: 3 * 1024 * 1024, blockSize: 512, maxRequest: 32 << 20, readOnly: false,
    canFlush: false, canFua: false, canTrim: false, canWriteZeroes: false, canFastZero: false, ...o,
  } as unknown as BlockDevice;
}

function exportOf(name: string, dev: BlockDevice, description = ''): NbdExportEntry {
  return { name, device: dev, sub: {} as never, description, counters: {} as never, connections: new Set(), removed: false };
}

class Owner {
  readonly written: Buffer[] = [];
  writableLength = 0;
  corks = 0;
  uncorks = 0;
  pauses = 0;
  resumes = 0;
  readonly socket: Duplex;
  inHandshake = true;
  readonly logs: NbdLogEntry[] = [];
  destroyed: { code?: ErrorCodeValue; msg?: string; level?: string } | undefined;
  ended = 0;
  entered: { exp: NbdExportEntry; n: Negotiated; leftover: Buffer[] } | undefined;
  shuttingDown = false;
  maxConnectionsPerExport = 2;
  readonly exports: NbdExportEntry[] = [];
  readonly host: NbdConnectionHost;

  constructor() {
    const self = this;
    this.socket = {
      cork: () => { self.corks++; },
      uncork: () => { self.uncorks++; },
      write: (b: Buffer) => { self.written.push(Buffer.from(b)); return true; },
      pause: () => { self.pauses++; },
      resume: () => { self.resumes++; },
      get writableLength() { return self.writableLength; },
    } as unknown as Duplex;
    this.host = {
      findExport: (name) => (name === '' ? this.exports[0] : this.exports.find((e) => e.name === name)),
      listExports: () => [...this.exports],
      log: () => undefined,
      get shuttingDown() { return self.shuttingDown; },
      maxInFlight: 1, maxInFlightBytes: 1, handshakeTimeoutMs: 0, closeGraceMs: 0,
      get maxConnectionsPerExport() { return self.maxConnectionsPerExport; },
      idleTimeoutMs: 0, budgetExhausted: () => false, waitBudget: () => undefined, budgetReleased: () => undefined,
    };
  }
  log(level: NbdLogEntry['level'], msg: string, code?: ErrorCodeValue): void {
    this.logs.push({ level, msg, ...(code !== undefined ? { code } : {}) });
  }
  destroy(code?: ErrorCodeValue, msg?: string, level?: NbdLogEntry['level']): void {
    this.destroyed = { ...(code !== undefined ? { code } : {}), ...(msg !== undefined ? { msg } : {}), ...(level !== undefined ? { level } : {}) };
    this.inHandshake = false;
  }
  endSocket(): void {
    this.ended++;
    this.inHandshake = false;
  }
  enterTransmission(exp: NbdExportEntry, n: Negotiated, leftover: Buffer[]): void {
    this.entered = { exp, n, leftover };
    this.inHandshake = false;
  }
  take(): Buffer {
    const b = Buffer.concat(this.written);
    this.written.length = 0;
    return b;
  }
}

function flags(f: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(f);
  return b;
}

/** An owner with export 'disk' (and 'other'), a handshake after client flags `cf`. */
function setup(dev: DevOpts = {}, cf = 3, afterTls?: { noZeroes: boolean }): { o: Owner; hs: NbdHandshake } {
  const o = new Owner();
  o.exports.push(exportOf('disk', device(dev), 'the disk'), exportOf('other', device({ size: 7 * 4096, blockSize: 4096 })));
  const hs = new NbdHandshake(o as never, afterTls);
  if (afterTls === undefined) hs.push(flags(cf));
  return { o, hs };
}

const go = (name: string, infos: number[] = []): Buffer => encodeOption(Opt.GO, encodeInfoRequest(name, infos));

test('unknown client flags end the connection (NBD_BAD_FLAGS)', () => {
  const { o } = setup({}, 1 | 4);
  assert.deepEqual(o.destroyed, { code: ErrorCode.NBD_BAD_FLAGS, msg: 'unknown client flags 0x5', level: 'warn' });
});

test('EXPORT_NAME: the reply has 124 zero bytes unless NO_ZEROES; the export and leftover go to transmission', () => {
  for (const cf of [1, 3]) {
    const { o, hs } = setup({ canFlush: true }, cf);
    const tail = Buffer.from('after');
    hs.push(Buffer.concat([encodeOption(Opt.EXPORT_NAME, Buffer.from('other')), tail]));
    const dev = o.exports[1]?.device as BlockDevice;
    assert.deepEqual(o.take(), encodeExportNameReply(7 * 4096, BASE_FLAGS, cf === 3));
    assert.equal(o.entered?.exp, o.exports[1]);
    assert.deepEqual(o.entered?.n, { structured: false, strictSizes: false, metaActive: false });
    assert.deepEqual(Buffer.concat(o.entered?.leftover ?? []), tail);
    assert.equal(dev.size, 7 * 4096);
  }
});

test('after TLS: no client flags are read and NO_ZEROES comes from the gate', () => {
  for (const nz of [true, false]) {
    const { o, hs } = setup({}, 0, { noZeroes: nz });
    hs.push(encodeOption(Opt.EXPORT_NAME, Buffer.from('disk')));
    assert.equal(o.take().length, nz ? 10 : 134);
    assert.ok(o.entered !== undefined);
  }
});

test('EXPORT_NAME of an unknown export or a full export ends the connection', () => {
  const u = setup();
  u.hs.push(encodeOption(Opt.EXPORT_NAME, Buffer.from('nope')));
  assert.deepEqual(u.o.destroyed, { code: ErrorCode.NBD_UNKNOWN_EXPORT, msg: "unknown export 'nope'", level: 'warn' });
  assert.equal(u.o.written.length, 0);

  const f = setup();
  f.o.exports[0]?.connections.add({} as never);
  f.o.exports[0]?.connections.add({} as never);
  f.hs.push(encodeOption(Opt.EXPORT_NAME, Buffer.from('disk')));
  assert.deepEqual(f.o.destroyed, { code: ErrorCode.NBD_TOO_MANY_CONNECTIONS, msg: "export 'disk' already has 2 connections (maximum 2)", level: 'warn' });

  const one = setup();
  one.o.exports[0]?.connections.add({} as never);
  one.hs.push(encodeOption(Opt.EXPORT_NAME, Buffer.from('')));
  assert.equal(one.o.entered?.exp.name, 'disk', 'one below the maximum, empty name = default');
});

test('ABORT: ACK and close', () => {
  const { o, hs } = setup();
  hs.push(encodeOption(Opt.ABORT));
  assert.deepEqual(o.take(), encodeRepAck(Opt.ABORT));
  assert.equal(o.ended, 1);
});

test('LIST: one SERVER reply per export then ACK; LIST with data is ERR_INVALID', () => {
  const { o, hs } = setup();
  hs.push(encodeOption(Opt.LIST));
  assert.deepEqual(o.take(), Buffer.concat([encodeRepServer(Opt.LIST, 'disk', 'the disk'), encodeRepServer(Opt.LIST, 'other', ''), encodeRepAck(Opt.LIST)]));
  hs.push(encodeOption(Opt.LIST, Buffer.from('x')));
  assert.deepEqual(o.take(), encodeRepError(Opt.LIST, Rep.ERR_INVALID, 'LIST takes no data'));
  assert.equal(o.ended, 0);
  assert.equal(o.destroyed, undefined);
});

test('GO: INFO_EXPORT, NAME and DESCRIPTION when asked, BLOCK_SIZE always, ACK; strictSizes only when BLOCK_SIZE was asked', () => {
  const lists: number[][] = [[InfoType.NAME, InfoType.DESCRIPTION], [InfoType.BLOCK_SIZE], [InfoType.DESCRIPTION, InfoType.NAME, InfoType.EXPORT]];
  for (const infos of lists) {
    const { o, hs } = setup({ blockSize: 4096, maxRequest: 48 << 20 });
    hs.push(go('disk', infos));
    const dev = o.exports[0]?.device as BlockDevice;
    const parts = [encodeInfoExport(Opt.GO, 3 * 1024 * 1024, BASE_FLAGS)];
    for (const t of infos) {
      if (t === InfoType.NAME) parts.push(encodeInfoName(Opt.GO, 'disk'));
      if (t === InfoType.DESCRIPTION) parts.push(encodeInfoDescription(Opt.GO, 'the disk'));
    }
    parts.push(encodeInfoBlockSize(Opt.GO, 4096, 4096, 48 << 20), encodeRepAck(Opt.GO));
    assert.deepEqual(o.take(), Buffer.concat(parts));
    assert.deepEqual(o.entered?.n, { structured: false, strictSizes: infos.includes(InfoType.BLOCK_SIZE), metaActive: false });
    assert.deepEqual(blockSizes(dev), { min: 4096, preferred: 4096, max: 48 << 20 });
  }
});

test('GO on an export with no description sends no DESCRIPTION even when asked', () => {
  const { o, hs } = setup();
  hs.push(go('other', [InfoType.DESCRIPTION]));
  assert.deepEqual(o.take(), Buffer.concat([encodeInfoExport(Opt.GO, 7 * 4096, BASE_FLAGS), encodeInfoBlockSize(Opt.GO, 4096, 4096, 32 << 20), encodeRepAck(Opt.GO)]));
});

test('INFO answers like GO but stays in the handshake, even on a full export', () => {
  const { o, hs } = setup();
  o.exports[0]?.connections.add({} as never);
  o.exports[0]?.connections.add({} as never);
  hs.push(encodeOption(Opt.INFO, encodeInfoRequest('disk', [InfoType.NAME])));
  assert.deepEqual(o.take(), Buffer.concat([encodeInfoExport(Opt.INFO, 3 * 1024 * 1024, BASE_FLAGS), encodeInfoName(Opt.INFO, 'disk'), encodeInfoBlockSize(Opt.INFO, 512, 4096, 32 << 20), encodeRepAck(Opt.INFO)]));
  assert.equal(o.entered, undefined);
  assert.equal(o.logs.length, 0);
});

test('GO: malformed → ERR_INVALID with the parser’s message; unknown export → ERR_UNKNOWN; full export → ERR_POLICY and a warning', () => {
  const { o, hs } = setup();
  hs.push(encodeOption(Opt.GO, Buffer.from([0, 0])));
  assert.deepEqual(o.take(), encodeRepError(Opt.GO, Rep.ERR_INVALID, 'INFO/GO option shorter than 6 bytes'));
  hs.push(go('nope'));
  assert.deepEqual(o.take(), encodeRepError(Opt.GO, Rep.ERR_UNKNOWN, "unknown export 'nope'"));
  o.exports[0]?.connections.add({} as never);
  hs.push(go('disk'));
  assert.equal(o.entered?.exp.name, 'disk', 'one connection, maximum 2: allowed');

  const f = setup();
  f.o.exports[0]?.connections.add({} as never);
  f.o.exports[0]?.connections.add({} as never);
  f.hs.push(go('disk'));
  assert.deepEqual(f.o.take(), encodeRepError(Opt.GO, Rep.ERR_POLICY, "export 'disk' has too many connections"));
  assert.deepEqual(f.o.logs, [{ level: 'warn', code: ErrorCode.NBD_TOO_MANY_CONNECTIONS, msg: "export 'disk' already has 2 connections (maximum 2); GO refused" }]);
  assert.equal(f.o.entered, undefined);
  assert.equal(f.o.ended, 0);
});

test('transmission flags follow each capability; read-only hides TRIM / WRITE_ZEROES; structured adds DF', () => {
  const cases: Array<[DevOpts, number]> = [
    [{}, BASE_FLAGS],
    [{ readOnly: true }, BASE_FLAGS | TF.READ_ONLY],
    [{ canFlush: true }, BASE_FLAGS | TF.SEND_FLUSH],
    [{ canFua: true }, BASE_FLAGS | TF.SEND_FUA],
    [{ canTrim: true }, BASE_FLAGS | TF.SEND_TRIM],
    [{ canTrim: true, readOnly: true }, BASE_FLAGS | TF.READ_ONLY],
    [{ canWriteZeroes: true }, BASE_FLAGS | TF.SEND_WRITE_ZEROES],
    [{ canWriteZeroes: true, canFastZero: true }, BASE_FLAGS | TF.SEND_WRITE_ZEROES | TF.SEND_FAST_ZERO],
    [{ canFastZero: true }, BASE_FLAGS],
    [{ canWriteZeroes: true, canFastZero: true, readOnly: true }, BASE_FLAGS | TF.READ_ONLY],
  ];
  for (const [d, f] of cases) {
    const { o, hs } = setup(d);
    hs.push(encodeOption(Opt.INFO, encodeInfoRequest('disk')));
    assert.equal(o.take().readUInt16BE(20 + 10), f, JSON.stringify(d));
  }
  const { o, hs } = setup({});
  hs.push(encodeOption(Opt.STRUCTURED_REPLY));
  assert.deepEqual(o.take(), encodeRepAck(Opt.STRUCTURED_REPLY));
  hs.push(encodeOption(Opt.EXPORT_NAME, Buffer.from('disk')));
  assert.deepEqual(o.take(), encodeExportNameReply(3 * 1024 * 1024, BASE_FLAGS | TF.SEND_DF, true));
  assert.equal(o.entered?.n.structured, true);
});

test('STRUCTURED_REPLY with data is ERR_INVALID and negotiates nothing', () => {
  const { o, hs } = setup();
  hs.push(encodeOption(Opt.STRUCTURED_REPLY, Buffer.from([1])));
  assert.deepEqual(o.take(), encodeRepError(Opt.STRUCTURED_REPLY, Rep.ERR_INVALID, 'STRUCTURED_REPLY takes no data'));
  hs.push(go('disk'));
  assert.equal(o.entered?.n.structured, false);
});

test('meta contexts need structured replies first', () => {
  for (const opt of [Opt.LIST_META_CONTEXT, Opt.SET_META_CONTEXT]) {
    const { o, hs } = setup();
    hs.push(encodeOption(opt, encodeMetaContextRequest('disk', [BASE_ALLOCATION])));
    assert.deepEqual(o.take(), encodeRepError(opt, Rep.ERR_INVALID, 'negotiate structured replies first'));
  }
});

function structured(): { o: Owner; hs: NbdHandshake } {
  const s = setup();
  s.hs.push(encodeOption(Opt.STRUCTURED_REPLY));
  s.o.take();
  return s;
}

test('LIST_META_CONTEXT: base:allocation, the base: wildcard and an empty query list match (id 0); others do not', () => {
  const L = Opt.LIST_META_CONTEXT;
  const hit = Buffer.concat([encodeRepMetaContext(L, 0, BASE_ALLOCATION), encodeRepAck(L)]);
  for (const q of [[BASE_ALLOCATION], ['base:'], [], ['x:y', BASE_ALLOCATION]]) {
    const { o, hs } = structured();
    hs.push(encodeOption(L, encodeMetaContextRequest('disk', q)));
    assert.deepEqual(o.take(), hit, JSON.stringify(q));
    hs.push(go('disk'));
    assert.equal(o.entered?.n.metaActive, false, 'LIST selects nothing');
  }
  const { o, hs } = structured();
  hs.push(encodeOption(L, encodeMetaContextRequest('disk', ['base:alloc', 'qemu:dirty'])));
  assert.deepEqual(o.take(), encodeRepAck(L));
  hs.push(encodeOption(L, encodeMetaContextRequest('nope', [])));
  assert.deepEqual(o.take(), encodeRepError(L, Rep.ERR_UNKNOWN, "unknown export 'nope'"));
  hs.push(encodeOption(L, Buffer.alloc(3)));
  assert.deepEqual(o.take(), encodeRepError(L, Rep.ERR_INVALID, 'META_CONTEXT option shorter than 8 bytes'));
});

test('SET_META_CONTEXT: base:allocation selects id 1 for that export only; base: and an empty list select nothing', () => {
  const S = Opt.SET_META_CONTEXT;
  {
    const { o, hs } = structured();
    hs.push(encodeOption(S, encodeMetaContextRequest('disk', [BASE_ALLOCATION])));
    assert.deepEqual(o.take(), Buffer.concat([encodeRepMetaContext(S, BASE_ALLOCATION_ID, BASE_ALLOCATION), encodeRepAck(S)]));
    hs.push(go('disk'));
    assert.deepEqual(o.entered?.n, { structured: true, strictSizes: false, metaActive: true });
  }
  {
    const { o, hs } = structured();
    hs.push(encodeOption(S, encodeMetaContextRequest('disk', [BASE_ALLOCATION])));
    hs.push(go('other'));
    assert.equal(o.entered?.n.metaActive, false, 'negotiated for another export');
  }
  for (const q of [['base:'], []]) {
    const { o, hs } = structured();
    hs.push(encodeOption(S, encodeMetaContextRequest('disk', q)));
    assert.deepEqual(o.take(), encodeRepAck(S));
    hs.push(go('disk'));
    assert.equal(o.entered?.n.metaActive, false);
  }
  {
    // a later SET that matches nothing clears the selection
    const { o, hs } = structured();
    hs.push(encodeOption(S, encodeMetaContextRequest('disk', [BASE_ALLOCATION])));
    hs.push(encodeOption(S, encodeMetaContextRequest('disk', ['x:y'])));
    hs.push(go('disk'));
    assert.equal(o.entered?.n.metaActive, false);
  }
  {
    // a later SET for another export moves it
    const { o, hs } = structured();
    hs.push(encodeOption(S, encodeMetaContextRequest('disk', [BASE_ALLOCATION])));
    hs.push(encodeOption(S, encodeMetaContextRequest('other', [BASE_ALLOCATION])));
    hs.push(go('disk'));
    assert.equal(o.entered?.n.metaActive, false);
  }
});

test('STARTTLS: ERR_UNSUP without TLS, ERR_INVALID once TLS is up; unknown options ERR_UNSUP', () => {
  const p = setup();
  p.hs.push(encodeOption(Opt.STARTTLS));
  assert.deepEqual(p.o.take(), encodeRepError(Opt.STARTTLS, Rep.ERR_UNSUP, 'TLS is not configured on this server'));
  const t = setup({}, 0, { noZeroes: true });
  t.hs.push(encodeOption(Opt.STARTTLS));
  assert.deepEqual(t.o.take(), encodeRepError(Opt.STARTTLS, Rep.ERR_INVALID, 'TLS already negotiated'));
  p.hs.push(encodeOption(99));
  assert.deepEqual(p.o.take(), encodeRepError(99, Rep.ERR_UNSUP, 'option 99 not supported'));
});

test('server shutting down: options get ERR_SHUTDOWN, ABORT still ACKs', () => {
  const { o, hs } = setup();
  o.shuttingDown = true;
  hs.push(go('disk'));
  assert.deepEqual(o.take(), encodeRepError(Opt.GO, Rep.ERR_SHUTDOWN, 'server shutting down'));
  assert.equal(o.entered, undefined);
  hs.push(encodeOption(Opt.ABORT));
  assert.deepEqual(o.take(), encodeRepAck(Opt.ABORT));
  assert.equal(o.ended, 1);
});

test(`${MAX_HANDSHAKE_OPTIONS} options are answered; one more is ERR_POLICY and close`, () => {
  const { o, hs } = setup();
  const list = encodeOption(99);
  hs.push(Buffer.concat(Array.from({ length: MAX_HANDSHAKE_OPTIONS }, () => list)));
  assert.equal(o.written.length, MAX_HANDSHAKE_OPTIONS);
  assert.equal(o.ended, 0);
  o.take();
  hs.push(encodeOption(Opt.LIST));
  assert.deepEqual(o.take(), encodeRepError(Opt.LIST, Rep.ERR_POLICY, 'too many options'));
  assert.equal(o.ended, 1);
  assert.deepEqual(o.logs, [{ level: 'warn', code: ErrorCode.NBD_TOO_MANY_OPTIONS, msg: `more than ${MAX_HANDSHAKE_OPTIONS} handshake options; closing` }]);
});

test('parse errors: an option too large is answered ERR_TOO_BIG then closed; a bad magic destroys', () => {
  const { o, hs } = setup();
  const h = encodeOption(Opt.GO);
  h.writeUInt32BE(MAX_OPTION_LENGTH + 1, 12);
  hs.push(h);
  assert.deepEqual(o.take(), encodeRepError(0, Rep.ERR_TOO_BIG, 'option too large'));
  assert.equal(o.ended, 1);
  assert.equal(o.logs[0]?.level, 'warn');
  assert.equal(o.logs[0]?.code, ErrorCode.NBD_OPTION_TOO_LARGE);
  assert.equal(o.logs[0]?.msg, `option ${Opt.GO} announces ${MAX_OPTION_LENGTH + 1} bytes (limit ${MAX_OPTION_LENGTH})`);
  assert.equal(o.destroyed, undefined);

  const b = setup();
  const bad = encodeOption(Opt.LIST);
  bad[0] = 0;
  b.hs.push(bad);
  assert.deepEqual(b.o.destroyed, { code: ErrorCode.NBD_BAD_MAGIC, msg: 'option does not start with IHAVEOPT', level: 'warn' });
  assert.equal(b.o.written.length, 0);
});

test('an option exactly at the length limit is read', () => {
  const { o, hs } = setup();
  hs.push(encodeOption(Opt.LIST, Buffer.alloc(MAX_OPTION_LENGTH)));
  assert.deepEqual(o.take(), encodeRepError(Opt.LIST, Rep.ERR_INVALID, 'LIST takes no data'));
});

test('replies are corked per push; partial reports an option in progress', () => {
  const { o, hs } = setup();
  assert.equal(o.corks, 1);
  assert.equal(o.uncorks, 1);
  assert.equal(hs.partial, false);
  const l = encodeOption(Opt.LIST);
  hs.push(l.subarray(0, 5));
  assert.equal(hs.partial, true);
  hs.push(l.subarray(5));
  assert.equal(hs.partial, false);
  assert.equal(o.corks, 3);
  assert.equal(o.uncorks, 3);
});

test(`backpressure: above ${HANDSHAKE_MAX_UNSENT} unsent bytes options wait (one pause); resume goes on`, () => {
  const { o, hs } = setup();
  o.writableLength = HANDSHAKE_MAX_UNSENT;
  hs.push(encodeOption(Opt.LIST));
  assert.equal(o.written.length, 3, 'at the limit: still answered');
  o.take();
  o.writableLength = HANDSHAKE_MAX_UNSENT + 1;
  hs.push(encodeOption(Opt.LIST));
  hs.push(encodeOption(Opt.ABORT));
  assert.equal(o.written.length, 0);
  assert.equal(o.pauses, 1);
  assert.equal(o.corks, o.uncorks);
  hs.resume();
  assert.equal(o.resumes, 1);
  assert.equal(o.written.length, 0, 'still above: waits again');
  assert.equal(o.pauses, 2);
  o.writableLength = 0;
  hs.resume();
  assert.equal(o.resumes, 2);
  assert.deepEqual(o.take(), Buffer.concat([encodeRepServer(Opt.LIST, 'disk', 'the disk'), encodeRepServer(Opt.LIST, 'other', ''), encodeRepAck(Opt.LIST), encodeRepAck(Opt.ABORT)]));
  hs.resume();
  assert.equal(o.resumes, 2, 'not paused: nothing to resume');
});

test('resume after the handshake ended does nothing', () => {
  const { o, hs } = setup();
  o.writableLength = HANDSHAKE_MAX_UNSENT + 1;
  hs.push(encodeOption(Opt.LIST));
  assert.equal(o.pauses, 1);
  o.inHandshake = false;
  o.writableLength = 0;
  hs.resume();
  assert.equal(o.resumes, 0);
  assert.equal(o.written.length, 0);
});

test('nothing is parsed once the handshake is over', () => {
  const { o, hs } = setup();
  hs.push(Buffer.concat([go('disk'), encodeOption(Opt.LIST)]));
  assert.ok(o.entered !== undefined);
  const n = o.written.length;
  hs.push(encodeOption(Opt.LIST));
  assert.equal(o.written.length, n);
  assert.equal(Buffer.concat(o.entered.leftover).length, 16);
});
