/**
 * A retired namespace object (src/controller/namespace.ts, owned by ResilientController): one test
 * per case — removed while idle, removed with I/O in flight, removed with I/O held during an
 * outage, reformatted (old object EIO, a new object serves the new block size), and a namespace
 * that comes back after removal. Each asserts the errno an NBD client gets (through the real NBD
 * server) and the stable code the object's error carries.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { NvmeTarget } from '../../src/embedded-target/target';
import { CtrlState, ResilientController } from '../../src/controller/resilient';
import type { ResilienceOptions } from '../../src/controller/resilient';
import type { ControllerOptions, NamespaceChanges } from '../../src/controller/controller';
import { Namespace } from '../../src/controller/namespace';
import { promisePath } from '../helpers/namespace-of';
import { NbdErrno } from '../../src/block/errno';
import { NbdServer } from '../../src/nbd/server';
import type { BlockDevice } from '../../src/block/types';
import { ErrorCode, NvmfNbdError } from '../../src/errors';
import { statusError } from '../../src/wire/status';
import { FaultProxy, ProxyMode } from '../helpers/fault-proxy';
import { Cmd, NbdTestClient } from '../helpers/nbd-test-client';
import { until } from '../helpers/clock';

const NQN = 'nqn.2014-08.org.nvmf-nbd:namespace-retire';
const HOSTNQN = 'nqn.2014-08.org.nvmexpress:uuid:5a1d7c3e-2b4f-4e6a-8c9d-00000000f001';
const HOSTID = '5a1d7c3e-2b4f-4e6a-8c9d-00000000f001';
const T = { timeout: 20_000 };

let target: NvmeTarget;
let port = 0;

before(async () => {
  target = new NvmeTarget({
    listen: { host: '127.0.0.1', port: 0 },
    subsystems: [{ nqn: NQN, namespaces: [{ nsid: 1, sizeBytes: 1 << 20, backing: { memory: true } }] }],
    log: () => undefined,
  });
  port = (await target.listen()).port;
});
after(async () => {
  await target.close();
});

function opts(p: number): ControllerOptions & ResilienceOptions {
  return {
    traddr: '127.0.0.1', trsvcid: p, subnqn: NQN, hostnqn: HOSTNQN, hostid: HOSTID, nrIoQueues: 1, queueSize: 32,
    kato: 1000, connectTimeoutMs: 2000, reconnectDelayMs: 100, ctrlLossTmoMs: 10_000, quiesceMs: 50,
  };
}

function waitState(c: ResilientController, s: string): Promise<void> {
  if (c.state === s) return Promise.resolve();
  return new Promise((resolve) => {
    const on = (v: string): void => {
      if (v !== s) return;
      c.off('state', on);
      resolve();
    };
    c.on('state', on);
  });
}

/** The next `namespaces` event whose change touches `nsid`. */
function nextChange(c: ResilientController, nsid: number): Promise<NamespaceChanges> {
  return new Promise((resolve) => {
    const on = (ch: NamespaceChanges): void => {
      if (![...ch.added, ...ch.removed, ...ch.resized].includes(nsid)) return;
      c.off('namespaces', on);
      resolve(ch);
    };
    c.on('namespaces', on);
  });
}

async function failure(p: Promise<unknown>): Promise<{ errno: number | undefined; code: string | undefined }> {
  try {
    await p;
  } catch (err) {
    const e = err as NvmfNbdError;
    return { errno: e.errno, code: e.code };
  }
  assert.fail('expected a failure');
}

/** An NBD server on loopback serving `dev` as export `e`, and a client on it. */
async function serve(dev: BlockDevice): Promise<{ server: NbdServer; client: NbdTestClient }> {
  const server = new NbdServer({ log: () => undefined });
  server.addExport('e', dev);
  const ep = await server.listen({ tcp: { host: '127.0.0.1', port: 0 } });
  const client = await NbdTestClient.connect({ port: (ep as { tcp: { port: number } }).tcp.port }, 'e');
  return { server, client };
}

const EIO_REMOVED = { errno: NbdErrno.EIO, code: ErrorCode.NAMESPACE_NOT_FOUND };
const EIO_REFORMATTED = { errno: NbdErrno.EIO, code: ErrorCode.NAMESPACE_UNSUPPORTED };

test('removed while idle: the object is retired, new I/O fails EIO (NAMESPACE_NOT_FOUND), through NBD too', T, async () => {
  await target.addNamespace(NQN, { nsid: 2, sizeBytes: 1 << 20, backing: { memory: true } });
  const c = await ResilientController.connect(opts(port));
  const ns = c.namespace(2) as Namespace;
  const { server, client } = await serve(ns);
  try {
    assert.ok((await client.read(0, 4096)).equals(Buffer.alloc(4096)));
    const removed = nextChange(c, 2);
    await target.removeNamespace(NQN, 2);
    assert.deepEqual((await removed).removed, [2]);
    assert.equal(ns.retired, true);
    assert.equal(c.namespace(2), undefined);
    assert.deepEqual(await failure(ns.read(0, 4096)), EIO_REMOVED);
    assert.deepEqual(await failure(ns.write(0, Buffer.alloc(4096), false)), EIO_REMOVED);
    assert.deepEqual(await failure(ns.flush()), EIO_REMOVED);
    assert.equal((await client.request(Cmd.READ, 0, 4096)).error, NbdErrno.EIO);
    assert.equal((await client.request(Cmd.WRITE, 0, 4096, { data: Buffer.alloc(4096) })).error, NbdErrno.EIO);
  } finally {
    client.destroy();
    await server.close();
    await c.close();
  }
});

test('removed with I/O in flight: a request that fails after retirement gets EIO (NAMESPACE_NOT_FOUND), not the status errno', T, async () => {
  // A path that holds every command until the test answers it: the request is truly in flight
  // when the namespace is retired, and then fails with what a target answers for a namespace
  // that is gone (Invalid Namespace or Format: EINVAL by the table).
  const waiting: Array<(err?: Error) => void> = [];
  const hold = <T>(v: T): Promise<T> => new Promise<T>((resolve, reject) => waiting.push((err) => (err === undefined ? resolve(v) : reject(err))));
  const path = promisePath({
    oncs: 0x0c, volatileWriteCache: true,
    read: (_n, _s, nlb, into) => hold(into ?? Buffer.alloc(nlb * 512)),
    write: () => hold(undefined), flush: () => hold(undefined), deallocate: () => hold(undefined), writeZeroes: () => hold(undefined),
  });
  const ns = new Namespace(path, { nsid: 1, lbaSize: 512, nsze: 2048n, usable: true });
  const { server, client } = await serve(ns);
  try {
    const viaNbd = client.request(Cmd.READ, 0, 4096);
    const direct = failure(ns.write(4096, Buffer.alloc(512), false));
    while (waiting.length < 2) await new Promise((r) => setImmediate(r));
    assert.equal(ns.inFlight, 2);
    ns.retire('removed');
    const invalidNs = statusError({ sct: 0, sc: 0x0b, dnr: true, more: false, crd: 0 }, 'Read');
    for (const answer of waiting.splice(0)) answer(invalidNs);
    assert.equal((await viaNbd).error, NbdErrno.EIO);
    assert.deepEqual(await direct, EIO_REMOVED);
    assert.equal(ns.inFlight, 0);
    // Later requests never reach the path.
    assert.deepEqual(await failure(ns.read(0, 512)), EIO_REMOVED);
    assert.equal(waiting.length, 0);
  } finally {
    client.destroy();
    await server.close();
  }
});

test('removed with I/O held during an outage: the held requests fail EIO (NAMESPACE_NOT_FOUND) at reconnect, never run', T, async () => {
  await target.addNamespace(NQN, { nsid: 3, sizeBytes: 1 << 20, backing: { memory: true } });
  const proxy = await FaultProxy.start({ port });
  const c = await ResilientController.connect(opts(proxy.port));
  const ns = c.namespace(3) as Namespace;
  const { server, client } = await serve(ns);
  try {
    proxy.setMode(ProxyMode.REFUSE);
    proxy.cutAll();
    await waitState(c, CtrlState.CONNECTING);
    const heldNbd = client.request(Cmd.WRITE, 0, 4096, { data: Buffer.alloc(4096, 0x33) });
    const heldDirect = failure(ns.read(0, 4096));
    await until(() => c.heldOps.count >= 2, 'both requests held');
    await target.removeNamespace(NQN, 3);
    const removed = nextChange(c, 3);
    proxy.setMode(ProxyMode.FORWARD);
    assert.deepEqual((await removed).removed, [3]);
    assert.equal((await heldNbd).error, NbdErrno.EIO);
    assert.deepEqual(await heldDirect, EIO_REMOVED);
    assert.equal(ns.retired, true);
  } finally {
    client.destroy();
    await server.close();
    await c.close();
    await proxy.close();
  }
});

test('reformatted: the old object fails EIO (NAMESPACE_UNSUPPORTED), a NEW object serves the new block size', T, async () => {
  await target.addNamespace(NQN, { nsid: 4, sizeBytes: 1 << 20, backing: { memory: true } });
  const proxy = await FaultProxy.start({ port });
  const c = await ResilientController.connect(opts(proxy.port));
  const old = c.namespace(4) as Namespace;
  assert.equal(old.blockSize, 512);
  const first = await serve(old);
  let second: { server: NbdServer; client: NbdTestClient } | undefined;
  try {
    await first.client.write(0, Buffer.alloc(4096, 0x44));
    const changed = nextChange(c, 4);
    proxy.setMode(ProxyMode.REFUSE);
    proxy.cutAll();
    await waitState(c, CtrlState.CONNECTING);
    const held = first.client.request(Cmd.READ, 0, 4096);
    await until(() => c.heldOps.count >= 1, 'the read held');
    await target.removeNamespace(NQN, 4);
    await target.addNamespace(NQN, { nsid: 4, sizeBytes: 1 << 20, lbaSize: 4096, backing: { memory: true } });
    proxy.setMode(ProxyMode.FORWARD);
    assert.deepEqual(await changed, { added: [], removed: [], resized: [4] });
    assert.equal((await held).error, NbdErrno.EIO);
    assert.equal((await first.client.request(Cmd.READ, 0, 4096)).error, NbdErrno.EIO);
    assert.deepEqual(await failure(old.read(0, 512)), EIO_REFORMATTED);
    assert.equal(old.retired, true);
    const fresh = c.namespace(4) as Namespace;
    assert.notEqual(fresh, old);
    assert.equal(fresh.retired, false);
    assert.equal(fresh.blockSize, 4096);
    assert.equal(fresh.size, 1 << 20);
    second = await serve(fresh);
    await second.client.write(8192, Buffer.alloc(4096, 0x45));
    assert.ok((await second.client.read(8192, 4096)).equals(Buffer.alloc(4096, 0x45)));
    assert.deepEqual(await failure(fresh.read(0, 512)), { errno: NbdErrno.EINVAL, code: ErrorCode.INVALID_ARGUMENT });
  } finally {
    first.client.destroy();
    second?.client.destroy();
    await first.server.close();
    await second?.server.close();
    await c.close();
    await proxy.close();
  }
});

test('a namespace that returns after removal gets a new object; the old one stays retired', T, async () => {
  await target.addNamespace(NQN, { nsid: 5, sizeBytes: 1 << 20, backing: { memory: true } });
  const c = await ResilientController.connect(opts(port));
  const old = c.namespace(5) as Namespace;
  let served: { server: NbdServer; client: NbdTestClient } | undefined;
  try {
    const removed = nextChange(c, 5);
    await target.removeNamespace(NQN, 5);
    assert.deepEqual((await removed).removed, [5]);
    const added = nextChange(c, 5);
    await target.addNamespace(NQN, { nsid: 5, sizeBytes: 2 << 20, backing: { memory: true } });
    assert.deepEqual((await added).added, [5]);
    const back = c.namespace(5) as Namespace;
    assert.ok(back !== undefined && back !== old);
    assert.equal(back.size, 2 << 20);
    assert.deepEqual(await failure(old.read(0, 512)), EIO_REMOVED);
    served = await serve(back);
    await served.client.write(0, Buffer.alloc(512, 0x55));
    assert.ok((await served.client.read(0, 512)).equals(Buffer.alloc(512, 0x55)));
    assert.equal(old.retired, true);
  } finally {
    served?.client.destroy();
    await served?.server.close();
    await c.close();
  }
});
