#!/usr/bin/env python3
"""Medians of bench/2026-12-06-floor/results.jsonl: the floor (no gateway) and the gateway."""
import json, pathlib, statistics

rows = {}
for line in (pathlib.Path(__file__).parent / "results.jsonl").read_text().splitlines():
    r = json.loads(line)
    p = r["params"]
    load = f'{p["clients"]} x {p["rate"]:g}'
    if r["scenario"] == "floor":
        writer = {"blocking": "one thread", "tokio": "one thread, tokio", "tasks": "a task per socket"}[p.get("writer", "blocking")]
        key, us = (load, f'floor: {writer}, {p["per_write"]} per write'), r["writer_us_per_delivery"]
    else:
        key, us = (load, "gateway (fanout --deflate)"), r["gw_cpu_us_per_delivery"]
    rows.setdefault(key, []).append(us)
print("| clients × events/s | writer | runs | µs CPU per delivery (median) | each run |")
print("|---|---|---:|---:|---|")
for (load, what), v in sorted(rows.items(), key=lambda kv: (tuple(float(x) for x in kv[0][0].split(" x ")), kv[0][1])):
    print(f"| {load} | {what} | {len(v)} | {statistics.median(v):.2f} | {', '.join(f'{x:.2f}' for x in v)} |")
