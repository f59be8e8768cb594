#!/usr/bin/env python3
"""Markdown table of flux-loadgen fanout/slow results (the JSON lines written by --json).

Runs with the same scenario, clients, rate, duration and slow share are grouped; each cell is
the median over the group, and the p99 column also lists every run's p99.
Usage: scripts/bench-table.py results.jsonl [more.jsonl ...]
"""
import collections
import json
import statistics
import sys

rows = [json.loads(line) for path in sys.argv[1:] for line in open(path) if line.strip()]
groups = collections.OrderedDict()
for r in rows:
    if r["scenario"] not in ("fanout", "slow"):
        continue
    p = r["params"]
    key = (r["scenario"], p["clients"], p["rate"], p["duration"], r.get("slow_share", 0))
    groups.setdefault(key, []).append(r)

print("| scenario | clients | events/s | offered deliveries/s | delivered/s (steady) | p50 ms | p90 ms "
      "| p99 ms | p99.9 ms | max ms | missing | late | gateway CPU % | gateway µs CPU/delivery "
      "| gateway RSS max MB | loadgen CPU % | runs |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for (scenario, clients, rate, _duration, share), rs in groups.items():
    def med(f):
        return statistics.median(f(r) for r in rs)
    p99s = ", ".join(f"{x:.0f}" for x in sorted(r["latency"]["p99_ms"] for r in rs))
    name = scenario if scenario == "fanout" else f"slow {share:g}"
    print(f"| {name} | {clients} | {rate:.0f} | {med(lambda r: r['offered_deliveries_per_s']):,.0f} "
          f"| {med(lambda r: r['steady_deliveries_per_s']):,.0f} | {med(lambda r: r['latency']['p50_ms']):.1f} "
          f"| {med(lambda r: r['latency']['p90_ms']):.1f} | {med(lambda r: r['latency']['p99_ms']):.1f} ({p99s}) "
          f"| {med(lambda r: r['latency']['p999_ms']):.1f} | {med(lambda r: r['latency']['max_ms']):.0f} "
          f"| {med(lambda r: r['missing_deliveries']):.0f} | {med(lambda r: r['late_deliveries']):.0f} "
          f"| {med(lambda r: r['gw_cpu_pct_avg']):.0f} | {med(lambda r: r['gw_cpu_us_per_delivery']):.2f} "
          f"| {med(lambda r: r['gw_rss_mb_max']):.0f} | {med(lambda r: r['lg_cpu_pct_avg']):.0f} | {len(rs)} |")
