#!/usr/bin/env bash
# Where a delivery's CPU goes: flux-loadgen fanout against a spawned gateway; in the middle of
# the steady state, for WINDOW seconds, count the gateway's system calls and context switches
# with perf's tracepoints (counting only, no per-event trace: nearly free), and read its user
# and system CPU from /proc. Counts are divided by the deliveries offered in the window
# (CLIENTS x RATE x WINDOW; the run's report says whether they were all delivered).
#   GW=path/to/flux-bff LOADGEN=path/to/flux-loadgen CLIENTS=3000 RATE=100 OUT=file.txt \
#   [WINDOW=6 DELAY=8 KAFKA=1 STRACE=1 PERF_RECORD=file.data LOADGEN_ARGS=--deflate] bench/2026-12-06-cpu/profile.sh
set -euo pipefail
: "${GW:?}" "${LOADGEN:?}" "${CLIENTS:?}" "${RATE:?}" "${OUT:?}"
window="${WINDOW:-6}" delay="${DELAY:-8}"
kafka=(); [ -n "${KAFKA:-}" ] && kafka=(--spawn-kafka)
read -r -a extra <<<"${LOADGEN_ARGS:-}"
duration=$((delay + window + 4))
"$LOADGEN" "${kafka[@]}" "${extra[@]}" --spawn "$GW" --json "$OUT.jsonl" fanout --clients "$CLIENTS" --rate "$RATE" --duration "$duration" > "$OUT.loadgen" 2>&1 &
lg=$!
gw=""
for _ in $(seq 100); do
  gw=$(pgrep -P "$lg" -f "^$GW" | head -1 || true) # not the broker: its class path names flux-bff too
  [ -n "$gw" ] && break
  sleep 0.1
done
[ -n "$gw" ] || { echo "no gateway"; exit 1; }
# injection starts once every client has joined: wait for the loadgen's first deliveries
sleep "$delay"
cpu() { awk '{print $14, $15}' "/proc/$1/stat"; }
ctx() { cat /proc/$1/task/*/status | awk '/^voluntary_ctxt/{v+=$2} /^nonvoluntary_ctxt/{n+=$2} END{print v, n}'; }
read -r u0 s0 < <(cpu "$gw"); read -r v0 n0 < <(ctx "$gw")
lg_cpu0=$(cpu "$lg")
la=$(cut -d' ' -f1-3 /proc/loadavg)
if [ -n "${STRACE:-}" ]; then
  timeout -s INT "$window" strace -c -f -p "$gw" -o "$OUT.strace" || true
elif [ -n "${PERF_RECORD:-}" ]; then
  perf record -e cpu-clock -F 999 -g -p "$gw" -o "$PERF_RECORD" -- sleep "$window" 2> "$OUT.perf-record.log"
else
  ev=raw_syscalls:sys_enter
  for s in write writev sendto sendmsg read readv recvfrom recvmsg epoll_wait epoll_pwait epoll_pwait2 futex sched_yield io_uring_enter; do
    ev="$ev,syscalls:sys_enter_$s"
  done
  ev="$ev,sched:sched_switch,sched:sched_wakeup,sched:sched_waking"
  perf stat -x, -e "$ev" -p "$gw" -- sleep "$window" 2> "$OUT.perfstat"
fi
read -r u1 s1 < <(cpu "$gw"); read -r v1 n1 < <(ctx "$gw")
wait "$lg" || true
hz=$(getconf CLK_TCK)
deliveries=$((CLIENTS * RATE * window))
{
  echo "gateway $GW clients $CLIENTS rate $RATE window ${window}s kafka=${KAFKA:-0} load $la"
  python3 - "$u0" "$s0" "$u1" "$s1" "$hz" "$deliveries" "$v0" "$n0" "$v1" "$n1" "$window" <<'PY'
import sys
u0,s0,u1,s1,hz,d,v0,n0,v1,n1,w = map(float, sys.argv[1:])
us = lambda ticks: ticks / hz * 1e6 / d
print(f"user {us(u1-u0):.2f} µs/delivery, system {us(s1-s0):.2f} µs/delivery, "
      f"total {us(u1-u0+s1-s0):.2f} ({(u1-u0+s1-s0)/hz/w*100:.0f} % of a core)")
print(f"context switches per delivery: voluntary {(v1-v0)/d:.3f}, involuntary {(n1-n0)/d:.3f}")
PY
  if [ -f "$OUT.perfstat" ] && [ -z "${STRACE:-}" ] && [ -z "${PERF_RECORD:-}" ]; then
    awk -F, -v d="$deliveries" '$1 ~ /^[0-9]+$/ && $1 > 0 {printf "%-32s %10d  %.3f per delivery\n", $3, $1, $1/d}' "$OUT.perfstat"
  fi
  grep -E "^(delivered|latency|gateway CPU|missing)" "$OUT.loadgen" || true
} | tee "$OUT"
