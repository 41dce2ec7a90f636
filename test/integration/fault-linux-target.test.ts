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
 * - d (ctrl_loss_tmo exceeded: the port is removed and not re-added in time): the controller is
 *   dead within ctrl_loss_tmo + slack, held writes fail with EIO (errno 5), nothing hangs; after
 *   the port is re-added a fresh session reads every acknowledged write back. Runs last and
 *   leaves the port in place.
 *
 * One guest for the file; under TCG the target is slow, so the workload is paced.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import type { ResilienceOptions } from '../../src/controller/resilient';
import { need } from '../helpers/prereq';
import { Guest, addNvmetNamespace, addNvmetPort, guestAvailable, removeNvmetNamespace, removeNvmetPort, setupNvmet } from '../helpers/guest';
import { FaultProxy, ProxyMode } from '../helpers/fault-proxy';
import { ctrlLossScenario, namespaceScenario, openScenarioSession, recoverScenario } from '../helpers/fault-scenario';
import type { ScenarioSession } from '../helpers/fault-scenario';

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

let sessions = 0;
function openSession(port: number, r: ResilienceOptions = {}): Promise<ScenarioSession> {
  return openScenarioSession(`fl${sessions++}`, {
    traddr: '127.0.0.1', trsvcid: port, subnqn: NQN, hostnqn: HOSTNQN, hostid: HOSTID,
    nrIoQueues: 2, queueSize: 32, kato: 2000, connectTimeoutMs: 5000, ioTimeoutMs: 15_000,
    reconnectDelayMs: 1000, ctrlLossTmoMs: 60_000, ...r,
  }, BLOCK * BLOCKS);
}

function recover(label: string, port: number, fault: () => Promise<void>): Promise<void> {
  return recoverScenario({
    label, fault,
    open: () => openSession(port),
    blockSize: BLOCK, blocks: BLOCKS, rate: 5, warmupMs: 1000, settleMs: 500,
    detectMs: 20_000, liveMs: 40_000, resumeMs: 20_000, pollMs: 50,
    detail: (session, cntlid) => `cntlid ${cntlid} → ${session.controller.cntlid}`,
    failedMessage: 'held writes completed after the reconnect',
    resumedMessage: 'I/O resumed',
    checkReconnects: (session) => { assert.equal(session.reconnects, 1); },
  });
}

test('scenario a: nvmet port removed and re-added after 3 s', { timeout: 150_000 }, async (t) => {
  if (!prereq(t)) return;
  const guest = g as Guest;
  await recover('a', guestPort, async () => {
    await removeNvmetPort(guest);
    setTimeout(() => { void addNvmetPort(guest); }, 3000).unref();
  });
});

test('scenario b: TCP connections to nvmet cut mid-transfer by a proxy', { timeout: 150_000 }, async (t) => {
  if (!prereq(t)) return;
  const proxy = await FaultProxy.start({ port: guestPort });
  try {
    await recover('b', proxy.port, async () => { proxy.cutAll(); });
  } finally {
    await proxy.close();
  }
});

test('scenario c: stalled link to nvmet (proxy stops forwarding) detected by keep-alive', { timeout: 150_000 }, async (t) => {
  if (!prereq(t)) return;
  const proxy = await FaultProxy.start({ port: guestPort });
  try {
    await recover('c', proxy.port, async () => {
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
  await namespaceScenario({
    open: () => openSession(guestPort),
    blockSize: BLOCK, blocks: BLOCKS, rate: 5, settleMs: 500, fill: 0xa5, offset: 8192,
    add: () => addNvmetNamespace(guest, { nqn: NQN, nsid: 2, sizeMiB: 8 }),
    remove: () => removeNvmetNamespace(guest, { nqn: NQN, nsid: 2 }),
    detail: (tAdded, tRemoved) => `export added ${tAdded} ms after the configfs add, withdrawn ${tRemoved} ms after the remove`,
  });
});

test('scenario d: nvmet port removed for good → ctrl_loss_tmo exceeded, held writes fail with EIO, acknowledged writes intact', { timeout: 150_000 }, async (t) => {
  if (!prereq(t)) return;
  const guest = g as Guest;
  const lossTmoMs = 4000;
  try {
    await ctrlLossScenario({
      lossTmoMs, blockSize: BLOCK, blocks: BLOCKS, rate: 5, warmupMs: 1000,
      open: () => openSession(guestPort, { ctrlLossTmoMs: lossTmoMs }),
      fault: () => removeNvmetPort(guest),
      // The port back, then a new session (new controller) reads the acknowledged data.
      openReader: async () => {
        await addNvmetPort(guest);
        return openScenarioSession(`fl${sessions++}-reader`, { traddr: '127.0.0.1', trsvcid: guestPort, subnqn: NQN, hostnqn: HOSTNQN, hostid: HOSTID, nrIoQueues: 1, connectTimeoutMs: 5000 }, 0);
      },
    });
  } finally {
    await addNvmetPort(guest);
  }
});
