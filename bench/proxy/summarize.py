#!/usr/bin/env python3
"""Markdown summary of bench/proxy.sh: medians over reps of the wrk (saturation) and oha (fixed-rate)
TSVs, ratios against direct and HAProxy taken in the same run, and the sidecar issue's targets."""
import csv
import statistics as st
import sys

wrk_tsv, oha_tsv = sys.argv[1], sys.argv[2]
rows = list(csv.DictReader(open(wrk_tsv), delimiter="\t"))
orows = list(csv.DictReader(open(oha_tsv), delimiter="\t"))
NAN = float("nan")


def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return NAN


def med(rs, k):
    v = [num(r[k]) for r in rs if num(r[k]) == num(r[k])]
    return st.median(v) if v else NAN


def group(rs, *keys):
    g = {}
    for r in rs:
        g.setdefault(tuple(r[k] for k in keys), []).append(r)
    return g


def f(v, fmt="{:.0f}", dash="–"):
    return dash if v != v else fmt.format(v)


W = group(rows, "size", "target")
sizes = list(dict.fromkeys(r["size"] for r in rows))
targets = list(dict.fromkeys(r["target"] for r in rows))
dur_hint = None

print("### Saturation: wrk -t1 -c64, keep-alive, median of reps\n")
print("| size | target | req/s (reps) | xput / direct | p50 µs | p99 µs | proxy CPU µs/req "
      "| of which kernel | CPU / HAProxy | CPU / backend | peak RSS MiB ¹ | errors | other CPU s |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for s in sizes:
    d = W.get((s, "direct"), [])
    h = W.get((s, "haproxy"), [])
    for t in targets:
        rs = W.get((s, t))
        if not rs:
            continue
        rps = med(rs, "rps")
        reps = "/".join(f"{num(r['rps']) / 1000:.1f}k" for r in rs)
        ratio = rps / med(d, "rps") if d else NAN
        cpu = med(rs, "proxy_cpu_us_per_req") if t != "direct" else NAN
        hcpu = med(h, "proxy_cpu_us_per_req") if h else NAN
        bcpu = med(rs, "backend_cpu_us_per_req")
        hwm = min((num(r["proxy_hwm_kib"]) for r in rs), default=NAN) / 1024  # first rep: peak so far
        errs = sum(int(num(r["errs"])) for r in rs)
        oth = max(num(r["other_cpu_s"]) for r in rs)
        name = f"**{t}**" if t.startswith("sidecar") else t
        cpu_s = f(cpu, "{:.1f}") if t != "direct" else f"(backend {bcpu:.1f})"
        sys_s = f(med(rs, "proxy_sys_us_per_req"), "{:.1f}") if t != "direct" and "proxy_sys_us_per_req" in rs[0] else "–"
        print(f"| {s} | {name} | {rps:,.0f} ({reps}) | {f(ratio, '{:.2f}')} | {f(med(rs, 'p50_us'))} "
              f"| {f(med(rs, 'p99_us'))} | {cpu_s} | {sys_s} | {f(cpu / hcpu if t != 'direct' else NAN, '{:.2f}')} "
              f"| {f(cpu / bcpu if t != 'direct' else NAN, '{:.2f}')} | {f(hwm, '{:.1f}')} | {errs} | {oth:.1f} |")

print("\n¹ VmHWM of the proxy (nginx: master + worker) after its first run at that size; it only grows, "
      "so a later size includes the earlier ones' peak.")

O = group(orows, "target")
if orows:
    r0 = orows[0]
    print(f"\n### Fixed rate: oha -q {r0['rate']} (latency corrected for coordinated omission), "
          f"{r0['size']}, median of reps\n")
    print("| target | achieved req/s | p50 µs | p90 µs | p99 µs | p99.9 µs | +p50 µs | +p99 µs | +p99.9 µs "
          "| proxy CPU µs/req | success |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    d = O.get(("direct",), [])
    for t in targets:
        rs = O.get((t,))
        if not rs:
            continue
        add = lambda k: med(rs, k) - med(d, k) if d and t != "direct" else NAN
        name = f"**{t}**" if t.startswith("sidecar") else t
        print(f"| {name} | {f(med(rs, 'achieved_rps'))} | {f(med(rs, 'p50_us'))} | {f(med(rs, 'p90_us'))} "
              f"| {f(med(rs, 'p99_us'))} | {f(med(rs, 'p999_us'))} | {f(add('p50_us'), '{:+.0f}')} "
              f"| {f(add('p99_us'), '{:+.0f}')} | {f(add('p999_us'), '{:+.0f}')} "
              f"| {f(med(rs, 'proxy_cpu_us_per_req'), '{:.1f}')} | {f(min(num(r['success']) for r in rs), '{:.4f}')} |")

# Targets of the sidecar issue, each against HAProxy or the plain sidecar in this same run.
print("\n### Targets\n")
print("| target | measured | met |")
print("|---|---|---|")


def verdict(ok):
    return "–" if ok is None else ("yes" if ok else "**no**")


for s in sizes:
    sc, ha = W.get((s, "sidecar")), W.get((s, "haproxy"))
    if sc and ha:
        a, b = med(sc, "proxy_cpu_us_per_req"), med(ha, "proxy_cpu_us_per_req")
        print(f"| {s}: sidecar CPU/req ≤ HAProxy | {a:.1f} vs {b:.1f} µs ({a / b:.2f}×) | {verdict(a <= b)} |")
        a, b = med(sc, "rps"), med(ha, "rps")
        print(f"| {s}: sidecar req/s ≥ HAProxy | {a:,.0f} vs {b:,.0f} ({a / b:.2f}×) | {verdict(a >= b)} |")
if orows and O.get(("sidecar",)) and O.get(("haproxy",)) and O.get(("direct",)):
    d = med(O[("direct",)], "p99_us")
    a, b = med(O[("sidecar",)], "p99_us") - d, med(O[("haproxy",)], "p99_us") - d
    print(f"| added p99 at {orows[0]['rate']} req/s ≤ HAProxy | {a:+.0f} vs {b:+.0f} µs | {verdict(a <= b)} |")
for s in sizes:
    sc, al = W.get((s, "sidecar")), W.get((s, "sidecar-all"))
    if sc and al:
        a, b = med(al, "proxy_cpu_us_per_req"), med(sc, "proxy_cpu_us_per_req")
        x = med(al, "rps") / med(sc, "rps")
        print(f"| {s}: all policies cost < 10 % (CPU/req; req/s shown too) | {a:.1f} vs {b:.1f} µs ({(a / b - 1) * 100:+.1f} %); "
              f"req/s {(x - 1) * 100:+.1f} % | {verdict(a < 1.10 * b)} |")
for s in sizes:
    sc, q = W.get((s, "sidecar")), W.get((s, "sidecar-qod"))
    if sc and q:
        a, c = med(q, "proxy_cpu_us_per_req"), med(sc, "proxy_cpu_us_per_req")
        x = med(q, "rps") / med(sc, "rps")
        print(f"| {s}: query-of-death probing on, known signatures (CPU/req; req/s, p99) | {a:.1f} vs {c:.1f} µs ({(a / c - 1) * 100:+.1f} %); "
              f"req/s {(x - 1) * 100:+.1f} %; p99 {med(q, 'p99_us'):.0f} vs {med(sc, 'p99_us'):.0f} µs | – |")
for s in sizes:
    sc, b = W.get((s, "sidecar")), W.get((s, "sidecar-b"))
    if sc and b:
        a, c = med(b, "proxy_cpu_us_per_req"), med(sc, "proxy_cpu_us_per_req")
        print(f"| {s}: A/B, SIDECAR_B vs SIDECAR (information) | CPU/req {a:.1f} vs {c:.1f} µs ({(a / c - 1) * 100:+.1f} %); "
              f"req/s {(med(b, 'rps') / med(sc, 'rps') - 1) * 100:+.1f} % | – |")
hw = [num(r["proxy_hwm_kib"]) for r in rows + orows if r["target"] in ("sidecar", "sidecar-all")]
hw = [v for v in hw if v == v]
if hw:
    m = max(hw) / 1024
    print(f"| sidecar peak RSS < 20 MiB under this load | {m:.1f} MiB (VmHWM, both variants) | {verdict(m < 20)} |")
noisy = [r for r in rows if num(r["other_cpu_s"]) > 0.1 * num(r["reqs"]) / max(num(r["rps"]), 1)]
if noisy:
    print(f"\nWarning: {len(noisy)} run(s) had more than 0.1 CPU-s/s of unrelated load "
          f"({', '.join(dict.fromkeys(r['size'] + '/' + r['target'] for r in noisy))}); re-run before quoting them.")

# Data for the optional chart (bench/proxy/chart.gp): one row per target.
if len(sys.argv) > 3:
    with open(sys.argv[3], "w") as out:
        print("target\tcpu_1k\tcpu_64k\trps_1k\trps_64k", file=out)
        for t in targets:
            v = []
            for k in ("proxy_cpu_us_per_req", "rps"):
                for s in ("1k", "64k"):
                    rs = W.get((s, t), [])
                    x = med(rs, k) if rs and not (k != "rps" and t == "direct") else NAN
                    v.append("NaN" if x != x else f"{x:.1f}")
            print(t + "\t" + "\t".join(v), file=out)
