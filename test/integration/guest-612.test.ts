/**
 * Smoke test of the 6.12 rig guest (Debian 13 kernel + trixie user space): it boots, its
 * nvme-cli is 2.13, tlshd runs, and an nvmet port with TLS required can be configured with a PSK
 * in the kernel's .nvme keyring. Other tests build on this guest (`Guest.start({ kernel: '6.12' })`).
 */
import { before, after, test } from 'node:test';
import assert from 'node:assert/strict';
import { need } from '../helpers/prereq';
import { Guest, guestAvailable, insertGuestTlsKey, setupNvmet } from '../helpers/guest';

const NQN = 'nqn.2014-08.org.nvmf-nbd:guest-612';
const HOSTNQN = 'nqn.2014-08.org.nvmexpress:uuid:0f3e8a52-7b61-4d8e-9a55-2c4f3b1d9e01';
// 32 bytes of 0x11, hash 01 (made with `nvme gen-tls-key --secret 1111…`).
const KEY = 'NVMeTLSkey-1:01:ERERERERERERERERERERERERERERERERERERERERERHYIEm8:';

const avail = guestAvailable('6.12');
let g: Guest | undefined;

before(async () => {
  if (!avail.ok) return;
  g = await Guest.start({ kernel: '6.12', hostfwd: [{ hostPort: 0, guestPort: 4420 }] });
}, { timeout: 900_000 });

after(async () => {
  await g?.stop();
});

test('6.12 guest boots with nvme-cli 2.13, tlshd and a TLS-required nvmet port', { timeout: 120_000 }, async (t) => {
  if (!need(t, avail.ok, avail.reason)) return;
  const guest = g as Guest;
  assert.match((await guest.exec('uname -r')).out, /^6\.12\./);
  assert.match((await guest.exec('nvme version')).out, /nvme version 2\.13/);
  assert.match((await guest.exec('pidof tlshd')).out, /\d+/, `tlshd is not running:\n${(await guest.exec('cat /tmp/tlshd.log', { check: false })).out}`);
  const ins = await insertGuestTlsKey(guest, { key: KEY, hostnqn: HOSTNQN, subnqn: NQN, identity: 0 });
  assert.match(ins, /Inserted TLS key [0-9a-f]{8}/);
  await setupNvmet(guest, { subsystems: [{ nqn: NQN, namespaces: [{ nsid: 1, sizeMiB: 16 }] }], tls: 'required' });
  assert.equal((await guest.exec('cat /sys/kernel/config/nvmet/ports/4420/addr_treq')).out.trim(), 'required');
  assert.equal((await guest.exec('cat /sys/kernel/config/nvmet/ports/4420/addr_tsas')).out.trim(), 'tls1.3');
  const keys = (await guest.exec('keyctl show %:.nvme')).out;
  assert.match(keys, new RegExp(`psk: NVMe0R01 ${HOSTNQN} ${NQN}`));
});
