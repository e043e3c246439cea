#!/usr/bin/env python3
"""One TSV row from an oha JSON report (fixed-rate run): achieved rate, latency percentiles in µs
(oha --latency-correction measures from each request's scheduled start), success rate, and the
proxy's CPU per request (utime+stime ticks delta passed in by bench/proxy.sh)."""
import json
import sys

f, layout, rep, size, target, rate, dticks, hz, hwm = sys.argv[1:]
try:
    j = json.load(open(f))
    s, p = j["summary"], j["latencyPercentiles"]
except Exception as e:  # a failed run still gets a row, so the table shows it
    print(f"{layout}\t{rep}\t{size}\t{target}\t{rate}\tERR\tNA\tNA\tNA\tNA\t0\tNA\t{hwm}")
    print(f"oha report {f}: {e}", file=sys.stderr)
    sys.exit()
us = lambda k: f"{p[k] * 1e6:.0f}" if p.get(k) is not None else "NA"
n = sum(j.get("statusCodeDistribution", {}).values())
if not n:
    n = s["requestsPerSec"] * s["total"]
cpu = f"{int(dticks) / int(hz) * 1e6 / n:.2f}" if target != "direct" and n else "NA"
print(f"{layout}\t{rep}\t{size}\t{target}\t{rate}\t{s['requestsPerSec']:.0f}\t{us('p50')}\t{us('p90')}"
      f"\t{us('p99')}\t{us('p99.9')}\t{s['successRate']:.4f}\t{cpu}\t{hwm}")
