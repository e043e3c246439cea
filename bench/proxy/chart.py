#!/usr/bin/env python3
"""Bar chart (SVG, no dependencies) of bench/proxy.sh results: left panel proxy CPU per request,
right panel throughput, one bar per target in each payload-size group, values printed on the bars.

usage: chart.py OUT/chart.tsv OUT/overhead.svg "subtitle"
chart.tsv (written by summarize.py): target cpu_1k cpu_64k rps_1k rps_64k  (medians; NaN = none)
"""
import csv
import math
import os
import sys
from xml.sax.saxutils import escape

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import svgbars  # noqa: E402

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
# bench/proxy.sh names the two sidecar builds when it knows them (BUILD=pgo: PGO vs plain dist).
LABELS["sidecar"] = os.environ.get("LABEL_SIDECAR") or LABELS["sidecar"]
LABELS["sidecar-all"] = os.environ.get("LABEL_SIDECAR_ALL") or LABELS["sidecar-all"]
LABELS["sidecar-b"] = os.environ.get("LABEL_B") or LABELS["sidecar-b"]
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
chart = svgbars.Chart(W, H, PW, PH, TOP, LEFT0, GAP, subtitle)
out = chart.out
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
    # a target is drawn in a panel if it has a value there (direct has no proxy CPU)
    present = [t for t in targets if any(val(t, metric, s) == val(t, metric, s) for s, _ in GROUPS)]
    chart.panel(p, title, GROUPS, [(t, color[t]) for t in present],
                value=lambda t, size, metric=metric: val(t, metric, size),
                fmt=lambda v, metric=metric: fmt(v, metric),
                tip=lambda t, _size, gl: f"{label[t]} {gl}",
                k_at_zero=False,  # the bottom tick is "0", not "0k"
                value_font=lambda bw: 11 if bw >= 36 else 10)  # narrower bars, smaller numbers
chart.legend([(color[t], label[t]) for t in targets])
chart.write(out_svg)
