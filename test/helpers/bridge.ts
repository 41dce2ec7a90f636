/**
 * Shared pieces of the bridge integration tests (`test/integration/bridge-*.test.ts`): open a
 * {@link ControllerSession} in front of an NVMe/TCP target, and one set of host-side real NBD
 * client checks (nbdinfo, qemu-io, nbdcopy, fio) that runs the same way against the embedded
 * target and against the Linux nvmet target in the QEMU guest.
 *
 * Every data check is confirmed through a second path that does not go through the bridge (the
 * target's backing store: a file for the embedded target, the guest's null_blk device for
 * nvmet), so a bridge that answers "ok" without moving the bytes cannot pass.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash, randomFillSync, randomUUID } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { ControllerSession, type NbdSpec, type SessionOptions } from '../../src/engine/session';
import { PduParser, PduType, parseSqe, AdminOpcode, IoOpcode, FabricsType } from '../../src/wire/index';
import { needCommands } from './prereq';

export const MiB = 1024 * 1024;

/** Outcome of {@link run}: exit status (-1 when killed or not started), captured output. */
export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * Run a host command asynchronously (the bridge serves from this same event loop, so a
 * synchronous exec would deadlock), killed after `timeoutMs`.
 */
export function run(cmd: string, args: readonly string[], timeoutMs = 60_000): Promise<RunResult> {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: timeoutMs, maxBuffer: 16 * MiB, killSignal: 'SIGKILL' }, (err, stdout, stderr) => {
      const c = (err as { code?: unknown } | null)?.code;
      const code = err === null ? 0 : typeof c === 'number' ? c : -1;
      resolve({ code, stdout: String(stdout), stderr: String(stderr) });
    });
  });
}

/** A fresh host identity, so parallel test files never look like one host to a target. */
export function hostIdentity(): { hostnqn: string; hostid: string } {
  const id = randomUUID();
  return { hostnqn: `nqn.2014-08.org.nvmexpress:uuid:${id}`, hostid: id };
}

/** Where the bridge dials, and how it serves. */
export interface BridgeOptions {
  /** Target port on 127.0.0.1. */
  trsvcid: number;
  subnqn: string;
  nbd: NbdSpec;
  /** Controller name (export prefix), default `nvme0`. */
  name?: string;
  /** I/O queues, default 2 (one per core of the test machines). */
  nrIoQueues?: number;
  /** Extra session options (attach, connections…). */
  extra?: Partial<SessionOptions>;
  /** Ask the controller to disable SQ flow control (`--disable-sqflow`). */
  disableSqFlowControl?: boolean;
}

/** Connect a controller to 127.0.0.1:trsvcid and serve its namespaces over NBD. */
export function openBridge(o: BridgeOptions): Promise<ControllerSession> {
  const id = hostIdentity();
  return ControllerSession.open({
    name: o.name ?? 'nvme0',
    controller: {
      traddr: '127.0.0.1',
      trsvcid: o.trsvcid,
      subnqn: o.subnqn,
      hostnqn: id.hostnqn,
      hostid: id.hostid,
      nrIoQueues: o.nrIoQueues ?? 2,
      // TCG guests stall for seconds at times; do not let a slow moment fail a command.
      ioTimeoutMs: 60_000,
      connectTimeoutMs: 30_000,
      ...(o.disableSqFlowControl === true ? { disableSqFlowControl: true } : {}),
    },
    nbd: o.nbd,
    ...o.extra,
  });
}

/** The libnbd/qemu URI of export `name` of a session. */
export function exportUri(s: ControllerSession, name: string): string {
  const e = s.exports.find((x) => x.name === name);
  if (e === undefined) throw new Error(`no export ${name} in ${s.exports.map((x) => x.name).join(', ')}`);
  const ep = e.endpoint;
  if ('unix' in ep) return `nbd+unix:///${name}?socket=${ep.unix}`;
  if ('tcp' in ep) return `nbd://${ep.tcp.host}:${ep.tcp.port}/${name}`;
  throw new Error(`export ${name} has no dialable endpoint`);
}

/** sha256 hex of a buffer. */
export function sha256(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

/** sha256 hex of `length` bytes all equal to `byte`. */
export function patternSha256(byte: number, length: number): string {
  return sha256(Buffer.alloc(length, byte));
}

/** One NVMe I/O command seen by {@link NvmeTap} (host → controller, I/O queues only). */
export interface TappedCommand {
  qid: number;
  opcode: number;
  nsid: number;
  cdw10: number;
  cdw11: number;
  cdw12: number;
}

/** Counts of the I/O commands that prove how NBD requests were mapped. */
export interface TapCounts {
  reads: number;
  writes: number;
  /** Writes with FUA (CDW12 bit 30). */
  fuaWrites: number;
  flushes: number;
  /** Dataset Management with the Deallocate attribute (CDW11 bit 2). */
  deallocates: number;
  writeZeroes: number;
}

/**
 * A TCP proxy on 127.0.0.1 in front of an NVMe/TCP target that forwards everything unchanged
 * and decodes the host → controller PDUs with the project's own parser, recording the I/O
 * commands. It shows what reached the NVMe side (FUA bit, Flush, Deallocate, Write Zeroes),
 * which neither the target's data nor the NBD counters can. Digests must be off.
 */
export class NvmeTap {
  /** I/O commands in arrival order (recording stops at 200 000: tests move little data). */
  readonly commands: TappedCommand[] = [];
  /** Connections whose PDU stream could not be decoded (their commands are missing). */
  parseErrors = 0;
  private readonly sockets = new Set<net.Socket>();

  private constructor(private readonly server: net.Server) {}

  /** Start a tap forwarding to 127.0.0.1:`port`. */
  static async start(port: number): Promise<NvmeTap> {
    let tap: NvmeTap | undefined;
    const server = net.createServer((c) => tap?.onClient(c, port));
    tap = new NvmeTap(server);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => resolve());
    });
    return tap;
  }

  /** The port the bridge should dial. */
  get port(): number {
    return (this.server.address() as net.AddressInfo).port;
  }

  /** Counts over `commands` (from index `since`). */
  counts(since = 0): TapCounts {
    const c: TapCounts = { reads: 0, writes: 0, fuaWrites: 0, flushes: 0, deallocates: 0, writeZeroes: 0 };
    for (const x of this.commands.slice(since)) {
      if (x.opcode === IoOpcode.READ) c.reads++;
      else if (x.opcode === IoOpcode.WRITE) {
        c.writes++;
        if ((x.cdw12 & (1 << 30)) !== 0) c.fuaWrites++;
      } else if (x.opcode === IoOpcode.FLUSH) c.flushes++;
      else if (x.opcode === IoOpcode.DATASET_MANAGEMENT && (x.cdw11 & 4) !== 0) c.deallocates++;
      else if (x.opcode === IoOpcode.WRITE_ZEROES) c.writeZeroes++;
    }
    return c;
  }

  private onClient(client: net.Socket, port: number): void {
    const upstream = net.connect(port, '127.0.0.1');
    this.sockets.add(client);
    this.sockets.add(upstream);
    const parser = new PduParser({ role: 'controller', maxData: 64 * MiB });
    let qid = -1;
    let failed = false;
    client.on('data', (d: Buffer) => {
      if (failed) return;
      try {
        parser.push(d, (pdu) => {
          if (pdu.type !== PduType.CAPSULE_CMD) return;
          const sqe = parseSqe(pdu.sqe);
          if (sqe.opcode === AdminOpcode.FABRICS && sqe.fctype === FabricsType.CONNECT) {
            qid = pdu.sqe.readUInt16LE(42);
            return;
          }
          if (qid <= 0) return;
          if (this.commands.length < 200_000) this.commands.push({ qid, opcode: sqe.opcode, nsid: sqe.nsid, cdw10: sqe.cdw10, cdw11: sqe.cdw11, cdw12: sqe.cdw12 });
        });
      } catch {
        failed = true;
        this.parseErrors++;
      }
    });
    client.pipe(upstream);
    upstream.pipe(client);
    const done = (): void => {
      client.destroy();
      upstream.destroy();
      this.sockets.delete(client);
      this.sockets.delete(upstream);
    };
    client.on('error', done).on('close', done);
    upstream.on('error', done).on('close', done);
  }

  /** Stop listening and drop every connection. */
  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

/** What {@link defineHostClientTests} needs from the test file once its `before` hook ran. */
export interface HostClientContext {
  /** The session whose export is checked (its NBD counters are asserted). */
  session: ControllerSession;
  /** Export name, e.g. `nvme0n1`. */
  exportName: string;
  /** Namespace size in bytes as the target configured it. */
  size: number;
  /** Logical block size of the namespace. */
  blockSize: number;
  /** A private scratch folder on the host. */
  scratchDir: string;
  /** sha256 hex of `[offset, offset + length)` read from the target's backing store, not through the bridge. */
  backingSha256(offset: number, length: number): Promise<string>;
  /** MiB of random data for the nbdcopy round trip. */
  copyMiB: number;
  /** MiB region for the fio verify run. */
  fioMiB: number;
  /** The tap between the bridge and the target, when the bridge dials through one. */
  tap?: NvmeTap;
}

/**
 * Register the host-side client tests for one bridge. `ctx()` returns the context (undefined
 * when the before hook could not set it up); `prereq(t)` is the file's own prerequisite check
 * (it skips, or fails under CI).
 */
export function defineHostClientTests(
  label: string,
  ctx: () => HostClientContext | undefined,
  prereq: (t: TestContext) => boolean,
  o: { /** Scale for per-test timeouts (TCG guests are slow), default 1. */ timeoutScale?: number } = {},
): void {
  const scale = o.timeoutScale ?? 1;
  const get = (t: TestContext, cmds: readonly string[]): HostClientContext | undefined => {
    if (!prereq(t) || !needCommands(t, cmds)) return undefined;
    const c = ctx();
    assert.ok(c !== undefined, 'the before hook did not set up the bridge');
    return c;
  };
  const stat = (c: HostClientContext) => {
    const s = c.session.stats().find((x) => x.name === c.exportName);
    assert.ok(s !== undefined, `no NBD stats for ${c.exportName}`);
    return s;
  };

  test(`${label}: nbdinfo shows the namespace size, block sizes and capabilities`, { timeout: 60_000 * scale }, async (t) => {
    const c = get(t, ['nbdinfo']);
    if (c === undefined) return;
    const uri = exportUri(c.session, c.exportName);
    const r = await run('nbdinfo', ['--json', uri]);
    assert.equal(r.code, 0, r.stderr);
    const e = (JSON.parse(r.stdout) as { exports: Array<Record<string, unknown>> }).exports[0];
    assert.ok(e !== undefined, r.stdout);
    assert.equal(e['export-name'], c.exportName);
    assert.equal(e['export-size'], c.size);
    assert.equal(e['block_size_minimum'], c.blockSize);
    assert.equal(e['block_size_preferred'], Math.max(4096, c.blockSize));
    assert.equal(e['block_size_maximum'], 32 * MiB);
    assert.equal(e['is_read_only'], false);
    for (const k of ['can_flush', 'can_fua', 'can_trim', 'can_zero', 'can_multi_conn']) assert.equal(e[k], true, k);
    // The documented exit status interface too: 0 = yes, 2 = no.
    for (const what of ['flush', 'fua', 'trim', 'zero', 'multi-conn']) {
      const q = await run('nbdinfo', ['--can', what, uri]);
      assert.equal(q.code, 0, `nbdinfo --can ${what}: ${q.stderr}`);
    }
    const ro = await run('nbdinfo', ['--is', 'read-only', uri]);
    assert.equal(ro.code, 2, `nbdinfo --is read-only: ${ro.stderr}`);
    // --list: the export is listed by name with the controller's description.
    const base = uri.replace(`/${c.exportName}`, '/');
    const l = await run('nbdinfo', ['--list', '--json', base]);
    assert.equal(l.code, 0, l.stderr);
    const names = (JSON.parse(l.stdout) as { exports: Array<{ 'export-name': string; description?: string }> }).exports;
    const mine = names.find((x) => x['export-name'] === c.exportName);
    assert.ok(mine !== undefined, l.stdout);
    const nsid = c.session.exports.find((x) => x.name === c.exportName)?.nsid;
    assert.match(mine.description ?? '', new RegExp(`nsid ${nsid}$`));
  });

  test(`${label}: qemu-io pattern write/read, FUA write, write zeroes, discard, flush`, { timeout: 90_000 * scale }, async (t) => {
    const c = get(t, ['qemu-io']);
    if (c === undefined) return;
    const uri = exportUri(c.session, c.exportName);
    const before = { ...stat(c) };
    const tapFrom = c.tap?.commands.length ?? 0;
    const base = 8 * MiB;
    const cmds = [
      `write -P 0xab ${base} 1M`,
      `read -P 0xab ${base} 1M`,
      `write -f -P 0xcd ${base + MiB} 256k`, // FUA
      `read -P 0xcd ${base + MiB} 256k`,
      `write -P 0x5a ${base + 2 * MiB} 128k`,
      `write -z ${base + 2 * MiB} 64k`, // WRITE_ZEROES
      `read -P 0 ${base + 2 * MiB} 64k`,
      `read -P 0x5a ${base + 2 * MiB + 65536} 64k`,
      `write -P 0x77 ${base + 3 * MiB} 1M`,
      `discard ${base + 3 * MiB} 1M`, // TRIM
      'flush',
    ];
    // qemu-io defaults to writethrough, which puts FUA on every write: writeback leaves FUA to `write -f`.
    const r = await run('qemu-io', ['-f', 'raw', '-t', 'writeback', uri, ...cmds.flatMap((x) => ['-c', x])], 60_000 * scale);
    assert.equal(r.code, 0, r.stderr);
    assert.doesNotMatch(r.stdout + r.stderr, /fail|error|pattern verification/i, r.stdout + r.stderr);
    const after = stat(c);
    assert.ok(after.trims > before.trims, 'discard reached the bridge as TRIM');
    assert.ok(after.zeroes > before.zeroes, 'write -z reached the bridge as WRITE_ZEROES');
    assert.ok(after.flushes > before.flushes, 'flush reached the bridge');
    assert.equal(after.errors, before.errors, 'no request failed');
    if (c.tap !== undefined) {
      // What reached the NVMe side: FUA bit on the FUA write only, Flush, Deallocate, Write Zeroes.
      const n = c.tap.counts(tapFrom);
      assert.equal(c.tap.parseErrors, 0, 'the tap decoded every PDU');
      assert.ok(n.fuaWrites >= 1, `NBD FUA became NVMe Write with FUA (${JSON.stringify(n)})`);
      assert.ok(n.fuaWrites < n.writes, `only the FUA write carries FUA (${JSON.stringify(n)})`);
      assert.ok(n.flushes >= 1, `NBD FLUSH became NVMe Flush (${JSON.stringify(n)})`);
      assert.ok(n.deallocates >= 1, `NBD TRIM became Dataset Management/Deallocate (${JSON.stringify(n)})`);
      assert.ok(n.writeZeroes >= 1, `NBD WRITE_ZEROES became NVMe Write Zeroes (${JSON.stringify(n)})`);
    }
    // The bytes are on the target, read without the bridge.
    assert.equal(await c.backingSha256(base, MiB), patternSha256(0xab, MiB), 'pattern 0xab on the target');
    assert.equal(await c.backingSha256(base + MiB, 256 * 1024), patternSha256(0xcd, 256 * 1024), 'FUA write on the target');
    assert.equal(await c.backingSha256(base + 2 * MiB, 65536), patternSha256(0, 65536), 'zeroed range on the target');
    assert.equal(await c.backingSha256(base + 2 * MiB + 65536, 65536), patternSha256(0x5a, 65536), 'range after the zeroes untouched');
  });

  test(`${label}: nbdcopy round trip of a random file`, { timeout: 120_000 * scale }, async (t) => {
    const c = get(t, ['nbdcopy']);
    if (c === undefined) return;
    const uri = exportUri(c.session, c.exportName);
    const n = c.copyMiB * MiB;
    const src = path.join(c.scratchDir, 'nbdcopy-src.bin');
    const dst = path.join(c.scratchDir, 'nbdcopy-dst.bin');
    const data = randomFillSync(Buffer.allocUnsafe(n));
    await fsp.writeFile(src, data);
    const want = sha256(data);
    try {
      // nbdcopy opens several connections when the server offers multi-conn.
      const up = await run('nbdcopy', ['--connections', '4', src, uri], 90_000 * scale);
      assert.equal(up.code, 0, up.stderr);
      assert.equal(await c.backingSha256(0, n), want, 'target content after upload');
      const down = await run('nbdcopy', ['--connections', '4', uri, dst], 90_000 * scale);
      assert.equal(down.code, 0, down.stderr);
      const back = await fsp.readFile(dst);
      assert.equal(back.length, c.size, 'nbdcopy downloads the whole export');
      assert.equal(sha256(back.subarray(0, n)), want, 'downloaded copy');
    } finally {
      await fsp.rm(src, { force: true });
      await fsp.rm(dst, { force: true });
    }
  });

  test(`${label}: fio --ioengine=nbd random writes verified`, { timeout: 120_000 * scale }, async (t) => {
    const c = get(t, ['fio']);
    if (c === undefined) return;
    const uri = exportUri(c.session, c.exportName);
    const n = c.fioMiB * MiB;
    const before = { ...stat(c) };
    const r = await run('fio', [
      '--name=bridge-verify',
      '--ioengine=nbd',
      `--uri=${uri}`,
      '--rw=randwrite',
      '--bs=4k',
      `--offset=${16 * MiB}`,
      `--size=${n}`,
      '--iodepth=16',
      '--verify=crc32c',
      '--do_verify=1',
      '--verify_state_save=0',
      '--output-format=json',
    ], 90_000 * scale);
    assert.equal(r.code, 0, r.stderr + r.stdout.slice(-2000));
    const out = JSON.parse(r.stdout.slice(r.stdout.indexOf('{'))) as {
      jobs: Array<{ error: number; write: { io_bytes: number }; read: { io_bytes: number } }>;
    };
    const job = out.jobs[0];
    assert.equal(job?.error, 0);
    assert.equal(job?.write.io_bytes, n);
    assert.equal(job?.read.io_bytes, n, 'everything written was read back and verified');
    const after = stat(c);
    assert.ok(after.bytesWritten - before.bytesWritten >= n, 'the writes went through the bridge');
    assert.equal(after.errors, before.errors, 'no request failed');
  });
}
