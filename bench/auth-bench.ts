/**
 * What DH-HMAC-CHAP costs: the time of a connect (admin queue + N I/O queues, each Connect +
 * authentication, Identify, namespace scan) and of a reconnect (connections cut → LIVE again)
 * without authentication and with the null group, ffdhe2048 and ffdhe4096 (SHA-256;
 * unidirectional and bidirectional), against the embedded target in this process (the exchange
 * is sequential, so the time is host + target computation + loopback round trips).
 * Prints a table; asserts nothing.
 *
 *   node dist/bench/auth-bench.js [--runs N] [--queues N] [--groups none,null,2048,4096,8192]
 */
import * as net from 'node:net';
import { NvmeTarget } from '../src/embedded-target/target';
import { Controller, type ControllerOptions } from '../src/controller/controller';
import { ResilientController, CtrlState } from '../src/controller/resilient';
import { generateDhchapKey, type DhchapKey } from '../src/wire/dhchap';
import type { DhchapGroupId } from '../src/wire/auth';
import { parseArgs, runMain } from './common';

const NQN = 'nqn.2026-01.io.nvmf-nbd:auth-bench';
const HOSTNQN = 'nqn.2014-08.org.nvmexpress:uuid:b0e1c4b0-0000-4000-8000-0000000000a1';
const HOSTID = 'b0e1c4b0-0000-4000-8000-0000000000a1';

/** A loopback proxy whose connections can be cut (to force reconnects). */
async function proxy(to: number): Promise<{ port: number; cut(): void; close(): Promise<void> }> {
  const socks = new Set<net.Socket>();
  const server = net.createServer((a) => {
    const b = net.connect(to, '127.0.0.1');
    socks.add(a).add(b);
    a.pipe(b).pipe(a);
    const done = (): void => { a.destroy(); b.destroy(); socks.delete(a); socks.delete(b); };
    a.on('error', done).on('close', done);
    b.on('error', done).on('close', done);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as net.AddressInfo).port,
    cut: () => { for (const s of socks) s.destroy(); },
    close: () => new Promise<void>((r) => { for (const s of socks) s.destroy(); server.close(() => r()); }),
  };
}

function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] as number;
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2), ['runs', 'queues', 'groups']);
  const runs = Number(args.get('runs') ?? 10);
  const queues = Number(args.get('queues') ?? 4);
  const groups = (args.get('groups') ?? 'none,null,2048,4096').split(',');
  const key: DhchapKey = generateDhchapKey({ hmac: 1, nqn: HOSTNQN });
  const ctrlKey: DhchapKey = generateDhchapKey();
  const target = new NvmeTarget({
    listen: { host: '127.0.0.1', port: 0 },
    subsystems: [{ nqn: NQN, namespaces: [{ nsid: 1, sizeBytes: 64 << 20, backing: { memory: true } }] }],
    allowHosts: [HOSTNQN, `${HOSTNQN}-plain`],
    hostKeys: [{ hostnqn: HOSTNQN, key, ctrlKey }],
    maxIoQueues: Math.max(queues, 1),
  });
  const { port } = await target.listen();
  const rows: string[][] = [];
  try {
    for (const g of groups) {
      for (const bidi of g === 'none' ? [false] : [false, true]) {
        const group = (g === 'null' ? 0 : g === '2048' ? 1 : g === '3072' ? 2 : g === '4096' ? 3 : g === '6144' ? 4 : 5) as DhchapGroupId;
        const base: ControllerOptions = {
          traddr: '127.0.0.1', trsvcid: port, subnqn: NQN, hostid: HOSTID, nrIoQueues: queues, queueSize: 32, kato: 5000,
          hostnqn: g === 'none' ? `${HOSTNQN}-plain` : HOSTNQN,
          ...(g === 'none' ? {} : { dhchap: { secret: key, ...(bidi ? { ctrlSecret: ctrlKey } : {}), dhgroups: [group] } }),
        };
        const connects: number[] = [];
        for (let i = 0; i < runs + 1; i++) {
          const t0 = process.hrtime.bigint();
          const c = await Controller.connect(base);
          const ms = Number(process.hrtime.bigint() - t0) / 1e6;
          await c.close();
          if (i > 0) connects.push(ms); // the first run warms up
        }
        const px = await proxy(port);
        const rc = await ResilientController.connect({ ...base, trsvcid: px.port, reconnectDelayMs: 1, quiesceMs: 0, ctrlLossTmoMs: 60_000 });
        const reconnects: number[] = [];
        for (let i = 0; i < runs; i++) {
          const live = new Promise<void>((resolve) => {
            const on = (s: string): void => { if (s === CtrlState.LIVE) { rc.off('state', on); resolve(); } };
            rc.on('state', on);
          });
          const t0 = process.hrtime.bigint();
          px.cut();
          await live;
          reconnects.push(Number(process.hrtime.bigint() - t0) / 1e6);
        }
        await rc.close();
        await px.close();
        const name = g === 'none' ? 'no authentication' : `sha256 ${g === 'null' ? 'null' : `ffdhe${g}`} ${bidi ? 'bidirectional' : 'unidirectional'}`;
        rows.push([name, pct(connects, 50).toFixed(1), pct(connects, 90).toFixed(1), pct(reconnects, 50).toFixed(1), pct(reconnects, 90).toFixed(1)]);
      }
    }
  } finally {
    await target.close();
  }
  const head = ['mode', 'connect p50 ms', 'connect p90 ms', 'reconnect p50 ms', 'reconnect p90 ms'];
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] as string).length)));
  const line = (r: string[]): string => r.map((c, i) => (i === 0 ? c.padEnd(w[i] as number) : c.padStart(w[i] as number))).join('  ');
  process.stdout.write(`DH-HMAC-CHAP cost: ${runs} runs each, admin + ${queues} I/O queues, embedded target in-process, node ${process.version}\n`);
  process.stdout.write(`${line(head)}\n${rows.map(line).join('\n')}\n`);
}

runMain('auth-bench', main);
