#!/usr/bin/env bash
# The Kafka path against Apache Kafka 4.1 (scripts/kafka.sh), next to the embedded path, in
# one series: 1000 clients x 350 events/s and 3000 x 100/s, the gateway's default fetch max
# wait (200 ms) and 20 ms, interleaved passes. One broker for the series (a warm JVM, as in
# production), warmed by one discarded run. Writes results.jsonl and loadavg.log here.
set -euo pipefail
cd "$(dirname "$0")/../.."
here=bench/2026-12-04-kafka4
R="${CARGO_TARGET_DIR:-target}/release"
passes="${PASSES:-2}"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
dir=$(mktemp -d)
bash scripts/kafka.sh start "$dir" "$port"
trap 'bash scripts/kafka.sh stop "$dir"; rm -rf "$dir"' EXIT
k=(--kafka "127.0.0.1:$port")
pid=$(cat "$dir/broker.pid")
cpu_ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
run() { # label, args... The broker's CPU over the whole run (connections included) is logged.
  local label=$1; shift
  echo "== $label $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$here/loadavg.log"
  local t0 c0
  t0=$(date +%s.%N); c0=$(cpu_ticks)
  "$R/flux-loadgen" --spawn "$R/flux-bff" --json "$here/results.jsonl" "$@"
  echo "   broker CPU $(echo "$(cpu_ticks) $c0 $(date +%s.%N) $t0 $(getconf CLK_TCK)" | awk '{printf "%.1f", 100 * ($1 - $2) / $5 / ($3 - $4)}') % of a core over the run" | tee -a "$here/loadavg.log"
}
"$R/flux-loadgen" --spawn "$R/flux-bff" "${k[@]}" fanout --clients 1000 --rate 350 --duration 5 >/dev/null
for pass in $(seq "$passes"); do
  for load in "1000 350" "3000 100"; do
    set -- $load
    run "pass $pass embedded $1x$2" fanout --clients "$1" --rate "$2" --duration 10
    run "pass $pass kafka default $1x$2" "${k[@]}" fanout --clients "$1" --rate "$2" --duration 10
    run "pass $pass kafka 20ms $1x$2" "${k[@]}" --fetch-max-wait 20ms fanout --clients "$1" --rate "$2" --duration 10
  done
done
