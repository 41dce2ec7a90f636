#!/usr/bin/env bash
# `npm run mutate [-- [PATH...] [STRYKER_OPTION...]]` — mutation testing (issue 15), not part of
# `npm test`. Stryker (stryker.conf.json) mutates the data-path modules, compiles the instrumented
# tree once and runs the compiled unit tests covering each mutant; then
# scripts/mutation-summary.js prints the score per module and every survivor (file:line, mutator).
#
#   PATH              a source file or folder to mutate instead of the default scope, e.g.
#                     `npm run mutate -- src/wire/pdu.ts` or `npm run mutate -- src/transport`;
#                     FILE.ts:A-B mutates lines A..B of it only (Stryker's range syntax)
#   --tests=A,B       run only these compiled unit test files (dist/test/unit/A.test.js, ...)
#                     instead of all of them: much quicker for one module, e.g.
#                     `npm run mutate -- src/wire/pdu.ts --tests=pdu,target-protocol`
#   STRYKER_OPTION    anything starting with '-' goes to Stryker, e.g. `--force` (ignore the
#                     incremental results and rerun every mutant), `--concurrency 2`
#   NVMF_NBD_MUTATE_NICE   nice level of the run, default 15 (the machine is shared)
#
# Incremental: each scope keeps its own results in reports/mutation/incremental-<scope>.json
# (git-ignored); a rerun tests only the mutants whose code or covering tests changed.
# Results of every run are merged per mutant into reports/mutation/merged.json (line-range runs of one
# file add up; a file whose source changed since is dropped), so `node scripts/mutation-summary.js --merged` prints the whole table.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scope=()
opts=()
tests=
for arg in "$@"; do
  case "$arg" in
    --tests=*) tests=${arg#--tests=} ;;
    -*) opts+=("$arg") ;;
    *)
      if [ -d "$arg" ]; then scope+=("${arg%/}/**/*.ts")
      elif [ -f "$arg" ]; then scope+=("$arg")
      # A line range of a file (Stryker's own syntax), e.g. src/transport/queue-pair.ts:243-421
      elif [[ "$arg" =~ ^(.+\.ts):[0-9]+(:[0-9]+)?-[0-9]+(:[0-9]+)?$ ]] && [ -f "${BASH_REMATCH[1]}" ]; then scope+=("$arg")
      elif [ "${#opts[@]}" -gt 0 ]; then opts+=("$arg")   # value of the previous option
      else echo "mutate: no such file or folder: $arg" >&2; exit 2
      fi ;;
  esac
done

mkdir -p reports/mutation
slug=default
if [ "${#scope[@]}" -gt 0 ]; then
  slug=$(printf '%s\n' "${scope[@]}" | sed 's#\*\*/\*\.ts##; s#^src/##; s#[^A-Za-z0-9]\+#-#g; s#-$##' | paste -sd_ -)
  opts=(--mutate "$(IFS=,; echo "${scope[*]}")" "${opts[@]}")
fi
config=stryker.conf.json
if [ -n "$tests" ]; then
  slug="$slug.$(printf '%s' "$tests" | sed 's#[^A-Za-z0-9]\+#-#g')"
  # A long --tests list would make a file name past the 255-byte limit: keep a prefix and a hash.
  if [ "${#slug}" -gt 120 ]; then slug="${slug:0:80}-$(printf '%s' "$tests" | sha1sum | cut -c1-12)"; fi
  config="reports/mutation/stryker.$slug.conf.json"
  TESTS="$tests" node -e '
    const fs = require("node:fs");
    const c = JSON.parse(fs.readFileSync("stryker.conf.json", "utf8"));
    c.tap.testFiles = process.env.TESTS.split(",").filter(Boolean).map((t) => `dist/test/unit/${t}.test.js`);
    for (const f of c.tap.testFiles) if (!fs.existsSync(f.replace(/^dist\//, "").replace(/\.js$/, ".ts"))) {
      console.error(`mutate: no such unit test: ${f}`); process.exit(2);
    }
    fs.writeFileSync(process.argv[1], JSON.stringify(c, null, 2));' "$config"
fi
# The compiled tests must be current: incremental mode compares them with the last run's.
nice -n 10 npx tsc -p tsconfig.json
report=reports/mutation/mutation.json   # stryker.conf.json jsonReporter.fileName
rm -f "$report"

nice -n "${NVMF_NBD_MUTATE_NICE:-15}" npx stryker run "$config" --incremental \
  --incrementalFile "reports/mutation/incremental-$slug.json" "${opts[@]}"
node scripts/mutation-summary.js "$report"
