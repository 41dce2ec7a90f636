#!/bin/sh
# /sbin/rig-init of the 6.12 rig guest (a Debian 13 root, see build-guest-612.sh): loads the
# modules, brings up slirp networking, starts tlshd (the kernel's TLS handshake agent for
# nvme-tcp and nvmet-tcp) and serves shell commands on the virtio-serial port "nvmf.cmd" with the
# same framing as the 6.1 guest (scripts/rig/guest-lib.sh, test/helpers/guest.ts). PID 1 never exits.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
mount -t proc proc /proc 2>/dev/null
mount -t sysfs sysfs /sys 2>/dev/null
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
. /rig-lib.sh
say "init start $(cut -d' ' -f1 /proc/uptime)"

for m in virtio_net virtio_console qemu_fw_cfg configfs crc32c_generic tls \
         nvmet nbd loop ext4; do
  modprobe "$m" 2>/dev/null || say "modprobe $m failed"
done
# A TLS handshake under TCG (tlshd, gnutls) can take seconds on a busy host: 60 s, not 10 s.
for m in nvmet-tcp nvme-tcp; do
  modprobe "$m" tls_handshake_timeout=60 2>/dev/null || modprobe "$m" 2>/dev/null || say "modprobe $m failed"
done
modprobe null_blk nr_devices=0 2>/dev/null || say "modprobe null_blk failed"
mount -t configfs none /sys/kernel/config 2>/dev/null

rig_net_up

# A 9p share offered by QEMU (-virtfs ... mount_tag=host), read-only at /host.
if grep -qs 0x0009 /sys/bus/virtio/devices/*/device; then
  modprobe 9pnet_virtio; modprobe 9p
  mkdir -p /host
  mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000 host /host 2>/dev/null || say "mount host failed"
fi

# tlshd answers the kernel's handshake upcalls (netlink) for both the NVMe host and nvmet.
tlshd -s >/tmp/tlshd.log 2>&1 &

rig_console_shell() { setsid -c sh -l </dev/console >/dev/console 2>&1; }
rig_ready_and_serve
