#!/bin/sh
# /init of the nvmf-nbd QEMU rig guest (busybox). Loads the modules, brings up slirp
# networking, mounts the pseudo filesystems and any 9p shares, then serves shell commands on
# the virtio-serial port named "nvmf.cmd" (see test/helpers/guest.ts for the framing).
# PID 1 must never exit, so every step tolerates failure and the service loop restarts.
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin:/host-node HOME=/root
mkdir -p /proc /sys /dev /tmp /run /root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
. /rig-lib.sh
say "init start $(cut -d' ' -f1 /proc/uptime)"

# crc32c first: nvmet-tcp digests and ext4 ask the crypto API for it by name.
for m in virtio_pci virtio_net virtio_console qemu_fw_cfg configfs crc32c-intel crc32c_generic \
         nvmet nvmet-tcp nvme-tcp nbd loop ext4; do
  modprobe "$m" 2>/dev/null || say "modprobe $m failed"
done
# null_blk with no default device: namespaces are made through configfs (any size, memory backed).
modprobe null_blk nr_devices=0 2>/dev/null || say "modprobe null_blk failed"
mount -t configfs none /sys/kernel/config 2>/dev/null

rig_net_up

# 9p shares offered by QEMU (-virtfs ... mount_tag=host|hostnode), read-only.
if grep -qs 0x0009 /sys/bus/virtio/devices/*/device; then
  modprobe 9pnet_virtio; modprobe 9p
  for t in /sys/bus/virtio/drivers/9pnet_virtio/virtio*/mount_tag; do
    [ -f "$t" ] || continue
    tag="$(tr -d '\000' <"$t")"
    case "$tag" in
      host) dir=/host ;;
      hostnode) dir=/host-node ;;
      *) continue ;;
    esac
    mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000 "$tag" "$dir" || say "mount $tag failed"
  done
fi

# busybox: cttyhack gives the shell the console as its controlling tty.
rig_console_shell() { setsid cttyhack sh -l; }
rig_ready_and_serve
