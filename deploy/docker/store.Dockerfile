# syntax=docker/dockerfile:1
# The cofre-store image: the store binary alone on Debian 12 slim, as an unprivileged user.
# Build from the repository root (store.Dockerfile.dockerignore keeps target/ and .git out):
#
#   docker build -f deploy/docker/store.Dockerfile -t cofre-store .
#
# Enroll once (`enroll --controller URL --token …`, same volume), then `serve`. Repositories and
# the state dir live under /var/lib/cofre-store: mount a volume there.
# Not built on the machines this was written on (no Docker engine there): see docs/install.md.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --package cofre-store --bin cofre-store \
    && install -D -m 0755 target/release/cofre-store /out/cofre-store

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# curl: HEALTHCHECK only.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 cofre \
    && useradd --system --uid 10001 --gid cofre --home-dir /var/lib/cofre-store \
        --no-create-home --shell /usr/sbin/nologin cofre \
    && install -d -o cofre -g cofre -m 0700 /var/lib/cofre-store
COPY --from=build /out/cofre-store /usr/local/bin/cofre-store
ENV NO_COLOR=1
USER 10001:10001
WORKDIR /var/lib/cofre-store
# HTTPS (listen; the deployment sets COFRE_STORE_LISTEN=0.0.0.0:8000).
EXPOSE 8000
# Any HTTP answer over TLS counts (clients without a certificate are refused, which is an
# answer too): it proves the listener and the TLS certificate are up, nothing more.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["curl", "--insecure", "--silent", "--output", "/dev/null", "https://127.0.0.1:8000/"]
ENTRYPOINT ["/usr/local/bin/cofre-store"]
CMD ["serve"]
