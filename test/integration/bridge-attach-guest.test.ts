/**
 * `connect --attach` for real: the bridge itself runs inside the QEMU guest (the host's `node`,
 * shared into the guest with its libraries, and this repo's built `dist/` at /host), dials the
 * guest's own nvmet on 127.0.0.1:4420, spawns the guest's `nbd-client` and gets a /dev/nbdX.
 * The test writes and reads a pattern through the device, checks it on the nvmet backing device,
 * then SIGTERMs the bridge and checks that the device is detached and the process exited 0.
 *
 * Two entry points run the same flow: the user's (`nvmf-nbd connect … --attach -o json`) and
 * the library's (`ControllerSession.open({ attach: true })`, what the verb is built on).
 * Slow under TCG (node starts in ~3 s there), but it is the real user path.
 */
import { before, after, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { need } from '../helpers/prereq';
import { Guest, guestAvailable, setupNvmet, shq } from '../helpers/guest';
import { MiB, hostIdentity } from '../helpers/bridge';

const NQN = 'nqn.2014-08.org.nvmf-nbd:bridge-attach-guest';
const SIZE_MIB = 32;
/** This repo (dist/test/integration → repo root), shared read-only as /host in the guest. */
const REPO = path.resolve(__dirname, '..', '..', '..');
const CLI = '/host/dist/src/cli/main.js';
const SESSION = '/host/dist/src/engine/session.js';

const avail = ((): { ok: boolean; reason: string } => {
  const a = guestAvailable();
  if (!a.ok) return a;
  if (!fs.existsSync(path.join(REPO, 'dist', 'src', 'cli', 'main.js'))) return { ok: false, reason: 'the project is not built (dist/src/cli/main.js)' };
  return a;
})();

let g: Guest | undefined;
let readyMs = 0;
const t0 = Date.now();
const backingDev = `$(cat ${shq(`/sys/kernel/config/nvmet/subsystems/${NQN}/namespaces/1/device_path`)})`;

before(async () => {
  if (!avail.ok) return;
  g = await Guest.start({ share: REPO });
  await setupNvmet(g, { subsystems: [{ nqn: NQN, namespaces: [{ nsid: 1, sizeMiB: SIZE_MIB }] }] });
  readyMs = Date.now() - t0;
}, { timeout: 300_000 });

after(async () => {
  // Stop any bridge still running (it detaches on SIGTERM); QEMU is killed right after anyway.
  await g?.exec('for f in /tmp/*.pid; do [ -f "$f" ] && kill -TERM "$(cat "$f")" 2>/dev/null; done; sleep 1; true', { timeoutMs: 20_000, check: false }).catch(() => undefined);
  await g?.stop();
}, { timeout: 120_000 });

/** What a bridge prints once ready: the controller and its exports (the `connect -o json` contract). */
interface ConnectJson {
  name: string;
  subnqn: string;
  exports: Array<{ name: string; nsid: number; size: number; blockSize: number; endpoint: string; device: string | null }>;
  /** NBD counters per export (ControllerSession.describe() has them; the verb's contract does not promise them). */
  nbd?: Array<{ name: string; connections: number }>;
}

/**
 * Start `cmd` in the background in the guest as job `job`: stdout → /tmp/<job>.out, stderr →
 * /tmp/<job>.err, the bridge's pid → /tmp/<job>.pid, its exit status → /tmp/<job>.rc.
 */
async function startJob(guest: Guest, job: string, cmd: string): Promise<void> {
  await guest.exec(
    `( ${cmd} >/tmp/${job}.out 2>/tmp/${job}.err </dev/null & echo $! >/tmp/${job}.pid; wait $!; echo $? >/tmp/${job}.rc ) >/dev/null 2>&1 &`,
  );
}

/** Poll until the job printed one complete JSON document (or exited: then fail with its stderr). */
async function waitJson(guest: Guest, job: string, ms: number): Promise<ConnectJson> {
  const end = Date.now() + ms;
  for (;;) {
    const { out } = await guest.exec(`cat /tmp/${job}.out; echo; echo @@RC; cat /tmp/${job}.rc 2>/dev/null; true`);
    const [doc = '', rc = ''] = out.split('\n@@RC\n');
    if (doc.trim() !== '') {
      try {
        return JSON.parse(doc.trim()) as ConnectJson;
      } catch {
        /* not complete yet */
      }
    }
    if (rc.trim() !== '' || Date.now() > end) {
      const err = await guest.exec(`cat /tmp/${job}.err; true`);
      assert.fail(`${job}: no JSON document ${rc.trim() !== '' ? `(exited with ${rc.trim()})` : `within ${ms} ms`}\nstdout: ${doc}\nstderr: ${err.out}`);
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
}

/** SIGTERM the job and wait for its exit status. */
async function stopJob(guest: Guest, job: string, ms: number): Promise<number> {
  await guest.exec(`kill -TERM "$(cat /tmp/${job}.pid)"`);
  const { out } = await guest.exec(
    `i=0; while [ ! -s /tmp/${job}.rc ] && [ $i -lt ${Math.ceil(ms / 200)} ]; do sleep 0.2; i=$((i+1)); done; cat /tmp/${job}.rc`,
    { timeoutMs: ms + 10_000, check: false },
  );
  const rc = Number(out.trim());
  if (!Number.isInteger(rc) || out.trim() === '') {
    const err = await guest.exec(`cat /tmp/${job}.err; true`);
    assert.fail(`${job} did not exit within ${ms} ms of SIGTERM\nstderr: ${err.out}`);
  }
  return rc;
}

/** The common checks on an attached export: size, I/O through /dev/nbdX, data on nvmet, detach on SIGTERM. */
async function checkAttachedAndStop(t: { diagnostic(s: string): void }, guest: Guest, job: string, doc: ConnectJson): Promise<void> {
  assert.equal(doc.name, 'nvme0');
  assert.equal(doc.subnqn, NQN);
  assert.equal(doc.exports.length, 1, JSON.stringify(doc.exports));
  const e = doc.exports[0]!;
  assert.equal(e.name, 'nvme0n1');
  assert.equal(e.nsid, 1);
  assert.equal(e.size, SIZE_MIB * MiB);
  assert.equal(e.blockSize, 512);
  assert.match(e.endpoint, /^(unix:\/|tcp:127\.0\.0\.1:\d+$)/);
  assert.ok(e.device !== null, 'the export is attached');
  assert.match(e.device, /^\/dev\/nbd\d+$/);
  const dev = e.device;
  const sys = `/sys/block/${path.basename(dev)}`;

  const info = await guest.exec(`blockdev --getsize64 ${dev}; cat ${sys}/size; test -e ${sys}/pid && echo attached`);
  assert.deepEqual(info.out.trim().split('\n'), [String(SIZE_MIB * MiB), String((SIZE_MIB * MiB) / 512), 'attached']);

  // 4 MiB of random data at 1 MiB through the device (O_DIRECT both ways), then the same bytes
  // on nvmet's own backing device, read without nbd or the bridge.
  const io = await guest.exec(
    [
      'set -e',
      'dd if=/dev/urandom of=/tmp/pattern bs=1M count=4 2>/dev/null',
      `dd if=/tmp/pattern of=${dev} bs=1M seek=1 oflag=direct conv=fsync 2>/dev/null`,
      'sha256sum < /tmp/pattern',
      `dd if=${dev} bs=1M skip=1 count=4 iflag=direct 2>/dev/null | sha256sum`,
      `dd if=${backingDev} bs=1M skip=1 count=4 iflag=direct 2>/dev/null | sha256sum`,
    ].join('\n'),
    { timeoutMs: 120_000 },
  );
  const [want, viaNbd, onTarget] = io.out.trim().split('\n').map((l) => l.split(/\s+/)[0]);
  assert.match(want ?? '', /^[0-9a-f]{64}$/);
  assert.equal(viaNbd, want, `read back through ${dev}`);
  assert.equal(onTarget, want, 'on the nvmet backing device');

  const ts = Date.now();
  const rc = await stopJob(guest, job, 60_000);
  t.diagnostic(`SIGTERM to exit ${Date.now() - ts} ms`);
  const err = await guest.exec(`cat /tmp/${job}.err; true`);
  assert.equal(rc, 0, `exit status after SIGTERM; stderr: ${err.out}`);
  const gone = await guest.exec(`cat ${sys}/size; test -e ${sys}/pid && echo attached || echo detached`);
  assert.deepEqual(gone.out.trim().split('\n'), ['0', 'detached'], `${dev} detached on exit`);
  // What was acknowledged is still on the target after the bridge is gone.
  const after = await guest.exec(`dd if=${backingDev} bs=1M skip=1 count=4 iflag=direct 2>/dev/null | sha256sum`);
  assert.equal(after.out.trim().split(/\s+/)[0], want, 'data on nvmet after the bridge exited');
}

test('nvmf-nbd connect --attach -o json in the guest: /dev/nbdX of the namespace, I/O, SIGTERM detaches and exits 0', { timeout: 300_000 }, async (t) => {
  if (!need(t, avail.ok, avail.reason)) return;
  assert.ok(g !== undefined, 'the before hook did not boot the guest');
  t.diagnostic(`guest boot + nvmet ready in ${readyMs} ms`);
  const ts = Date.now();
  // The nbd module is not loaded yet: the verb's attach loads it (modprobe) as a user's would.
  await startJob(
    g,
    'cli',
    `node ${CLI} connect -t tcp -a 127.0.0.1 -s 4420 -n ${shq(NQN)} --nbd unix:/run/nvmf-nbd-cli --attach -o json`,
  );
  const doc = await waitJson(g, 'cli', 150_000);
  t.diagnostic(`connect --attach ready (JSON printed) in ${Date.now() - ts} ms`);
  assert.match(doc.exports[0]?.endpoint ?? '', /^unix:\/run\/nvmf-nbd-cli\//);
  await checkAttachedAndStop(t, g, 'cli', doc);
});

test('ControllerSession.open({ attach: true, connections: 2 }) in the guest: same device checks, detach on SIGTERM', { timeout: 300_000 }, async (t) => {
  if (!need(t, avail.ok, avail.reason)) return;
  assert.ok(g !== undefined, 'the before hook did not boot the guest');
  const id = hostIdentity();
  const script = `
const { ControllerSession } = require(${JSON.stringify(SESSION)});
(async () => {
  const s = await ControllerSession.open({
    name: 'nvme0',
    controller: { traddr: '127.0.0.1', trsvcid: 4420, subnqn: ${JSON.stringify(NQN)}, hostnqn: ${JSON.stringify(id.hostnqn)}, hostid: ${JSON.stringify(id.hostid)}, nrIoQueues: 1 },
    nbd: { unixDir: '/run/nvmf-nbd-session' },
    attach: true,
    connections: 2,
  });
  process.stdout.write(JSON.stringify(s.describe()) + '\\n');
  const stop = () => s.close().then(() => process.exit(0), (e) => { console.error(e); process.exit(1); });
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
})().catch((e) => { console.error(e); process.exit(1); });
`;
  await g.exec(`cat > /tmp/session.js <<'EOF'\n${script}\nEOF`);
  const ts = Date.now();
  await startJob(g, 'session', 'node /tmp/session.js');
  const doc = await waitJson(g, 'session', 150_000);
  t.diagnostic(`session with attach ready in ${Date.now() - ts} ms`);
  assert.match(doc.exports[0]?.endpoint ?? '', /^unix:\/run\/nvmf-nbd-session\/nvme0\/nvme0n1\.sock$/);
  // nbd-client -C 2: the kernel holds two NBD connections to the export.
  const nbd = doc.nbd ?? [];
  assert.equal(nbd.find((x) => x.name === 'nvme0n1')?.connections, 2, JSON.stringify(nbd));
  await checkAttachedAndStop(t, g, 'session', doc);
});
