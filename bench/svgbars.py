"""Grouped-bar SVG charts without dependencies, shared by bench/block/chart.py and bench/proxy/chart.py.

A chart is one or more panels side by side; each panel has groups along x (jobs, payload sizes) and
one bar per series (target) in each group, with its value printed above it. A missing value (NaN)
is drawn as "n/a". The scripts add their own title lines to `Chart.out` (a list of SVG lines).
"""
import math
from xml.sax.saxutils import escape


def nice_max(v):
    """Top of the y axis: the first of 1, 1.2, 1.5, ... 10 x 10^n at least 8% above v."""
    if not v or v != v or v <= 0:
        return 1.0
    e = 10 ** math.floor(math.log10(v))
    for m in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if m * e >= v * 1.08:
            return m * e
    return 10 * e


def tick_label(v, vmax, k_at_zero=True):
    """y tick text: thousands as "12k" once the axis reaches 10000 (the bottom tick too, as "0k",
    unless k_at_zero is False: then it is "0")."""
    if vmax >= 10000 and (k_at_zero or v):
        return f"{v / 1000:g}k"
    return f"{v:.0f}" if vmax >= 10 else f"{v:.1f}"


class Chart:
    """W x H chart; panel p's plot area is PW x PH at x = LEFT0 + p * (PW + GAP), y = TOP."""

    def __init__(self, W, H, PW, PH, TOP, LEFT0, GAP, subtitle=""):
        self.W, self.H, self.PW, self.PH = W, H, PW, PH
        self.TOP, self.LEFT0, self.GAP = TOP, LEFT0, GAP
        self.out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
                    'font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="12">',
                    f'<rect width="{W}" height="{H}" fill="white"/>',
                    f'<text x="20" y="48" fill="#444">{escape(subtitle)}</text>']

    def panel(self, p, title, groups, series, value, fmt, tip, k_at_zero=True, value_font=lambda bw: 11):
        """Draw panel p.
        groups: [(key, label)] along x; series: [(id, color)], one bar each per group;
        value(id, key) -> float (NaN = none); fmt(v) -> the value's text;
        tip(id, key, label) -> what the bar's tooltip names before ": value" (escaped here);
        k_at_zero: see tick_label; value_font(bar width) -> font size of the values on the bars."""
        out, PW, PH, TOP = self.out, self.PW, self.PH, self.TOP
        x0 = self.LEFT0 + p * (PW + self.GAP)
        y0 = TOP + PH  # baseline
        vals = [value(s, g) for s, _ in series for g, _ in groups]
        vmax = nice_max(max([v for v in vals if v == v] or [0]))
        out.append(f'<text x="{x0 + PW / 2}" y="{TOP - 12}" text-anchor="middle" font-weight="bold">'
                   f'{escape(title)}</text>')
        for k in range(6):  # grid and y ticks
            v = vmax * k / 5
            y = y0 - PH * k / 5
            out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x0 + PW}" y2="{y:.1f}" stroke="#e3e3e3"/>')
            out.append(f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#555">'
                       f'{tick_label(v, vmax, k_at_zero)}</text>')
        out.append(f'<line x1="{x0}" y1="{y0}" x2="{x0 + PW}" y2="{y0}" stroke="#333"/>')
        out.append(f'<line x1="{x0}" y1="{TOP}" x2="{x0}" y2="{y0}" stroke="#333"/>')
        gw = PW / len(groups)
        n = max(1, len(series))
        bw = min(60, (gw - 30) / n)
        vfs = value_font(bw)
        for g, (key, gl) in enumerate(groups):
            gx = x0 + g * gw + (gw - bw * n) / 2
            for i, (s, col) in enumerate(series):
                v = value(s, key)
                x = gx + i * bw
                if v != v:
                    out.append(f'<text x="{x + bw / 2:.1f}" y="{y0 - 6}" text-anchor="middle" fill="#999" '
                               'font-size="10">n/a</text>')
                    continue
                h = PH * v / vmax
                out.append(f'<rect x="{x + 2:.1f}" y="{y0 - h:.1f}" width="{bw - 4:.1f}" height="{h:.1f}" '
                           f'fill="{col}"><title>{escape(tip(s, key, gl))}: {fmt(v)}</title></rect>')
                out.append(f'<text x="{x + bw / 2:.1f}" y="{y0 - h - 4:.1f}" text-anchor="middle" '
                           f'font-size="{vfs}">{fmt(v)}</text>')
            out.append(f'<text x="{x0 + g * gw + gw / 2:.1f}" y="{y0 + 18}" text-anchor="middle">'
                       f'{escape(gl)}</text>')

    def legend(self, items):
        """items: [(color, label)], in a row along the bottom."""
        lx = self.LEFT0
        for col, lab in items:
            self.out.append(f'<rect x="{lx}" y="{self.H - 40}" width="14" height="14" fill="{col}"/>')
            self.out.append(f'<text x="{lx + 20}" y="{self.H - 28}">{escape(lab)}</text>')
            lx += 30 + 7.2 * len(lab)

    def write(self, path):
        open(path, "w", encoding="utf-8").write("\n".join(self.out + ["</svg>"]) + "\n")
