#!/usr/bin/env bash
# Block service: the same fio jobs (bench/block/jobs.fio) against
#   qemu-nbd  a raw file served by qemu-nbd (one copy: the no-replication limit)   fio ioengine=nbd
#   ceph      a 3-OSD Ceph cluster (Debian's packages, bluestore, pool size 3)    fio ioengine=rbd
#   bulwark   the Bulwark export on the local 3-node cluster, through its sidecars fio ioengine=nbd
# one target after the other, each started before and stopped after its jobs: a sequential prefill of
# the region, then 4K random write and read at queue depth 16 and 4 MiB sequential write and read at
# queue depth 4, RUNTIME seconds each. Reports IOPS, MiB/s, mean/p99/max completion latency, server
# and client CPU per operation, the ratios Bulwark/Ceph and Bulwark/qemu-nbd, and the issue's target
# (Bulwark's replicated IOPS ≥ 2× Ceph's). Results go to $OUT: summary.md (markdown, for
# docs/BENCHMARKS.md), results.tsv, chart.svg, every fio JSON, the job files, env.txt, logs.
#
#   bench/block.sh                                  # all three targets, 30 s per job (~8 min + build)
#   TARGETS="qemu-nbd ceph" RUNTIME=5 bench/block.sh   # short run without Bulwark (~3 min)
#
# Environment knobs:
#   TARGETS="qemu-nbd ceph bulwark"  RUNTIME=30  RAMP=2 (s, excluded from the figures)
#   JOBS="randwrite randread seqwrite seqread"   a subset runs only those (the prefill always runs)
#   REGION_MIB=256     image size and the region every job touches (from offset 0)
#   INSTALL=1          apt-get install what is missing (fio, ceph, qemu-utils, uuid-runtime); sudo if
#                      not root. INSTALL=0: fail instead
#   BUILD=1            cargo build --release -p storage -p sidecar first (only with bulwark); BUILD=0
#                      uses target/release as it is
#   QEMU_CACHE=directsync  qemu-nbd --cache: directsync = O_DIRECT|O_DSYNC, every write durable when
#                      acknowledged (fio's nbd engine sends neither FUA nor FLUSH, so with none/writeback
#                      an ack would only mean "in the host's or the disk's volatile cache")
#   QEMU_AIO=auto      native with an O_DIRECT cache mode (none|directsync), else threads
#   QEMU_PORT=10810
#   CEPH_STORE=bluestore CEPH_DEVICE_CLASS=auto CEPH_OSD_BYTES=4294967296 CEPH_PG=32 CEPH_MON_PORT=13300
#                      (see bench/block/ceph.sh; memstore is RAM-only, not durable)
#   CEPH_TOOL=auto     fio (ioengine=rbd) when Debian's fio has it, else `rbd bench`; or force either
#   BULWARK_API=127.0.0.11:5001  BULWARK_URI=nbd://127.0.0.11:10809/bench/img
#   BULWARK_REUSE=0    1: use a local cluster that is already up (and leave it up); 0: refuse, since
#                      this script tears down (`deploy/local/cluster down`) the cluster it starts
#   BULWARK_MIN_SIZE=2 the Bulwark pool's min_size: 3 makes every write wait for all three replicas,
#                      as Ceph's acknowledgement does
#   QUIET_WAIT=20      seconds to wait for an idle machine before each target (warning only)
#   OUT=dir            results directory (default bench/block/results/<timestamp>)
#   TIMEOUT=3600       bound on the whole script, seconds
#
# Durability: none of the jobs sends FUA or FLUSH, so the comparison is of what each server means by
# a plain write acknowledgement — listed per target in summary.md.
# Safety: 127.0.0.0/8 only; every fio run is bounded; the whole script runs under `timeout`; every
# process it starts (qemu-nbd, the Ceph daemons, the Bulwark cluster it brought up) is stopped on
# exit (trap), and its temporary files (OSD block files, the raw file) are removed.
set -euo pipefail
if [ -z "${_BLOCK_BENCH_BOUNDED:-}" ]; then
  exec env _BLOCK_BENCH_BOUNDED=1 timeout -k 20 "${TIMEOUT:-3600}" "$0" "$@"
fi

# The knobs set for this run, to print the command line in summary.md.
SET_KNOBS=
for v in TARGETS RUNTIME RAMP REGION_MIB QEMU_CACHE QEMU_AIO CEPH_STORE CEPH_DEVICE_CLASS CEPH_OSD_BYTES \
         CEPH_PG CEPH_TOOL BULWARK_URI BULWARK_REUSE BULWARK_MIN_SIZE JOBS BUILD; do
  [ -n "${!v+x}" ] && SET_KNOBS="$SET_KNOBS$v=\"${!v}\" "
done
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
TARGETS=${TARGETS:-"qemu-nbd ceph bulwark"}
RUNTIME=${RUNTIME:-30}; RAMP=${RAMP:-2}; REGION_MIB=${REGION_MIB:-256}
INSTALL=${INSTALL:-1}; BUILD=${BUILD:-1}
QEMU_CACHE=${QEMU_CACHE:-directsync}; QEMU_AIO=${QEMU_AIO:-auto}; QEMU_PORT=${QEMU_PORT:-10810}
CEPH_TOOL=${CEPH_TOOL:-auto}
BULWARK_API=${BULWARK_API:-127.0.0.11:5001}
BULWARK_URI=${BULWARK_URI:-nbd://127.0.0.11:10809/bench/img}
BULWARK_REUSE=${BULWARK_REUSE:-0}
BULWARK_MIN_SIZE=${BULWARK_MIN_SIZE:-2}
OUT=${OUT:-$HERE/block/results/$(date -u +%Y%m%dT%H%M%SZ)}
POOL=bench; IMAGE=img
JOBS=${JOBS:-"randwrite randread seqwrite seqread"}
for j in $JOBS; do
  case $j in randwrite|randread|seqwrite|seqread) ;; *) echo "unknown job '$j' (randwrite randread seqwrite seqread)" >&2; exit 2 ;; esac
done
export POOL IMAGE
export IMAGE_SIZE=${REGION_MIB}M
for t in $TARGETS; do
  case $t in qemu-nbd|ceph|bulwark) ;; *) echo "unknown target '$t' (qemu-nbd ceph bulwark)" >&2; exit 2 ;; esac
done
case $QEMU_CACHE in none|directsync|writeback|writethrough|unsafe) ;;
  *) echo "QEMU_CACHE must be none|directsync|writeback|writethrough|unsafe" >&2; exit 2 ;; esac
if [ "$QEMU_AIO" = auto ]; then
  case $QEMU_CACHE in none|directsync) QEMU_AIO=native ;; *) QEMU_AIO=threads ;; esac
fi
has() { [[ " $TARGETS " == *" $1 "* ]]; }
have() { command -v "$1" >/dev/null 2>&1; }
say() { echo "block: $*" >&2; }
die() { say "$*"; exit 1; }
PY=python3; have $PY || PY=/usr/bin/python3

# ---------------------------------------------------------------------------------------------
# 1. Tools
SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
need_apt=()
have fio || need_apt+=(fio)
have ss || need_apt+=(iproute2)
have uuidgen || need_apt+=(uuid-runtime)
has qemu-nbd && { have qemu-nbd && have qemu-img || need_apt+=(qemu-utils); }
has ceph && { have ceph-osd && have ceph-mon && have ceph-mgr && have rbd || need_apt+=(ceph); }
if [ ${#need_apt[@]} -gt 0 ]; then
  [ "$INSTALL" = 1 ] || die "missing: ${need_apt[*]} (INSTALL=0)"
  say "installing ${need_apt[*]} (apt; ceph is ~270 MB installed)"
  export DEBIAN_FRONTEND=noninteractive
  timeout 300 $SUDO apt-get update -qq
  timeout 900 $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
FIO_ENGINES=$(fio --enghelp 2>&1 || true)
if has qemu-nbd || has bulwark; then
  grep -qw nbd <<<"$FIO_ENGINES" || die "this fio ($(fio --version)) has no nbd engine"
fi
if has ceph; then
  case $CEPH_TOOL in
    auto) if grep -qw rbd <<<"$FIO_ENGINES"; then CEPH_TOOL=fio; else CEPH_TOOL=rbd-bench
            say "warning: this fio has no rbd engine; Ceph is measured with \`rbd bench\` (no latencies)"; fi ;;
    fio|rbd-bench) ;;
    *) die "CEPH_TOOL must be auto, fio or rbd-bench" ;;
  esac
fi
STORAGE=$ROOT/target/release/storage
if has bulwark; then
  if [ "$BUILD" = 1 ]; then
    say "building: cargo build --release -p storage -p sidecar"
    (cd "$ROOT" && cargo build --release -p storage -p sidecar)
  fi
  for b in "$STORAGE" "$ROOT/target/release/sidecar"; do [ -x "$b" ] || die "no $b (BUILD=1?)"; done
fi

# ---------------------------------------------------------------------------------------------
# 2. Run directory, cleanup
RUN=$(mktemp -d /tmp/bulwark-block-bench.XXXXXX)
mkdir -p "$OUT"
QEMU_PID=; CEPH_DIR=; BULWARK_STARTED=0
CLUSTER=$ROOT/deploy/local/cluster
BSTATE=$ROOT/deploy/local/.state
stop_qemu() {
  [ -n "$QEMU_PID" ] || return 0
  kill -TERM "$QEMU_PID" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$QEMU_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$QEMU_PID" 2>/dev/null || true
  wait "$QEMU_PID" 2>/dev/null || true
  QEMU_PID=
}
stop_ceph() {
  [ -n "$CEPH_DIR" ] || return 0
  "$HERE/block/ceph.sh" down "$CEPH_DIR" || true
  mkdir -p "$OUT/ceph-logs"
  cp "$CEPH_DIR/ceph.conf" "$OUT/ceph-logs/" 2>/dev/null || true
  for f in "$CEPH_DIR"/log/*.log; do [ -f "$f" ] && tail -n 300 "$f" >"$OUT/ceph-logs/$(basename "$f")"; done
  rm -rf "$CEPH_DIR"   # the 3 × 4 GiB OSD block files
  CEPH_DIR=
}
stop_bulwark() {
  [ "$BULWARK_STARTED" = 1 ] || return 0
  mkdir -p "$OUT/bulwark-logs"
  for f in "$BSTATE"/*.log "$BSTATE"/*.toml; do
    [ -f "$f" ] && tail -n 300 "$f" >"$OUT/bulwark-logs/$(basename "$f")"
  done
  "$CLUSTER" down >>"$OUT/bulwark-cluster.log" 2>&1 || say "warning: deploy/local/cluster down failed"
  BULWARK_STARTED=0
}
cleanup() {
  stop_qemu; stop_ceph; stop_bulwark
  rm -rf "$RUN"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------------
# 3. Measurement helpers
HZ=$(getconf CLK_TCK)
sysbusy() { awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat; }  # busy ticks, all CPUs
wait_quiet() {  # up to QUIET_WAIT s for a 1-s window with < 0.2 CPU-s of load on the machine
  local a b
  for _ in $(seq "${QUIET_WAIT:-20}"); do
    a=$(sysbusy); sleep 1; b=$(sysbusy)
    [ $((b - a)) -lt $((HZ * 20 / 100)) ] && return 0
  done
  say "warning: machine not quiet before $1 (other load on the VM?); see 'other CPU %' in the summary"
}
ticks() {  # utime+stime (all threads) of the given pids, clock ticks
  local sum=0 p
  for p in "$@"; do
    [ -r "/proc/$p/stat" ] && sum=$((sum + $(sed 's/^.*) //' "/proc/$p/stat" | awk '{print $12+$13}')))
  done
  echo $sum
}
server_pids() {
  case $1 in
    qemu-nbd) echo "$QEMU_PID" ;;
    ceph) "$HERE/block/ceph.sh" pids "$CEPH_DIR" ;;
    bulwark) cat "$BSTATE"/node*.pid "$BSTATE"/sidecar*.pid 2>/dev/null | tr '\n' ' ' ;;
  esac
}
s_of() { awk -v t="$1" -v hz="$HZ" 'BEGIN{printf "%.3f", t / hz}'; }

export REGION=$((REGION_MIB << 20)) RUNTIME RAMP
RUNS=$OUT/runs.tsv
echo -e "target\tjob\tjson\twall_s\tserver_cpu_s\tclient_cpu_s\tbusy_cpu_s\tload1" >"$RUNS"
TIMEFORMAT='%U %S'
FAILED=()

# run_job TARGET JOB: one fio section (or the rbd bench fallback), CPU sampled around it.
run_job() {
  local t=$1 job=$2 json="$1-$2.json" sb0 sb1 st0 st1 t0 t1 rc=0 limit pids
  read -r -a pids <<<"$(server_pids "$t")"
  limit=$((RUNTIME + RAMP + 120)); [ "$job" = prefill ] && limit=600
  st0=$(ticks "${pids[@]}"); sb0=$(sysbusy); t0=$(date +%s%N)
  if [ "$t" = ceph ] && [ "$CEPH_TOOL" = rbd-bench ]; then
    { time rbd_bench "$job" >"$OUT/$json" 2>"$OUT/$t-$job.err" ; } 2>"$RUN/time.out" || rc=$?
  else
    { time timeout "$limit" fio --section="$job" --output-format=json --output="$OUT/$json" \
        "$OUT/$t.fio" 2>"$OUT/$t-$job.err" ; } 2>"$RUN/time.out" || rc=$?
  fi
  t1=$(date +%s%N); sb1=$(sysbusy); st1=$(ticks "${pids[@]}")
  [ -s "$OUT/$t-$job.err" ] || rm -f "$OUT/$t-$job.err"
  if [ $rc != 0 ]; then
    say "$t $job: failed (exit $rc); see $OUT/$t-$job.err"
    FAILED+=("$t/$job"); return 1
  fi
  [ "$job" = prefill ] && return 0
  local cli; cli=$(awk '{printf "%.3f", $1 + $2}' "$RUN/time.out")
  echo -e "$t\t$job\t$json\t$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", (b - a) / 1e9}')\t$(s_of $((st1 - st0)))\t$cli\t$(s_of $((sb1 - sb0)))\t$(cut -d' ' -f1 /proc/loadavg)" >>"$RUNS"
  $PY - "$OUT/$json" "$job" <<'EOF' >&2 || true
import json, sys
t = open(sys.argv[1]).read(); d = json.loads(t[t.find("{"):])
if d.get("fallback"):
    print(f"    {sys.argv[2]:10s} {d['iops']:10.0f} IOPS {d['bw_bytes'] / 2**20:8.1f} MiB/s (rbd bench)")
else:
    j = d["jobs"][0]; s = j["read" if "read" in sys.argv[2] else "write"]
    print(f"    {sys.argv[2]:10s} {s['iops']:10.0f} IOPS {s['bw_bytes'] / 2**20:8.1f} MiB/s  "
          f"clat mean {s['clat_ns']['mean'] / 1e6:7.2f} ms  p99 {s['clat_ns']['percentile']['99.000000'] / 1e6:7.2f} ms")
EOF
}

# The `rbd bench` fallback for a fio without the rbd engine: same sizes, depths and patterns; a
# fixed amount of I/O instead of a fixed time (rbd bench has no time limit). JSON with the figures.
rbd_bench() {
  local job=$1 type size threads pattern total out
  case $job in
    prefill)   type='write'; size=4M; threads=4;  pattern=seq;  total=$REGION ;;
    randwrite) type='write'; size=4K; threads=16; pattern=rand; total=${RBD_BENCH_4K_BYTES:-$((64 << 20))} ;;
    randread)  type='read';  size=4K; threads=16; pattern=rand; total=${RBD_BENCH_4K_BYTES:-$((64 << 20))} ;;
    seqwrite)  type='write'; size=4M; threads=4;  pattern=seq;  total=$REGION ;;
    seqread)   type='read';  size=4M; threads=4;  pattern=seq;  total=$REGION ;;
  esac
  out=$(timeout 600 rbd bench --io-type "$type" --io-size "$size" --io-threads "$threads" \
    --io-total "$total" --io-pattern "$pattern" "$POOL/$IMAGE")
  echo "$out" >&2
  # last line: "elapsed: N  ops: N  ops/sec: N  bytes/sec: <human>"
  awk -v sz="$size" '/^elapsed:/ { for (i = 1; i < NF; i++) { if ($i == "ops:") ops = $(i+1); if ($i == "ops/sec:") r = $(i+1); if ($i == "elapsed:") e = $(i+1) } }
    END { b = (sz == "4K") ? 4096 : 4194304; if (r == "") exit 1
          printf "{\"fallback\": \"rbd bench\", \"iops\": %s, \"bw_bytes\": %.0f, \"ops\": %s, \"seconds\": %s}\n", r, r * b, ops, e }' <<<"$out"
}

# ---------------------------------------------------------------------------------------------
# 4. Targets
port_busy() { ss -Hltn "sport = :$1" | grep -q .; }
wait_port() {  # host port seconds
  for _ in $(seq $(($3 * 10))); do
    timeout 1 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}
# fio [global] naming the engine; the jobs follow from bench/block/jobs.fio.
write_jobfile() {  # target engine-lines...
  local t=$1; shift
  { echo "# generated by bench/block.sh for target $t; the jobs are bench/block/jobs.fio"
    echo "[global]"; printf '%s\n' "$@"; echo; cat "$HERE/block/jobs.fio"; } >"$OUT/$t.fio"
}

start_qemu_nbd() {
  port_busy "$QEMU_PORT" && die "port $QEMU_PORT is busy (QEMU_PORT=...)"
  # preallocated: the file's blocks exist before the first write (no extent allocation in the runs)
  qemu-img create -q -f raw -o preallocation=full "$RUN/qemu.img" "${REGION_MIB}M"
  qemu-nbd -f raw --cache="$QEMU_CACHE" --aio="$QEMU_AIO" --persistent --shared=4 \
    -b 127.0.0.1 -p "$QEMU_PORT" -x exp "$RUN/qemu.img" >"$OUT/qemu-nbd.log" 2>&1 &
  QEMU_PID=$!
  wait_port 127.0.0.1 "$QEMU_PORT" 10 || { cat "$OUT/qemu-nbd.log" >&2; die "qemu-nbd did not listen"; }
  write_jobfile qemu-nbd ioengine=nbd "uri=nbd://127.0.0.1:$QEMU_PORT/exp"
}

start_ceph() {
  CEPH_DIR=$RUN/ceph
  say "ceph: bootstrapping mon + mgr + 3 OSDs (~30 s)"
  "$HERE/block/ceph.sh" up "$CEPH_DIR" 2>"$OUT/ceph-up.log" || { tail -20 "$OUT/ceph-up.log" >&2; die "ceph bootstrap failed"; }
  grep '^ceph: up:' "$OUT/ceph-up.log" >&2 || true
  export CEPH_CONF=$CEPH_DIR/ceph.conf
  write_jobfile ceph ioengine=rbd clientname=admin "pool=$POOL" "rbdname=$IMAGE"
}

# The one place that knows the block CLI and the export name; adjust here when they settle.
bulwark_create_image() {
  "$STORAGE" --api "$BULWARK_API" pool create "$POOL" --size 3 --min-size "$BULWARK_MIN_SIZE"
  "$STORAGE" --api "$BULWARK_API" image create "$POOL/$IMAGE" --size "${REGION_MIB}M"
}
start_bulwark() {
  if [ -f "$BSTATE/nodes" ]; then
    [ "$BULWARK_REUSE" = 1 ] || die "a local cluster is already up ($BSTATE); \`deploy/local/cluster down\` first, or BULWARK_REUSE=1 to use it (it is left up)"
    say "bulwark: using the cluster that is already up (BULWARK_REUSE=1)"
  else
    say "bulwark: deploy/local/cluster up (release)"
    BULWARK_STARTED=1
    BULWARK_PROFILE=release BULWARK_NO_BUILD=1 "$CLUSTER" up >"$OUT/bulwark-cluster.log" 2>&1 ||
      { tail -30 "$OUT/bulwark-cluster.log" >&2; die "deploy/local/cluster up failed"; }
  fi
  if ! bulwark_create_image >>"$OUT/bulwark-cluster.log" 2>&1; then
    tail -10 "$OUT/bulwark-cluster.log" >&2
    [ "$BULWARK_REUSE" = 1 ] || die "bulwark: creating $POOL/$IMAGE failed (CLI changed? see bulwark_create_image in $0)"
    say "bulwark: creating $POOL/$IMAGE failed; assuming it exists (BULWARK_REUSE=1)"
  fi
  local hp=${BULWARK_URI#nbd://}; hp=${hp%%/*}
  wait_port "${hp%:*}" "${hp##*:}" 30 || die "bulwark: nothing listens on $hp (NBD export through the sidecar)"
  write_jobfile bulwark ioengine=nbd "uri=$BULWARK_URI"
}

stop_target() {
  case $1 in qemu-nbd) stop_qemu ;; ceph) stop_ceph ;; bulwark) stop_bulwark ;; esac
}

# What each target's plain write acknowledgement means (fio sends no FUA/FLUSH), for the summary.
declare -A LABEL=([qemu-nbd]="qemu-nbd" [ceph]="Ceph RBD" [bulwark]="Bulwark")
declare -A ACK=(
  [qemu-nbd]="qemu-nbd $(qemu-nbd --version 2>/dev/null | head -1 | awk '{print $2}'), raw file (preallocated, ${REGION_MIB} MiB) on the root fs, \`--cache=$QEMU_CACHE --aio=$QEMU_AIO\`; one copy, no network hop beyond loopback: the no-replication limit. $(case $QEMU_CACHE in directsync|writethrough) echo "Every write is O_DSYNC: durable when acknowledged." ;; *) echo "**Not durable when acknowledged** (no O_DSYNC; the client sends no FLUSH)." ;; esac)"
  [ceph]="Ceph $(ceph --version 2>/dev/null | awk '{print $3}') (Debian), 1 mon + 1 mgr + 3 OSDs on one host, ${CEPH_STORE:-bluestore} on ${CEPH_OSD_BYTES:-4294967296}-byte files on the root fs (device class: ${CEPH_DEVICE_CLASS:-auto}), pool size 3 / min_size 2, failure domain osd, ${CEPH_PG:-32} PGs, image ${REGION_MIB} MiB (4 MiB objects), librbd cache off. A write is acknowledged once all 3 replicas committed it$( [ "${CEPH_STORE:-bluestore}" = memstore ] && echo " — **to RAM (memstore): not durable**"). Client: $( [ "$CEPH_TOOL" = rbd-bench ] && echo "\`rbd bench\`" || echo "fio ioengine=rbd (librbd runs inside fio, so its CPU counts as client CPU)")."
  [bulwark]="Bulwark (release build, this tree), 3 nodes on 127.0.0.11–13 each behind its sidecar (\`deploy/local/cluster up\`), pool size 3 / min_size $BULWARK_MIN_SIZE (failure domain: the server's default, host = node address), image ${REGION_MIB} MiB (default 4 MiB objects), NBD \`$BULWARK_URI\`. A write is acknowledged once durable on min_size ($BULWARK_MIN_SIZE) replicas$( [ "$BULWARK_MIN_SIZE" = 3 ] && echo ", i.e. on all 3, as Ceph does" || echo "; the third gets up to block.replica_grace (250 ms) more, without holding the acknowledgement (Ceph waits for all 3)") (storage/src/block/service.rs, write_obj)."
)
TSVT=$OUT/targets.tsv
echo -e "target\tlabel\tack" >"$TSVT"
for t in $TARGETS; do echo -e "$t\t${LABEL[$t]}\t${ACK[$t]}" >>"$TSVT"; done

{
  echo "date: $(date -u +%FT%TZ)"
  echo "commit: $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null)$(cd "$ROOT" && git diff --quiet HEAD 2>/dev/null || echo ' (+ uncommitted changes)')"
  echo "machine: $(nproc) vCPU $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM, kernel $(uname -r), root fs on $(findmnt -no SOURCE / 2>/dev/null) (rotational=$(cat /sys/block/"$(basename "$(findmnt -no SOURCE / 2>/dev/null)")"/queue/rotational 2>/dev/null || echo '?'))"
  echo "tools: $(fio --version), $(qemu-nbd --version 2>/dev/null | head -1), $(ceph --version 2>/dev/null | cut -d' ' -f1-3)"
  echo "settings: TARGETS='$TARGETS' RUNTIME=$RUNTIME RAMP=$RAMP REGION_MIB=$REGION_MIB QEMU_CACHE=$QEMU_CACHE QEMU_AIO=$QEMU_AIO CEPH_STORE=${CEPH_STORE:-bluestore} CEPH_DEVICE_CLASS=${CEPH_DEVICE_CLASS:-auto} CEPH_TOOL=${CEPH_TOOL} BULWARK_URI=$BULWARK_URI"
  echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$OUT/env.txt"
sed 's/^/  /' "$OUT/env.txt" >&2

# ---------------------------------------------------------------------------------------------
# 5. Runs: one target at a time, nothing else of ours running
for t in $TARGETS; do
  wait_quiet "$t"
  say "== $t"
  "start_${t//-/_}"
  if run_job "$t" prefill; then
    for j in $JOBS; do run_job "$t" "$j" || true; done
  fi
  stop_target "$t"
done

# ---------------------------------------------------------------------------------------------
# 6. Summary and chart
{
  echo "## Block service: fio against Bulwark, Ceph RBD and qemu-nbd (\`bench/block.sh\`)"
  echo
  echo '```sh'
  echo "${SET_KNOBS}bench/block.sh"
  echo '```'
  echo
  sed 's/^/    /' "$OUT/env.txt"
  echo
  echo "Each job: one fio job, one connection (NBD) or librbd handle (RBD), ${RUNTIME} s after ${RAMP} s of"
  echo "ramp, over the first ${REGION_MIB} MiB of the image, after one sequential 4 MiB pass (prefill) that"
  echo "writes all of it. 4K jobs report IOPS, 4M jobs MiB/s; ratios are taken in the same run."
  echo
  $PY "$HERE/block/summarize.py" "$OUT"
  if [ ${#FAILED[@]} -gt 0 ]; then echo; echo "**Failed runs:** ${FAILED[*]} (see the .err files)."; fi
} | tee "$OUT/summary.md"
$PY "$HERE/block/chart.py" "$OUT/results.tsv" "$OUT/targets.tsv" "$OUT/chart.svg" \
  "$(date -u +%F), $(nproc) vCPU, RUNTIME=${RUNTIME}s per job, ${REGION_MIB} MiB region; Ceph: ${CEPH_STORE:-bluestore}, size 3; qemu-nbd: --cache=$QEMU_CACHE" \
  && echo "chart: $OUT/chart.svg" >&2
echo "results: $OUT" >&2
[ ${#FAILED[@]} = 0 ]
