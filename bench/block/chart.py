#!/usr/bin/env python3
"""Bar chart (SVG, no dependencies) of bench/block.sh results: left panel 4K random IOPS, right panel
4M sequential MiB/s, one bar per target in each job group, values printed on the bars.

usage: chart.py OUT/results.tsv OUT/targets.tsv OUT/chart.svg "subtitle"
"""
import csv
import math
import os
import sys
from xml.sax.saxutils import escape

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import svgbars  # noqa: E402

res_tsv, tgt_tsv, out_svg = sys.argv[1:4]
subtitle = sys.argv[4] if len(sys.argv) > 4 else ""

targets = [(r["target"], r["label"]) for r in csv.DictReader(open(tgt_tsv, encoding="utf-8"), delimiter="\t")]
rows = {(r["target"], r["job"]): r for r in csv.DictReader(open(res_tsv, encoding="utf-8"), delimiter="\t")}
COLORS = {"qemu-nbd": "#8c8c8c", "ceph": "#d95f02", "bulwark": "#1b62b3"}
SPARE = ["#7570b3", "#1b9e77", "#e7298a", "#66a61e"]
color = {}
for t, _ in targets:
    color[t] = COLORS.get(t) or SPARE[len(color) % len(SPARE)]

PANELS = [
    ("4K random, queue depth 16 — IOPS (higher is better)", "iops",
     [("randwrite", "random write"), ("randread", "random read")]),
    ("4M sequential, queue depth 4 — MiB/s (higher is better)", "mibs",
     [("seqwrite", "sequential write"), ("seqread", "sequential read")]),
]


def val(t, job, metric):
    r = rows.get((t, job))
    try:
        v = float(r[metric]) if r else math.nan
    except ValueError:
        v = math.nan
    return v


def fmt(v, metric):
    if v != v:
        return "n/a"
    if metric == "iops" and v >= 10000:
        return f"{v / 1000:.1f}k"
    return f"{v:.0f}" if v >= 10 else f"{v:.1f}"


W, H = 980, 470
PW, PH = 400, 300          # plot area of one panel
TOP, LEFT0, GAP = 80, 75, 90
chart = svgbars.Chart(W, H, PW, PH, TOP, LEFT0, GAP, subtitle)
out = chart.out
present = [(t, l) for t, l in targets if any((t, j) in rows for _, _, js in PANELS for j, _ in js)]
ratios = []
for job, short in (("randwrite", "4K rand write"), ("randread", "4K rand read")):
    b, c = val("bulwark", job, "iops"), val("ceph", job, "iops")
    if b == b and c == c and c > 0:
        ratios.append(f"{short} {b / c:.2f}×")
if ratios:
    out.append(f'<text x="{W - 20}" y="48" text-anchor="end" font-weight="bold" fill="#1b62b3">'
               f'Bulwark / Ceph: {escape(", ".join(ratios))}</text>')
out.append('<text x="20" y="28" font-size="17" font-weight="bold">Block service: '
           f'{escape(" vs ".join(l for _, l in present))} (fio, same job file)</text>')
for p, (title, metric, jobs) in enumerate(PANELS):
    chart.panel(p, title, jobs, [(t, color[t]) for t, _ in present],
                value=lambda t, job, metric=metric: val(t, job, metric),
                fmt=lambda v, metric=metric: fmt(v, metric),
                tip=lambda t, job, _jl: f"{t} {job}")
chart.legend([(color[t], l) for t, l in present])
chart.write(out_svg)
