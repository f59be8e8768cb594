#!/usr/bin/env bash
# Issue 20 through Apache Kafka 4 (scripts/kafka.sh): the gateway before the issue (BEFORE)
# and after it (AFTER: compression on, its default) — and, with BUILDS="before after coalesce",
# AFTER with a 1 ms write-coalescing window (FLUX_SOCKETIO__WS_WRITE_COALESCE=1ms: a build of
# 04f925f..7928e71, the setting is gone since) — at 1000 x 50, 1000 x 350, 3000 x 100
# and 3000 x 120 events/s. Clients offer permessage-deflate, as browsers do (--deflate). One
# broker for the series (a warm JVM), warmed by one discarded run; PASSES interleaved passes,
# the builds' order turning every pass. Writes results-<build>-<C>x<R>.jsonl and loadavg.log
# here; scripts/bench-table-issue20.py prints the table.
#   BEFORE=path/to/flux-bff AFTER=path/to/flux-bff LOADGEN=path/to/flux-loadgen [PASSES=3 OUT=dir] \
#   bash bench/2026-12-06-issue20/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
here="${OUT:-bench/2026-12-06-issue20}" # OUT: another directory for another series
mkdir -p "$here"
: "${BEFORE:?the gateway before}" "${AFTER:?the gateway after}" "${LOADGEN:?flux-loadgen}"
passes="${PASSES:-3}"
source bench/kafka-series.sh # one broker for the series; sets k
run() { # build, clients, rate
  local build=$1 clients=$2 rate=$3 bin env=()
  case $build in
    before) bin=$BEFORE ;;
    after) bin=$AFTER ;;
    coalesce) bin=$AFTER env=(--gateway-env FLUX_SOCKETIO__WS_WRITE_COALESCE=1ms) ;;
  esac
  echo "== $build ${clients}x$rate $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$here/loadavg.log"
  "$LOADGEN" "${k[@]}" --spawn "$bin" "${env[@]}" --json "$here/results-$build-${clients}x$rate.jsonl" \
    fanout --clients "$clients" --rate "$rate" --duration 10 | grep -E '^(latency|gateway CPU|missing)' || true
}
"$LOADGEN" "${k[@]}" --spawn "$AFTER" fanout --clients 1000 --rate 350 --duration 5 >/dev/null
read -r -a builds <<<"${BUILDS:-before after}"
for pass in $(seq "$passes"); do
  # The builds' order turns every pass: a neighbour's load does not always hit the same one.
  shift_by=$(( (pass - 1) % ${#builds[@]} ))
  order="${builds[*]:shift_by} ${builds[*]:0:shift_by}"
  for load in "1000 50" "1000 350" "3000 100" "3000 120"; do
    for build in $order; do run "$build" $load; done
  done
done
