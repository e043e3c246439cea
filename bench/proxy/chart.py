#!/usr/bin/env python3
"""Bar chart (SVG, no dependencies) of bench/proxy.sh results: left panel proxy CPU per request,
right panel throughput, one bar per target in each payload-size group, values printed on the bars.

usage: chart.py OUT/chart.tsv OUT/overhead.svg "subtitle"
chart.tsv (written by summarize.py): target cpu_1k cpu_64k rps_1k rps_64k  (medians; NaN = none)
"""
import csv
import math
import sys
from xml.sax.saxutils import escape

tsv, out_svg = sys.argv[1:3]
subtitle = sys.argv[3] if len(sys.argv) > 3 else ""

rows = {r["target"]: r for r in csv.DictReader(open(tsv, encoding="utf-8"), delimiter="\t")}
targets = list(rows)  # file order
LABELS = {"direct": "direct", "sidecar": "Bulwark sidecar", "sidecar-all": "sidecar, all policies",
          "sidecar-b": "sidecar (B)", "haproxy": "HAProxy", "nginx": "nginx"}
COLORS = {"sidecar": "#1b62b3", "sidecar-all": "#6a9fd8", "haproxy": "#d95f02", "nginx": "#1b9e77",
          "direct": "#8c8c8c", "sidecar-b": "#7570b3"}
SPARE = ["#e7298a", "#66a61e", "#e6ab02", "#a6761d"]
color = {}
for t in targets:
    color[t] = COLORS.get(t) or SPARE[sum(1 for c in color if c not in COLORS) % len(SPARE)]
label = {t: LABELS.get(t, t) for t in targets}

GROUPS = [("1k", "1 KiB"), ("64k", "64 KiB")]
PANELS = [
    ("proxy CPU per request, µs (lower is better)", "cpu"),
    ("throughput, req/s (higher is better)", "rps"),
]


def val(t, metric, size):
    r = rows.get(t)
    try:
        v = float(r[f"{metric}_{size}"]) if r else math.nan
    except (ValueError, KeyError, TypeError):
        v = math.nan
    return v if math.isfinite(v) else math.nan


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
    if metric == "rps" and v >= 100000:
        return f"{v / 1000:.0f}k"
    if metric == "rps" and v >= 10000:
        return f"{v / 1000:.1f}k"
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}"


W, H = 1100, 470
PW, PH = 460, 300          # plot area of one panel
TOP, LEFT0, GAP = 80, 70, 95
out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
       'font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="12">',
       f'<rect width="{W}" height="{H}" fill="white"/>',
       f'<text x="20" y="48" fill="#444">{escape(subtitle)}</text>']
ratios = []
for size, short in GROUPS:
    s, h = val("sidecar", "cpu", size), val("haproxy", "cpu", size)
    if s == s and h == h and h > 0:
        ratios.append(f"{short} {s / h:.2f}×")
if ratios:
    out.append(f'<text x="{W - 20}" y="48" text-anchor="end" font-weight="bold" fill="#1b62b3">'
               f'sidecar / HAProxy CPU: {escape(", ".join(ratios))}</text>')
out.append('<text x="20" y="28" font-size="17" font-weight="bold">'
           'Sidecar proxy overhead (bench/proxy.sh, wrk saturation runs, medians)</text>')
for p, (title, metric) in enumerate(PANELS):
    x0 = LEFT0 + p * (PW + GAP)
    y0 = TOP + PH  # baseline
    # a target is drawn in a panel if it has a value there (direct has no proxy CPU)
    present = [t for t in targets if any(val(t, metric, s) == val(t, metric, s) for s, _ in GROUPS)]
    vmax = nice_max(max([val(t, metric, s) for t in present for s, _ in GROUPS
                         if val(t, metric, s) == val(t, metric, s)] or [0]))
    out.append(f'<text x="{x0 + PW / 2}" y="{TOP - 12}" text-anchor="middle" font-weight="bold">'
               f'{escape(title)}</text>')
    for k in range(6):  # grid and y ticks
        v = vmax * k / 5
        y = y0 - PH * k / 5
        out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x0 + PW}" y2="{y:.1f}" stroke="#e3e3e3"/>')
        tick = f"{v / 1000:g}k" if vmax >= 10000 and k else (f"{v:.0f}" if vmax >= 10 else f"{v:.1f}")
        out.append(f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#555">{tick}</text>')
    out.append(f'<line x1="{x0}" y1="{y0}" x2="{x0 + PW}" y2="{y0}" stroke="#333"/>')
    out.append(f'<line x1="{x0}" y1="{TOP}" x2="{x0}" y2="{y0}" stroke="#333"/>')
    gw = PW / len(GROUPS)
    n = max(1, len(present))
    bw = min(60, (gw - 30) / n)
    vfs = 11 if bw >= 36 else 10  # value font size: narrower bars, smaller numbers
    for g, (size, gl) in enumerate(GROUPS):
        gx = x0 + g * gw + (gw - bw * n) / 2
        for i, t in enumerate(present):
            v = val(t, metric, size)
            x = gx + i * bw
            if v != v:
                out.append(f'<text x="{x + bw / 2:.1f}" y="{y0 - 6}" text-anchor="middle" fill="#999" '
                           'font-size="10">n/a</text>')
                continue
            h = PH * v / vmax
            out.append(f'<rect x="{x + 2:.1f}" y="{y0 - h:.1f}" width="{bw - 4:.1f}" height="{h:.1f}" '
                       f'fill="{color[t]}"><title>{escape(label[t])} {gl}: {fmt(v, metric)}</title></rect>')
            out.append(f'<text x="{x + bw / 2:.1f}" y="{y0 - h - 4:.1f}" text-anchor="middle" '
                       f'font-size="{vfs}">{fmt(v, metric)}</text>')
        out.append(f'<text x="{x0 + g * gw + gw / 2:.1f}" y="{y0 + 18}" text-anchor="middle">{escape(gl)}</text>')
lx = LEFT0
for t in targets:  # legend
    out.append(f'<rect x="{lx}" y="{H - 40}" width="14" height="14" fill="{color[t]}"/>')
    out.append(f'<text x="{lx + 20}" y="{H - 28}">{escape(label[t])}</text>')
    lx += 30 + 7.2 * len(label[t])
out.append("</svg>")
open(out_svg, "w", encoding="utf-8").write("\n".join(out) + "\n")
