/**
 * Finding 12 (issue 14): an existing socket or state directory is used only when it belongs to
 * the effective uid and nobody else may write it; the NBD server and the daemon refuse others
 * with CFG_ERR_UNSAFE_DIR.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { NbdServer } from '../../src/nbd/server';
import { Daemon } from '../../src/engine/daemon';
import { connectBinding } from '../../src/cli/verbs/daemon';
import { ErrorCode } from '../../src/errors';
import { rejectsCode } from '../helpers/assert-code';


test('finding 12: group/other-writable or foreign directories are refused for sockets and state', { timeout: 10_000 }, async () => {
  const root = await fsp.mkdtemp(path.join(os.tmpdir(), 'private-dir-'));
  try {
    const open = path.join(root, 'open');
    await fsp.mkdir(open);
    await fsp.chmod(open, 0o777);
    const server = new NbdServer({ log: () => undefined });
    await rejectsCode(server.listen({ unix: path.join(open, 'x.sock') }), ErrorCode.UNSAFE_DIR);
    await rejectsCode(Daemon.start({ stateDir: open, connect: connectBinding() }), ErrorCode.UNSAFE_DIR);
    const link = path.join(root, 'link');
    await fsp.symlink(open, link);
    await rejectsCode(server.listen({ unix: path.join(link, 'x.sock') }), ErrorCode.UNSAFE_DIR);
    if (process.geteuid?.() === 0) {
      // Root: a directory another user owns (even 0700) is theirs to swap.
      const theirs = path.join(root, 'theirs');
      await fsp.mkdir(theirs, { mode: 0o700 });
      await fsp.chown(theirs, 65534, 65534);
      await rejectsCode(server.listen({ unix: path.join(theirs, 'x.sock') }), ErrorCode.UNSAFE_DIR);
    }
    // A private directory (created here, 0700) works.
    const ep = await server.listen({ unix: path.join(root, 'mine', 'x.sock') });
    assert.deepEqual(ep, { unix: path.join(root, 'mine', 'x.sock') });
    assert.equal((await fsp.stat(path.join(root, 'mine'))).mode & 0o777, 0o700);
    await server.close();
  } finally {
    await fsp.rm(root, { recursive: true, force: true });
  }
});
