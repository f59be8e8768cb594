#!/usr/bin/env bash
# Checks the operator artefacts of flux-bff (README, "Operating flux-bff"), installing what is
# missing; scripts/test.sh runs it, and it runs alone:
#   1. Helm v4.3.2 (built once from the Go module proxy into ~/.cache/flux-bff/bin):
#      `helm lint --strict` and `helm template` of deploy/helm/flux-bff, defaults and variants;
#   2. Debian's prometheus package (promtool): `promtool check rules`, `promtool test rules`
#      (deploy/prometheus/flux-bff.rules.test.yml), `promtool check config` of compose's config;
#   3. tests/node/ops (node --test): the chart's rendered invariants on the real binary,
#      compose.yaml's Prometheus and Grafana wiring, and the dashboard and rules against a real
#      Prometheus scraping two replicas on Apache Kafka under load.
# Environment: FLUX_HELM (a helm binary to use instead), FLUX_BFF_BIN (the binary to test; else
# cargo build), PROMETHEUS, FLUX_TEST_REDIS_SERVER. Extra arguments go to `node --test`.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

step() { printf '\n==> ops: %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }
fail() { echo "ops-check: $*" >&2; exit 1; }

HELM_VERSION=v4.3.2
cache="${XDG_CACHE_HOME:-$HOME/.cache}/flux-bff"
chart=deploy/helm/flux-bff

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi

apt_install() {
  # Installing a package that ships a service (prometheus) must not start it, and must not
  # fail where no init system runs (a container): a policy-rc.d that denies every start,
  # unless the machine already has one.
  local policy=/usr/sbin/policy-rc.d created=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# ops-check.sh: no service starts during this install\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod 755 "$policy"
    created=1
  fi
  local rc=0
  $sudo apt-get update -qq || rc=$?
  if [ "$rc" -eq 0 ]; then
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null || rc=$?
  fi
  if [ -n "$created" ]; then $sudo rm -f "$policy"; fi
  [ "$rc" -eq 0 ] || fail "apt-get install $* failed (exit $rc)"
}

# --- Helm -------------------------------------------------------------------------------------
helm="${FLUX_HELM:-$cache/bin/helm}"
# The module version a cached helm was built from (`helm version` says only "v4.3" for a
# `go install` build): Go reads it from the binary; without Go, the stamp written below.
built_version() {
  [ -x "$helm" ] || return 0
  if command -v go >/dev/null; then
    go version -m "$helm" 2>/dev/null | awk '$1 == "mod" && $2 == "helm.sh/helm/v4" { print $3 }'
  else
    cat "$cache/bin/.helm-version" 2>/dev/null || true
  fi
}
if [ -z "${FLUX_HELM:-}" ]; then
  have="$(built_version)"
  if [ "$have" != "$HELM_VERSION" ]; then
    command -v go >/dev/null ||
      fail "Helm $HELM_VERSION is built with Go (1.25 or newer), which is missing: install Go, or set FLUX_HELM to a helm binary"
    step "building Helm $HELM_VERSION from the Go module proxy into $cache/bin (a few minutes once, then cached)"
    mkdir -p "$cache/bin"
    GOBIN="$cache/bin" nice -n 10 go install "helm.sh/helm/v4/cmd/helm@$HELM_VERSION" &
    build=$!
    started=$SECONDS
    while kill -0 "$build" 2>/dev/null; do
      sleep 5
      if kill -0 "$build" 2>/dev/null && [ $(((SECONDS - started) % 30)) -lt 5 ]; then
        echo "  still building Helm ($((SECONDS - started)) s)"
      fi
    done
    wait "$build" || fail "go install helm.sh/helm/v4/cmd/helm@$HELM_VERSION failed (the Go module proxy must be reachable; GOPROXY=$(go env GOPROXY))"
    have="$(built_version)"
    [ "$have" = "$HELM_VERSION" ] || fail "the helm built in $cache/bin is $have, expected $HELM_VERSION"
    echo "$HELM_VERSION" >"$cache/bin/.helm-version"
  else
    echo "ops: helm $HELM_VERSION cached in $cache/bin"
  fi
fi
export FLUX_HELM="$helm"
step "helm ($helm): lint --strict and template of $chart"
variants=(
  ""
  "--set recovery.secret.asFile=true --set lifecycle.shutdownDeadlineSeconds=30"
  "--set recovery.secret.existingSecret=flux-recovery"
  "--set kafka.brokers={kafka-0:9092,kafka-1:9092} --set valkey.url=redis://valkey:6379 --set valkey.existingSecret=valkey"
  "--set serviceMonitor.enabled=true --set autoscaling.enabled=false --set topologySpread.zone=true"
)
for v in "${variants[@]}"; do
  # shellcheck disable=SC2086 # each variant is a list of arguments
  "$helm" lint --strict "$chart" $v >/tmp/ops-helm-lint.$$ 2>&1 || { cat /tmp/ops-helm-lint.$$; rm -f /tmp/ops-helm-lint.$$; fail "helm lint --strict $chart $v failed"; }
  # shellcheck disable=SC2086
  n="$("$helm" template flux "$chart" $v | grep -c '^kind:')"
  echo "  lint --strict ok, template renders $n objects: ${v:-(defaults)}"
done
rm -f /tmp/ops-helm-lint.$$

# --- promtool ---------------------------------------------------------------------------------
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  step "installing Debian's prometheus package (promtool and the server; its service is not started)"
  apt_install prometheus
fi
step "$(promtool --version 2>&1 | head -n 1): check and test the alert rules"
promtool check rules deploy/prometheus/flux-bff.rules.yml
promtool test rules deploy/prometheus/flux-bff.rules.test.yml
# compose's Prometheus config, with its rule file where the container mounts it.
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
sed "s#/etc/prometheus/rules/flux-bff.rules.yml#$repo/deploy/prometheus/flux-bff.rules.yml#" \
  deploy/prometheus/prometheus.compose.yml >"$tmp/prometheus.yml"
promtool check config "$tmp/prometheus.yml"

# --- what the Node tests need -----------------------------------------------------------------
command -v node >/dev/null || fail "node (>= 20) is required: apt-get install -y nodejs npm"
command -v redis-server >/dev/null || { step "installing redis-server (apt-get)"; apt_install redis-server; }
export FLUX_TEST_REDIS_SERVER="${FLUX_TEST_REDIS_SERVER:-$(command -v redis-server)}"
step "Apache Kafka broker jars (scripts/kafka.sh fetch; cached)"
bash scripts/kafka.sh fetch
if [ ! -f tests/node/node_modules/.package-lock.json ] ||
  [ tests/node/package-lock.json -nt tests/node/node_modules/.package-lock.json ]; then
  step "npm ci in tests/node"
  (cd tests/node && npm ci --no-audit --no-fund --loglevel=error)
fi
if [ -z "${FLUX_BFF_BIN:-}" ]; then
  step "cargo build --bin flux-bff (a no-op when up to date)"
  cargo build --bin flux-bff
  FLUX_BFF_BIN="${CARGO_TARGET_DIR:-$repo/target}/debug/flux-bff"
fi
export FLUX_BFF_BIN

step "tests/node/ops: chart invariants, compose wiring, dashboard and rules on a real Prometheus (about 1 min)"
node --test "$@" tests/node/ops/
