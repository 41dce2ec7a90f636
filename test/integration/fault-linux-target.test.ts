/**
 * Fault tests against the Linux kernel target (nvmet in the QEMU guest), issue 4 item 5, with a
 * write-verify workload running through NBD (NbdTestClient → ControllerSession → guest nvmet)
 * during each fault; every acknowledged write is read back at the end.
 *
 * What each scenario proves (one line each is printed: acknowledged, lost, recovery time):
 * - a (target port removed and re-added after 3 s): nvmet drops the controller and stops
 *   listening; the host holds I/O, reconnects once the port is back (new cntlid), re-drives:
 *   zero lost writes, I/O resumed.
 * - b (TCP connections cut mid-transfer by a proxy in front of the hostfwd port): zero lost
 *   writes, I/O resumed.
 * - c (stalled link: the proxy stops forwarding for 5 s): keep-alive / receive watchdog detect
 *   it within ~KATO, reconnect succeeds once traffic flows, zero lost writes.
 * - e (namespace added and removed at runtime through configfs): the AEN reaches the host, a new
 *   export serves I/O; after removal its I/O fails and the export is gone; zero lost writes on
 *   namespace 1.
 *
 * One guest for the file; under TCG the target is slow, so the workload is paced.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { ControllerSession } from '../../src/engine/session';
import type { ResilienceOptions } from '../../src/controller/resilient';
import { need } from '../helpers/prereq';
import { Guest, addNvmetNamespace, addNvmetPort, guestAvailable, removeNvmetNamespace, removeNvmetPort, setupNvmet } from '../helpers/guest';
import { FaultProxy, ProxyMode } from '../helpers/fault-proxy';
import { NbdTestClient } from '../helpers/nbd-test-client';
import { VerifyWorkload } from '../helpers/verify-workload';

const NQN = 'nqn.2014-08.org.nvmf-nbd:fault-linux-target';
const HOSTNQN = 'nqn.2014-08.org.nvmexpress:uuid:8e2b4c6d-0a1f-4e3b-9c7d-5f6a8b9c0d12';
const HOSTID = '8e2b4c6d-0a1f-4e3b-9c7d-5f6a8b9c0d12';
const BLOCK = 4096;
const BLOCKS = 128;

const avail = guestAvailable();
let g: Guest | undefined;
let guestPort = 0;

before(async () => {
  if (!avail.ok) return;
  g = await Guest.start({ hostfwd: [{ hostPort: 0, guestPort: 4420 }] });
  guestPort = g.hostPorts[0] as number;
  await setupNvmet(g, { subsystems: [{ nqn: NQN, namespaces: [{ nsid: 1, sizeMiB: 32 }] }] });
}, { timeout: 300_000 });

after(async () => {
  await g?.stop();
});

const prereq = (t: Parameters<typeof need>[0]): boolean => need(t, avail.ok, avail.reason);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

let sessions = 0;
async function openSession(port: number, r: ResilienceOptions = {}): Promise<{ session: ControllerSession; client: NbdTestClient }> {
  const session = await ControllerSession.open({
    name: `fl${sessions++}`,
    controller: {
      traddr: '127.0.0.1', trsvcid: port, subnqn: NQN, hostnqn: HOSTNQN, hostid: HOSTID,
      nrIoQueues: 2, queueSize: 32, kato: 2000, connectTimeoutMs: 5000, ioTimeoutMs: 15_000,
      reconnectDelayMs: 1000, ctrlLossTmoMs: 60_000, ...r,
    },
    nbd: { tcp: { host: '127.0.0.1', port: 0 } },
  });
  const e = session.exports[0];
  assert.ok(e !== undefined && 'tcp' in e.endpoint);
  const client = await NbdTestClient.connect({ port: e.endpoint.tcp.port }, e.name);
  await client.write(0, Buffer.alloc(BLOCK * BLOCKS));
  return { session, client };
}

function waitState(s: ControllerSession, state: string, ms: number): Promise<number> {
  return new Promise((resolve, reject) => {
    if (s.state === state) { resolve(Date.now()); return; }
    const t = setTimeout(() => { s.off('state', on); reject(new Error(`state ${state} not reached within ${ms} ms (now ${s.state})`)); }, ms);
    const on = (v: string): void => {
      if (v !== state) return;
      clearTimeout(t);
      s.off('state', on);
      resolve(Date.now());
    };
    s.on('state', on);
  });
}

async function waitAcks(w: VerifyWorkload, above: number, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (w.result.acknowledged <= above) {
    if (Date.now() > end) throw new Error(`no write acknowledged within ${ms} ms after recovery`);
    await sleep(50);
  }
}

async function recoverScenario(label: string, port: number, fault: () => Promise<void>): Promise<void> {
  const { session, client } = await openSession(port);
  const w = new VerifyWorkload(client, { blockSize: BLOCK, blocks: BLOCKS, workers: 4, fuaEvery: 8 });
  try {
    const cntlid = session.controller.cntlid;
    w.start(5);
    await sleep(1000);
    assert.ok(w.result.acknowledged > 0, 'workload running before the fault');
    const t0 = Date.now();
    const connecting = waitState(session, 'connecting', 20_000);
    await fault();
    const tDetect = await connecting;
    const tLive = await waitState(session, 'live', 40_000);
    const atLive = w.result.acknowledged;
    await waitAcks(w, atLive, 20_000);
    await sleep(500);
    await w.stop();
    const r = await w.verify();
    console.log(`scenario ${label}: acknowledged ${r.acknowledged}, lost ${r.lost}, recovery ${tLive - t0} ms (detected after ${tDetect - t0} ms, cntlid ${cntlid} → ${session.controller.cntlid}, last error ${session.lastError?.code ?? '-'})`);
    assert.equal(r.lost, 0, 'no acknowledged write lost');
    assert.equal(r.failed, 0, 'held writes completed after the reconnect');
    assert.ok(w.result.acknowledged > atLive, 'I/O resumed');
    assert.equal(session.reconnects, 1);
  } finally {
    await w.stop();
    client.destroy();
    await session.close();
  }
}

test('scenario a: nvmet port removed and re-added after 3 s', { timeout: 150_000 }, async (t) => {
  if (!prereq(t)) return;
  const guest = g as Guest;
  await recoverScenario('a', guestPort, async () => {
    await removeNvmetPort(guest);
    setTimeout(() => { void addNvmetPort(guest); }, 3000).unref();
  });
});

test('scenario b: TCP connections to nvmet cut mid-transfer by a proxy', { timeout: 150_000 }, async (t) => {
  if (!prereq(t)) return;
  const proxy = await FaultProxy.start({ port: guestPort });
  try {
    await recoverScenario('b', proxy.port, async () => { proxy.cutAll(); });
  } finally {
    await proxy.close();
  }
});

test('scenario c: stalled link to nvmet (proxy stops forwarding) detected by keep-alive', { timeout: 150_000 }, async (t) => {
  if (!prereq(t)) return;
  const proxy = await FaultProxy.start({ port: guestPort });
  try {
    await recoverScenario('c', proxy.port, async () => {
      proxy.setMode(ProxyMode.STALL);
      setTimeout(() => { proxy.setMode(ProxyMode.FORWARD); }, 5000).unref();
    });
  } finally {
    await proxy.close();
  }
});

test('scenario e: nvmet namespace added and removed at runtime (AEN)', { timeout: 150_000 }, async (t) => {
  if (!prereq(t)) return;
  const guest = g as Guest;
  const { session, client } = await openSession(guestPort);
  const w = new VerifyWorkload(client, { blockSize: BLOCK, blocks: BLOCKS, workers: 4 });
  const name2 = `${session.name}n2`;
  try {
    w.start(5);
    const t0 = Date.now();
    const added = new Promise<void>((resolve) => session.once('namespaces', () => resolve()));
    await addNvmetNamespace(guest, { nqn: NQN, nsid: 2, sizeMiB: 8 });
    await added;
    const tAdded = Date.now() - t0;
    const e2 = session.exports.find((x) => x.name === name2);
    assert.ok(e2 !== undefined && 'tcp' in e2.endpoint, 'new namespace got an export');
    const c2 = await NbdTestClient.connect({ port: e2.endpoint.tcp.port }, name2);
    const data = Buffer.alloc(8192, 0xa5);
    await c2.write(8192, data);
    assert.ok((await c2.read(8192, 8192)).equals(data));
    const removed = new Promise<void>((resolve) => session.once('namespaces', () => resolve()));
    const t1 = Date.now();
    await removeNvmetNamespace(guest, { nqn: NQN, nsid: 2 });
    await removed;
    const tRemoved = Date.now() - t1;
    const after = await c2.request(0, 0, 4096).then((r) => r.error, () => 'closed');
    assert.ok(after === 5 || after === 108 || after === 'closed', `I/O after removal: ${String(after)}`);
    assert.equal(session.exports.some((x) => x.name === name2), false, 'export withdrawn');
    c2.destroy();
    await sleep(500);
    await w.stop();
    const r = await w.verify();
    console.log(`scenario e: acknowledged ${r.acknowledged}, lost ${r.lost}, recovery - (export added ${tAdded} ms after the configfs add, withdrawn ${tRemoved} ms after the remove)`);
    assert.equal(r.lost, 0);
    assert.equal(r.failed, 0);
  } finally {
    await w.stop();
    client.destroy();
    await session.close();
  }
});
