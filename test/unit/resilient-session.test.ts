/**
 * ControllerSession on the ResilientController (src/engine/session.ts), against the embedded
 * target behind a FaultProxy: state fields and events across a reconnect, namespace changes found
 * after a reconnect — a capacity change is recorded (the export keeps its size for connected
 * clients), a block size change rebuilds the export (the old one fails with EIO / goes away),
 * a removed namespace's export fails I/O with EIO and is withdrawn.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { NvmeTarget } from '../../src/embedded-target/target';
import { ControllerSession } from '../../src/engine/session';
import type { SessionExport } from '../../src/engine/session';
import type { NamespaceChanges } from '../../src/controller/controller';
import { FaultProxy, ProxyMode } from '../helpers/fault-proxy';
import { NbdTestClient } from '../helpers/nbd-test-client';
import { until } from '../helpers/clock';

const NQN = 'nqn.2014-08.org.nvmf-nbd:resilient-session';
const HOSTNQN = 'nqn.2014-08.org.nvmexpress:uuid:2b7e1c55-6a0d-4f0e-8a61-00000000b001';
const HOSTID = '2b7e1c55-6a0d-4f0e-8a61-00000000b001';

let target: NvmeTarget;
let proxy: FaultProxy;

before(async () => {
  target = new NvmeTarget({
    listen: { host: '127.0.0.1', port: 0 },
    subsystems: [{
      nqn: NQN,
      namespaces: [
        { nsid: 1, sizeBytes: 4 << 20, backing: { memory: true } },
        { nsid: 2, sizeBytes: 1 << 20, backing: { memory: true } },
        { nsid: 3, sizeBytes: 1 << 20, backing: { memory: true } },
        { nsid: 4, sizeBytes: 1 << 20, backing: { memory: true } },
      ],
    }],
    log: () => undefined,
  });
  const { port } = await target.listen();
  proxy = await FaultProxy.start({ port });
});

after(async () => {
  await proxy.close();
  await target.close();
});

const exp = (s: ControllerSession, nsid: number): SessionExport | undefined => s.exports.find((e) => e.nsid === nsid);
const port = (e: SessionExport | undefined): number => {
  assert.ok(e !== undefined && 'tcp' in e.endpoint);
  return e.endpoint.tcp.port;
};

test('across a reconnect: state events and fields; resize recorded, reformat rebuilds the export, removal withdraws it', { timeout: 20_000 }, async () => {
  const logs: string[] = [];
  const s = await ControllerSession.open({
    name: 'rs0',
    controller: {
      traddr: '127.0.0.1', trsvcid: proxy.port, subnqn: NQN, hostnqn: HOSTNQN, hostid: HOSTID, nrIoQueues: 1, kato: 1000,
      reconnectDelayMs: 100, quiesceMs: 50, ctrlLossTmoMs: 10_000,
    },
    nbd: { tcp: { host: '127.0.0.1', port: 0 } },
    log: (m) => logs.push(m),
  });
  const states: string[] = [];
  s.on('state', (st: string) => states.push(st));
  const clients: NbdTestClient[] = [];
  try {
    assert.equal(s.state, 'live');
    assert.equal(s.reconnects, 0);
    const c3 = await NbdTestClient.connect({ port: port(exp(s, 3)) }, 'rs0n3');
    const c4 = await NbdTestClient.connect({ port: port(exp(s, 4)) }, 'rs0n4');
    clients.push(c3, c4);
    await c3.write(0, Buffer.alloc(4096, 3));

    const changed = new Promise<NamespaceChanges>((resolve) => s.once('namespaces', resolve));
    proxy.setMode(ProxyMode.REFUSE);
    proxy.cutAll();
    // While disconnected: ns 2 grows, ns 3 is reformatted to 4096-byte blocks, ns 4 goes away.
    await target.removeNamespace(NQN, 2);
    await target.addNamespace(NQN, { nsid: 2, sizeBytes: 2 << 20, backing: { memory: true } });
    await target.removeNamespace(NQN, 3);
    await target.addNamespace(NQN, { nsid: 3, sizeBytes: 1 << 20, lbaSize: 4096, backing: { memory: true } });
    await target.removeNamespace(NQN, 4);
    const pending4 = c4.request(0, 0, 4096).then((r) => r.error, () => 'closed');
    proxy.setMode(ProxyMode.FORWARD);
    assert.deepEqual(await changed, { added: [], removed: [4], resized: [2, 3] });

    assert.deepEqual(states, ['connecting', 'live']);
    assert.equal(s.reconnects, 1);
    assert.ok(s.lastError !== undefined);
    const d = s.describe();
    assert.equal(d.state, 'live');
    assert.equal(d.reconnects, 1);
    assert.equal(typeof (d.lastError as { code: string }).code, 'string');

    // Resize: the export keeps its size for connected clients, the new size is recorded.
    const e2 = exp(s, 2);
    assert.equal(e2?.size, 1 << 20);
    assert.equal(e2?.capacityChanged, 2 << 20);
    // Reformat: a new export with the new block size; the old connection got EIO or was closed.
    const e3 = exp(s, 3);
    assert.equal(e3?.blockSize, 4096);
    const old3 = await c3.request(0, 0, 4096).then((r) => r.error, () => 'closed');
    assert.ok(old3 === 5 || old3 === 108 || old3 === 'closed', `old ns3 export: ${String(old3)}`);
    const n3 = await NbdTestClient.connect({ port: port(e3) }, 'rs0n3');
    clients.push(n3);
    await n3.write(8192, Buffer.alloc(4096, 0x33));
    assert.ok((await n3.read(8192, 4096)).equals(Buffer.alloc(4096, 0x33)));
    // Removal: held I/O failed with EIO (or the connection was closed), export withdrawn.
    const r4 = await pending4;
    assert.ok(r4 === 5 || r4 === 'closed', `removed ns4: ${String(r4)}`);
    assert.equal(exp(s, 4), undefined);
    assert.ok(logs.some((l) => /capacity changed/.test(l)));
  } finally {
    for (const c of clients) c.destroy();
    await s.close();
  }
});

test('closing a session while its controller reconnects fails held requests at once instead of waiting for ctrl_loss_tmo', { timeout: 20_000 }, async () => {
  const s = await ControllerSession.open({
    name: 'rs1',
    controller: {
      traddr: '127.0.0.1', trsvcid: proxy.port, subnqn: NQN, hostnqn: HOSTNQN, hostid: HOSTID, nrIoQueues: 1, kato: 1000,
      reconnectDelayMs: 100, ctrlLossTmoMs: 600_000,
    },
    nbd: { tcp: { host: '127.0.0.1', port: 0 } },
  });
  const c = await NbdTestClient.connect({ port: port(exp(s, 1)) }, 'rs1n1');
  try {
    proxy.setMode(ProxyMode.REFUSE);
    proxy.cutAll();
    const held = c.request(1, 0, 4096, { data: Buffer.alloc(4096, 1) }).then((r) => r.error, () => 'closed');
    await until(() => s.state === 'connecting', 'the session reconnecting');
    // ctrl_loss_tmo (600 s) is far beyond the test's timeout: a close() that waited for it would time out.
    await s.close();
    const r = await held;
    assert.ok(r === 5 || r === 108 || r === 'closed', String(r));
    assert.equal(s.state, 'dead');
  } finally {
    proxy.setMode(ProxyMode.FORWARD);
    c.destroy();
    await s.close();
  }
});
