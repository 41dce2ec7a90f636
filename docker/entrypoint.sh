#!/bin/sh
# Container entrypoint: `docker run IMAGE <verb> [options]` runs `nvmf-nbd <verb> [options]`.
# `exec` replaces this shell, so node is the process that receives SIGTERM/SIGINT from
# `docker stop` and the verbs' own shutdown paths run (detach, disconnect, close sockets).
# As PID 1 node gets no default signal handlers; the long-running verbs install their own, and
# `docker run --init` adds a reaper for the nbd-client children if wanted.
set -e
if [ "$#" -eq 0 ]; then set -- --help; fi
# `docker run IMAGE node ...` or `sh` for debugging: run that instead of the CLI.
case "$1" in
  node|sh|bash|nbd-client) exec "$@" ;;
esac
exec node /app/dist/src/cli/main.js "$@"
