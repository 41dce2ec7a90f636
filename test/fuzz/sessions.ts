/**
 * Connection-level fuzzers: thousands of hostile sessions (mutated valid sessions, split at
 * random) against the NBD server, the embedded NVMe/TCP target and the daemon's control socket.
 * Each session must end in an orderly close (or, for the control socket, typed error
 * responses) within a deadline: a session still open after it is a hang; an uncaught exception,
 * a log line without a stable code or an untyped error response is counted as a crash. Peak
 * RSS shows the memory bound.
 */
import * as net from 'node:net';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { MemoryBlockDevice } from '../../src/block/memory-device';
import { NbdServer } from '../../src/nbd/server';
import { NvmeTarget } from '../../src/embedded-target';
import { Daemon } from '../../src/engine/daemon';
import type { ControllerSession } from '../../src/engine/session';
import { encodeRequest as encodeControlRequest, parseResponse } from '../../src/wire/control';
import { connectBinding } from '../../src/cli/verbs/daemon';
import { ErrorCode, NvmfNbdError } from '../../src/errors';
import { Rng, chunks, mutate, type FuzzResult } from './lib';
import { nbdClientBytes, targetSeeds } from './parsers';

/** One connection-level fuzzer. */
export interface SessionFuzzer {
  readonly name: string;
  run(o: { sessions: number; seed: number; deadlineMs?: number }): Promise<FuzzResult>;
}

const SESSION_DEADLINE_MS = 10_000;
const CONCURRENCY = 8;

/** Send `bytes` in random chunks, half-close, and wait for the peer to close (or the deadline). */
function session(connect: () => net.Socket, bytes: Buffer, rng: Rng, deadlineMs: number, onData?: (d: Buffer) => void): Promise<'closed' | 'hang'> {
  return new Promise((resolve) => {
    const s = connect();
    let done = false;
    const finish = (r: 'closed' | 'hang'): void => {
      if (done) return;
      done = true;
      clearTimeout(t);
      s.destroy();
      resolve(r);
    };
    const t = setTimeout(() => finish('hang'), deadlineMs);
    s.on('error', () => undefined);
    s.on('data', (d: Buffer) => onData?.(d));
    s.on('close', () => finish('closed'));
    s.once('connect', () => {
      for (const c of chunks(rng, bytes)) s.write(c);
      // Half of the sessions half-close (the server must finish); the rest just stop sending
      // and must be closed by the server's own limits — or end after a short pause.
      if (rng.below(2) === 0) s.end();
      else setTimeout(() => s.end(), 50).unref();
    });
  });
}

async function pool(n: number, worker: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
    while (next < n) await worker(next++);
  }));
}

function newResult(name: string): FuzzResult {
  return { name, inputs: 0, crashes: 0, hangs: 0, peakRssMiB: 0, seconds: 0, samples: [] };
}

/** Count uncaught exceptions while `body` runs (they would crash a real process). */
async function guarded(r: FuzzResult, body: () => Promise<void>): Promise<void> {
  const onErr = (err: unknown): void => {
    r.crashes++;
    if (r.samples.length < 3) r.samples.push(`uncaught: ${String(err).slice(0, 200)}`);
  };
  process.on('uncaughtException', onErr);
  const t0 = Date.now();
  let peak = process.memoryUsage.rss();
  const sampler = setInterval(() => { peak = Math.max(peak, process.memoryUsage.rss()); }, 100);
  try {
    await body();
  } finally {
    clearInterval(sampler);
    process.off('uncaughtException', onErr);
    r.peakRssMiB = Math.round(Math.max(peak, process.memoryUsage.rss()) / 1048576);
    r.seconds = Math.round((Date.now() - t0) / 100) / 10;
  }
}

const nbdServerFuzzer: SessionFuzzer = {
  name: 'sessions: NBD server (hostile clients)',
  async run(o) {
    const r = newResult(this.name);
    const rng = new Rng(o.seed);
    const srv = new NbdServer({
      handshakeTimeoutMs: 2000, closeGraceMs: 200, idleTimeoutMs: 2000,
      log: (e) => {
        if ((e.level === 'warn' || e.level === 'error') && e.code === undefined) {
          r.crashes++;
          if (r.samples.length < 3) r.samples.push(`log without a code: ${e.msg}`);
        }
      },
    });
    srv.addExport('nvme0n1', new MemoryBlockDevice({ size: 8 << 20 }));
    srv.addExport('e', new MemoryBlockDevice({ size: 1 << 20 }));
    const ep = await srv.listen({ tcp: { host: '127.0.0.1', port: 0 } });
    const port = (ep as { tcp: { port: number } }).tcp.port;
    const seeds = nbdClientBytes();
    await guarded(r, () => pool(o.sessions, async () => {
      const bytes = mutate(rng, rng.pick(seeds), rng.pick(seeds));
      const res = await session(() => net.connect(port, '127.0.0.1'), bytes, rng, o.deadlineMs ?? SESSION_DEADLINE_MS);
      r.inputs++;
      if (res === 'hang') r.hangs++;
    }));
    await srv.close();
    return r;
  },
};

const targetFuzzer: SessionFuzzer = {
  name: 'sessions: embedded target (hostile hosts)',
  async run(o) {
    const r = newResult(this.name);
    const rng = new Rng(o.seed);
    const t = new NvmeTarget({
      listen: { host: '127.0.0.1', port: 0 }, connectTimeoutMs: 2000, idleTimeoutMs: 2000, keepAliveGraceMs: 100,
      subsystems: [{ nqn: 'nqn.x:sub', namespaces: [{ sizeBytes: 4 << 20, backing: { memory: true } }] }],
    });
    const { port } = await t.listen();
    // A whole session: ICReq, Connect, then commands.
    const seeds = targetSeeds();
    const full = Buffer.concat(seeds);
    await guarded(r, () => pool(o.sessions, async () => {
      const base = rng.below(2) === 0 ? full : rng.pick(seeds);
      const bytes = mutate(rng, base, full);
      const res = await session(() => net.connect(port, '127.0.0.1'), bytes, rng, o.deadlineMs ?? SESSION_DEADLINE_MS);
      r.inputs++;
      if (res === 'hang') r.hangs++;
    }));
    await t.close();
    return r;
  },
};

const controlFuzzer: SessionFuzzer = {
  name: 'sessions: daemon control socket (hostile local clients)',
  async run(o) {
    const r = newResult(this.name);
    const rng = new Rng(o.seed);
    const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'nvmf-fuzz-ctl-'));
    const d = await Daemon.start({
      stateDir: dir,
      connect: { ...connectBinding(), render: (s: ControllerSession) => ({ text: `${s.name}\n`, json: { name: s.name } }) },
      // Nothing real is dialled: every connect fails like an unreachable target.
      openSession: async () => { throw new NvmfNbdError(ErrorCode.CONNECT_FAILED, 'fuzz: no target'); },
      deviceInUse: async () => false,
    } as Parameters<typeof Daemon.start>[0]);
    const seeds = [
      encodeControlRequest({ id: 1, verb: 'ping' as never, args: {} }),
      encodeControlRequest({ id: 2, verb: 'list' as never, args: {} }),
      encodeControlRequest({ id: 3, verb: 'connect' as never, args: { transport: 'tcp', traddr: '127.0.0.1', trsvcid: 1, nqn: 'nqn.x:sub' } }),
      encodeControlRequest({ id: 4, verb: 'disconnect' as never, args: { name: 'nvme0' } }),
      encodeControlRequest({ id: 5, verb: 'get-log' as never, args: { name: 'nvme0', lid: 2, length: 512 } }),
    ];
    await guarded(r, () => pool(o.sessions, async () => {
      const bytes = mutate(rng, Buffer.concat([rng.pick(seeds), rng.pick(seeds)]), rng.pick(seeds));
      let buf = '';
      const res = await session(() => net.connect(d.controlPath), bytes, rng, o.deadlineMs ?? SESSION_DEADLINE_MS, (c) => { buf += c.toString('utf8'); });
      r.inputs++;
      if (res === 'hang') r.hangs++;
      for (const line of buf.split('\n')) {
        if (line === '') continue;
        try {
          const resp = parseResponse(line);
          if (!resp.ok && !/^[A-Z]+_ERR_[A-Z_]+$/.test(String((resp as { error?: { code?: unknown } }).error?.code))) throw new Error(`untyped error response: ${line.slice(0, 120)}`);
        } catch (err) {
          r.crashes++;
          if (r.samples.length < 3) r.samples.push(String(err).slice(0, 200));
        }
      }
    }));
    await d.shutdown();
    await fsp.rm(dir, { recursive: true, force: true });
    return r;
  },
};

/** Every connection-level fuzzer. */
export function sessionFuzzers(): SessionFuzzer[] {
  return [nbdServerFuzzer, targetFuzzer, controlFuzzer];
}
