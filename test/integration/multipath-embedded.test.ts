/**
 * The multipath fault scenarios of issue 12 item 6 against the embedded target: one subsystem on
 * two ports (two `--listen`s), each path through a fault proxy, one namespace exported once over
 * both paths (`nvmf-nbd connect` twice through the daemon). A write-verify workload with verified
 * readers runs through the export (see test/helpers/multipath-scenario.ts) while:
 * - a: port 1's ANA group goes optimized → inaccessible → optimized (setAnaState): I/O moves to
 *   port 2 without an error reaching the NBD client (port 1 executes nothing meanwhile) and
 *   comes back to port 1 once it is optimized again;
 * - b: port 1 is removed and re-added (removePort / addPort): its writes are held, reads and new
 *   I/O go on over port 2, then port 1 carries I/O again;
 * - c: the preferred path's TCP connections are cut mid-transfer (proxy RST): the same, with the
 *   path reconnecting through the proxy at once;
 * in b and c the fault lands with port 1's last replies muted in its proxy (the commands executed,
 * the answers were in the network), so writes are surely in flight when the path fails;
 * - d: every path fails (both proxies reset and refuse), then port 2 returns: held writes complete
 *   after the hold, reads resume as soon as the path is back.
 * Each prints acknowledged / lost (0) writes, the longest I/O pause and the write hold with the
 * reads completed during it. One target and one daemon for the file.
 */
import { test, before, after } from 'node:test';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import assert from 'node:assert/strict';
import { NvmeTarget } from '../../src/embedded-target/target';
import { until } from '../helpers/clock';
import { FaultProxy, ProxyMode } from '../helpers/fault-proxy';
import { MultipathDaemon, failEveryPath, multipathReady, muteWithWritesInFlight, pathInUse, runMultipathScenario } from '../helpers/multipath-scenario';
import type { MultipathGeometry, MultipathHost, MultipathScenario } from '../helpers/multipath-scenario';

const NQN = 'nqn.2014-08.org.nvmf-nbd:multipath-embedded';
const HOSTNQN = 'nqn.2014-08.org.nvmexpress:uuid:0c4e2a8b-7d31-4f5e-9a6b-2e8d1c7f3a90';
const HOSTID = '0c4e2a8b-7d31-4f5e-9a6b-2e8d1c7f3a90';
const SIZE = 16 << 20;
const GEOMETRY: MultipathGeometry = { blockSize: 4096, blocks: 256, writers: 4, readers: 2, paceMs: 2 };
/** Keep-alive (s) and the target's grace past it (ms): the write hold is KATO + CQT (grace + 1 s). */
const KATO_S = 2;
const GRACE_MS = 1000;

let dir = '';
let target: NvmeTarget | undefined;
const ports: number[] = [];
const proxies: FaultProxy[] = [];
let daemon: MultipathDaemon | undefined;
let host: MultipathHost | undefined;
const ready = multipathReady();

before(async () => {
  dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'multipath-embedded-'));
  target = new NvmeTarget({
    ports: [{ id: 1, host: '127.0.0.1', port: 0 }, { id: 2, host: '127.0.0.1', port: 0 }],
    subsystems: [{ nqn: NQN, namespaces: [{ nsid: 1, sizeBytes: SIZE, backing: { memory: true } }] }],
    keepAliveGraceMs: GRACE_MS,
    log: () => undefined,
  });
  await target.listen();
  for (const p of target.ports()) {
    ports.push(p.port);
    proxies.push(await FaultProxy.start({ port: p.port }));
  }
  if (!ready.ok) return;
  daemon = await MultipathDaemon.start(dir);
  host = await daemon.connectPaths({
    nqn: NQN, hostnqn: HOSTNQN, hostid: HOSTID, ports: proxies.map((p) => p.port),
    args: ['-k', String(KATO_S), '-c', '1', '-l', '600', '-i', '2', '-Q', '32'],
  });
}, { timeout: 120_000 });

after(async () => {
  await host?.close();
  await daemon?.stop();
  for (const p of proxies) await p.close();
  await target?.close();
  await fsp.rm(dir, { recursive: true, force: true });
}, { timeout: 60_000 });

/** Reads and writes port `id` executed (which path carried the I/O). */
function portIo(id: number): number {
  const p = (target as NvmeTarget).ports().find((x) => x.id === id);
  return p === undefined ? 0 : p.io.readCommands + p.io.writeCommands;
}

function scenario(label: string, o: Omit<MultipathScenario, 'label' | 'target' | 'host' | 'geometry' | 'warmup' | 'holdMs' | 'stepMs' | 'step'>): MultipathScenario {
  return { label, target: 'embedded', host: host as MultipathHost, geometry: GEOMETRY, warmup: 50, holdMs: 60_000, stepMs: 60_000, step: 20, ...o };
}

test('multipath a: port 1 ANA optimized → inaccessible → optimized; I/O moves to port 2 and back', { timeout: 180_000 }, async (t) => {
  if (!ready.check(t)) return;
  const tg = target as NvmeTarget;
  let atFault = 0;
  await runMultipathScenario(scenario('a', {
    holds: false,
    beforeFault: () => pathInUse(() => portIo(1), 20, 60_000, 'port 1 (the first optimized path) carries the I/O'),
    fault: async () => {
      assert.equal(tg.setAnaState(1, 1, 'inaccessible'), true);
      atFault = portIo(1);
    },
    during: async () => {
      assert.equal(portIo(1), atFault, 'an inaccessible port executes no I/O');
    },
    restore: async () => { tg.setAnaState(1, 1, 'optimized'); },
    restored: () => pathInUse(() => portIo(1), 20, 60_000, 'I/O back on port 1 once optimized'),
  }));
});

test('multipath b: port 1 removed and re-added; writes held, reads go on over port 2', { timeout: 180_000 }, async (t) => {
  if (!ready.check(t)) return;
  const tg = target as NvmeTarget;
  const p1 = proxies[0] as FaultProxy;
  await runMultipathScenario(scenario('b', {
    holds: true,
    beforeFault: async (w) => {
      await pathInUse(() => portIo(1), 20, 60_000, 'port 1 carries the I/O');
      await muteWithWritesInFlight(p1, w, 60_000);
    },
    // The port goes with port 1's last replies still in the network (muted): those writes are held.
    // The proxy forwards again only once it has seen the target close each connection (so the
    // muted replies die with them) — new connections then find no port.
    fault: async () => {
      await tg.removePort(1);
      await until(() => p1.connections === 0, 'the proxy saw port 1\'s connections close');
      p1.setMode(ProxyMode.FORWARD);
    },
    during: async () => { await pathInUse(() => portIo(2), 20, 60_000, 'port 2 carries the I/O'); },
    restore: async () => { await tg.addPort({ id: 1, host: '127.0.0.1', port: ports[0] as number }); },
    restored: () => pathInUse(() => portIo(1), 20, 60_000, 'I/O back on port 1 once re-added'),
  }));
});

test('multipath c: the preferred path\'s TCP connections cut mid-transfer', { timeout: 180_000 }, async (t) => {
  if (!ready.check(t)) return;
  const p1 = proxies[0] as FaultProxy;
  await runMultipathScenario(scenario('c', {
    holds: true,
    beforeFault: async (w) => {
      await pathInUse(() => portIo(1), 20, 60_000, 'port 1 carries the I/O');
      await muteWithWritesInFlight(p1, w, 60_000);
    },
    // Cut with port 1's last replies in the network (muted): those writes are held.
    fault: async () => { p1.cutAll(); p1.setMode(ProxyMode.FORWARD); },
    during: async () => { await pathInUse(() => portIo(2), 20, 60_000, 'port 2 carries the I/O'); },
    // The proxy still forwards: the path reconnects by itself.
    restored: () => pathInUse(() => portIo(1), 20, 60_000, 'I/O back on port 1 after its reconnect'),
  }));
});

test('multipath d: every path fails, then port 2 returns', { timeout: 180_000 }, async (t) => {
  if (!ready.check(t)) return;
  const [p1, p2] = proxies as [FaultProxy, FaultProxy];
  try {
    await runMultipathScenario(scenario('d', {
      holds: true,
      // Port 2 forwards again once the host has tried it. Observed: the returning path becomes live
      // only after its own single-path quiesce, so no read completes before the held writes do.
      readsDuringHold: false,
      // Port 2 forwards again once the host has tried it: well inside the hold.
      fault: async () => { failEveryPath([p1, p2], p2, 60_000); },
      restore: async () => { p1.setMode(ProxyMode.FORWARD); },
      restored: () => pathInUse(() => portIo(1), 20, 60_000, 'I/O back on port 1 once it returns'),
    }));
  } finally {
    p1.setMode(ProxyMode.FORWARD);
    p2.setMode(ProxyMode.FORWARD);
  }
});

