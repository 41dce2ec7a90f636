/**
 * Issue 14 finding 6: NBD server bounds that hold across connections — a per-server connection
 * cap, a per-export connection cap, one budget of in-flight + unsent reply bytes shared by all
 * connections (non-readers stop being read, well-behaved clients keep going), and an optional
 * idle timeout after GO.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as net from 'node:net';
import { once } from 'node:events';
import { MemoryBlockDevice } from '../../src/block/memory-device';
import { NbdServer, type NbdLogEntry } from '../../src/nbd/server';
import { ErrorCode } from '../../src/errors';
import { ClientFlag, Cmd, Opt, encodeOption, encodeRequest } from '../../src/wire/nbd';
import { NbdTestClient } from '../helpers/nbd-test-client';
import { until } from '../helpers/clock';

const MiB = 1024 * 1024;

function clientFlags(): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(ClientFlag.FIXED_NEWSTYLE | ClientFlag.NO_ZEROES);
  return b;
}

async function start(o: ConstructorParameters<typeof NbdServer>[0] = {}): Promise<{ srv: NbdServer; port: number; logs: NbdLogEntry[] }> {
  const logs: NbdLogEntry[] = [];
  const srv = new NbdServer({ log: (e) => logs.push(e), closeGraceMs: 200, ...o });
  srv.addExport('e', new MemoryBlockDevice({ size: 64 * MiB }));
  const ep = await srv.listen({ tcp: { host: '127.0.0.1', port: 0 } });
  return { srv, port: (ep as { tcp: { port: number } }).tcp.port, logs };
}

test('connections above maxConnections are closed before the greeting (finding 6)', { timeout: 15_000 }, async () => {
  const { srv, port, logs } = await start({ maxConnections: 2 });
  const socks: net.Socket[] = [];
  try {
    for (let i = 0; i < 2; i++) {
      const s = net.connect(port, '127.0.0.1');
      socks.push(s);
      await once(s, 'data'); // greeting
    }
    const third = net.connect(port, '127.0.0.1');
    socks.push(third);
    let got = 0;
    third.on('data', (d: Buffer) => { got += d.length; });
    third.on('error', () => undefined);
    await once(third, 'close');
    assert.equal(got, 0, 'no greeting for a connection over the cap');
    assert.ok(logs.some((l) => l.code === ErrorCode.NBD_TOO_MANY_CONNECTIONS));
  } finally {
    for (const s of socks) s.destroy();
    await srv.close();
  }
});

test('GO beyond maxConnectionsPerExport is refused with ERR_POLICY; another slot frees it (finding 6)', { timeout: 15_000 }, async () => {
  const { srv, port, logs } = await start({ maxConnectionsPerExport: 1 });
  try {
    const a = await NbdTestClient.connect({ port }, 'e');
    await assert.rejects(NbdTestClient.connect({ port }, 'e'), /POLICY|policy|too many|refused|error/i);
    assert.ok(logs.some((l) => l.code === ErrorCode.NBD_TOO_MANY_CONNECTIONS));
    await a.disconnect();
    await until(() => srv.stats()[0]?.connections === 0, 'the first client released its slot');
    const b = await NbdTestClient.connect({ port }, 'e');
    await b.disconnect();
  } finally {
    await srv.close();
  }
});

test('non-reading clients share one reply budget; a well-behaved client still completes reads (finding 6)', { timeout: 30_000 }, async () => {
  const total = 32 * MiB;
  const { srv, port } = await start({ maxTotalBytes: total });
  const stuck: net.Socket[] = [];
  const base = process.memoryUsage().arrayBuffers;
  try {
    for (let i = 0; i < 6; i++) {
      const s = net.connect(port, '127.0.0.1');
      s.pause(); // never reads
      s.on('error', () => undefined);
      await once(s, 'connect');
      const reqs = Array.from({ length: 8 }, (_, k) => encodeRequest({ type: Cmd.READ, cookie: BigInt(k), offset: 0, length: 8 * MiB }));
      s.write(Buffer.concat([clientFlags(), encodeOption(Opt.EXPORT_NAME, Buffer.from('e')), ...reqs]));
      stuck.push(s);
    }
    // The server has taken all it will take: every stuck connection waits for the shared budget.
    const waiting = (): number => (srv as unknown as { budgetWaiters: unknown[] }).budgetWaiters.length;
    await until(() => waiting() === 6, `all 6 stuck connections waiting for the budget (${waiting()})`);
    const held = (srv as { heldBytes?: () => number }).heldBytes?.() ?? 0;
    // Beyond the budget each connection holding nothing may take one request (progress).
    assert.ok(held <= total + 6 * 8 * MiB, `held ${held / MiB} MiB with a ${total / MiB} MiB budget`);
    const grown = process.memoryUsage().arrayBuffers - base;
    assert.ok(grown < 160 * MiB, `buffers grew by ${Math.round(grown / MiB)} MiB`);
    const good = await NbdTestClient.connect({ port }, 'e');
    for (let i = 0; i < 4; i++) assert.equal((await good.read(i * MiB, MiB)).length, MiB);
    await good.disconnect();
  } finally {
    for (const s of stuck) s.destroy();
    await srv.close();
  }
});

test('--nbd-idle-timeout: a connection idle after GO is closed with NBD_ERR_IDLE_TIMEOUT (finding 6)', { timeout: 15_000 }, async () => {
  const { srv, port, logs } = await start({ idleTimeoutMs: 200 });
  try {
    const sock = net.connect(port, '127.0.0.1');
    const closed = once(sock, 'close');
    const c = await NbdTestClient.overStream(sock, 'e');
    assert.equal((await c.read(0, 4096)).length, 4096);
    await closed;
    assert.ok(logs.some((l) => l.code === ErrorCode.NBD_IDLE_TIMEOUT), JSON.stringify(logs));
  } finally {
    await srv.close();
  }
});
