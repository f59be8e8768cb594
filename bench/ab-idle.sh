#!/usr/bin/env bash
# Two gateway builds side by side: flux-loadgen idle --hydrate (memory per idle client that got
# the four snapshots on joining), in interleaved A B B A passes of one series.
#   A=path/to/flux-bff B=path/to/flux-bff LOADGEN=path/to/flux-loadgen OUT=bench/<dir> \
#   [LABEL_A=before LABEL_B=after PASSES=2 CLIENTS=15000 STEP=5000 IDLE_ARGS=--hydrate] bench/ab-idle.sh
# Writes OUT/idle-<label>.jsonl and OUT/loadavg.log, then a table of KB per client per step.
set -euo pipefail
: "${A:?a flux-bff binary}" "${B:?a flux-bff binary}" "${LOADGEN:?a flux-loadgen binary}"
: "${OUT:?the bench/<dir> to write into}"
la="${LABEL_A:-before}" lb="${LABEL_B:-after}" passes="${PASSES:-2}"
clients="${CLIENTS:-15000}" step="${STEP:-5000}" idle_args="${IDLE_ARGS:---hydrate}"
mkdir -p "$OUT"
run() { # label, binary
  echo "== idle $1 $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/loadavg.log"
  # shellcheck disable=SC2086
  "$LOADGEN" --spawn "$2" --json "$OUT/idle-$1.jsonl" idle --clients "$clients" --step "$step" $idle_args
}
for pass in $(seq "$passes"); do
  if [ $((pass % 2)) -eq 1 ]; then order="a b"; else order="b a"; fi
  for which in $order; do
    if [ "$which" = a ]; then run "$la" "$A"; else run "$lb" "$B"; fi
  done
done
python3 - "$OUT" "$la" "$lb" <<'PY'
import json, sys
out, la, lb = sys.argv[1:]
for label in (la, lb):
    for r in (json.loads(x) for x in open(f"{out}/idle-{label}.jsonl") if x.strip()):
        steps = " | ".join(f"{s['clients']}: {s['kb_per_client']:.1f}" for s in r["steps"][1:])
        print(f"| {label} | RSS idle {r['gw_rss_mb_idle']:.1f} MB | hydrated {r.get('hydrated', 0)} | KB per client at {steps} |")
PY
