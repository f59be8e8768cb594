#!/usr/bin/env bash
# The floor under a delivery: `flux-loadgen floor` (no gateway; one thread writes a 353-byte
# frame to every socket, 1, 2 or 3 events' frames per write; then `--writer tasks`, a task per
# socket woken for every event, the gateway's shape) against the gateway's `fanout`
# (embedded, clients offering permessage-deflate: 353-byte frames too) at 1000 x 50 and
# 3000 x 100 events/s; PASSES interleaved passes. Writes results.jsonl and loadavg.log here;
# table.py prints the medians.
#   GW=path/to/flux-bff LOADGEN=path/to/flux-loadgen [PASSES=3 DURATION=10] bash bench/2026-12-06-floor/run.sh
set -euo pipefail
cd "$(dirname "$0")"
: "${GW:?the gateway}" "${LOADGEN:?flux-loadgen}"
passes="${PASSES:-3}" duration="${DURATION:-10}"
for pass in $(seq "$passes"); do
  for load in 1000x50 3000x100; do
    c=${load%x*} r=${load#*x}
    echo "== pass $pass $load $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a loadavg.log
    for pw in 1 2 3; do
      "$LOADGEN" --json results.jsonl floor --clients "$c" --rate "$r" --per-write "$pw" --duration "$duration" | grep -E '^writer' | sed "s/^/floor x$pw: /"
    done
    "$LOADGEN" --json results.jsonl floor --writer tasks --clients "$c" --rate "$r" --duration "$duration" | grep -E '^writer' | sed "s/^/floor tasks: /"
    "$LOADGEN" --deflate --spawn "$GW" --json results.jsonl fanout --clients "$c" --rate "$r" --duration "$duration" | grep -E '^gateway CPU' | sed 's/^/gateway: /'
  done
done
