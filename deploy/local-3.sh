#!/usr/bin/env bash
# Three raftmesh nodes on loopback: gateways on 127.0.0.1:8081-8083, gRPC on
# 9081-9083, data under ${RAFTMESH_LOCAL_DIR:-./raftmesh-local}.
#   deploy/local-3.sh up | down | status
set -euo pipefail
BIN="${RAFTMESH_BIN:-target/release/raftmesh}"
DIR="${RAFTMESH_LOCAL_DIR:-./raftmesh-local}"
PEERS="1=127.0.0.1:9081,2=127.0.0.1:9082,3=127.0.0.1:9083"

case "${1:-}" in
up)
  [ -x "$BIN" ] || { echo "build first: make release (or set RAFTMESH_BIN)"; exit 1; }
  mkdir -p "$DIR"
  for i in 1 2 3; do
    RAFTMESH_PEERS="$PEERS" "$BIN" serve --node-id "$i" --data-dir "$DIR/n$i" \
      --http-addr "127.0.0.1:808$i" --grpc-addr "127.0.0.1:908$i" \
      >"$DIR/n$i.log" 2>&1 &
    echo $! >"$DIR/n$i.pid"
  done
  for _ in $(seq 1 50); do
    curl -sf 127.0.0.1:8081/ready >/dev/null && { echo "cluster ready"; exit 0; }
    sleep 0.2
  done
  echo "cluster not ready after 10 s; see $DIR/n*.log"; exit 1
  ;;
down)
  for i in 1 2 3; do
    [ -f "$DIR/n$i.pid" ] && kill "$(cat "$DIR/n$i.pid")" 2>/dev/null || true
    rm -f "$DIR/n$i.pid"
  done
  ;;
status)
  for i in 1 2 3; do
    printf 'node %s: ' "$i"
    curl -s "127.0.0.1:808$i/cluster" || echo "down"
    echo
  done
  ;;
*) echo "usage: $0 up|down|status"; exit 2 ;;
esac
