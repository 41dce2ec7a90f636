/**
 * Mutation-driven pins for the embedded target's queue (src/embedded-target/queue.ts, issue 15),
 * survivors of the whole-file run: a read longer than MAXC2HDATA (128 KiB) and not a multiple of
 * it (two C2HData, LAST_PDU on the second only, every byte), the controller limits per host and
 * per target with their status and log line, Property Set of CC as an 8-byte property refused,
 * the admin queue's close reason logged for its controller and its I/O queues, and the command
 * counter.
 */
import { strict as assert } from 'node:assert';
import { after, describe, it } from 'node:test';
import { encodeConnectData, FabricsStatus, GenericStatus, sqeConnect, sqePropertyGet, sqePropertySet, sqeRead, sqeWrite } from '../../src/wire';
import { NvmeTarget } from '../../src/embedded-target';
import { CC_ENABLE, connectAdmin, connectIo, enable, HOSTID, HOSTNQN, RawHost, type Reply } from './target-rawhost';
import { until } from '../helpers/clock';

const NQN = 'nqn.2014-08.org.example:mut-target-queue3';
const OTHER_HOST = 'nqn.2014-08.org.nvmexpress:uuid:99999999-8888-7777-6666-555555555555';
const T = { timeout: 15_000 };
const G = GenericStatus;

const st = (r: Reply): [number, number, boolean] => [r.cqe.status.sct, r.cqe.status.sc, r.cqe.status.dnr];

function makeTarget(logs: string[], o: Partial<ConstructorParameters<typeof NvmeTarget>[0]> = {}): NvmeTarget {
  return new NvmeTarget({
    listen: { host: '127.0.0.1', port: 0 },
    subsystems: [{ nqn: NQN, namespaces: [{ sizeBytes: 1 << 20, backing: { memory: true } }] }],
    mdtsPages: 64,
    queueSize: 32,
    maxIoQueues: 2,
    log: (level, msg) => logs.push(`${level}: ${msg}`),
    ...o,
  });
}

/** The connection number the target logged for `h` (from its ICReq line), and its address. */
function connOf(logs: string[], h: RawHost, localPort: number): { id: number; peer: string } {
  const peer = `127.0.0.1:${localPort}`;
  for (const l of logs) {
    const m = /^debug: conn (\d+) (\S+): ICReq /.exec(l);
    if (m && m[2] === peer) return { id: Number(m[1]), peer };
  }
  assert.fail(`no ICReq log line for ${peer}`);
}

describe('target queue: C2H split, controller limits, properties, close reasons, counters', () => {
  const hosts: RawHost[] = [];
  const targets: NvmeTarget[] = [];
  async function start(logs: string[], o: Partial<ConstructorParameters<typeof NvmeTarget>[0]> = {}): Promise<number> {
    const t = makeTarget(logs, o);
    targets.push(t);
    return (await t.listen()).port;
  }
  async function raw(port: number): Promise<{ h: RawHost; localPort: number }> {
    const h = await RawHost.connect(port);
    hosts.push(h);
    const localPort = h.sock.localPort ?? -1;
    await h.icreq();
    return { h, localPort };
  }
  after(async () => {
    for (const h of hosts) h.close();
    for (const t of targets) await t.close();
  });

  it('a read of 128 KiB + 64.5 KiB: two C2HData PDUs (128 KiB, then the rest with LAST_PDU), every byte', T, async () => {
    const logs: string[] = [];
    const port = await start(logs);
    const { h: admin } = await raw(port);
    const c = await connectAdmin(admin, NQN);
    await enable(admin);
    const { h: io } = await raw(port);
    assert.equal((await connectIo(io, NQN, c.cqe.dw0)).cqe.ok, true);
    const len = (128 << 10) + 66_048; // 385 blocks of 512
    const data = Buffer.from(Array.from({ length: len }, (_, i) => (i * 13 + (i >> 9)) & 0xff));
    assert.equal((await io.submit(sqeWrite(1, 0n, len / 512, false), { write: data, inCapsule: false })).cqe.ok, true);
    const r = await io.submit(sqeRead(1, 0n, len / 512), { readLength: len });
    assert.equal(r.cqe.ok, true);
    assert.deepEqual([r.c2hPdus, r.lastFlags], [2, [false, true]]);
    assert.equal(r.data.length, len);
    assert.equal(r.data.equals(data), true);
  });

  it('maxControllersPerHost: the host\'s next admin Connect → Controller Busy (SCT 1, SC 81h, DNR), logged with the host count, counted', T, async () => {
    const logs: string[] = [];
    const port = await start(logs, { maxControllersPerHost: 1 });
    const { h: first } = await raw(port);
    assert.equal((await connectAdmin(first, NQN)).cqe.ok, true);
    const { h, localPort } = await raw(port);
    const { id, peer } = connOf(logs, h, localPort);
    assert.deepEqual(st(await connectAdmin(h, NQN)), [1, FabricsStatus.CONTROLLER_BUSY, true]);
    assert.ok(logs.includes(`warn: conn ${id} ${peer}: Connect from '${HOSTNQN}' refused: 1 controllers for this host (maximum 1)`), logs.slice(-3).join('\n'));
    assert.equal(targets.at(-1)?.stats().controllersRefused, 1);
    assert.equal((await connectAdmin(h, NQN, { hostnqn: OTHER_HOST })).cqe.ok, true, 'another host still connects');
  });

  it('maxControllers: the next admin Connect of any host → Controller Busy, logged with the target\'s count', T, async () => {
    const logs: string[] = [];
    const port = await start(logs, { maxControllers: 1 });
    const { h: first } = await raw(port);
    assert.equal((await connectAdmin(first, NQN)).cqe.ok, true);
    const { h, localPort } = await raw(port);
    const { id, peer } = connOf(logs, h, localPort);
    assert.deepEqual(st(await connectAdmin(h, NQN, { hostnqn: OTHER_HOST })), [1, FabricsStatus.CONTROLLER_BUSY, true]);
    assert.ok(logs.includes(`warn: conn ${id} ${peer}: Connect from '${OTHER_HOST}' refused: 1 controllers (maximum 1)`), logs.slice(-3).join('\n'));
    assert.equal(targets.at(-1)?.stats().controllersRefused, 1);
  });

  it('Property Set of CC as an 8-byte property → Invalid Field, CC unchanged (CSTS.RDY stays 0); as 4 bytes it enables', T, async () => {
    const logs: string[] = [];
    const port = await start(logs);
    const { h } = await raw(port);
    assert.equal((await connectAdmin(h, NQN)).cqe.ok, true);
    assert.deepEqual(st(await h.submit(sqePropertySet(0x14, true, CC_ENABLE))), [0, G.INVALID_FIELD, true]);
    assert.equal((await h.submit(sqePropertyGet(0x14, false))).cqe.dw0, 0, 'CC');
    assert.equal((await h.submit(sqePropertyGet(0x1c, false))).cqe.dw0 & 1, 0, 'CSTS.RDY');
    assert.equal((await h.submit(sqePropertySet(0x14, false, CC_ENABLE))).cqe.ok, true);
    assert.equal((await h.submit(sqePropertyGet(0x1c, false))).cqe.dw0 & 1, 1);
  });

  it('the admin queue closing: its controller and its I/O queue log "admin queue closed (<reason>)"', T, async () => {
    const logs: string[] = [];
    const port = await start(logs);
    const { h: admin } = await raw(port);
    const c = await connectAdmin(admin, NQN);
    const cntlid = c.cqe.dw0 & 0xffff;
    await enable(admin);
    const { h: io, localPort } = await raw(port);
    const { id, peer } = connOf(logs, io, localPort);
    assert.equal((await connectIo(io, NQN, cntlid)).cqe.ok, true);
    admin.close();
    await io.waitClosed();
    await until(() => logs.includes(`debug: conn ${id} ${peer} qid 1: closed: admin queue closed (connection closed)`), 'the I/O queue\'s close line');
    assert.ok(logs.includes(`debug: controller ${cntlid} (${NQN}): destroyed: admin queue closed (connection closed)`), logs.slice(-4).join('\n'));
  });

  it('every command capsule is counted once in stats().commands', T, async () => {
    const logs: string[] = [];
    const port = await start(logs);
    const t = targets.at(-1) as NvmeTarget;
    const { h } = await raw(port);
    const before0 = t.stats().commands;
    const cd = encodeConnectData({ hostid: HOSTID, cntlid: 0xffff, subnqn: NQN, hostnqn: HOSTNQN });
    assert.equal((await h.submit(sqeConnect({ qid: 0, sqsize: 15, kato: 0, disableSqFlowControl: false }), { write: cd })).cqe.ok, true);
    await h.submit(sqePropertyGet(0x1c, false));
    await h.submit(sqePropertyGet(0x08, false));
    assert.equal(t.stats().commands - before0, 3);
  });
});
