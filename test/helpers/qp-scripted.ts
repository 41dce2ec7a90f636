/**
 * A QueuePair against the scriptable fake target (test/helpers/fake-target.ts), shared by the
 * transport tests: the queue's options and a fake that accepts Connect and then runs a script.
 */
import { QueuePair } from '../../src/transport/queue-pair';
import type { QueuePairOptions } from '../../src/transport/queue-pair';
import type { NvmfNbdError } from '../../src/errors';
import { FakeTarget } from './fake-target';
import type { FakeConn, FakeIcResp } from './fake-target';

/** The host ID the transport tests connect with. */
export const QP_HOSTID = Buffer.alloc(16, 0x11);

/** Options of an I/O queue (qid 1, 8 entries, 10 s timeouts) to 127.0.0.1:`port`, with `o` on top. */
export function qpOpts(port: number, o: Partial<QueuePairOptions> = {}): QueuePairOptions {
  return {
    host: '127.0.0.1', port, qid: 1, queueSize: 8, subnqn: 'nqn.test:sub', hostnqn: 'nqn.test:host', hostid: QP_HOSTID,
    cntlid: 1, connectTimeoutMs: 10_000, timeoutMs: 10_000, ...o,
  };
}

/** A fake that accepts Connect and then runs `script`; the queue, its close error and the connection. */
export async function scripted(script: (c: FakeConn) => Promise<void>, o: Partial<QueuePairOptions> = {}, ic: FakeIcResp = {},
  connect: Parameters<FakeConn['acceptConnect']>[0] = {}) {
  const target = await FakeTarget.start(async (c) => {
    await c.acceptConnect(connect);
    await script(c);
  }, ic);
  const qp = await QueuePair.connect(qpOpts(target.port, o));
  const closed = new Promise<NvmfNbdError | undefined>((r) => qp.once('close', r));
  return { target, qp, closed, conn: () => target.conns[0] as FakeConn };
}
