#!/usr/bin/env bash
# Instructions per delivery in the gateway's user space, counted by callgrind (immune to the
# machine's load): the gateway runs under valgrind, flux-loadgen drives CLIENTS x RATE for a
# SHORT and a LONG run, and the difference of the two (instructions, deliveries) cancels
# start-up and connections. Prints instructions per delivery, total and by top functions.
#   GW=path/to/flux-bff LOADGEN=path/to/flux-loadgen OUT=dir [CLIENTS=200 RATE=5 SHORT=4 LONG=14]
set -euo pipefail
: "${GW:?}" "${LOADGEN:?}" "${OUT:?}"
clients="${CLIENTS:-200}" rate="${RATE:-5}"
mkdir -p "$OUT"
one() { # duration
  local port=$((20000 + RANDOM % 20000))
  FLUX_ADMIN__PUBLISH=true FLUX_SIM__ENABLED=false RUST_LOG=warn FLUX_HTTP__PORT=$port \
    FLUX_HTTP__HOST=127.0.0.1 valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.$1.out" \
    "$GW" > "$OUT/gw.$1.log" 2>&1 &
  local vg=$!
  for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
    sleep 0.2
  done
  callgrind_control -z "$vg" >/dev/null 2>&1 # start-up (clock calibration) not counted
  "$LOADGEN" --addr "127.0.0.1:$port" --pid "$vg" --json "$OUT/loadgen.$1.jsonl" \
    fanout --clients "$clients" --rate "$rate" --duration "$1" > "$OUT/loadgen.$1.txt" 2>&1
  kill -TERM "$vg"
  wait "$vg" || true
}
short="${SHORT:-4}" long="${LONG:-14}"
one "$short"
one "$long"
python3 - "$OUT" "$short" "$long" <<'PY'
import json, re, subprocess, sys
out, short, long_ = sys.argv[1:]
def load(d):
    r = json.loads(open(f"{out}/loadgen.{d}.jsonl").read().splitlines()[-1])
    txt = subprocess.run(["callgrind_annotate", "--auto=no", "--inclusive=no", "--threshold=100", f"{out}/callgrind.{d}.out"],
                         capture_output=True, text=True).stdout
    total = int(re.search(r"^([\d,]+) \(100.0%\)\s+PROGRAM TOTALS", txt, re.M).group(1).replace(",", ""))
    fns = {}
    for m in re.finditer(r"^\s*([\d,]+) \([\s\d.]+%\)\s+(\S.*?)(?: \[.*\])?$", txt, re.M):
        name = m.group(2)
        if "PROGRAM TOTALS" in name: continue
        fns[name] = fns.get(name, 0) + int(m.group(1).replace(",", ""))
    return r, total, fns
rs, ts, fs = load(short); rl, tl, fl = load(long_)
d = rl["received_deliveries"] - rs["received_deliveries"]
print(f"deliveries {rs['received_deliveries']} / {rl['received_deliveries']} (missing {rs['missing_deliveries']} / {rl['missing_deliveries']})")
print(f"instructions per delivery: {(tl - ts) / d:.0f}")
diff = {k: fl.get(k, 0) - fs.get(k, 0) for k in fl}
for k, v in sorted(diff.items(), key=lambda kv: -kv[1])[:40]:
    print(f"{v / d:9.0f}  {k[:150]}")
PY
