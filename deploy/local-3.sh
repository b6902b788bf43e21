#!/usr/bin/env bash
# Three raftmesh nodes on loopback, no root needed.
#
#   deploy/local-3.sh up | down [--purge] | status | start N | stop N    (N = 1, 2, 3)
#
#   node N  HTTP 127.0.0.1:808N  gRPC 127.0.0.1:908N  rstmdb 127.0.0.1:740N
#           data STATE/nN  log STATE/nN.log
#
# STATE is ${RAFTMESH_LOCAL_DIR:-./raftmesh-local}. Binary: $RAFTMESH_BIN, else
# ${CARGO_TARGET_DIR:-target}/release/raftmesh (target/ of this repository).
# `up` starts the nodes that are not running and leaves running ones alone
# (it says which, with their pids), then waits until all three are ready;
# so it is safe to repeat, and it also restarts a node that died. `stop N`
# and `down` wait up to RAFTMESH_LOCAL_STOP_S (10) for each node to exit,
# then kill -9 it. `down` keeps the data, so the next `up` continues the
# same cluster (revisions carry on); `down --purge` deletes it.
# Other ports: RAFTMESH_LOCAL_HTTP_PORT / RAFTMESH_LOCAL_GRPC_PORT /
# RAFTMESH_LOCAL_RSTMDB_PORT are node 1's
# (nodes 2 and 3 take the next two). The cluster's membership stores the
# addresses, so the first `up` records them in STATE/ports and later commands
# use those. RAFTMESH_LOCAL_WAIT_S bounds the wait for readiness (30).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${RAFTMESH_LOCAL_DIR:-./raftmesh-local}"
# Absolute and normalised, so that a node's command line names its data dir
# the same way however STATE was spelled (that is how a running node is
# recognised, see is_node).
DIR="$(realpath -m -- "$DIR")"
WAIT_S="${RAFTMESH_LOCAL_WAIT_S:-30}"
STOP_S="${RAFTMESH_LOCAL_STOP_S:-10}"
NODES=(1 2 3)

say() { echo "local-3: $*"; }
die() { echo "local-3: $*" >&2; exit 1; }
usage() { echo "usage: $0 up | down [--purge] | status | start N | stop N   (N = 1, 2, 3)" >&2; exit 2; }

# Ports: recorded at the first `up`, else the environment, else 8081/9081.
HTTP_PORT="${RAFTMESH_LOCAL_HTTP_PORT:-}"
GRPC_PORT="${RAFTMESH_LOCAL_GRPC_PORT:-}"
RSTMDB_PORT="${RAFTMESH_LOCAL_RSTMDB_PORT:-}"
if [ -f "$DIR/ports" ]; then
  read -r rec_http rec_grpc rec_rstmdb <"$DIR/ports" || true
  # A state dir from before rstmdb ports were recorded used the default.
  rec_rstmdb="${rec_rstmdb:-7401}"
  if { [ -n "$HTTP_PORT" ] && [ "$HTTP_PORT" != "$rec_http" ]; } ||
    { [ -n "$GRPC_PORT" ] && [ "$GRPC_PORT" != "$rec_grpc" ]; } ||
    { [ -n "$RSTMDB_PORT" ] && [ "$RSTMDB_PORT" != "$rec_rstmdb" ]; }; then
    die "the cluster in $DIR uses HTTP $rec_http / gRPC $rec_grpc / rstmdb $rec_rstmdb; 'down --purge' before changing ports"
  fi
  HTTP_PORT="$rec_http" GRPC_PORT="$rec_grpc" RSTMDB_PORT="$rec_rstmdb"
fi
HTTP_PORT="${HTTP_PORT:-8081}"
GRPC_PORT="${GRPC_PORT:-9081}"
RSTMDB_PORT="${RSTMDB_PORT:-7401}"
for p in "$HTTP_PORT" "$GRPC_PORT" "$RSTMDB_PORT"; do
  if ! [[ "$p" =~ ^[0-9]+$ ]] || [ "$p" -lt 1 ] || [ "$p" -gt 65533 ]; then die "bad port $p"; fi
done

http_port() { echo $((HTTP_PORT + $1 - 1)); }
grpc_port() { echo $((GRPC_PORT + $1 - 1)); }
rstmdb_port() { echo $((RSTMDB_PORT + $1 - 1)); }
peers() {
  local i out=""
  for i in "${NODES[@]}"; do out="$out${out:+,}$i=127.0.0.1:$(grpc_port "$i")"; done
  echo "$out"
}
# Loopback only, never through a proxy.
http() { curl -sS --noproxy '*' --connect-timeout 1 --max-time 3 "$@"; }
answers() { http -o /dev/null -f "http://127.0.0.1:$(http_port "$1")$2" 2>/dev/null; }
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

find_bin() {
  local bin="${RAFTMESH_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/raftmesh}"
  [ -x "$bin" ] || die "no raftmesh binary at $bin: run 'make release' (or set RAFTMESH_BIN, e.g. to a debug build)"
  echo "$bin"
}

# Is $1 the pid of node $2 of this cluster? Checked on the command line, so a
# recycled pid or another cluster's node is never taken for ours.
# Builtins only: node_pid may scan every process.
is_node() {
  local args=()
  [ -n "$1" ] && [ -r "/proc/$1/cmdline" ] || return 1
  mapfile -d '' -t args 2>/dev/null <"/proc/$1/cmdline" || return 1
  [[ " ${args[*]} " == *raftmesh*" serve --node-id $2 --data-dir $DIR/n$2 "* ]]
}

# The running node's pid, or nothing. A stale pid file (process gone) is
# removed; a node running without one (its pid file lost) is found in /proc.
node_pid() {
  local i="$1" pid="" p
  pid="$(cat "$DIR/n$i.pid" 2>/dev/null || true)"
  if is_node "$pid" "$i"; then echo "$pid"; return; fi
  if [ -n "$pid" ]; then
    say "node $i: stale pid file (pid $pid is gone), removed" >&2
    rm -f "$DIR/n$i.pid"
  fi
  for p in /proc/[0-9]*; do
    p="${p#/proc/}"
    if is_node "$p" "$i"; then echo "$p" >"$DIR/n$i.pid"; echo "$p"; return; fi
  done
}

start_node() {
  local i="$1" bin="$2" port pid
  for port in "$(http_port "$i")" "$(grpc_port "$i")" "$(rstmdb_port "$i")"; do
    listening "$port" && die "node $i: 127.0.0.1:$port is already in use by another process (see 'ss -ltnp')"
  done
  mkdir -p "$DIR/n$i"
  # Its own session: a Ctrl-C at this terminal (say, during `up`) is not
  # meant for the nodes.
  RAFTMESH_PEERS="$(peers)" setsid "$bin" serve --node-id "$i" --data-dir "$DIR/n$i" \
    --http-addr "127.0.0.1:$(http_port "$i")" --grpc-addr "127.0.0.1:$(grpc_port "$i")" \
    --rstmdb-addr "127.0.0.1:$(rstmdb_port "$i")" \
    </dev/null >>"$DIR/n$i.log" 2>&1 &
  pid=$!
  echo "$pid" >"$DIR/n$i.pid"
  say "node $i: started (pid $pid), HTTP 127.0.0.1:$(http_port "$i"), rstmdb 127.0.0.1:$(rstmdb_port "$i"), log $DIR/n$i.log"
}

# wait_ready PATH NODE...: until every NODE answers PATH, at most WAIT_S;
# fails early, with the log, when one of them exits.
wait_ready() {
  local path="$1" deadline=$((SECONDS + WAIT_S)) i pending
  shift
  while :; do
    pending=0
    for i in "$@"; do
      answers "$i" "$path" && continue
      pending=1
      if [ -z "$(node_pid "$i" 2>/dev/null)" ]; then
        tail -n 20 "$DIR/n$i.log" >&2 || true
        die "node $i exited (log: $DIR/n$i.log)"
      fi
    done
    [ "$pending" = 0 ] && return 0
    if [ "$SECONDS" -ge "$deadline" ]; then
      for i in "$@"; do
        echo "--- n$i.log (last lines)" >&2
        tail -n 10 "$DIR/n$i.log" >&2 || true
      done
      die "not ready after ${WAIT_S}s; logs in $DIR"
    fi
    sleep 0.2
  done
}

# stop_nodes NODE...: TERM, wait up to STOP_S, then KILL.
stop_nodes() {
  local i pid pids=() alive deadline
  for i in "$@"; do
    pid="$(node_pid "$i")"
    if [ -n "$pid" ]; then
      pids+=("$pid")
      say "node $i: stopping (pid $pid)"
    else
      say "node $i: not running"
    fi
  done
  if [ "${#pids[@]}" -gt 0 ]; then
    kill -TERM "${pids[@]}" 2>/dev/null || true
    deadline=$((SECONDS + STOP_S))
    while :; do
      alive=()
      for pid in "${pids[@]}"; do [ -d "/proc/$pid" ] && alive+=("$pid"); done
      [ "${#alive[@]}" = 0 ] && break
      if [ "$SECONDS" -ge "$deadline" ]; then
        say "pids ${alive[*]} still running after ${STOP_S}s; kill -9"
        kill -KILL "${alive[@]}" 2>/dev/null || true
        for _ in $(seq 1 50); do
          alive=()
          for pid in "${pids[@]}"; do [ -d "/proc/$pid" ] && alive+=("$pid"); done
          [ "${#alive[@]}" = 0 ] && break
          sleep 0.1
        done
        [ "${#alive[@]}" = 0 ] || die "pids ${alive[*]} survived kill -9"
        break
      fi
      sleep 0.1
    done
  fi
  for i in "$@"; do rm -f "$DIR/n$i.pid"; done
}

node_arg() {
  case "${1:-}" in 1 | 2 | 3) echo "$1" ;; *) usage ;; esac
}

cmd_up() {
  local i pid bin=""
  for i in "${NODES[@]}"; do
    pid="$(node_pid "$i")"
    if [ -n "$pid" ]; then
      say "node $i: running (pid $pid)"
      continue
    fi
    [ -n "$bin" ] || bin="$(find_bin)"
    mkdir -p "$DIR"
    [ -f "$DIR/ports" ] || echo "$HTTP_PORT $GRPC_PORT $RSTMDB_PORT" >"$DIR/ports"
    start_node "$i" "$bin"
  done
  wait_ready /ready "${NODES[@]}"
  say "cluster ready: http://127.0.0.1:$(http_port 1) .. :$(http_port 3)"
}

cmd_start() {
  local i pid bin others=0 j
  i="$(node_arg "$@")"
  [ -f "$DIR/ports" ] || die "no cluster in $DIR: run '$0 up' first"
  pid="$(node_pid "$i")"
  if [ -n "$pid" ]; then
    say "node $i: already running (pid $pid)"
    return 0
  fi
  bin="$(find_bin)"
  start_node "$i" "$bin"
  for j in "${NODES[@]}"; do
    [ "$j" != "$i" ] && [ -n "$(node_pid "$j")" ] && others=$((others + 1))
  done
  # Ready needs a leader, which needs a majority (two of three).
  if [ "$others" -ge 1 ]; then
    wait_ready /ready "$i"
    say "node $i: ready"
  else
    wait_ready /health "$i"
    say "node $i: serving, not ready until a second node runs"
  fi
}

cmd_stop() {
  local i
  i="$(node_arg "$@")"
  stop_nodes "$i"
}

cmd_down() {
  local purge=0 i
  case "${1:-}" in "") ;; --purge) purge=1 ;; *) usage ;; esac
  stop_nodes "${NODES[@]}"
  if [ "$purge" = 1 ]; then
    for i in "${NODES[@]}"; do rm -rf "${DIR:?}/n$i" "$DIR/n$i.log"; done
    rm -f "$DIR/ports"
    if [ -d "$DIR" ] && ! rmdir "$DIR" 2>/dev/null; then say "kept $DIR (it holds other files)"; fi
    say "down, data purged"
  elif [ -d "$DIR" ]; then
    say "down, data kept in $DIR ('down --purge' deletes it)"
  fi
}

cmd_status() {
  local i pid body rc=0
  for i in "${NODES[@]}"; do
    pid="$(node_pid "$i")"
    if [ -z "$pid" ]; then
      echo "node $i: not running"
      rc=1
    elif body="$(http "http://127.0.0.1:$(http_port "$i")/cluster" 2>/dev/null)"; then
      if command -v jq >/dev/null; then
        body="$(jq -c '{role, term, leader, committed_index}' <<<"$body" 2>/dev/null || echo "$body")"
      fi
      echo "node $i: running (pid $pid) 127.0.0.1:$(http_port "$i") $body"
    else
      echo "node $i: running (pid $pid) but not answering on 127.0.0.1:$(http_port "$i"); log $DIR/n$i.log"
      rc=1
    fi
  done
  return "$rc"
}

cmd="${1:-}"
[ "$#" -gt 0 ] && shift
case "$cmd" in
up) [ "$#" = 0 ] || usage; cmd_up ;;
down) cmd_down "$@" ;;
status) cmd_status ;;
start) cmd_start "$@" ;;
stop) cmd_stop "$@" ;;
*) usage ;;
esac
