# Shared shell helpers for the project's scripts. Source it, do not run it:
#   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# It sets REPO_ROOT (computed from this file's path, so every script works from any cwd) and
# NVMF_NBD_CACHE (downloads, guest kernels and container rootfs survive between runs there).

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NVMF_NBD_CACHE="${NVMF_NBD_CACHE:-${HOME:-/root}/.cache/nvmf-nbd}"
export NVMF_NBD_CACHE
: "${NVMF_NBD_QUIET:=0}"

# log MSG... — progress to stderr (silenced by --quiet); errors use die.
log() { [ "$NVMF_NBD_QUIET" = 1 ] || printf '[%s] %s\n' "$(basename "$0")" "$*" >&2; }
warn() { printf '[%s] warning: %s\n' "$(basename "$0")" "$*" >&2; }
die() { printf '[%s] error: %s\n' "$(basename "$0")" "$*" >&2; exit 1; }

# have CMD — true when CMD is on PATH.
have() { command -v "$1" >/dev/null 2>&1; }

is_root() { [ "$(id -u)" = 0 ]; }

# pkg_installed PKG — true when the Debian package is fully installed (not just configured-half).
pkg_installed() {
  [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]
}

# missing_pkgs PKG... — prints the packages of the list that are not installed.
missing_pkgs() {
  local p
  for p in "$@"; do pkg_installed "$p" || printf '%s\n' "$p"; done
}

# sha256_of FILE... — one hash over the contents of the files (missing files hash as empty).
sha256_of() { cat "$@" 2>/dev/null | sha256sum | cut -d' ' -f1; }

# debian_mirror — the Debian archive URL this machine's apt uses (deb822 or one-line format),
# so debootstrap fetches from the same place apt does; falls back to deb.debian.org.
debian_mirror() {
  local url
  url="$(grep -hs -E '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
    | grep -v -E 'security|nodesource|google' \
    | sed -E 's/^URIs:[[:space:]]*//; s/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?//' \
    | awk '{print $1}' | grep -E '/debian/?$' | head -n1)"
  printf '%s\n' "${url:-http://deb.debian.org/debian}"
}
