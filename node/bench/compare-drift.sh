#!/usr/bin/env bash
# Side-by-side benchmark of DriftDB rooms: the original driftdb-server 0.1.4
# (one process, rooms in memory; plain, and with TCP_NODELAY forced on its
# accepted sockets by an LD_PRELOAD shim, node/bench/nodelay-shim.c) and a
# raftmesh 3-node cluster on loopback (every push a Raft entry replicated to
# 3 nodes and fsynced), all measured by the same load generator
# (node/examples/drift_bench.rs): one room, S subscriber sockets, one
# publisher with W pushes in flight. Every cell (S x W) runs each system in
# turn, the order reversed every other round; the table shows medians over
# ROUNDS (missing deliveries and closed sockets are summed).
#   node/bench/compare-drift.sh     (ROUNDS=2 DURATION=8 WARMUP=2 CELLS="100x1 10x32")
# For raftmesh the room is created on, and published to, the current leader;
# subscribers are spread round-robin over the 3 nodes.
# Not part of CI. Loopback only. Stops everything it started on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."

ROUNDS="${ROUNDS:-2}"
DURATION="${DURATION:-8}"
WARMUP="${WARMUP:-2}"
CELLS="${CELLS:-100x1 10x32}"
TOOLS="${RAFTMESH_TOOLS:-$HOME/.cache/raftmesh-tools}"
WORK="$(mktemp -d -p "${BENCH_DIR:-/var/tmp}" raftmesh-drift-bench.XXXXXX)"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
# Ports: original (plain) 27511, original (NODELAY shim) 27512; raftmesh
# node N: HTTP 2758N, gRPC 2759N, rstmdb 2760N.
ORIG_PLAIN=127.0.0.1:27511
ORIG_NODELAY=127.0.0.1:27512
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
if ! command -v cc >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc libc6-dev
fi
cargo build --release -p raftmesh-node --bin raftmesh --example drift_bench
BIN="${RAFTMESH_BIN:-$TARGET_DIR/release/raftmesh}"
LOAD="$TARGET_DIR/release/examples/drift_bench"
ORIG="$TOOLS/bin/driftdb-server"
if [ ! -x "$ORIG" ]; then
  # Its own lock file (--locked) and its own target dir, kept out of ours.
  cargo install driftdb-server --version 0.1.4 --locked --root "$TOOLS" --target-dir "$TOOLS/build-driftdb"
fi
SHIM="$WORK/nodelay-shim.so"
cc -shared -fPIC -O2 -Wall -o "$SHIM" node/bench/nodelay-shim.c -ldl

for port in 27511 27512 27581 27582 27583 27591 27592 27593 27601 27602 27603; do
  if listening "$port"; then echo "127.0.0.1:$port is already in use (see 'ss -ltnp')" >&2; exit 1; fi
done

echo "work dir: $WORK ($(df -h "$WORK" | tail -1 | awk '{print $1, $6}'))"
mkdir -p "$WORK/data"
# The original: --host/--port only (driftdb-server main.rs). It logs every
# dropped delivery at error level, so warn keeps its log to those.
RUST_LOG=warn "$ORIG" --host 127.0.0.1 --port "${ORIG_PLAIN##*:}" >"$WORK/orig-plain.log" 2>&1 &
PIDS+=($!)
LD_PRELOAD="$SHIM" RUST_LOG=warn "$ORIG" --host 127.0.0.1 --port "${ORIG_NODELAY##*:}" \
  >"$WORK/orig-nodelay.log" 2>&1 &
PIDS+=($!)
for i in 1 2 3; do
  RUST_LOG=warn "$BIN" serve --node-id "$i" --data-dir "$WORK/data/r$i" \
    --http-addr "127.0.0.1:2758$i" --grpc-addr "127.0.0.1:2759$i" --rstmdb-addr "127.0.0.1:2760$i" \
    --peer 1=127.0.0.1:27591 --peer 2=127.0.0.1:27592 --peer 3=127.0.0.1:27593 \
    >"$WORK/r$i.log" 2>&1 &
  PIDS+=($!)
done

ready=0
for _ in $(seq 1 150); do
  if listening 27511 && listening 27512 && curl -sf --noproxy '*' --max-time 2 127.0.0.1:27581/ready >/dev/null; then
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

# raftmesh's HTTP addresses, the current leader first (asked before every
# raftmesh run).
raftmesh_addrs() {
  local i j id out
  for _ in $(seq 1 50); do
    for i in 1 2 3; do
      id="$(curl -sf --noproxy '*' --max-time 2 "127.0.0.1:2758$i/cluster" |
        python3 -c 'import json,sys; print(json.load(sys.stdin).get("leader") or "")' 2>/dev/null || true)"
      case "$id" in
      1 | 2 | 3)
        out="127.0.0.1:2758$id"
        for j in 1 2 3; do [ "$j" = "$id" ] || out="$out,127.0.0.1:2758$j"; done
        echo "$out"
        return 0
        ;;
      esac
    done
    sleep 0.2
  done
  echo "no raftmesh leader" >&2
  return 1
}

RESULTS="$WORK/results.txt"
: >"$RESULTS"
echo "LOADAVG before $(cat /proc/loadavg)" | tee -a "$RESULTS"

run() { # round system subs window
  local round="$1" addrs
  shift
  case "$1" in
  driftdb-0.1.4) addrs="$ORIG_PLAIN" ;;
  driftdb-0.1.4-nodelay) addrs="$ORIG_NODELAY" ;;
  raftmesh-3) addrs="$(raftmesh_addrs)" ;;
  esac
  echo "  $1 S=$2 W=$3 -> $addrs" >&2
  if ! timeout $((${DURATION%.*} + ${WARMUP%.*} + 60)) "$LOAD" "$addrs" --subs "$2" --window "$3" \
    --duration "$DURATION" --warmup "$WARMUP" --label "$1" |
    sed "s/^RESULT /RESULT round=$round /" | tee -a "$RESULTS"; then
    echo "  $1 S=$2 W=$3: load generator failed" >&2
  fi
}

SYSTEMS=(driftdb-0.1.4 driftdb-0.1.4-nodelay raftmesh-3)
for round in $(seq 1 "$ROUNDS"); do
  order=("${SYSTEMS[@]}")
  if [ $((round % 2)) = 0 ]; then
    order=()
    for ((k = ${#SYSTEMS[@]} - 1; k >= 0; k--)); do order+=("${SYSTEMS[$k]}"); done
  fi
  for cell in $CELLS; do
    echo "round $round: S=${cell%x*} W=${cell#*x} ($(cut -d' ' -f1-3 /proc/loadavg))" >&2
    for s in "${order[@]}"; do run "$round" "$s" "${cell%x*}" "${cell#*x}"; done
  done
done
echo "LOADAVG after $(cat /proc/loadavg)" | tee -a "$RESULTS"
echo "original's dropped-delivery log lines: plain $(grep -c 'Failed to send message to user' "$WORK/orig-plain.log" || true)," \
  "nodelay $(grep -c 'Failed to send message to user' "$WORK/orig-nodelay.log" || true)"

python3 - "$RESULTS" <<'PY'
import statistics, sys
rows, load = [], {}
for line in open(sys.argv[1]):
    f = line.split()
    if f and f[0] == "RESULT":
        rows.append(dict(kv.split("=", 1) for kv in f[1:]))
    elif f and f[0] == "LOADAVG":
        load[f[1]] = " ".join(f[2:5])
systems = list(dict.fromkeys(r["system"] for r in rows))
cells = list(dict.fromkeys((int(r["subs"]), int(r["window"])) for r in rows))
def pick(s, c):
    return [r for r in rows if r["system"] == s and (int(r["subs"]), int(r["window"])) == c]
def med(rs, k):
    xs = [float(r[k]) for r in rs]
    return statistics.median(xs) if xs else float("nan")
print(f"\nload average (1/5/15 min): before {load.get('before', '?')}, after {load.get('after', '?')}")
print("\n| system | S | W | acked pushes/s | deliveries/s | deliveries/s by round | p50 ms | p99 ms "
      "| missing | closed sockets | publisher lost |")
print("|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|")
for c in cells:
    for s in systems:
        rs = pick(s, c)
        if not rs:
            continue
        by_round = " / ".join(f"{float(r['deliveries_per_s']):.0f}" for r in sorted(rs, key=lambda r: int(r["round"])))
        tot = lambda k: sum(int(r[k]) for r in rs)
        exp = sum(int(r["expected_deliveries"]) for r in rs)
        miss = tot("missing")
        share = f" ({100.0 * miss / exp:.1f} %)" if exp and miss else ""
        print(f"| {s} | {c[0]} | {c[1]} | {med(rs, 'acked_per_s'):.0f} | {med(rs, 'deliveries_per_s'):.0f} | {by_round} "
              f"| {med(rs, 'p50_ms'):.3f} | {med(rs, 'p99_ms'):.3f} | {miss}{share} | {tot('closed')} | {tot('pub_lost')} |")
print("\n| goal: more deliveries/s than the original, 0 missing | S | W | raftmesh-3 | best original | ratio | met |")
print("|---|---:|---:|---:|---:|---:|---|")
for c in cells:
    r = pick("raftmesh-3", c)
    o = [x for s in systems if s != "raftmesh-3" for x in [pick(s, c)] if x]
    if not r or not o:
        continue
    best = max(med(x, "deliveries_per_s") for x in o)
    mine = med(r, "deliveries_per_s")
    miss = sum(int(x["missing"]) + int(x["closed"]) for x in r)
    ratio = mine / best if best else float("nan")
    print(f"| | {c[0]} | {c[1]} | {mine:.0f} | {best:.0f} | {ratio:.2f} | {'yes' if ratio > 1 and miss == 0 else 'no'} |")
PY
echo "raw results: $RESULTS"
