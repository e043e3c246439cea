#!/usr/bin/env bash
# A profile-guided build of the sidecar: the `dist` profile (release + fat LTO), instrumented,
# trained on proxied traffic over loopback, then rebuilt with the profile. Output:
# target/pgo/sidecar (and the merged profile next to it).
#
#   bench/proxy/pgo-build.sh            # ~10 min on 2 cores: two fat-LTO builds and ~40 s of training
#   BUILD=0 bench/proxy/pgo-build.sh    # reuse the instrumented build, retrain and rebuild
#
# Why: the sidecar executes fewer instructions per 1 KiB request than HAProxy but needs more
# cycles for them — its hot path is spread over tokio, hyper, http and one future per policy
# layer, and the simulated caches show twice HAProxy's instruction-cache misses. Profile data lets
# LLVM lay hot code together and inline by measured frequency (docs/BENCHMARKS.md).
#
# The training is what a sidecar carries, not the benchmark alone: GETs of 1 KiB and 64 KiB,
# uploads (content-length and chunked) and HEADs, through the plain config and the one with every
# policy on, plus some refused requests (unknown route, oversized head) — each a few seconds on
# one connection count that is not the benchmark's.
#
# Needs: llvm-profdata of rustc's LLVM (`rustup component add llvm-tools`, done here if missing),
# nginx, wrk and curl (installed with apt if missing, as bench/proxy.sh does).
# Safety: only 127.0.0.1; every load run is bounded; processes are stopped on exit.
set -euo pipefail
if [ -z "${_PGO_BOUNDED:-}" ]; then
  exec env _PGO_BOUNDED=1 timeout -k 10 "${TIMEOUT:-2400}" "$0" "$@"
fi
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BUILD=${BUILD:-1}
GEN_DIR=$ROOT/target/pgo-gen        # instrumented build (its own target dir: other RUSTFLAGS)
USE_DIR=$ROOT/target/pgo-use        # final build
OUT_DIR=$ROOT/target/pgo
DATA=$OUT_DIR/raw
PROFILE=$OUT_DIR/sidecar.profdata
mkdir -p "$OUT_DIR"

have() { command -v "$1" >/dev/null 2>&1; }
sysroot=$(rustc --print sysroot)
host=$(rustc -vV | awk '/^host:/{print $2}')
PROFDATA=$sysroot/lib/rustlib/$host/bin/llvm-profdata
if [ ! -x "$PROFDATA" ]; then
  echo "installing llvm-tools (rustup component, for llvm-profdata)" >&2
  timeout 600 rustup component add llvm-tools >&2
fi
[ -x "$PROFDATA" ] || { echo "no llvm-profdata at $PROFDATA" >&2; exit 1; }
need=()
have nginx || need+=(nginx-light)
have wrk || need+=(wrk)
have curl || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]} (apt)" >&2
  export DEBIAN_FRONTEND=noninteractive
  timeout 300 apt-get update -qq
  timeout 600 apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  (service nginx stop >/dev/null 2>&1 || true)
fi

# 1. Instrumented build.
if [ "$BUILD" = 1 ] || [ ! -x "$GEN_DIR/dist/sidecar" ]; then
  echo "== instrumented build ($GEN_DIR)" >&2
  (cd "$ROOT" && RUSTFLAGS="-Cprofile-generate=$DATA" CARGO_TARGET_DIR=$GEN_DIR \
     cargo build --profile dist -p sidecar --locked --quiet)
fi
GEN=$GEN_DIR/dist/sidecar

# 2. Training run.
rm -rf "$DATA"; mkdir -p "$DATA"
BENCH_NAME=pgo
. "$HERE/lib.sh"
P_BACKEND=$(free_port); P_PLAIN=$(free_port); P_ALL=$(free_port); P_ADM1=$(free_port); P_ADM2=$(free_port)
render backend.conf.in backend.conf
# The backend also takes uploads (answers them with a small body) for the training's POSTs.
sed -i 's|location / { }|location / { } location /up { client_max_body_size 1m; return 200 "ok\\n"; }|' "$RUN/backend.conf"
render sidecar.toml.in plain.toml "$P_PLAIN" "$P_ADM1"
render sidecar-all.toml.in all.toml "$P_ALL" "$P_ADM2"
nginx -c "$RUN/backend.conf" -e "$RUN/backend.err" & PID[backend]=$!
# Each instrumented process writes its own raw profile (%p) when it exits.
LLVM_PROFILE_FILE="$DATA/plain-%p.profraw" "$GEN" run "$RUN/plain.toml" >"$RUN/plain.log" 2>&1 & PID[plain]=$!
LLVM_PROFILE_FILE="$DATA/all-%p.profraw" "$GEN" run "$RUN/all.toml" >"$RUN/all.log" 2>&1 & PID[all]=$!
for a in "$P_ADM1" "$P_ADM2"; do
  for i in $(seq 100); do
    curl -sf -o /dev/null "http://127.0.0.1:$a/ready" && break
    [ "$i" = 100 ] && { echo "sidecar on admin port $a never became ready" >&2; exit 1; }
    sleep 0.1
  done
done
cat > "$RUN/post.lua" <<'EOF'
wrk.method = "POST"
wrk.path = "/up"
wrk.body = string.rep("u", 4096)
wrk.headers["Content-Type"] = "application/octet-stream"
EOF
for port in "$P_PLAIN" "$P_ALL"; do
  echo "== training through 127.0.0.1:$port" >&2
  wrk -t1 -c32 -d4s "http://127.0.0.1:$port/1k" >/dev/null
  wrk -t1 -c32 -d3s "http://127.0.0.1:$port/64k" >/dev/null
  wrk -t1 -c16 -d3s -s "$RUN/post.lua" "http://127.0.0.1:$port/up" >/dev/null
  for _ in $(seq 200); do
    curl -s -o /dev/null -I "http://127.0.0.1:$port/1k"
    curl -s -o /dev/null -H 'transfer-encoding: chunked' --data-binary @"$RUN/www/1k" "http://127.0.0.1:$port/up"
    curl -s -o /dev/null "http://127.0.0.1:$port/missing"
  done
  for _ in $(seq 20); do
    curl -s -o /dev/null -H "x-big: $(head -c 70000 /dev/zero | tr '\0' 'x')" "http://127.0.0.1:$port/1k" || true
  done
  curl -s -o /dev/null --http2-prior-knowledge "http://127.0.0.1:$port/1k" || true
done
# A clean stop writes the profiles.
for n in plain all; do
  kill -TERM "${PID[$n]}"
  for _ in $(seq 100); do kill -0 "${PID[$n]}" 2>/dev/null || break; sleep 0.1; done
  unset "PID[$n]"
done
ls "$DATA"/*.profraw >/dev/null 2>&1 || { echo "the training wrote no profile" >&2; exit 1; }
"$PROFDATA" merge -o "$PROFILE" "$DATA"/*.profraw
echo "== merged profile: $PROFILE ($(du -h "$PROFILE" | cut -f1))" >&2

# 3. Optimised build with the profile.
echo "== profile-guided build ($USE_DIR)" >&2
# Cargo does not see a new profile behind the same RUSTFLAGS: start the dist build over.
(cd "$ROOT" && CARGO_TARGET_DIR=$USE_DIR cargo clean --profile dist --quiet 2>/dev/null || true)
(cd "$ROOT" && RUSTFLAGS="-Cprofile-use=$PROFILE" \
   CARGO_TARGET_DIR=$USE_DIR cargo build --profile dist -p sidecar --locked --quiet)
cp "$USE_DIR/dist/sidecar" "$OUT_DIR/sidecar"
echo "$OUT_DIR/sidecar"
