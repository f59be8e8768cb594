#!/usr/bin/env python3
"""Instructions per delivery from two callgrind runs of callgrind.sh (OUT dir, SHORT, LONG)."""
import json, re, subprocess, sys
out, short, long_ = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "4", sys.argv[3] if len(sys.argv) > 3 else "14"
def load(d):
    r = json.loads(open(f"{out}/loadgen.{d}.jsonl").read().splitlines()[-1])
    txt = subprocess.run(["callgrind_annotate", "--auto=no", "--inclusive=no", "--threshold=100",
                          f"{out}/callgrind.{d}.out"], capture_output=True, text=True).stdout
    total = int(re.search(r"^([\d,]+) \(100.0%\)\s+PROGRAM TOTALS", txt, re.M).group(1).replace(",", ""))
    return r, total
(rs, ts), (rl, tl) = load(short), load(long_)
d = rl["received_deliveries"] - rs["received_deliveries"]
print(f"{out}: {(tl - ts) / d:.0f} instructions per delivery ({d} deliveries; missing {rs['missing_deliveries']}/{rl['missing_deliveries']})")
