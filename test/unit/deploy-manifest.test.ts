/**
 * deploy/kubernetes/daemonset.yaml carries what docs/KUBERNETES.md promises: privileged, host
 * network, /dev and the state dir and /etc/nvme and /etc/machine-id mounted, the daemon as the
 * container's process with --attach, the image's healthcheck as liveness probe. (Text checks:
 * no YAML parser among the dependencies; `kubectl apply --dry-run` is not available here.)
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';

const REPO = path.resolve(__dirname, '../../..');

test('DaemonSet manifest: privileged daemon, host network, mounts, healthcheck probes', async () => {
  const y = await fsp.readFile(path.join(REPO, 'deploy', 'kubernetes', 'daemonset.yaml'), 'utf8');
  assert.equal(/\t/.test(y), false, 'YAML must not contain tabs');
  for (const want of [
    'kind: DaemonSet', 'hostNetwork: true', 'privileged: true', 'runAsUser: 0', 'args: ["daemon", "--attach"]',
    'livenessProbe:', 'exec: { command: ["node", "/app/docker/healthcheck.js"] }',
    '{ name: dev, mountPath: /dev }', 'mountPath: /var/lib/nvmf-nbd', '{ name: etc-nvme, mountPath: /etc/nvme, readOnly: true }',
    '{ name: machine-id, mountPath: /etc/machine-id, readOnly: true }', 'value: "control:/var/lib/nvmf-nbd/control.sock"',
    'hostPath: { path: /dev }', 'hostPath: { path: /var/lib/nvmf-nbd, type: DirectoryOrCreate }',
  ]) assert.ok(y.includes(want), want);
  // The healthcheck path and the state dir are the image's (Dockerfile).
  const df = await fsp.readFile(path.join(REPO, 'Dockerfile'), 'utf8');
  assert.match(df, /COPY docker\/healthcheck\.js \/app\/docker\/healthcheck\.js/);
  assert.match(df, /NVMF_NBD_STATE_DIR=\/var\/lib\/nvmf-nbd/);
});
