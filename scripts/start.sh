#!/usr/bin/env bash
# The main job on the embedded default (`npm start`): setup (packages, npm ci, build), then the
# demo: the embedded NVMe/TCP target with a 1 GiB memory namespace, the host engine connected to
# it, and the namespace served over NBD on a private Unix socket (STATE_DIR/demo/nvme0/nvme0n1.sock,
# mode 0600 in a 0700 directory) until Ctrl-C.
#
# Usage: npm start [-- DEMO_OPTIONS]   e.g. `npm start -- --attach`, `npm start -- --nbd tcp:127.0.0.1:10809`
#   (see `node dist/src/cli/main.js demo --help`)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh" --quiet ${NVMF_NBD_SETUP_ARGS:-}
exec node "$root/dist/src/cli/main.js" demo "$@"
