#!/usr/bin/env python3
"""Markdown tables of run.sh's results.jsonl: every run in order, then the median per
(injection, clients, rate, recovery). Recovery is "off" when the gateway ran with
FLUX_SOCKETIO__RECOVERY_WINDOW=0s (field gateway_env), else "on" (the default window).
Usage: bench/2026-12-04-recovery/table.py bench/2026-12-04-recovery/results.jsonl
"""
import collections
import json
import statistics
import sys

rows = [json.loads(line) for path in sys.argv[1:] for line in open(path) if line.strip()]
rows = [r for r in rows if r["scenario"] == "fanout"]


def recovery(r):
    env = r.get("gateway_env") or []
    return "off" if "FLUX_SOCKETIO__RECOVERY_WINDOW=0s" in env else "on"


COLS = [
    ("B/delivery read by clients", lambda r: r.get("client_read_bytes_per_delivery", float("nan")), "{:.1f}"),
    ("µs CPU/delivery", lambda r: r["gw_cpu_us_per_delivery"], "{:.2f}"),
    ("gateway CPU %", lambda r: r["gw_cpu_pct_avg"], "{:.0f}"),
    ("p50 ms", lambda r: r["latency"]["p50_ms"], "{:.2f}"),
    ("p99 ms", lambda r: r["latency"]["p99_ms"], "{:.2f}"),
    ("max ms", lambda r: r["latency"]["max_ms"], "{:.1f}"),
    ("RSS max MB", lambda r: r["gw_rss_mb_max"], "{:.1f}"),
    ("delivered/s (steady)", lambda r: r["steady_deliveries_per_s"], "{:,.0f}"),
    ("missing", lambda r: r["missing_deliveries"], "{:.0f}"),
    ("loadgen CPU %", lambda r: r["lg_cpu_pct_avg"], "{:.0f}"),
]


def header(first):
    print("| " + " | ".join(first + [c[0] for c in COLS]) + " |")
    print("|" + "---|" * len(first) + "---:|" * len(COLS))


def key(r):
    p = r["params"]
    return (r["injection"], p["clients"], p["rate"], p["duration"], recovery(r))


print("Every run, in order:\n")
header(["injection", "clients x events/s, s", "recovery"])
for r in rows:
    inj, c, rate, d, rec = key(r)
    cells = [fmt.format(f(r)) for _, f, fmt in COLS]
    print(f"| {inj} | {c} x {rate:g}, {d:g} | {rec} | " + " | ".join(cells) + " |")

groups = collections.OrderedDict()
for r in rows:
    groups.setdefault(key(r), []).append(r)
print("\nMedian per setting:\n")
header(["injection", "clients x events/s, s", "recovery", "runs"])
for (inj, c, rate, d, rec), rs in sorted(groups.items(), key=lambda kv: kv[0]):
    cells = [fmt.format(statistics.median(f(r) for r in rs)) for _, f, fmt in COLS]
    print(f"| {inj} | {c} x {rate:g}, {d:g} | {rec} | {len(rs)} | " + " | ".join(cells) + " |")
