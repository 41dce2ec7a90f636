#!/usr/bin/env bash
# One-stop, idempotent setup: Debian packages the tests and the attach path need, npm packages,
# and the TypeScript build. `npm test` runs it first; run it by hand after a pull.
#
#   - Debian packages: installed only when missing (dpkg-query first), with one `apt-get update`
#     and only when something must be installed. Not root: prints what is missing and goes on
#     (the tests that need it then skip, naming the reason; under CI=true they fail instead).
#   - npm: `npm ci` only when node_modules is missing or was installed from another
#     package-lock.json (its sha256 is kept in node_modules/.setup-stamp).
#   - build: `tsc -p tsconfig.json`; a type error fails setup. Compiled tests whose .ts source
#     is gone are deleted so `node --test` never runs a stale file.
#
# Usage: scripts/setup.sh [--no-apt] [--quiet]       (works from any directory)
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

no_apt=0
for arg in "$@"; do
  case "$arg" in
    --no-apt) no_apt=1 ;;
    --quiet) NVMF_NBD_QUIET=1 ;;
    -h|--help) sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option '$arg' (use --no-apt, --quiet)" ;;
  esac
done
cd "$REPO_ROOT"

# What each package is for (grep scripts/ and test/ before adding a tool):
#   nbd-client            attach /dev/nbdX (product) and the guest's NBD client (rig)
#   qemu-utils libnbd-bin fio nbdkit   host-side NBD clients/servers for interop tests, bench
#   qemu-system-x86 busybox-static cpio e2fsprogs nvme-cli file   the QEMU guest rig
#   buildah debootstrap dpkg-repack    container image build test (scripts/container/)
#   util-linux (flock) gzip ca-certificates   normally present; listed so minimal systems work
#   systemd               systemd-analyze verify (unit files in systemd/), systemd-id128 (host identity cross-check)
#   gnutls-bin            psktool/certtool: PSK files and X.509 certificates for the NBD-over-TLS tests
#   lz4 xz-utils zstd     the rig unpacks the kernel once (xz; zstd for 6.12) and packs the initramfs with lz4: faster boots
APT_PACKAGES=(
  nbd-client qemu-utils libnbd-bin fio nbdkit
  qemu-system-x86 busybox-static cpio e2fsprogs nvme-cli file
  buildah debootstrap dpkg-repack
  util-linux gzip ca-certificates lz4 xz-utils zstd systemd gnutls-bin
)

# --- Debian packages -----------------------------------------------------------------------
if [ "$no_apt" = 0 ]; then
  if ! have dpkg-query; then
    warn "not a Debian system (no dpkg-query): install by hand: ${APT_PACKAGES[*]}"
  else
    mapfile -t missing < <(missing_pkgs "${APT_PACKAGES[@]}")
    if [ "${#missing[@]}" -eq 0 ]; then
      log "Debian packages: all present"
    elif is_root; then
      log "installing Debian packages: ${missing[*]}"
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq
      apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
    else
      warn "not root, not installing: ${missing[*]}"
      warn "tests that need them will skip; run 'sudo bash scripts/setup.sh' to install"
    fi
  fi
fi

# --- npm packages --------------------------------------------------------------------------
have node || die "node not found: install Node.js 20 (https://nodejs.org or the NodeSource .deb)"
node_major="$(node -p 'process.versions.node.split(".")[0]')"
[ "$node_major" -ge 20 ] || die "Node.js >= 20 needed, found $(node --version)"
[ -f package-lock.json ] || die "package-lock.json missing: it is committed; restore it with git"

want="$(sha256_of package.json package-lock.json)"
have_stamp="$(cat node_modules/.setup-stamp 2>/dev/null || true)"
if [ ! -d node_modules ] || [ "$want" != "$have_stamp" ] || [ ! -x node_modules/.bin/tsc ]; then
  log "npm ci"
  npm ci --no-audit --no-fund --loglevel=error >&2
  printf '%s\n' "$want" >node_modules/.setup-stamp
else
  log "node_modules up to date"
fi

# --- build -----------------------------------------------------------------------------------
log "tsc -p tsconfig.json"
if ! node_modules/.bin/tsc -p tsconfig.json; then
  die "TypeScript build failed (type errors above)"
fi
# A test compiled earlier whose source was deleted or renamed would still run: remove it.
if [ -d dist/test ]; then
  while IFS= read -r -d '' js; do
    rel="${js#dist/}"
    [ -f "${rel%.js}.ts" ] || { rm -f "$js" "$js.map"; log "removed stale $js"; }
  done < <(find dist/test -name '*.js' -print0)
fi
log "ready"
