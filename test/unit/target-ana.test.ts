/**
 * The embedded target with several ports and ANA (issue 12 item 5), through raw PDUs: two
 * ports give two controllers (distinct cntlids) of one subsystem; Identify Controller CMIC /
 * OAES / ANATT / ANACAP / ANAGRPMAX / NANAGRPID / CQT and Identify Namespace ANAGRPID; the ANA
 * log page per port (NSID lists, RGO, offset paging); the ANA change notice only to the port
 * whose state changed, masked until the log is read; I/O answered per ANA state with the path
 * status codes (SCT 3h, DNR clear); ports added and removed at runtime; the discovery log.
 */
import { strict as assert } from 'node:assert';
import { after, before, describe, it } from 'node:test';
import {
  AEN_ANA_CHANGE_DW0, AnaState, parseAnaLog, parseDiscoveryLogEntries, parseIdentifyController, parseIdentifyNamespace,
  PathStatus, Sct, sqeAsyncEventRequest, sqeDatasetManagement, encodeDsmRanges, sqeFlush, sqeGetLogPage, sqeIdentify,
  sqeKeepAlive, sqeRead, sqeSetFeatures, sqeWrite, sqeWriteZeroes, FabricsStatus,
} from '../../src/wire';
import { DISCOVERY_NQN, NvmeTarget } from '../../src/embedded-target';
import { ErrorCode } from '../../src/errors';
import { rejectsCode, throwsCode } from '../helpers/assert-code';
import { connectAdmin, connectIo, enable, RawHost, type Reply } from './target-rawhost';

const NQN = 'nqn.2014-08.org.nvmf-nbd:test-ana';
const T = { timeout: 20_000 };
const ANA_LOG_BYTES = 4096;

/** An enabled admin queue on `port` with ANA + namespace notices on. */
async function adminOn(port: number): Promise<{ h: RawHost; cntlid: number }> {
  const h = await RawHost.connect(port);
  await h.icreq();
  const c = await connectAdmin(h, NQN, { kato: 30_000 });
  assert.equal(c.cqe.ok, true, 'Connect');
  assert.equal(await enable(h), 1);
  const aec = await h.submit(sqeSetFeatures(0x0b, (1 << 8) | (1 << 11)));
  assert.equal(aec.cqe.ok, true);
  return { h, cntlid: c.cqe.dw0 };
}

async function ioOn(port: number, cntlid: number): Promise<RawHost> {
  const io = await RawHost.connect(port);
  await io.icreq();
  const c = await connectIo(io, NQN, cntlid);
  assert.equal(c.cqe.ok, true, 'I/O Connect');
  return io;
}

async function anaLog(h: RawHost, o: { rgo?: boolean; rae?: boolean; offset?: number; len?: number } = {}): Promise<Buffer> {
  const len = o.len ?? ANA_LOG_BYTES;
  const r = await h.submit(sqeGetLogPage(0x0c, len, 0xffffffff, o.offset ?? 0, o.rgo === true ? 1 : 0, o.rae === true), { readLength: len });
  assert.equal(r.cqe.ok, true, 'Get Log Page 0Ch');
  return r.data;
}

function statusOf(r: Reply): [number, number, boolean] {
  return [r.cqe.status.sct, r.cqe.status.sc, r.cqe.status.dnr];
}

describe('target: several ports, ANA groups, ANA log, ANA change notice', () => {
  let target: NvmeTarget;
  let p1 = 0;
  let p2 = 0;
  const open: RawHost[] = [];

  before(async () => {
    target = new NvmeTarget({
      ports: [
        { host: '127.0.0.1', port: 0, advertise: { host: '10.0.2.100', port: 4420 } },
        { id: 7, host: '127.0.0.1', port: 0, advertise: { host: '10.0.2.100', port: 4421 }, ana: [{ group: 2, state: 'non-optimized' }] },
      ],
      subsystems: [{
        nqn: NQN,
        namespaces: [
          { nsid: 1, sizeBytes: 8 << 20, backing: { memory: true } },
          { nsid: 2, sizeBytes: 8 << 20, backing: { memory: true }, anaGroup: 2 },
          { nsid: 3, sizeBytes: 8 << 20, backing: { memory: true }, anaGroup: 2 },
        ],
      }],
      anatt: 12,
      cqtMs: 6000,
    });
    await target.listen();
    const ports = target.ports();
    assert.deepEqual(ports.map((p) => p.id), [1, 7]);
    p1 = ports[0]!.port;
    p2 = ports[1]!.port;
    assert.notEqual(p1, p2);
    assert.deepEqual(target.address(), { host: '127.0.0.1', port: p1 }, 'address() is the first port');
  });
  after(async () => {
    for (const h of open) h.close();
    await target.close();
  });

  it('two ports: two controllers with distinct cntlids; Identify Controller advertises multipath + ANA + CQT', T, async () => {
    const a = await adminOn(p1);
    const b = await adminOn(p2);
    open.push(a.h, b.h);
    assert.notEqual(a.cntlid, b.cntlid);
    for (const x of [a, b]) {
      const id = parseIdentifyController((await x.h.submit(sqeIdentify(1), { readLength: 4096 })).data);
      assert.equal(id.cntlid, x.cntlid);
      assert.equal(id.cmic, 0x0b, 'CMIC: multi-port, multi-controller, ANA reporting');
      assert.equal(id.oaes & 0x900, 0x900, 'OAES: namespace attribute + ANA change notices');
      assert.equal(id.anatt, 12);
      assert.equal(id.anacap, 0x1f, 'every ANA state reportable');
      assert.equal(id.anagrpmax, 128);
      assert.equal(id.nanagrpid, 128);
      assert.equal(id.cqt, 6000);
      assert.ok(id.mnan > 0 && id.mnan <= id.nn, 'MNAN in 1..NN (Linux refuses ANA otherwise)');
      const ns2 = parseIdentifyNamespace((await x.h.submit(sqeIdentify(0, 2), { readLength: 4096 })).data);
      assert.equal(ns2.anagrpid, 2);
      assert.equal(ns2.nmic & 1, 1, 'NMIC: shared namespace');
      assert.equal(parseIdentifyNamespace((await x.h.submit(sqeIdentify(0, 1), { readLength: 4096 })).data).anagrpid, 1);
    }
    // The discovery controller has no ANA.
    const d = await RawHost.connect(p2);
    open.push(d);
    await d.icreq();
    await connectAdmin(d, DISCOVERY_NQN);
    await enable(d);
    assert.equal(parseIdentifyController((await d.submit(sqeIdentify(1), { readLength: 4096 })).data).cmic, 0);
    const noAna = await d.submit(sqeGetLogPage(0x0c, 64), { readLength: 64 });
    assert.deepEqual([noAna.cqe.status.sct, noAna.cqe.status.sc], [1, 0x09], 'Invalid Log Page on discovery');
    // Discovery log: the subsystem through each port, with that port's id and advertised address.
    const disc = (await d.submit(sqeGetLogPage(0x70, 3072), { readLength: 3072 })).data;
    const entries = parseDiscoveryLogEntries(disc, 2).map((e) => [e.subnqn, e.portid, e.traddr, e.trsvcid]);
    assert.deepEqual(entries, [[NQN, 1, '10.0.2.100', '4420'], [NQN, 7, '10.0.2.100', '4421']]);
  });

  it('ANA log per port: groups ascending with their NSIDs and this port\'s states; RGO; offset paging', T, async () => {
    const a = await adminOn(p1);
    const b = await adminOn(p2);
    open.push(a.h, b.h);
    const la = parseAnaLog(await anaLog(a.h));
    const lb = parseAnaLog(await anaLog(b.h));
    assert.deepEqual(la.groups.map((g) => [g.grpid, g.state, g.nsids]), [[1, AnaState.OPTIMIZED, [1]], [2, AnaState.OPTIMIZED, [2, 3]]]);
    assert.deepEqual(lb.groups.map((g) => [g.grpid, g.state, g.nsids]), [[1, AnaState.OPTIMIZED, [1]], [2, AnaState.NON_OPTIMIZED, [2, 3]]]);
    assert.ok(la.chgcnt > 0n);
    const rgo = await anaLog(b.h, { rgo: true });
    assert.deepEqual(parseAnaLog(rgo).groups.map((g) => [g.grpid, g.state, g.nsids.length]), [[1, 1, 0], [2, 2, 0]]);
    assert.equal(rgo.readUInt32LE(16 + 32), 2, 'RGO: second descriptor right after the first (no NSID list)');
    // Paging like the other logs: the second descriptor read on its own at offset 16 + 36.
    const full = await anaLog(b.h, { len: 16 + 36 + 40 });
    const part = await anaLog(b.h, { offset: 16 + 36, len: 40 });
    assert.deepEqual(part, full.subarray(16 + 36));
    assert.equal(part.readUInt32LE(0), 2);
    assert.equal(part.readUInt32LE(4), 2, 'NNSIDS');
    assert.deepEqual([part.readUInt32LE(32), part.readUInt32LE(36)], [2, 3]);
    const bad = await b.h.submit(sqeGetLogPage(0x0c, 16, 0xffffffff, 2), { readLength: 16 });
    assert.deepEqual([bad.cqe.status.sct, bad.cqe.status.sc], [0, 0x02], 'unaligned offset: Invalid Field');
  });

  it('setAnaState: the ANA change notice goes to the controllers on that port only, once until the log is read', T, async () => {
    const a = await adminOn(p1);
    const b = await adminOn(p2);
    open.push(a.h, b.h);
    const aerA = a.h.submit(sqeAsyncEventRequest(), { timeoutMs: 60_000 });
    aerA.catch(() => undefined);
    let aFired = false;
    void aerA.then(() => { aFired = true; }, () => undefined);
    const aerB = b.h.submit(sqeAsyncEventRequest());
    const before = parseAnaLog(await anaLog(b.h)).chgcnt;
    assert.equal(target.setAnaState(7, 1, 'inaccessible'), true);
    assert.equal(target.setAnaState(7, 1, AnaState.INACCESSIBLE), false, 'same state: nothing changes');
    const ev = await aerB;
    assert.equal(ev.cqe.ok, true);
    assert.equal(ev.cqe.dw0, AEN_ANA_CHANGE_DW0, 'notice, info 03h, log 0Ch');
    // Port 1's controller: a command sent after the change completes while its AER stays pending
    // (events are posted before setAnaState returns, so a notice would have arrived first).
    assert.equal((await a.h.submit(sqeKeepAlive())).cqe.ok, true);
    assert.equal(aFired, false, 'port 1 got no ANA notice');
    // Masked until the log is read without RAE: a second change gives no second notice yet.
    const aerB2 = b.h.submit(sqeAsyncEventRequest());
    let b2Fired = false;
    void aerB2.then(() => { b2Fired = true; }, () => undefined);
    target.setAnaState(7, 2, 'change');
    assert.equal((await b.h.submit(sqeKeepAlive())).cqe.ok, true);
    assert.equal(b2Fired, false, 'masked while the log is unread');
    const withRae = parseAnaLog(await anaLog(b.h, { rae: true }));
    assert.deepEqual(withRae.groups.map((g) => [g.grpid, g.state]), [[1, AnaState.INACCESSIBLE], [2, AnaState.CHANGE]]);
    assert.ok(withRae.chgcnt > before, 'change count moved');
    assert.ok(withRae.groups[0]!.chgcnt > before && withRae.groups[1]!.chgcnt > withRae.groups[0]!.chgcnt, 'per-group change counts');
    target.setAnaState(7, 2, 'non-optimized');
    assert.equal((await b.h.submit(sqeKeepAlive())).cqe.ok, true);
    assert.equal(b2Fired, false, 'RAE kept it masked');
    await anaLog(b.h);
    target.setAnaState(7, 1, 'optimized');
    assert.equal((await aerB2).cqe.dw0, AEN_ANA_CHANGE_DW0, 'unmasked by the read without RAE');
    assert.deepEqual(parseAnaLog(await anaLog(a.h)).groups.map((g) => g.state), [1, 1], 'port 1 never changed');
    assert.equal(target.anaState(7, 1), AnaState.OPTIMIZED);
    // A controller that did not enable ANA notices (AEC bit 11) gets none.
    const quiet = await RawHost.connect(p2);
    open.push(quiet);
    await quiet.icreq();
    await connectAdmin(quiet, NQN);
    await enable(quiet);
    await quiet.submit(sqeSetFeatures(0x0b, 1 << 8));
    let qFired = false;
    void quiet.submit(sqeAsyncEventRequest(), { timeoutMs: 60_000 }).then(() => { qFired = true; }, () => undefined);
    target.setAnaState(7, 1, 'non-optimized');
    assert.equal((await quiet.submit(sqeKeepAlive())).cqe.ok, true);
    assert.equal(qFired, false);
    target.setAnaState(7, 1, 'optimized');
  });

  it('I/O per ANA state on a port: path status (SCT 3h, DNR clear) for inaccessible / persistent loss / change; the other port serves', T, async () => {
    const a = await adminOn(p1);
    const b = await adminOn(p2);
    open.push(a.h, b.h);
    const ioA = await ioOn(p1, a.cntlid);
    const ioB = await ioOn(p2, b.cntlid);
    open.push(ioA, ioB);
    const data = Buffer.alloc(16384, 0x5a);
    assert.equal((await ioB.submit(sqeWrite(1, 0n, 32, false), { write: data, inCapsule: false })).cqe.ok, true);
    const cases: Array<[string, number | undefined]> = [
      ['inaccessible', PathStatus.ANA_INACCESSIBLE],
      ['persistent-loss', PathStatus.ANA_PERSISTENT_LOSS],
      ['change', PathStatus.ANA_TRANSITION],
      ['non-optimized', undefined],
      ['optimized', undefined],
    ];
    for (const [state, sc] of cases) {
      const before = target.ports().find((p) => p.id === 7)!.io;
      target.setAnaState(7, 1, state as 'inaccessible');
      const read = await ioB.submit(sqeRead(1, 0n, 32), { readLength: 16384 });
      // The write is refused before its data is asked for (no R2T): the callback below fails the test otherwise.
      let r2t = false;
      ioB.onR2T = () => { r2t = sc !== undefined; return false; };
      const write = await ioB.submit(sqeWrite(1, 0n, 32, false), { write: data, inCapsule: false });
      ioB.onR2T = undefined;
      const wz = await ioB.submit(sqeWriteZeroes(1, 64n, 8, { deallocate: false, fua: false }));
      const dsm = await ioB.submit(sqeDatasetManagement(1, 1, true), { write: encodeDsmRanges([{ slba: 100n, nlb: 8 }]) });
      const flush = await ioB.submit(sqeFlush(1));
      for (const [what, r] of [['read', read], ['write', write], ['write zeroes', wz], ['dsm', dsm], ['flush', flush]] as const) {
        if (sc === undefined) assert.equal(r.cqe.ok, true, `${state}: ${what} succeeds`);
        else assert.deepEqual(statusOf(r), [Sct.PATH, sc, false], `${state}: ${what}`);
      }
      assert.equal(r2t, false, `${state}: no R2T for a refused write`);
      const io = target.ports().find((p) => p.id === 7)!.io;
      assert.equal(io.readCommands, before.readCommands + (sc === undefined ? 1 : 0), `${state}: port 7 read count`);
      assert.equal(io.writeCommands, before.writeCommands + (sc === undefined ? 1 : 0), `${state}: port 7 write count`);
      if (sc === undefined) assert.deepEqual(read.data, data);
      // Group 2 on the same port and group 1 on port 1 are not affected.
      assert.equal((await ioB.submit(sqeRead(2, 0n, 8), { readLength: 4096 })).cqe.ok, true, `${state}: group 2 readable`);
      const other = await ioA.submit(sqeRead(1, 0n, 32), { readLength: 16384 });
      assert.equal(other.cqe.ok, true, `${state}: port 1 serves namespace 1`);
      assert.deepEqual(other.data, data);
      // Flush of every namespace skips what this path cannot reach instead of failing.
      assert.equal((await ioB.submit(sqeFlush(0xffffffff))).cqe.ok, true);
    }
  });

  it('an I/O queue must connect on its controller\'s port', T, async () => {
    const a = await adminOn(p1);
    open.push(a.h);
    const wrong = await RawHost.connect(p2);
    open.push(wrong);
    await wrong.icreq();
    const c = await connectIo(wrong, NQN, a.cntlid);
    assert.deepEqual([c.cqe.status.sct, c.cqe.status.sc], [1, FabricsStatus.CONNECT_INVALID_PARAMETERS]);
    assert.equal(c.cqe.dw0, (1 << 16) | 16, 'IATTR 1, IPO 16 (cntlid)');
  });

  it('setNamespaceAnaGroup moves a namespace: every controller of the subsystem is told; Identify and the log follow', T, async () => {
    const a = await adminOn(p1);
    const b = await adminOn(p2);
    open.push(a.h, b.h);
    const aerA = a.h.submit(sqeAsyncEventRequest());
    const aerB = b.h.submit(sqeAsyncEventRequest());
    target.setNamespaceAnaGroup(NQN, 3, 5);
    assert.equal((await aerA).cqe.dw0, AEN_ANA_CHANGE_DW0);
    assert.equal((await aerB).cqe.dw0, AEN_ANA_CHANGE_DW0);
    assert.equal(parseIdentifyNamespace((await b.h.submit(sqeIdentify(0, 3), { readLength: 4096 })).data).anagrpid, 5);
    assert.deepEqual(parseAnaLog(await anaLog(b.h)).groups.map((g) => [g.grpid, g.nsids]), [[1, [1]], [2, [2]], [5, [3]]]);
    target.setNamespaceAnaGroup(NQN, 3, 2);
    throwsCode(() => target.setNamespaceAnaGroup(NQN, 9, 2), ErrorCode.NAMESPACE_NOT_FOUND);
    throwsCode(() => target.setNamespaceAnaGroup(NQN, 3, 129), ErrorCode.CFG_INVALID);
  });

  it('ports added and removed at runtime: removal drops that port\'s controllers only; discovery follows', T, async () => {
    const info = await target.addPort({ id: 3, host: '127.0.0.1', port: 0, ana: [{ group: 1, state: 'inaccessible' }] });
    assert.equal(info.id, 3);
    assert.ok(info.port > 0);
    const a = await adminOn(p1);
    const c = await adminOn(info.port);
    open.push(a.h, c.h);
    assert.deepEqual(parseAnaLog(await anaLog(c.h)).groups.map((g) => g.state), [AnaState.INACCESSIBLE, AnaState.OPTIMIZED]);
    const d = await RawHost.connect(p1);
    open.push(d);
    await d.icreq();
    await connectAdmin(d, DISCOVERY_NQN);
    await enable(d);
    const disc3 = (await d.submit(sqeGetLogPage(0x70, 4096), { readLength: 4096 })).data;
    assert.deepEqual(parseDiscoveryLogEntries(disc3, 3).map((e) => e.portid), [1, 7, 3]);
    await target.removePort(3);
    await c.h.waitClosed();
    assert.equal((await a.h.submit(sqeKeepAlive())).cqe.ok, true, 'port 1 controller lives on');
    assert.deepEqual(target.ports().map((p) => p.id), [1, 7]);
    const disc2 = (await d.submit(sqeGetLogPage(0x70, 4096), { readLength: 4096 })).data;
    assert.equal(disc2.readBigUInt64LE(8), 2n, 'two entries again');
    await rejectsCode(target.removePort(3), ErrorCode.INVALID_ARGUMENT);
    await rejectsCode(target.addPort({ id: 7, port: 0 }), ErrorCode.CFG_INVALID, 'duplicate id');
  });

  it('bad ANA input is a clear error, never a silent change', async () => {
    throwsCode(() => target.setAnaState(99, 1, 'optimized'), ErrorCode.INVALID_ARGUMENT);
    throwsCode(() => target.setAnaState(1, 0, 'optimized'), ErrorCode.CFG_INVALID);
    throwsCode(() => target.setAnaState(1, 129, 'optimized'), ErrorCode.CFG_INVALID);
    throwsCode(() => target.setAnaState(1, 1, 'fast' as 'optimized'), ErrorCode.CFG_INVALID);
    throwsCode(() => target.setAnaState(1, 1, 5 as AnaState), ErrorCode.CFG_INVALID);
    throwsCode(() => new NvmeTarget({ ports: [{ port: 0 }], listen: { host: '127.0.0.1', port: 0 } }), ErrorCode.CFG_INVALID);
    throwsCode(() => new NvmeTarget({ ports: [{ id: 2, port: 0 }, { id: 2, port: 0 }] }), ErrorCode.CFG_INVALID);
    throwsCode(() => new NvmeTarget({ ports: [{ port: 0, ana: [{ group: 1, state: 'gone' as 'change' }] }] }), ErrorCode.CFG_INVALID);
    throwsCode(() => new NvmeTarget({ anatt: 0 }), ErrorCode.CFG_INVALID);
    throwsCode(() => new NvmeTarget({ cqtMs: 70_000 }), ErrorCode.CFG_INVALID);
    const t = new NvmeTarget({ listen: { host: '127.0.0.1', port: 0 }, subsystems: [{ nqn: NQN, namespaces: [{ sizeBytes: 4096, backing: { memory: true }, anaGroup: 200 }] }] });
    await rejectsCode(t.listen(), ErrorCode.CFG_INVALID);
    await t.close();
  });
});
