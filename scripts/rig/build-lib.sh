# Shared by scripts/rig/build-guest.sh (6.1) and build-guest-612.sh (6.12). Source it (bash).

# pvh_vmlinux KROOT KERNEL KVER — print the kernel QEMU should boot: KROOT/vmlinux, the
# uncompressed ELF unpacked once from the bzImage KERNEL, when the kernel has CONFIG_PVH (QEMU's
# PVH entry boots it directly: no xz/zstd decompression under TCG at every boot); else KERNEL.
# The payload follows its magic (zstd or xz); the decompressors complain about the bzImage's
# trailing bytes, so the result is judged (an ELF file), not their exit status.
pvh_vmlinux() {
  local kroot="$1" kernel="$2" kver="$3" magic off dec
  if grep -q '^CONFIG_PVH=y' "$kroot/boot/config-$kver" 2>/dev/null && [[ ! -s "$kroot/vmlinux" ]]; then
    for magic in $'\x28\xb5\x2f\xfd' $'\xfd7zXZ\x00'; do
      off="$(LC_ALL=C grep -abo "$magic" "$kernel" | head -n1 | cut -d: -f1 || true)"
      [[ -n "$off" ]] || continue
      case "$magic" in $'\xfd'*) dec=(xz -dc) ;; *) dec=(zstd -dcq) ;; esac
      command -v "${dec[0]}" >/dev/null || continue
      tail -c +"$((off + 1))" "$kernel" | "${dec[@]}" 2>/dev/null >"$kroot/vmlinux.tmp" || true
      if [[ "$(head -c 4 "$kroot/vmlinux.tmp" | od -An -c | tr -d ' ')" == '177ELF' ]]; then
        mv "$kroot/vmlinux.tmp" "$kroot/vmlinux"; break
      fi
      rm -f "$kroot/vmlinux.tmp"
    done
  fi
  if [[ -s "$kroot/vmlinux" ]]; then echo "$kroot/vmlinux"; else echo "$kernel"; fi
}
