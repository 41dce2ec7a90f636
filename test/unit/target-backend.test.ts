/** Namespace backends of the target: sparse memory semantics and the file backend. */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { ErrorCode } from '../../src/errors';
import { FileBackend, MemoryBackend, NvmeTarget } from '../../src/embedded-target';
import { throwsCode, rejectsCode } from '../helpers/assert-code';

describe('MemoryBackend', () => {
  it('allocates chunks on first write only and reads zeroes elsewhere', async () => {
    const m = new MemoryBackend(1 << 20, 4096);
    assert.equal(m.allocatedBytes, 0);
    assert.ok((await m.read(0, 8192)).every((b) => b === 0));
    assert.equal(m.allocatedBytes, 0, 'reads do not allocate');
    const data = Buffer.alloc(6000, 0xab);
    await m.write(3000, data); // spans chunks 0, 1, 2
    assert.equal(m.allocatedBytes, 3 * 4096);
    const r = await m.read(2990, 6020);
    assert.ok(r.subarray(0, 10).every((b) => b === 0));
    assert.deepEqual(r.subarray(10, 6010), data);
    assert.ok(r.subarray(6010).every((b) => b === 0));
  });

  it('read returns a copy, not a view of its memory', async () => {
    const m = new MemoryBackend(8192, 4096);
    await m.write(0, Buffer.alloc(512, 1));
    const r = await m.read(0, 512);
    await m.write(0, Buffer.alloc(512, 2));
    assert.equal(r[0], 1);
  });

  it('deallocate frees whole chunks and zeroes partial ones', async () => {
    const m = new MemoryBackend(4 * 4096, 4096);
    await m.write(0, Buffer.alloc(4 * 4096, 0xff));
    await m.deallocate(2048, 4096 + 2048); // half of chunk 0, all of chunk 1
    assert.equal(m.allocatedBytes, 3 * 4096);
    const r = await m.read(0, 4 * 4096);
    assert.ok(r.subarray(0, 2048).every((b) => b === 0xff));
    assert.ok(r.subarray(2048, 8192).every((b) => b === 0));
    assert.ok(r.subarray(8192).every((b) => b === 0xff));
    await m.writeZeroes(8192, 8192);
    assert.equal(m.allocatedBytes, 4096);
  });

  it('the last chunk is only as large as the namespace', async () => {
    const m = new MemoryBackend(4096 + 512, 4096);
    await m.write(4096, Buffer.alloc(512, 3));
    assert.equal((await m.read(4096, 512))[511], 3);
  });
});

describe('FileBackend', () => {
  it('creates a file of the given size, reads/writes at offsets, zeroes ranges', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nvmf-target-'));
    const file = path.join(dir, 'ns.img');
    try {
      const f = await FileBackend.open(file, 1 << 20);
      assert.equal(f.size, 1 << 20);
      assert.equal(fs.statSync(file).size, 1 << 20);
      await f.write(4096, Buffer.alloc(8192, 0x42));
      await f.flush();
      await f.writeZeroes(8192, 1024);
      const r = await f.read(4096, 8192);
      assert.ok(r.subarray(0, 4096).every((b) => b === 0x42));
      assert.ok(r.subarray(4096, 5120).every((b) => b === 0));
      assert.ok(r.subarray(5120).every((b) => b === 0x42));
      await f.close();
      // Reopened without a size: the file's size.
      const g = await FileBackend.open(file);
      assert.equal(g.size, 1 << 20);
      assert.equal((await g.read(4096, 1))[0], 0x42);
      await g.close();
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a missing file without a size is a CFG_ERR_INVALID error', async () => {
    await rejectsCode(FileBackend.open(path.join(os.tmpdir(), 'nvmf-no-such-file-xyz')), ErrorCode.CFG_INVALID);
  });
});

describe('NvmeTarget configuration', () => {
  it('defaults to one subsystem with a 1 GiB memory namespace', async () => {
    const t = new NvmeTarget({ listen: { host: '127.0.0.1', port: 0 } });
    const a = await t.listen();
    try {
      assert.equal(a.host, '127.0.0.1');
      assert.ok(a.port > 0);
      const subs = t.subsystems();
      assert.equal(subs.length, 1);
      assert.equal(subs[0]!.nqn, 'nqn.2014-08.org.nvmf-nbd:target');
      assert.deepEqual(subs[0]!.namespaces, [{ nsid: 1, sizeBytes: 1 << 30, lbaSize: 512, backing: 'memory' }]);
    } finally {
      await t.close();
    }
  });

  it('rejects bad sizes, duplicate NSIDs and unknown subsystems with stable codes', async () => {
    throwsCode(() => new NvmeTarget({ queueSize: 1 }), ErrorCode.CFG_INVALID);
    throwsCode(() => new NvmeTarget({ ioccsz: 2 }), ErrorCode.CFG_INVALID);
    throwsCode(() => new NvmeTarget({ mdtsPages: 3 }), ErrorCode.CFG_INVALID);
    const t = new NvmeTarget({ listen: { host: '127.0.0.1', port: 0 }, subsystems: [{ nqn: 'nqn.2014-08.org.x:a' }] });
    await t.listen();
    try {
      await rejectsCode(t.addNamespace('nqn.2014-08.org.x:a', { sizeBytes: 1000, backing: { memory: true } }), ErrorCode.CFG_INVALID);
      assert.equal(await t.addNamespace('nqn.2014-08.org.x:a', { nsid: 5, sizeBytes: 4096, backing: { memory: true } }), 5);
      await rejectsCode(t.addNamespace('nqn.2014-08.org.x:a', { nsid: 5, sizeBytes: 4096, backing: { memory: true } }), ErrorCode.INVALID_ARGUMENT);
      await rejectsCode(t.addNamespace('nqn.2014-08.org.x:b', { sizeBytes: 4096, backing: { memory: true } }), ErrorCode.INVALID_ARGUMENT);
      await rejectsCode(t.removeNamespace('nqn.2014-08.org.x:a', 6), ErrorCode.NAMESPACE_NOT_FOUND);
      await t.removeNamespace('nqn.2014-08.org.x:a', 5);
      assert.deepEqual(t.subsystems()[0]!.namespaces, []);
    } finally {
      await t.close();
    }
  });
});
