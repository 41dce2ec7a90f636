#!/usr/bin/env bash
# Build (or reuse) the QEMU guest image with the real Linux kernel peers: the kernel that
# Debian's linux-image-amd64 depends on (unpacked, never installed) and a small busybox
# initramfs with nvmet/nvmet-tcp, nvme-tcp, nbd, null_blk, brd, ext4, 9p and the userland the
# tests drive (nbd-client, mkfs.ext4, e2fsck, nvme, node's shared libraries).
#
# Idempotent: everything lives in ${NVMF_NBD_CACHE:-$HOME/.cache/nvmf-nbd}/rig and the
# initramfs is rebuilt only when a hash of its inputs changes. Safe to run concurrently (flock).
# On success prints KERNEL=<path>, INITRD=<path> and KVER=<version> on stdout.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export PATH="$PATH:/usr/sbin:/sbin"   # nbd-client, mke2fs, e2fsck, nvme live there
CACHE="${NVMF_NBD_CACHE:-$HOME/.cache/nvmf-nbd}/rig"
mkdir -p "$CACHE"
log() { echo "build-guest: $*" >&2; }
. "$HERE/build-lib.sh"

# Several test files may boot guests at once: one builder at a time.
exec 9>"$CACHE/.lock"
flock 9

# --- kernel package ---------------------------------------------------------------------
# The package linux-image-amd64 depends on (e.g. linux-image-6.1.0-56-amd64). If apt knows
# nothing (no lists yet) fall back to the newest kernel already in the cache.
kpkg="$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}' || true)"
if [[ -z "$kpkg" && $(id -u) -eq 0 ]]; then
  log "apt-cache knows no linux-image-amd64: running apt-get update"
  apt-get update -qq >&2 || true
  kpkg="$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}' || true)"
fi
if [[ -z "$kpkg" ]]; then
  kpkg="$(ls -1 "$CACHE/kernel" 2>/dev/null | sort -V | tail -n1 || true)"
  [[ -n "$kpkg" ]] || { log "cannot find the kernel package (apt-cache depends linux-image-amd64)"; exit 1; }
fi
kver="${kpkg#linux-image-}"
kroot="$CACHE/kernel/$kpkg"
if [[ ! -f "$kroot/.done" ]]; then
  log "fetching $kpkg"
  rm -rf "$CACHE/deb" "$kroot"
  mkdir -p "$CACHE/deb" "$kroot"
  # apt's sandbox user cannot write into root's cache: download as whoever runs this.
  (cd "$CACHE/deb" && apt-get download -q "$kpkg" >&2 2>/dev/null || (cd "$CACHE/deb" && apt-get download "$kpkg" >&2))
  dpkg -x "$CACHE/deb/${kpkg}"_*.deb "$kroot"
  # The .deb ships no modules.dep: busybox depmod makes one (no install scripts run).
  busybox depmod -b "$kroot" "$kver"
  rm -rf "$CACHE/deb"
  touch "$kroot/.done"
  # An older kernel (~430 MB unpacked) is not needed once a new one is there.
  find "$CACHE/kernel" -mindepth 1 -maxdepth 1 -type d ! -name "$kpkg" -mmin +120 -exec rm -rf {} + || true
fi
kernel="$kroot/boot/vmlinuz-$kver"
# Under TCG the bzImage's own decompression costs 2-10 s of every boot: boot the PVH vmlinux.
kernel="$(pvh_vmlinux "$kroot" "$kernel" "$kver")"
moddir="$kroot/lib/modules/$kver"

# --- what goes into the initramfs ---------------------------------------------------------
# Modules (names as modprobe spells them); their dependencies come from modules.dep.
MODULES=(virtio_pci virtio_net virtio_console qemu_fw_cfg configfs crc32c_generic crc32c-intel
  nvmet nvmet-tcp nvme-core nvme-fabrics nvme-tcp nbd brd null_blk loop ext4
  9pnet 9pnet_virtio 9p netfs)
# Host binaries: guest path = host path unless renamed "guestpath=hostpath".
node_bin="$(command -v node || true)"
BINARIES=(/usr/sbin/nbd-client "/sbin/mkfs.ext4=$(command -v mke2fs)" "/sbin/e2fsck=$(command -v e2fsck)"
  /usr/sbin/nvme)
[[ -n "$node_bin" ]] && LIBS_ONLY=("$node_bin") || LIBS_ONLY=()
busybox_bin="$(command -v busybox)"
file "$busybox_bin" 2>/dev/null | grep -q 'statically linked' || [[ ! -x /bin/busybox ]] || busybox_bin=/bin/busybox

inputs_hash() {
  {
    echo "v3 $kpkg"
    printf '%s\n' "${MODULES[@]}"
    sha256sum "$HERE/build-guest.sh" "$HERE/build-lib.sh" "$HERE/init.sh" "$HERE/guest-lib.sh"
    for b in "$busybox_bin" "${BINARIES[@]}" "${LIBS_ONLY[@]}"; do
      local p="${b#*=}"; stat -L -c '%n %s %Y' "$p"; ldd "$p" 2>/dev/null | awk '{print $1, $3}' || true
    done
  } | sha256sum | cut -c1-16
}
# lz4 (legacy format, as the kernel wants) unpacks ~2x faster than gzip under TCG; gzip otherwise.
if command -v lz4 >/dev/null; then compress=(lz4 -l -9 -q); ext=lz4; else compress=(gzip -1); ext=gz; fi
hash="$( { inputs_hash; echo "$ext"; } | sha256sum | cut -c1-16)"
initrd="$CACHE/initramfs-$hash.cpio.$ext"

if [[ ! -f "$initrd" ]]; then
  log "building initramfs ($hash)"
  stage="$(mktemp -d "$CACHE/stage.XXXXXX")"
  trap 'rm -rf "$stage"' EXIT
  mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,run,mnt,host,host-node,lib/modules/"$kver"}
  cp "$busybox_bin" "$stage/bin/busybox"
  ln -s busybox "$stage/bin/sh"
  install -m 0755 "$HERE/init.sh" "$stage/init"
  install -m 0644 "$HERE/guest-lib.sh" "$stage/rig-lib.sh"

  # Modules with their dependencies (modules.dep lists them relative to the module dir).
  declare -A want=()
  for m in "${MODULES[@]}"; do
    re="${m//[-_]/[-_]}"
    line="$(grep -E "(^|/)${re}\.ko(\.[a-z]+)?:" "$moddir/modules.dep" || true)"
    [[ -n "$line" ]] || { log "module $m not in $kpkg"; exit 1; }
    for f in ${line/:/}; do want[$f]=1; done
  done
  for f in "${!want[@]}"; do
    mkdir -p "$stage/lib/modules/$kver/$(dirname "$f")"
    cp "$moddir/$f" "$stage/lib/modules/$kver/$f"
  done
  cp "$moddir"/modules.{order,builtin} "$stage/lib/modules/$kver/" 2>/dev/null || true
  busybox depmod -b "$stage" "$kver"

  # Userland with the libraries ldd lists (copied to the same paths, symlinks resolved).
  copy_libs() {
    ldd "$1" 2>/dev/null | grep -oE '/[^ ]+' | while read -r lib; do
      [[ -e "$stage$lib" ]] || { mkdir -p "$stage$(dirname "$lib")"; cp -L "$lib" "$stage$lib"; }
    done
  }
  for b in "${BINARIES[@]}"; do
    dst="${b%%=*}"; src="${b#*=}"
    mkdir -p "$stage$(dirname "$dst")"
    cp -L "$src" "$stage$dst"
    copy_libs "$src"
  done
  for b in "${LIBS_ONLY[@]}"; do copy_libs "$b"; done
  [[ -f /etc/mke2fs.conf ]] && cp /etc/mke2fs.conf "$stage/etc/"
  echo "root:x:0:0:root:/root:/bin/sh" >"$stage/etc/passwd"
  echo "root:x:0:" >"$stage/etc/group"

  (cd "$stage" && find . -print0 | cpio --null -o -H newc --quiet) | "${compress[@]}" >"$initrd.tmp"
  mv "$initrd.tmp" "$initrd"
  # Drop older images, but not ones a running test process may still be about to boot.
  find "$CACHE" -maxdepth 1 -name 'initramfs-*.cpio.*' -mmin +120 ! -name "$(basename "$initrd")" -delete
  log "initramfs $(du -h "$initrd" | cut -f1)"
fi

echo "KERNEL=$kernel"
echo "INITRD=$initrd"
echo "KVER=$kver"
