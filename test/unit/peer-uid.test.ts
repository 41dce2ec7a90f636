/**
 * Finding 1 building block (issue 14): the owner of a loopback TCP peer from /proc/net/tcp{,6}.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as net from 'node:net';
import { parseProcNetTcp, peerUid, procAddress } from '../../src/net/peer-uid';

test('peer uid: /proc address encoding, parsing, and a real loopback peer is ours', { timeout: 10_000 }, async () => {
  assert.equal(procAddress('127.0.0.1', 10809), '0100007F:2A39');
  assert.equal(procAddress('::1', 80), '00000000000000000000000001000000:0050');
  assert.equal(procAddress('::ffff:127.0.0.1', 80), '0000000000000000FFFF00000100007F:0050');
  assert.deepEqual(parseProcNetTcp('  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:2A39 0100007F:D431 01 00000000:00000000 00:00000000 00000000  1000        0 12345 1\n'), [{ local: '0100007F:2A39', remote: '0100007F:D431', uid: 1000 }]);
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  const accepted = new Promise<net.Socket>((r) => srv.once('connection', r));
  const c = net.connect({ host: '127.0.0.1', port: (srv.address() as net.AddressInfo).port });
  const s = await accepted;
  try {
    assert.equal(await peerUid(s), process.getuid?.());
  } finally {
    c.destroy();
    s.destroy();
    srv.close();
  }
});
