#!/usr/bin/env bash
# Boot the rig guest interactively, for debugging by hand: the serial console (with a root shell)
# is this terminal; Ctrl-A X quits QEMU. Tests use test/helpers/guest.ts instead.
#
# Usage: scripts/rig/run-guest.sh [HOSTPORT:GUESTPORT ...]
#   e.g.  scripts/rig/run-guest.sh 14420:4420     host 127.0.0.1:14420 → guest :4420
# Env: RIG_SHARE=DIR mounts DIR read-only at /host in the guest.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
eval "$(bash "$HERE/build-guest.sh" | grep -E '^(KERNEL|INITRD|KVER)=')"
netdev="user,id=n0,restrict=on"
for fwd in "$@"; do
  netdev+=",hostfwd=tcp:127.0.0.1:${fwd%%:*}-:${fwd##*:}"
done
extra=()
if [[ -n "${RIG_SHARE:-}" ]]; then
  extra+=(-virtfs "local,path=$(cd "$RIG_SHARE" && pwd),mount_tag=host,security_model=none,readonly=on")
fi
exec qemu-system-x86_64 -accel tcg,thread=multi -cpu max -smp 1 -m 1024 \
  -display none -monitor none -nodefaults -no-reboot -serial mon:stdio \
  -kernel "$KERNEL" -initrd "$INITRD" -append "console=ttyS0 quiet panic=-1 no_timer_check rig.shell" \
  -netdev "$netdev" -device virtio-net-pci,netdev=n0,romfile= \
  -device virtio-serial-pci -chardev null,id=cmd -device virtserialport,chardev=cmd,name=nvmf.cmd \
  "${extra[@]}"
