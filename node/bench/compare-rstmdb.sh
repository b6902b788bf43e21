#!/usr/bin/env bash
# Side-by-side benchmark on the rstmdb wire: the original rstmdb 0.3.0 server
# (one process, fsync every_write and fsync never) and a raftmesh 3-node
# cluster on loopback (writes replicated to 3 nodes, fsynced), all measured
# by the same load generator on the real client (crates.io rstmdb-client
# 0.3.0, node/examples/rstmdb_bench.rs). Every cell (op x connections) runs
# each system in turn, the order reversed every other round; the table shows
# medians over ROUNDS.
#   node/bench/compare-rstmdb.sh     (ROUNDS=2 DURATION=10 WARMUP=2 CONNS="1 16 64")
# SPREAD=0 skips the raftmesh run that spreads connections over all 3 nodes.
# Not part of CI. Loopback only. Stops everything it started on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."

ROUNDS="${ROUNDS:-2}"
DURATION="${DURATION:-10}"
WARMUP="${WARMUP:-2}"
CONNS="${CONNS:-1 16 64}"
OPS="${OPS:-apply create}"
SPREAD="${SPREAD:-1}"
TOOLS="${RAFTMESH_TOOLS:-$HOME/.cache/raftmesh-tools}"
WORK="$(mktemp -d -p "${BENCH_DIR:-/var/tmp}" raftmesh-rstmdb-bench.XXXXXX)"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
# Ports: original (every_write) 27411, original (never) 27412; raftmesh node
# N: HTTP 2718N, gRPC 2719N, rstmdb 2740N.
ORIG_EVERY=127.0.0.1:27411
ORIG_NEVER=127.0.0.1:27412
PIDS=()

cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 1 50); do [ -d "/proc/$p" ] || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  rm -rf "$WORK/data"
}
trap cleanup EXIT INT TERM

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

make -s deps
cargo build --release -p raftmesh-node --bin raftmesh --example rstmdb_bench
BIN="${RAFTMESH_BIN:-$TARGET_DIR/release/raftmesh}"
LOAD="$TARGET_DIR/release/examples/rstmdb_bench"
ORIG="$TOOLS/bin/rstmdb"
if [ ! -x "$ORIG" ]; then
  # Its own lock file (--locked) and its own target dir, kept out of ours.
  cargo install rstmdb --version 0.3.0 --locked --root "$TOOLS" --target-dir "$TOOLS/build-rstmdb"
fi

for port in 27411 27412 27181 27182 27183 27191 27192 27193 27401 27402 27403; do
  if listening "$port"; then echo "127.0.0.1:$port is already in use (see 'ss -ltnp')" >&2; exit 1; fi
done

echo "work dir: $WORK ($(df -h "$WORK" | tail -1 | awk '{print $1, $6}'))"
mkdir -p "$WORK/data"
# The original: configured by environment (rstmdb-server config.rs). Metrics
# are off by default; compaction stays at its default.
for mode in every_write never; do
  addr="$ORIG_EVERY"; [ "$mode" = never ] && addr="$ORIG_NEVER"
  RSTMDB_BIND="$addr" RSTMDB_DATA="$WORK/data/orig-$mode" RSTMDB_FSYNC_POLICY="$mode" \
    RSTMDB_METRICS_ENABLED=false RUST_LOG=warn \
    "$ORIG" >"$WORK/orig-$mode.log" 2>&1 &
  PIDS+=($!)
done
for i in 1 2 3; do
  RUST_LOG=warn "$BIN" serve --node-id "$i" --data-dir "$WORK/data/r$i" \
    --http-addr "127.0.0.1:2718$i" --grpc-addr "127.0.0.1:2719$i" --rstmdb-addr "127.0.0.1:2740$i" \
    --peer 1=127.0.0.1:27191 --peer 2=127.0.0.1:27192 --peer 3=127.0.0.1:27193 \
    >"$WORK/r$i.log" 2>&1 &
  PIDS+=($!)
done

ready=0
for _ in $(seq 1 150); do
  if listening 27411 && listening 27412 && curl -sf --noproxy '*' --max-time 2 127.0.0.1:27181/ready >/dev/null; then
    ready=1
    break
  fi
  sleep 0.2
done
if [ "$ready" != 1 ]; then
  echo "not ready after 30 s; logs in $WORK" >&2
  tail -n 5 "$WORK"/*.log >&2 || true
  exit 1
fi

# The current leader's rstmdb address (asked before every raftmesh cell).
leader_addr() {
  local i id
  for _ in $(seq 1 50); do
    for i in 1 2 3; do
      id="$(curl -sf --noproxy '*' --max-time 2 "127.0.0.1:2718$i/cluster" |
        python3 -c 'import json,sys; print(json.load(sys.stdin).get("leader") or "")' 2>/dev/null || true)"
      case "$id" in 1 | 2 | 3) echo "127.0.0.1:2740$id"; return 0 ;; esac
    done
    sleep 0.2
  done
  echo "no raftmesh leader" >&2
  return 1
}

RESULTS="$WORK/results.txt"
: >"$RESULTS"
echo "LOADAVG before $(cat /proc/loadavg)" | tee -a "$RESULTS"

run() { # round system op conns
  local round="$1" addrs
  shift
  case "$1" in
  rstmdb-every_write) addrs="$ORIG_EVERY" ;;
  rstmdb-never) addrs="$ORIG_NEVER" ;;
  raftmesh-leader) addrs="$(leader_addr)" ;;
  raftmesh-all3) addrs="127.0.0.1:27401,127.0.0.1:27402,127.0.0.1:27403" ;;
  esac
  echo "  $1 $2 x$3 -> $addrs" >&2
  if ! "$LOAD" "$addrs" --op "$2" --conns "$3" --duration "$DURATION" --warmup "$WARMUP" \
    --label "$1" | sed "s/^RESULT /RESULT round=$round /" | tee -a "$RESULTS"; then
    echo "  $1 $2 x$3: load generator failed" >&2
  fi
}

SYSTEMS=(rstmdb-every_write rstmdb-never raftmesh-leader)
[ "$SPREAD" = 1 ] && SYSTEMS+=(raftmesh-all3)
for round in $(seq 1 "$ROUNDS"); do
  order=("${SYSTEMS[@]}")
  if [ $((round % 2)) = 0 ]; then
    order=()
    for ((k = ${#SYSTEMS[@]} - 1; k >= 0; k--)); do order+=("${SYSTEMS[$k]}"); done
  fi
  for op in $OPS; do
    for c in $CONNS; do
      echo "round $round: $op x$c ($(cut -d' ' -f1-3 /proc/loadavg))" >&2
      for s in "${order[@]}"; do run "$round" "$s" "$op" "$c"; done
    done
  done
  # raftmesh's machine journal: once it holds its retention (100000 events
  # by default) every entry trims the oldest records.
  echo "JOURNAL round=$round $(curl -sf --noproxy '*' --max-time 2 127.0.0.1:27181/cluster/journal |
    python3 -c 'import json,sys; m=json.load(sys.stdin)["machine"]; print("events=%d oldest=%d" % (m["events"], m["oldest"]))' 2>/dev/null || echo '?')" |
    tee -a "$RESULTS"
done
echo "LOADAVG after $(cat /proc/loadavg)" | tee -a "$RESULTS"

python3 - "$RESULTS" <<'PY'
import statistics, sys
rows, load, journal = [], {}, []
for line in open(sys.argv[1]):
    f = line.split()
    if f and f[0] == "RESULT":
        rows.append(dict(kv.split("=", 1) for kv in f[1:]))
    elif f and f[0] == "LOADAVG":
        load[f[1]] = " ".join(f[2:5])
    elif f and f[0] == "JOURNAL":
        journal.append(" ".join(f[1:]))
systems = list(dict.fromkeys(r["system"] for r in rows))
cells = list(dict.fromkeys((r["op"], int(r["conns"])) for r in rows))
def pick(s, op, c):
    return [r for r in rows if r["system"] == s and r["op"] == op and int(r["conns"]) == c]
def med(s, op, c, k):
    xs = [float(r[k]) for r in pick(s, op, c)]
    return statistics.median(xs) if xs else float("nan")
print(f"\nload average (1/5/15 min): before {load.get('before', '?')}, after {load.get('after', '?')}")
print("raftmesh machine journal after each round: " + "; ".join(journal))
print("\n| system | op | conns | ops/s | ops/s by round | p50 ms | p99 ms | errors |")
print("|---|---|---:|---:|---|---:|---:|---:|")
for op, c in cells:
    for s in systems:
        rs = pick(s, op, c)
        if not rs:
            continue
        errs = sum(int(r["errors"]) for r in rs)
        codes = sorted({r["errors_by_code"] for r in rs if r["errors_by_code"] != "-"})
        e = f"{errs}" + (f" ({' '.join(codes)})" if codes else "")
        by_round = " / ".join(f"{float(r['ops_per_s']):.0f}" for r in sorted(rs, key=lambda r: int(r["round"])))
        print(f"| {s} | {op} | {c} | {med(s, op, c, 'ops_per_s'):.0f} | {by_round} | {med(s, op, c, 'p50_ms'):.3f} "
              f"| {med(s, op, c, 'p99_ms'):.3f} | {e} |")
print("\n| goal at 64 conns | op | raftmesh-leader ops/s | reference ops/s | ratio | goal | met |")
print("|---|---|---:|---:|---:|---:|---|")
for op in ("apply", "create"):
    r = med("raftmesh-leader", op, 64, "ops_per_s")
    for ref, goal in (("rstmdb-every_write", 4.0), ("rstmdb-never", 0.5)):
        b = med(ref, op, 64, "ops_per_s")
        ratio = r / b if b else float("nan")
        print(f"| vs {ref} | {op} | {r:.0f} | {b:.0f} | {ratio:.2f} | >= {goal} | {'yes' if ratio >= goal else 'no'} |")
PY
echo "raw results: $RESULTS"
