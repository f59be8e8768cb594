#!/usr/bin/env bash
# Two gateway builds side by side: flux-loadgen fanout at CLIENTS x RATE (embedded), in
# interleaved A B B A passes of one series (these machines are noisy: a neighbour's load hits
# both alike), then a table of CPU per delivery, p99 and throughput per build.
#   A=path/to/flux-bff B=path/to/flux-bff LOADGEN=path/to/flux-loadgen OUT=bench/<dir> \
#   [LABEL_A=before LABEL_B=after PASSES=6 CLIENTS=1000 RATE=350 EXTRA=--spawn-kafka] bench/ab-fanout.sh
# (EXTRA: flux-loadgen options for every run, e.g. --spawn-kafka to go through Apache Kafka.)
# Writes OUT/results-<label>.jsonl and OUT/loadavg.log.
set -euo pipefail
: "${A:?a flux-bff binary}" "${B:?a flux-bff binary}" "${LOADGEN:?a flux-loadgen binary}"
: "${OUT:?the bench/<dir> to write into}"
la="${LABEL_A:-before}" lb="${LABEL_B:-after}" passes="${PASSES:-6}"
clients="${CLIENTS:-1000}" rate="${RATE:-350}"
mkdir -p "$OUT"
run() { # label, binary
  echo "== $1 $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/loadavg.log"
  # shellcheck disable=SC2086 # EXTRA is a list of options
  "$LOADGEN" ${EXTRA:-} --spawn "$2" --json "$OUT/results-$1.jsonl" fanout --clients "$clients" --rate "$rate" --duration 10
}
# shellcheck disable=SC2086
"$LOADGEN" ${EXTRA:-} --spawn "$B" fanout --clients "$clients" --rate "$rate" --duration 3 >/dev/null # warm-up
for pass in $(seq "$passes"); do
  if [ $((pass % 2)) -eq 1 ]; then order="a b"; else order="b a"; fi
  for which in $order; do
    if [ "$which" = a ]; then run "$la" "$A"; else run "$lb" "$B"; fi
  done
done
python3 - "$OUT" "$la" "$lb" <<'PY'
import json, statistics, sys
out, la, lb = sys.argv[1:]
by = {l: [json.loads(x) for x in open(f"{out}/results-{l}.jsonl") if x.strip()] for l in (la, lb)}
print("| build | runs | gateway µs CPU/delivery (median) | each run | p99 ms (median) | p99 each run | delivered/s (median) | missing % (max) |")
print("|---|---:|---:|---|---:|---|---:|---:|")
for label, rs in by.items():
    cpu = [r["gw_cpu_us_per_delivery"] for r in rs]
    print(f"| {label} | {len(rs)} | {statistics.median(cpu):.2f} | {', '.join(f'{c:.2f}' for c in cpu)} "
          f"| {statistics.median(r['latency']['p99_ms'] for r in rs):.1f} "
          f"| {', '.join(format(r['latency']['p99_ms'], '.0f') for r in rs)} "
          f"| {statistics.median(r['steady_deliveries_per_s'] for r in rs):,.0f} "
          f"| {max(r['missing_pct'] for r in rs):.2f} |")
a = statistics.median(r["gw_cpu_us_per_delivery"] for r in by[la])
b = statistics.median(r["gw_cpu_us_per_delivery"] for r in by[lb])
print(f"\n{lb} / {la}: {b / a:.3f} ({100 * (b / a - 1):+.1f} %)")
PY
