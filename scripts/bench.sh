#!/usr/bin/env bash
# The benchmarks (`npm run bench`): setup (quiet), then
#   1. the NBD-path benchmark: fio --ioengine=nbd, job by job, against `nbdkit memory` (direct),
#      a Node byte relay in front of nbdkit (the ceiling of any Node bridge) and the bridge over
#      the embedded NVMe/TCP target, side by side with ratios, CPU µs/IO of the middle process,
#      the bridge's peak RSS, and a 4-namespace × QD128 job for the bridge's peak RSS under load;
#   2. the engine-only benchmark: NVMe Reads/Writes straight from the host engine (no NBD).
# They print tables with issue 9's goals beside the values; nothing is asserted. About 5 minutes
# with the defaults.
#
# Usage: npm run bench -- [--only nbd|engine|profile] [ARGS...]
#   (no --only)        both benchmarks with their defaults; ARGS are not allowed
#   --only nbd         only the NBD-path benchmark; ARGS go to dist/bench/nbd-bench.js:
#                      --runtime S --ramp S --size MiB --cpu N --target-cpu N --queues N
#                      --jobs 4k-randread-qd1,...,4ns-128k-randread-qd128 --no-pin
#                      --target-flush-every N (the embedded target's flushEvery, default 8; 0 = its
#                      answers leave once per event-loop iteration — the setting before 2026-12-04)
#   --only engine      only the engine benchmark; ARGS go to dist/bench/engine-bench.js:
#                      --traddr A --trsvcid P --subnqn NQN (any NVMe/TCP target; default: start
#                      the embedded one) --nsid N --runtime S --ramp S --queues N --queue-size N
#                      --region MiB --jobs ... --no-prefill --no-tls --target-cpu N --slice S
#                      --target-flush-every N --api record|promise (record: a Namespace with pooled request records, as
#                      the NBD server drives it; promise: await Controller.read/write per command)
#                      (with the embedded target, QD32 and 128 KiB jobs run again over TLS: "tls …" rows,
#                      interleaved with the plain run in S-second slices, default 0.5; "TLS cost" table)
#                      (WRITES DESTROY DATA in the first --region MiB of the namespace)
#   --only auth        the DH-HMAC-CHAP cost: connect and reconnect times without authentication and
#                      with null/ffdhe2048/ffdhe4096 (ARGS go to dist/bench/auth-bench.js: --runs N
#                      --queues N --groups none,null,2048,4096,8192)
#   --only profile     CPU-profile the bridge (V8 profiler) during one job (default 4k-randread-qd32,
#                      --profile-job NAME to change) and its top-10 self-time functions
# Environment: BENCH_RUNTIME (seconds per job, default 5), BENCH_RAMP (warm-up seconds, default 1),
#   BENCH_CPU (core for fio + NBD server / engine, default 1), NVMF_NBD_SETUP_ARGS (extra setup.sh options).
# Exit status: 0 done, 1 failure, 2 a prerequisite (fio with its nbd engine, nbdkit) is missing.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

only=""
if [ "${1:-}" = "--only" ]; then
  only="${2:-}"
  shift 2 || die "--only needs nbd, engine or profile"
  case "$only" in nbd|engine|profile|auth) ;; *) die "--only '$only': use nbd, engine, auth or profile" ;; esac
elif [ "$#" -gt 0 ]; then
  case "$1" in
    -h|--help) sed -n '2,30p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "arguments need --only nbd|engine|auth|profile first (see --help)" ;;
  esac
fi

# shellcheck disable=SC2086 # NVMF_NBD_SETUP_ARGS is a word list on purpose
bash "$REPO_ROOT/scripts/setup.sh" --quiet ${NVMF_NBD_SETUP_ARGS:-}
cd "$REPO_ROOT"

cpu="${BENCH_CPU:-1}"
# The engine benchmark pins itself like the bridge: same core budget as in the NBD benchmark.
engine_prefix=()
if have taskset && [ "$cpu" -lt "$(nproc)" ]; then engine_prefix=(taskset -c "$cpu"); fi

case "$only" in
  "")
    # A missing fio/nbdkit (exit 2) does not stop the engine benchmark, which needs neither;
    # the script still ends with the NBD benchmark's non-zero status.
    nbd_rc=0
    node dist/bench/nbd-bench.js --cpu "$cpu" || nbd_rc=$?
    echo
    "${engine_prefix[@]}" node dist/bench/engine-bench.js
    exit "$nbd_rc"
    ;;
  nbd) node dist/bench/nbd-bench.js --cpu "$cpu" "$@" ;;
  engine) "${engine_prefix[@]}" node dist/bench/engine-bench.js "$@" ;;
  profile) node dist/bench/nbd-bench.js --cpu "$cpu" --profile "$@" ;;
  auth) "${engine_prefix[@]}" node dist/bench/auth-bench.js "$@" ;;
esac
