/**
 * Embedded target against a hostile host (issue 14 findings 10 and 11): KATO values Node's timers
 * cannot hold are refused instead of silently becoming 1 ms; connections and associations are
 * capped in total and per host NQN; an association with keep-alive off (KATO 0) still ends after
 * the idle limit.
 */
import { strict as assert } from 'node:assert';
import { mock, test } from 'node:test';
import { FabricsStatus, GenericStatus, sqeSetFeatures } from '../../src/wire';
import { NvmeTarget, type NvmeTargetOptions } from '../../src/embedded-target';
import { KATO_MAX_MS } from '../../src/embedded-target/target-controller';
import { connectAdmin, enable, HOSTNQN, RawHost } from './target-rawhost';

const NQN = 'nqn.2014-08.org.nvmf-nbd:test-limits';
const T = { timeout: 15_000 };

async function withTarget(o: NvmeTargetOptions, body: (t: NvmeTarget, port: number) => Promise<void>): Promise<void> {
  const t = new NvmeTarget({
    listen: { host: '127.0.0.1', port: 0 },
    subsystems: [{ nqn: NQN, namespaces: [{ sizeBytes: 1 << 20, backing: { memory: true } }] }],
    ...o,
  });
  const { port } = await t.listen();
  try {
    await body(t, port);
  } finally {
    await t.close();
  }
}

async function admin(port: number, o: Parameters<typeof connectAdmin>[2] = {}): Promise<{ h: RawHost; r: Awaited<ReturnType<typeof connectAdmin>> }> {
  const h = await RawHost.connect(port);
  await h.icreq();
  return { h, r: await connectAdmin(h, NQN, o) };
}

test('KATO of 2^31 ms (beyond Node timers) is refused at Connect with Invalid Parameters at byte 48, not a 1 ms timer (finding 10)', T, async () => {
  await withTarget({}, async (t, port) => {
    const { h, r } = await admin(port, { kato: 2 ** 31 });
    try {
      assert.equal(r.cqe.ok, false, 'Connect with KATO 2^31 ms must be refused');
      assert.equal(r.cqe.status.sct, 1);
      assert.equal(r.cqe.status.sc, FabricsStatus.CONNECT_INVALID_PARAMETERS);
      assert.equal(r.cqe.dw0 & 0xffff, 48, 'IPO points at the KATO field');
      assert.equal(t.stats().controllers, 0);
    } finally {
      h.close();
    }
  });
});

test('Set Features Keep Alive Timer beyond the maximum → Invalid Field; the association keeps its KATO (finding 10)', T, async () => {
  await withTarget({}, async (t, port) => {
    const { h, r } = await admin(port, { kato: 10_000 });
    try {
      assert.equal(r.cqe.ok, true);
      await enable(h);
      const big = await h.submit(sqeSetFeatures(0x0f, 0xffffffff));
      assert.equal(big.cqe.ok, false);
      assert.equal(big.cqe.status.sc, GenericStatus.INVALID_FIELD);
      // Still connected a moment later (the old code armed a 1 ms timer here).
      const again = await h.submit(sqeSetFeatures(0x0f, 10_000));
      assert.equal(again.cqe.ok, true);
      assert.equal(t.stats().keepAliveTimeouts, 0);
    } finally {
      h.close();
    }
  });
});

test('largest KATO is honoured exactly: not after 1 s, yes after KATO + grace (fake timers) (finding 10)', T, async () => {
  mock.timers.enable({ apis: ['setTimeout'] });
  try {
    await withTarget({ keepAliveGraceMs: 1000 }, async (t, port) => {
      const { h, r } = await admin(port, { kato: KATO_MAX_MS });
      try {
        assert.equal(r.cqe.ok, true);
        mock.timers.tick(1000);
        assert.equal(t.stats().keepAliveTimeouts, 0, 'a huge KATO must not collapse to a tiny timer');
        mock.timers.tick(KATO_MAX_MS + KATO_MAX_MS / 2);
        assert.equal(t.stats().keepAliveTimeouts, 1);
        assert.equal(t.stats().controllers, 0);
      } finally {
        h.close();
      }
    });
  } finally {
    mock.timers.reset();
  }
});

test('connections above maxConnections are closed at accept (finding 11)', T, async () => {
  await withTarget({ maxConnections: 2 }, async (t, port) => {
    const a = await RawHost.connect(port);
    const b = await RawHost.connect(port);
    const c = await RawHost.connect(port);
    try {
      await c.waitClosed(5000);
      assert.equal(t.stats().connectionsRefused, 1);
      assert.equal(a.closed || b.closed, false);
      a.close();
      await a.waitClosed();
      // A slot is free again.
      const d = await RawHost.connect(port);
      await d.icreq();
      d.close();
    } finally {
      a.close(); b.close(); c.close();
    }
  });
});

test('associations are capped per host NQN and in total: Controller Busy (finding 11)', T, async () => {
  await withTarget({ maxControllersPerHost: 2, maxControllers: 3 }, async (t, port) => {
    const hosts: RawHost[] = [];
    try {
      for (let i = 0; i < 2; i++) {
        const { h, r } = await admin(port);
        hosts.push(h);
        assert.equal(r.cqe.ok, true);
      }
      const third = await admin(port);
      hosts.push(third.h);
      assert.equal(third.r.cqe.ok, false, 'a third association for one host NQN must be refused');
      assert.equal(third.r.cqe.status.sc, FabricsStatus.CONTROLLER_BUSY);
      const other = await admin(port, { hostnqn: `${HOSTNQN}-other` });
      hosts.push(other.h);
      assert.equal(other.r.cqe.ok, true, 'another host is not affected by the per-host cap');
      const fourth = await admin(port, { hostnqn: `${HOSTNQN}-third` });
      hosts.push(fourth.h);
      assert.equal(fourth.r.cqe.status.sc, FabricsStatus.CONTROLLER_BUSY, 'total cap');
      assert.equal(t.stats().controllersRefused, 2);
      assert.equal(t.stats().controllers, 3);
    } finally {
      for (const h of hosts) h.close();
    }
  });
});

test('an association with KATO 0 (keep-alive off) is dropped after the idle limit (finding 11)', T, async () => {
  await withTarget({ idleTimeoutMs: 200 }, async (t, port) => {
    const { h, r } = await admin(port, { kato: 0 });
    try {
      assert.equal(r.cqe.ok, true);
      await enable(h);
      await h.waitClosed(5000);
      assert.equal(t.stats().controllers, 0);
      assert.equal(t.stats().keepAliveTimeouts, 1);
    } finally {
      h.close();
    }
  });
});
