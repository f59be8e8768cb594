#!/usr/bin/env bash
# Two gateway builds side by side: flux-loadgen fanout at CLIENTS x RATE (embedded), in
# interleaved A B B A passes of one series (these machines are noisy: a neighbour's load hits
# both alike), then a table of CPU per delivery, p99 and throughput per build.
#   A=path/to/flux-bff B=path/to/flux-bff LOADGEN=path/to/flux-loadgen OUT=bench/<dir> \
#   [LABEL_A=before LABEL_B=after PASSES=6 CLIENTS=1000 RATE=350] bench/ab-fanout.sh
# The same binary twice with different settings: ENV_A / ENV_B, KEY=VALUE words passed to it
# as --gateway-env (ENV_B=FLUX_SOCKETIO__COMPRESSION=false); LOADGEN_ARGS go before the
# scenario (LOADGEN_ARGS=--deflate: clients offer permessage-deflate; LOADGEN_ARGS=--spawn-kafka:
# through Apache Kafka). EXTRA is an older name of LOADGEN_ARGS.
# Writes OUT/results-<label>.jsonl and OUT/loadavg.log.
set -euo pipefail
: "${A:?a flux-bff binary}" "${B:?a flux-bff binary}" "${LOADGEN:?a flux-loadgen binary}"
: "${OUT:?the bench/<dir> to write into}"
la="${LABEL_A:-before}" lb="${LABEL_B:-after}" passes="${PASSES:-6}"
clients="${CLIENTS:-1000}" rate="${RATE:-350}"
read -r -a loadgen_args <<<"${LOADGEN_ARGS:-} ${EXTRA:-}"
env_args() { for kv in $1; do printf -- '--gateway-env\n%s\n' "$kv"; done; }
mapfile -t env_a < <(env_args "${ENV_A:-}")
mapfile -t env_b < <(env_args "${ENV_B:-}")
mkdir -p "$OUT"
run() { # label, binary, gateway env arguments…
  local label=$1 bin=$2
  shift 2
  echo "== $label $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/loadavg.log"
  "$LOADGEN" "${loadgen_args[@]}" --spawn "$bin" "$@" --json "$OUT/results-$label.jsonl" \
    fanout --clients "$clients" --rate "$rate" --duration 10
}
"$LOADGEN" "${loadgen_args[@]}" --spawn "$B" "${env_b[@]}" fanout --clients "$clients" --rate "$rate" --duration 3 >/dev/null # warm-up
for pass in $(seq "$passes"); do
  if [ $((pass % 2)) -eq 1 ]; then order="a b"; else order="b a"; fi
  for which in $order; do
    if [ "$which" = a ]; then run "$la" "$A" "${env_a[@]}"; else run "$lb" "$B" "${env_b[@]}"; fi
  done
done
python3 - "$OUT" "$la" "$lb" <<'PY'
import json, statistics, sys
out, la, lb = sys.argv[1:]
by = {l: [json.loads(x) for x in open(f"{out}/results-{l}.jsonl") if x.strip()] for l in (la, lb)}
print("| build | runs | gateway µs CPU/delivery (median) | each run | p99 ms (median) | p99 each run | delivered/s (median) | missing % (max) | bytes read per delivery (median) |")
print("|---|---:|---:|---|---:|---|---:|---:|---:|")
for label, rs in by.items():
    cpu = [r["gw_cpu_us_per_delivery"] for r in rs]
    print(f"| {label} | {len(rs)} | {statistics.median(cpu):.2f} | {', '.join(f'{c:.2f}' for c in cpu)} "
          f"| {statistics.median(r['latency']['p99_ms'] for r in rs):.1f} "
          f"| {', '.join(format(r['latency']['p99_ms'], '.0f') for r in rs)} "
          f"| {statistics.median(r['steady_deliveries_per_s'] for r in rs):,.0f} "
          f"| {max(r['missing_pct'] for r in rs):.2f} "
          f"| {statistics.median(r['client_read_bytes_per_delivery'] for r in rs):.1f} |")
a = statistics.median(r["gw_cpu_us_per_delivery"] for r in by[la])
b = statistics.median(r["gw_cpu_us_per_delivery"] for r in by[lb])
print(f"\n{lb} / {la}: {b / a:.3f} ({100 * (b / a - 1):+.1f} %)")
PY
