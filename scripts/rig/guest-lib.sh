# Shared by both rig guests' init (scripts/rig/init.sh: 6.1, busybox initramfs;
# scripts/rig/init-trixie.sh: 6.12, Debian root), sourced from /rig-lib.sh (the build scripts
# install it next to the init). POSIX sh: busybox ash and dash both run it. Nothing here may
# exit: PID 1 never returns.

say() { echo "rig: $*" >/dev/console; }

# slirp networking: the guest is 10.0.2.15, the host 10.0.2.2.
rig_net_up() {
  ip link set lo up
  ip link set eth0 up 2>/dev/null && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2
}

# The virtio-serial port named "nvmf.cmd" (empty when QEMU offers none), in $port.
rig_find_port() {
  port=""
  for p in /sys/class/virtio-ports/*; do
    [ "$(cat "$p/name" 2>/dev/null)" = nvmf.cmd ] && port="/dev/$(basename "$p")"
  done
}

# Command service (test/helpers/guest.ts is the host side). Host → guest, one line:
# "CMD <id> <timeout-seconds> <base64 script>". Guest → host: "@@BEGIN <id>", the output
# (stdout+stderr), a newline, "@@END <id> <status>". Output goes to a per-command file so
# background children can't block or corrupt the reply.
rig_serve() {
  exec 3<>"$port" || return 1
  echo "@@READY" >&3
  while read -r kw id tmo b64 <&3; do
    [ "$kw" = CMD ] || continue
    echo "$b64" | base64 -d >/tmp/.rig-cmd.$id
    timeout -s KILL "$tmo" sh /tmp/.rig-cmd.$id </dev/null >/tmp/.rig-out.$id 2>&1 3>&-
    rc=$?
    { echo "@@BEGIN $id"; cat /tmp/.rig-out.$id; echo; echo "@@END $id $rc"; } >&3
    rm -f /tmp/.rig-cmd.$id /tmp/.rig-out.$id
  done
  exec 3>&-
}

# Say ready, then serve commands for ever (the service restarts when the port goes away).
rig_ready_and_serve() {
  rig_find_port
  say "ready port=$port uptime $(cut -d' ' -f1 /proc/uptime)"
  echo "RIG-READY" >/dev/console
  # scripts/rig/run-guest.sh asks for a shell on the console (rig.shell on the kernel command line).
  if grep -qw rig.shell /proc/cmdline; then
    (while :; do rig_console_shell; done) &
  fi
  while :; do
    if [ -n "$port" ]; then rig_serve; else say "no nvmf.cmd port"; fi
    sleep 1
  done
}
