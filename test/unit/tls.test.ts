/**
 * NVMe/TCP TLS without a guest: the PSK interchange format (CRC-32, lengths), identities and
 * derived PSKs (vectors from nvme-cli 2.13, checked live in test/integration/tls-linux-target),
 * the key store (0600, owner, import/export/revoke), and our host against our embedded target
 * over TLS: required and optional ports, digests, discovery TREQ/SECTYPE, wrong key, wrong
 * identity, TLS required but off, TLS against a plain port, SHA-384 keys refused — each ends in a
 * documented code and none hangs.
 */
import { after, before, test } from 'node:test';
import * as assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as net from 'node:net';
import * as tls from 'node:tls';
import { NvmeTarget } from '../../src/embedded-target/target';
import { Controller, type ControllerOptions } from '../../src/controller/controller';
import { discover } from '../../src/controller/discovery';
import { ErrorCode, NvmfNbdError } from '../../src/errors';
import { TcpSecType, Treq } from '../../src/wire/discovery-log';
import { deriveTlsPsk, formatInterchangeKey, identityNqns, parseInterchangeKey } from '../../src/tls/psk';
import { serverTicketsSuppressed, tlsConnect } from '../../src/tls/channel';
import { encodeIcReq } from '../../src/wire/pdu';
import { rejectsCode, throwsCode } from '../helpers/assert-code';
import { KeyStore, readSecretFile } from '../../src/tls/keystore';
import { targetPskTable } from '../../src/tls/target-keys';
import { tlsFromArgs } from '../../src/cli/tls-args';
import { discoveryJson, discoveryTable } from '../../src/cli/verbs/discover';

const NQN = 'nqn.2014-08.org.nvmf-nbd:tls-unit';
const DISC = 'nqn.2014-08.org.nvmexpress.discovery';
const HOSTNQN = 'nqn.2014-08.org.nvmexpress:uuid:3d1f7c2e-9b4a-4f6e-8a21-7c5d9e0b1f33';
const HOSTID = '3d1f7c2e-9b4a-4f6e-8a21-7c5d9e0b1f33';
const SECRET = Buffer.from('00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff', 'hex');
/** `nvme gen-tls-key --secret 0011…eeff` (nvme-cli 2.13). */
const KEY = formatInterchangeKey(SECRET, 1);

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tls-unit-'));
const key = parseInterchangeKey(KEY);
const other = parseInterchangeKey(formatInterchangeKey(randomBytes(32), 1));
const table = targetPskTable(`# test\n${HOSTNQN} ${KEY}\n`, [NQN, DISC]);

let required: NvmeTarget;
let optional: NvmeTarget;
let plain: NvmeTarget;
const ports = { required: 0, optional: 0, plain: 0 };

function newTarget(mode?: 'required' | 'optional'): NvmeTarget {
  return new NvmeTarget({
    listen: { host: '127.0.0.1', port: 0 },
    subsystems: [{ nqn: NQN, namespaces: [{ nsid: 1, sizeBytes: 4 << 20, backing: { memory: true } }] }],
    ...(mode !== undefined ? { tls: { mode, lookup: (id: string) => table.get(id) } } : {}),
    connectTimeoutMs: 5000,
  });
}

before(async () => {
  required = newTarget('required');
  optional = newTarget('optional');
  plain = newTarget();
  ports.required = (await required.listen()).port;
  ports.optional = (await optional.listen()).port;
  ports.plain = (await plain.listen()).port;
});

after(async () => {
  await Promise.all([required.close(), optional.close(), plain.close()]);
  fs.rmSync(tmp, { recursive: true, force: true });
});

function opts(port: number, o: Partial<ControllerOptions> = {}): ControllerOptions {
  return {
    traddr: '127.0.0.1', trsvcid: port, subnqn: NQN, hostnqn: HOSTNQN, hostid: HOSTID, nrIoQueues: 2, queueSize: 16,
    kato: 5000, connectTimeoutMs: 5000, tls: deriveTlsPsk(key, HOSTNQN, NQN, 1), ...o,
  };
}

async function code(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof NvmfNbdError, String(err));
    return err.code;
  }
  assert.fail('expected a rejection');
}

test('interchange format: nvme-cli vectors, CRC-32 and length checks, no key in messages', () => {
  assert.equal(KEY, 'NVMeTLSkey-1:01:ABEiM0RVZneImaq7zN3u/wARIjNEVWZ3iJmqu8zd7v8qDMNU:');
  const k = parseInterchangeKey(KEY);
  assert.equal(k.hmac, 1);
  assert.ok(k.key.equals(SECRET));
  const bad = KEY.replace('ABEi', 'ABEj');
  {
    const e = throwsCode(() => parseInterchangeKey(bad), ErrorCode.TLS_KEY_INVALID);
    assert.ok(/CRC-32/.test(e.message) && !e.message.includes('ABEj'));
  }
  throwsCode(() => parseInterchangeKey('NVMeTLSkey-2:01:AAAA:'), ErrorCode.TLS_KEY_INVALID);
  throwsCode(() => parseInterchangeKey(formatInterchangeKey(randomBytes(48), 2).replace(':02:', ':01:')), ErrorCode.TLS_KEY_INVALID);
  const k48 = parseInterchangeKey(formatInterchangeKey(randomBytes(48), 2));
  assert.equal(k48.key.length, 48);
});

test('identities and derived PSKs (nvme-cli 2.13 / libnvme 1.13 vectors)', () => {
  const v0 = deriveTlsPsk(key, HOSTNQN, NQN, 0);
  assert.equal(v0.identity, `NVMe0R01 ${HOSTNQN} ${NQN}`);
  const v1 = deriveTlsPsk(key, HOSTNQN, NQN, 1);
  assert.match(v1.identity, new RegExp(`^NVMe1R01 ${HOSTNQN} ${NQN} [A-Za-z0-9+/]{43}=$`));
  assert.notDeepEqual(v0.psk, v1.psk);
  assert.equal(v0.psk.length, 32);
  // The RFC 8446 layout differs from the compat one nvme-cli 2.13 uses.
  assert.notDeepEqual(deriveTlsPsk(key, HOSTNQN, NQN, 0, 'rfc8446').psk, v0.psk);
  assert.equal(deriveTlsPsk(key, HOSTNQN, NQN, 0, 'rfc8446').identity, v0.identity);
});

test('key files: refused unless 0600 and ours; key store insert/lookup/export/import/revoke', () => {
  const f = path.join(tmp, 'k');
  fs.writeFileSync(f, KEY, { mode: 0o644 });
  fs.chmodSync(f, 0o644);
  {
    const e = throwsCode(() => readSecretFile(f), ErrorCode.KEY_FILE_INSECURE);
    assert.ok(!e.message.includes(KEY));
  }
  fs.chmodSync(f, 0o600);
  assert.equal(readSecretFile(f), KEY);
  const link = path.join(tmp, 'link');
  fs.symlinkSync(f, link);
  throwsCode(() => readSecretFile(link), ErrorCode.KEY_FILE_INSECURE);

  const store = new KeyStore(path.join(tmp, 'store', 'tls-keys'));
  const p = deriveTlsPsk(key, HOSTNQN, NQN, 0);
  store.insert(p);
  store.insert(deriveTlsPsk(key, HOSTNQN, NQN, 1));
  assert.equal(fs.statSync(store.file).mode & 0o777, 0o600);
  assert.ok(store.lookup(p.identity)?.psk.equals(p.psk));
  const exported = store.exportText();
  assert.equal(exported.split('\n').filter(Boolean).length, 2);
  assert.match(exported, new RegExp(`^NVMe0R01 ${HOSTNQN} ${NQN} NVMeTLSkey-0:01:`, 'm'));
  const copy = new KeyStore(path.join(tmp, 'copy'));
  assert.equal(copy.importText(exported), 2);
  assert.ok(copy.lookup(p.identity)?.psk.equals(p.psk));
  assert.equal(store.revoke(p.identity), true);
  assert.equal(store.revoke(p.identity), false);
  assert.equal(store.lookup(p.identity), undefined);
  fs.chmodSync(store.file, 0o640);
  throwsCode(() => store.entries(), ErrorCode.KEY_FILE_INSECURE);
});

test('CLI flags: --tls-key inline, --tls from the key store, --tls-key-identity, missing key, SHA-384 refused', () => {
  const keyring = path.join(tmp, 'cli-store');
  const inline = tlsFromArgs({ 'tls-key': KEY }, HOSTNQN, NQN);
  assert.ok(inline !== undefined);
  assert.match(inline.identity, /^NVMe1R01 /);
  assert.equal(tlsFromArgs({}, HOSTNQN, NQN), undefined);
  throwsCode(() => tlsFromArgs({ tls: true, keyring }, HOSTNQN, NQN), ErrorCode.TLS_KEY_NOT_FOUND);
  new KeyStore(keyring).insert(deriveTlsPsk(key, HOSTNQN, NQN, 0));
  assert.equal(tlsFromArgs({ tls: true, keyring }, HOSTNQN, NQN)?.identity, `NVMe0R01 ${HOSTNQN} ${NQN}`);
  assert.equal(tlsFromArgs({ 'tls-key-identity': `NVMe0R01 ${HOSTNQN} ${NQN}`, keyring }, HOSTNQN, NQN)?.identity, `NVMe0R01 ${HOSTNQN} ${NQN}`);
  throwsCode(() => tlsFromArgs({ 'tls-key': formatInterchangeKey(randomBytes(48), 2) }, HOSTNQN, NQN), ErrorCode.TLS_UNSUPPORTED_KEY);
});

test('host ↔ embedded target over TLS (required port): I/O with and without digests', async () => {
  for (const dg of [false, true]) {
    const ctrl = await Controller.connect(opts(ports.required, { hdgst: dg, ddgst: dg }));
    try {
      const data = randomBytes(256 << 10);
      await ctrl.write(1, 8n, data);
      assert.ok((await ctrl.read(1, 8n, data.length / 512)).equals(data));
    } finally {
      await ctrl.close();
    }
  }
  // Identity version 0 works too.
  const c0 = await Controller.connect(opts(ports.required, { tls: deriveTlsPsk(key, HOSTNQN, NQN, 0) }));
  await c0.close();
});

test('optional port: TLS and plain hosts both connect; discovery log shows TREQ and SECTYPE', async () => {
  const a = await Controller.connect(opts(ports.optional));
  const b = await Controller.connect(opts(ports.optional, { tls: undefined }));
  await a.close();
  await b.close();
  for (const [port, treq] of [[ports.required, Treq.REQUIRED], [ports.optional, Treq.NOT_REQUIRED]] as const) {
    const log = await discover({ traddr: '127.0.0.1', trsvcid: port, hostnqn: HOSTNQN, hostid: HOSTID, tls: deriveTlsPsk(key, HOSTNQN, DISC, 0) });
    const e = log.entries.find((x) => x.subnqn === NQN);
    assert.ok(e !== undefined);
    assert.equal(e.treq & 3, treq);
    assert.equal(e.tsas[0], TcpSecType.TLS13);
    // discover shows both (table and JSON).
    assert.match(discoveryTable(log), treq === Treq.REQUIRED ? /\brequired\s+tls13\b/ : /not required\s+tls13\b/);
    assert.equal((discoveryJson(log).records as Array<{ sectype: string }>)[0]?.sectype, 'tls13');
  }
  const p = await discover({ traddr: '127.0.0.1', trsvcid: ports.plain, hostnqn: HOSTNQN, hostid: HOSTID });
  assert.equal((p.entries[0]?.treq ?? 0) & 3, 0);
  assert.equal(p.entries[0]?.tsas[0], TcpSecType.NONE);
});

test('failures: wrong key, unknown identity, TLS required but off, TLS to a plain port — codes, no hang', async () => {
  await rejectsCode(Controller.connect(opts(ports.required, { tls: deriveTlsPsk(other, HOSTNQN, NQN, 1) })), ErrorCode.TLS_HANDSHAKE);
  await rejectsCode(Controller.connect(opts(ports.required, { tls: deriveTlsPsk(key, 'nqn.2014-08.org.nvmf-nbd:stranger', NQN, 0) })), ErrorCode.TLS_HANDSHAKE);
  const off = await code(Controller.connect(opts(ports.required, { tls: undefined })));
  assert.ok(([ErrorCode.CONNECTION_CLOSED, ErrorCode.CONNECT_FAILED] as string[]).includes(off), off);
  await rejectsCode(Controller.connect(opts(ports.plain)), ErrorCode.TLS_HANDSHAKE);
});

/**
 * Open a raw TLS connection (our client options) to `port`, send an ICReq and resolve with the
 * number of TLS 1.3 NewSessionTickets the client saw ('session' events) before the ICResp came.
 */
async function ticketsBeforeIcResp(port: number): Promise<number> {
  const p = deriveTlsPsk(key, HOSTNQN, NQN, 1);
  const s = tlsConnect('127.0.0.1', port, p);
  let tickets = 0;
  s.on('session', () => { tickets++; });
  try {
    await new Promise<void>((resolve, reject) => {
      s.once('error', reject);
      s.once('secureConnect', () => s.write(encodeIcReq({ hpda: 0, hdgst: false, ddgst: false, maxr2t: 0 })));
      let got = 0;
      s.on('data', (d: Buffer) => {
        got += d.length;
        if (got >= 128) resolve();
      });
    });
    // A ticket, when sent, precedes the ICResp on the wire; give a late one a moment anyway.
    await new Promise((r) => setImmediate(r));
    return tickets;
  } finally {
    s.destroy();
  }
}

test('target sends no TLS 1.3 NewSessionTicket (the Linux host refuses post-handshake records); a default node:tls server does', async () => {
  assert.ok(serverTicketsSuppressed(), 'this Node lacks the ticket-key hook');
  assert.equal(await ticketsBeforeIcResp(ports.required), 0);
  assert.equal(await ticketsBeforeIcResp(ports.optional), 0);
  // Control: the same PSK options without our context make OpenSSL send a ticket, which the
  // client above would have counted — so the zero is not an artefact of the test client.
  const srv = net.createServer((sock) => {
    const ts = new tls.TLSSocket(sock, {
      isServer: true, minVersion: 'TLSv1.3', ciphers: 'TLS_AES_128_GCM_SHA256',
      pskCallback: (_s: tls.TLSSocket, id: string) => table.get(id) ?? null,
    } as tls.TLSSocketOptions);
    ts.on('error', () => undefined);
    ts.on('data', () => ts.write(Buffer.alloc(128)));
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  try {
    assert.ok(await ticketsBeforeIcResp((srv.address() as net.AddressInfo).port) >= 1);
  } finally {
    srv.close();
  }
});

test('Connect over TLS must name the PSK identity\'s host and subsystem: mismatch → Invalid Parameters, logged with a stable code', async () => {
  const lines: string[] = [];
  const t = new NvmeTarget({
    listen: { host: '127.0.0.1', port: 0 },
    subsystems: [
      { nqn: NQN, namespaces: [{ nsid: 1, sizeBytes: 4 << 20, backing: { memory: true } }] },
      { nqn: `${NQN}-b`, namespaces: [{ nsid: 1, sizeBytes: 4 << 20, backing: { memory: true } }] },
    ],
    tls: { mode: 'optional', lookup: (id: string) => both.get(id) },
    connectTimeoutMs: 5000,
    log: (level, msg) => lines.push(`${level} ${msg}`),
  });
  const STRANGER = 'nqn.2014-08.org.nvmexpress:uuid:00000000-1111-2222-3333-444444444444';
  const both = targetPskTable(`${HOSTNQN} ${KEY}\n${STRANGER} ${KEY}\n`, [NQN, `${NQN}-b`, DISC]);
  const port = (await t.listen()).port;
  try {
    // The identity names HOSTNQN, the Connect says STRANGER (who has a key of its own here).
    const host = await rejectsCode(Controller.connect(opts(port, { hostnqn: STRANGER })), ErrorCode.CONNECT_FAILED);
    assert.equal(host.status?.sct, 1);
    assert.equal(host.status?.sc, 0x82);
    assert.equal(host.status?.dnr, true);
    assert.match(host.message, /host NQN/);
    // The identity names subsystem -b, the Connect asks for NQN.
    const sub = await rejectsCode(Controller.connect(opts(port, { tls: deriveTlsPsk(key, HOSTNQN, `${NQN}-b`, 0) })), ErrorCode.CONNECT_FAILED);
    assert.equal(sub.status?.sc, 0x82);
    assert.match(sub.message, /subsystem NQN/);
    // The discovery subsystem's identity cannot open an NVM subsystem either.
    await rejectsCode(Controller.connect(opts(port, { tls: deriveTlsPsk(key, HOSTNQN, DISC, 1) })), ErrorCode.CONNECT_FAILED);
    const refused = lines.filter((l) => l.includes(ErrorCode.TLS_IDENTITY_MISMATCH));
    assert.equal(refused.length, 3, lines.join('\n'));
    assert.ok(refused.every((l) => l.startsWith('warn ')));
    assert.equal(t.stats().tlsIdentityMismatches, 3);
    for (const l of lines) assert.ok(!l.includes(SECRET.toString('hex')) && !l.includes(KEY.slice(16, 40)), `secret in log: ${l}`);
    // Matching identities (v0, v1, either subsystem) and plain queues still connect.
    for (const [sn, v] of [[NQN, 1], [`${NQN}-b`, 0]] as const) {
      const c = await Controller.connect(opts(port, { subnqn: sn, tls: deriveTlsPsk(key, HOSTNQN, sn, v) }));
      assert.equal(c.identify.subnqn, sn);
      await c.close();
    }
    const plainHost = await Controller.connect(opts(port, { hostnqn: STRANGER, tls: undefined }));
    await plainHost.close();
    assert.equal(t.stats().tlsIdentityMismatches, 3);
  } finally {
    await t.close();
  }
});

test('identityNqns: NQNs of v0/v1 identities; anything else is undefined', () => {
  assert.deepEqual(identityNqns(`NVMe0R01 ${HOSTNQN} ${NQN}`), { hostnqn: HOSTNQN, subnqn: NQN });
  assert.deepEqual(identityNqns(`NVMe1R02 ${HOSTNQN} ${NQN} abc=`), { hostnqn: HOSTNQN, subnqn: NQN });
  for (const bad of [`NVMe1R01 ${HOSTNQN} ${NQN}`, `NVMe0R01 ${HOSTNQN} ${NQN} extra`, `NVMe0R03 ${HOSTNQN} ${NQN}`, `NVMe0R01 ${HOSTNQN}  ${NQN}`, 'plain', '']) {
    assert.equal(identityNqns(bad), undefined, bad);
  }
});
