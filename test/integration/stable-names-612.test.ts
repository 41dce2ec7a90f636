/**
 * Stable names on the 6.12 guest (Debian 13 user space: nvme-cli 2.13, nbd-client 3.26.1).
 *
 * Measured here: Debian 13's nbd-client 3.26.1 has no `-i` either (getopt string
 * "-B:b:c:d:gH:hlnN:PpRSst:uVxy:LA:C:F:K:", "unrecognized option '-i'"), like Debian 12's 3.24:
 * no packaged nbd-client sends the kernel's NBD_ATTR_BACKEND_IDENTIFIER, and Node cannot speak
 * generic netlink itself, so /sys/block/nbdX/backend exists (netlink connect) but stays empty.
 * What this file checks (one daemon inside the guest — node under TCG is slow — attaching a
 * namespace of the guest's own nvmet through src/attach/nbd-client.ts):
 *
 *   - the real nbd-client answers `-i` the way the probe reads as "unsupported";
 *   - the `-i` code path: an nbd-client on PATH that accepts `-i` (a shim recording its
 *     arguments, then running the real nbd-client without `-i`) is probed once and gets
 *     `-i nvmf-nbd-<stable id>` on attach; the real nbd-client then attaches over netlink,
 *     /sys/block/nbdX/backend exists and is empty, the daemon's udev-less by-id link names the
 *     device, the udev helper (udev/nvmf-nbd-id) falls back to that link (and names nothing
 *     without it), data written through /dev/nbdX reads back, disconnect releases all.
 * (The fallback with the real 3.24 on the 6.1 guest: test/integration/fleet-linux-guest.)
 */
import { before, after, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { need } from '../helpers/prereq';
import { Guest, guestAvailable, setupNvmet, shq } from '../helpers/guest';

const REPO = path.resolve(__dirname, '..', '..', '..');
const NQN = 'nqn.2014-08.org.nvmf-nbd:stable-names-612';
const HOSTNQN = 'nqn.2014-08.org.nvmexpress:uuid:5b1e2c3d-4f50-4a61-8b72-9c8d7e6f5a41';
const HOSTID = '5b1e2c3d-4f50-4a61-8b72-9c8d7e6f5a41';
const GCLI = '/host/dist/src/cli/main.js';
const ENV = 'NVMF_NBD_STATE_DIR=/tmp/st NVMF_NBD_NVME_DIR=/tmp/etc-nvme PATH=/host-node:$PATH';
/** An nbd-client that knows `-i`: records its arguments, runs the real one without `-i ID`. */
const SHIM = `#!/bin/sh
echo "$*" >>/tmp/shim/args
if [ "$1" = -i ] && [ $# -eq 2 ]; then echo "nbd-client: no host given" >&2; exit 1; fi
n=$#; i=0; skip=0
for a in "$@"; do
  i=$((i+1))
  if [ $skip = 1 ]; then skip=0; continue; fi
  if [ "$a" = -i ]; then skip=1; continue; fi
  set -- "$@" "$a"
done
shift $n
exec /usr/sbin/nbd-client "$@"
`;

const avail = guestAvailable('6.12');
let g: Guest | undefined;

before(async () => {
  if (!avail.ok || !fs.existsSync(path.join(REPO, 'dist', 'src', 'cli', 'main.js'))) return;
  g = await Guest.start({ kernel: '6.12', share: REPO });
  // The 6.12 guest's init mounts only the repository share; the host's node is the second one.
  await g.exec('mkdir -p /host-node && (mountpoint -q /host-node || mount -t 9p -o trans=virtio,version=9p2000.L,ro hostnode /host-node) && /host-node/node --version');
  await setupNvmet(g, { subsystems: [{ nqn: NQN, namespaces: [{ nsid: 1, sizeMiB: 32 }] }] });
  await g.exec(`mkdir -p /tmp/shim /tmp/etc-nvme && printf '%s' ${shq(SHIM)} > /tmp/shim/nbd-client && chmod 755 /tmp/shim/nbd-client`);
}, { timeout: 900_000 });

after(async () => {
  await g?.stop();
});

interface Export { device: string; ids: { uuid?: string }; stableId: string; link: string }

/** Start a daemon in the guest (PATH prefix `pathPrefix`), connect+attach, return its export. */
async function attachOnce(guest: Guest, pathPrefix: string): Promise<Export> {
  const env = `${ENV.replace('PATH=', `PATH=${pathPrefix}`)}`;
  await guest.exec(`rm -f /tmp/gd.out; ( ${env} node ${GCLI} daemon --no-config >/tmp/gd.out 2>/tmp/gd.err </dev/null & echo $! >/tmp/gd.pid ) >/dev/null 2>&1 &`);
  await guest.exec('i=0; while ! grep -q "daemon ready" /tmp/gd.out 2>/dev/null && [ $i -lt 1500 ]; do sleep 0.2; i=$((i+1)); done; grep -q "daemon ready" /tmp/gd.out || { cat /tmp/gd.err; exit 1; }', { timeoutMs: 330_000 });
  const c = await guest.exec(`${env} node ${GCLI} connect -t tcp -a 127.0.0.1 -s 4420 -n ${NQN} -q ${HOSTNQN} -I ${HOSTID} -i 1 --attach -o json`, { timeoutMs: 240_000, check: false });
  assert.equal(c.code, 0, `${c.out}\n${(await guest.exec('cat /tmp/gd.err', { check: false })).out}`);
  const l = await guest.exec(`${env} node ${GCLI} list -o json`, { timeoutMs: 120_000 });
  const ex = (JSON.parse(l.out) as { controllers: Array<{ exports: Export[] }> }).controllers[0]?.exports[0];
  assert.ok(ex !== undefined, l.out);
  assert.match(ex.device, /^\/dev\/nbd\d+$/);
  assert.match(ex.stableId, /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
  assert.equal(ex.stableId, ex.ids.uuid);
  assert.equal(ex.link, `/tmp/st/by-id/nvmf-nbd-${ex.stableId}`);
  assert.equal((await guest.exec(`readlink ${shq(ex.link)}`)).out.trim(), ex.device);
  // Data through the kernel device reaches the namespace and comes back.
  const io = await guest.exec([
    'set -e',
    'dd if=/dev/urandom of=/tmp/pat bs=64k count=16 2>/dev/null',
    `dd if=/tmp/pat of=${ex.device} bs=64k oflag=direct 2>/dev/null`,
    `dd if=${ex.device} of=/tmp/back bs=64k count=16 iflag=direct 2>/dev/null`,
    'cmp /tmp/pat /tmp/back && echo same',
  ].join('\n'), { timeoutMs: 180_000 });
  assert.match(io.out, /^same$/m);
  return ex;
}

/** Disconnect, check the link and the device are released, stop the daemon. */
async function detachAndStop(guest: Guest, ex: Export): Promise<void> {
  const d = await guest.exec(`${ENV} node ${GCLI} disconnect -n ${NQN}`, { timeoutMs: 120_000 });
  assert.match(d.out, /disconnected 1 controller/);
  assert.equal((await guest.exec('ls /tmp/st/by-id/; true')).out.trim(), '');
  assert.equal((await guest.exec(`cat /sys/block/${path.basename(ex.device)}/size`)).out.trim(), '0');
  await guest.exec('kill $(cat /tmp/gd.pid); i=0; while kill -0 $(cat /tmp/gd.pid) 2>/dev/null && [ $i -lt 300 ]; do sleep 0.2; i=$((i+1)); done; ! kill -0 $(cat /tmp/gd.pid) 2>/dev/null', { timeoutMs: 90_000 });
}

test('6.12 guest: real nbd-client 3.26.1 has no -i; the -i code path passes nvmf-nbd-<id>; backend empty, by-id link, udev helper fallback; data moves', { timeout: 600_000 }, async (t) => {
  if (!need(t, avail.ok && g !== undefined, avail.ok ? 'dist/ not built' : avail.reason)) return;
  const guest = g as Guest;
  const probe = await guest.exec('nbd-client -i nvmf-nbd-probe 2>&1; true');
  // What src/attach/nbd-client.ts reads as "no -i" (update this file when Debian's gains it).
  assert.match(probe.out, /unrecognized option|invalid option/, probe.out);
  await guest.exec('rm -f /tmp/shim/args');
  const ex = await attachOnce(guest, '/tmp/shim:');
  const args = (await guest.exec('cat /tmp/shim/args')).out.trim().split('\n');
  // The probe first (once per daemon), then the attach with the identifier.
  assert.equal(args[0], '-i nvmf-nbd-probe');
  const attachLine = args.find((a) => a.includes(ex.device));
  assert.ok(attachLine !== undefined, args.join('\n'));
  assert.match(attachLine, new RegExp(` -i nvmf-nbd-${ex.stableId}( |$)`));
  const sys = `/sys/block/${path.basename(ex.device)}`;
  // The real nbd-client connected over netlink (the attribute exists) without an identifier.
  assert.equal((await guest.exec(`test -e ${sys}/backend && echo "[$(cat ${sys}/backend)]"`)).out.trim(), '[]');
  // The udev helper: nothing in backend, so the daemon's link names the device.
  const h = await guest.exec(`NVMF_NBD_STATE_DIR=/tmp/st sh /host/udev/nvmf-nbd-id ${sys}`);
  assert.equal(h.out.trim(), `NVMF_NBD_ID=${ex.stableId}`);
  const none = await guest.exec(`mkdir -p /tmp/empty-st && NVMF_NBD_STATE_DIR=/tmp/empty-st sh /host/udev/nvmf-nbd-id ${sys}; true`);
  assert.doesNotMatch(none.out, /NVMF_NBD_ID=./, 'without backend or link the helper must name nothing');
  // udev itself: record whether this guest could run the real rule (its root has no udevd).
  const udevd = await guest.exec('command -v udevadm || ls /usr/lib/systemd/systemd-udevd 2>/dev/null || echo none', { check: false });
  t.diagnostic(`6.12 guest udevd: ${udevd.out.trim()}`);
  await detachAndStop(guest, ex);
});
