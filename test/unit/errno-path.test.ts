/**
 * One errno mapping (src/block/errno.ts): the errno an NBD client gets is decided once, where
 * the NVMe status or the controller state is known, and never overwritten on the way up.
 * One test per case, through the real layers (embedded target → ResilientController →
 * Namespace → NBD server → an NBD client) where the case can be produced for real.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { NvmeTarget } from '../../src/embedded-target/target';
import { CtrlState, ResilientController } from '../../src/controller/resilient';
import type { ResilienceOptions } from '../../src/controller/resilient';
import type { ControllerOptions, NamespaceChanges } from '../../src/controller/controller';
import { namespaceOf } from '../helpers/namespace-of';
import type { Namespace } from '../../src/controller/namespace';
import type { FakeBackend as NamespaceBackend } from '../helpers/namespace-of';
import { NbdErrno, withErrno } from '../../src/block/errno';
import { NbdServer } from '../../src/nbd/server';
import { ErrorCode, NvmfNbdError } from '../../src/errors';
import { statusError } from '../../src/wire/status';
import { FaultProxy, ProxyMode } from '../helpers/fault-proxy';
import { Cmd, NbdTestClient } from '../helpers/nbd-test-client';

const NQN = 'nqn.2014-08.org.nvmf-nbd:errno-path';
const HOSTNQN = 'nqn.2014-08.org.nvmexpress:uuid:0f6c3d1e-1a2b-4c3d-9e8f-00000000e001';
const HOSTID = '0f6c3d1e-1a2b-4c3d-9e8f-00000000e001';
const NS_SIZE = 8 << 20;
const T = { timeout: 15_000 };

let target: NvmeTarget;
let port = 0;

before(async () => {
  target = new NvmeTarget({
    listen: { host: '127.0.0.1', port: 0 },
    subsystems: [{ nqn: NQN, namespaces: [{ nsid: 1, sizeBytes: NS_SIZE, backing: { memory: true } }] }],
  });
  port = (await target.listen()).port;
});
after(async () => {
  await target.close();
});

function opts(p: number, o: Partial<ControllerOptions & ResilienceOptions> = {}): ControllerOptions & ResilienceOptions {
  return {
    traddr: '127.0.0.1', trsvcid: p, subnqn: NQN, hostnqn: HOSTNQN, hostid: HOSTID, nrIoQueues: 1, queueSize: 32,
    kato: 1000, connectTimeoutMs: 2000, reconnectDelayMs: 100, ctrlLossTmoMs: 10_000, quiesceMs: 50, ...o,
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

async function errnoOf(p: Promise<unknown>): Promise<{ errno: number | undefined; code: string | undefined }> {
  try {
    await p;
  } catch (err) {
    const e = err as NvmfNbdError;
    return { errno: e.errno, code: e.code };
  }
  assert.fail('expected a failure');
}

/** An NBD server on loopback serving `dev` as export `e`. */
async function serve(dev: Namespace): Promise<{ server: NbdServer; port: number }> {
  const server = new NbdServer({ log: () => undefined });
  server.addExport('e', dev);
  const ep = await server.listen({ tcp: { host: '127.0.0.1', port: 0 } });
  return { server, port: (ep as { tcp: { port: number } }).tcp.port };
}

test('ESHUTDOWN while the controller is being deleted (not EIO)', T, async () => {
  const c = await ResilientController.connect(opts(port));
  const dev = c.namespace(1) as Namespace;
  const closing = c.close();
  assert.equal(c.state, CtrlState.DELETING);
  assert.deepEqual(await errnoOf(dev.read(0, 4096)), { errno: NbdErrno.ESHUTDOWN, code: ErrorCode.CONTROLLER_DELETED });
  assert.deepEqual(await errnoOf(dev.write(0, Buffer.alloc(4096), false)), { errno: NbdErrno.ESHUTDOWN, code: ErrorCode.CONTROLLER_DELETED });
  await closing;
});

test('EIO after ctrl_loss_tmo, for held and for new requests, through NBD', T, async () => {
  const proxy = await FaultProxy.start({ port });
  const c = await ResilientController.connect(opts(proxy.port, { ctrlLossTmoMs: 300 }));
  const { server, port: nbdPort } = await serve(c.namespace(1) as Namespace);
  const client = await NbdTestClient.connect({ port: nbdPort }, 'e');
  try {
    proxy.setMode(ProxyMode.REFUSE);
    proxy.cutAll();
    await waitState(c, CtrlState.CONNECTING);
    const held = client.request(Cmd.WRITE, 0, 4096, { data: Buffer.alloc(4096, 1) });
    await waitState(c, CtrlState.DEAD);
    assert.equal((await held).error, NbdErrno.EIO);
    assert.equal((await client.request(Cmd.READ, 0, 4096)).error, NbdErrno.EIO);
  } finally {
    client.destroy();
    await server.close();
    await c.close();
    await proxy.close();
  }
});

test('EIO for a namespace reformatted to another block size (its object retired), not ENOTSUP', T, async () => {
  await target.addNamespace(NQN, { nsid: 6, sizeBytes: 1 << 20, backing: { memory: true } });
  const proxy = await FaultProxy.start({ port });
  const c = await ResilientController.connect(opts(proxy.port));
  try {
    const dev = c.namespace(6) as Namespace;
    const changes = new Promise<NamespaceChanges>((resolve) => c.once('namespaces', resolve));
    proxy.setMode(ProxyMode.REFUSE);
    proxy.cutAll();
    await waitState(c, CtrlState.CONNECTING);
    await target.removeNamespace(NQN, 6);
    await target.addNamespace(NQN, { nsid: 6, sizeBytes: 1 << 20, lbaSize: 4096, backing: { memory: true } });
    proxy.setMode(ProxyMode.FORWARD);
    assert.deepEqual(await changes, { added: [], removed: [], resized: [6] });
    assert.deepEqual(await errnoOf(dev.read(0, 512)), { errno: NbdErrno.EIO, code: ErrorCode.NAMESPACE_UNSUPPORTED });
  } finally {
    await c.close();
    await proxy.close();
    await target.removeNamespace(NQN, 6).catch(() => undefined);
  }
});

test('EIO for a removed namespace: an error already carrying its errno passes unchanged', () => {
  // What the session's export device answers once its namespace is gone (engine/session.ts).
  const gone = new NvmfNbdError(ErrorCode.NAMESPACE_NOT_FOUND, 'namespace 1 was removed', { errno: NbdErrno.EIO });
  assert.equal(withErrno(gone, 'read'), gone);
  // …and one the resilience layer marked ESHUTDOWN is not recomputed from its code (EIO).
  const deleting = new NvmfNbdError(ErrorCode.CONTROLLER_DELETED, 'deleting', { errno: NbdErrno.ESHUTDOWN });
  assert.equal(withErrno(deleting, 'write').errno, NbdErrno.ESHUTDOWN);
});

test('ENOSPC past the end, EINVAL for a misaligned request from a negotiating client, EPERM read-only', T, async () => {
  const c = await ResilientController.connect(opts(port));
  const rw = await serve(c.namespace(1) as Namespace);
  const ro = await serve(namespaceOf(c, 1, { readOnly: true }));
  const a = await NbdTestClient.connect({ port: rw.port }, 'e', 10_000, { requestBlockSize: true });
  const b = await NbdTestClient.connect({ port: ro.port }, 'e');
  try {
    assert.equal((await a.request(Cmd.WRITE, NS_SIZE - 512, 1024, { data: Buffer.alloc(1024) })).error, NbdErrno.ENOSPC);
    assert.equal((await a.request(Cmd.WRITE_ZEROES, NS_SIZE, 512)).error, NbdErrno.ENOSPC);
    assert.equal((await a.request(Cmd.READ, NS_SIZE, 512)).error, NbdErrno.EINVAL);
    assert.equal(a.blockSizes?.min, 512);
    assert.equal((await a.request(Cmd.READ, 100, 512)).error, NbdErrno.EINVAL);
    assert.equal((await a.request(Cmd.WRITE, 0, 100, { data: Buffer.alloc(100) })).error, NbdErrno.EINVAL);
    assert.equal((await b.request(Cmd.WRITE, 0, 512, { data: Buffer.alloc(512) })).error, NbdErrno.EPERM);
    assert.equal((await b.request(Cmd.TRIM, 0, 512)).error, NbdErrno.EPERM);
    // The device layer decides the same where the NBD layer would not have checked.
    assert.equal((await errnoOf(namespaceOf(c, 1, { readOnly: true }).write(0, Buffer.alloc(512), false))).errno, NbdErrno.EPERM);
    assert.equal((await errnoOf((c.namespace(1) as Namespace).write(NS_SIZE, Buffer.alloc(512), false))).errno, NbdErrno.ENOSPC);
  } finally {
    a.destroy();
    b.destroy();
    await rw.server.close();
    await ro.server.close();
    await c.close();
  }
});

test('ENOTSUP for a command the controller does not support (Invalid Opcode), and for FAST_ZERO without Write Zeroes', async () => {
  const invalidOpcode = statusError({ sct: 0, sc: 0x01, dnr: true, more: false, crd: 0 }, 'Write Zeroes');
  const ns = { lbaSize: 512, nsze: 2048n, usable: true };
  const be = (oncs: number): NamespaceBackend => ({
    namespaces: new Map([[1, ns]]), oncs, volatileWriteCache: true,
    read: () => Promise.reject(invalidOpcode), write: () => Promise.reject(invalidOpcode), flush: () => Promise.reject(invalidOpcode),
    deallocate: () => Promise.reject(invalidOpcode), writeZeroes: () => Promise.reject(invalidOpcode),
  });
  const withWz = namespaceOf(be(0x0c), 1);
  assert.deepEqual(await errnoOf(withWz.writeZeroes(0, 512, { mayDeallocate: false, fua: false, fastOnly: false })), { errno: NbdErrno.ENOTSUP, code: ErrorCode.NVME_STATUS });
  const without = namespaceOf(be(0), 1);
  assert.equal((await errnoOf(without.writeZeroes(0, 512, { mayDeallocate: false, fua: false, fastOnly: true }))).errno, NbdErrno.ENOTSUP);
  assert.equal((await errnoOf(without.trim(0, 512))).errno, NbdErrno.ENOTSUP);
});
