/**
 * The project's own host engine (controller/controller.ts) against the embedded target's two
 * ports: two associations with distinct cntlids, Identify Controller parsed with the ANA fields,
 * the ANA log read through the controller's admin queue, and a read on a port where the group is
 * inaccessible failing with the path status (SCT 3h SC 02h, DNR clear) as a typed error — what a
 * host-side multipath layer will retry on the other path.
 */
import { strict as assert } from 'node:assert';
import { after, before, test } from 'node:test';
import { Controller, type ControllerOptions } from '../../src/controller/controller';
import { NvmeTarget } from '../../src/embedded-target';
import { ErrorCode } from '../../src/errors';
import { AnaState, Cmic, parseAnaLog, PathStatus, Sct, sqeGetLogPage } from '../../src/wire';
import { rejectsCode } from '../helpers/assert-code';

const NQN = 'nqn.2014-08.org.nvmf-nbd:test-ana-host';
const HOSTNQN = 'nqn.2014-08.org.nvmexpress:uuid:7d3f1e20-4b5a-4c6d-8e9f-a0b1c2d3e4f5';
const HOSTID = Buffer.from('7d3f1e204b5a4c6d8e9fa0b1c2d3e4f5', 'hex');

let target: NvmeTarget;
let ports: number[] = [];

before(async () => {
  target = new NvmeTarget({
    ports: [{ host: '127.0.0.1', port: 0 }, { host: '127.0.0.1', port: 0 }],
    subsystems: [{ nqn: NQN, namespaces: [{ nsid: 1, sizeBytes: 4 << 20, backing: { memory: true } }] }],
  });
  await target.listen();
  ports = target.ports().map((p) => p.port);
});

after(async () => {
  await target.close();
});

function opts(port: number): ControllerOptions {
  return { traddr: '127.0.0.1', trsvcid: port, subnqn: NQN, hostnqn: HOSTNQN, hostid: HOSTID, nrIoQueues: 1, queueSize: 16, kato: 5000, connectTimeoutMs: 20_000 };
}

test('host engine over two ports: two paths, ANA fields, ANA log, path status surfaced as a typed error', { timeout: 30_000 }, async () => {
  const a = await Controller.connect(opts(ports[0]!));
  const b = await Controller.connect(opts(ports[1]!));
  try {
    assert.notEqual(a.identify.cntlid, b.identify.cntlid);
    assert.equal(a.identify.cmic & Cmic.ANA, Cmic.ANA);
    assert.equal(b.identify.anagrpmax, 128);
    assert.equal(b.identify.cqt, 6000, 'default CQT: keep-alive grace 5000 + 1000 ms');
    target.setAnaState(2, 1, 'inaccessible');
    const log = parseAnaLog((await b.adminCommand(sqeGetLogPage(0x0c, 4096), { dataInLength: 4096 })).data!);
    assert.deepEqual(log.groups.map((g) => [g.grpid, g.state, g.nsids]), [[1, AnaState.INACCESSIBLE, [1]]]);
    const data = Buffer.alloc(4096, 0xa5);
    await a.write(1, 0n, data);
    const err = await rejectsCode(b.read(1, 0n, 8), ErrorCode.NVME_STATUS);
    assert.deepEqual([err.status?.sct, err.status?.sc, err.status?.dnr], [Sct.PATH, PathStatus.ANA_INACCESSIBLE, false]);
    assert.match(err.message, /Asymmetric Access Inaccessible/);
    assert.deepEqual(await a.read(1, 0n, 8), data, 'the optimized path serves');
    target.setAnaState(2, 1, 'optimized');
    assert.deepEqual(await b.read(1, 0n, 8), data, 'the path serves again once optimized');
  } finally {
    await a.close();
    await b.close();
  }
});
