#!/usr/bin/env bash
# Runs the real-client test suites in tests/node against the flux-bff binary:
#   - contract.test.mjs: the wire contract with the official socket.io-client;
#   - slow-client.test.mjs: a client that stops reading is dropped by closing its connection
#     and reconnects on its own (D30);
#   - dashboard.e2e.test.mjs: the dashboard in headless Chromium (screenshot: target/dashboard.png);
#   - recovery.test.mjs: connection-state recovery through Apache Kafka (scripts/kafka.sh: java
#     and the broker's jars, `bash scripts/kafka.sh fetch`) with socket.io-client and a TCP proxy;
#   - chaos/invariants.test.mjs: the chaos soak's schedule and invariants, without servers;
#   then the chaos soak (tests/node/chaos/driver.mjs, README "Chaos soak"): 90 s of seeded
#   faults on two replicas, Kafka and redis-server (apt-get install redis-server), failing on
#   any violation. Its output goes to target/chaos/seed-<seed>/.
# Installs what is missing: Debian's chromium (apt) and the npm packages (npm ci), and builds the
# binary (cargo build) unless FLUX_BFF_BIN names one. Needs node >= 20 and npm.
# Environment: FLUX_BFF_BIN (binary to test), FLUX_CHROMIUM (browser, default /usr/bin/chromium),
# FLUX_SCREENSHOT (default <repo>/target/dashboard.png), FLUX_CHAOS_SEED (default 1),
# FLUX_CHAOS_SECONDS (default 90). Extra arguments go to `node --test`, and then the soak is not
# run (a targeted run of some suites).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

if ! command -v node >/dev/null 2>&1; then
  echo "node-tests: node (>= 20) is required: apt-get install -y nodejs npm" >&2
  exit 1
fi
major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$major" -lt 20 ]; then
  echo "node-tests: node $(node --version) is too old; node >= 20 is required" >&2
  exit 1
fi

chromium="${FLUX_CHROMIUM:-/usr/bin/chromium}"
if [ ! -x "$chromium" ]; then
  echo "node-tests: installing chromium (apt-get install -y chromium)…"
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
fi

# npm ci when node_modules is missing or older than the lockfile.
if [ ! -f tests/node/node_modules/.package-lock.json ] ||
  [ tests/node/package-lock.json -nt tests/node/node_modules/.package-lock.json ]; then
  echo "node-tests: npm ci in tests/node…"
  (cd tests/node && npm ci --no-audit --no-fund --loglevel=error)
fi

if [ -z "${FLUX_BFF_BIN:-}" ]; then
  cargo build --bin flux-bff # a no-op when up to date
  FLUX_BFF_BIN="${CARGO_TARGET_DIR:-$repo/target}/debug/flux-bff"
fi
export FLUX_BFF_BIN

# The top-level suites and the chaos driver's own unit tests; tests/node/ops (the operator
# artefacts: Helm chart, compose, dashboard and rules on Prometheus) is run by
# scripts/ops-check.sh, which installs Helm and Prometheus first.
suites=(tests/node/*.test.mjs tests/node/chaos/*.test.mjs)
if [ $# -gt 0 ]; then
  exec node --test "$@" "${suites[@]}"
fi
node --test "${suites[@]}"

# The chaos soak: a fixed seed, so that a failure replays (the same schedule of faults; the
# output names the seed, the timeline and the command to run it again).
node tests/node/chaos/driver.mjs --seed "${FLUX_CHAOS_SEED:-1}" --duration "${FLUX_CHAOS_SECONDS:-90}"
