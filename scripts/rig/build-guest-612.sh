#!/usr/bin/env bash
# Build (or reuse) the second rig guest: Debian 13 (trixie)'s 6.12 kernel with a trixie user space
# (nvme-cli 2.13, tlshd from ktls-utils, keyutils, kmod, e2fsprogs, nbd-client) for the NVMe/TCP
# TLS tests; Linux 6.1 (build-guest.sh) has no NVMe/TCP TLS.
#
#   - kernel: the package trixie's linux-image-amd64 depends on, fetched with apt through a sources
#     list and state folder of its own in the cache (the machine's apt sources are never touched),
#     unpacked with dpkg -x (nothing installed, no maintainer script runs).
#   - user space: `debootstrap --variant=minbase trixie` into the cache (needs root), with every
#     kernel module, packed into an ext4 image with `mke2fs -d`. QEMU opens it with snapshot=on, so
#     a guest's writes never reach the cached image.
#   - a small busybox initramfs loads virtio_blk and ext4 (modules in 6.12), mounts the image and
#     switch_roots into scripts/rig/init-trixie.sh (the same command channel as the 6.1 guest).
#
# Idempotent and cached by a hash of its inputs in ${NVMF_NBD_CACHE:-~/.cache/nvmf-nbd}/rig/trixie;
# safe to run concurrently (flock). Prints KERNEL=, INITRD=, ROOTFS= and KVER= on stdout.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export PATH="$PATH:/usr/sbin:/sbin"
CACHE="${NVMF_NBD_CACHE:-$HOME/.cache/nvmf-nbd}/rig/trixie"
mkdir -p "$CACHE"
log() { echo "build-guest-612: $*" >&2; }
. "$HERE/build-lib.sh"

exec 9>"$CACHE/.lock"
flock 9

# --- apt for trixie, in the cache ----------------------------------------------------------------
# The same mirror the machine uses (its deb822 or one-line sources), trixie main, checked with
# Debian's archive keyring (bookworm's debian-archive-keyring carries the trixie keys).
mirror="$(grep -rhoE 'https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null | head -n1 | tr -d ' ' || true)"
mirror="${mirror%/}"
[[ -n "$mirror" ]] || mirror="http://deb.debian.org/debian"
APT="$CACHE/apt"
mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie main" >"$APT/sources.list"
APTO=(-o "Dir::Etc::sourcelist=$APT/sources.list" -o Dir::Etc::sourceparts=- -o "Dir::State::Lists=$APT/lists"
  -o "Dir::Cache=$APT/cache" -o Dir::State::status=/dev/null -o APT::Sandbox::User=root)
kpkg_of() { apt-cache "${APTO[@]}" depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}' || true; }
kpkg="$(kpkg_of)"
if [[ -z "$kpkg" || -n "$(find "$APT/lists" -maxdepth 1 -name '*_InRelease' -mtime +7 2>/dev/null)" ]]; then
  log "apt-get update (trixie lists in the cache)"
  apt-get "${APTO[@]}" update -qq >&2 || true
  kpkg="$(kpkg_of)"
fi
if [[ -z "$kpkg" ]]; then
  kpkg="$(ls -1 "$CACHE/kernel" 2>/dev/null | sort -V | tail -n1 || true)"
  [[ -n "$kpkg" ]] || { log "cannot find trixie's kernel package (apt-cache depends linux-image-amd64)"; exit 1; }
fi
kver="${kpkg#linux-image-}"
kroot="$CACHE/kernel/$kpkg"
if [[ ! -f "$kroot/.done" ]]; then
  log "fetching $kpkg"
  rm -rf "$CACHE/deb" "$kroot"
  mkdir -p "$CACHE/deb" "$kroot"
  (cd "$CACHE/deb" && apt-get "${APTO[@]}" download -q "$kpkg" >&2)
  dpkg -x "$CACHE/deb/${kpkg}"_*.deb "$kroot"
  rm -rf "$CACHE/deb"
  touch "$kroot/.done"
  find "$CACHE/kernel" -mindepth 1 -maxdepth 1 -type d ! -name "$kpkg" -mmin +120 -exec rm -rf {} + || true
fi
kernel="$kroot/boot/vmlinuz-$kver"
# Uncompressed ELF vmlinux for QEMU's PVH entry (trixie's bzImage carries a zstd payload).
kernel="$(pvh_vmlinux "$kroot" "$kernel" "$kver")"
kmods="$kroot/usr/lib/modules/$kver"

# --- trixie user space (debootstrap) ---------------------------------------------------------------
PACKAGES="nvme-cli,ktls-utils,keyutils,kmod,e2fsprogs,nbd-client,iproute2,procps,util-linux,coreutils"
rhash="$(echo "v1 $mirror $PACKAGES" | sha256sum | cut -c1-12)"
root="$CACHE/root-$rhash"
if [[ ! -f "$root/.done" ]]; then
  [[ $(id -u) -eq 0 ]] || { log "debootstrap needs root (run 'sudo bash scripts/setup.sh' or npm test as root once)"; exit 1; }
  command -v debootstrap >/dev/null || { log "debootstrap missing (apt-get install debootstrap)"; exit 1; }
  log "debootstrap --variant=minbase trixie ($PACKAGES)"
  rm -rf "$root"
  debootstrap --variant=minbase --include="$PACKAGES" \
    --keyring=/usr/share/keyrings/debian-archive-keyring.gpg trixie "$root" "$mirror" >"$CACHE/debootstrap.log" 2>&1 \
    || { tail -n 30 "$CACHE/debootstrap.log" >&2; log "debootstrap failed"; exit 1; }
  # Nothing in the guest reads documentation, translations or apt's downloads.
  rm -rf "$root"/usr/share/{doc,man,info,locale} "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  touch "$root/.done"
  find "$CACHE" -maxdepth 1 -name 'root-*' ! -name "root-$rhash" -exec rm -rf {} + || true
fi

# --- images ------------------------------------------------------------------------------------
# Modules the stage-1 initramfs needs to reach the root image (virtio_pci is built in).
STAGE1_MODULES=(virtio_blk crc32c_generic ext4)
hash="$( {
  echo "v1 $kpkg $rhash"
  sha256sum "$HERE/build-guest-612.sh" "$HERE/build-lib.sh" "$HERE/init-trixie.sh" "$HERE/guest-lib.sh"
  stat -L -c '%s' "$(command -v busybox)"
} | sha256sum | cut -c1-16)"
rootfs="$CACHE/rootfs-$hash.ext4"
initrd="$CACHE/initramfs-$hash.cpio.gz"

if [[ ! -f "$rootfs" || ! -f "$initrd" ]]; then
  log "building root image and initramfs ($hash)"
  stage="$(mktemp -d "$CACHE/stage.XXXXXX")"
  trap 'rm -rf "$stage"' EXIT
  # Root: the debootstrap tree plus the kernel's modules (kmod's modprobe reads .ko.xz itself).
  cp -a "$root" "$stage/root"
  rm -f "$stage/root/.done"
  mkdir -p "$stage/root/usr/lib/modules"
  cp -a "$kmods" "$stage/root/usr/lib/modules/"
  chroot "$stage/root" /sbin/depmod -a "$kver"
  install -m 0755 "$HERE/init-trixie.sh" "$stage/root/sbin/rig-init"
  install -m 0644 "$HERE/guest-lib.sh" "$stage/root/rig-lib.sh"
  # tlshd finds the NVMe PSKs in the kernel's .nvme keyring only when told to link it.
  sed -i 's/^\[authenticate\]$/[authenticate]\nkeyrings=.nvme/' "$stage/root/etc/tlshd.conf"
  grep -q '^keyrings=.nvme' "$stage/root/etc/tlshd.conf" || printf '[authenticate]\nkeyrings=.nvme\n' >>"$stage/root/etc/tlshd.conf"
  # The host identity the tests expect when they pass none; each test passes its own -q/--hostnqn.
  echo "rig-612" >"$stage/root/etc/hostname"
  # tlshd resolves its peer's name: no DNS here (slirp's is not reachable), so the files only,
  # or every handshake waits for a resolver timeout.
  printf '127.0.0.1 localhost\n10.0.2.15 rig-612\n10.0.2.2 host\n10.0.2.100 host-alias\n' >"$stage/root/etc/hosts"
  : >"$stage/root/etc/resolv.conf"
  sed -i 's/^hosts:.*/hosts: files/' "$stage/root/etc/nsswitch.conf"
  size_mb=$(( $(du -sm "$stage/root" | cut -f1) + 160 ))
  mke2fs -q -t ext4 -O ^has_journal -L rigroot -d "$stage/root" "$stage/rootfs.ext4" "${size_mb}M"
  # Stage 1: busybox, virtio_blk + ext4 (unpacked: busybox modprobe reads no .ko.xz), a tiny /init.
  s1="$stage/s1"
  mkdir -p "$s1"/{bin,dev,proc,sys,newroot,lib/modules/"$kver"}
  cp "$(command -v busybox)" "$s1/bin/busybox"
  ln -s busybox "$s1/bin/sh"
  declare -A want=()
  for m in "${STAGE1_MODULES[@]}"; do
    line="$(grep -E "(^|/)${m//[-_]/[-_]}\.ko(\.xz)?:" "$stage/root/usr/lib/modules/$kver/modules.dep" || true)"
    [[ -n "$line" ]] || { log "module $m not in $kpkg"; exit 1; }
    for f in ${line/:/}; do want[$f]=1; done
  done
  for f in "${!want[@]}"; do
    mkdir -p "$s1/lib/modules/$kver/$(dirname "$f")"
    xz -dc "$kmods/$f" >"$s1/lib/modules/$kver/${f%.xz}"
  done
  busybox depmod -b "$s1" "$kver"
  cat >"$s1/init" <<'EOF'
#!/bin/sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
modprobe virtio_blk; modprobe crc32c_generic; modprobe ext4
i=0; while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done
mount -t ext4 -o rw /dev/vda /newroot || { echo "rig: cannot mount the root image" >/dev/console; sleep 5; exit 1; }
umount /proc /sys; mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/rig-init
EOF
  chmod 0755 "$s1/init"
  (cd "$s1" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -1 >"$stage/initrd"
  mv "$stage/rootfs.ext4" "$rootfs.tmp" && mv "$rootfs.tmp" "$rootfs"
  mv "$stage/initrd" "$initrd"
  find "$CACHE" -maxdepth 1 \( -name 'rootfs-*.ext4' -o -name 'initramfs-*.cpio.gz' \) -mmin +120 \
    ! -name "$(basename "$rootfs")" ! -name "$(basename "$initrd")" -delete
  log "root image $(du -h --apparent-size "$rootfs" | cut -f1), initramfs $(du -h "$initrd" | cut -f1)"
fi

echo "KERNEL=$kernel"
echo "INITRD=$initrd"
echo "ROOTFS=$rootfs"
echo "KVER=$kver"
