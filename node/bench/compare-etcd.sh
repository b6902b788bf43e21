#!/usr/bin/env bash
# Side-by-side benchmark: three etcd members and three raftmesh nodes on
# loopback, data on the same filesystem, fsync on in both, the same load
# generator (raftmesh-bench) and value size. Workloads alternate etcd /
# raftmesh for ROUNDS rounds; the table shows medians and ratios.
#   node/bench/compare-etcd.sh            (ROUNDS=3 DURATION=10 VALUE_SIZE=256)
# Not part of CI. Stops everything it started on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."

ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-10}"
WARMUP="${WARMUP:-2}"
VALUE_SIZE="${VALUE_SIZE:-256}"
WORK="$(mktemp -d -p "${BENCH_DIR:-/var/tmp}" raftmesh-bench.XXXXXX)"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
PIDS=()

cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK/data"
}
trap cleanup EXIT INT TERM

if ! command -v etcd >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server
fi
make -s deps
cargo build --release --bin raftmesh --bin raftmesh-bench
BIN="${RAFTMESH_BIN:-$TARGET_DIR/release/raftmesh}"
LOAD="$TARGET_DIR/release/raftmesh-bench"

echo "work dir: $WORK ($(df -h "$WORK" | tail -1 | awk '{print $1, $6}'))"
mkdir -p "$WORK/data"
cluster="e1=http://127.0.0.1:12380,e2=http://127.0.0.1:22380,e3=http://127.0.0.1:32380"
for i in 1 2 3; do
  etcd --name "e$i" --data-dir "$WORK/data/e$i" \
    --listen-client-urls "http://127.0.0.1:${i}2379" --advertise-client-urls "http://127.0.0.1:${i}2379" \
    --listen-peer-urls "http://127.0.0.1:${i}2380" --initial-advertise-peer-urls "http://127.0.0.1:${i}2380" \
    --initial-cluster "$cluster" --initial-cluster-token raftmesh-bench --initial-cluster-state new \
    >"$WORK/e$i.log" 2>&1 &
  PIDS+=($!)
  RAFTMESH_RSTMDB_ADDR="127.0.0.1:848$i" "$BIN" serve --node-id "$i" --data-dir "$WORK/data/r$i" \
    --http-addr "127.0.0.1:818$i" --grpc-addr "127.0.0.1:918$i" \
    --peer 1=127.0.0.1:9181 --peer 2=127.0.0.1:9182 --peer 3=127.0.0.1:9183 \
    >"$WORK/r$i.log" 2>&1 &
  PIDS+=($!)
done

for _ in $(seq 1 100); do
  if curl -sf 127.0.0.1:8181/ready >/dev/null && curl -sf -X POST 127.0.0.1:12379/v3/kv/range -d '{"key":"eA=="}' >/dev/null; then
    break
  fi
  sleep 0.2
done
curl -sf 127.0.0.1:8181/ready >/dev/null || { echo "raftmesh not ready"; exit 1; }

ETCD_EPS="127.0.0.1:12379,127.0.0.1:22379,127.0.0.1:32379"
RM_EPS="127.0.0.1:8181,127.0.0.1:8182,127.0.0.1:8183"
RESULTS="$WORK/results.jsonl"
: >"$RESULTS"

run() { # target workload clients
  local eps="$ETCD_EPS"; [ "$1" = raftmesh ] && eps="$RM_EPS"
  "$LOAD" --target "$1" --workload "$2" --clients "$3" --endpoints "$eps" \
    --duration "$DURATION" --warmup "$WARMUP" --value-size "$VALUE_SIZE" --json | tee -a "$RESULTS"
}

for round in $(seq 1 "$ROUNDS"); do
  for case in "put 1" "put 32" "put 64" "get 64"; do
    set -- $case
    echo "round $round: $1 x$2" >&2
    run etcd "$1" "$2"
    run raftmesh "$1" "$2"
  done
done

python3 - "$RESULTS" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def med(target, wl, clients, field):
    xs = [r[field] for r in rows if r["target"] == target and r["workload"] == wl and r["clients"] == clients]
    return statistics.median(xs) if xs else float("nan")
print("\n| workload | clients | metric | etcd | raftmesh | raftmesh/etcd | target |")
print("|---|---|---|---|---|---|---|")
checks = [
    ("put", 64, "ops_per_s", ">= 3.0"),
    ("put", 32, "p99_ms", "<= 0.5"),
    ("put", 1, "p50_ms", "<= 1.0"),
    ("get", 64, "ops_per_s", ">= 3.0"),
]
for wl, c, field, goal in checks:
    e, r = med("etcd", wl, c, field), med("raftmesh", wl, c, field)
    print(f"| {wl} | {c} | {field} | {e:.2f} | {r:.2f} | {r / e:.2f} | {goal} |")
print("\nall medians:")
for wl, c in [("put", 1), ("put", 32), ("put", 64), ("get", 64)]:
    for t in ("etcd", "raftmesh"):
        print(f"  {t:8} {wl} x{c:<3} ops/s={med(t, wl, c, 'ops_per_s'):9.1f} p50={med(t, wl, c, 'p50_ms'):7.2f}ms "
              f"p99={med(t, wl, c, 'p99_ms'):7.2f}ms errors={med(t, wl, c, 'errors'):.0f}")
PY
echo "raw results: $RESULTS"
