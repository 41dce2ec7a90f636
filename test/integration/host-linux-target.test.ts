/**
 * The host engine against the Linux kernel's NVMe/TCP target (nvmet in the QEMU guest):
 * connect, identify, two namespaces, write/read-back at sizes from 512 B to 8 MiB (beyond the
 * in-capsule size and beyond MAXH2CDATA) with digests off and with header + data digests on,
 * flush, deallocate and write zeroes, the discovery log (through the CLI), `connect -o json`
 * until SIGINT, and a clear error for an unknown subsystem NQN.
 *
 * One guest for the whole file. Under TCG the guest target moves ~35–45 MiB/s: data stays small.
 */
import { before, after, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Controller } from '../../src/controller/controller';
import type { ControllerOptions } from '../../src/controller/controller';
import { discover } from '../../src/controller/discovery';
import { namespaceOf } from '../helpers/namespace-of';
import { ErrorCode, NvmfNbdError } from '../../src/errors';
import { need } from '../helpers/prereq';
import { Guest, guestAvailable, setupNvmet } from '../helpers/guest';

const NQN = 'nqn.2014-08.org.nvmf-nbd:host-linux-target';
const SIZE_MIB = 64;
const HOSTNQN = 'nqn.2014-08.org.nvmexpress:uuid:6c1b1f5e-58a8-4a55-9d0c-6f0e5b0f2a11';
const HOSTID = '6c1b1f5e-58a8-4a55-9d0c-6f0e5b0f2a11';
const SIZES = [512, 4096, 128 * 1024, 1 << 20, 8 << 20];
const MAIN = path.resolve(__dirname, '../../src/cli/main.js');

const avail = guestAvailable();
let g: Guest | undefined;
let port = 0;
let stateDir = '';

before(async () => {
  if (!avail.ok) return;
  stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'host-linux-target-'));
  g = await Guest.start({ hostfwd: [{ hostPort: 0, guestPort: 4420 }] });
  port = g.hostPorts[0] as number;
  await setupNvmet(g, { subsystems: [{ nqn: NQN, namespaces: [{ nsid: 1, sizeMiB: SIZE_MIB }, { nsid: 2, sizeMiB: SIZE_MIB }] }] });
}, { timeout: 300_000 });

after(async () => {
  await g?.stop();
  if (stateDir !== '') fs.rmSync(stateDir, { recursive: true, force: true });
});

const prereq = (t: Parameters<typeof need>[0]): boolean => need(t, avail.ok, avail.reason);

function opts(o: Partial<ControllerOptions> = {}): ControllerOptions {
  return { traddr: '127.0.0.1', trsvcid: port, subnqn: NQN, hostnqn: HOSTNQN, hostid: HOSTID, nrIoQueues: 2, queueSize: 32, kato: 5000, ioTimeoutMs: 30_000, ...o };
}

/** Write then read back each size at a distinct offset, on both namespaces. */
async function roundTrips(ctrl: Controller, label: string, t: { diagnostic(s: string): void }): Promise<void> {
  const dev1 = namespaceOf(ctrl, 1);
  let offset = 0;
  for (const size of SIZES) {
    const data = randomBytes(size);
    const t0 = Date.now();
    await dev1.write(offset, data, false);
    const back = await dev1.read(offset, size);
    assert.ok(back.equals(data), `${label}: ns1 ${size} bytes at ${offset} read back differently`);
    // Namespace 2 through the controller API, at another offset, to check it is a different disk.
    const slba = BigInt(offset / 512) + 1000n;
    await ctrl.write(2, slba, data);
    assert.ok((await ctrl.read(2, slba, size / 512)).equals(data), `${label}: ns2 ${size} bytes`);
    t.diagnostic(`${label}: ${size} B write+read x2 in ${Date.now() - t0} ms`);
    offset += Math.max(size, 4096) * 2;
  }
}

test('connect, identify, two namespaces, I/O queues', { timeout: 60_000 }, async (t) => {
  if (!prereq(t)) return;
  const ctrl = await Controller.connect(opts());
  try {
    assert.match(ctrl.identify.mn, /Linux/);
    assert.equal(ctrl.identify.subnqn, NQN);
    assert.deepEqual([...ctrl.namespaces.keys()], [1, 2]);
    for (const ns of ctrl.namespaces.values()) {
      assert.equal(ns.usable, true);
      assert.equal(ns.lbaSize, 512);
      assert.equal(ns.nsze, BigInt((SIZE_MIB << 20) / 512));
    }
    assert.equal(ctrl.ioQueueCount, 2);
    t.diagnostic(`cntlid ${ctrl.cntlid}, maxTransfer ${ctrl.maxTransfer}, ioccsz ${ctrl.identify.ioccsz}, oncs 0x${ctrl.oncs.toString(16)}`);
  } finally {
    await ctrl.close();
  }
});

test('write/read back 512 B … 8 MiB, digests off', { timeout: 120_000 }, async (t) => {
  if (!prereq(t)) return;
  const ctrl = await Controller.connect(opts());
  try {
    await roundTrips(ctrl, 'no digests', t);
    const s = ctrl.stats();
    const commands = s.io.reduce((n, q) => n + q.commands, 0);
    assert.ok(s.io.every((q) => q.commands > 0), 'both I/O queues carried commands');
    t.diagnostic(`I/O commands ${commands}, errors ${s.io.reduce((n, q) => n + q.errors, 0)}`);
  } finally {
    await ctrl.close();
  }
});

test('write/read back 512 B … 8 MiB, header and data digests on', { timeout: 120_000 }, async (t) => {
  if (!prereq(t)) return;
  const ctrl = await Controller.connect(opts({ hdgst: true, ddgst: true }));
  try {
    await roundTrips(ctrl, 'hdgst+ddgst', t);
  } finally {
    await ctrl.close();
  }
});

test('SQ flow control disabled: the target completes reads with C2HData SUCCESS', { timeout: 60_000 }, async (t) => {
  if (!prereq(t)) return;
  const ctrl = await Controller.connect(opts({ disableSqFlowControl: true }));
  try {
    const s = ctrl.stats();
    assert.deepEqual([s.admin.sqFlowControl, ...s.io.map((q) => q.sqFlowControl)], [false, false, false]);
    const data = randomBytes(1 << 20);
    await ctrl.write(1, 40960n, data);
    assert.ok((await ctrl.read(1, 40960n, data.length / 512)).equals(data));
  } finally {
    await ctrl.close();
  }
});

test('flush, deallocate and write zeroes; the ranges read back as zeroes', { timeout: 60_000 }, async (t) => {
  if (!prereq(t)) return;
  const ctrl = await Controller.connect(opts());
  try {
    const dev = namespaceOf(ctrl, 1);
    assert.equal(dev.canTrim, true);
    assert.equal(dev.canFastZero, true);
    const base = 32 << 20;
    const len = 256 * 1024;
    await dev.write(base, Buffer.alloc(len, 0x5a), true);
    await dev.flush();
    await dev.writeZeroes(base, 64 * 1024, { mayDeallocate: false, fua: false, fastOnly: true });
    await dev.trim(base + 128 * 1024, 64 * 1024);
    const back = await dev.read(base, len);
    const expect = Buffer.alloc(len, 0x5a);
    expect.fill(0, 0, 64 * 1024);
    expect.fill(0, 128 * 1024, 192 * 1024);
    assert.ok(back.equals(expect), 'zeroed and deallocated ranges read as zeroes, the rest unchanged');
  } finally {
    await ctrl.close();
  }
});

test('an unknown subsystem NQN gives CONNECT_FAILED with the NVMe status', { timeout: 30_000 }, async (t) => {
  if (!prereq(t)) return;
  const err = await Controller.connect(opts({ subnqn: 'nqn.2014-08.org.nvmf-nbd:no-such-subsystem' })).then(
    () => assert.fail('connect should fail'),
    (e: unknown) => e,
  );
  assert.ok(err instanceof NvmfNbdError);
  assert.equal(err.code, ErrorCode.CONNECT_FAILED);
  assert.equal(err.status?.sct, 1);
  assert.equal(err.status?.sc, 0x82);
  assert.match(err.message, /Connect Invalid Parameters/);
  assert.match(err.message, /rejected the subsystem NQN/);
});

test('discovery (API): the log lists the subsystem; the override replaces the advertised address', { timeout: 30_000 }, async (t) => {
  if (!prereq(t)) return;
  const log = await discover({ traddr: '127.0.0.1', trsvcid: port, hostnqn: HOSTNQN, hostid: HOSTID, overrideTraddr: '127.0.0.1' });
  const e = log.entries.find((x) => x.subnqn === NQN);
  assert.ok(e !== undefined, `entries: ${log.entries.map((x) => x.subnqn).join(', ')}`);
  assert.equal(e.traddr, '127.0.0.1');
  assert.equal(e.trsvcid, '4420');
});

function runCli(args: string[], o: { untilJson?: boolean; timeoutMs: number }): Promise<{ code: number | null; signal: NodeJS.Signals | null; out: string; err: string; json?: unknown }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [MAIN, ...args], { env: { ...process.env, NVMF_NBD_STATE_DIR: stateDir }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    let json: unknown;
    const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`CLI timed out: ${out}\n${err}`)); }, o.timeoutMs);
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (o.untilJson === true && json === undefined) {
        try {
          json = JSON.parse(out);
          child.kill('SIGINT');
        } catch {
          // not complete yet
        }
      }
    });
    child.stderr.on('data', (d: Buffer) => { err += d.toString(); });
    child.on('exit', (code, signal) => { clearTimeout(timer); resolve({ code, signal, out, err, json }); });
  });
}

test('CLI: discover -o json lists the subsystem', { timeout: 60_000 }, async (t) => {
  if (!prereq(t)) return;
  const r = await runCli(['discover', '-t', 'tcp', '-a', '127.0.0.1', '-s', String(port), '-o', 'json'], { timeoutMs: 50_000 });
  assert.equal(r.code, 0, r.err);
  const log = JSON.parse(r.out) as { records: Array<{ subnqn: string; trtype: string }> };
  const rec = log.records.find((x) => x.subnqn === NQN);
  assert.ok(rec !== undefined, r.out);
  assert.equal(rec.trtype, 'tcp');
});

test('CLI: connect -o json prints the namespaces, then exits cleanly on SIGINT', { timeout: 60_000 }, async (t) => {
  if (!prereq(t)) return;
  const r = await runCli(['connect', '-t', 'tcp', '-a', '127.0.0.1', '-s', String(port), '-n', NQN, '-i', '1', '-o', 'json'], { untilJson: true, timeoutMs: 50_000 });
  assert.equal(r.code, 0, `signal ${String(r.signal)}: ${r.err}`);
  const d = r.json as { subnqn: string; namespaces: Array<{ nsid: number; size: number; usable: boolean }> };
  assert.equal(d.subnqn, NQN);
  assert.deepEqual(d.namespaces.map((n) => [n.nsid, n.size, n.usable]), [[1, SIZE_MIB << 20, true], [2, SIZE_MIB << 20, true]]);
});

test('CLI: connect to an unknown NQN fails with exit 1 and the code on stderr', { timeout: 60_000 }, async (t) => {
  if (!prereq(t)) return;
  const r = await runCli(['connect', '-a', '127.0.0.1', '-s', String(port), '-n', 'nqn.2014-08.org.nvmf-nbd:nope'], { timeoutMs: 50_000 });
  assert.equal(r.code, 1);
  assert.match(r.err, /NVMF_ERR_CONNECT_FAILED/);
  assert.match(r.err, /Connect Invalid Parameters/);
});
