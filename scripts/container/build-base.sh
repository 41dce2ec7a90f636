#!/usr/bin/env bash
# Builds the container base image `docker.io/library/node:20-bookworm-slim` LOCALLY, from Debian
# packages, and stores it in buildah's vfs storage under that exact name, so the project's
# Dockerfile (`FROM node:20-bookworm-slim`) builds with `--pull=never` on machines that reach no
# container registry (only Debian's mirror and the npm registry are reachable here).
#
# What goes in, and why:
#   - `debootstrap --variant=minbase bookworm` from the Debian mirror apt already uses;
#   - nbd-client from apt (the runtime stage's only system dependency, preinstalled here so the
#     Dockerfile's apt step is a no-op when a build has no mirror);
#   - Node 20: Debian's apt only has Node 18, so the machine's own installed `nodejs` package is
#     repacked with `dpkg-repack` and `dpkg -i`-ed in the chroot; npm is then overlaid from the
#     host's /usr/lib/node_modules/npm (the host's npm may have been upgraded in place, which a
#     repack of the package's file list would tear apart).
#
# Cached: skipped when buildah already has the image and the stamp (this script + the node
# package version + the image name) matches. Downloaded .debs are cached in
# $NVMF_NBD_CACHE/container/debs. Needs root, buildah, debootstrap, dpkg-repack.
#
# Usage: scripts/container/build-base.sh [--force]
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

BASE_IMAGE="${NVMF_NBD_BASE_IMAGE:-docker.io/library/node:20-bookworm-slim}"
BUILDAH=(buildah --storage-driver vfs)
force=0
[ "${1:-}" = --force ] && force=1

is_root || die "needs root (debootstrap, chroot, buildah vfs storage)"
for c in buildah debootstrap dpkg-repack; do have "$c" || die "missing $c: run scripts/setup.sh as root"; done
pkg_installed nodejs || die "the host's Node 20 must come from the 'nodejs' Debian package (it is repacked into the image)"

work="$NVMF_NBD_CACHE/container"
mkdir -p "$work/debs"
# Two test runs (or a test and a developer) may build at once: one builder at a time.
exec 9>"$work/.lock"
flock 9
node_ver="$(dpkg-query -W -f='${Version}' nodejs)"
npm_ver="$(node -p 'require("/usr/lib/node_modules/npm/package.json").version' 2>/dev/null || echo none)"
stamp="$(printf '%s\n' "$(sha256_of "${BASH_SOURCE[0]}")" "$node_ver" "$npm_ver" "$BASE_IMAGE" | sha256sum | cut -d' ' -f1)"
stamp_file="$work/base.stamp"

if [ "$force" = 0 ] && "${BUILDAH[@]}" inspect --type image "$BASE_IMAGE" >/dev/null 2>&1 \
   && [ "$(cat "$stamp_file" 2>/dev/null)" = "$stamp" ]; then
  log "base image $BASE_IMAGE is cached (stamp ${stamp:0:12})"
  exit 0
fi

start=$(date +%s)
rootfs="$work/rootfs"
mounted=()
ctr=""
cleanup() {
  local m
  for m in "${mounted[@]}"; do umount -l "$m" 2>/dev/null || true; done
  [ -n "$ctr" ] && "${BUILDAH[@]}" rm "$ctr" >/dev/null 2>&1 || true
  rm -rf "$rootfs" "$work/rootfs.tar" "$work/repack"
}
trap cleanup EXIT
# A SIGTERM (a test's timeout) must still unmount and clean up: make it an ordinary exit.
trap 'exit 143' TERM INT
# A run killed with SIGKILL may have left the chroot's /proc mounted: never rm -rf into it.
umount -l "$rootfs/proc" 2>/dev/null || true
rm -rf "$rootfs" "$work/repack"

mirror="$(debian_mirror)"
log "debootstrap minbase bookworm from $mirror"
debootstrap --variant=minbase --cache-dir="$work/debs" bookworm "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
  || { tail -n 30 "$work/debootstrap.log" >&2; die "debootstrap failed (log: $work/debootstrap.log)"; }

# The chroot needs /proc for dpkg maintainer scripts and DNS for apt; no service may start.
mount -t proc proc "$rootfs/proc" && mounted+=("$rootfs/proc")
cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
chmod 755 "$rootfs/usr/sbin/policy-rc.d"

log "apt-get install nbd-client (+ nodejs's dependencies) in the chroot"
in_chroot() { chroot "$rootfs" env DEBIAN_FRONTEND=noninteractive LC_ALL=C PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"; }
in_chroot apt-get update -qq
in_chroot apt-get install -y -qq --no-install-recommends nbd-client ca-certificates python3 libstdc++6 >"$work/apt.log" 2>&1 \
  || { tail -n 30 "$work/apt.log" >&2; die "apt-get in the chroot failed (log: $work/apt.log)"; }

log "repacking the host's nodejs $node_ver"
mkdir -p "$work/repack"
(cd "$work/repack" && dpkg-repack nodejs >"$work/repack.log" 2>&1) \
  || { tail -n 30 "$work/repack.log" >&2; die "dpkg-repack nodejs failed"; }
deb="$(ls "$work/repack"/nodejs_*.deb | head -n1)"
cp "$deb" "$rootfs/tmp/nodejs.deb"
in_chroot dpkg -i /tmp/nodejs.deb >"$work/dpkg.log" 2>&1 \
  || { tail -n 30 "$work/dpkg.log" >&2; die "dpkg -i nodejs failed in the chroot"; }
if [ -d /usr/lib/node_modules/npm ]; then
  rm -rf "$rootfs/usr/lib/node_modules/npm"
  cp -a /usr/lib/node_modules/npm "$rootfs/usr/lib/node_modules/npm"
fi
in_chroot node --version >/dev/null || die "node does not run in the chroot"
in_chroot npm --version >/dev/null || die "npm does not run in the chroot"

# Slim it like the upstream -slim image: no apt lists, no docs, no policy-rc.d left behind.
in_chroot apt-get clean
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* \
  "$rootfs"/usr/share/info/* "$rootfs"/tmp/* "$rootfs"/var/cache/debconf/*-old \
  "$rootfs"/usr/sbin/policy-rc.d "$rootfs"/etc/resolv.conf
umount -l "$rootfs/proc"; mounted=()

log "importing the rootfs into buildah as $BASE_IMAGE"
tar -C "$rootfs" --numeric-owner --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' \
  -cf "$work/rootfs.tar" .
ctr="$("${BUILDAH[@]}" from --pull=never scratch)"
"${BUILDAH[@]}" add "$ctr" "$work/rootfs.tar" / >/dev/null
"${BUILDAH[@]}" config \
  --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --env NODE_VERSION="$(node --version | sed 's/^v//')" \
  --label org.opencontainers.image.description="local stand-in for node:20-bookworm-slim (debootstrap + repacked nodejs)" \
  --cmd node "$ctr"
"${BUILDAH[@]}" commit --rm -q "$ctr" "$BASE_IMAGE" >/dev/null
ctr=""
printf '%s\n' "$stamp" >"$stamp_file"
log "base image $BASE_IMAGE built in $(( $(date +%s) - start ))s"
