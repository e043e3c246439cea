#!/usr/bin/env bash
# bench/block/ceph.sh — a throwaway single-host Ceph cluster (1 mon, 1 mgr, N OSDs) for bench/block.sh,
# started by hand from Debian's packages the way vstart.sh does it (no cephadm, no systemd), all on
# 127.0.0.1, every file (config, keyring, daemon data, OSD block files, logs, pid files, sockets)
# under one directory. Recipe and pitfalls: shared/reference/storage-anchors.md §4.3–4.4.
#
#   bench/block/ceph.sh up DIR     bootstrap, create POOL/IMAGE, wait until every PG is active+clean
#   bench/block/ceph.sh pids DIR   pids of the daemons (for CPU accounting)
#   bench/block/ceph.sh down DIR   stop every daemon of DIR (TERM, then KILL after 10 s); DIR stays
#
# After `up`, `CEPH_CONF=DIR/ceph.conf` is all a client (ceph, rbd, fio --ioengine=rbd) needs.
# Environment (defaults):
#   CEPH_MON_PORT=13300      msgr2 port of the monitor (not 3300, to stay out of a real cluster's way)
#   CEPH_OSDS=3  CEPH_STORE=bluestore (or memstore: RAM, not durable)  CEPH_OSD_BYTES=4294967296
#   CEPH_DEVICE_CLASS=auto   auto: what bluestore detects (a virtio disk says rotational=1 → hdd
#                            defaults); ssd|hdd: bluestore_debug_enforce_settings + the CRUSH class
#   CEPH_PG=32  POOL=bench  IMAGE=img  IMAGE_SIZE=256M   pool size 3, min_size 2, failure domain osd
#   CEPH_UP_TIMEOUT=180      seconds for the whole bootstrap
set -euo pipefail

cmd=${1:-}; DIR=${2:-}
if [ -z "$cmd" ] || [ -z "$DIR" ]; then echo "usage: $0 up|pids|down DIR" >&2; exit 2; fi
DIR=$(mkdir -p "$DIR" && cd "$DIR" && pwd)
CONF=$DIR/ceph.conf
MON_PORT=${CEPH_MON_PORT:-13300}
OSDS=${CEPH_OSDS:-3}
STORE=${CEPH_STORE:-bluestore}
OSD_BYTES=${CEPH_OSD_BYTES:-4294967296}
DEVICE_CLASS=${CEPH_DEVICE_CLASS:-auto}
PG=${CEPH_PG:-32}
POOL=${POOL:-bench}; IMAGE=${IMAGE:-img}; IMAGE_SIZE=${IMAGE_SIZE:-256M}
UP_TIMEOUT=${CEPH_UP_TIMEOUT:-180}

say() { echo "ceph: $*" >&2; }
die() { say "$*"; exit 1; }
# Every CLI call is bounded: an unreachable monitor otherwise makes `ceph` wait forever.
c() { timeout 60 ceph -c "$CONF" --connect-timeout 30 "$@"; }

# Daemons of this DIR: pid files first, then any process whose command line names our config
# (a daemon that has forked but not yet written its pid file). Never matches another cluster.
pids() {
  local f p seen=" "
  for f in "$DIR"/run/*.pid; do
    [ -s "$f" ] || continue
    p=$(cat "$f")
    if kill -0 "$p" 2>/dev/null && tr '\0' ' ' 2>/dev/null <"/proc/$p/cmdline" | grep -qF -- "$CONF"; then
      seen="$seen$p "
    fi
  done
  for f in /proc/[0-9]*/cmdline; do
    p=${f#/proc/}; p=${p%/cmdline}
    [[ "$seen" == *" $p "* ]] && continue
    case $(tr '\0' ' ' 2>/dev/null <"$f") in
      ceph-mon\ *"-c $CONF "* | ceph-mgr\ *"-c $CONF "* | ceph-osd\ *"-c $CONF "* | \
      /usr/bin/ceph-*"-c $CONF "*) seen="$seen$p " ;;
    esac
  done
  # shellcheck disable=SC2086 # one line, single spaces
  echo $seen
}

down() {
  local ps p
  ps=$(pids)
  [ -n "$ps" ] || return 0
  for p in $ps; do kill -TERM "$p" 2>/dev/null || true; done
  for _ in $(seq 100); do
    local alive=0
    for p in $ps; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && return 0
    sleep 0.1
  done
  for p in $ps; do kill -KILL "$p" 2>/dev/null || true; done
}

up() {
  [ ! -e "$CONF" ] || die "$DIR already holds a cluster; use a fresh directory"
  if ss -Hltn "sport = :$MON_PORT" | grep -q .; then die "port $MON_PORT is busy (CEPH_MON_PORT=...)"; fi
  local deadline=$((SECONDS + UP_TIMEOUT)) fsid
  fsid=$(uuidgen)
  mkdir -p "$DIR/run" "$DIR/log" "$DIR/crash"
  {
    echo "[global]"
    echo "fsid = $fsid"
    echo "mon host = v2:127.0.0.1:$MON_PORT"
    echo "public network = 127.0.0.0/8"
    echo "auth cluster required = none"
    echo "auth service required = none"
    echo "auth client required = none"
    echo "auth allow insecure global id reclaim = false"
    echo "keyring = $DIR/keyring"
    echo "run dir = $DIR/run"
    echo "pid file = $DIR/run/\$name.pid"
    echo "admin socket = $DIR/run/\$name.asok"
    echo "log file = $DIR/log/\$name.log"
    echo "crash dir = $DIR/crash"
    echo "mon data = $DIR/\$name"
    echo "mgr data = $DIR/\$name"
    echo "osd data = $DIR/\$name"
    echo "osd pool default size = 3"
    echo "osd pool default min size = 2"
    echo "osd crush chooseleaf type = 0"      # one host: replicas on distinct OSDs
    echo "osd pool default pg autoscale mode = off"
    echo "mon allow pool delete = true"
    echo "mon data avail warn = 1"            # the shared root fs is < 30 % free
    echo "mon warn on pool no redundancy = false"
    echo "osd objectstore = $STORE"
    if [ "$STORE" = bluestore ]; then
      echo "bluestore block create = true"
      echo "bluestore block size = $OSD_BYTES"
    else
      echo "memstore device bytes = $OSD_BYTES"
    fi
    case $DEVICE_CLASS in
      auto) ;;
      ssd|hdd) echo "bluestore debug enforce settings = $DEVICE_CLASS" ;;
      *) die "CEPH_DEVICE_CLASS must be auto, ssd or hdd" ;;
    esac
    echo "osd memory target = 1073741824"     # 3 OSDs on a shared VM; the default is 4 GiB each
    echo "[client]"
    echo "rbd cache = false"   # no client-side write-back/read cache: every ack comes from the OSDs
  } >"$CONF"

  ceph-authtool --create-keyring "$DIR/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
  ceph-authtool "$DIR/keyring" --gen-key -n client.admin --cap mon 'allow *' --cap osd 'allow *' \
    --cap mgr 'allow *' --cap mds 'allow *' >/dev/null
  monmaptool --create --addv a "[v2:127.0.0.1:$MON_PORT]" --fsid "$fsid" "$DIR/monmap" >/dev/null
  ceph-mon -c "$CONF" --mkfs -i a --monmap "$DIR/monmap" --keyring "$DIR/keyring"
  ceph-mon -c "$CONF" -i a                   # daemonizes; pid file in run/
  until c mon stat >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "monitor did not answer; see $DIR/log/mon.a.log"
    sleep 0.5
  done
  mkdir -p "$DIR/mgr.x"
  ceph-mgr -c "$CONF" -i x
  local uuid id
  for _ in $(seq "$OSDS"); do
    uuid=$(uuidgen)
    id=$(c osd new "$uuid")
    mkdir -p "$DIR/osd.$id"
    ceph-osd -c "$CONF" -i "$id" --mkfs --osd-uuid "$uuid" >"$DIR/log/osd.$id.mkfs.out" 2>&1 ||
      { tail -20 "$DIR/log/osd.$id.mkfs.out" >&2; die "osd.$id mkfs failed"; }
    if [ "$DEVICE_CLASS" != auto ]; then
      c osd crush rm-device-class "osd.$id" >/dev/null 2>&1 || true
      c osd crush set-device-class "$DEVICE_CLASS" "osd.$id" >/dev/null 2>&1 || true
    fi
    ceph-osd -c "$CONF" -i "$id" 2>>"$DIR/log/osd.$id.start.out"   # its pre-fork chatter
  done
  until [ "$(c osd stat -f json 2>/dev/null | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["num_up_osds"], d["num_in_osds"])' 2>/dev/null)" = "$OSDS $OSDS" ]; do
    ((SECONDS < deadline)) || die "OSDs not up+in; see $DIR/log/osd.*.log"
    sleep 0.5
  done
  c osd pool create "$POOL" "$PG" "$PG" replicated >/dev/null 2>&1
  c osd pool set "$POOL" size 3 --yes-i-really-mean-it >/dev/null 2>&1
  c osd pool set "$POOL" min_size 2 >/dev/null 2>&1
  timeout 60 rbd -c "$CONF" pool init "$POOL"
  timeout 60 rbd -c "$CONF" create "$POOL/$IMAGE" --size "$IMAGE_SIZE"
  # Every PG active+clean (the mgr reports PG stats; its first report may take a few seconds).
  local st
  while :; do
    st=$(c pg stat -f json 2>/dev/null | python3 -c '
import json, sys
d = json.load(sys.stdin)
d = d.get("pg_summary", d)
by = {s["name"]: s["num"] for s in d.get("num_pg_by_state", [])}
n = d.get("num_pgs", 0)
print("ok" if n and by.get("active+clean", 0) == n else f"{n} pgs {by}")' 2>/dev/null || echo "no answer")
    [ "$st" = ok ] && break
    ((SECONDS < deadline)) || die "PGs not active+clean ($st)"
    sleep 1
  done
  say "up: $(c -v 2>/dev/null | cut -d' ' -f1-3), $OSDS $STORE OSDs ($OSD_BYTES B), pool $POOL size 3 min_size 2 pg $PG, image $POOL/$IMAGE $IMAGE_SIZE"
}

case $cmd in
  up) up ;;
  down) down ;;
  pids) pids ;;
  *) echo "usage: $0 up|pids|down DIR" >&2; exit 2 ;;
esac
