#!/usr/bin/env bash
# The cost of connection-state recovery (D26): 1000 clients x 350 events/s, recovery off
# (FLUX_SOCKETIO__RECOVERY_WINDOW=0s) and on (the default window, 2m), interleaved passes in
# embedded mode (admin hook), after one discarded warm-up run. KAFKA=1 adds one off/on pair
# through Apache Kafka (--spawn-kafka, a broker per run). JOURNAL=1 adds one off/on pair of
# 10 clients x 350/s for 130 s: the journal filled to its 2-minute window (RSS).
# Builds nothing: run `cargo build --release --workspace --bins` first (flux-loadgen is a
# package of its own since issue 17).
# Writes results.jsonl and loadavg.log here (the report of each run on stdout); table.py turns
# results.jsonl into tables; frame.mjs captures one ticker message with and without the offset.
set -euo pipefail
cd "$(dirname "$0")/../.."
here=bench/2026-12-04-recovery
R="${CARGO_TARGET_DIR:-target}/release"
passes="${PASSES:-3}"
off=(--gateway-env FLUX_SOCKETIO__RECOVERY_WINDOW=0s)
run() { # label, args...
  local label=$1; shift
  echo "== $label $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$here/loadavg.log"
  "$R/flux-loadgen" --spawn "$R/flux-bff" --json "$here/results.jsonl" "$@"
}
load=(fanout --clients 1000 --rate 350 --duration 10)
"$R/flux-loadgen" --spawn "$R/flux-bff" "${load[@]}" >/dev/null
for pass in $(seq "$passes"); do
  run "pass $pass embedded off" "${off[@]}" "${load[@]}"
  run "pass $pass embedded on" "${load[@]}"
done
if [ "${KAFKA:-0}" = 1 ]; then
  run "kafka off" --spawn-kafka "${off[@]}" "${load[@]}"
  run "kafka on" --spawn-kafka "${load[@]}"
fi
if [ "${JOURNAL:-0}" = 1 ]; then
  run "journal off" "${off[@]}" fanout --clients 10 --rate 350 --duration 130
  run "journal on" fanout --clients 10 --rate 350 --duration 130
fi
echo "== end $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$here/loadavg.log"
