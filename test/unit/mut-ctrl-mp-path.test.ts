/**
 * The per-path bookkeeping of multipath (src/controller/multipath-path.ts: pathId and PathEntry),
 * pinned for the mutation run
 *   npm run mutate -- src/controller/multipath-path.ts --tests=mut-ctrl-mp-path,...
 * The path id (IPv6 in brackets, `@source` only when a source address is given); the ANA group of
 * a namespace (the log's NSID list before Identify Namespace ANAGRPID, 0 for an unknown one); the
 * ANA state (optimized without a log or for an unknown group, inaccessible once ANATT expired);
 * a path status correcting one group and clearing its expiry; ANATT expiring only a group in
 * change; the groups in change; the sorted topology list; and which namespaces a path serves
 * (present, usable, same block size, not mismatched). A small fake controller: PathEntry reads
 * only its options, ANA log and namespaces.
 */
import { strict as assert } from 'node:assert';
import { describe, it } from 'node:test';
import { PathEntry, pathId, type PathController, type PathOptions } from '../../src/controller/multipath-path';
import { classifyNamespace, type NamespaceInfo } from '../../src/controller/namespace-info';
import { AnaState, type AnaLog } from '../../src/wire/ana';
import { encodeIdentifyNamespace } from '../../src/wire';

const BASE = { subnqn: 'nqn.2014-08.org.nvmf-nbd:mut-mp-path', hostnqn: 'nqn.2014-08.org.nvmexpress:uuid:x' };

function ns(nsid: number, anagrpid: number, lbads = 9, nsze = 1024n): NamespaceInfo {
  return classifyNamespace(nsid, encodeIdentifyNamespace({ nsze, ncap: nsze, lbaf: [{ ms: 0, lbads, rp: 0 }], anagrpid }));
}

function log(groups: Array<[grpid: number, state: number, nsids: number[]]>): AnaLog {
  return { chgcnt: 1n, groups: groups.map(([grpid, state, nsids]) => ({ grpid, chgcnt: 1n, state, nsids })) };
}

function entry(o: { anaLog?: AnaLog; namespaces?: NamespaceInfo[]; traddr?: string; trsvcid?: number; hostTraddr?: string } = {}): PathEntry {
  const options = { ...BASE, traddr: o.traddr ?? '192.0.2.7', trsvcid: o.trsvcid ?? 4420, ...(o.hostTraddr !== undefined ? { hostTraddr: o.hostTraddr } : {}) } as PathOptions;
  const fake = { options, anaLog: o.anaLog, namespaces: new Map((o.namespaces ?? []).map((i) => [i.nsid, i])) };
  return new PathEntry(fake as unknown as PathController);
}

describe('pathId', () => {
  it('IPv4 without a source address: traddr:trsvcid, nothing after', () => {
    assert.equal(pathId({ traddr: '192.0.2.7', trsvcid: 4420 }), '192.0.2.7:4420');
    assert.equal(pathId({ traddr: '192.0.2.7', trsvcid: 4420, hostTraddr: undefined }), '192.0.2.7:4420');
  });
  it('IPv6 in brackets; a source address after @', () => {
    assert.equal(pathId({ traddr: 'fe80::1', trsvcid: 4421 }), '[fe80::1]:4421');
    assert.equal(pathId({ traddr: '192.0.2.7', trsvcid: 4420, hostTraddr: '192.0.2.99' }), '192.0.2.7:4420@192.0.2.99');
    assert.equal(pathId({ traddr: '2001:db8::5', trsvcid: 8009, hostTraddr: '2001:db8::9' }), '[2001:db8::5]:8009@2001:db8::9');
  });
  it('a host name without a colon is not bracketed', () => {
    assert.equal(pathId({ traddr: 'target.example', trsvcid: 4420 }), 'target.example:4420');
  });
});

describe('PathEntry', () => {
  it('takes id, address and source address from the controller options', () => {
    const p = entry({ traddr: 'fe80::2', trsvcid: 4433, hostTraddr: 'fe80::3' });
    assert.equal(p.id, '[fe80::2]:4433@fe80::3');
    assert.equal(p.traddr, 'fe80::2');
    assert.equal(p.trsvcid, 4433);
    assert.equal(p.hostTraddr, 'fe80::3');
    assert.equal(p.inflight, 0);
    assert.deepEqual(p.io, { reads: 0, writes: 0, other: 0, bytesRead: 0, bytesWritten: 0, failovers: 0, pathErrors: 0 });
    assert.equal(entry().hostTraddr, undefined);
  });

  it('groupOf: the log NSID list first, else Identify Namespace ANAGRPID, else 0', () => {
    // NSID 1: log says group 7, Identify says 2. NSID 3: only Identify (group 5). NSID 9: unknown.
    const p = entry({ anaLog: log([[7, AnaState.NON_OPTIMIZED, [1]], [2, AnaState.INACCESSIBLE, []]]), namespaces: [ns(1, 2), ns(3, 5)] });
    assert.equal(p.groupOf(1), 7);
    assert.equal(p.groupOf(3), 5);
    assert.equal(p.groupOf(9), 0);
    assert.equal(p.anaState(1), AnaState.NON_OPTIMIZED, 'the state of the log group, not of ANAGRPID 2');
    assert.equal(p.anaState(3), AnaState.OPTIMIZED, 'group 5 is not in the log: optimized');
    assert.equal(p.anaState(9), AnaState.OPTIMIZED);
    assert.equal(p.accessible(1), true);
  });

  it('groupOf without a log: Identify Namespace ANAGRPID; an NSID the controller lacks is group 0', () => {
    const p = entry({ namespaces: [ns(4, 3)] });
    assert.equal(p.groupOf(4), 3);
    assert.equal(p.groupOf(5), 0);
    assert.deepEqual(p.groupList(), []);
    assert.deepEqual(p.groupsInChange(), []);
  });

  it('anaState by group; accessible only for optimized / non-optimized', () => {
    const p = entry({
      anaLog: log([[1, AnaState.OPTIMIZED, [1]], [2, AnaState.NON_OPTIMIZED, [2]], [3, AnaState.INACCESSIBLE, [3]], [4, AnaState.PERSISTENT_LOSS, [4]], [5, AnaState.CHANGE, [5]]]),
    });
    assert.deepEqual([1, 2, 3, 4, 5].map((n) => p.anaState(n)), [AnaState.OPTIMIZED, AnaState.NON_OPTIMIZED, AnaState.INACCESSIBLE, AnaState.PERSISTENT_LOSS, AnaState.CHANGE]);
    assert.deepEqual([1, 2, 3, 4, 5].map((n) => p.accessible(n)), [true, true, false, false, false]);
  });

  it('expireChange: only a group in change expires (inaccessible, no longer in change, marked in the list)', () => {
    const p = entry({ anaLog: log([[1, AnaState.CHANGE, [1]], [2, AnaState.OPTIMIZED, [2]], [3, AnaState.CHANGE, [3]]]) });
    assert.deepEqual(p.groupsInChange(), [1, 3]);
    assert.equal(p.expireChange(2), false, 'an optimized group does not expire');
    assert.equal(p.anaState(2), AnaState.OPTIMIZED);
    assert.equal(p.expireChange(9), false, 'an unknown group (optimized) does not expire');
    assert.equal(p.anaState(9), AnaState.OPTIMIZED);
    assert.deepEqual(p.groupList(), [{ grpid: 1, state: 'change' }, { grpid: 2, state: 'optimized' }, { grpid: 3, state: 'change' }]);
    assert.equal(p.expireChange(1), true);
    assert.equal(p.anaState(1), AnaState.INACCESSIBLE);
    assert.equal(p.accessible(1), false);
    assert.deepEqual(p.groupsInChange(), [3], 'an expired group is no longer waited for');
    assert.deepEqual(p.groupList(), [{ grpid: 1, state: 'change (ANATT expired)' }, { grpid: 2, state: 'optimized' }, { grpid: 3, state: 'change' }]);
  });

  it('groupsInChange lists neither inaccessible nor non-optimized groups', () => {
    const p = entry({ anaLog: log([[1, AnaState.INACCESSIBLE, []], [2, AnaState.NON_OPTIMIZED, []], [4, AnaState.PERSISTENT_LOSS, []]]) });
    assert.deepEqual(p.groupsInChange(), []);
  });

  it('noteStatus sets the state of the namespace group and clears its expiry; returns the group', () => {
    const p = entry({ anaLog: log([[6, AnaState.CHANGE, [1]], [8, AnaState.OPTIMIZED, [2]]]) });
    assert.equal(p.expireChange(6), true);
    assert.equal(p.noteStatus(1, AnaState.NON_OPTIMIZED), 6);
    assert.equal(p.anaState(1), AnaState.NON_OPTIMIZED, 'no longer expired');
    assert.equal(p.anaState(2), AnaState.OPTIMIZED, 'the other group untouched');
    assert.deepEqual(p.groupList(), [{ grpid: 6, state: 'non-optimized' }, { grpid: 8, state: 'optimized' }]);
    assert.equal(p.noteStatus(2, AnaState.CHANGE), 8);
    assert.deepEqual(p.groupsInChange(), [8]);
  });

  it('applyAnaLog replaces groups, NSID lists and expiries; undefined clears them', () => {
    const p = entry({ anaLog: log([[1, AnaState.CHANGE, [1]]]), namespaces: [ns(1, 4)] });
    assert.equal(p.expireChange(1), true);
    p.applyAnaLog(log([[1, AnaState.CHANGE, []], [2, AnaState.INACCESSIBLE, [1]]]));
    assert.equal(p.groupOf(1), 2);
    assert.equal(p.anaState(1), AnaState.INACCESSIBLE);
    assert.deepEqual(p.groupsInChange(), [1], 'the expiry of group 1 is gone with the old log');
    p.applyAnaLog(undefined);
    assert.equal(p.groupOf(1), 4, 'back to Identify Namespace ANAGRPID');
    assert.equal(p.anaState(1), AnaState.OPTIMIZED);
    assert.deepEqual(p.groupList(), []);
  });

  it('groupList is sorted by group id', () => {
    const p = entry({ anaLog: log([[9, AnaState.OPTIMIZED, []], [2, AnaState.INACCESSIBLE, []], [30, AnaState.CHANGE, []], [1, AnaState.NON_OPTIMIZED, []], [5, AnaState.PERSISTENT_LOSS, []]]) });
    assert.deepEqual(p.groupList(), [
      { grpid: 1, state: 'non-optimized' }, { grpid: 2, state: 'inaccessible' }, { grpid: 5, state: 'persistent-loss' },
      { grpid: 9, state: 'optimized' }, { grpid: 30, state: 'change' },
    ]);
  });

  it('serves: present, usable, the same block size and not mismatched', () => {
    const unusable = ns(2, 1, 9, 0n);
    assert.equal(unusable.usable, false);
    const p = entry({ namespaces: [ns(1, 1, 9), unusable, ns(3, 1, 12)] });
    assert.equal(p.serves(1, 512), true);
    assert.equal(p.serves(1, 4096), false, 'another block size');
    assert.equal(p.serves(2, 512), false, 'unusable');
    assert.equal(p.serves(3, 4096), true);
    assert.equal(p.serves(3, 512), false);
    assert.equal(p.serves(4, 512), false, 'not on this path');
    p.mismatched.add(1);
    assert.equal(p.serves(1, 512), false, 'other identifiers on this path');
    assert.equal(p.serves(3, 4096), true);
  });
});
