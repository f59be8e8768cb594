#!/usr/bin/env bash
# Direct writes, embedded (admin-publish injection): three variants interleaved in each pass —
# the build before them (OLD), the build with them turned off
# (FLUX_SOCKETIO__DIRECT_WRITES_PER_SECOND=0) and on (the default) — flux-loadgen fanout
# --deflate at CLIENTS x RATE, 10 s per run. Writes OUT/results-{old,off,on}.jsonl and
# OUT/loadavg.log, then prints the medians.
#   OLD=path/to/flux-bff NEW=path/to/flux-bff LOADGEN=path/to/flux-loadgen OUT=dir \
#   CLIENTS=1000 RATE=50 [PASSES=3] bash bench/2026-12-07-direct/ab3.sh
set -euo pipefail
: "${OLD:?}" "${NEW:?}" "${LOADGEN:?}" "${OUT:?}" "${CLIENTS:?}" "${RATE:?}"
passes="${PASSES:-3}"
mkdir -p "$OUT"
for pass in $(seq "$passes"); do
  for v in old off on; do
    case $v in
      old) bin=$OLD env=() ;;
      off) bin=$NEW env=(--gateway-env FLUX_SOCKETIO__DIRECT_WRITES_PER_SECOND=0) ;;
      on) bin=$NEW env=() ;;
    esac
    echo "== $v pass $pass $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/loadavg.log"
    "$LOADGEN" --deflate --spawn "$bin" "${env[@]}" --json "$OUT/results-$v.jsonl" \
      fanout --clients "$CLIENTS" --rate "$RATE" --duration 10 >/dev/null
  done
done
python3 - "$OUT" <<'PY'
import json, statistics, sys
out = sys.argv[1]
for v in ("old", "off", "on"):
    rs = [json.loads(l) for l in open(f"{out}/results-{v}.jsonl") if l.strip()]
    cpu = [r["gw_cpu_us_per_delivery"] for r in rs]
    p99 = [r["latency"]["p99_ms"] for r in rs]
    lost = max(r["missing_pct"] for r in rs)
    print(f"{v:>4}: µs CPU/delivery {statistics.median(cpu):.2f} ({', '.join(f'{x:.2f}' for x in cpu)}) "
          f"p99 ms {statistics.median(p99):.1f} ({', '.join(f'{x:.0f}' for x in p99)}) missing % max {lost:.2f}")
PY
