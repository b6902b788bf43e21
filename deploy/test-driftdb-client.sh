#!/usr/bin/env bash
# The npm DriftDB client 1.0.12 (with `ws` as the global WebSocket under
# Node 20), unmodified, against a local three-node cluster on loopback:
# deploy/driftdb-client/test.js. Installs Node if missing (apt-get) and the
# locked packages with `npm ci` into a cache outside the clone:
#   ${RAFTMESH_NPM:-$HOME/.cache/raftmesh-npm}/driftdb-client
# Binary: $RAFTMESH_BIN, else ${CARGO_TARGET_DIR:-target}/release/raftmesh.
# Every wait is bounded; the cluster is torn down on exit.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
CACHE="${RAFTMESH_NPM:-$HOME/.cache/raftmesh-npm}/driftdb-client"
HTTP_PORT=28181 GRPC_PORT=29181 RSTMDB_PORT=27501

say() { echo "driftdb client: $*"; }
die() { say "$*" >&2; exit 2; }

BIN="${RAFTMESH_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/raftmesh}"
[ -x "$BIN" ] || die "no raftmesh binary at $BIN (cargo build --release --bin raftmesh, or set RAFTMESH_BIN)"

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  say "installing nodejs and npm (apt-get)"
  apt-get install -y -qq nodejs npm >/dev/null || die "apt-get install nodejs npm failed"
fi
mkdir -p "$CACHE"
if ! cmp -s "$HERE/driftdb-client/package-lock.json" "$CACHE/package-lock.json" ||
  [ ! -d "$CACHE/node_modules/driftdb" ]; then
  say "npm ci into $CACHE"
  cp "$HERE/driftdb-client/package.json" "$HERE/driftdb-client/package-lock.json" "$CACHE/"
  (cd "$CACHE" && timeout 300 npm ci --no-audit --no-fund --loglevel=error) || die "npm ci failed"
fi
cp "$HERE/driftdb-client/test.js" "$CACHE/test.js"

STATE="$(mktemp -d /tmp/driftdb-client.XXXXXX)"
l3() {
  RAFTMESH_BIN="$BIN" RAFTMESH_LOCAL_DIR="$STATE" RAFTMESH_LOCAL_HTTP_PORT="$HTTP_PORT" \
    RAFTMESH_LOCAL_GRPC_PORT="$GRPC_PORT" RAFTMESH_LOCAL_RSTMDB_PORT="$RSTMDB_PORT" \
    RAFTMESH_LOCAL_WAIT_S=30 timeout 90 "$HERE/local-3.sh" "$@"
}
cleanup() { l3 down --purge >/dev/null 2>&1; rm -rf "$STATE"; }
trap cleanup EXIT
l3 up >/dev/null || die "the local cluster did not start (logs in $STATE)"
pid3="$(cat "$STATE/n3.pid" 2>/dev/null)"
[ -n "$pid3" ] || die "no pid file for node 3 in $STATE"

out="$(cd "$CACHE" && HTTP_PORTS="$HTTP_PORT,$((HTTP_PORT + 1)),$((HTTP_PORT + 2))" NODE3_PID="$pid3" \
  timeout 120 node test.js 2>&1)"
rc=$?
printf '%s\n' "$out"
pass="$(grep -c '^ok ' <<<"$out")"
if [ "$rc" = 0 ] && [ "$pass" = 5 ]; then
  say "$pass passed, 0 failed"
else
  say "failed (exit $rc, $pass checks passed; node logs in $STATE)"
  trap - EXIT
  l3 down >/dev/null 2>&1
  exit 1
fi
