#!/usr/bin/env bash
# Direct writes at a low rate through Apache Kafka, where the runs spread most: BEFORE and
# AFTER (the same build with direct writes off and on works too: AFTER_ENV=KEY=VALUE) at
# CLIENTS x RATE (1000 x 50), PASSES interleaved passes (the order turning every pass), one
# broker for the series. Writes OUT/results-{before,after}.jsonl and OUT/loadavg.log, then
# the medians and the pairs of each pass.
#   BEFORE=path/to/flux-bff AFTER=path/to/flux-bff LOADGEN=path/to/flux-loadgen OUT=dir \
#   [CLIENTS=1000 RATE=50 PASSES=6 BEFORE_ENV= AFTER_ENV=] bash bench/2026-12-07-direct/kafka-low-rate.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${BEFORE:?}" "${AFTER:?}" "${LOADGEN:?}" "${OUT:?}"
clients="${CLIENTS:-1000}" rate="${RATE:-50}" passes="${PASSES:-6}"
mkdir -p "$OUT"
source bench/kafka-series.sh # one broker for the series; sets k
run() { # build
  local bin env=()
  if [ "$1" = before ]; then bin=$BEFORE; [ -n "${BEFORE_ENV:-}" ] && env=(--gateway-env "$BEFORE_ENV")
  else bin=$AFTER; [ -n "${AFTER_ENV:-}" ] && env=(--gateway-env "$AFTER_ENV"); fi
  echo "== $1 $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/loadavg.log"
  "$LOADGEN" "${k[@]}" --spawn "$bin" "${env[@]}" --json "$OUT/results-$1.jsonl" \
    fanout --clients "$clients" --rate "$rate" --duration 10 | grep -E '^gateway CPU' || true
}
"$LOADGEN" "${k[@]}" --spawn "$AFTER" fanout --clients "$clients" --rate "$rate" --duration 3 >/dev/null # warm-up
for pass in $(seq "$passes"); do
  if [ $((pass % 2)) -eq 1 ]; then run before; run after; else run after; run before; fi
done
python3 - "$OUT" <<'PY'
import json, statistics, sys
out = sys.argv[1]
by = {b: [json.loads(l) for l in open(f"{out}/results-{b}.jsonl") if l.strip()] for b in ("before", "after")}
cpu = {b: [r["gw_cpu_us_per_delivery"] for r in rs] for b, rs in by.items()}
for b in by:
    p99 = [r["latency"]["p99_ms"] for r in by[b]]
    print(f"{b:>6}: µs CPU/delivery median {statistics.median(cpu[b]):.2f} ({', '.join(f'{c:.2f}' for c in cpu[b])}); p99 median {statistics.median(p99):.1f} ms")
lower = sum(a < b for a, b in zip(cpu["after"], cpu["before"]))
ratio = statistics.median(cpu["after"]) / statistics.median(cpu["before"])
print(f"after / before: {ratio:.3f} ({100 * (ratio - 1):+.1f} %); after lower in {lower} of {len(cpu['after'])} passes")
PY
