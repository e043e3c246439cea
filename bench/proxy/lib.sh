# Shared by the short proxy scripts (pgo-build.sh, sched-probe.sh): a scratch directory with the
# backend's files, free loopback ports, config templates rendered, and every started process
# stopped on exit. Source it after HERE is set to bench/proxy; register processes in PID[name].
# (bench/proxy.sh predates it and keeps fixed ports and its own clean-up, which also saves logs.)

# A free TCP port on 127.0.0.1 (the kernel picks; the socket is closed before use).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# RUN: a fresh directory holding www/1k, www/64k and nginx's temp paths (TEMPS); cleaned on exit,
# after the processes in PID are stopped (TERM, then KILL after 5 s).
declare -A PID=()
RUN=$(mktemp -d "/tmp/bulwark-${BENCH_NAME:-proxy}.XXXXXX")
mkdir -p "$RUN/www" "$RUN/tmp"
head -c 1024 /dev/zero | tr '\0' 'a' > "$RUN/www/1k"
head -c 65536 /dev/zero | tr '\0' 'b' > "$RUN/www/64k"
TEMPS="client_body_temp_path $RUN/tmp/cb; proxy_temp_path $RUN/tmp/px; fastcgi_temp_path $RUN/tmp/fc; uwsgi_temp_path $RUN/tmp/uw; scgi_temp_path $RUN/tmp/sc;"
_stop_all() {
  local p
  for p in "${PID[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PID[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  done
  rm -rf "$RUN"
}
trap _stop_all EXIT
trap 'exit 130' INT TERM

# render TEMPLATE OUTPUT [SIDECAR_PORT] [ADMIN_PORT]: $HERE/TEMPLATE -> $RUN/OUTPUT, with
# P_BACKEND and (if set) P_HAPROXY filled in.
render() {
  sed -e "s|@RUN@|$RUN|g" -e "s|@TEMPS@|$TEMPS|g" -e "s|@P_BACKEND@|$P_BACKEND|g" \
      -e "s|@P_HAPROXY@|${P_HAPROXY:-}|g" -e "s|@P_SIDECAR@|${3:-}|g" -e "s|@P_ADMIN@|${4:-}|g" \
      "$HERE/$1" > "$RUN/$2"
}
