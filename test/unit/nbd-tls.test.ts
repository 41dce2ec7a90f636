/**
 * NBD over TLS (issue 10 item 5) and who may use an NBD endpoint (issue 14 finding 1): the
 * psktool PSK file parser, key file modes, the access policy, the peer-uid verdict, and the
 * STARTTLS gate against a real node:tls client (PSK) — TLS_REQD before STARTTLS, EXPORT_NAME
 * closed, a wrong key refused.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import * as tls from 'node:tls';
import { ErrorCode } from '../../src/errors';
import { NbdTlsServer, parsePskFile } from '../../src/tls/nbd-tls';
import { checkLocalPeer, isLoopbackHost } from '../../src/net/loopback-guard';
import { checkTcpListenAllowed, needsPeerUidCheck } from '../../src/nbd/access';
import { runTlsGate, type TlsGateResult } from '../../src/nbd/tls-gate';
import { NbdOptionParser, Opt, Rep, encodeOption, ClientFlag } from '../../src/wire/nbd';
import { throwsCode } from '../helpers/assert-code';
import { ByteReader, readOptionReply } from '../helpers/byte-reader';

const KEY = '0123456789abcdef0123456789abcdef';

function tmp(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'nbd-tls-'));
}

test('psktool PSK file: identity:hexkey lines, comments skipped, errors name the line only', () => {
  const m = parsePskFile(`# made by psktool\nalice:${KEY}\n\nbob:${KEY.toUpperCase()}\r\n`);
  assert.deepEqual([...m.keys()], ['alice', 'bob']);
  assert.equal(m.get('alice')?.toString('hex'), KEY);
  // The identity ends at the first colon (as GnuTLS reads it): "name:abab…" is no hex key.
  throwsCode(() => parsePskFile(`weird:name:${'ab'.repeat(32)}\n`), ErrorCode.TLS_KEY_INVALID);
});

test('psktool PSK file: bad lines refused with NVMF_ERR_TLS_KEY_INVALID, key never in the message', () => {
  for (const bad of [`alice${KEY}`, `:${KEY}`, `alice:${KEY}0`, `alice:xyz0`, `alice:`, `alice:${KEY}\nalice:${KEY}`, '# only a comment\n']) {
    const e = throwsCode(() => parsePskFile(bad, 'f.psk'), ErrorCode.TLS_KEY_INVALID, JSON.stringify(bad));
    assert.ok(!e.message.includes(KEY), e.message);
  }
});

test('NBD TLS key files must be 0600 and ours (CFG_ERR_KEY_FILE_INSECURE); nothing given → CFG_ERR_INVALID', () => {
  const d = tmp();
  const f = path.join(d, 'keys.psk');
  fs.writeFileSync(f, `alice:${KEY}\n`, { mode: 0o644 });
  fs.chmodSync(f, 0o644);
  const e = throwsCode(() => NbdTlsServer.load({ pskFile: f }), ErrorCode.KEY_FILE_INSECURE);
  assert.ok(!e.message.includes(KEY));
  fs.chmodSync(f, 0o600);
  const s = NbdTlsServer.load({ pskFile: f });
  assert.match(s.describe(), /1 identity/);
  assert.ok(!s.describe().includes(KEY));
  throwsCode(() => NbdTlsServer.load({}), ErrorCode.CFG_INVALID);
  throwsCode(() => NbdTlsServer.load({ certFile: f }), ErrorCode.CFG_INVALID);
  throwsCode(() => NbdTlsServer.load({ pskFile: path.join(d, 'missing') }), ErrorCode.TLS_KEY_NOT_FOUND);
  fs.rmSync(d, { recursive: true });
});

test('access policy: loopback detection, plain non-loopback TCP needs --nbd-insecure or TLS', () => {
  for (const h of ['127.0.0.1', '127.1.2.3', '::1', '[::1]', 'localhost', '::ffff:127.0.0.1', '0:0:0:0:0:0:0:1']) assert.ok(isLoopbackHost(h), h);
  for (const h of ['0.0.0.0', '::', '10.0.0.1', '192.168.1.1', '::ffff:10.0.0.1', 'example.org']) assert.ok(!isLoopbackHost(h), h);
  throwsCode(() => checkTcpListenAllowed('0.0.0.0'), ErrorCode.NBD_INSECURE_BIND);
  throwsCode(() => checkTcpListenAllowed('::', { allowAnyLocalUser: true }), ErrorCode.NBD_INSECURE_BIND);
  checkTcpListenAllowed('0.0.0.0', { insecure: true });
  checkTcpListenAllowed('127.0.0.1');
  assert.equal(needsPeerUidCheck('127.0.0.1'), true);
  assert.equal(needsPeerUidCheck('127.0.0.1', { allowAnyLocalUser: true }), false);
  assert.equal(needsPeerUidCheck('0.0.0.0', { insecure: true }), false);
});

test('peer uid verdict: own uid and root allowed, another uid and an unknown peer refused', async () => {
  const d = tmp();
  fs.mkdirSync(path.join(d, 'net'));
  const line = (uid: number): string => `   0: 0100007F:D431 0100007F:2A39 01 00000000:00000000 00:00000000 00000000 ${uid} 0 1 1\n`;
  const sock = { localAddress: '127.0.0.1', localPort: 10809, remoteAddress: '127.0.0.1', remotePort: 0xd431 };
  const hdr = '  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n';
  for (const [uid, allowed] of [[1000, true], [0, true], [65534, false]] as const) {
    fs.writeFileSync(path.join(d, 'net', 'tcp'), hdr + line(uid));
    assert.deepEqual(await checkLocalPeer(sock, { selfUid: 1000, procRoot: d }), { allowed, uid });
  }
  fs.writeFileSync(path.join(d, 'net', 'tcp'), hdr);
  assert.deepEqual(await checkLocalPeer(sock, { selfUid: 1000, procRoot: d }), { allowed: false });
  fs.rmSync(d, { recursive: true });
});

test('option parser resumed after STARTTLS starts at an option header (no client flags)', () => {
  const p = new NbdOptionParser(undefined, true);
  p.push(encodeOption(Opt.LIST));
  assert.deepEqual(p.next(), { kind: 'option', option: Opt.LIST, data: Buffer.alloc(0) });
});

/** A gate on a loopback TCP pair; returns the client socket, its reader and the gate's result. */
async function gatePair(server: NbdTlsServer): Promise<{ c: net.Socket; r: ByteReader; result: Promise<TlsGateResult | undefined>; logs: string[]; close(): void }> {
  const srv = net.createServer({ allowHalfOpen: true });
  await new Promise<void>((res) => srv.listen(0, '127.0.0.1', () => res()));
  const logs: string[] = [];
  const accepted = new Promise<net.Socket>((res) => srv.once('connection', res));
  const c = net.connect({ host: '127.0.0.1', port: (srv.address() as net.AddressInfo).port });
  const s = await accepted;
  const result = runTlsGate(s, { tls: server, timeoutMs: 10_000, log: (_l, msg, code) => logs.push(`${code ?? ''} ${msg}`) });
  const r = new ByteReader(c);
  const g = await r.read(18);
  assert.equal(g.readBigUInt64BE(0), 0x4e42444d41474943n);
  const flags = Buffer.alloc(4);
  flags.writeUInt32BE(ClientFlag.FIXED_NEWSTYLE | ClientFlag.NO_ZEROES);
  c.write(flags);
  return { c, r, result, logs, close: () => { c.destroy(); s.destroy(); srv.close(); } };
}

function pskServer(): { server: NbdTlsServer; dir: string } {
  const dir = tmp();
  const f = path.join(dir, 'keys.psk');
  fs.writeFileSync(f, `alice:${KEY}\n`, { mode: 0o600 });
  return { server: NbdTlsServer.load({ pskFile: f }), dir };
}

function tlsClient(c: net.Socket, key: string): tls.TLSSocket {
  return tls.connect({
    socket: c,
    checkServerIdentity: () => undefined,
    pskCallback: () => ({ psk: Buffer.from(key, 'hex'), identity: 'alice' }),
    ciphers: 'TLS_AES_128_GCM_SHA256:PSK-AES128-GCM-SHA256',
  });
}

test('STARTTLS gate: options before STARTTLS get NBD_REP_ERR_TLS_REQD, then TLS with the right PSK', { timeout: 20_000 }, async () => {
  const { server, dir } = pskServer();
  const p = await gatePair(server);
  try {
    for (const opt of [Opt.LIST, Opt.GO, Opt.INFO, Opt.STRUCTURED_REPLY, 99]) {
      p.c.write(encodeOption(opt, opt === Opt.GO || opt === Opt.INFO ? Buffer.alloc(6) : undefined));
      const rep = await readOptionReply(p.r);
      assert.equal(rep.option, opt);
      assert.equal(rep.type, Rep.ERR_TLS_REQD, `option ${opt}`);
    }
    p.c.write(encodeOption(Opt.STARTTLS, Buffer.from('x')));
    assert.equal((await readOptionReply(p.r)).type, Rep.ERR_INVALID, 'STARTTLS with data');
    p.c.write(encodeOption(Opt.STARTTLS));
    const ack = await readOptionReply(p.r);
    assert.deepEqual([ack.option, ack.type], [Opt.STARTTLS, Rep.ACK]);
    p.r.detach();
    const t = tlsClient(p.c, KEY);
    await new Promise<void>((res, rej) => { t.once('secureConnect', () => res()); t.once('error', rej); });
    const got = await p.result;
    assert.ok(got !== undefined);
    assert.equal(got.noZeroes, true);
    // The secure socket carries bytes both ways.
    t.write('ping');
    const seen = await new Promise<string>((res) => got.socket.once('data', (b: Buffer) => res(b.toString())));
    assert.equal(seen, 'ping');
    assert.ok(p.logs.some((l) => l.startsWith(ErrorCode.NBD_TLS_REQUIRED)));
    t.destroy();
    got.socket.destroy();
  } finally {
    p.close();
    fs.rmSync(dir, { recursive: true });
  }
});

test('STARTTLS gate: a wrong PSK never gets past TLS (NVMF_ERR_TLS_HANDSHAKE logged)', { timeout: 20_000 }, async () => {
  const { server, dir } = pskServer();
  const p = await gatePair(server);
  try {
    p.c.write(encodeOption(Opt.STARTTLS));
    assert.equal((await readOptionReply(p.r)).type, Rep.ACK);
    p.r.detach();
    const t = tlsClient(p.c, 'ff'.repeat(16));
    t.on('error', () => undefined);
    assert.equal(await p.result, undefined);
    assert.ok(p.logs.some((l) => l.startsWith(ErrorCode.TLS_HANDSHAKE)), p.logs.join('\n'));
    t.destroy();
  } finally {
    p.close();
    fs.rmSync(dir, { recursive: true });
  }
});

test('STARTTLS gate: EXPORT_NAME before TLS closes the connection; ABORT is acknowledged', { timeout: 20_000 }, async () => {
  const { server, dir } = pskServer();
  try {
    const p = await gatePair(server);
    p.c.write(encodeOption(Opt.EXPORT_NAME, Buffer.from('')));
    assert.equal(await p.result, undefined);
    await p.r.closed;
    await assert.rejects(p.r.read(1));
    assert.ok(p.logs.some((l) => l.startsWith(ErrorCode.NBD_TLS_REQUIRED)));
    p.close();
    const q = await gatePair(server);
    q.c.write(encodeOption(Opt.ABORT));
    assert.equal((await readOptionReply(q.r)).type, Rep.ACK);
    assert.equal(await q.result, undefined);
    q.close();
  } finally {
    fs.rmSync(dir, { recursive: true });
  }
});
