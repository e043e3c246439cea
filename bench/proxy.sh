#!/usr/bin/env bash
# Sidecar proxy overhead: a fixed nginx backend serving 1 KiB and 64 KiB files, reached
#   direct | through the Bulwark sidecar (plain) | the sidecar with all policies on |
#   HAProxy | nginx as reverse proxies
# in one interleaved run over 127.0.0.1 (HTTP/1.1 keep-alive, 64 connections, wrk), plus added
# latency at a fixed request rate (oha, corrected for coordinated omission). Reports req/s, p50, p99,
# the proxy's CPU time per request (utime+stime from /proc/PID/stat), its peak RSS (VmHWM), and checks
# the targets of the sidecar issue. Results go to $OUT (summary.md, TSVs, raw tool output, configs).
#
#   bench/proxy.sh                       # ~4 min after the build: DUR=10 REPS=1, layout A
#   REPS=3 DUR=10 bench/proxy.sh         # what docs/BENCHMARKS.md quotes (~11 min)
#
# Layout (taskset), as in the perf anchors:
#   A (default): load generator on CPU1; proxy and backend share CPU0 (a sidecar next to its app)
#   B:           load generator on CPU1, proxy on CPU0, backend on CPU1 (how much one proxy core relays)
#   none:        no pinning
#
# Environment knobs:
#   LAYOUT=A DUR=10 WARM=2 REPS=1 CONNS=64 SIZES="1k 64k"
#   TARGETS="direct sidecar sidecar-all haproxy nginx"
#   RATE=3000 RATE_SIZE=1k OHA_CONNS=16   fixed-rate run (RATE=0 skips it); needs oha
#   INSTALL=1        apt-get install haproxy nginx-light wrk if missing; cargo install --locked oha
#                    if missing (one-time, ~7 min on 2 cores; the anchors' tool; not in Debian)
#   BUILD=1          cargo build --profile dist -p sidecar first (BUILD=0: use the existing binary)
#   BUILD=pgo        bench/proxy/pgo-build.sh first (profile-guided dist build, ~10 min) and test
#                    target/pgo/sidecar; the plain dist build runs beside it as "sidecar-b"
#   SIDECAR=path     binary to test (default target/dist/sidecar of this workspace: release + fat LTO)
#   SIDECAR_B=path   a second binary (e.g. a candidate fix built elsewhere), run as target
#                    "sidecar-b" with the plain config in the same interleaved run (an A/B);
#                    SIDECAR_B_SED=sed-script edits its config (settings it does not know)
#   PROFILE=0|1      1: after the runs, perf record -e cpu-clock of the sidecar at 1 KiB (flat and
#                    call-graph reports into $OUT/perf-*.txt)
#   QUIET_WAIT=30    seconds to wait for an idle machine before each measured run
#   OUT=dir          results directory (default bench/proxy/results/<timestamp>)
#   TIMEOUT=2400     bound on the whole script, seconds
#
# Safety: only 127.0.0.1; every load run is bounded (-d / -z); the whole script runs under
# `timeout`; every process it starts is stopped by PID on exit (trap).
set -euo pipefail
if [ -z "${_PROXY_BENCH_BOUNDED:-}" ]; then
  exec env _PROXY_BENCH_BOUNDED=1 timeout -k 10 "${TIMEOUT:-2400}" "$0" "$@"
fi

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
LAYOUT=${LAYOUT:-A}
DUR=${DUR:-10}; WARM=${WARM:-2}; REPS=${REPS:-1}; CONNS=${CONNS:-64}
SIZES=${SIZES:-"1k 64k"}
TARGETS=${TARGETS:-"direct sidecar sidecar-all haproxy nginx"}
RATE=${RATE:-3000}; RATE_SIZE=${RATE_SIZE:-1k}; OHA_CONNS=${OHA_CONNS:-16}
INSTALL=${INSTALL:-1}; BUILD=${BUILD:-1}; PROFILE=${PROFILE:-0}
if [ "$BUILD" = pgo ]; then
  SIDECAR=${SIDECAR:-$ROOT/target/pgo/sidecar}
  SIDECAR_B=${SIDECAR_B:-$ROOT/target/dist/sidecar}
fi
SIDECAR=${SIDECAR:-$ROOT/target/dist/sidecar}
OUT=${OUT:-$HERE/proxy/results/$(date -u +%Y%m%dT%H%M%SZ)}
case $LAYOUT in
  A) CPU_LOAD=1; CPU_PROXY=0; CPU_BACKEND=0 ;;
  B) CPU_LOAD=1; CPU_PROXY=0; CPU_BACKEND=1 ;;
  none) CPU_LOAD=0-$(( $(nproc) - 1 )); CPU_PROXY=$CPU_LOAD; CPU_BACKEND=$CPU_LOAD ;;
  *) echo "unknown LAYOUT=$LAYOUT (A|B|none)" >&2; exit 2 ;;
esac
[ "$(nproc)" -ge 2 ] || [ "$LAYOUT" = none ] || { echo "layout $LAYOUT needs 2 CPUs" >&2; exit 2; }
PY=python3; command -v $PY >/dev/null || PY=/usr/bin/python3

P_BACKEND=18080; P_HAPROXY=18081; P_NGINX=18082; P_SIDECAR=18084; P_SIDECAR_ALL=18085
P_ADMIN=19901; P_ADMIN_ALL=19902; P_SIDECAR_B=18086; P_ADMIN_B=19903
P_SIDECAR_QOD=18087; P_ADMIN_QOD=19904
declare -A PORT=([direct]=$P_BACKEND [haproxy]=$P_HAPROXY [nginx]=$P_NGINX
                 [sidecar]=$P_SIDECAR [sidecar-all]=$P_SIDECAR_ALL [sidecar-b]=$P_SIDECAR_B
                 [sidecar-qod]=$P_SIDECAR_QOD)
SIDECAR_B=${SIDECAR_B:-}
if [ -n "$SIDECAR_B" ] && [[ " $TARGETS " != *" sidecar-b "* ]]; then
  TARGETS=${TARGETS/sidecar /sidecar sidecar-b }
  [[ " $TARGETS " == *" sidecar-b "* ]] || TARGETS="$TARGETS sidecar-b"
fi

# ---------------------------------------------------------------------------------------------
# 1. Tools
have() { command -v "$1" >/dev/null 2>&1; }
need_apt=()
have wrk || need_apt+=(wrk)
[[ " $TARGETS " == *" haproxy "* ]] && ! have haproxy && need_apt+=(haproxy)
have nginx || need_apt+=(nginx-light)
have taskset || need_apt+=(util-linux)
have curl || need_apt+=(curl)
have ss || need_apt+=(iproute2)
if [ ${#need_apt[@]} -gt 0 ]; then
  [ "$INSTALL" = 1 ] || { echo "missing: ${need_apt[*]} (INSTALL=0)" >&2; exit 1; }
  echo "installing ${need_apt[*]} (apt)" >&2
  export DEBIAN_FRONTEND=noninteractive
  timeout 300 apt-get update -qq
  timeout 600 apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  # Debian's postinst does not leave daemons running without systemd, but make sure.
  for s in nginx haproxy; do (service "$s" stop >/dev/null 2>&1 || true); done
fi
if [ "$RATE" -gt 0 ] && ! have oha; then
  if [ "$INSTALL" = 1 ] && have cargo; then
    # Not in Debian. --locked: the newest unlocked dependency set needs a newer rustc.
    echo "installing oha (cargo install --locked, one-time, several minutes)" >&2
    timeout 1200 cargo install --locked --quiet oha --root /usr/local >&2 || true
  fi
  have oha || { echo "warning: oha not available; skipping the fixed-rate run" >&2; RATE=0; }
fi
if [ "$BUILD" = 1 ] || [ "$BUILD" = pgo ]; then
  (cd "$ROOT" && cargo build --profile dist -p sidecar --quiet)
fi
if [ "$BUILD" = pgo ]; then
  "$HERE/proxy/pgo-build.sh" >&2
fi
[ -x "$SIDECAR" ] || { echo "no sidecar binary at $SIDECAR (BUILD=1?)" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
# 2. Configs and servers
for p in $P_BACKEND $P_HAPROXY $P_NGINX $P_SIDECAR $P_SIDECAR_ALL $P_ADMIN $P_ADMIN_ALL $P_SIDECAR_B $P_ADMIN_B $P_SIDECAR_QOD $P_ADMIN_QOD; do
  if ss -Hltn "sport = :$p" | grep -q .; then echo "port $p is busy" >&2; exit 1; fi
done
RUN=$(mktemp -d /tmp/bulwark-proxy-bench.XXXXXX)
mkdir -p "$OUT" "$RUN/www" "$RUN/tmp"
head -c 1024 /dev/zero | tr '\0' 'a' > "$RUN/www/1k"
head -c 65536 /dev/zero | tr '\0' 'b' > "$RUN/www/64k"

declare -A PID=()
cleanup() {
  local n p c
  for n in "${!PID[@]}"; do kill -TERM "${PID[$n]}" 2>/dev/null || true; done
  for n in "${!PID[@]}"; do
    p=${PID[$n]}
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$p" 2>/dev/null; then
      for c in $(pgrep -P "$p" || true); do kill -KILL "$c" 2>/dev/null || true; done
      kill -KILL "$p" 2>/dev/null || true
    fi
  done
  cp "$RUN"/*.conf "$RUN"/*.cfg "$RUN"/*.toml "$RUN"/*.err "$RUN"/*.log "$OUT"/ 2>/dev/null || true
  rm -rf "$RUN"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

TEMPS="client_body_temp_path $RUN/tmp/cb; proxy_temp_path $RUN/tmp/px; fastcgi_temp_path $RUN/tmp/fc; uwsgi_temp_path $RUN/tmp/uw; scgi_temp_path $RUN/tmp/sc;"
render() {  # template output [sidecar port] [admin port]
  sed -e "s|@RUN@|$RUN|g" -e "s|@TEMPS@|$TEMPS|g" -e "s|@P_BACKEND@|$P_BACKEND|g" \
      -e "s|@P_HAPROXY@|$P_HAPROXY|g" -e "s|@P_NGINX@|$P_NGINX|g" \
      -e "s|@P_SIDECAR@|${3:-}|g" -e "s|@P_ADMIN@|${4:-}|g" "$HERE/proxy/$1" > "$RUN/$2"
}
render backend.conf.in backend.conf
render haproxy.cfg.in haproxy.cfg
render nginxproxy.conf.in nginxproxy.conf
render sidecar.toml.in sidecar.toml $P_SIDECAR $P_ADMIN
render sidecar-all.toml.in sidecar-all.toml $P_SIDECAR_ALL $P_ADMIN_ALL
render sidecar-qod.toml.in sidecar-qod.toml $P_SIDECAR_QOD $P_ADMIN_QOD
"$SIDECAR" check "$RUN/sidecar.toml" >/dev/null
"$SIDECAR" check "$RUN/sidecar-qod.toml" >/dev/null
"$SIDECAR" check "$RUN/sidecar-all.toml" >/dev/null
if [ -n "$SIDECAR_B" ]; then
  render sidecar.toml.in sidecar-b.toml $P_SIDECAR_B $P_ADMIN_B
  # An older binary may not know a newer setting: SIDECAR_B_SED='/worker_threads/d' edits its copy.
  [ -z "${SIDECAR_B_SED:-}" ] || sed -i -e "$SIDECAR_B_SED" "$RUN/sidecar-b.toml"
  "$SIDECAR_B" check "$RUN/sidecar-b.toml" >/dev/null
fi

taskset -c "$CPU_BACKEND" nginx -c "$RUN/backend.conf" -e "$RUN/backend.err" & PID[backend]=$!
for t in $TARGETS; do case $t in
  direct) ;;
  haproxy) taskset -c "$CPU_PROXY" haproxy -db -f "$RUN/haproxy.cfg" >"$RUN/haproxy.log" 2>&1 &
           PID[haproxy]=$! ;;
  nginx) taskset -c "$CPU_PROXY" nginx -c "$RUN/nginxproxy.conf" -e "$RUN/nginxproxy.err" &
         PID[nginx]=$! ;;
  sidecar) taskset -c "$CPU_PROXY" "$SIDECAR" run "$RUN/sidecar.toml" >"$RUN/sidecar.log" 2>&1 &
           PID[sidecar]=$! ;;
  sidecar-all) taskset -c "$CPU_PROXY" "$SIDECAR" run "$RUN/sidecar-all.toml" >"$RUN/sidecar-all.log" 2>&1 &
               PID[sidecar-all]=$! ;;
  sidecar-qod) taskset -c "$CPU_PROXY" "$SIDECAR" run "$RUN/sidecar-qod.toml" >"$RUN/sidecar-qod.log" 2>&1 &
               PID[sidecar-qod]=$! ;;
  sidecar-b) [ -n "$SIDECAR_B" ] || { echo "target sidecar-b needs SIDECAR_B=path" >&2; exit 2; }
             taskset -c "$CPU_PROXY" "$SIDECAR_B" run "$RUN/sidecar-b.toml" >"$RUN/sidecar-b.log" 2>&1 &
             PID[sidecar-b]=$! ;;
  *) echo "unknown target $t" >&2; exit 2 ;;
esac; done

for t in $TARGETS; do
  case $t in sidecar) adm=$P_ADMIN ;; sidecar-all) adm=$P_ADMIN_ALL ;; sidecar-b) adm=$P_ADMIN_B ;; sidecar-qod) adm=$P_ADMIN_QOD ;; *) adm= ;; esac
  for i in $(seq 100); do
    [ -z "$adm" ] && break
    curl -sf -o /dev/null "http://127.0.0.1:$adm/ready" && break
    [ "$i" = 100 ] && { echo "$t: /ready never answered" >&2; exit 1; }
    sleep 0.1
  done
  for s in $SIZES; do
    want="200 $( [ "$s" = 1k ] && echo 1024 || echo 65536 )"; n=
    for _ in $(seq 100); do
      n=$(curl -s -o /dev/null -w '%{http_code} %{size_download}' "http://127.0.0.1:${PORT[$t]}/$s" || true)
      [ "$n" = "$want" ] && break
      sleep 0.1
    done
    [ "$n" = "$want" ] || { echo "$t /$s not serving (got '$n')" >&2; exit 1; }
  done
done

# ---------------------------------------------------------------------------------------------
# 3. Measurement helpers
HZ=$(getconf CLK_TCK)
tree() { echo "$1 $(pgrep -P "$1" || true)"; }  # a process and its direct children (nginx workers)
ticks() {  # utime+stime of the process tree (all threads), clock ticks
  local sum=0 c
  for c in $(tree "$1"); do
    [ -r "/proc/$c/stat" ] && sum=$((sum + $(awk '{print $14+$15}' "/proc/$c/stat")))
  done
  echo $sum
}
sticks() {  # stime alone (kernel share) of the process tree, clock ticks
  local sum=0 c
  for c in $(tree "$1"); do
    [ -r "/proc/$c/stat" ] && sum=$((sum + $(awk '{print $15}' "/proc/$c/stat")))
  done
  echo $sum
}
hwm_kib() {  # peak RSS (VmHWM) summed over the process tree, KiB
  local sum=0 c v
  for c in $(tree "$1"); do
    v=$(awk '/^VmHWM:/{print $2}' "/proc/$c/status" 2>/dev/null || true)
    sum=$((sum + ${v:-0}))
  done
  echo $sum
}
sysbusy() { awk '/^cpu /{print $2+$3+$4+$7+$8, $9}' /proc/stat; }  # busy and steal ticks, all CPUs
wait_quiet() {  # up to QUIET_WAIT s for a 1-s window with < 0.15 CPU-s of load on the machine
  local a b
  for _ in $(seq "${QUIET_WAIT:-30}"); do
    a=$(sysbusy); sleep 1; b=$(sysbusy)
    [ $(( ${b%% *} - ${a%% *} )) -lt $(( HZ * 15 / 100 )) ] && return 0
  done
  echo "warning: machine not quiet before the run (other load on the VM?)" >&2
}
to_us() { awk -v v="$1" 'BEGIN{ if (v ~ /us$/) {sub(/us/,"",v); print v+0}
  else if (v ~ /ms$/) {sub(/ms/,"",v); print v*1000} else if (v ~ /s$/) {sub(/s/,"",v); print v*1e6}
  else print "NA" }'; }
proxy_of() { [ "$1" = direct ] && echo "" || echo "${PID[$1]}"; }

TSV=$OUT/wrk.tsv
echo -e "layout\trep\tsize\ttarget\trps\tp50_us\tp90_us\tp99_us\treqs\terrs\tproxy_cpu_s\tbackend_cpu_s\tload_cpu_s\tproxy_cpu_us_per_req\tbackend_cpu_us_per_req\tproxy_hwm_kib\tother_cpu_s\tsteal_s\tproxy_sys_us_per_req" > "$TSV"
TIMEFORMAT='%U %S'
run_wrk() {  # rep size target [warm]
  local rep=$1 s=$2 t=$3 warm=${4:-} d=$DUR pp
  pp=$(proxy_of "$t")
  [ -n "$warm" ] && d=$WARM
  [ -z "$warm" ] && wait_quiet
  local pb=0 bb sb pa=0 ba sa psb=0 psa=0
  [ -n "$pp" ] && { pb=$(ticks "$pp"); psb=$(sticks "$pp"); }
  bb=$(ticks "${PID[backend]}"); sb=$(sysbusy)
  { time taskset -c "$CPU_LOAD" wrk -t1 -c"$CONNS" -d"${d}s" --latency \
      "http://127.0.0.1:${PORT[$t]}/$s" >"$RUN/wrk.out" 2>&1 ; } 2>"$RUN/time.out"
  [ -n "$warm" ] && return 0
  [ -n "$pp" ] && { pa=$(ticks "$pp"); psa=$(sticks "$pp"); }
  ba=$(ticks "${PID[backend]}"); sa=$(sysbusy)
  cp "$RUN/wrk.out" "$OUT/wrk-$rep-$s-$t.txt"
  local rps p50 p90 p99 reqs errs lcpu pcpu bcpu per bper hwm other steal
  rps=$(awk '/^Requests\/sec/{print $2}' "$RUN/wrk.out")
  p50=$(to_us "$(awk '$1=="50%"{print $2}' "$RUN/wrk.out")")
  p90=$(to_us "$(awk '$1=="90%"{print $2}' "$RUN/wrk.out")")
  p99=$(to_us "$(awk '$1=="99%"{print $2}' "$RUN/wrk.out")")
  reqs=$(awk '/requests in/{print $1}' "$RUN/wrk.out")
  errs=$(awk '/Non-2xx/{n+=$NF} /Socket errors/{gsub(",","");n+=$4+$6+$8+$10} END{print n+0}' "$RUN/wrk.out")
  lcpu=$(awk '{printf "%.2f", $1+$2}' "$RUN/time.out")
  pcpu=$(awk -v a="$pa" -v b="$pb" -v hz="$HZ" 'BEGIN{printf "%.2f",(a-b)/hz}')
  bcpu=$(awk -v a="$ba" -v b="$bb" -v hz="$HZ" 'BEGIN{printf "%.2f",(a-b)/hz}')
  per=$(awk -v c="$pcpu" -v r="$reqs" 'BEGIN{ if (r>0) printf "%.2f", c*1e6/r; else print "NA"}')
  bper=$(awk -v c="$bcpu" -v r="$reqs" 'BEGIN{ if (r>0) printf "%.2f", c*1e6/r; else print "NA"}')
  hwm=NA; [ -n "$pp" ] && hwm=$(hwm_kib "$pp")
  local sper
  sper=$(awk -v a="$psa" -v b="$psb" -v hz="$HZ" -v r="$reqs" 'BEGIN{ if (r>0) printf "%.2f", (a-b)/hz*1e6/r; else print "NA"}')
  # other = CPU used by anything but proxy, backend and wrk during the run (interference check)
  read -r other steal < <(awk -v b="$sb" -v a="$sa" -v m="$pcpu $bcpu $lcpu" -v hz="$HZ" 'BEGIN{
    split(b,B," "); split(a,A," "); split(m,M," ");
    printf "%.2f %.2f\n", (A[1]-B[1])/hz-M[1]-M[2]-M[3], (A[2]-B[2])/hz }')
  echo -e "$LAYOUT\t$rep\t$s\t$t\t$rps\t$p50\t$p90\t$p99\t$reqs\t$errs\t$pcpu\t$bcpu\t$lcpu\t$per\t$bper\t$hwm\t$other\t$steal\t$sper" | tee -a "$TSV"
}

# ---------------------------------------------------------------------------------------------
# 4. Saturation runs (wrk), interleaved rep -> size -> target
START=$(date -u +%FT%TZ)
# Warm-ups right before the first rep of each size, so the peak RSS read after a 1 KiB run of rep 1
# has seen no 64 KiB load yet (VmHWM only grows; the table reports the first rep's value).
for rep in $(seq "$REPS"); do
  for s in $SIZES; do
    [ "$rep" = 1 ] && for t in $TARGETS; do run_wrk 0 "$s" "$t" warm; done
    for t in $TARGETS; do run_wrk "$rep" "$s" "$t"; done
  done
done

# ---------------------------------------------------------------------------------------------
# 5. Fixed-rate runs (oha -q, latency corrected for coordinated omission)
OTSV=$OUT/oha.tsv
echo -e "layout\trep\tsize\ttarget\trate\tachieved_rps\tp50_us\tp90_us\tp99_us\tp999_us\tsuccess\tproxy_cpu_us_per_req\tproxy_hwm_kib" > "$OTSV"
if [ "$RATE" -gt 0 ]; then
  for rep in $(seq "$REPS"); do for t in $TARGETS; do
    wait_quiet
    pp=$(proxy_of "$t"); pb=0; [ -n "$pp" ] && pb=$(ticks "$pp")
    taskset -c "$CPU_LOAD" oha -z "${DUR}s" -q "$RATE" -c "$OHA_CONNS" --latency-correction --no-tui \
      --output-format json "http://127.0.0.1:${PORT[$t]}/$RATE_SIZE" \
      > "$OUT/oha-$rep-$t.json" 2>"$RUN/oha.err" || cat "$RUN/oha.err" >&2
    pa=0; hwm=NA; [ -n "$pp" ] && { pa=$(ticks "$pp"); hwm=$(hwm_kib "$pp"); }
    $PY "$HERE/proxy/oha_row.py" "$OUT/oha-$rep-$t.json" "$LAYOUT" "$rep" "$RATE_SIZE" "$t" "$RATE" \
      "$(( pa - pb ))" "$HZ" "$hwm" | tee -a "$OTSV"
  done; done
fi
END=$(date -u +%FT%TZ)

# Prometheus snapshot of each sidecar (did any policy act? errors?)
for t in $TARGETS; do case $t in
  sidecar) curl -s "http://127.0.0.1:$P_ADMIN/metrics" > "$OUT/metrics-sidecar.txt" || true ;;
  sidecar-all) curl -s "http://127.0.0.1:$P_ADMIN_ALL/metrics" > "$OUT/metrics-sidecar-all.txt" || true ;;
  sidecar-qod) curl -s "http://127.0.0.1:$P_ADMIN_QOD/metrics" > "$OUT/metrics-sidecar-qod.txt" || true ;;
esac; done
for t in sidecar sidecar-all sidecar-b sidecar-qod; do
  [ -n "${PID[$t]:-}" ] && echo "$t: $(grep -E '^Threads:' "/proc/${PID[$t]}/status" | tr -s '\t ' ' ')" >> "$OUT/threads.txt"
done

# ---------------------------------------------------------------------------------------------
# 6. Optional profile of the plain sidecar at 1 KiB under the same wrk load
if [ "$PROFILE" = 1 ] && [ -n "${PID[sidecar]:-}" ] && have perf; then
  for t in sidecar sidecar-all; do
    [ -n "${PID[$t]:-}" ] || continue
    wait_quiet
    perf record -q -e cpu-clock -F 4000 -g -o "$RUN/perf-$t.data" -p "${PID[$t]}" -- sleep "$DUR" 2>/dev/null &
    prec=$!
    taskset -c "$CPU_LOAD" wrk -t1 -c"$CONNS" -d"${DUR}s" "http://127.0.0.1:${PORT[$t]}/1k" > "$OUT/perf-wrk-$t.txt" 2>&1
    wait $prec || true
    perf report -i "$RUN/perf-$t.data" --no-children --sort dso,symbol --stdio -g none 2>/dev/null \
      | grep -v '^$' | head -400 > "$OUT/perf-$t-flat.txt" || true
    perf report -i "$RUN/perf-$t.data" --children --sort symbol --stdio -g none --percent-limit 1 2>/dev/null \
      | grep -v '^$' | head -300 > "$OUT/perf-$t-children.txt" || true
  done
fi

# ---------------------------------------------------------------------------------------------
# 7. Summary
{
  echo "# Sidecar proxy overhead — $START .. $END"
  echo
  echo "Command: \`$(for v in LAYOUT DUR WARM REPS CONNS RATE OHA_CONNS; do printf '%s=%s ' "$v" "${!v}"; done
    [ "$SIZES" != "1k 64k" ] && printf 'SIZES="%s" ' "$SIZES"
    [ "$TARGETS" != "direct sidecar sidecar-all haproxy nginx" ] && printf 'TARGETS="%s" ' "$TARGETS"
    [ "$BUILD" = pgo ] && printf 'BUILD=pgo '
    [ -n "$SIDECAR_B" ] && printf 'SIDECAR_B=%s ' "$SIDECAR_B")bench/proxy.sh\`"
  echo "Machine: $(nproc) CPUs, $(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo), kernel $(uname -r);" \
       "sidecar binary ${SIDECAR#"$ROOT"/} built $(date -u -r "$SIDECAR" +%FT%TZ) (tree at $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')$(cd "$ROOT" && git diff --quiet -- sidecar 2>/dev/null || echo '+uncommitted sidecar changes'));" \
       "$(haproxy -v 2>/dev/null | head -1 | awk '{print "HAProxy",$3}'), $(nginx -v 2>&1 | sed 's|.*/||;s|^|nginx |'), $(wrk -v 2>&1 | head -1 | awk '{print "wrk",$2}')$(have oha && echo ", $(oha --version)")"
  echo
  $PY "$HERE/proxy/summarize.py" "$TSV" "$OTSV" "$OUT/chart.tsv"
} | tee "$OUT/summary.md"
if have gnuplot; then  # optional chart (apt-get install gnuplot-nox)
  gnuplot -e "tsv='$OUT/chart.tsv'; out='$OUT/overhead.png'" "$HERE/proxy/chart.gp" 2>/dev/null \
    && echo "chart: $OUT/overhead.png"
fi
if [ "$BUILD" = pgo ] || [[ "$SIDECAR" == */pgo/* ]]; then
  export LABEL_SIDECAR="sidecar (PGO)" LABEL_SIDECAR_ALL="sidecar (PGO), all policies" LABEL_B="sidecar (dist, no PGO)"
fi
$PY "$HERE/proxy/chart.py" "$OUT/chart.tsv" "$OUT/overhead.svg" "$(date -u '+%F %H:%M UTC')" \
  && echo "chart: $OUT/overhead.svg" || true
echo "results in $OUT"
