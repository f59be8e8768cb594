#!/usr/bin/env bash
# Issue 10's connection storm: 3000 clients join one city (Pune, the tool's default) with the
# simulator on, as `cargo run --release` runs it, builds alternated. Each run starts a fresh
# gateway, runs `flux-loadgen connect`, then reads /metrics: weather commands sent, weather
# room emits and deliveries, slow-client disconnections.
#   bench/2026-12-04-storm/run.sh BEFORE_BIN AFTER_BIN [RUNS]
set -euo pipefail
cd "$(dirname "$0")/../.."
here=bench/2026-12-04-storm
before=$1 after=$2 runs=${3:-3}
LG="${CARGO_TARGET_DIR:-target}/release/flux-loadgen"
storm() { # label binary
  local label=$1 bin=$2 port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  FLUX_HTTP__HOST=127.0.0.1 FLUX_HTTP__PORT=$port FLUX_ADMIN__PUBLISH=true FLUX_LOG__LEVEL=error \
    FLUX_HTTP__MAX_CONNECTIONS_PER_CLIENT=0 "$bin" >/dev/null 2>&1 &
  local pid=$!
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
  echo "== $label $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
  "$LG" --json "$here/$label.jsonl" connect --addr "127.0.0.1:$port" --pid "$pid" \
    --clients 3000 --concurrency 200 | tail -n 3
  sleep 2
  curl -fs "http://127.0.0.1:$port/metrics" |
    grep -E '^flux_commands_produced_total\{[^}]*weather|^flux_room_emits_total\{[^}]*weather|^flux_slow_socket_disconnects_total|^flux_weather' |
    sed "s/^/   /" | tee -a "$here/$label.metrics"
  echo "---" >>"$here/$label.metrics"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}
for i in $(seq "$runs"); do
  storm before "$before"
  storm after "$after"
done
