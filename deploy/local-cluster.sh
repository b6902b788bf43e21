#!/usr/bin/env bash
# The docker-compose topology (deploy/docker-compose.yml) without Docker: three
# raftmesh nodes, each in its own network namespace on a private bridge, each
# configured only through the same RAFTMESH_* variables as the compose file.
#
#   deploy/local-cluster.sh up | down [--purge] | status | start N
#
#   bridge  rmlcbr0  10.88.0.1/24   (host side; reach the nodes from here)
#   node 1  netns rmlc-n1  10.88.0.11  HTTP :8080  gRPC :7080
#   node 2  netns rmlc-n2  10.88.0.12
#   node 3  netns rmlc-n3  10.88.0.13
#
# State (data, logs, pids): ${RAFTMESH_LOCAL_DIR:-/tmp/raftmesh-local}.
# Binary: $RAFTMESH_BIN, else the newer of target/{release,debug}/raftmesh
# (under $CARGO_TARGET_DIR when set, then the repository's target/).
# `down` stops the nodes and removes the namespaces, veths and bridge, also
# after a half-finished `up`; it keeps the data (like `docker compose down`)
# unless given --purge, so a second `up` restarts the same cluster. `start N`
# restarts node N after it died or was killed (kill -9 "$(cat STATE/nN.pid)").
# Needs root (network namespaces). RMLC_WAIT_S bounds the wait in `up` (30).
set -euo pipefail

readonly PREFIX=rmlc
readonly BRIDGE=rmlcbr0
readonly NET=10.88.0
readonly HOST_IP="$NET.1"
readonly NODES=(1 2 3)
readonly HTTP_PORT=8080 GRPC_PORT=7080
STATE="${RAFTMESH_LOCAL_DIR:-/tmp/raftmesh-local}"
case "$STATE" in /*) ;; *) STATE="$PWD/$STATE" ;; esac
WAIT_S="${RMLC_WAIT_S:-30}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

node_ip() { echo "$NET.$((10 + $1))"; }
netns() { echo "$PREFIX-n$1"; }
veth_host() { echo "$PREFIX-v$1"; }
veth_ns() { echo "$PREFIX-p$1"; }
peers() {
  local i out=""
  for i in "${NODES[@]}"; do out="$out${out:+,}$i=$(node_ip "$i"):$GRPC_PORT"; done
  echo "$out"
}
say() { echo "local-cluster: $*"; }
die() { echo "local-cluster: $*" >&2; exit 1; }
# Only ever the addresses this script created; never a proxy.
http() { curl -sS --noproxy '*' --connect-timeout 1 --max-time "${HTTP_MAX_S:-3}" "$@"; }

find_bin() {
  if [ -n "${RAFTMESH_BIN:-}" ]; then
    [ -x "$RAFTMESH_BIN" ] || die "RAFTMESH_BIN=$RAFTMESH_BIN is not executable"
    echo "$RAFTMESH_BIN"
    return
  fi
  local best="" c
  for c in ${CARGO_TARGET_DIR:+"$CARGO_TARGET_DIR/release/raftmesh" "$CARGO_TARGET_DIR/debug/raftmesh"} \
    "$ROOT/target/release/raftmesh" "$ROOT/target/debug/raftmesh"; do
    [ -x "$c" ] || continue
    if [ -z "$best" ] || [ "$c" -nt "$best" ]; then best="$c"; fi
  done
  [ -n "$best" ] || die "no raftmesh binary: run 'cargo build --bin raftmesh' (or make release), or set RAFTMESH_BIN"
  echo "$best"
}

need_root() {
  if [ "$(id -u)" != 0 ]; then
    echo "local-cluster: must run as root (it creates network namespaces, veths and a bridge)" >&2
    exit 2
  fi
  command -v ip >/dev/null || die "needs iproute2 (ip)"
  command -v curl >/dev/null || die "needs curl"
}

# Is pid $1 alive and a raftmesh process (not a recycled pid)?
is_node_pid() {
  [ -n "$1" ] && [ -d "/proc/$1" ] && grep -q raftmesh "/proc/$1/cmdline" 2>/dev/null
}

pid_of() { cat "$STATE/n$1.pid" 2>/dev/null || true; }

ns_exists() { ip netns list 2>/dev/null | awk '{print $1}' | grep -qx "$1"; }
link_exists() { ip link show "$1" >/dev/null 2>&1; }

anything_up() {
  local i
  link_exists "$BRIDGE" && return 0
  for i in "${NODES[@]}"; do
    ns_exists "$(netns "$i")" && return 0
    link_exists "$(veth_host "$i")" && return 0
  done
  return 1
}

build_net() {
  ip link add "$BRIDGE" type bridge
  ip addr add "$HOST_IP/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  local i ns
  for i in "${NODES[@]}"; do
    ns="$(netns "$i")"
    ip netns add "$ns"
    ip link add "$(veth_host "$i")" type veth peer name "$(veth_ns "$i")"
    ip link set "$(veth_ns "$i")" netns "$ns"
    ip link set "$(veth_host "$i")" master "$BRIDGE"
    ip link set "$(veth_host "$i")" up
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add "$(node_ip "$i")/24" dev "$(veth_ns "$i")"
    ip -n "$ns" link set "$(veth_ns "$i")" up
  done
}

start_node() {
  local i="$1" bin="$2" ip
  ip="$(node_ip "$i")"
  mkdir -p "$STATE/n$i"
  rm -f "$STATE/n$i.pid"
  # The same variables as the compose service; nothing else configures it.
  # `sh` writes its own pid, then execs the node, so the pid file is the node's.
  # shellcheck disable=SC2016
  ip netns exec "$(netns "$i")" env -i PATH="$PATH" NO_COLOR=1 RUST_LOG="${RUST_LOG:-info,openraft=warn}" \
    RAFTMESH_NODE_ID="$i" \
    RAFTMESH_PEERS="$(peers)" \
    RAFTMESH_DATA_DIR="$STATE/n$i" \
    RAFTMESH_HTTP_ADDR="0.0.0.0:$HTTP_PORT" \
    RAFTMESH_GRPC_ADDR="0.0.0.0:$GRPC_PORT" \
    RAFTMESH_RSTMDB_ADDR="0.0.0.0:7401" \
    RAFTMESH_ADVERTISE_GRPC="$ip:$GRPC_PORT" \
    RAFTMESH_ADVERTISE_HTTP="$ip:$HTTP_PORT" \
    RAFTMESH_ADVERTISE_RSTMDB="$ip:7401" \
    setsid sh -c 'echo $$ >"$1"; exec "$2" serve' sh "$STATE/n$i.pid" "$bin" \
    </dev/null >>"$STATE/n$i.log" 2>&1 &
}

all_ready() {
  local i
  for i in "${NODES[@]}"; do
    http -o /dev/null -f "http://$(node_ip "$i"):$HTTP_PORT/ready" 2>/dev/null || return 1
  done
}

cmd_up() {
  need_root
  local bin
  bin="$(find_bin)"
  if anything_up; then
    die "already up (or left half-built): run '$0 down' first"
  fi
  if ip -4 route show | grep -q "^$NET\.0/24 "; then
    die "$NET.0/24 is already routed on this machine; refusing to add a bridge for it"
  fi
  mkdir -p "$STATE"
  say "binary $bin, state in $STATE"
  build_net || { say "network setup failed; cleaning up"; cmd_down >/dev/null 2>&1 || true; exit 1; }
  local i
  for i in "${NODES[@]}"; do start_node "$i" "$bin"; done

  local deadline=$((SECONDS + WAIT_S)) pid
  while :; do
    if all_ready; then
      say "cluster ready: gateways $(for i in "${NODES[@]}"; do printf 'http://%s:%s ' "$(node_ip "$i")" "$HTTP_PORT"; done)"
      return 0
    fi
    for i in "${NODES[@]}"; do
      pid="$(pid_of "$i")"
      if [ -n "$pid" ] && ! is_node_pid "$pid"; then
        tail -n 20 "$STATE/n$i.log" >&2 || true
        die "node $i exited during start-up (log: $STATE/n$i.log); run '$0 down'"
      fi
    done
    if [ "$SECONDS" -ge "$deadline" ]; then
      for i in "${NODES[@]}"; do
        echo "--- n$i.log (last lines)" >&2
        tail -n 10 "$STATE/n$i.log" >&2 || true
      done
      die "not ready after ${WAIT_S}s; logs in $STATE; run '$0 down'"
    fi
    sleep 0.3
  done
}

stop_nodes() {
  local i pid ns pids=() deadline
  for i in "${NODES[@]}"; do
    pid="$(pid_of "$i")"
    if is_node_pid "$pid"; then pids+=("$pid"); fi
    # Anything else still running inside our namespace was started by us too
    # (for example a node whose pid file was never written).
    ns="$(netns "$i")"
    if ns_exists "$ns"; then
      for pid in $(ip netns pids "$ns" 2>/dev/null); do pids+=("$pid"); done
    fi
  done
  [ "${#pids[@]}" -gt 0 ] || return 0
  mapfile -t pids < <(printf '%s\n' "${pids[@]}" | sort -un)
  say "stopping pids ${pids[*]}"
  kill -TERM "${pids[@]}" 2>/dev/null || true
  deadline=$((SECONDS + 10))
  while [ "$SECONDS" -lt "$deadline" ]; do
    local alive=0
    for pid in "${pids[@]}"; do [ -d "/proc/$pid" ] && alive=1; done
    [ "$alive" = 0 ] && return 0
    sleep 0.2
  done
  kill -KILL "${pids[@]}" 2>/dev/null || true
  sleep 0.2
}

cmd_down() {
  need_root
  local purge=0 i
  [ "${1:-}" = "--purge" ] && purge=1
  stop_nodes
  for i in "${NODES[@]}"; do
    # Deleting the namespace destroys the veth pair with it; a veth that
    # never made it into the namespace is deleted from the host side.
    if ns_exists "$(netns "$i")"; then ip netns del "$(netns "$i")" || true; fi
    if link_exists "$(veth_host "$i")"; then ip link del "$(veth_host "$i")" 2>/dev/null || true; fi
    rm -f "$STATE/n$i.pid"
  done
  if link_exists "$BRIDGE"; then ip link del "$BRIDGE" 2>/dev/null || true; fi
  # veths of deleted namespaces disappear asynchronously.
  for _ in $(seq 1 25); do anything_up || break; sleep 0.2; done
  if [ "$purge" = 1 ] && [ -d "$STATE" ]; then
    for i in "${NODES[@]}"; do rm -rf "${STATE:?}/n$i" "$STATE/n$i.log"; done
    rmdir "$STATE" 2>/dev/null || say "kept $STATE (it holds other files)"
  fi
  if anything_up; then die "could not remove everything; see 'ip netns list', 'ip link'"; fi
  if [ "$purge" = 1 ]; then
    say "down (data purged)"
  elif [ -d "$STATE" ]; then
    say "down (data kept in $STATE; 'down --purge' removes it)"
  else
    say "down"
  fi
}

cmd_start() {
  need_root
  local i="${1:-}" bin deadline
  case "$i" in 1 | 2 | 3) ;; *) die "usage: $0 start 1|2|3" ;; esac
  ns_exists "$(netns "$i")" || die "no namespace $(netns "$i"): run '$0 up' first"
  if is_node_pid "$(pid_of "$i")"; then die "node $i is already running (pid $(pid_of "$i"))"; fi
  bin="$(find_bin)"
  start_node "$i" "$bin"
  deadline=$((SECONDS + WAIT_S))
  until http -o /dev/null -f "http://$(node_ip "$i"):$HTTP_PORT/ready" 2>/dev/null; do
    [ "$SECONDS" -lt "$deadline" ] || die "node $i not ready after ${WAIT_S}s; log: $STATE/n$i.log"
    sleep 0.3
  done
  say "node $i ready at http://$(node_ip "$i"):$HTTP_PORT"
}

cmd_status() {
  local i ip body rc=0
  for i in "${NODES[@]}"; do
    ip="$(node_ip "$i")"
    if ! ns_exists "$(netns "$i")"; then
      echo "node $i: not running (no namespace $(netns "$i"))"
      rc=1
      continue
    fi
    if body="$(http "http://$ip:$HTTP_PORT/cluster" 2>/dev/null)"; then
      if command -v jq >/dev/null; then
        echo "node $i ($ip): $(jq -c '{id, role, term, leader, committed_index, members: [.members[] | .node_id]}' <<<"$body")"
      else
        echo "node $i ($ip): $body"
      fi
    else
      echo "node $i ($ip): not answering (pid $(pid_of "$i"), log $STATE/n$i.log)"
      rc=1
    fi
  done
  return "$rc"
}

case "${1:-}" in
up) cmd_up ;;
down) shift; cmd_down "$@" ;;
status) cmd_status ;;
start) shift; cmd_start "$@" ;;
*) echo "usage: $0 up | down [--purge] | status | start N" >&2; exit 2 ;;
esac
