/**
 * Host identity rules (nvme-cli's): /etc/nvme files, else the DMI product UUID unless it is a
 * placeholder, else an HMAC of /etc/machine-id — all with fake files — and the gen-hostnqn /
 * show-hostnqn verbs with the paths injected through the environment.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createHmac } from 'node:crypto';
import { execFile } from 'node:child_process';
import { need, needCommands } from '../helpers/prereq';
import { DMI_PLACEHOLDER_UUIDS, deriveHostNqn, dmiUuidFrom, loadHostIdentity, machineIdUuid } from '../../src/controller/host-identity';

const MAIN = path.resolve(__dirname, '../../src/cli/main.js');
const MID_A = '0123456789abcdef0123456789abcdef';
const MID_B = 'fedcba9876543210fedcba9876543210';
const DMI = '4C4C4544-0042-3510-8054-B3C04F4A4C32';

function fake(files: Record<string, string>): { dir: string; etc: string; state: string; dmi: string; mid: string } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hostid-'));
  fs.mkdirSync(path.join(dir, 'etc'));
  for (const [k, v] of Object.entries(files)) fs.writeFileSync(path.join(dir, k), v);
  return { dir, etc: path.join(dir, 'etc'), state: path.join(dir, 'state'), dmi: path.join(dir, 'product_uuid'), mid: path.join(dir, 'machine-id') };
}

function load(f: ReturnType<typeof fake>): ReturnType<typeof loadHostIdentity> {
  return loadHostIdentity({ etcDir: f.etc, stateDir: f.state, dmiUuidFile: f.dmi, machineIdFile: f.mid });
}

test('identity: a real DMI product UUID gives the host NQN and ID (lower case), nothing is written', () => {
  const f = fake({ product_uuid: `${DMI}\n`, 'machine-id': `${MID_A}\n` });
  const id = load(f);
  assert.equal(id.hostnqn, `nqn.2014-08.org.nvmexpress:uuid:${DMI.toLowerCase()}`);
  assert.equal(id.hostid, DMI.toLowerCase());
  assert.match(id.source.hostnqn, /^dmi:/);
  assert.equal(fs.existsSync(f.state), false, 'a derived identity is recomputed, not stored');
});

test('identity: placeholder DMI UUIDs are skipped for the machine-id HMAC', () => {
  for (const p of DMI_PLACEHOLDER_UUIDS) {
    const f = fake({ product_uuid: p.toUpperCase(), 'machine-id': MID_A });
    const id = load(f);
    assert.equal(id.hostnqn, `nqn.2014-08.org.nvmexpress:uuid:${machineIdUuid(MID_A) as string}`, p);
    assert.match(id.source.hostnqn, /^machine-id:/);
  }
  assert.equal(dmiUuidFrom('not a uuid'), undefined);
});

test('identity: machine-id HMAC is systemd app-specific (HMAC-SHA256, v4 bits), stable, differs per machine, hides the id', () => {
  // Independent computation of sd_id128_get_machine_app_specific(NVME_HOSTNQN_ID).
  const h = createHmac('sha256', Buffer.from(MID_A, 'hex')).update(Buffer.from('c7f4618112be49328c83106f9dddd86b', 'hex')).digest();
  h[6] = ((h[6] as number) & 0x0f) | 0x40;
  h[8] = ((h[8] as number) & 0x3f) | 0x80;
  const hex = h.subarray(0, 16).toString('hex');
  const want = `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20, 32)}`;
  const a = load(fake({ 'machine-id': `${MID_A}\n` }));
  assert.equal(a.hostid, want);
  assert.equal(a.hostnqn, `nqn.2014-08.org.nvmexpress:uuid:${want}`);
  assert.equal(load(fake({ 'machine-id': MID_A })).hostnqn, a.hostnqn, 'same machine, same identity (reinstall)');
  const b = load(fake({ 'machine-id': MID_B }));
  assert.notEqual(b.hostnqn, a.hostnqn, 'two machines from one image differ');
  assert.equal(a.hostnqn.includes(MID_A.slice(0, 8)), false, 'the machine id does not leak');
  assert.equal(machineIdUuid('0'.repeat(32)), undefined);
  assert.equal(machineIdUuid('short'), undefined);
});

test('identity: /etc/nvme files win over DMI; a non-uuid hostnqn file gets a derived host ID', () => {
  const f = fake({ product_uuid: DMI, 'etc/hostnqn': 'nqn.2024-01.io.example:host1\n' });
  const id = load(f);
  assert.equal(id.hostnqn, 'nqn.2024-01.io.example:host1');
  assert.equal(id.hostid, DMI.toLowerCase());
  fs.writeFileSync(path.join(f.etc, 'hostid'), '11111111-2222-3333-4444-555555555555');
  assert.equal(load(f).hostid, '11111111-2222-3333-4444-555555555555');
});

test('identity: a previously kept (random) identity in the state dir is honoured over derivation', () => {
  const f = fake({ 'machine-id': MID_A });
  fs.mkdirSync(f.state);
  fs.writeFileSync(path.join(f.state, 'hostnqn'), 'nqn.2014-08.org.nvmexpress:uuid:aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee\n');
  const id = load(f);
  assert.equal(id.hostnqn, 'nqn.2014-08.org.nvmexpress:uuid:aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee');
  assert.equal(id.hostid, 'aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee');
});

function cli(argv: string[], env: Record<string, string>): Promise<{ code: number; out: string; err: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [MAIN, ...argv], { env: { ...process.env, ...env }, timeout: 8000 }, (error, stdout, stderr) => {
      resolve({ code: error === null ? 0 : (error as { code?: number }).code ?? -1, out: stdout, err: stderr });
    });
  });
}

test('gen-hostnqn / show-hostnqn: same derivation through the CLI; show-hostnqn prefers /etc/nvme/hostnqn', async () => {
  const f = fake({ 'machine-id': MID_B });
  const env = { NVMF_NBD_NVME_DIR: f.etc, NVMF_NBD_STATE_DIR: f.state, NVMF_NBD_DMI_UUID: f.dmi, NVMF_NBD_MACHINE_ID: f.mid };
  const want = deriveHostNqn({ dmiUuidFile: f.dmi, machineIdFile: f.mid })?.hostnqn;
  const g = await cli(['gen-hostnqn'], env);
  assert.equal(g.code, 0, g.err);
  assert.equal(g.out.trim(), want);
  const s = await cli(['show-hostnqn', '-o', 'json'], env);
  assert.equal(s.code, 0, s.err);
  const j = JSON.parse(s.out) as { hostnqn: string; hostid: string; source: { hostnqn: string } };
  assert.equal(j.hostnqn, want);
  assert.match(j.source.hostnqn, /^machine-id:/);
  fs.writeFileSync(path.join(f.etc, 'hostnqn'), 'nqn.2024-01.io.example:pinned\n');
  assert.equal((await cli(['show-hostnqn'], env)).out.trim(), 'nqn.2024-01.io.example:pinned');
  const stray = await cli(['show-hostnqn', 'extra'], env);
  assert.equal(stray.code, 2);
  assert.match(stray.err, /unexpected argument 'extra'.*CLI_ERR_USAGE/);
});

test('identity: the machine-id derivation equals systemd-id128 machine-id --app-specific (nvme-cli app id)', async (t) => {
  if (!needCommands(t, ['systemd-id128'])) return;
  if (!need(t, fs.existsSync('/etc/machine-id') && machineIdUuid(fs.readFileSync('/etc/machine-id', 'utf8')) !== undefined, 'no /etc/machine-id')) return;
  const r = await new Promise<string>((resolve, reject) => execFile('systemd-id128', ['machine-id', '--app-specific=c7f4618112be49328c83106f9dddd86b', '-u'], (e, out) => (e !== null ? reject(e) : resolve(out))));
  assert.equal(machineIdUuid(fs.readFileSync('/etc/machine-id', 'utf8')), r.trim());
});
