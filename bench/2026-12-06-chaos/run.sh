#!/usr/bin/env bash
# The 15-minute chaos soak (issue 19, README "Chaos soak"): tests/node/chaos/driver.mjs with the
# release build, several seeds one after the other (default three of 300 s), 8 clients each.
# Per seed: summary.json and timeline.json here, the console output in seed-<n>.txt; each
# replica's logs and raw.json stay in target/chaos/long-seed-<n>/. table.mjs prints the
# BENCHMARKS table from the summaries. Exits 1 if any seed found a violation (all seeds run).
#   SEEDS="11 12 13" SECONDS_PER_SEED=300 CLIENTS=8 bench/2026-12-06-chaos/run.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
here=bench/2026-12-06-chaos
seeds="${SEEDS:-11 12 13}"
per="${SECONDS_PER_SEED:-300}"
clients="${CLIENTS:-8}"
export FLUX_BFF_BIN="${FLUX_BFF_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/release/flux-bff}"
nice -n 10 cargo build --release --bin flux-bff || exit 2
bash scripts/kafka.sh fetch >/dev/null || exit 2
(cd tests/node && [ -d node_modules ] || npm ci --no-audit --no-fund --loglevel=error) || exit 2
failed=0
for seed in $seeds; do
  out="target/chaos/long-seed-$seed"
  echo "== seed $seed, $per s, $clients clients, $(date -u +%T), load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$here/loadavg.log"
  node tests/node/chaos/driver.mjs --seed "$seed" --duration "$per" --clients "$clients" --rss-limit 128 --out "$out" >"$here/seed-$seed.txt" 2>&1
  rc=$?
  [ "$rc" -eq 0 ] || failed=1
  cp "$out/summary.json" "$here/seed-$seed.summary.json" 2>/dev/null
  cp "$out/timeline.json" "$here/seed-$seed.timeline.json" 2>/dev/null
  echo "   exit $rc at $(date -u +%T), load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$here/loadavg.log"
  tail -n 24 "$here/seed-$seed.txt"
done
node "$here/table.mjs" "$here"/seed-*.summary.json
exit "$failed"
