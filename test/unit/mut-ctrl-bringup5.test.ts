/**
 * Mutation-audit pins (issue 15), fifth part, for the bring-up of src/controller/controller.ts:
 * keep-alive on mocked time (KATO/2 at least 50 ms, one outstanding, expiry after more than
 * KATO, its own deadline, error answers, TBKAS at KATO/4 skipping after traffic) and the
 * receive watchdog (more than watchdogMs of silence with a command waiting, 2·KATO default,
 * 0 = off, idle and receiving queues), and a Keep Alive failing during close(). The rig:
 * test/helpers/bringup-rig.ts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Controller } from '../../src/controller/controller';
import { ErrorCode, NvmfNbdError } from '../../src/errors';
import { track, turns, until } from '../helpers/clock';
import { BASE, T, adminOf, answer, checkDeadlines, isKa, isProp, kaDone, kaRig, kaSentAt, model, periods, start } from '../helpers/bringup-rig';
import type { Seen } from '../helpers/bringup-rig';

test('keep-alive: every KATO/2 (at least 50 ms); an outstanding one is not repeated; unanswered for more than KATO fails the association', T, async (t) => {
  for (const [kato, period] of [[1000, 500], [80, 50], [130, 65]] as const) {
    let hold = false;
    const r = await kaRig(t, { take: (s) => hold && isKa(s) }, { kato, watchdogMs: 0, nrIoQueues: 0, ioTimeoutMs: 60_000 });
    try {
      const closes: Array<NvmfNbdError | undefined> = [];
      r.ctrl.on('close', (e?: NvmfNbdError) => closes.push(e));
      r.ctrl.on('error', () => undefined);
      t.mock.timers.tick(period - 1);
      assert.equal(kaSentAt(r.ctrl), undefined, `KATO ${kato}: none before ${period} ms`);
      t.mock.timers.tick(1);
      assert.equal(kaSentAt(r.ctrl), period);
      await until(() => r.kas().length === 1, 'Keep Alive received');
      await kaDone(r, 'answered');
      hold = true;
      t.mock.timers.tick(period);
      assert.equal(kaSentAt(r.ctrl), 2 * period);
      await until(() => r.taken.length === 1, 'second Keep Alive held');
      // KATO after sending it: still alive (more than KATO is needed), no second one.
      let elapsed = 0;
      while (elapsed + period <= kato) {
        t.mock.timers.tick(period);
        elapsed += period;
        assert.equal(kaSentAt(r.ctrl), 2 * period, 'not sent again while one is outstanding');
      }
      await turns(10);
      assert.equal(r.ctrl.alive, true, `KATO ${kato}: alive ${elapsed} ms after the Keep Alive`);
      assert.equal(r.kas().length, 2);
      t.mock.timers.tick(period);
      assert.equal(r.ctrl.alive, false);
      assert.equal(closes[0]?.code, ErrorCode.KEEPALIVE_TIMEOUT);
      assert.equal(closes[0]?.message, `controller 7: keep-alive not answered within ${kato} ms`);
    } finally {
      t.mock.timers.reset();
      await r.target.close();
    }
  }
});

test('keep-alive: its own command deadline lies past KATO (2·KATO), not the I/O timeout: the KATO check decides', T, async (t) => {
  const r = await kaRig(t, { take: isKa }, { kato: 1000, watchdogMs: 0, nrIoQueues: 0, ioTimeoutMs: 80 });
  try {
    t.mock.timers.tick(500);
    await until(() => r.taken.length === 1, 'Keep Alive held');
    t.mock.timers.tick(1000);
    checkDeadlines(adminOf(r.ctrl));
    assert.equal(r.ctrl.alive, true, 'KATO not yet exceeded, no queue timeout');
    t.mock.timers.tick(500);
    assert.equal(r.ctrl.alive, false);
  } finally {
    t.mock.timers.reset();
    await r.target.close();
  }
});

test('keep-alive: an error answer fails the association with KEEPALIVE_TIMEOUT "keep-alive failed" and the status as cause', T, async (t) => {
  const r = await kaRig(t, { take: (s) => { if (isKa(s)) { answer(s, { sc: 0x06 }); return true; } return false; } }, { kato: 1000, watchdogMs: 0, nrIoQueues: 0 });
  try {
    const closed = new Promise<NvmfNbdError | undefined>((res) => r.ctrl.once('close', res));
    r.ctrl.on('error', () => undefined);
    t.mock.timers.tick(500);
    const e = await closed;
    assert.equal(e?.code, ErrorCode.KEEPALIVE_TIMEOUT);
    assert.equal((e?.cause as NvmfNbdError | undefined)?.code, ErrorCode.NVME_STATUS);
    assert.equal(e?.message, `controller 7: keep-alive failed: ${(e?.cause as Error).message}`);
  } finally {
    t.mock.timers.reset();
    await r.target.close();
  }
});

test('keep-alive with TBKAS: every KATO/4, skipped when something was received since the previous tick', T, async (t) => {
  const r = await kaRig(t, { identify: (b) => b.writeUInt32LE(1 << 6, 96) }, { kato: 1000, watchdogMs: 0, nrIoQueues: 1 });
  try {
    assert.equal(r.ctrl.trafficBasedKeepAlive, true);
    t.mock.timers.tick(250);
    assert.equal(kaSentAt(r.ctrl), undefined, 'first tick: bring-up traffic counts');
    t.mock.timers.tick(249);
    assert.equal(kaSentAt(r.ctrl), undefined);
    t.mock.timers.tick(1);
    assert.equal(kaSentAt(r.ctrl), 500, 'a quiet period: Keep Alive');
    await kaDone(r, 'answered');
    t.mock.timers.tick(250);
    assert.equal(kaSentAt(r.ctrl), undefined, 'its answer was traffic');
    t.mock.timers.tick(250);
    assert.equal(kaSentAt(r.ctrl), 1000);
    await kaDone(r, 'answered');
    t.mock.timers.tick(250);
    await r.ctrl.read(1, 0n, 1);
    t.mock.timers.tick(250);
    assert.equal(kaSentAt(r.ctrl), undefined, 'I/O traffic on an I/O queue counts too');
    t.mock.timers.tick(250);
    assert.equal(kaSentAt(r.ctrl), 1750);
    await kaDone(r, 'answered');
    assert.equal(r.kas().length, 3);
  } finally {
    t.mock.timers.reset();
    await r.target.close();
  }
});

test('keep-alive without TBKAS: sent every tick even with traffic', T, async (t) => {
  const r = await kaRig(t, {}, { kato: 1000, watchdogMs: 0, nrIoQueues: 1 });
  try {
    for (let i = 1; i <= 3; i++) {
      await r.ctrl.read(1, 0n, 1);
      t.mock.timers.tick(500);
      assert.equal(kaSentAt(r.ctrl), 500 * i);
      await kaDone(r, `answer ${i}`);
    }
  } finally {
    t.mock.timers.reset();
    await r.target.close();
  }
});

test('watchdog: a queue with a command waiting and nothing received for more than watchdogMs fails TARGET_UNRESPONSIVE naming it', T, async (t) => {
  const r = await kaRig(t, { take: (s) => s.qid === 1 && s.opcode === 0x02 }, { kato: 1000, watchdogMs: 1000, nrIoQueues: 1, ioTimeoutMs: 600_000 });
  try {
    const closes: Array<NvmfNbdError | undefined> = [];
    r.ctrl.on('close', (e?: NvmfNbdError) => closes.push(e));
    r.ctrl.on('error', () => undefined);
    void r.ctrl.read(1, 0n, 1).catch(() => undefined);
    await until(() => r.taken.length === 1, 'read held');
    await periods(t, r, 3);
    assert.equal(r.ctrl.alive, true, '1000 ms of silence is not more than 1000');
    t.mock.timers.tick(500);
    assert.equal(r.ctrl.alive, false);
    assert.equal(closes[0]?.code, ErrorCode.TARGET_UNRESPONSIVE);
    assert.equal(closes[0]?.message, 'controller 7: queue 1 received nothing for 1500 ms with 1 commands outstanding');
  } finally {
    t.mock.timers.reset();
    await r.target.close();
  }
});

test('watchdog: 2·KATO by default; off with watchdogMs 0; idle queues and queues still receiving never trip it', T, async (t) => {
  {
    const r = await kaRig(t, { take: (s) => s.qid === 1 && s.opcode === 0x02 }, { kato: 1000, nrIoQueues: 1, ioTimeoutMs: 600_000 });
    try {
      const closes: Array<NvmfNbdError | undefined> = [];
      r.ctrl.on('close', (e?: NvmfNbdError) => closes.push(e));
      r.ctrl.on('error', () => undefined);
      void r.ctrl.read(1, 0n, 1).catch(() => undefined);
      await until(() => r.taken.length === 1, 'read held');
      await periods(t, r, 5);
      assert.equal(r.ctrl.alive, true, '2000 ms of silence');
      t.mock.timers.tick(500);
      assert.equal(closes[0]?.message, 'controller 7: queue 1 received nothing for 2500 ms with 1 commands outstanding');
    } finally {
      t.mock.timers.reset();
      await r.target.close();
    }
  }
  {
    const r = await kaRig(t, { take: (s) => s.qid === 1 && s.opcode === 0x02 }, { kato: 1000, watchdogMs: 0, nrIoQueues: 1, ioTimeoutMs: 600_000 });
    try {
      void r.ctrl.read(1, 0n, 1).catch(() => undefined);
      await until(() => r.taken.length === 1, 'read held');
      await periods(t, r, 12);
      assert.equal(r.ctrl.alive, true, 'watchdog off');
    } finally {
      t.mock.timers.reset();
      await r.target.close();
    }
  }
  {
    // Idle I/O queues for 6 s.
    const r = await kaRig(t, {}, { kato: 1000, watchdogMs: 1000, nrIoQueues: 2, ioTimeoutMs: 600_000 });
    try {
      await periods(t, r, 12);
      assert.equal(r.ctrl.alive, true, 'idle queues');
    } finally {
      t.mock.timers.reset();
      await r.target.close();
    }
  }
  {
    // One read stuck, others completing on the same queue each period: it keeps receiving.
    let held = false;
    const r = await kaRig(t, { take: (s) => { if (!held && s.qid === 1 && s.opcode === 0x02) { held = true; return true; } return false; } }, { kato: 1000, watchdogMs: 1000, nrIoQueues: 1, ioTimeoutMs: 600_000 });
    try {
      void r.ctrl.read(1, 0n, 1).catch(() => undefined);
      await until(() => r.taken.length === 1, 'read held');
      for (let i = 0; i < 8; i++) {
        await r.ctrl.read(1, 1n, 1);
        await periods(t, r, 1);
      }
      assert.equal(r.ctrl.alive, true, 'a queue that receives is not silent');
    } finally {
      t.mock.timers.reset();
      await r.target.close();
    }
  }
});

test('during close(): a Keep Alive failing then does not turn the orderly close into a failure', T, async (t) => {
  let holdCc = false;
  const m = model();
  const r = await start(m, { take: (s) => isKa(s) || (holdCc && isProp(s, 0x04, 0x14)) });
  t.mock.timers.enable({ apis: ['setTimeout', 'setInterval', 'Date'], now: 0 });
  try {
    const c = await Controller.connect({ ...BASE, trsvcid: r.target.port, kato: 1000, watchdogMs: 0, nrIoQueues: 0 });
    const got: string[] = [];
    c.on('error', (e: NvmfNbdError) => got.push(`error:${e.code}`));
    c.on('close', (e?: NvmfNbdError) => got.push(`close:${e?.code}`));
    t.mock.timers.tick(500);
    await until(() => r.taken.some(isKa), 'Keep Alive held');
    holdCc = true;
    const closed = track(c.close());
    await until(() => r.taken.some((s) => isProp(s, 0x04, 0x14)), 'shutdown CC read held');
    // The Keep Alive's error answer arrives before the CC read's.
    answer(r.taken.find(isKa) as Seen, { sc: 0x06 });
    answer(r.taken.find((s) => isProp(s, 0x04, 0x14)) as Seen, { dw0: m.regs?.cc ?? 0 });
    t.mock.timers.reset();
    await until(() => closed.done, 'closed');
    assert.deepEqual(got, ['close:undefined']);
  } finally {
    t.mock.timers.reset();
    await r.target.close();
  }
});
