#!/usr/bin/env bash
# Install nvmf-nbd on this machine (run from a built checkout: npm run build first).
#
#   sudo scripts/install.sh [--prefix /usr/local] [--destdir DIR] [--unitdir DIR] [--udevdir DIR]
#                           [--no-enable]
#
# Copies dist/src and package.json to PREFIX/lib/nvmf-nbd, links PREFIX/bin/nvmf-nbd, installs the
# systemd units (nvmf-nbd.service, nvmf-nbd-autoconnect.service) into UNITDIR
# (/etc/systemd/system), the udev rule (60-nvmf-nbd.rules) into UDEVDIR (/etc/udev/rules.d) with its
# helper PREFIX/lib/nvmf-nbd/udev/nvmf-nbd-id, and /etc/modules-load.d/nbd.conf; then, unless
# --no-enable or DESTDIR is set, reloads systemd and udev and enables both units.
# DESTDIR stages everything under DIR (packaging, tests); paths inside the files stay PREFIX-based.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
prefix=/usr/local destdir='' unitdir=/etc/systemd/system udevdir=/etc/udev/rules.d enable=1
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix=$2; shift 2 ;;
    --destdir) destdir=$2; shift 2 ;;
    --unitdir) unitdir=$2; shift 2 ;;
    --udevdir) udevdir=$2; shift 2 ;;
    --no-enable) enable=0; shift ;;
    -h|--help) sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install.sh: unknown option '$1'" >&2; exit 2 ;;
  esac
done
[ -f "$here/dist/src/cli/main.js" ] || { echo "install.sh: build first (npm run build)" >&2; exit 1; }
lib=$prefix/lib/nvmf-nbd bindir=$prefix/bin libexec=$prefix/lib/nvmf-nbd/udev
install -d "$destdir$lib" "$destdir$bindir" "$destdir$libexec" "$destdir$unitdir" "$destdir$udevdir" "$destdir/etc/modules-load.d"
rm -rf "$destdir$lib/dist"
cp -R "$here/dist/src" "$destdir$lib/dist-src.tmp"
install -d "$destdir$lib/dist"
mv "$destdir$lib/dist-src.tmp" "$destdir$lib/dist/src"
install -m 0644 "$here/package.json" "$destdir$lib/package.json"
chmod 0755 "$destdir$lib/dist/src/cli/main.js"
ln -sfn "$lib/dist/src/cli/main.js" "$destdir$bindir/nvmf-nbd"
install -m 0755 "$here/udev/nvmf-nbd-id" "$destdir$libexec/nvmf-nbd-id"
for u in nvmf-nbd.service nvmf-nbd-autoconnect.service; do
  sed "s#@BINDIR@#$bindir#g" "$here/systemd/$u.in" > "$destdir$unitdir/$u"
  chmod 0644 "$destdir$unitdir/$u"
done
sed "s#@LIBEXECDIR@#$libexec#g" "$here/udev/60-nvmf-nbd.rules.in" > "$destdir$udevdir/60-nvmf-nbd.rules"
chmod 0644 "$destdir$udevdir/60-nvmf-nbd.rules"
install -m 0644 "$here/systemd/nbd.conf" "$destdir/etc/modules-load.d/nbd.conf"
echo "installed nvmf-nbd under ${destdir}${prefix} (units in ${destdir}${unitdir}, udev rule in ${destdir}${udevdir})"
if [ "$enable" = 1 ] && [ -z "$destdir" ]; then
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl enable nvmf-nbd.service nvmf-nbd-autoconnect.service
  fi
  if command -v udevadm >/dev/null 2>&1; then udevadm control --reload || true; fi
fi
