# nvmf-nbd container image.
#
# Build:  docker build -t nvmf-nbd .        (or: scripts/container/build-image.sh, which uses buildah)
# Run:    see README.md "Container" — attach needs root and /dev/nbdX (--user 0 --privileged, or
#         --device /dev/nbd0 --cap-add SYS_ADMIN); serving NBD over TCP or a Unix socket does not.
#
# Stage 1 builds with the dev dependencies (typescript); stage 2 carries only dist/src, the
# production node_modules (the project has no runtime dependencies) and nbd-client.

FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
# Behind a TLS-intercepting proxy the builder bind-mounts its CA bundle at /run/build-ca/ca.crt
# (scripts/container/build-image.sh does, with `buildah bud -v`); a plain `docker build` has no
# such file and npm keeps its defaults.
RUN if [ -s /run/build-ca/ca.crt ]; then \
      export NODE_EXTRA_CA_CERTS=/run/build-ca/ca.crt npm_config_cafile=/run/build-ca/ca.crt; \
    fi \
 && npm ci --no-audit --no-fund
COPY tsconfig.json ./
COPY src ./src
# tsconfig also includes test/ and bench/; they are not copied, so only src/ is compiled.
RUN npm run build && npm prune --omit=dev --no-audit --no-fund && mkdir -p node_modules

FROM node:20-bookworm-slim
# nbd-client binds an NBD export to /dev/nbdX (the `--attach` path). The apt step only runs when
# the base lacks it: the upstream node image does, the locally built base used by this project's
# tests (scripts/container/build-base.sh, for machines without a registry) already has it, so a
# build there needs no Debian mirror.
RUN command -v nbd-client >/dev/null 2>&1 \
 || (apt-get update \
     && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nbd-client \
     && rm -rf /var/lib/apt/lists/*)
WORKDIR /app
COPY --from=build /app/package.json ./package.json
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist/src ./dist/src
COPY docker/entrypoint.sh /usr/local/bin/docker-entrypoint.sh
COPY docker/healthcheck.js /app/docker/healthcheck.js
# A non-root default user: `target`, `discover`, and serving NBD over TCP/Unix need no privilege.
# Attaching /dev/nbdX needs root: run with `--user 0` (see README).
RUN chmod 0755 /usr/local/bin/docker-entrypoint.sh \
 && ln -sf /app/dist/src/cli/main.js /usr/local/bin/nvmf-nbd \
 && chmod 0755 /app/dist/src/cli/main.js \
 && useradd --system --uid 10001 --user-group --home-dir /var/lib/nvmf-nbd --create-home --shell /usr/sbin/nologin nvmf
ENV NODE_ENV=production \
    NVMF_NBD_STATE_DIR=/var/lib/nvmf-nbd
USER nvmf
# Real liveness check (docker/healthcheck.js): with $NVMF_NBD_HEALTH unset, asks the daemon's
# control socket for `list` when `nvmf-nbd daemon` runs, else expects the NBD greeting on
# connect's default Unix socket ($NVMF_NBD_STATE_DIR/nbd/nvme0/nvme0n1.sock); set NVMF_NBD_HEALTH
# (e.g. nvme-tcp:127.0.0.1:4420 for `target`, nbd:HOST:PORT for a TCP endpoint) to choose.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["node", "/app/docker/healthcheck.js"]
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
CMD ["--help"]
