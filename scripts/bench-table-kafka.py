#!/usr/bin/env python3
"""Markdown table of flux-loadgen fanout/slow results of the Kafka path (--kafka / --spawn-kafka).

Runs with the same fetch max wait, scenario, clients and rate are grouped; each cell is the
median over the group, and the p99 columns also list every run's p99. "broker alone" is the
probe consumer (fetch time - lg_ts with the same max wait, no gateway); "gateway share" is the
client p50 minus the broker-alone p50 of the same run (median over runs).
Usage: scripts/bench-table-kafka.py results.jsonl [more.jsonl ...]
"""
import collections
import json
import statistics
import sys

rows = [json.loads(line) for path in sys.argv[1:] for line in open(path) if line.strip()]
groups = collections.OrderedDict()
for r in rows:
    if r["scenario"] not in ("fanout", "slow") or r.get("injection") != "kafka":
        continue
    p = r["params"]
    key = (r.get("kafka_fetch_max_wait") or "default", r["scenario"], p["clients"], p["rate"],
           r.get("slow_share", 0))
    groups.setdefault(key, []).append(r)


def probe(r, field):
    return (r.get("kafka_probe") or {}).get(field, float("nan"))


print("| fetch max wait | clients | events/s | delivered/s (steady) | missing | p50 ms | p90 ms "
      "| p99 ms | max ms | broker alone p50 / p99 ms | gateway share of p50 ms "
      "| produce per tick p99 ms | gateway CPU % | gateway µs CPU/delivery | broker CPU % "
      "| loadgen CPU % | runs |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
for (wait, scenario, clients, rate, share), rs in groups.items():
    def med(f):
        return statistics.median(f(r) for r in rs)
    p99s = ", ".join(f"{x:.0f}" for x in sorted(r["latency"]["p99_ms"] for r in rs))
    name = "" if scenario == "fanout" else f" (slow {share:g})"
    print(f"| {wait} | {clients}{name} | {rate:.0f} | {med(lambda r: r['steady_deliveries_per_s']):,.0f} "
          f"| {med(lambda r: r['missing_deliveries']):.0f} "
          f"| {med(lambda r: r['latency']['p50_ms']):.1f} | {med(lambda r: r['latency']['p90_ms']):.1f} "
          f"| {med(lambda r: r['latency']['p99_ms']):.1f} ({p99s}) | {med(lambda r: r['latency']['max_ms']):.0f} "
          f"| {med(lambda r: probe(r, 'p50_ms')):.1f} / {med(lambda r: probe(r, 'p99_ms')):.1f} "
          f"| {med(lambda r: r['latency']['p50_ms'] - probe(r, 'p50_ms')):.1f} "
          f"| {med(lambda r: r['inject_request']['p99_ms']):.1f} "
          f"| {med(lambda r: r['gw_cpu_pct_avg']):.0f} | {med(lambda r: r['gw_cpu_us_per_delivery']):.2f} "
          f"| {med(lambda r: r.get('broker_cpu_pct_avg') or 0):.0f} | {med(lambda r: r['lg_cpu_pct_avg']):.0f} "
          f"| {len(rs)} |")
