/**
 * Robustness of identification: a namespace beyond 2^53 bytes (or with metadata / PI) is
 * classified unusable with its reason (so sessions list it as skipped instead of failing), and
 * target strings with control characters are escaped in human output while JSON stays exact.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { classifyNamespace } from '../../src/controller/controller';
import { escapeControl, formatFields, formatJson, formatTable } from '../../src/cli/output';
import { formatController } from '../../src/cli/verbs/connect';
import type { DescribableController } from '../../src/cli/verbs/connect';

/** Identify Namespace page: nsze, one LBA format (ms, lbads), dps. */
function idNs(nsze: bigint, lbads: number, ms = 0, dps = 0): Buffer {
  const b = Buffer.alloc(4096);
  b.writeBigUInt64LE(nsze, 0);
  b.writeBigUInt64LE(nsze, 8);
  b[25] = 0; // nlbaf (0-based)
  b[26] = 0; // flbas
  b[29] = dps;
  b.writeUInt16LE(ms, 128);
  b[130] = lbads;
  return b;
}

test('a namespace beyond 2^53 bytes is unusable with a reason; 2^53 − 4096 is fine; metadata and PI too', () => {
  const huge = classifyNamespace(1, idNs(1n << 41n, 12));
  assert.equal(huge.usable, false);
  assert.match(huge.reasonIfNot ?? '', /2\^53/);
  assert.equal(classifyNamespace(2, idNs((1n << 41n) - 1n, 12)).usable, true);
  assert.match(classifyNamespace(3, idNs(1024n, 12, 8)).reasonIfNot ?? '', /metadata/);
  assert.match(classifyNamespace(4, idNs(1024n, 9, 0, 1)).reasonIfNot ?? '', /protection/);
});

test('control characters from a target are escaped in human output, exact in JSON', () => {
  const evil = 'model\x1b]0;pwned\x07\x1b[2J\r\nX\\';
  assert.equal(escapeControl(evil), 'model\\x1b]0;pwned\\x07\\x1b[2J\\x0d\\x0aX\\\\');
  assert.equal(escapeControl('plain NQN nqn.2014-08.org:x'), 'plain NQN nqn.2014-08.org:x');
  assert.doesNotMatch(formatTable(['SUBNQN'], [[evil]]), /[\x00-\x1f](?<!\n)/u);
  assert.ok(!formatFields([['mn', evil]]).includes('\x1b'));
  const c = {
    cntlid: 1, ioQueueCount: 1, maxTransfer: 131072, namespaces: new Map(),
    options: { subnqn: `nqn.x\x1b[31m`, traddr: '127.0.0.1\x1b', trsvcid: 4420 },
    identify: { mn: evil, sn: 'SN\x9b1m', fr: '1.0\x00' },
  } as unknown as DescribableController;
  const human = formatController(c);
  assert.ok(!/[\x1b\x07\x9b\x00]/.test(human), human);
  assert.match(human, /model model\\x1b\]0;pwned/);
  assert.equal(JSON.parse(formatJson({ mn: evil })).mn, evil, 'JSON keeps the exact string');
});
