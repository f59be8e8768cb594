#!/usr/bin/env bash
# Runs every check and test of flux-bff on a fresh machine, installing what the tests need:
# redis-server (Debian package), Apache Kafka 4 (broker jars from Maven Central through
# scripts/kafka.sh, cached in ~/.cache/flux-bff; java and mvn from Debian if missing),
# chromium and the npm packages of tests/node, and for scripts/ops-check.sh Debian's
# prometheus package and Helm (built from the Go module proxy, cached in ~/.cache/flux-bff).
# The integration tests start their own redis-server, Kafka broker and Prometheus processes on
# free loopback ports and fail (never skip) when they cannot.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }
SECONDS=0

# Disk: a clean run writes 2.1 GB under target/ (debug builds without dependency debug
# info, no incremental cache: see [profile.dev] in Cargo.toml; 1.4 GB for the workspace's
# clippy and tests, 0.7 GB for the vendored crates' tests in target/vendor), about 0.7 GB
# under fuzz/target/ (the fuzz targets) and 54 MB of Kafka jars: the warning below leaves
# room for more. CI once ran out of disk with 6.3 GB of target/.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
target_dir="${CARGO_TARGET_DIR:-target}"
mkdir -p "$target_dir"
free_mb=$(df -Pm "$target_dir" | awk 'NR==2 {print $4}')
step "disk: ${free_mb} MB free for $target_dir"
if [ "$free_mb" -lt 4096 ]; then
  echo "warning: less than 4 GB free where cargo builds ($target_dir); the build may fail with" \
    "'No space left on device'. Free space there or set CARGO_TARGET_DIR to a larger disk." >&2
fi

need_apt=()
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v openssl >/dev/null || need_apt+=(openssl)  # self-signed certificates for the rediss:// tests
command -v java >/dev/null || need_apt+=(openjdk-17-jre-headless)  # the Kafka broker
command -v mvn >/dev/null || need_apt+=(maven)  # fetches the Kafka broker's jars
if [ ${#need_apt[@]} -gt 0 ]; then
  step "installing ${need_apt[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
export FLUX_TEST_REDIS_SERVER="${FLUX_TEST_REDIS_SERVER:-$(command -v redis-server)}"

# Apache Kafka 4.1 (compose.yaml's version): the Kafka tests and flux-loadgen start their own
# single-node KRaft brokers from these jars (scripts/kafka.sh run).
step "Apache Kafka broker jars (scripts/kafka.sh fetch: Maven Central, ~10 s the first time, then cached)"
bash scripts/kafka.sh fetch

step "compose.yaml parses (docker compose config; no engine needed)"
if docker compose version >/dev/null 2>&1; then
  docker compose -f compose.yaml config -q
else
  # No compose v2 plugin on this machine: Debian's docker-compose (1.29) parses the same file,
  # but for depends_on's `restart: true` (compose v2.17), which it predates: the file without
  # those lines (tests/node/ops/compose.test.mjs checks they are there).
  command -v docker-compose >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null; }
  sed '/^ *restart: true$/d' compose.yaml | docker-compose -f - config -q
fi

step "cargo fmt --check"
cargo fmt --all -- --check
rustfmt --check --edition 2024 vendor/engineioxide/src/lib.rs
rustfmt --check --edition 2024 fuzz/fuzz_targets/*.rs

# The whole workspace: flux-bff and tools/flux-loadgen (whose end-to-end test runs the
# flux-bff binary that the same `cargo test --workspace` builds beside it).
step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test --workspace (unit, fixtures, gateway over TCP, lifecycle, integration, flux-loadgen end to end)"
cargo test --workspace --all-targets --locked 2>&1

step "patched engineioxide: upstream's own test suite (vendor/README.md)"
CARGO_TARGET_DIR="$target_dir/vendor" CARGO_PROFILE_DEV_DEBUG=0 \
  cargo test --manifest-path vendor/engineioxide/Cargo.toml --locked --features __test_harness 2>&1

step "patched socketioxide: upstream's own test suite (vendor/README.md)"
CARGO_TARGET_DIR="$target_dir/vendor" CARGO_PROFILE_DEV_DEBUG=0 \
  cargo test --manifest-path vendor/socketioxide/Cargo.toml --locked \
  --features __test_harness,extensions,state,tracing --lib --tests 2>&1

step "patched tungstenite: upstream's unit tests (vendor/README.md)"
CARGO_TARGET_DIR="$target_dir/vendor" CARGO_PROFILE_DEV_DEBUG=0 \
  cargo test --manifest-path vendor/tungstenite/Cargo.toml --locked 2>&1

step "patched rskafka: upstream's unit tests (vendor/README.md)"
CARGO_TARGET_DIR="$target_dir/vendor" CARGO_PROFILE_DEV_DEBUG=0 \
  cargo test --manifest-path vendor/rskafka/Cargo.toml --locked --lib 2>&1

step "Node real-client suites: socket.io-client contract, recovery, the dashboard in headless Chromium, then the 90 s chaos soak"
bash scripts/node-tests.sh

step "operator artefacts: Helm chart, alert rules, dashboard on a real Prometheus (scripts/ops-check.sh)"
bash scripts/ops-check.sh

step "benchmark smoke run (flux-loadgen; figures printed, not asserted)"
BENCH_SMOKE_PROFILE=dev bash scripts/bench-smoke.sh

step "fuzz targets: ${FUZZ_SECONDS:-20} s each from fuzz/corpus (scripts/fuzz.sh; libFuzzer, nightly)"
FUZZ_SECONDS="${FUZZ_SECONDS:-20}" bash scripts/fuzz.sh

step "all checks passed in ${SECONDS}s"
