/**
 * QueuePair over TLS after the handshake (issue 15 item 2, survivors of lines 277-320): once the
 * secure channel is up, the target ending the connection is an ordinary CONNECTION_CLOSED, not a
 * handshake failure — the queue waited for secureConnect and marked the channel up.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as net from 'node:net';
import * as tls from 'node:tls';
import { QueuePair } from '../../src/transport/queue-pair';
import { ErrorCode } from '../../src/errors';
import type { NvmfNbdError } from '../../src/errors';
import { sqeFlush } from '../../src/wire';
import { FakeConn } from '../helpers/fake-target';
import { rejectsCode } from '../helpers/assert-code';
import { qpOpts } from '../helpers/qp-scripted';
import { deriveTlsPsk, formatInterchangeKey, parseInterchangeKey } from '../../src/tls/psk';
import { tlsServerOptions } from '../../src/tls/channel';

const T = { timeout: 30_000 };
const PSK = deriveTlsPsk(parseInterchangeKey(formatInterchangeKey(Buffer.from('0f1e2d3c4b5a69788796a5b4c3d2e1f0f0e1d2c3b4a5968778695a4b3c2d1e0f', 'hex'), 1)), 'nqn.test:host', 'nqn.test:sub', 1);

test('TLS: the target ending the connection after the handshake is CONNECTION_CLOSED', T, async () => {
  const raw: net.Socket[] = [];
  const server = net.createServer((sock) => {
    raw.push(sock);
    sock.on('error', () => undefined);
    const ts = new tls.TLSSocket(sock, { ...tlsServerOptions((id) => (id === PSK.identity ? PSK.psk : undefined)) } as tls.TLSSocketOptions);
    ts.on('error', () => undefined);
    ts.once('secure', () => {
      const c = new FakeConn(ts, {});
      void (async () => {
        await c.acceptConnect();
        await c.nextCommand();
        ts.end();
      })().catch(() => ts.destroy());
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as net.AddressInfo).port;
  try {
    const qp = await QueuePair.connect(qpOpts(port, { tls: PSK }));
    const closed = new Promise<NvmfNbdError | undefined>((r) => qp.once('close', r));
    await rejectsCode(qp.submit(sqeFlush(1)), ErrorCode.CONNECTION_CLOSED);
    assert.equal((await closed)?.code, ErrorCode.CONNECTION_CLOSED);
    qp.destroy();
  } finally {
    for (const s of raw) s.destroy();
    await new Promise<void>((r) => server.close(() => r()));
  }
});
