#!/usr/bin/env bash
# Short benchmark smoke run so flux-loadgen cannot rot: builds the release binaries, runs
# fanout (200 clients, 2000 events/s, 5 s), connect (500 clients) and idle (1000 clients)
# against a spawned gateway in embedded mode, then fanout through Apache Kafka (a broker
# spawned by scripts/kafka.sh; 200 clients, 500 events/s, 5 s), then a short `hostile` run
# (every attack, small counts, 12 s), and prints the figures. It asserts nothing about the
# figures; it fails if the tool fails, if a fanout delivered nothing, or if the hostile run's
# observer lost its connection, got fewer than half the tickers or waited 2 s or more for one
# (issue 13's condition).
#
# Environment: CARGO_TARGET_DIR (default: target), BENCH_SMOKE_JSON (result file, default
# a temporary file), BENCH_SMOKE_PROFILE (release, the default, or dev to reuse a debug
# build, e.g. in CI right after the tests), BENCH_SMOKE_SKIP_BUILD=1 to reuse already built
# binaries as they are.
set -euo pipefail
cd "$(dirname "$0")/.."

target="${CARGO_TARGET_DIR:-target}"
profile="${BENCH_SMOKE_PROFILE:-release}"
case "$profile" in
  release) bin="$target/release" ;;
  dev) bin="$target/debug" ;;
  *) echo "bench-smoke: BENCH_SMOKE_PROFILE must be release or dev, got $profile" >&2; exit 2 ;;
esac
json="${BENCH_SMOKE_JSON:-$(mktemp -t flux-bench-smoke.XXXXXX.jsonl)}"
: > "$json"

if [[ "${BENCH_SMOKE_SKIP_BUILD:-0}" != 1 ]]; then
  # Two packages of the workspace: the gateway and the tool (tools/flux-loadgen).
  cargo build --profile "$profile" --locked --workspace --bin flux-bff --bin flux-loadgen
fi

lg=("$bin/flux-loadgen" --spawn "$bin/flux-bff" --json "$json")

echo "== bench-smoke: fanout =="
timeout 120 "${lg[@]}" fanout --clients 200 --rate 2000 --duration 5 --drain 3
echo "== bench-smoke: connect =="
timeout 120 "${lg[@]}" connect --clients 500 --concurrency 100
echo "== bench-smoke: idle =="
timeout 120 "${lg[@]}" idle --clients 1000 --step 500 --settle 1

echo "== bench-smoke: fanout through Apache Kafka =="
timeout 180 "${lg[@]}" --spawn-kafka --kafka-script scripts/kafka.sh \
  fanout --clients 200 --rate 500 --duration 5 --drain 3

echo "== bench-smoke: hostile =="
timeout 180 "${lg[@]}" hostile --half-open 300 --slowloris 100 --big-frames 2 --deep-json 5 \
  --flood-sockets 20 --flood-rate 1000 --stalled 10 --duration 12

# The checks: each fanout delivered something; the hostile run's observer was served.
hostile=$(grep -m1 '"scenario":"hostile"' "$json")
python3 - "$hostile" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
problems = []
if not r["observer_connected"]:
    problems.append("the observer lost its connection")
if r["observer_ticks"] * 2 < r["ticks_injected"]:
    problems.append(f"the observer got {r['observer_ticks']} of {r['ticks_injected']} tickers")
if r["observer_max_gap_ms"] >= 2000:
    problems.append(f"the observer waited {r['observer_max_gap_ms']:.0f} ms for a ticker")
if problems:
    sys.exit("bench-smoke: FAILED: hostile: " + "; ".join(problems))
print(f"bench-smoke: hostile: observer got {r['observer_ticks']} tickers, longest gap {r['observer_max_gap_ms']:.0f} ms, RSS peak {r['gw_rss_mb_peak']:.1f} MB")
PY

for injection in admin-publish kafka; do
  received=$(grep '"scenario":"fanout"' "$json" | grep "\"injection\":\"$injection\"" |
    grep -o '"received_deliveries":[0-9]*' | head -n1 | cut -d: -f2)
  if [[ -z "$received" || "$received" -eq 0 ]]; then
    echo "bench-smoke: FAILED: the fanout ($injection) delivered nothing (see the output above)" >&2
    exit 1
  fi
  echo "bench-smoke: fanout ($injection) delivered $received frames"
done
echo "bench-smoke: ok (results in $json)"
