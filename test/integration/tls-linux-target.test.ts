/**
 * NVMe/TCP over TLS against Linux 6.12 (the 6.12 guest, tlshd doing the kernel's handshakes):
 *
 *   - key tools: our gen-tls-key / check-tls-key / tls-key --export print exactly what nvme-cli 2.13
 *     prints for the same inputs (keys, identities v0 and v1, the derived TLS PSKs)
 *   - the host engine against nvmet with TLS required: connect, write/read patterns with and
 *     without header+data digests, `connect --tls-key` through the CLI (JSON until SIGINT)
 *   - a wrong key and plain TCP against the TLS-required port fail with the documented codes, no hang
 *   - the port removed and re-added: the controller reconnects over TLS and held writes complete
 *
 * One guest for the whole file.
 */
import { before, after, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Controller } from '../../src/controller/controller';
import type { ControllerOptions } from '../../src/controller/controller';
import { namespaceOf } from '../helpers/namespace-of';
import { ErrorCode, NvmfNbdError } from '../../src/errors';
import { deriveTlsPsk, parseInterchangeKey } from '../../src/tls/psk';
import { need } from '../helpers/prereq';
import { Guest, addNvmetPort, guestAvailable, removeNvmetPort, setupNvmet, shq } from '../helpers/guest';
import { openScenarioSession, recoverScenario } from '../helpers/fault-scenario';

const NQN = 'nqn.2014-08.org.nvmf-nbd:tls-linux-target';
const HOSTNQN = 'nqn.2014-08.org.nvmexpress:uuid:3d1f7c2e-9b4a-4f6e-8a21-7c5d9e0b1f33';
const HOSTID = '3d1f7c2e-9b4a-4f6e-8a21-7c5d9e0b1f33';
const SECRET = '00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff';
const SECRET48 = `${SECRET}0123456789abcdef0123456789abcdef`;
const MAIN = path.resolve(__dirname, '../../src/cli/main.js');

const avail = guestAvailable('6.12');
let g: Guest | undefined;
let port = 0;
let key = '';
let tmp = '';

function cli(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number; out: string; err: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [MAIN, ...args], { env: { ...process.env, NVMF_NBD_STATE_DIR: tmp, ...env }, timeout: 60_000 }, (err, out, errOut) => {
      resolve({ code: err === null ? 0 : typeof err.code === 'number' ? err.code : 1, out, err: errOut });
    });
  });
}

before(async () => {
  if (!avail.ok) return;
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tls-linux-'));
  g = await Guest.start({ kernel: '6.12', hostfwd: [{ hostPort: 0, guestPort: 4420 }] });
  port = g.hostPorts[0] as number;
  key = (await g.exec(`nvme gen-tls-key --secret ${SECRET}`)).out.trim().split('\n')[0] as string;
  // The kernel target looks a client's identity up in .nvme: give it both identity versions.
  await g.exec(`nvme check-tls-key --insert -d ${shq(key)} -n ${HOSTNQN} -c ${NQN} -I 1 && nvme check-tls-key --insert -d ${shq(key)} -n ${HOSTNQN} -c ${NQN} -I 0`);
  await setupNvmet(g, { subsystems: [{ nqn: NQN, namespaces: [{ nsid: 1, sizeMiB: 32 }] }], tls: 'required' });
}, { timeout: 900_000 });

after(async () => {
  await g?.stop();
  if (tmp !== '') fs.rmSync(tmp, { recursive: true, force: true });
});

const prereq = (t: Parameters<typeof need>[0]): boolean => need(t, avail.ok, avail.reason);

function opts(o: Partial<ControllerOptions> = {}): ControllerOptions {
  return {
    traddr: '127.0.0.1', trsvcid: port, subnqn: NQN, hostnqn: HOSTNQN, hostid: HOSTID, nrIoQueues: 2, queueSize: 32,
    kato: 5000, ioTimeoutMs: 30_000, connectTimeoutMs: 20_000,
    tls: deriveTlsPsk(parseInterchangeKey(key), HOSTNQN, NQN, 1), ...o,
  };
}

test('key tools: same output as nvme-cli 2.13 (gen-tls-key, check-tls-key -I 0/1, derived PSKs)', { timeout: 120_000 }, async (t) => {
  if (!prereq(t)) return;
  const guest = g as Guest;
  for (const [secret, hmac] of [[SECRET, 1], [SECRET48, 2]] as const) {
    const theirs = (await guest.exec(`nvme gen-tls-key --secret ${secret} --hmac ${hmac}`)).out.trim();
    const ours = await cli(['gen-tls-key', '--secret', secret, '--hmac', String(hmac)]);
    assert.equal(ours.code, 0, ours.err);
    assert.equal(ours.out.trim(), theirs, `gen-tls-key --hmac ${hmac}`);
  }
  const k384 = (await guest.exec(`nvme gen-tls-key --secret ${SECRET48} --hmac 2`)).out.trim();
  for (const k of [key, k384]) {
    for (const v of [0, 1]) {
      const theirs = (await guest.exec(`nvme check-tls-key -d ${shq(k)} -n ${HOSTNQN} -c ${NQN} -I ${v}`)).out.trim();
      const ours = await cli(['check-tls-key', '-d', k, '-n', HOSTNQN, '-c', NQN, '-I', String(v)]);
      assert.equal(ours.code, 0, ours.err);
      assert.equal(ours.out.trim(), theirs.split('\n').pop(), `check-tls-key ${k.slice(0, 16)} -I ${v}`);
    }
  }
  // Derived TLS PSKs: nvme-cli's keyring export vs our key store's export, line for line.
  const store = path.join(tmp, 'cmp-keys');
  for (const k of [key, k384]) {
    for (const v of [0, 1]) {
      const r = await cli(['check-tls-key', '--insert', '-d', k, '-n', HOSTNQN, '-c', NQN, '-I', String(v), '--keyring', store]);
      assert.equal(r.code, 0, r.err);
    }
  }
  await guest.exec(`nvme check-tls-key --insert -d ${shq(k384)} -n ${HOSTNQN} -c ${NQN} -I 0 && nvme check-tls-key --insert -d ${shq(k384)} -n ${HOSTNQN} -c ${NQN} -I 1`);
  const theirs = new Set((await guest.exec('nvme tls-key --export')).out.split('\n').filter((l) => l.startsWith('NVMe')));
  const ours = (await cli(['tls-key', '--export', '--keyring', store])).out.split('\n').filter((l) => l !== '');
  assert.equal(ours.length, 4);
  for (const line of ours) assert.ok(theirs.has(line), `our '${line.split(' ')[0]} …' line is not in nvme-cli's export:\n${[...theirs].join('\n')}`);
  // And the other way: nvme-cli's export imports into our store (SHA-256 lines).
  const imp = path.join(tmp, 'imported');
  fs.writeFileSync(path.join(tmp, 'export.txt'), [...theirs].join('\n') + '\n', { mode: 0o600 });
  const r = await cli(['tls-key', '--import', '-f', path.join(tmp, 'export.txt'), '--keyring', imp]);
  assert.equal(r.code, 0, r.err);
  assert.equal(fs.statSync(imp).mode & 0o777, 0o600);
  // Our gen-tls-key output is accepted by nvme check-tls-key.
  const gen = (await cli(['gen-tls-key'])).out.trim();
  assert.match((await guest.exec(`nvme check-tls-key -d ${shq(gen)} -n ${HOSTNQN} -c ${NQN}`)).out, /^NVMe0R01 /m);
});

test('TLS-required nvmet: connect, write/read patterns with and without digests', { timeout: 180_000 }, async (t) => {
  if (!prereq(t)) return;
  for (const dg of [false, true]) {
    const ctrl = await Controller.connect(opts({ hdgst: dg, ddgst: dg }));
    try {
      assert.equal(ctrl.identify.subnqn, NQN);
      const dev = namespaceOf(ctrl, 1);
      let off = dg ? 8 << 20 : 0;
      for (const size of [512, 4096, 128 << 10, 1 << 20]) {
        const data = randomBytes(size);
        await dev.write(off, data, false);
        assert.ok((await dev.read(off, size)).equals(data), `digests ${dg}: ${size} B at ${off}`);
        off += Math.max(size, 4096);
      }
    } finally {
      await ctrl.close();
    }
  }
});

test('TLS-required nvmet: wrong key and plain TCP fail with documented codes, no hang', { timeout: 120_000 }, async (t) => {
  if (!prereq(t)) return;
  const wrong = parseInterchangeKey((await (g as Guest).exec('nvme gen-tls-key')).out.trim());
  await assert.rejects(Controller.connect(opts({ tls: deriveTlsPsk(wrong, HOSTNQN, NQN, 1) })),
    (err: unknown) => err instanceof NvmfNbdError && err.code === ErrorCode.TLS_HANDSHAKE);
  await assert.rejects(Controller.connect(opts({ tls: undefined, connectTimeoutMs: 15_000 })),
    (err: unknown) => err instanceof NvmfNbdError && [ErrorCode.CONNECT_FAILED, ErrorCode.CONNECTION_CLOSED, ErrorCode.TIMEOUT].includes(err.code as never));
});

test('CLI: connect --tls-key (identity v1, as nvme connect --tls-key) serves the namespace over NBD', { timeout: 120_000 }, async (t) => {
  if (!prereq(t)) return;
  const keyFile = path.join(tmp, 'key.txt');
  fs.writeFileSync(keyFile, `${key}\n`, { mode: 0o644 });
  fs.chmodSync(keyFile, 0o644);
  const insecure = await cli(['connect', '-t', 'tcp', '-a', '127.0.0.1', '-s', String(port), '-n', NQN, '-q', HOSTNQN, '-I', HOSTID, '--tls-key', keyFile, '--foreground']);
  assert.notEqual(insecure.code, 0);
  assert.match(insecure.err, /CFG_ERR_KEY_FILE_INSECURE/);
  assert.ok(!insecure.err.includes(key.slice(16, 40)), 'the key leaked into an error');
  fs.chmodSync(keyFile, 0o600);
  const child = spawn(process.execPath, [MAIN, 'connect', '-t', 'tcp', '-a', '127.0.0.1', '-s', String(port), '-n', NQN, '-q', HOSTNQN, '-I', HOSTID,
    '--tls-key', keyFile, '--foreground', '--nbd', `unix:${tmp}/nbd`, '-o', 'json'], { env: { ...process.env, NVMF_NBD_STATE_DIR: tmp } });
  let out = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => { out += d.toString(); });
  child.stderr.on('data', (d: Buffer) => { err += d.toString(); });
  const exited = new Promise<number>((resolve) => child.on('exit', (c) => resolve(c ?? 1)));
  try {
    await new Promise<void>((resolve, reject) => {
      const tick = setInterval(() => {
        if (out.includes('"namespaces"')) { clearInterval(tick); resolve(); }
      }, 100);
      void exited.then((c) => { clearInterval(tick); reject(new Error(`connect exited ${c}: ${err}`)); });
    });
    const j = JSON.parse(out) as { namespaces: unknown[] };
    assert.equal(j.namespaces.length, 1);
    assert.ok(!out.includes(key.slice(16, 40)) && !err.includes(key.slice(16, 40)), 'the key leaked into the output');
  } finally {
    child.kill('SIGINT');
    assert.equal(await exited, 0, err);
  }
});

test('TLS: nvmet port removed and re-added, the controller reconnects over TLS', { timeout: 180_000 }, async (t) => {
  if (!prereq(t)) return;
  const guest = g as Guest;
  await recoverScenario({
    label: 'tls', blockSize: 4096, blocks: 64, rate: 5, warmupMs: 1000, settleMs: 500,
    detectMs: 20_000, liveMs: 60_000, resumeMs: 30_000, pollMs: 50,
    open: () => openScenarioSession('tls0', { ...opts({ kato: 2000, connectTimeoutMs: 8000, ioTimeoutMs: 15_000 }), reconnectDelayMs: 1000, ctrlLossTmoMs: 90_000 }, 4096 * 64),
    fault: async () => {
      await removeNvmetPort(guest);
      setTimeout(() => { void addNvmetPort(guest); }, 3000).unref();
    },
    detail: (session, cntlid) => `cntlid ${cntlid} → ${session.controller.cntlid}`,
    failedMessage: 'held writes completed after the TLS reconnect',
    resumedMessage: 'I/O resumed over TLS',
    checkReconnects: (session) => { assert.ok(session.reconnects >= 1); },
  });
});
