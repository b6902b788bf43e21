#!/usr/bin/env bash
# A/B of two raftmesh binaries on one workload: a fresh three-node loopback
# cluster per run, the runs alternating A, B, A, B, … so drift on this noisy
# machine hits both; prints each run and the medians.
#   node/bench/compare-builds.sh BIN_A BIN_B [workload] [clients]
#   (ROUNDS=3 DURATION=8 WARMUP=2 VALUE_SIZE=256; workload put|get|cas, default put 32)
# Not part of CI. Stops everything it started on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."

A="${1:?usage: $0 BIN_A BIN_B [workload] [clients]}"
B="${2:?usage: $0 BIN_A BIN_B [workload] [clients]}"
WORKLOAD="${3:-put}"
CLIENTS="${4:-32}"
ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-8}"
WARMUP="${WARMUP:-2}"
VALUE_SIZE="${VALUE_SIZE:-256}"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
WORK="$(mktemp -d -p "${BENCH_DIR:-/var/tmp}" raftmesh-ab.XXXXXX)"
PIDS=()

stop_nodes() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
}
cleanup() { stop_nodes; rm -rf "$WORK/data"; }
trap cleanup EXIT INT TERM

cargo build --release --bin raftmesh-bench
LOAD="$TARGET_DIR/release/raftmesh-bench"
RESULTS="$WORK/results.jsonl"
: >"$RESULTS"

run_one() { # label binary
  rm -rf "$WORK/data"
  for i in 1 2 3; do
    RAFTMESH_RSTMDB_ADDR="127.0.0.1:838$i" "$2" serve --node-id "$i" --data-dir "$WORK/data/r$i" \
      --http-addr "127.0.0.1:828$i" --grpc-addr "127.0.0.1:928$i" \
      --peer 1=127.0.0.1:9281 --peer 2=127.0.0.1:9282 --peer 3=127.0.0.1:9283 \
      >"$WORK/$1-r$i.log" 2>&1 &
    PIDS+=($!)
  done
  local ready=""
  for _ in $(seq 1 100); do
    if curl -sf 127.0.0.1:8281/ready >/dev/null; then ready=1; break; fi
    sleep 0.2
  done
  [ -n "$ready" ] || { echo "$1: cluster not ready, see $WORK/$1-r*.log"; exit 1; }
  "$LOAD" --target raftmesh --workload "$WORKLOAD" --clients "$CLIENTS" \
    --endpoints 127.0.0.1:8281,127.0.0.1:8282,127.0.0.1:8283 \
    --duration "$DURATION" --warmup "$WARMUP" --value-size "$VALUE_SIZE" --json |
    python3 -c 'import json,sys; d=json.load(sys.stdin); d["build"]=sys.argv[1]; print(json.dumps(d))' "$1" |
    tee -a "$RESULTS"
  stop_nodes
}

for round in $(seq 1 "$ROUNDS"); do
  echo "round $round: $WORKLOAD x$CLIENTS" >&2
  run_one A "$A"
  run_one B "$B"
done

python3 - "$RESULTS" "$A" "$B" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print()
for build, path in (("A", sys.argv[2]), ("B", sys.argv[3])):
    rs = [r for r in rows if r["build"] == build]
    med = lambda f: statistics.median(r[f] for r in rs)
    print(f"{build} {path}: ops/s={med('ops_per_s'):.1f} p50={med('p50_ms'):.2f}ms "
          f"p90={med('p90_ms'):.2f}ms p99={med('p99_ms'):.2f}ms errors={med('errors'):.0f}")
PY
