#!/usr/bin/env python3
"""Bar chart (SVG, no dependencies) of bench/block.sh results: left panel 4K random IOPS, right panel
4M sequential MiB/s, one bar per target in each job group, values printed on the bars.

usage: chart.py OUT/results.tsv OUT/targets.tsv OUT/chart.svg "subtitle"
"""
import csv
import math
import sys
from xml.sax.saxutils import escape

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


def nice_max(v):
    if not v or v != v or v <= 0:
        return 1.0
    e = 10 ** math.floor(math.log10(v))
    for m in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if m * e >= v * 1.08:
            return m * e
    return 10 * e


def fmt(v, metric):
    if v != v:
        return "n/a"
    if metric == "iops" and v >= 10000:
        return f"{v / 1000:.1f}k"
    return f"{v:.0f}" if v >= 10 else f"{v:.1f}"


W, H = 980, 470
PW, PH = 400, 300          # plot area of one panel
TOP, LEFT0, GAP = 80, 75, 90
out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
       'font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="12">',
       f'<rect width="{W}" height="{H}" fill="white"/>',
       f'<text x="20" y="48" fill="#444">{escape(subtitle)}</text>']
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
    x0 = LEFT0 + p * (PW + GAP)
    y0 = TOP + PH  # baseline
    vmax = nice_max(max([val(t, j, metric) for t, _ in present for j, _ in jobs
                         if val(t, j, metric) == val(t, j, metric)] or [0]))
    out.append(f'<text x="{x0 + PW / 2}" y="{TOP - 12}" text-anchor="middle" font-weight="bold">'
               f'{escape(title)}</text>')
    for k in range(6):  # grid and y ticks
        v = vmax * k / 5
        y = y0 - PH * k / 5
        out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x0 + PW}" y2="{y:.1f}" stroke="#e3e3e3"/>')
        tick = f"{v / 1000:g}k" if vmax >= 10000 else (f"{v:.0f}" if vmax >= 10 else f"{v:.1f}")
        out.append(f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#555">{tick}</text>')
    out.append(f'<line x1="{x0}" y1="{y0}" x2="{x0 + PW}" y2="{y0}" stroke="#333"/>')
    out.append(f'<line x1="{x0}" y1="{TOP}" x2="{x0}" y2="{y0}" stroke="#333"/>')
    gw = PW / len(jobs)
    n = max(1, len(present))
    bw = min(60, (gw - 30) / n)
    for g, (job, jl) in enumerate(jobs):
        gx = x0 + g * gw + (gw - bw * n) / 2
        for i, (t, _) in enumerate(present):
            v = val(t, job, metric)
            x = gx + i * bw
            if v != v:
                out.append(f'<text x="{x + bw / 2:.1f}" y="{y0 - 6}" text-anchor="middle" fill="#999" '
                           'font-size="10">n/a</text>')
                continue
            h = PH * v / vmax
            out.append(f'<rect x="{x + 2:.1f}" y="{y0 - h:.1f}" width="{bw - 4:.1f}" height="{h:.1f}" '
                       f'fill="{color[t]}"><title>{escape(t)} {job}: {fmt(v, metric)}</title></rect>')
            out.append(f'<text x="{x + bw / 2:.1f}" y="{y0 - h - 4:.1f}" text-anchor="middle" '
                       f'font-size="11">{fmt(v, metric)}</text>')
        out.append(f'<text x="{x0 + g * gw + gw / 2:.1f}" y="{y0 + 18}" text-anchor="middle">{escape(jl)}</text>')
lx = LEFT0
for t, l in present:  # legend
    out.append(f'<rect x="{lx}" y="{H - 40}" width="14" height="14" fill="{color[t]}"/>')
    out.append(f'<text x="{lx + 20}" y="{H - 28}">{escape(l)}</text>')
    lx += 30 + 7.2 * len(l)
out.append("</svg>")
open(out_svg, "w", encoding="utf-8").write("\n".join(out) + "\n")
