#!/usr/bin/env python3
"""Summary of bench/block.sh: reads OUT/runs.tsv (one row per measured fio run, with the CPU the
script sampled around it) and OUT/targets.tsv (what each target is and how it acknowledges a write),
parses each run's fio JSON, writes OUT/results.tsv (one row per target × job, every figure) and
prints markdown (side-by-side table, ratios taken in the same run, the issue's target) to stdout.

usage: summarize.py OUT
"""
import csv
import json
import os
import sys

OUT = sys.argv[1]
NAN = float("nan")
JOBS = [  # section, label, headline metric ("iops" for 4K, "mibs" for 4M)
    ("randwrite", "4K random write, QD16", "iops"),
    ("randread", "4K random read, QD16", "iops"),
    ("seqwrite", "4M sequential write, QD4", "mibs"),
    ("seqread", "4M sequential read, QD4", "mibs"),
]
CEPH, BULWARK, QEMU = "ceph", "bulwark", "qemu-nbd"


def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return NAN


def load_json(path):
    """fio may print warnings before the JSON object in --output; start at the first '{'."""
    text = open(path, encoding="utf-8", errors="replace").read()
    i = text.find("{")
    if i < 0:
        raise ValueError(f"{path}: no JSON object")
    return json.loads(text[i:])


def parse(path, job):
    d = load_json(path)
    if d.get("fallback"):  # rbd bench instead of fio (no latency figures)
        return {"iops": num(d["iops"]), "mibs": num(d["bw_bytes"]) / 2**20, "lat_mean_ms": NAN,
                "lat_p99_ms": NAN, "lat_max_ms": NAN, "ios": num(d.get("ops")), "errors": 0,
                "tool": d["fallback"]}
    j = d["jobs"][0]
    side = j["read" if "read" in job else "write"]
    clat = side.get("clat_ns", {})
    pct = clat.get("percentile", {}) or {}
    return {
        "iops": num(side.get("iops")),
        "mibs": num(side.get("bw_bytes")) / 2**20,
        "lat_mean_ms": num(clat.get("mean")) / 1e6,
        "lat_p99_ms": num(pct.get("99.000000")) / 1e6,
        "lat_max_ms": num(clat.get("max")) / 1e6,
        "ios": num(side.get("total_ios")),
        "errors": int(j.get("error", 0) or 0),
        "tool": "fio " + d.get("fio version", "").replace("fio-", ""),
    }


def f(v, fmt="{:.0f}", dash="–"):
    return dash if v != v else fmt.format(v)


def headline(v, metric):
    if v != v:
        return "–"
    if metric == "iops":
        return f"{v / 1000:.1f}k" if v >= 10000 else f"{v:.0f}"
    return f"{v:.0f}" if v >= 10 else f"{v:.1f}"


targets = []  # (name, label, ack)
with open(os.path.join(OUT, "targets.tsv"), encoding="utf-8") as fh:
    for r in csv.DictReader(fh, delimiter="\t"):
        targets.append((r["target"], r["label"], r["ack"]))
label = {t: l for t, l, _ in targets}

res = {}  # (target, job) -> row
with open(os.path.join(OUT, "runs.tsv"), encoding="utf-8") as fh:
    for r in csv.DictReader(fh, delimiter="\t"):
        t, job = r["target"], r["job"]
        try:
            m = parse(os.path.join(OUT, r["json"]), job)
        except (OSError, ValueError, KeyError, IndexError) as e:
            print(f"warning: {r['json']}: {e}", file=sys.stderr)
            continue
        wall = num(r["wall_s"])
        ops_s = m["iops"]
        srv, cli, busy = num(r["server_cpu_s"]), num(r["client_cpu_s"]), num(r["busy_cpu_s"])
        m.update({
            "target": t, "job": job, "wall_s": wall, "load1": r.get("load1", ""),
            # CPU per operation from CPU rates over the whole fio run (ramp included on both sides)
            "server_cpu_us_op": srv / wall / ops_s * 1e6 if wall > 0 and ops_s > 0 else NAN,
            "client_cpu_us_op": cli / wall / ops_s * 1e6 if wall > 0 and ops_s > 0 else NAN,
            # CPU the machine spent beyond fio and the target's processes (others' builds, kernel
            # threads), in % of the 2-core machine: a run with a high value was disturbed
            "other_cpu_pct": max(0.0, busy - srv - cli) / wall / (os.cpu_count() or 1) * 100
            if wall > 0 else NAN,
        })
        res[(t, job)] = m

cols = ["target", "job", "iops", "mibs", "lat_mean_ms", "lat_p99_ms", "lat_max_ms", "ios", "errors",
        "server_cpu_us_op", "client_cpu_us_op", "other_cpu_pct", "wall_s", "load1", "tool"]
with open(os.path.join(OUT, "results.tsv"), "w", encoding="utf-8") as fh:
    fh.write("\t".join(cols) + "\n")
    for (t, job), m in res.items():
        fh.write("\t".join(f(m[c], "{:.3f}") if isinstance(m[c], float) else str(m[c]) for c in cols) + "\n")

names = [t for t, _, _ in targets]
have_b = any(t == BULWARK for t, _ in res)
ratio_cols = [(BULWARK, o) for o in (CEPH, QEMU) if have_b and o in names]
if not have_b and CEPH in names and QEMU in names:
    ratio_cols = [(CEPH, QEMU)]

def ratio(a, b, job, metric):
    x, y = res.get((a, job)), res.get((b, job))
    if not x or not y or not y[metric] or y[metric] != y[metric]:
        return NAN
    return x[metric] / y[metric]


print("| job | " + " | ".join(label[t] for t in names) + "".join(
    f" | {label[a]} / {label[b]}" for a, b in ratio_cols) + " |")
print("|---|" + "---:|" * (len(names) + len(ratio_cols)))
for job, jl, metric in JOBS:
    if not any((t, job) in res for t in names):
        continue
    unit = "IOPS" if metric == "iops" else "MiB/s"
    cells = [headline(res[(t, job)][metric], metric) if (t, job) in res else "–" for t in names]
    cells += [f(ratio(a, b, job, metric), "{:.2f}×") for a, b in ratio_cols]
    print(f"| {jl} ({unit}) | " + " | ".join(cells) + " |")
print()
print("| job | target | IOPS | MiB/s | mean clat ms | p99 clat ms | max clat ms | server CPU µs/op "
      "| client CPU µs/op | other CPU % ¹ |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for job, jl, _ in JOBS:
    for t in names:
        m = res.get((t, job))
        if not m:
            continue
        err = f" **({m['errors']} errors)**" if m["errors"] else ""
        print(f"| {jl} | {label[t]}{err} | {f(m['iops'])} | {f(m['mibs'], '{:.1f}')} "
              f"| {f(m['lat_mean_ms'], '{:.2f}')} | {f(m['lat_p99_ms'], '{:.2f}')} "
              f"| {f(m['lat_max_ms'], '{:.1f}')} | {f(m['server_cpu_us_op'])} "
              f"| {f(m['client_cpu_us_op'])} | {f(m['other_cpu_pct'])} |")
print()
print("¹ CPU the machine spent outside fio and the target's processes during the run, in % of all "
      "cores: other users' work (a build) and kernel threads (block I/O completion, ext4 journal). "
      "A high value on a run means it was disturbed or that the target leans on the kernel.")
print()
for t, l, ack in targets:
    print(f"- **{l}**: {ack}")
tools = sorted({m["tool"] for m in res.values()})
if any("rbd bench" in x for x in tools):
    print("- Ceph was measured with `rbd bench`, not fio (CEPH_TOOL=rbd-bench, or this fio has no rbd engine): "
          "a fixed amount of I/O instead of a fixed time, and no latency figures.")
print()
if have_b and (BULWARK, "randwrite") in res and (CEPH, "randwrite") in res:
    for job in ("randwrite", "randread"):
        r = ratio(BULWARK, CEPH, job, "iops")
        if r == r:
            verdict = "**met**" if r >= 2 else "**not met**"
            print(f"Target (issue): Bulwark's replicated 4K {job[4:]} IOPS ≥ 2× Ceph's on this machine — "
                  f"{r:.2f}× → {verdict}.")
    short = [f"{jl} ({ratio(BULWARK, CEPH, job, metric):.2f}×)" for job, jl, metric in JOBS
             if ratio(BULWARK, CEPH, job, metric) < 1]
    if short:
        print()
        print("Bulwark is slower than Ceph on: " + "; ".join(short) + ".")
elif not have_b:
    print("Bulwark was not measured in this run (TARGETS without `bulwark`): no verdict on the "
          "issue's target (Bulwark's replicated IOPS ≥ 2× Ceph's).")
