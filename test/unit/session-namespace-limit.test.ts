/**
 * Issue 14 finding 4: a target's namespace count must not exhaust the host. Beyond
 * maxNamespaces the extra namespaces are skipped (counted, NVMF_ERR_TOO_MANY_NAMESPACES in the
 * log) instead of failing the connect; no raw Identify page is kept per namespace; Unix sockets
 * per session are bounded (later exports share the controller socket, the export name selects
 * the namespace) and every export stays reachable.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ControllerSession, MAX_EXPORT_SOCKETS } from '../../src/engine/session';
import { ErrorCode } from '../../src/errors';
import { FakeTarget, serveController } from '../helpers/fake-target';
import type { ControllerModel } from '../helpers/fake-target';
import { NbdTestClient } from '../helpers/nbd-test-client';

test('namespaces beyond maxNamespaces are skipped, sockets are bounded, every export is reachable by name (finding 4)', { timeout: 30_000 }, async () => {
  const namespaces = new Map<number, { data: Buffer; lbaSize: number }>();
  for (let n = 1; n <= 40; n++) {
    const data = Buffer.alloc(64 * 1024);
    data.writeUInt32LE(n, 0); // each namespace says who it is in its first block
    namespaces.set(n, { data, lbaSize: 512 });
  }
  const m: ControllerModel = { namespaces };
  const target = await FakeTarget.start((c) => serveController(c, m));
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'nsl-'));
  const logs: string[] = [];
  const s = await ControllerSession.open({
    name: 'nsl0',
    controller: {
      traddr: '127.0.0.1', trsvcid: target.port, subnqn: 'nqn.2024-01.io.test:many',
      hostnqn: 'nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-0000000000c4', hostid: '00000000-0000-0000-0000-0000000000c4',
      nrIoQueues: 1, kato: 5000, maxNamespaces: 30,
    },
    nbd: { unixDir: dir },
    log: (msg) => logs.push(msg),
  });
  try {
    assert.equal(s.exports.length, 30, 'only maxNamespaces namespaces are exported');
    assert.equal(s.controller.namespacesOverLimit, 10);
    assert.ok(logs.some((l) => l.includes(ErrorCode.TOO_MANY_NAMESPACES)), logs.join('\n'));
    for (const ns of s.controller.namespaces.values()) assert.equal('raw' in ns, false, 'no raw Identify page kept');
    const sockets = new Set(s.exports.map((e) => ('unix' in e.endpoint ? e.endpoint.unix : '')));
    assert.ok(sockets.size <= MAX_EXPORT_SOCKETS + 1, `${sockets.size} sockets for ${s.exports.length} exports`);
    const files = (await fsp.readdir(path.join(dir, 'nsl0'))).filter((f) => f.endsWith('.sock'));
    assert.equal(files.length, sockets.size);
    // Every export answers on its endpoint, and the name picks the right namespace.
    for (const e of [s.exports[0], s.exports[MAX_EXPORT_SOCKETS], s.exports[29]]) {
      assert.ok(e !== undefined && 'unix' in e.endpoint);
      const c = await NbdTestClient.connect({ path: e.endpoint.unix }, e.name);
      const b = await c.read(0, 512);
      assert.equal(b.readUInt32LE(0), e.nsid, `${e.name} served namespace ${b.readUInt32LE(0)}`);
      await c.disconnect();
    }
  } finally {
    await s.close();
    await target.close();
    await fsp.rm(dir, { recursive: true, force: true });
  }
});
