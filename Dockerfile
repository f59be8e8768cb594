# syntax=docker/dockerfile:1
# flux-bff: multi-stage build. BuildKit cache mounts keep the cargo registry and the target
# directory between builds, so a source change rebuilds only the crate. (cargo-chef, used
# before, does not support [patch] path dependencies such as vendor/engineioxide: it cooks
# them as empty skeletons, cargo-chef issue #64.) The image ships the product's two binaries,
# flux-bff and flux-sim (compose runs both from this one image); the workspace's load
# generator (tools/flux-loadgen) is neither built nor shipped.

ARG RUST_IMAGE=rust:1.95-bookworm

FROM ${RUST_IMAGE} AS builder
WORKDIR /app
COPY . .
# No debug info in the image's binaries (the crate's release profile keeps line tables for
# profiling, which makes each binary ~90 MB); symbols stay, so panics still name functions.
# The two binaries are copied by name, not by a `flux-*` glob: the cached target/ may still
# hold another package's binary (flux-loadgen, from builds before it left the crate).
ENV CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=debuginfo
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/app/target \
    cargo build --release --locked -p flux-bff --bin flux-bff --bin flux-sim \
    && mkdir -p /out \
    && cp target/release/flux-bff target/release/flux-sim /out/

# Pure-Rust Kafka (rskafka + rustls) and Valkey clients: no librdkafka, no OpenSSL at run time.
# ca-certificates only serves kafka.tls without an explicit ca_file.
FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin flux
COPY --from=builder /out/ /usr/local/bin/
USER 10001
# No RUST_LOG here: it would override log.level (FLUX_LOG__LEVEL), which defaults to info.
EXPOSE 3000
# No curl in the slim image: a raw HTTP request through bash's /dev/tcp. The port follows
# FLUX_HTTP__PORT, then SERVER_PORT (the original variable), then the default 3000.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${FLUX_HTTP__PORT:-${SERVER_PORT:-3000}} && printf 'GET /healthz HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["flux-bff"]
