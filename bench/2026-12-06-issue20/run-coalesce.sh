#!/usr/bin/env bash
# socketio.ws_write_coalesce through Apache Kafka 4: the final gateway (AFTER) with the window
# off (its default) and at 5 ms and 20 ms, at 1000 x 50, 3000 x 100 and 3000 x 120 events/s,
# clients offering permessage-deflate; PASSES interleaved passes, the order turning. Writes
# coalesce/results-<window>-<C>x<R>.jsonl and coalesce/loadavg.log here. The setting was
# removed after these runs (commit 7928e71): AFTER must be a build of 04f925f or earlier.
#   AFTER=path/to/flux-bff LOADGEN=path/to/flux-loadgen [PASSES=2 WINDOWS="0s 5ms 20ms"
#   LOADS="1000x50 3000x100 3000x120"] bash bench/2026-12-06-issue20/run-coalesce.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
here=bench/2026-12-06-issue20/coalesce
mkdir -p "$here"
: "${AFTER:?the gateway}" "${LOADGEN:?flux-loadgen}"
passes="${PASSES:-2}"
source bench/kafka-series.sh # one broker for the series; sets k
run() { # window, clients, rate
  local window=$1 clients=$2 rate=$3
  echo "== $window ${clients}x$rate $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$here/loadavg.log"
  "$LOADGEN" "${k[@]}" --spawn "$AFTER" --gateway-env "FLUX_SOCKETIO__WS_WRITE_COALESCE=$window" \
    --json "$here/results-$window-${clients}x$rate.jsonl" \
    fanout --clients "$clients" --rate "$rate" --duration 10 | grep -E '^(latency|gateway CPU|missing)' || true
}
"$LOADGEN" "${k[@]}" --spawn "$AFTER" fanout --clients 1000 --rate 350 --duration 5 >/dev/null
for pass in $(seq "$passes"); do
  order="${WINDOWS:-0s 5ms 20ms}"
  if [ $((pass % 2)) -eq 0 ]; then order=$(echo "$order" | tr ' ' '\n' | tac | tr '\n' ' '); fi
  for load in ${LOADS:-1000x50 3000x100 3000x120}; do
    for window in $order; do run "$window" "${load%x*}" "${load#*x}"; done
  done
done
