#!/usr/bin/env bash
# Runs the real-client test suites in tests/node against the flux-bff binary:
#   - contract.test.mjs: the wire contract with the official socket.io-client;
#   - dashboard.e2e.test.mjs: the dashboard in headless Chromium (screenshot: target/dashboard.png);
#   - recovery.test.mjs: connection-state recovery through Apache Kafka (scripts/kafka.sh: java
#     and the broker's jars, `bash scripts/kafka.sh fetch`) with socket.io-client and a TCP proxy.
# Installs what is missing: Debian's chromium (apt) and the npm packages (npm ci), and builds the
# binary (cargo build) unless FLUX_BFF_BIN names one. Needs node >= 20 and npm.
# Environment: FLUX_BFF_BIN (binary to test), FLUX_CHROMIUM (browser, default /usr/bin/chromium),
# FLUX_SCREENSHOT (default <repo>/target/dashboard.png). Extra arguments go to `node --test`.
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

# The top-level suites only: tests/node/ops (the operator artefacts: Helm chart, compose,
# dashboard and rules on Prometheus) is run by scripts/ops-check.sh, which installs Helm and
# Prometheus first.
exec node --test "$@" tests/node/*.test.mjs
