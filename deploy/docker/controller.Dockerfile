# syntax=docker/dockerfile:1
# The cofre-controller image: the controller binary alone on Debian 12 slim, as an unprivileged
# user. Build from the repository root (the build context is the whole workspace; the
# controller.Dockerfile.dockerignore beside this file keeps target/ and .git out of it):
#
#   docker build -f deploy/docker/controller.Dockerfile -t cofre-controller .
#
# Run `migrate` (as the schema owner) before `serve`; deploy/compose/compose.yaml and
# deploy/kubernetes/ show both. The image sets no COFRE_* settings: the deployment does.
# Not built on the machines this was written on (no Docker engine there): see docs/install.md.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
WORKDIR /src
COPY . .
# Cargo.lock is committed: --locked builds exactly what the tests ran against.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --package cofre-controller --bin cofre-controller \
    && install -D -m 0755 target/release/cofre-controller /out/cofre-controller

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# ca-certificates: webhooks, SMTP and REST servers with public certificates; curl: HEALTHCHECK.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 cofre \
    && useradd --system --uid 10001 --gid cofre --home-dir /var/lib/cofre-controller \
        --no-create-home --shell /usr/sbin/nologin cofre \
    && install -d -o cofre -g cofre -m 0700 /var/lib/cofre-controller /var/cache/cofre-controller
COPY --from=build /out/cofre-controller /usr/local/bin/cofre-controller
# Maintenance jobs keep rustic's cache here; audit.checkpoint_file belongs in /var/lib/cofre-controller.
ENV XDG_CACHE_HOME=/var/cache/cofre-controller NO_COLOR=1
USER 10001:10001
WORKDIR /var/lib/cofre-controller
# 8080: REST API (http.listen), 7443: agents and stores (grpc.listen, TLS).
EXPOSE 8080 7443
# /healthz answers while the process serves; /readyz also needs PostgreSQL (for orchestrators).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["curl", "--fail", "--silent", "--show-error", "--output", "/dev/null", "http://127.0.0.1:8080/healthz"]
ENTRYPOINT ["/usr/local/bin/cofre-controller"]
CMD ["serve"]
