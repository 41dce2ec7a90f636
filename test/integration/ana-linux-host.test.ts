/**
 * The Linux kernel host with native NVMe multipath (6.12 guest, nvme-cli 2.13) against the
 * embedded target over two ports (issue 12 item 7): one subsystem, two controllers, ONE
 * multipath namespace whose per-path ANA states are the ones the target reports; after
 * `setAnaState` on a port the kernel's path state follows (ANA change AEN → it re-reads the ANA
 * log), and I/O keeps working through the other path (which the target's per-port counters
 * show). One guest boot for all cases.
 */
import { strict as assert } from 'node:assert';
import { after, before, describe, it } from 'node:test';
import { Guest, GUEST_HOST_ALIAS, guestAvailable } from '../helpers/guest';
import { need } from '../helpers/prereq';
import { NvmeTarget, type TargetPortInfo } from '../../src/embedded-target';

const NQN = 'nqn.2014-08.org.nvmf-nbd:ana-linux-host';
const HOSTNQN = 'nqn.2014-08.org.nvmexpress:uuid:3b0f2d9a-6c1e-4f7a-8d25-91e4c7a0b612';
const HOSTID = '3b0f2d9a-6c1e-4f7a-8d25-91e4c7a0b612';
/** Guest-side ports of the two paths (guestfwd 10.0.2.100:P → the target's host ports). */
const GP1 = 4420;
const GP2 = 4421;
const NS_BYTES = 64 << 20;

/** One path as the guest kernel sees it. */
interface GuestPath {
  ctrl: string;
  trsvcid: number;
  disk: string;
  state: string;
  grpid: number;
}

/** [grpid, state] of every ANA group descriptor in nvme-cli's JSON (found by key, whatever the nesting). */
function anaGroups(v: unknown): Array<[number, string]> {
  const out: Array<[number, string]> = [];
  const walk = (x: unknown): void => {
    if (Array.isArray(x)) { x.forEach(walk); return; }
    if (x === null || typeof x !== 'object') return;
    const o = x as Record<string, unknown>;
    const id = Object.keys(o).find((k) => /^(ana_?)?gr(ou)?p_?id$/i.test(k));
    const st = Object.keys(o).find((k) => /state/i.test(k));
    if (id !== undefined && st !== undefined) out.push([Number(o[id]), String(o[st]).toLowerCase().replace(/[_ ]/g, '-')]);
    else Object.values(o).forEach(walk);
  };
  walk(v);
  return out;
}

describe('ANA: Linux native multipath host (6.12 guest) over two ports of the embedded target', { timeout: 1_200_000 }, () => {
  const avail = guestAvailable('6.12');
  let target: NvmeTarget | undefined;
  let guest: Guest | undefined;
  const logs: string[] = [];
  /** Case 1 connected both paths: later cases build on it and fail at once without it. */
  let connected = false;

  before(async () => {
    if (!avail.ok) return;
    target = new NvmeTarget({
      ports: [
        { id: 1, host: '127.0.0.1', port: 0, advertise: { host: GUEST_HOST_ALIAS, port: GP1 } },
        // Port 2 starts non-optimized for group 1: the kernel must read that from the log.
        { id: 2, host: '127.0.0.1', port: 0, advertise: { host: GUEST_HOST_ALIAS, port: GP2 }, ana: [{ group: 1, state: 'non-optimized' }] },
      ],
      subsystems: [{
        nqn: NQN,
        namespaces: [
          { nsid: 1, sizeBytes: NS_BYTES, backing: { memory: true }, anaGroup: 1 },
          { nsid: 2, sizeBytes: 16 << 20, backing: { memory: true }, anaGroup: 2 },
        ],
      }],
      log: (level, msg) => logs.push(`${level}: ${msg}`),
    });
    await target.listen();
    const [a, b] = target.ports() as [TargetPortInfo, TargetPortInfo];
    guest = await Guest.start({ kernel: '6.12', guestfwd: [{ guestPort: GP1, hostPort: a.port }, { guestPort: GP2, hostPort: b.port }] });
    await guest.exec('modprobe nvme-tcp && test -e /dev/nvme-fabrics');
  });

  after(async () => {
    await guest?.stop();
    await target?.close();
  });

  /** The multipath head disk of `nsid` (the kernel numbers heads in scan order, not by NSID). */
  let heads: Record<number, string> = {};
  async function findHeads(g: Guest): Promise<Record<number, string>> {
    const r = await g.exec('for d in /sys/block/nvme*n*; do case ${d##*/} in *c*) continue;; esac; echo "$(cat $d/nsid) ${d##*/}"; done');
    return Object.fromEntries(r.out.trim().split('\n').map((l) => l.split(' ')).map(([n, d]) => [Number(n), d as string]));
  }

  /** Every path of namespace `nsid`: controller, its trsvcid, path disk, ana_state, ana_grpid. */
  async function paths(g: Guest, nsid = 1): Promise<GuestPath[]> {
    const r = await g.exec([
      'for c in /sys/class/nvme/nvme*; do',
      '  n=$(basename $c); a=$(cat $c/address)',
      `  for p in $c/nvme*c*n*; do [ -e $p/ana_state ] && [ "$(cat $p/nsid)" = ${nsid} ] || continue`,
      '    echo "$n|$a|$(basename $p)|$(cat $p/ana_state)|$(cat $p/ana_grpid)"',
      '  done',
      'done',
    ].join('\n'));
    return r.out.trim().split('\n').filter((l) => l.includes('|')).map((l) => {
      const [ctrl, addr, disk, state, grpid] = l.split('|') as [string, string, string, string, string];
      const m = /trsvcid=(\d+)/.exec(addr);
      return { ctrl, trsvcid: Number(m?.[1] ?? 0), disk, state, grpid: Number(grpid) };
    }).sort((x, y) => x.trsvcid - y.trsvcid);
  }

  /** Poll (no fixed sleep) until the paths' states are `want` (by guest port), up to 120 s. */
  async function waitStates(g: Guest, want: Record<number, string>): Promise<GuestPath[]> {
    let last: GuestPath[] = [];
    for (let i = 0; i < 600; i++) {
      last = await paths(g);
      if (last.length === Object.keys(want).length && last.every((p) => want[p.trsvcid] === p.state)) return last;
      await g.exec('sleep 0.2');
    }
    const dmesg = (await g.exec('dmesg | tail -30', { check: false })).out;
    assert.fail(`path states ${JSON.stringify(last)} never became ${JSON.stringify(want)}\n${dmesg}`);
  }

  /** sha256 of what each writeVerify wrote, by its first MiB. */
  const written = new Map<number, { mib: number; sha: string }>();

  /** sha256 of `mib` MiB at `skipMiB` of namespace 1, read uncached through the multipath disk. */
  async function readSha(g: Guest, skipMiB: number, mib: number): Promise<string> {
    return (await g.exec(`dd if=/dev/${heads[1]} bs=1M skip=${skipMiB} count=${mib} iflag=direct 2>/dev/null | sha256sum | cut -d" " -f1`, { timeoutMs: 180_000 })).out.trim();
  }

  /** Write `mib` MiB of fresh random data at `seekMiB` through the multipath disk, read it back uncached, compare. */
  async function writeVerify(g: Guest, seekMiB: number, mib: number): Promise<void> {
    const r = await g.exec([
      'set -e',
      `dd if=/dev/urandom of=/tmp/w bs=1M count=${mib} 2>/dev/null`,
      `dd if=/tmp/w of=/dev/${heads[1]} bs=1M seek=${seekMiB} oflag=direct conv=fsync 2>/dev/null`,
      `dd if=/dev/${heads[1]} bs=1M skip=${seekMiB} count=${mib} iflag=direct 2>/dev/null | sha256sum | cut -d" " -f1`,
      'sha256sum /tmp/w | cut -d" " -f1',
    ].join('\n'), { timeoutMs: 180_000 });
    const [got, want] = r.out.trim().split('\n');
    assert.ok(want !== undefined && want.length === 64, r.out);
    assert.equal(got, want, 'read back through the multipath disk what was written');
    written.set(seekMiB, { mib, sha: want });
  }

  function portIo(id: number): TargetPortInfo['io'] {
    return target!.ports().find((p) => p.id === id)!.io;
  }

  it('nvme connect over two ports: one subsystem, two controllers, one multipath namespace each, ANA states as set', async (t) => {
    if (!need(t, avail.ok, avail.reason)) return;
    const g = guest!;
    assert.equal((await g.exec('cat /sys/module/nvme_core/parameters/multipath')).out.trim(), 'Y', 'native multipath on (CONFIG_NVME_MULTIPATH)');
    for (const port of [GP1, GP2]) {
      await g.exec(`nvme connect -t tcp -a ${GUEST_HOST_ALIAS} -s ${port} -n ${NQN} -q ${HOSTNQN} -I ${HOSTID}`, { timeoutMs: 90_000 });
    }
    await g.exec('i=0; while [ ! -b /dev/nvme0n1 ] || [ ! -b /dev/nvme0n2 ]; do i=$((i+1)); [ $i -gt 600 ] && { ls /dev; dmesg | tail -30; exit 1; }; sleep 0.1; done', { timeoutMs: 90_000 });
    const subsys = (await g.exec('ls -d /sys/class/nvme-subsystem/nvme-subsys*')).out.trim().split('\n');
    assert.equal(subsys.length, 1, `one subsystem: ${subsys.join(' ')}`);
    const s = subsys[0]!;
    assert.equal((await g.exec(`cat ${s}/subsysnqn`)).out.trim(), NQN);
    const ctrls = (await g.exec(`ls ${s} | grep -E '^nvme[0-9]+$'`)).out.trim().split('\n');
    assert.equal(ctrls.length, 2, `two controllers (paths) in the subsystem: ${ctrls.join(' ')}`);
    // One block device per namespace (the multipath head), none per path.
    const disks = (await g.exec('ls /sys/block | grep ^nvme')).out.trim().split('\n');
    assert.deepEqual(disks.filter((d) => /^nvme\d+n\d+$/.test(d)).sort(), ['nvme0n1', 'nvme0n2'], `block devices: ${disks.join(' ')}`);
    heads = await findHeads(g);
    assert.deepEqual(Object.keys(heads).sort(), ['1', '2'], `one head per NSID: ${JSON.stringify(heads)}`);
    assert.equal((await g.exec(`cat /sys/block/${heads[1]}/size`)).out.trim(), String(NS_BYTES / 512));
    const cntlids = (await g.exec(`for c in ${ctrls.map((c) => `/sys/class/nvme/${c}`).join(' ')}; do cat $c/cntlid; done`)).out.trim().split('\n');
    assert.equal(new Set(cntlids).size, 2, `distinct cntlids ${cntlids.join(',')}`);
    const p = await waitStates(g, { [GP1]: 'optimized', [GP2]: 'non-optimized' });
    assert.deepEqual(p.map((x) => x.grpid), [1, 1], 'ana_grpid from Identify Namespace');
    assert.equal(target!.ports().reduce((n, x) => n + x.controllers, 0), 2, 'two controllers on the target');
    // nvme-cli's view: two live paths with their ANA states.
    const ls = (await g.exec(`nvme list-subsys /dev/${heads[1]}`)).out;
    assert.match(ls, new RegExp(`trsvcid=${GP1}.*live.*optimized`));
    assert.match(ls, new RegExp(`trsvcid=${GP2}.*live.*non-optimized`));
    assert.equal((ls.match(/ \+- nvme\d+ tcp/g) ?? []).length, 2, ls);
    const ana = (await g.exec(`nvme ana-log /dev/${p[1]!.ctrl} -o json`)).out;
    t.diagnostic(`nvme ana-log via port 2: ${ana.replace(/\s+/g, ' ')}`);
    assert.deepEqual(anaGroups(JSON.parse(ana.slice(ana.indexOf('{')))), [[1, 'non-optimized'], [2, 'optimized']], `nvme ana-log through port 2: ${ana}`);
    const before = portIo(1);
    await writeVerify(g, 0, 8);
    assert.ok(portIo(1).writeCommands > before.writeCommands, 'iopolicy numa: I/O on the optimized path (port 1)');
    connected = true;
  });

  it('setAnaState(port 1, inaccessible) + port 2 optimized: the kernel follows through the ANA AEN; I/O moves to port 2', async (t) => {
    if (!need(t, avail.ok, avail.reason)) return;
    const g = guest!;
    assert.ok(connected, 'the first case did not connect both paths');
    target!.setAnaState(1, 1, 'inaccessible');
    target!.setAnaState(2, 1, 'optimized');
    await waitStates(g, { [GP1]: 'inaccessible', [GP2]: 'optimized' });
    const p1 = portIo(1);
    const p2 = portIo(2);
    await writeVerify(g, 8, 8);
    assert.equal(portIo(1).writeCommands, p1.writeCommands, 'no write executed through the inaccessible port');
    assert.equal(portIo(1).readCommands, p1.readCommands, 'no read executed through the inaccessible port');
    assert.ok(portIo(2).writeCommands > p2.writeCommands && portIo(2).readCommands > p2.readCommands, 'port 2 carried the I/O');
    // Group 2 (namespace 2) was never touched: still optimized on both paths.
    assert.deepEqual((await paths(g, 2)).map((x) => [x.state, x.grpid]), [['optimized', 2], ['optimized', 2]]);
  });

  it('persistent loss on port 2 and port 1 back: the kernel follows again and the data written before is intact', async (t) => {
    if (!need(t, avail.ok, avail.reason)) return;
    const g = guest!;
    assert.ok(connected, 'the first case did not connect both paths');
    target!.setAnaState(1, 1, 'optimized');
    target!.setAnaState(2, 1, 'persistent-loss');
    await waitStates(g, { [GP1]: 'optimized', [GP2]: 'persistent-loss' });
    const p2 = portIo(2);
    await writeVerify(g, 16, 4);
    assert.equal(portIo(2).writeCommands, p2.writeCommands, 'nothing through the persistent-loss port');
    // Everything written so far, through whichever path, reads back through port 1 now.
    for (const [seek, w] of written) assert.equal(await readSha(g, seek, w.mib), w.sha, `data at ${seek} MiB intact`);
    target!.setAnaState(2, 1, 'optimized');
    await waitStates(g, { [GP1]: 'optimized', [GP2]: 'optimized' });
    assert.equal(written.size, 3);
    const d = await g.exec(`nvme disconnect -n ${NQN}`, { timeoutMs: 60_000 });
    assert.match(d.out, /disconnected 2 controller/);
  });

  it('nvme connect-all through the discovery log finds both ports (one entry per port) and connects both paths', async (t) => {
    if (!need(t, avail.ok, avail.reason)) return;
    const g = guest!;
    assert.ok(connected, 'the first case did not connect both paths');
    const disc = (await g.exec(`nvme discover -t tcp -a ${GUEST_HOST_ALIAS} -s ${GP1} -q ${HOSTNQN}`, { timeoutMs: 60_000 })).out;
    assert.equal((disc.match(new RegExp(`subnqn:\\s+${NQN.replace(/\./g, '\\.')}`, 'g')) ?? []).length, 2, disc);
    t.diagnostic(`nvme discover: ${disc.replace(/\s+/g, ' ')}`);
    // Each entry: its port id, then that port's advertised service id.
    assert.match(disc, new RegExp(`portid:\\s+1\\s+trsvcid:\\s+${GP1}\\s`));
    assert.match(disc, new RegExp(`portid:\\s+2\\s+trsvcid:\\s+${GP2}\\s`));
    await g.exec(`nvme connect-all -t tcp -a ${GUEST_HOST_ALIAS} -s ${GP1} -q ${HOSTNQN} -I ${HOSTID}`, { timeoutMs: 120_000 });
    await waitStates(g, { [GP1]: 'optimized', [GP2]: 'optimized' });
    heads = await findHeads(g);
    for (const [seek, w] of written) assert.equal(await readSha(g, seek, w.mib), w.sha, `data at ${seek} MiB intact after reconnecting`);
    const d = await g.exec(`nvme disconnect -n ${NQN}`, { timeoutMs: 60_000 });
    assert.match(d.out, /disconnected 2 controller/);
    assert.ok(!logs.some((l) => l.startsWith('error:')), `no protocol errors on the target:\n${logs.filter((l) => l.startsWith('error:')).join('\n')}`);
  });
});
