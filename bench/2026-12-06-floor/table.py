#!/usr/bin/env python3
"""Medians of bench/2026-12-06-floor/results.jsonl: the floor (no gateway) and the gateway.
For the floor: writes per delivery (below 1 when tasks wrote rounds they found waiting
together) and the worst lateness of a round; a writer whose lateness exceeds the period
between rounds could not keep the rate (marked)."""
import json, pathlib, statistics

rows = {}
for line in (pathlib.Path(__file__).parent / "results.jsonl").read_text().splitlines():
    r = json.loads(line)
    p = r["params"]
    load = (p["clients"], p["rate"])
    if r["scenario"] == "floor":
        writer = {"blocking": "one thread", "tokio": "one thread, tokio", "tasks": "a task per socket"}[p.get("writer", "blocking")]
        what = f"floor: {writer}, {p['per_write']} per write"
        period_ms = 1e3 * p["per_write"] / p["rate"]
        extra = (r["writes"] / r["deliveries"], r.get("late_ms", 0.0), r.get("late_ms", 0.0) > period_ms)
        rows.setdefault((load, what), []).append((r["writer_us_per_delivery"], extra))
    else:
        rows.setdefault((load, "gateway (fanout --deflate)"), []).append((r["gw_cpu_us_per_delivery"], None))
print("| clients × events/s | writer | runs | µs CPU per delivery (median) | each run | writes per delivery | worst lateness ms (each run) |")
print("|---|---|---:|---:|---|---:|---|")
for (load, what), v in sorted(rows.items()):
    us = [x for x, _ in v]
    each = ", ".join(f"{x:.2f}" for x in us)
    if v[0][1] is None:
        wpd, late = "", ""
    else:
        wpd = f"{statistics.median(e[0] for _, e in v):.2f}"
        late = ", ".join(f"{e[1]:.0f}" + (" (fell behind)" if e[2] else "") for _, e in v)
    print(f"| {load[0]} × {load[1]:g} | {what} | {len(v)} | {statistics.median(us):.2f} | {each} | {wpd} | {late} |")
