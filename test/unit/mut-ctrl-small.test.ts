/**
 * Mutation-audit pins (issue 15) for the small controller modules, with fake files in a temp
 * directory: src/controller/dhchap-secret.ts (inline or `file:PATH`, O_NOFOLLOW, regular file,
 * mode bits, owner, the 4096-byte bound, the fd closed, each refusal's message naming the file
 * and the caller's `what`, never the secret) and src/controller/host-identity.ts (the lookup
 * order /etc/nvme → kept state → DMI → machine-id → random-and-kept, what is persisted and with
 * which mode even under umask 0, the environment defaults (set, empty and unset), the host-ID
 * checks). Serves
 * `npm run mutate -- src/controller/dhchap-secret.ts --tests=mut-ctrl-small` and
 * `npm run mutate -- src/controller/host-identity.ts --tests=mut-ctrl-small,host-identity`; and
 * src/controller/discovery.ts (readDiscoveryLog against a recording stand-in controller: piece
 * sizes and offsets, the entry bound, generation retries; discover() against the fake target:
 * the Connect it sends, overrides, the budget timer) for
 * `npm run mutate -- src/controller/discovery.ts --tests=mut-ctrl-small,controller-controller`.
 */
import { test } from 'node:test';
import type { TestContext } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { isSecretReference, loadDhchapSecret } from '../../src/controller/dhchap-secret';
import {
  DMI_PLACEHOLDER_UUIDS, NQN_UUID_PREFIX, deriveHostNqn, dmiUuidFrom, isUuid, loadHostIdentity, machineIdUuid, nvmeEtcDir,
  resolveHostIdentity,
} from '../../src/controller/host-identity';
import { formatDhchapKey, generateDhchapKey, parseDhchapKey } from '../../src/wire/dhchap';
import { ErrorCode } from '../../src/errors';
import {
  ADRFAM_NAMES, DEFAULT_DISCOVERY_TIMEOUT_MS, MAX_DISCOVERY_ENTRIES, SUBTYPE_NAMES, TRTYPE_NAMES, discover, readDiscoveryLog,
} from '../../src/controller/discovery';
import type { Controller } from '../../src/controller/controller';
import { DISCOVERY_NQN, encodeDiscoveryLog, parseConnectData } from '../../src/wire';
import type { DiscoveryLogEntryInput } from '../../src/wire/discovery-log';
import { FakeTarget, serveController, type ControllerModel } from '../helpers/fake-target';
import { rejectsCode, throwsCode } from '../helpers/assert-code';

function tmpdir(t: TestContext, prefix: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

const isRoot = typeof process.getuid === 'function' && process.getuid() === 0;

// ---- dhchap-secret.ts -------------------------------------------------------------------------

test('isSecretReference: only a leading "file:" is a reference', () => {
  assert.equal(isSecretReference('file:/k'), true);
  assert.equal(isSecretReference('file:'), true);
  assert.equal(isSecretReference('DHHC-1:00:abc:'), false);
  assert.equal(isSecretReference('xfile:/k'), false);
  assert.equal(isSecretReference('File:/k'), false);
  assert.equal(isSecretReference(''), false);
});

test('inline secret: parsed as nvme-cli does; a bad one names the caller\'s "what" (default "DH-HMAC-CHAP secret") and hides the text', () => {
  const key = formatDhchapKey(generateDhchapKey());
  assert.deepEqual(loadDhchapSecret(key), parseDhchapKey(key));
  const e1 = throwsCode(() => loadDhchapSecret('DHHC-1:00:bm90IGEga2V5:'), ErrorCode.DHCHAP_KEY_INVALID);
  assert.match(e1.message, /^DH-HMAC-CHAP secret: \S/);
  assert.equal(e1.message.includes('bm90IGEga2V5'), false);
  const e2 = throwsCode(() => loadDhchapSecret('nonsense', 'controller secret'), ErrorCode.DHCHAP_KEY_INVALID);
  assert.match(e2.message, /^controller secret: \S/);
});

test('file: without a path is refused with its own message', () => {
  const e = throwsCode(() => loadDhchapSecret('file:', 'host secret'), ErrorCode.DHCHAP_KEY_INVALID);
  assert.equal(e.message, "host secret: 'file:' needs a path");
});

test('key file: read, trimmed (surrounding whitespace and newlines) and parsed; a missing one names the file and errno', (t) => {
  const dir = tmpdir(t, 'mut-dhchap-');
  const key = formatDhchapKey(generateDhchapKey());
  const f = path.join(dir, 'key');
  fs.writeFileSync(f, `  \n${key}\n\n`, { mode: 0o600 });
  assert.deepEqual(loadDhchapSecret(`file:${f}`), parseDhchapKey(key));
  const missing = path.join(dir, 'missing');
  const e = throwsCode(() => loadDhchapSecret(`file:${missing}`, 'host secret'), ErrorCode.DHCHAP_KEY_INVALID);
  assert.equal(e.message, `host secret: cannot open key file ${missing}: ENOENT`);
});

test('key file: a symlink is not followed (O_NOFOLLOW), even to a good 0600 key', (t) => {
  const dir = tmpdir(t, 'mut-dhchap-');
  const key = formatDhchapKey(generateDhchapKey());
  const f = path.join(dir, 'key');
  fs.writeFileSync(f, key, { mode: 0o600 });
  const link = path.join(dir, 'link');
  fs.symlinkSync(f, link);
  const e = throwsCode(() => loadDhchapSecret(`file:${link}`), ErrorCode.DHCHAP_KEY_INVALID);
  assert.equal(e.message, `DH-HMAC-CHAP secret: cannot open key file ${link}: ELOOP`);
});

test('key file: a directory is "not a regular file"', (t) => {
  const dir = tmpdir(t, 'mut-dhchap-');
  fs.chmodSync(dir, 0o700);
  const e = throwsCode(() => loadDhchapSecret(`file:${dir}`, 'k'), ErrorCode.DHCHAP_KEY_INVALID);
  assert.equal(e.message, `k: key file ${dir} is not a regular file`);
});

test('key file mode: any group or other bit refuses it (message with the 4-digit mode); owner-only modes are fine', (t) => {
  const dir = tmpdir(t, 'mut-dhchap-');
  const key = formatDhchapKey(generateDhchapKey());
  const f = path.join(dir, 'key');
  fs.writeFileSync(f, key, { mode: 0o600 });
  for (const mode of [0o600, 0o400, 0o700]) {
    fs.chmodSync(f, mode);
    assert.deepEqual(loadDhchapSecret(`file:${f}`), parseDhchapKey(key), mode.toString(8));
  }
  for (const [mode, shown] of [[0o601, '0601'], [0o610, '0610'], [0o640, '0640'], [0o604, '0604'], [0o620, '0620'], [0o1602, '0602']] as const) {
    fs.chmodSync(f, mode);
    const e = throwsCode(() => loadDhchapSecret(`file:${f}`, 'k'), ErrorCode.DHCHAP_KEY_INVALID, shown);
    assert.equal(e.message, `k: key file ${f} has mode ${shown}; it must not be accessible by group or others (chmod 600)`);
  }
});

test('key file owner: this user or root is fine, anyone else is refused; without getuid() there is no owner check', (t) => {
  if (!isRoot) {
    t.skip('needs root to chown the fake key files');
    return;
  }
  const dir = tmpdir(t, 'mut-dhchap-');
  const key = formatDhchapKey(generateDhchapKey());
  const mine = path.join(dir, 'mine');
  const roots = path.join(dir, 'roots');
  const other = path.join(dir, 'other');
  for (const f of [mine, roots, other]) fs.writeFileSync(f, key, { mode: 0o600 });
  fs.chownSync(mine, 4711, 4711);
  fs.chownSync(other, 4712, 4712);
  const real = process.getuid;
  try {
    // Pretend to run as uid 4711.
    process.getuid = () => 4711;
    assert.deepEqual(loadDhchapSecret(`file:${mine}`), parseDhchapKey(key), 'own file');
    assert.deepEqual(loadDhchapSecret(`file:${roots}`), parseDhchapKey(key), 'root\'s file');
    const e = throwsCode(() => loadDhchapSecret(`file:${other}`, 'k'), ErrorCode.DHCHAP_KEY_INVALID);
    assert.equal(e.message, `k: key file ${other} is owned by uid 4712, not by this user (4711) or root`);
    // A platform without getuid (Windows): no owner check at all.
    (process as { getuid?: unknown }).getuid = undefined;
    assert.deepEqual(loadDhchapSecret(`file:${other}`), parseDhchapKey(key), 'no getuid');
  } finally {
    process.getuid = real;
  }
});

test('key file size: 4096 bytes is read, 4097 bytes is refused before reading', (t) => {
  const dir = tmpdir(t, 'mut-dhchap-');
  const key = formatDhchapKey(generateDhchapKey());
  const f = path.join(dir, 'key');
  fs.writeFileSync(f, key + ' '.repeat(4096 - key.length), { mode: 0o600 });
  assert.equal(fs.statSync(f).size, 4096);
  assert.deepEqual(loadDhchapSecret(`file:${f}`), parseDhchapKey(key));
  fs.appendFileSync(f, ' ');
  const e = throwsCode(() => loadDhchapSecret(`file:${f}`, 'k'), ErrorCode.DHCHAP_KEY_INVALID);
  assert.equal(e.message, `k: key file ${f} is larger than 4096 bytes`);
});

test('key file with a bad key: "WHAT in FILE: reason", the content not echoed', (t) => {
  const dir = tmpdir(t, 'mut-dhchap-');
  const f = path.join(dir, 'junk');
  fs.writeFileSync(f, 'not a key at all', { mode: 0o600 });
  const e = throwsCode(() => loadDhchapSecret(`file:${f}`, 'ctrl secret'), ErrorCode.DHCHAP_KEY_INVALID);
  assert.ok(e.message.startsWith(`ctrl secret in ${f}: `), e.message);
  assert.ok(e.message.length > `ctrl secret in ${f}: `.length);
  assert.equal(e.message.includes('not a key at all'), false);
});

test('key file: the descriptor is closed after a success and after every refusal', (t) => {
  if (!fs.existsSync('/proc/self/fd')) {
    t.skip('no /proc/self/fd');
    return;
  }
  const dir = tmpdir(t, 'mut-dhchap-');
  const key = formatDhchapKey(generateDhchapKey());
  const good = path.join(dir, 'good');
  const loose = path.join(dir, 'loose');
  const big = path.join(dir, 'big');
  const junk = path.join(dir, 'junk');
  fs.writeFileSync(good, key, { mode: 0o600 });
  fs.writeFileSync(loose, key, { mode: 0o644 });
  fs.chmodSync(loose, 0o644);
  fs.writeFileSync(big, 'x'.repeat(5000), { mode: 0o600 });
  fs.writeFileSync(junk, 'junk', { mode: 0o600 });
  const count = (): number => fs.readdirSync('/proc/self/fd').length;
  const before = count();
  for (let i = 0; i < 20; i++) {
    loadDhchapSecret(`file:${good}`);
    for (const f of [loose, big, junk, dir]) assert.throws(() => loadDhchapSecret(`file:${f}`));
  }
  assert.ok(count() < before + 10, `open descriptors ${before} -> ${count()}`);
});

// ---- host-identity.ts -------------------------------------------------------------------------

const DMI = '4c4c4544-0042-3510-8054-b3c04f4a4c32';
const MID = '0123456789abcdef0123456789abcdef';

interface Fake { dir: string; etc: string; state: string; dmi: string; mid: string }

function fake(t: TestContext, files: Record<string, string>): Fake {
  const dir = tmpdir(t, 'mut-hostid-');
  fs.mkdirSync(path.join(dir, 'etc'));
  for (const [k, v] of Object.entries(files)) {
    fs.mkdirSync(path.dirname(path.join(dir, k)), { recursive: true });
    fs.writeFileSync(path.join(dir, k), v);
  }
  return { dir, etc: path.join(dir, 'etc'), state: path.join(dir, 'state'), dmi: path.join(dir, 'product_uuid'), mid: path.join(dir, 'machine-id') };
}

function load(f: Fake): ReturnType<typeof loadHostIdentity> {
  return loadHostIdentity({ etcDir: f.etc, stateDir: f.state, dmiUuidFile: f.dmi, machineIdFile: f.mid });
}

test('nvmeEtcDir: $NVMF_NBD_NVME_DIR when set and not empty, else /etc/nvme', () => {
  assert.equal(nvmeEtcDir({ NVMF_NBD_NVME_DIR: '/x/nvme' }), '/x/nvme');
  assert.equal(nvmeEtcDir({ NVMF_NBD_NVME_DIR: '' }), '/etc/nvme');
  assert.equal(nvmeEtcDir({}), '/etc/nvme');
});

test('dmiUuidFrom: trims, lower-cases, needs the whole 8-4-4-4-12 form, refuses every placeholder', () => {
  assert.equal(dmiUuidFrom(undefined), undefined);
  assert.equal(dmiUuidFrom(`  ${DMI.toUpperCase()}\n`), DMI);
  assert.equal(dmiUuidFrom(`x${DMI}`), undefined, 'anchored at the start');
  assert.equal(dmiUuidFrom(`${DMI}0`), undefined, 'anchored at the end');
  assert.equal(dmiUuidFrom(DMI.replace(/-/g, '')), undefined);
  assert.equal(dmiUuidFrom('4c4c4544-0042-3510-8054-b3c04f4a4c3g'), undefined, 'hex only');
  assert.equal(DMI_PLACEHOLDER_UUIDS.size, 6);
  for (const p of DMI_PLACEHOLDER_UUIDS) {
    assert.equal(dmiUuidFrom(p), undefined, p);
    assert.equal(dmiUuidFrom(p.toUpperCase()), undefined, p);
  }
  for (const p of ['00000000-0000-0000-0000-000000000000', 'ffffffff-ffff-ffff-ffff-ffffffffffff', '03000200-0400-0500-0006-000700080009',
    '00020003-0004-0005-0006-000700080009', '12345678-1234-5678-90ab-cddeefaabbcc', '4c4c4544-0000-2010-8020-80c04f202020']) {
    assert.ok(DMI_PLACEHOLDER_UUIDS.has(p), p);
  }
});

test('machineIdUuid: trims and lower-cases the id, exactly 32 hex digits, not all zeros; version 4 / variant 1 bits set', () => {
  const u = machineIdUuid(MID) as string;
  assert.match(u, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  assert.equal(machineIdUuid(` ${MID.toUpperCase()}\n`), u);
  assert.equal(machineIdUuid(undefined), undefined);
  assert.equal(machineIdUuid(`${MID}0`), undefined);
  assert.equal(machineIdUuid(MID.slice(1)), undefined);
  assert.equal(machineIdUuid(`x${MID.slice(1)}`), undefined);
  assert.equal(machineIdUuid('0'.repeat(32)), undefined);
  assert.notEqual(machineIdUuid(`${'0'.repeat(31)}1`), undefined, 'one non-zero digit is a machine id');
  // Another application id gives another UUID.
  assert.notEqual(machineIdUuid(MID, Buffer.alloc(16, 1)), u);
});

test('deriveHostNqn: DMI first, then machine-id, else undefined; the sources name the files', (t) => {
  const f = fake(t, { product_uuid: DMI, 'machine-id': MID });
  assert.deepEqual(deriveHostNqn({ dmiUuidFile: f.dmi, machineIdFile: f.mid }), { hostnqn: `${NQN_UUID_PREFIX}${DMI}`, uuid: DMI, source: `dmi:${f.dmi}` });
  fs.writeFileSync(f.dmi, '00000000-0000-0000-0000-000000000000');
  const m = machineIdUuid(MID) as string;
  assert.deepEqual(deriveHostNqn({ dmiUuidFile: f.dmi, machineIdFile: f.mid }), { hostnqn: `${NQN_UUID_PREFIX}${m}`, uuid: m, source: `machine-id:${f.mid}` });
  fs.rmSync(f.mid);
  assert.equal(deriveHostNqn({ dmiUuidFile: f.dmi, machineIdFile: f.mid }), undefined);
});

test('deriveHostNqn: the environment names the files when no path is passed (empty = the system default)', (t) => {
  const f = fake(t, { product_uuid: DMI, 'machine-id': MID });
  const saved = { d: process.env.NVMF_NBD_DMI_UUID, m: process.env.NVMF_NBD_MACHINE_ID, n: process.env.NVMF_NBD_NVME_DIR };
  const restore = (k: string, v: string | undefined): void => { if (v === undefined) delete process.env[k]; else process.env[k] = v; };
  try {
    process.env.NVMF_NBD_DMI_UUID = f.dmi;
    process.env.NVMF_NBD_MACHINE_ID = f.mid;
    assert.equal(deriveHostNqn()?.source, `dmi:${f.dmi}`);
    process.env.NVMF_NBD_DMI_UUID = path.join(f.dir, 'none');
    assert.equal(deriveHostNqn()?.source, `machine-id:${f.mid}`);
    // Empty: the system files (whatever they hold, never the fake ones).
    process.env.NVMF_NBD_DMI_UUID = '';
    process.env.NVMF_NBD_MACHINE_ID = '';
    const system = deriveHostNqn({ dmiUuidFile: '/sys/class/dmi/id/product_uuid', machineIdFile: '/etc/machine-id' });
    assert.deepEqual(deriveHostNqn(), system);
    // Unset: the system files too.
    delete process.env.NVMF_NBD_DMI_UUID;
    delete process.env.NVMF_NBD_MACHINE_ID;
    assert.deepEqual(deriveHostNqn(), system);
    // The etc dir from the environment too (loadHostIdentity without etcDir).
    process.env.NVMF_NBD_DMI_UUID = f.dmi;
    process.env.NVMF_NBD_MACHINE_ID = f.mid;
    fs.writeFileSync(path.join(f.etc, 'hostnqn'), 'nqn.2024-01.io.example:env\n');
    process.env.NVMF_NBD_NVME_DIR = f.etc;
    const id = loadHostIdentity({ stateDir: f.state });
    assert.equal(id.hostnqn, 'nqn.2024-01.io.example:env');
    assert.equal(id.source.hostnqn, path.join(f.etc, 'hostnqn'));
    assert.equal(id.hostid, DMI);
  } finally {
    restore('NVMF_NBD_DMI_UUID', saved.d);
    restore('NVMF_NBD_MACHINE_ID', saved.m);
    restore('NVMF_NBD_NVME_DIR', saved.n);
  }
});

test('identity: /etc/nvme hostnqn + hostid both win (sources are the files; the ID is lower-cased; blank files do not count)', (t) => {
  const f = fake(t, { product_uuid: DMI, 'etc/hostnqn': ' nqn.2024-01.io.example:h \n', 'etc/hostid': 'AAAAAAAA-BBBB-4CCC-8DDD-EEEEEEEEEEEE\n' });
  assert.deepEqual(load(f), {
    hostnqn: 'nqn.2024-01.io.example:h', hostid: 'aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee',
    source: { hostnqn: path.join(f.etc, 'hostnqn'), hostid: path.join(f.etc, 'hostid') },
  });
  fs.writeFileSync(path.join(f.etc, 'hostnqn'), ' \n');
  fs.writeFileSync(path.join(f.etc, 'hostid'), '\n');
  const d = load(f);
  assert.equal(d.hostnqn, `${NQN_UUID_PREFIX}${DMI}`);
  assert.equal(d.source.hostnqn, `dmi:${f.dmi}`);
  assert.equal(d.hostid, DMI);
  assert.equal(d.source.hostid, `dmi:${f.dmi} (uuid of the host NQN)`);
});

test('identity: a kept host ID in the state dir is used when /etc/nvme has none; /etc/nvme/hostid beats it', (t) => {
  const f = fake(t, { product_uuid: DMI, 'state/hostid': '11111111-2222-4333-8444-555555555555\n' });
  const a = load(f);
  assert.equal(a.hostid, '11111111-2222-4333-8444-555555555555');
  assert.equal(a.source.hostid, path.join(f.state, 'hostid'));
  assert.equal(a.hostnqn, `${NQN_UUID_PREFIX}${DMI}`);
  fs.writeFileSync(path.join(f.etc, 'hostid'), '99999999-2222-4333-8444-555555555555');
  assert.equal(load(f).hostid, '99999999-2222-4333-8444-555555555555');
  // A kept NQN is used when /etc/nvme has none; /etc/nvme/hostnqn beats it.
  fs.writeFileSync(path.join(f.state, 'hostnqn'), 'nqn.2024-01.io.example:kept');
  assert.equal(load(f).hostnqn, 'nqn.2024-01.io.example:kept');
  assert.equal(load(f).source.hostnqn, path.join(f.state, 'hostnqn'));
  fs.writeFileSync(path.join(f.etc, 'hostnqn'), 'nqn.2024-01.io.example:etc');
  assert.equal(load(f).hostnqn, 'nqn.2024-01.io.example:etc');
});

test('identity: a uuid-form host NQN whose tail is not a UUID gets its ID from the machine', (t) => {
  const f = fake(t, { 'machine-id': MID, 'etc/hostnqn': `${NQN_UUID_PREFIX}not-a-uuid` });
  const id = load(f);
  assert.equal(id.hostnqn, `${NQN_UUID_PREFIX}not-a-uuid`);
  assert.equal(id.hostid, machineIdUuid(MID));
  assert.equal(id.source.hostid, `machine-id:${f.mid}`);
  assert.equal(fs.existsSync(f.state), false, 'a derived ID is not written');
});

test('identity: a non-uuid host NQN on a machine with neither DMI nor machine-id gets a random ID, kept (0644, dir 0700) and reused', (t) => {
  const f = fake(t, { 'etc/hostnqn': 'nqn.2024-01.io.example:lonely' });
  // mode 0644 is asked for, not left to the umask.
  const mask = process.umask(0);
  let a: ReturnType<typeof load>;
  try {
    a = load(f);
  } finally {
    process.umask(mask);
  }
  assert.equal(a.hostnqn, 'nqn.2024-01.io.example:lonely');
  assert.ok(isUuid(a.hostid));
  const kept = path.join(f.state, 'hostid');
  assert.equal(a.source.hostid, `random:${kept}`);
  assert.equal(fs.readFileSync(kept, 'utf8'), `${a.hostid}\n`);
  assert.equal(fs.statSync(kept).mode & 0o777, 0o644);
  assert.equal(fs.statSync(f.state).mode & 0o777, 0o700);
  assert.equal(fs.existsSync(path.join(f.state, 'hostnqn')), false, 'only the ID was generated');
  assert.deepEqual(fs.readdirSync(f.state), ['hostid'], 'no temporary file left');
  const b = load(f);
  assert.equal(b.hostid, a.hostid);
  assert.equal(b.source.hostid, kept);
});

test('identity: nothing at all: a random identity, both values kept and reused, the NQN made from the ID', (t) => {
  const f = fake(t, {});
  const a = load(f);
  assert.ok(isUuid(a.hostid));
  assert.equal(a.hostnqn, `${NQN_UUID_PREFIX}${a.hostid}`);
  assert.deepEqual(a.source, { hostnqn: `random:${path.join(f.state, 'hostnqn')}`, hostid: `random:${path.join(f.state, 'hostid')}` });
  assert.equal(fs.readFileSync(path.join(f.state, 'hostnqn'), 'utf8'), `${a.hostnqn}\n`);
  assert.equal(fs.readFileSync(path.join(f.state, 'hostid'), 'utf8'), `${a.hostid}\n`);
  assert.deepEqual(fs.readdirSync(f.state).sort(), ['hostid', 'hostnqn']);
  const b = load(f);
  assert.equal(b.hostnqn, a.hostnqn);
  assert.equal(b.hostid, a.hostid);
  assert.deepEqual(b.source, { hostnqn: path.join(f.state, 'hostnqn'), hostid: path.join(f.state, 'hostid') });
  assert.notEqual(load(fake(t, {})).hostid, a.hostid, 'random, not a constant');
});

test('identity: a random identity that cannot be kept is CFG_INVALID naming the file', (t) => {
  const f = fake(t, { state: 'a file where the state directory should be' });
  const e = throwsCode(() => load(f), ErrorCode.CFG_INVALID);
  assert.ok(e.message.startsWith(`cannot keep the generated host identity in ${path.join(f.state, 'hostid')}: `), e.message);
  assert.match(e.message, /\(set NVMF_NBD_STATE_DIR or pass -q\/-I\)$/);
  assert.ok(e.cause instanceof Error);
  const g = fake(t, { 'etc/hostnqn': 'nqn.2024-01.io.example:x', state: 'file' });
  throwsCode(() => load(g), ErrorCode.CFG_INVALID);
});

test('identity: a host ID that is not a UUID is CFG_INVALID naming where it came from', async (t) => {
  const f = fake(t, { product_uuid: DMI, 'etc/hostid': 'not-a-uuid' });
  const e = throwsCode(() => load(f), ErrorCode.CFG_INVALID);
  assert.equal(e.message, `host ID 'not-a-uuid' in ${path.join(f.etc, 'hostid')} is not a UUID`);
  await rejectsCode(resolveHostIdentity({ etcDir: f.etc, stateDir: f.state, dmiUuidFile: f.dmi, machineIdFile: f.mid }), ErrorCode.CFG_INVALID);
  fs.writeFileSync(path.join(f.etc, 'hostid'), `${DMI}x`);
  throwsCode(() => load(f), ErrorCode.CFG_INVALID, 'anchored');
  fs.rmSync(path.join(f.etc, 'hostid'));
  assert.deepEqual(await resolveHostIdentity({ etcDir: f.etc, stateDir: f.state, dmiUuidFile: f.dmi, machineIdFile: f.mid }), load(f));
});

test('isUuid: the 8-4-4-4-12 hex form, either case, nothing around it', () => {
  assert.equal(isUuid(DMI), true);
  assert.equal(isUuid(DMI.toUpperCase()), true);
  assert.equal(isUuid(` ${DMI}`), false);
  assert.equal(isUuid(`${DMI} `), false);
  assert.equal(isUuid(DMI.slice(0, -1)), false);
  assert.equal(isUuid(''), false);
});

// ---- discovery.ts -----------------------------------------------------------------------------

interface LogRead { lid: number; nsid: number; bytes: number; offset: number; dataInLength: number | undefined }

/**
 * A stand-in for a connected discovery Controller: answers Get Log Page 0x70 from `page()`
 * (called once per header read, so the log may change between reads) and records every read.
 */
function fakeDiscoveryCtrl(maxTransfer: number, page: () => Buffer): { ctrl: Controller; reads: LogRead[] } {
  const reads: LogRead[] = [];
  let current = page();
  const ctrl = {
    maxTransfer,
    adminCommand(sqe: Buffer, o: { dataInLength?: number }): Promise<{ data: Buffer }> {
      const cdw10 = sqe.readUInt32LE(40);
      const bytes = ((cdw10 >>> 16) + ((sqe.readUInt32LE(44) & 0xffff) * 0x10000) + 1) * 4;
      const offset = sqe.readUInt32LE(48) + sqe.readUInt32LE(52) * 0x100000000;
      reads.push({ lid: cdw10 & 0xff, nsid: sqe.readUInt32LE(4), bytes, offset, dataInLength: o.dataInLength });
      if (offset === 0) current = page();
      const out = Buffer.alloc(bytes);
      current.copy(out, 0, offset, offset + bytes);
      return Promise.resolve({ data: out });
    },
  };
  return { ctrl: ctrl as unknown as Controller, reads };
}

const entries = (n: number): DiscoveryLogEntryInput[] => Array.from({ length: n }, (_, i) => ({
  subnqn: `nqn.2024-01.io.test:s${i}`, traddr: `10.0.0.${i + 1}`, trsvcid: `${4420 + i}`, portid: i + 1, cntlid: 100 + i,
}));

test('readDiscoveryLog: header, entries in pieces of floor(maxTransfer / 1024) at their offsets, header again; raw is header + entries', async () => {
  const page = encodeDiscoveryLog(9n, entries(5));
  const { ctrl, reads } = fakeDiscoveryCtrl(2048 + 1023, () => page);
  const log = await readDiscoveryLog(ctrl);
  assert.equal(log.genctr, 9n);
  assert.deepEqual(log.entries.map((e) => [e.subnqn, e.traddr, e.trsvcid, e.portid, e.cntlid]),
    entries(5).map((e) => [e.subnqn, e.traddr, e.trsvcid, e.portid, e.cntlid]));
  assert.deepEqual(log.raw, page);
  assert.deepEqual(reads.map((r) => [r.bytes, r.offset, r.dataInLength]), [
    [1024, 0, 1024], [2048, 1024, 2048], [2048, 3072, 2048], [1024, 5120, 1024], [1024, 0, 1024],
  ]);
  for (const r of reads) {
    assert.equal(r.lid, 0x70);
    assert.equal(r.nsid, 0);
  }
});

test('readDiscoveryLog: exactly 3 entries per read at maxTransfer 3072; one entry per read below 1024 bytes', async () => {
  const page = encodeDiscoveryLog(1n, entries(4));
  const a = fakeDiscoveryCtrl(3072, () => page);
  assert.equal((await readDiscoveryLog(a.ctrl)).entries.length, 4);
  assert.deepEqual(a.reads.map((r) => [r.bytes, r.offset]), [[1024, 0], [3072, 1024], [1024, 4096], [1024, 0]]);
  const b = fakeDiscoveryCtrl(512, () => page);
  assert.equal((await readDiscoveryLog(b.ctrl)).entries.length, 4);
  assert.deepEqual(b.reads.map((r) => [r.bytes, r.offset]), [[1024, 0], [1024, 1024], [1024, 2048], [1024, 3072], [1024, 4096], [1024, 0]]);
});

test('readDiscoveryLog: an empty log is the header read twice, no entries, raw = the header', async () => {
  const page = encodeDiscoveryLog(3n, []);
  const { ctrl, reads } = fakeDiscoveryCtrl(65536, () => page);
  const log = await readDiscoveryLog(ctrl);
  assert.deepEqual(log, { genctr: 3n, entries: [], raw: page });
  assert.equal(reads.length, 2);
});

test('readDiscoveryLog: 1024 entries are read; 1025 and a count past 2^53 are INVALID_ARGUMENT before any entry read', async () => {
  const big = encodeDiscoveryLog(1n, entries(1024));
  const ok = fakeDiscoveryCtrl(1 << 20, () => big);
  assert.equal((await readDiscoveryLog(ok.ctrl)).entries.length, 1024);
  const over = Buffer.from(encodeDiscoveryLog(1n, []));
  over.writeBigUInt64LE(1025n, 8);
  const a = fakeDiscoveryCtrl(1 << 20, () => over);
  const e = await rejectsCode(readDiscoveryLog(a.ctrl), ErrorCode.INVALID_ARGUMENT);
  assert.equal(e.message, 'discovery log has 1025 entries (more than 1024)');
  assert.equal(a.reads.length, 1);
  const huge = Buffer.from(over);
  huge.writeBigUInt64LE(2n ** 64n - 1n, 8);
  const b = fakeDiscoveryCtrl(1 << 20, () => huge);
  await rejectsCode(readDiscoveryLog(b.ctrl), ErrorCode.INVALID_ARGUMENT);
  assert.equal(b.reads.length, 1);
});

test('readDiscoveryLog: a changed generation counter re-reads everything; stable on the 5th try is fine, 5 changes is DISCOVERY_LOG_CHANGED', async () => {
  let g = 0n;
  // Header reads: 1,2 | 3,4 | 5,6 | 7,8 | 9,9 — settles on the 5th attempt.
  const settling = fakeDiscoveryCtrl(65536, () => encodeDiscoveryLog(g < 9n ? ++g : g, entries(1)));
  const log = await readDiscoveryLog(settling.ctrl);
  assert.equal(log.genctr, 9n);
  assert.equal(settling.reads.filter((r) => r.offset === 0).length, 10);
  let h = 0n;
  const churning = fakeDiscoveryCtrl(65536, () => encodeDiscoveryLog(++h, entries(1)));
  const e = await rejectsCode(readDiscoveryLog(churning.ctrl), ErrorCode.DISCOVERY_LOG_CHANGED);
  assert.equal(e.message, 'discovery log kept changing over 5 reads');
  assert.equal(churning.reads.length, 15, '5 attempts of header, entry, header');
});

/** A fake discovery target recording each Fabrics Connect (SQE, data, peer address). */
async function discoveryTarget(m: ControllerModel): Promise<{ target: FakeTarget; connects: Array<{ raw: Buffer; subnqn: string; hostnqn: string; peer: string | undefined }> }> {
  const connects: Array<{ raw: Buffer; subnqn: string; hostnqn: string; peer: string | undefined }> = [];
  const target = await FakeTarget.start((c) => {
    const next = c.nextCommand.bind(c);
    c.nextCommand = async () => {
      const cmd = await next();
      if (cmd.data !== undefined && connects.length < 100) {
        const cd = parseConnectData(cmd.data);
        connects.push({ raw: cmd.raw, subnqn: cd.subnqn, hostnqn: cd.hostnqn, peer: c.socket.remoteAddress });
      }
      return cmd;
    };
    return serveController(c, m);
  });
  return { target, connects };
}

test('discover: the well-known discovery NQN by default, KATO 0, admin queue only; both overrides replace every entry', async () => {
  const m: ControllerModel = { namespaces: new Map(), seen: [], discovery: [
    { subnqn: 'nqn.2024-01.io.test:a', traddr: '10.9.9.9', trsvcid: '4420' },
    { subnqn: 'nqn.2024-01.io.test:b', traddr: '10.9.9.8', trsvcid: '4421' },
  ] };
  const { target, connects } = await discoveryTarget(m);
  try {
    const log = await discover({ traddr: '127.0.0.1', trsvcid: target.port, hostnqn: 'nqn.test:h', hostid: Buffer.alloc(16, 1), overrideTraddr: '192.0.2.1', overrideTrsvcid: '9999' });
    assert.deepEqual(log.entries.map((e) => [e.subnqn, e.traddr, e.trsvcid]), [['nqn.2024-01.io.test:a', '192.0.2.1', '9999'], ['nqn.2024-01.io.test:b', '192.0.2.1', '9999']]);
    assert.equal(connects.length, 1);
    assert.equal(connects[0]?.subnqn, DISCOVERY_NQN);
    assert.equal(connects[0]?.hostnqn, 'nqn.test:h');
    assert.equal(connects[0]?.raw.readUInt32LE(48), 0, 'KATO 0');
    // A discovery controller: no namespace scan, no queue count, no shutdown (CC.SHN) at the end.
    const seen = m.seen ?? [];
    assert.equal(seen.some((s) => s.opcode === 0x06 && (s.cdw10 & 0xff) !== 1), false, 'only Identify Controller');
    assert.equal(seen.some((s) => s.opcode === 0x09), false, 'no Set Features');
    assert.equal(((m.regs?.cc ?? 0) >>> 14) & 3, 0, 'no CC.SHN written on disconnect');
    const only = await discover({ traddr: '127.0.0.1', trsvcid: target.port, hostnqn: 'nqn.test:h', hostid: Buffer.alloc(16, 1), overrideTrsvcid: '7' });
    assert.deepEqual(only.entries.map((e) => [e.traddr, e.trsvcid]), [['10.9.9.9', '7'], ['10.9.9.8', '7']]);
    const none = await discover({ traddr: '127.0.0.1', trsvcid: target.port, hostnqn: 'nqn.test:h', hostid: Buffer.alloc(16, 1) });
    assert.deepEqual(none.entries.map((e) => [e.traddr, e.trsvcid]), [['10.9.9.9', '4420'], ['10.9.9.8', '4421']]);
  } finally {
    await target.close();
  }
});

test('discover: a unique discovery NQN and the local address (host_traddr) are used', async () => {
  const m: ControllerModel = { namespaces: new Map(), discovery: [{ subnqn: 'nqn.2024-01.io.test:a', traddr: '10.9.9.9', trsvcid: '4420' }] };
  const { target, connects } = await discoveryTarget(m);
  try {
    const log = await discover({ traddr: '127.0.0.1', trsvcid: target.port, hostnqn: 'nqn.test:h', hostid: Buffer.alloc(16, 1), subnqn: 'nqn.2024-01.io.test:unique-disc', hostTraddr: '127.0.0.2' });
    assert.equal(log.entries.length, 1);
    assert.equal(connects[0]?.subnqn, 'nqn.2024-01.io.test:unique-disc');
    assert.equal(connects[0]?.peer, '127.0.0.2');
  } finally {
    await target.close();
  }
});

test('discover: a budget past the 32-bit timer range is clamped (the discovery is not cut at once), and nothing keeps running after', async () => {
  const m: ControllerModel = { namespaces: new Map(), discovery: [{ subnqn: 'nqn.2024-01.io.test:a', traddr: '10.9.9.9', trsvcid: '4420' }], logDelayMs: 20 };
  const { target } = await discoveryTarget(m);
  try {
    const log = await discover({ traddr: '127.0.0.1', trsvcid: target.port, hostnqn: 'nqn.test:h', hostid: Buffer.alloc(16, 1), timeoutMs: 2 ** 40 });
    assert.equal(log.entries.length, 1);
  } finally {
    await target.close();
  }
});

test('discover: the budget left after connecting bounds the log reads: TIMEOUT naming the address and budget', async () => {
  const m: ControllerModel = { namespaces: new Map(), discovery: [], logDelayMs: 1000 };
  const { target } = await discoveryTarget(m);
  try {
    const e = await rejectsCode(discover({ traddr: '127.0.0.1', trsvcid: target.port, hostnqn: 'nqn.test:h', hostid: Buffer.alloc(16, 1), timeoutMs: 300, ioTimeoutMs: 10_000 }), ErrorCode.TIMEOUT);
    assert.equal(e.message, `discovery at 127.0.0.1:${target.port} did not finish within 300 ms`);
  } finally {
    await target.close();
  }
});

test('discover: ioTimeoutMs reaches the commands (a log answer slower than it is a TIMEOUT, within the overall budget)', async () => {
  const m: ControllerModel = { namespaces: new Map(), discovery: [], logDelayMs: 1000 };
  const { target } = await discoveryTarget(m);
  try {
    const e = await rejectsCode(discover({ traddr: '127.0.0.1', trsvcid: target.port, hostnqn: 'nqn.test:h', hostid: Buffer.alloc(16, 1), ioTimeoutMs: 200, timeoutMs: 20_000 }), ErrorCode.TIMEOUT);
    assert.doesNotMatch(e.message, /did not finish within 20000 ms/);
  } finally {
    await target.close();
  }
});

test('discovery name tables', () => {
  assert.deepEqual(TRTYPE_NAMES, { 1: 'rdma', 2: 'fc', 3: 'tcp', 254: 'loop' });
  assert.deepEqual(ADRFAM_NAMES, { 1: 'ipv4', 2: 'ipv6', 3: 'ib', 4: 'fc', 254: 'loop' });
  assert.deepEqual(SUBTYPE_NAMES, { 1: 'discovery subsystem referral', 2: 'nvme subsystem', 3: 'current discovery subsystem' });
  assert.equal(MAX_DISCOVERY_ENTRIES, 1024);
  assert.equal(DEFAULT_DISCOVERY_TIMEOUT_MS, 60_000);
});
