#!/usr/bin/env bash
# Repeats bench/block.sh's Ceph-vs-Bulwark comparison REPS times and reports each rep's ratio and
# the median, because this VM's disk and CPU drift by tens of percent within minutes (one full run
# of bench/block.sh gave 2.14× and the next, eight minutes later, 1.87×). Targets alternate order
# (ceph first, then bulwark first) so a drift does not always favour the one measured second.
#
#   bench/block-reps.sh                                   # 3 reps, 4K random write, ~9 min
#   REPS=5 JOBS="randwrite randread" bench/block-reps.sh
#
# Knobs: REPS=3, JOBS=randwrite, RUNTIME=20, OUT=dir (default bench/block/results/reps-<timestamp>);
# the rest (BULWARK_MIN_SIZE, QUIET_WAIT, BUILD, ...) pass through to bench/block.sh.
# Output: $OUT/rep<N>/ (each a full bench/block.sh result), $OUT/reps.md (table + median).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPS=${REPS:-3}; export JOBS=${JOBS:-randwrite}; export RUNTIME=${RUNTIME:-20}
OUT=${OUT:-$HERE/block/results/reps-$(date -u +%Y%m%dT%H%M%SZ)}
case $REPS in ''|*[!0-9]*) echo "REPS must be a positive number" >&2; exit 2 ;; esac
[ "$REPS" -ge 1 ] && [ "$REPS" -le 20 ] || { echo "REPS must be 1..20" >&2; exit 2; }
mkdir -p "$OUT"
for r in $(seq 1 "$REPS"); do
  if [ $((r % 2)) = 1 ]; then order="ceph bulwark"; else order="bulwark ceph"; fi
  echo "block-reps: rep $r/$REPS ($order)" >&2
  TARGETS="$order" OUT="$OUT/rep$r" "$HERE/block.sh" >"$OUT/rep$r.log" 2>&1 ||
    { tail -20 "$OUT/rep$r.log" >&2; echo "block-reps: rep $r failed (see $OUT/rep$r.log)" >&2; exit 1; }
  BUILD=0; export BUILD   # one build at most
done
python3 - "$OUT" "$REPS" "$JOBS" <<'PY' | tee "$OUT/reps.md"
import csv, statistics, sys
out, reps, jobs = sys.argv[1], int(sys.argv[2]), sys.argv[3].split()
rows = {}
for r in range(1, reps + 1):
    with open(f"{out}/rep{r}/results.tsv") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            rows[(r, row["target"], row["job"])] = row
print("| rep | job | Ceph RBD IOPS | Bulwark IOPS | Bulwark / Ceph | Ceph CPU µs/op | Bulwark CPU µs/op | CPU ratio |")
print("|---:|---|---:|---:|---:|---:|---:|---:|")
ratios = {j: [] for j in jobs}
cpu = {j: [] for j in jobs}
for r in range(1, reps + 1):
    for j in jobs:
        c, b = rows.get((r, "ceph", j)), rows.get((r, "bulwark", j))
        if not c or not b or float(c["iops"]) == 0:
            print(f"| {r} | {j} | – | – | – | – | – | – |")
            continue
        x = float(b["iops"]) / float(c["iops"])
        y = float(b["server_cpu_us_op"]) / float(c["server_cpu_us_op"])
        ratios[j].append(x); cpu[j].append(y)
        print(f"| {r} | {j} | {float(c['iops']):.0f} | {float(b['iops']):.0f} | {x:.2f}× | "
              f"{float(c['server_cpu_us_op']):.0f} | {float(b['server_cpu_us_op']):.0f} | {y:.2f}× |")
print()
for j in jobs:
    if ratios[j]:
        print(f"{j}: Bulwark / Ceph IOPS median {statistics.median(ratios[j]):.2f}× "
              f"(min {min(ratios[j]):.2f}×, max {max(ratios[j]):.2f}×, {len(ratios[j])} reps); "
              f"server CPU per op median {statistics.median(cpu[j]):.2f}× Ceph's")
PY
