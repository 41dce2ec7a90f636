#!/usr/bin/env bash
# The project's test command (`npm test`): setup (packages, npm ci, build), then ONE
# `node --test` run over the compiled unit and integration tests, so there is one closing
# summary (`# pass N`, `# fail N`, `# skipped N`; TAP when piped, spec on a terminal).
#
# Usage: npm test [-- [FILTER...] [NODE_TEST_OPTION...]]
#   FILTER               words without a leading '-': keep the test files whose path under
#                        dist/test/ contains any of them, e.g. `npm test -- unit`,
#                        `npm test -- integration/container`, `npm test -- pdu nbd`
#   NODE_TEST_OPTION     anything starting with '-' goes to node --test unchanged,
#                        e.g. `npm test -- unit --test-name-pattern=digest`
#   NVMF_NBD_TEST_TIMEOUT_S   per-file (and default per-test) timeout, default 900
#   NVMF_NBD_SETUP_ARGS       extra setup.sh options, e.g. "--no-apt"
# Exit status is node's: non-zero when any test failed or was cancelled (timed out).
# Tests run one file at a time (--test-concurrency=1): 2 cores, and the guest tests are heavy.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

filters=()
node_opts=()
for arg in "$@"; do
  case "$arg" in
    -*) node_opts+=("$arg") ;;
    *) filters+=("$arg") ;;
  esac
done

# shellcheck disable=SC2086 # NVMF_NBD_SETUP_ARGS is a word list on purpose
bash "$REPO_ROOT/scripts/setup.sh" ${NVMF_NBD_SETUP_ARGS:-}
cd "$REPO_ROOT"

files=()
while IFS= read -r f; do
  if [ "${#filters[@]}" -eq 0 ]; then
    files+=("$f")
  else
    for w in "${filters[@]}"; do
      case "${f#dist/test/}" in *"$w"*) files+=("$f"); break ;; esac
    done
  fi
done < <(find dist/test/unit dist/test/integration -name '*.test.js' 2>/dev/null | LC_ALL=C sort)

if [ "${#files[@]}" -eq 0 ]; then
  die "no test files match '${filters[*]:-}' under dist/test/{unit,integration}"
fi

timeout_ms=$(( ${NVMF_NBD_TEST_TIMEOUT_S:-900} * 1000 ))
log "node --test: ${#files[@]} file(s), one at a time, ${timeout_ms} ms per file"
set +e
node --test --test-concurrency=1 --test-timeout="$timeout_ms" "${node_opts[@]}" "${files[@]}"
status=$?
set -e
exit "$status"
