#!/usr/bin/env bash
# Builds the project's container image from ./Dockerfile with buildah (no Docker engine needed):
# chroot isolation (works inside this unprivileged-kernel sandbox and in CI), vfs storage, and
# `--pull=never` so the FROM image must be local — scripts/container/build-base.sh makes it on
# machines that reach no registry. `--format docker` keeps the HEALTHCHECK (OCI has no field).
# The build's RUN steps use the host's network (chroot isolation), which the stage-1 `npm ci`
# needs for the npm registry.
#
# Usage: scripts/container/build-image.sh [TAG]      (default localhost/nvmf-nbd:dev)
#   NVMF_NBD_SKIP_BASE=1  do not (re)build the base image first
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

tag="${1:-localhost/nvmf-nbd:dev}"
is_root || die "needs root (buildah vfs storage, chroot isolation)"
have buildah || die "missing buildah: run scripts/setup.sh as root"

if [ "${NVMF_NBD_SKIP_BASE:-0}" != 1 ]; then
  bash "$REPO_ROOT/scripts/container/build-base.sh"
fi

# A machine whose egress goes through a TLS-intercepting proxy trusts it via an extra CA bundle
# (NODE_EXTRA_CA_CERTS, or npm's cafile); hand the same bundle to the build's `npm ci`.
ca="${NODE_EXTRA_CA_CERTS:-}"
[ -n "$ca" ] || ca="$(npm config get cafile 2>/dev/null || true)"
ca_mount=()
if [ -n "$ca" ] && [ "$ca" != null ] && [ "$ca" != undefined ] && [ -s "$ca" ]; then
  ca_mount=(-v "$ca:/run/build-ca/ca.crt:ro")
fi

start=$(date +%s)
log "buildah bud -> $tag"
cd "$REPO_ROOT"
buildah --storage-driver vfs bud --isolation chroot --pull=never --format docker \
  --layers=false "${ca_mount[@]}" -t "$tag" -f Dockerfile . >"$NVMF_NBD_CACHE/build-image.log" 2>&1 \
  || { tail -n 40 "$NVMF_NBD_CACHE/build-image.log" >&2; die "image build failed (log: $NVMF_NBD_CACHE/build-image.log)"; }
# bud leaves the untagged build stage's image behind; drop dangling images so vfs storage
# (a full copy per image) does not grow with every build.
buildah --storage-driver vfs rmi --prune >/dev/null 2>&1 || true
log "image $tag built in $(( $(date +%s) - start ))s"
