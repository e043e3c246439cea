#!/usr/bin/env bash
# Where a proxy's kernel time goes, per request: CPU (user/kernel), context switches, wake-ups it
# causes and cross-core wake-ups (IPIs), and TCP segments — for the sidecar (and an optional
# second build) beside HAProxy, same backend and layout A as bench/proxy.sh, short runs.
#
#   bench/proxy/sched-probe.sh                                 # ~1 min: 2 reps x 5 s per target
#   SIDECAR_B=/tmp/old-sidecar ENV_B="X=1" REPS=3 bench/proxy/sched-probe.sh
#   EVENTS=0 bench/proxy/sched-probe.sh                        # CPU and switches only (no perf)
#
# Counts come from /proc/PID/{stat,status} and, with EVENTS=1 (default), `perf stat -p PID` of
# the tracepoints sched:sched_waking, ipi:ipi_send_cpu, sched:sched_switch and raw_syscalls:sys_enter
# (perf's own overhead inflates that run's CPU a little; compare targets within one run), plus
# `nstat` deltas for segments. Needs nginx, haproxy, wrk, perf (linux-perf), nstat (iproute2).
# Safety: only 127.0.0.1, free ports, bounded runs, processes stopped on exit.
set -euo pipefail
if [ -z "${_SCHED_PROBE_BOUNDED:-}" ]; then
  exec env _SCHED_PROBE_BOUNDED=1 timeout -k 10 "${TIMEOUT:-900}" "$0" "$@"
fi
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SIDECAR=${SIDECAR:-$ROOT/target/dist/sidecar}
SIDECAR_B=${SIDECAR_B:-}
DUR=${DUR:-5}; REPS=${REPS:-2}; SIZE=${SIZE:-1k}; EVENTS=${EVENTS:-1}
TARGETS=${TARGETS:-"sidecar $([ -n "$SIDECAR_B" ] && echo sidecar-b || true) haproxy"}
for t in nginx haproxy wrk nstat; do
  command -v $t >/dev/null || { echo "needs $t (bench/proxy.sh installs nginx, haproxy, wrk)" >&2; exit 1; }
done
[ "$EVENTS" = 0 ] || command -v perf >/dev/null || { echo "needs perf (apt-get install linux-perf) or EVENTS=0" >&2; exit 1; }

BENCH_NAME=sched-probe
. "$HERE/lib.sh"
P_BACKEND=$(free_port); P_HAPROXY=$(free_port); P_SIDECAR=$(free_port); P_ADMIN=$(free_port)
P_B=$(free_port); P_ADMIN_B=$(free_port)
render backend.conf.in backend.conf
render haproxy.cfg.in haproxy.cfg
render sidecar.toml.in sidecar.toml "$P_SIDECAR" "$P_ADMIN"
render sidecar.toml.in sidecar-b.toml "$P_B" "$P_ADMIN_B"
declare -A PORT=([haproxy]=$P_HAPROXY [sidecar]=$P_SIDECAR [sidecar-b]=$P_B)
taskset -c 0 nginx -c "$RUN/backend.conf" -e "$RUN/backend.err" & PID[backend]=$!
for t in $TARGETS; do case $t in
  haproxy) taskset -c 0 haproxy -db -f "$RUN/haproxy.cfg" >"$RUN/haproxy.log" 2>&1 & PID[haproxy]=$! ;;
  sidecar) env ${ENV_A:-_=} taskset -c 0 "$SIDECAR" run "$RUN/sidecar.toml" >"$RUN/a.log" 2>&1 & PID[sidecar]=$! ;;
  sidecar-b) env ${ENV_B:-_=} taskset -c 0 "$SIDECAR_B" run "$RUN/sidecar-b.toml" >"$RUN/b.log" 2>&1 & PID[sidecar-b]=$! ;;
  *) echo "unknown target $t (sidecar sidecar-b haproxy)" >&2; exit 2 ;;
esac; done
for t in $TARGETS; do
  for i in $(seq 100); do
    curl -sf -o /dev/null "http://127.0.0.1:${PORT[$t]}/$SIZE" && break
    [ "$i" = 100 ] && { echo "$t is not serving" >&2; exit 1; }
    sleep 0.1
  done
done

st() { echo "$(awk '{print $14, $15}' "/proc/$1/stat") $(awk '/^voluntary_ctxt/{v=$2} /^nonvoluntary_ctxt/{n=$2} END{print v, n}' "/proc/$1/status")"; }
echo "per request, layout A (proxy and backend on CPU0, wrk -t1 -c64 on CPU1), $SIZE, ${DUR}s runs"
for rep in $(seq "$REPS"); do for t in $TARGETS; do
  p=${PID[$t]}
  taskset -c 1 wrk -t1 -c64 -d1s "http://127.0.0.1:${PORT[$t]}/$SIZE" >/dev/null   # warm-up
  read -r u0 s0 v0 n0 < <(st "$p")
  pp=
  if [ "$EVENTS" = 1 ]; then
    perf stat -x, -e sched:sched_waking,ipi:ipi_send_cpu,sched:sched_switch,raw_syscalls:sys_enter \
      -p "$p" -o "$RUN/pstat" -- sleep "$DUR" 2>/dev/null & pp=$!
  fi
  nstat -n
  out=$(taskset -c 1 wrk -t1 -c64 -d"${DUR}s" "http://127.0.0.1:${PORT[$t]}/$SIZE")
  nstat -z 2>/dev/null > "$RUN/nstat"
  [ -z "$pp" ] || wait "$pp" || true
  read -r u1 s1 v1 n1 < <(st "$p")
  reqs=$(echo "$out" | awk '/requests in/{print $1}')
  rps=$(echo "$out" | awk '/Requests\/sec/{print $2}')
  hz=$(getconf CLK_TCK)
  ev=""
  if [ "$EVENTS" = 1 ]; then
    ev=$(awk -F, -v r="$reqs" '/^[0-9]/{split($3,a,":"); printf "  %s %.3f", a[2], $1/r}' "$RUN/pstat")
  fi
  segs=$(awk -v r="$reqs" '$1=="TcpOutSegs"{printf "%.2f", $2/r}' "$RUN/nstat")
  awk -v t="$t" -v r="$reqs" -v rps="$rps" -v hz="$hz" -v u=$((u1-u0)) -v s=$((s1-s0)) -v v=$((v1-v0)) \
      -v n=$((n1-n0)) -v rep="$rep" -v ev="$ev" -v segs="$segs" 'BEGIN{
    printf "%-9s rep %d  %6.0f req/s  CPU %.2f µs (user %.2f, kernel %.2f)  switches vol %.3f invol %.3f  segments %s%s\n",
      t, rep, rps, (u+s)*1e6/hz/r, u*1e6/hz/r, s*1e6/hz/r, v/r, n/r, segs, ev }'
done; done
