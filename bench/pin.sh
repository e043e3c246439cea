#!/usr/bin/env bash
# bench/pin.sh — add/cat throughput of one release-build storage node over loopback, beside
# `sha256sum` (and `openssl dgst -sha256`, when present) of the same file as the hashing limit, all
# in the same run.
#
#   bench/pin.sh                 # 256 MiB file, 3 runs per measurement
#   BENCH_MIB=64 BENCH_RUNS=5 bench/pin.sh
#   BULWARK_NO_BUILD=1 bench/pin.sh   # use target/release/storage as it is
#
# It starts a throwaway node in a temporary directory on free 127.0.0.1 high ports and removes both
# when it exits. Each measurement is repeated BENCH_RUNS times; the table shows the median.
# MB/s = 10^6 bytes per second of file content. Results are recorded in docs/BENCHMARKS.md.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
BIN="$REPO/target/release/storage"
MIB="${BENCH_MIB:-256}"
RUNS="${BENCH_RUNS:-3}"

if [[ "${BULWARK_NO_BUILD:-}" != 1 ]]; then
	echo "building: cargo build --release -p storage" >&2
	(cd "$REPO" && cargo build --release -p storage) >&2
fi
[[ -x "$BIN" ]] || {
	echo "bench: $BIN is missing" >&2
	exit 1
}

TMP="$(mktemp -d "${TMPDIR:-/tmp}/bulwark-bench.XXXXXX")"
PID=""
cleanup() {
	if [[ -n "$PID" ]] && kill -0 "$PID" 2>/dev/null; then
		kill -TERM "$PID" 2>/dev/null || true
		for _ in $(seq 1 50); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$PID" 2>/dev/null || true
	fi
	rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_busy() { timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

# Four consecutive free ports in 20000..59999.
for _ in $(seq 1 20); do
	BASE=$((20000 + (RANDOM % 4000) * 10))
	free=1
	for p in $BASE $((BASE + 1)) $((BASE + 2)) $((BASE + 3)); do
		if port_busy "$p"; then free=0; fi
	done
	((free)) && break
done
((free)) || {
	echo "bench: no free ports found" >&2
	exit 1
}
RPC="127.0.0.1:$BASE"

"$BIN" init --data "$TMP/node" --peername bench --rpc "$RPC" --gateway "127.0.0.1:$((BASE + 1))" \
	--cluster "127.0.0.1:$((BASE + 2))" --peer-listen "127.0.0.1:$((BASE + 3))" >/dev/null
"$BIN" daemon --data "$TMP/node" >"$TMP/node.log" 2>&1 &
PID=$!
for _ in $(seq 1 100); do
	"$BIN" --api "$RPC" id >/dev/null 2>&1 && break
	kill -0 "$PID" 2>/dev/null || {
		cat "$TMP/node.log" >&2
		exit 1
	}
	sleep 0.1
done
S=("$BIN" --api "$RPC" --cluster-api "127.0.0.1:$((BASE + 2))")

FILE="$TMP/data.bin"
echo "generating a $MIB MiB file from /dev/urandom …" >&2
head -c "$((MIB << 20))" /dev/urandom >"$FILE"
BYTES=$((MIB << 20))

now() { date +%s%N; }
# time_ms CMD… — runs CMD with stdout discarded, prints elapsed milliseconds.
time_ms() {
	local t0 t1
	t0=$(now)
	"$@" >/dev/null
	t1=$(now)
	echo $(((t1 - t0) / 1000000))
}
median() { printf '%s\n' "$@" | sort -n | sed -n "$(((${#} + 1) / 2))p"; }
mbps() { awk -v b="$BYTES" -v ms="$1" 'BEGIN { printf "%.0f", (ms > 0 ? b / (ms / 1000) / 1e6 : 0) }'; }

wait_pinned() {
	for _ in $(seq 1 600); do
		"${S[@]}" status "$1" | grep -q ': PINNED ' && return 0
		sleep 0.1
	done
	echo "bench: $1 did not reach PINNED" >&2
	exit 1
}

cat_cli() { "${S[@]}" cat "$CID"; }
cat_curl() { curl -sf -X POST "http://$RPC/api/v0/cat?arg=$CID" -o /dev/null; }

declare -A RES
ORDER=()
measure() {
	local label="$1"
	shift
	local runs=() ms
	for _ in $(seq 1 "$RUNS"); do
		ms=$(time_ms "$@")
		runs+=("$ms")
		[[ "$label" == "storage add -q" ]] && wait_pinned "$CID"
	done
	RES[$label]="$(median "${runs[@]}") ${runs[*]}"
	ORDER+=("$label")
	echo "  $label: ${runs[*]} ms" >&2
}

LOAD="$(cut -d' ' -f1-3 /proc/loadavg)"
echo "measuring ($RUNS runs each) …" >&2
measure "sha256sum" sha256sum "$FILE"
# coreutils' sha256sum may not use the CPU's SHA extensions; OpenSSL does, as the sha2 crate does.
HAVE_OPENSSL=0
if command -v openssl >/dev/null; then
	HAVE_OPENSSL=1
	measure "openssl dgst -sha256" openssl dgst -sha256 "$FILE"
fi
measure "storage add -q --only-hash" "${S[@]}" add -q --only-hash "$FILE"
CID="$("${S[@]}" add -q "$FILE")"
wait_pinned "$CID"
# The same content again: identical CID, blocks rewritten, pin already in place.
measure "storage add -q" "${S[@]}" add -q "$FILE"
measure "storage cat CID > /dev/null" cat_cli
measure "curl -X POST /api/v0/cat?arg=CID" cat_curl

# Correctness check (not timed): what comes back is what went in.
want="$(sha256sum <"$FILE" | cut -d' ' -f1)"
got="$("${S[@]}" cat "$CID" | sha256sum | cut -d' ' -f1)"
[[ "$want" == "$got" ]] || {
	echo "bench: cat returned different bytes ($got != $want)" >&2
	exit 1
}

SHA_MS="${RES[sha256sum]%% *}"
OSSL_MS="$SHA_MS"
((HAVE_OPENSSL)) && OSSL_MS="${RES[openssl dgst -sha256]%% *}"
echo
echo "bench/pin.sh — $(date -u +%Y-%m-%dT%H:%MZ), ${MIB} MiB random file, median of $RUNS runs"
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')$(grep -qw sha_ni /proc/cpuinfo && echo ' (sha_ni)'), kernel $(uname -r), load average at start $LOAD"
echo "CID: $CID"
echo
echo "| operation | median s | MB/s | vs sha256sum | vs openssl | runs (ms) |"
echo "|---|---:|---:|---:|---:|---|"
for label in "${ORDER[@]}"; do
	read -r med rest <<<"${RES[$label]}"
	ratio=$(awk -v a="$SHA_MS" -v b="$med" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
	ratio2=$(awk -v a="$OSSL_MS" -v b="$med" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
	((HAVE_OPENSSL)) || ratio2="-"
	# shellcheck disable=SC2016 # literal backticks for markdown
	printf '| `%s` | %.2f | %s | %s× | %s× | %s |\n' "$label" "$(awk -v m="$med" 'BEGIN{print m/1000}')" \
		"$(mbps "$med")" "$ratio" "$ratio2" "$rest"
done
