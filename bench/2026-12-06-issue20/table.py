#!/usr/bin/env python3
"""The table of bench/2026-12-06-issue20/run.sh: per load and build, medians over the runs
(each run given), and each build's ratio to `before` at that load. The `coalesce` rows (a
1 ms ws_write_coalesce window, a setting since removed) are printed with --coalesce."""
import glob, json, os, statistics, sys

args = [a for a in sys.argv[1:] if a != "--coalesce"]
builds = ("before", "after", "coalesce") if "--coalesce" in sys.argv else ("before", "after")
here = args[0] if args else os.path.dirname(os.path.abspath(__file__))
rows = {}
for path in glob.glob(f"{here}/results-*.jsonl"):
    build, load = os.path.basename(path)[len("results-"):-len(".jsonl")].rsplit("-", 1)
    rows[(load, build)] = [json.loads(l) for l in open(path) if l.strip()]

def med(rs, f):
    return statistics.median(f(r) for r in rs)

print("| clients × events/s | build | runs | delivered/s | missing % (max) | p50 ms | p99 ms | p99 each run | µs CPU/delivery | each run | bytes read per delivery | CPU vs before |")
print("|---|---|---:|---:|---:|---:|---:|---|---:|---|---:|---:|")
loads = sorted({l for l, _ in rows}, key=lambda l: tuple(int(x) for x in l.split("x")))
for load in loads:
    base = rows.get((load, "before"))
    for build in builds:
        rs = rows.get((load, build))
        if not rs:
            continue
        cpu = med(rs, lambda r: r["gw_cpu_us_per_delivery"])
        ratio = "" if build == "before" or not base else \
            f"{100 * (cpu / med(base, lambda r: r['gw_cpu_us_per_delivery']) - 1):+.1f} %"
        print(f"| {load.replace('x', ' × ')} | {build} | {len(rs)} "
              f"| {med(rs, lambda r: r['steady_deliveries_per_s']):,.0f} "
              f"| {max(r['missing_pct'] for r in rs):.2f} "
              f"| {med(rs, lambda r: r['latency']['p50_ms']):.1f} "
              f"| {med(rs, lambda r: r['latency']['p99_ms']):.1f} "
              f"| {', '.join(format(r['latency']['p99_ms'], '.0f') for r in rs)} "
              f"| {cpu:.2f} | {', '.join(format(r['gw_cpu_us_per_delivery'], '.2f') for r in rs)} "
              f"| {med(rs, lambda r: r['client_read_bytes_per_delivery']):.1f} | {ratio} |")
