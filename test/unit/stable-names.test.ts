/**
 * Stable names: Namespace Identification Descriptors (CNS 03h) codec, the stable id (UUID, else
 * NGUID, else EUI-64), nbd-client -i (only when supported), the daemon's udev-less by-id links
 * (fake sysfs), and the shipped udev helper run by hand on a fake /sys/block/nbdX.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { execFile } from 'node:child_process';
import { encodeNsIdDescriptors, nbdBackendIdentifier, parseNsIdDescriptors, stableNamespaceId } from '../../src/wire/ns-descriptors';
import { planByIdLinks, syncByIdLinks } from '../../src/engine/by-id';
import { buildAttachArgs, nbdClientSupportsIdentifier } from '../../src/attach/nbd-client';
import { namespaceIds } from '../../src/embedded-target/pages';

const REPO = path.resolve(__dirname, '../../..');
const UUID = Buffer.from('0123456789abcdef0123456789abcdef', 'hex');
const NGUID = Buffer.from('fedcba9876543210fedcba9876543210', 'hex');
const EUI = Buffer.from('0011223344556677', 'hex');

test('CNS 03h descriptors: byte fixture, every type, zero and unknown entries, truncation', () => {
  // NIDT 1 EUI64 (8) then NIDT 2 NGUID (16), NIDT 9 unknown (2 bytes, skipped), NIDT 3 UUID, NIDT 4 CSI, end.
  const b = Buffer.alloc(4096);
  let at = 0;
  for (const [t, nid] of [[1, EUI], [2, NGUID], [9, Buffer.from([7, 7])], [3, UUID], [4, Buffer.from([0])]] as const) {
    b[at] = t;
    b[at + 1] = nid.length;
    nid.copy(b, at + 4);
    at += 4 + nid.length;
  }
  const ids = parseNsIdDescriptors(b);
  assert.deepEqual([ids.eui64?.toString('hex'), ids.nguid?.toString('hex'), ids.uuid?.toString('hex'), ids.csi], [EUI.toString('hex'), NGUID.toString('hex'), UUID.toString('hex'), 0]);
  assert.deepEqual(parseNsIdDescriptors(encodeNsIdDescriptors({ nguid: NGUID, uuid: UUID })), { nguid: NGUID, uuid: UUID });
  // All-zero identifiers are "not reported".
  assert.deepEqual(parseNsIdDescriptors(encodeNsIdDescriptors({ uuid: Buffer.alloc(16) })), {});
  // A wrong length for a known type ends the walk; a descriptor past the end is dropped.
  const bad = encodeNsIdDescriptors({ eui64: EUI });
  bad[12] = 3;
  bad[13] = 8;
  assert.deepEqual(Object.keys(parseNsIdDescriptors(bad)), ['eui64']);
  assert.deepEqual(parseNsIdDescriptors(encodeNsIdDescriptors({ uuid: UUID }).subarray(0, 10)), {});
});

test('stable id: UUID text, else NGUID hex, else EUI-64 hex; the nbd backend identifier', () => {
  assert.equal(stableNamespaceId({ uuid: UUID, nguid: NGUID, eui64: EUI }), '01234567-89ab-cdef-0123-456789abcdef');
  assert.equal(stableNamespaceId({ nguid: NGUID, eui64: EUI }), 'fedcba9876543210fedcba9876543210');
  assert.equal(stableNamespaceId({ eui64: EUI }), '0011223344556677');
  assert.equal(stableNamespaceId({}), undefined);
  assert.equal(nbdBackendIdentifier('0011223344556677'), 'nvmf-nbd-0011223344556677');
  // The embedded target's identifiers are stable per subsystem and NSID.
  assert.deepEqual(namespaceIds('nqn.x:s', 1), namespaceIds('nqn.x:s', 1));
  assert.notDeepEqual(namespaceIds('nqn.x:s', 1).uuid, namespaceIds('nqn.x:s', 2).uuid);
});

test('nbd-client -i: passed only when the client knows it (probed once; 3.24 does not)', async () => {
  const o = { socketPath: '/s', exportName: 'nvme0n1', blockSize: 512, identifier: 'nvmf-nbd-0011223344556677' };
  assert.deepEqual(buildAttachArgs(o, '/dev/nbd0').slice(-2), ['-i', 'nvmf-nbd-0011223344556677']);
  assert.throws(() => buildAttachArgs({ ...o, identifier: 'a b' }, '/dev/nbd0'));
  const old = async (): Promise<{ code: number; stdout: string; stderr: string }> => ({ code: 1, stdout: '', stderr: "nbd-client: unrecognized option '-i'\n" });
  const neu = async (): Promise<{ code: number; stdout: string; stderr: string }> => ({ code: 1, stdout: '', stderr: 'nbd-client: no host given\n' });
  assert.equal(await nbdClientSupportsIdentifier('fake-old-nbd-client', old), false);
  assert.equal(await nbdClientSupportsIdentifier('fake-new-nbd-client', neu), true);
});

async function fakeSys(): Promise<{ root: string; sys: string }> {
  const root = await fsp.mkdtemp(path.join(os.tmpdir(), 'byid-'));
  const sys = path.join(root, 'sys');
  await fsp.mkdir(path.join(sys, 'block', 'nbd3', 'nbd3p1'), { recursive: true });
  await fsp.mkdir(path.join(sys, 'block', 'nbd3', 'nbd3p2'), { recursive: true });
  await fsp.mkdir(path.join(sys, 'block', 'nbd4'), { recursive: true });
  return { root, sys };
}

test('by-id links (udev-less): disk and partition links, replaced and pruned, other files untouched', async () => {
  const { root, sys } = await fakeSys();
  const dir = path.join(root, 'state', 'by-id');
  const id1 = '01234567-89ab-cdef-0123-456789abcdef';
  const id2 = 'fedcba9876543210fedcba9876543210';
  assert.deepEqual([...planByIdLinks([{ id: id1, device: '/dev/nbd3' }, { id: id1, device: '/dev/nbd9' }, { id: 'bad id', device: '/dev/nbd4' }], new Map([['/dev/nbd3', [1]]]))],
    [[`nvmf-nbd-${id1}`, '/dev/nbd3'], [`nvmf-nbd-${id1}-part1`, '/dev/nbd3p1']]);
  const names = await syncByIdLinks(dir, [{ id: id1, device: '/dev/nbd3' }, { id: id2, device: '/dev/nbd4' }], { sysfsRoot: sys, udevTrigger: false });
  assert.deepEqual(names, [`nvmf-nbd-${id1}`, `nvmf-nbd-${id1}-part1`, `nvmf-nbd-${id1}-part2`, `nvmf-nbd-${id2}`]);
  assert.equal(await fsp.readlink(path.join(dir, `nvmf-nbd-${id1}-part2`)), '/dev/nbd3p2');
  await fsp.writeFile(path.join(dir, 'README'), 'not ours');
  // id2 detached, id1 moved to nbd4: links follow, the stale one goes.
  await syncByIdLinks(dir, [{ id: id1, device: '/dev/nbd4' }], { sysfsRoot: sys, udevTrigger: false });
  assert.deepEqual((await fsp.readdir(dir)).sort(), ['README', `nvmf-nbd-${id1}`]);
  assert.equal(await fsp.readlink(path.join(dir, `nvmf-nbd-${id1}`)), '/dev/nbd4');
  await fsp.rm(root, { recursive: true });
});

function helper(dir: string, stateDir = '/nonexistent'): Promise<string> {
  return new Promise((resolve, reject) => execFile('sh', [path.join(REPO, 'udev', 'nvmf-nbd-id'), dir], { env: { PATH: process.env.PATH ?? '/usr/bin:/bin', NVMF_NBD_STATE_DIR: stateDir } }, (e, out) => (e !== null ? reject(e) : resolve(out))));
}

test('udev helper (nvmf-nbd-id) run by hand: NVMF_NBD_ID from the backend, nothing for foreign or odd backends', async () => {
  const { root, sys } = await fakeSys();
  const d = path.join(sys, 'block', 'nbd3');
  assert.equal(await helper(d), '', 'no backend file: nothing');
  await fsp.writeFile(path.join(d, 'backend'), 'nvmf-nbd-01234567-89ab-cdef-0123-456789abcdef\n');
  assert.equal(await helper(d), 'NVMF_NBD_ID=01234567-89ab-cdef-0123-456789abcdef\n');
  await fsp.writeFile(path.join(d, 'backend'), 'nvmf-nbd-0011223344556677');
  assert.equal(await helper(d), 'NVMF_NBD_ID=0011223344556677\n');
  for (const foreign of ['some-other-tool', 'nvmf-nbd-../../etc', 'nvmf-nbd-ABCDEF0011223344', 'nvmf-nbd-00112233', 'nvmf-nbd-0011223344556677 x', '']) {
    await fsp.writeFile(path.join(d, 'backend'), foreign);
    assert.equal(await helper(d), '', foreign);
  }
  // nbd-client without -i (empty backend): the daemon's by-id link names the device.
  await fsp.writeFile(path.join(d, 'backend'), '');
  const state = path.join(root, 'state');
  await fsp.mkdir(path.join(state, 'by-id'), { recursive: true });
  await fsp.symlink('/dev/nbd3', path.join(state, 'by-id', 'nvmf-nbd-fedcba9876543210fedcba9876543210'));
  await fsp.symlink('/dev/nbd3p1', path.join(state, 'by-id', 'nvmf-nbd-fedcba9876543210fedcba9876543210-part1'));
  assert.equal(await helper(d, state), 'NVMF_NBD_ID=fedcba9876543210fedcba9876543210\n');
  assert.equal(await helper(path.join(sys, 'block', 'nbd4'), state), '');
  // The rule file names the helper and makes disk and -partN links.
  const rule = await fsp.readFile(path.join(REPO, 'udev', '60-nvmf-nbd.rules.in'), 'utf8');
  assert.match(rule, /IMPORT\{program\}="@LIBEXECDIR@\/nvmf-nbd-id \/sys%p"/);
  assert.match(rule, /SYMLINK\+="disk\/by-id\/nvmf-nbd-\$env\{NVMF_NBD_ID\}-part%n"/);
  await fsp.rm(root, { recursive: true });
});
