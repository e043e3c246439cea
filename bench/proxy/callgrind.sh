#!/usr/bin/env bash
# Deterministic user-space instruction counts per proxied request (valgrind --tool=callgrind), for
# the sidecar (plain and all policies) and HAProxy, against the same nginx backend as bench/proxy.sh.
# Unlike CPU time this does not move with other load on the VM, so it is the way to check a fix here
# (kernel work -- syscalls, loopback TCP -- is not counted).
#
#   bench/proxy/callgrind.sh                 # N=20000 requests of /1k per target, 16 connections (~2 min)
#   N=5000 SIZE=64k TARGETS="sidecar" bench/proxy/callgrind.sh
#   VGARGS="--cache-sim=yes --branch-sim=yes" bench/proxy/callgrind.sh   # + simulated cache/branch misses
#
# Instrumentation is switched on only for the N measured requests (after a warm-up), so start-up is
# excluded. Output: a table and, per target, callgrind.out.* plus a callgrind_annotate top list in $OUT.
# Needs valgrind, nginx, oha (bench/proxy.sh installs the last two), haproxy for that target.
set -euo pipefail
if [ -z "${_CG_BOUNDED:-}" ]; then exec env _CG_BOUNDED=1 timeout -k 10 "${TIMEOUT:-1200}" "$0" "$@"; fi
HERE=$(cd "$(dirname "$0")" && pwd); ROOT=$(cd "$HERE/../.." && pwd)
N=${N:-20000}; WARMN=${WARMN:-2000}; C=${C:-16}; SIZE=${SIZE:-1k}
TARGETS=${TARGETS:-"sidecar sidecar-all haproxy"}
SIDECAR=${SIDECAR:-$ROOT/target/dist/sidecar}
OUT=${OUT:-$HERE/results/callgrind-$(date -u +%Y%m%dT%H%M%SZ)}
P_BACKEND=18090; P_PROXY=18091; P_ADMIN=19911
for t in valgrind callgrind_control nginx oha; do command -v $t >/dev/null || { echo "need $t" >&2; exit 1; }; done
for p in $P_BACKEND $P_PROXY $P_ADMIN; do
  if ss -Hltn "sport = :$p" | grep -q .; then echo "port $p is busy" >&2; exit 1; fi
done
RUN=$(mktemp -d /tmp/bulwark-callgrind.XXXXXX); mkdir -p "$OUT" "$RUN/www" "$RUN/tmp"
head -c 1024 /dev/zero | tr '\0' 'a' > "$RUN/www/1k"
head -c 65536 /dev/zero | tr '\0' 'b' > "$RUN/www/64k"
PIDS=()
stop() { local p; for p in "$@"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "$@"; do for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true; done; }
cleanup() { stop "${PIDS[@]}"; rm -rf "$RUN"; }
trap cleanup EXIT; trap 'exit 130' INT TERM

TEMPS="client_body_temp_path $RUN/tmp/cb; proxy_temp_path $RUN/tmp/px; fastcgi_temp_path $RUN/tmp/fc; uwsgi_temp_path $RUN/tmp/uw; scgi_temp_path $RUN/tmp/sc;"
r() { sed -e "s|@RUN@|$RUN|g" -e "s|@TEMPS@|$TEMPS|g" -e "s|@P_BACKEND@|$P_BACKEND|g" \
  -e "s|@P_HAPROXY@|$P_PROXY|g" -e "s|@P_SIDECAR@|$P_PROXY|g" -e "s|@P_ADMIN@|$P_ADMIN|g" "$HERE/$1" > "$RUN/$2"; }
r backend.conf.in backend.conf; r haproxy.cfg.in haproxy.cfg
r sidecar.toml.in sidecar.toml; r sidecar-all.toml.in sidecar-all.toml; r sidecar-qod.toml.in sidecar-qod.toml
nginx -c "$RUN/backend.conf" -e "$RUN/backend.err" & PIDS+=("$!")

echo "| target | requests | instructions (user space) | instructions / request |"
echo "|---|---:|---:|---:|"
for t in $TARGETS; do
  case $t in
    sidecar|sidecar-all|sidecar-qod) cmd=("$SIDECAR" run "$RUN/$t.toml") ;;
    haproxy) cmd=(haproxy -db -f "$RUN/haproxy.cfg") ;;
    *) echo "unknown target $t" >&2; exit 2 ;;
  esac
  # One tokio worker under valgrind (it serialises threads anyway); same as the pinned benchmark.
  TOKIO_WORKER_THREADS=1 valgrind --tool=callgrind --instr-atstart=no --dump-instr=no ${VGARGS:-} \
    --callgrind-out-file="$OUT/callgrind.out.$t" "${cmd[@]}" >"$OUT/valgrind-$t.log" 2>&1 &
  vp=$!; PIDS+=("$vp")
  ok=
  for _ in $(seq 300); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$P_PROXY/$SIZE" || true)" = 200 ] && { ok=1; break; }
    sleep 0.2
  done
  [ -n "$ok" ] || { echo "$t did not come up under valgrind" >&2; tail "$OUT/valgrind-$t.log" >&2; exit 1; }
  oha -n "$WARMN" -c "$C" --no-tui --output-format quiet "http://127.0.0.1:$P_PROXY/$SIZE" >/dev/null 2>&1 || true
  callgrind_control -i on "$vp" >/dev/null
  oha -n "$N" -c "$C" --no-tui --output-format json "http://127.0.0.1:$P_PROXY/$SIZE" > "$OUT/oha-$t.json" 2>/dev/null || true
  callgrind_control -i off "$vp" >/dev/null
  ok200=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["statusCodeDistribution"].get("200",0))' "$OUT/oha-$t.json")
  stop "$vp"; PIDS=("${PIDS[0]}")  # only the backend is left
  ir=$(awk '/^totals:/{t=$2} /^summary:/{s=$2} END{print (t>0?t:s)}' "$OUT/callgrind.out.$t")
  echo "| $t | $ok200 | $ir | $(awk -v a="$ir" -v n="$ok200" 'BEGIN{printf "%.0f", a/n}') |"
  if [ -n "${VGARGS:-}" ]; then  # every simulated event per request (Ir I1mr ILmr Dr D1mr ... Bcm Bim)
    awk -v n="$ok200" '/^events:/{split($0,e," ")} /^totals:/{for(i=2;i<=NF;i++) printf "%s=%.1f ", e[i], $i/n; print ""}' "$OUT/callgrind.out.$t"
  fi
  callgrind_annotate --inclusive=no "$OUT/callgrind.out.$t" 2>/dev/null | head -60 > "$OUT/annotate-$t-self.txt" || true
  callgrind_annotate --inclusive=yes "$OUT/callgrind.out.$t" 2>/dev/null | head -120 > "$OUT/annotate-$t-inclusive.txt" || true
done
echo "raw: $OUT"
