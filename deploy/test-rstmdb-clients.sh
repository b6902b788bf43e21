#!/usr/bin/env bash
# The real rstmdb clients against a local three-node cluster (loopback):
# rstmdb-cli 0.3.0 (crates.io) runs the command reference's examples through
# a follower, and the Python client (PyPI rstmdb 0.2.1) works against every
# node. Installs both, cached outside the clone, if missing:
#   rstmdb-cli  -> ${RAFTMESH_TOOLS:-$HOME/.cache/raftmesh-tools}/bin
#   Python venv -> ${RAFTMESH_PY:-$HOME/.cache/raftmesh-py}
# Binary: $RAFTMESH_BIN, else ${CARGO_TARGET_DIR:-target}/release/raftmesh.
# Every wait is bounded; the cluster is torn down on exit.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
TOOLS="${RAFTMESH_TOOLS:-$HOME/.cache/raftmesh-tools}"
PY="${RAFTMESH_PY:-$HOME/.cache/raftmesh-py}"
HTTP_PORT=28081 GRPC_PORT=29081 RSTMDB_PORT=27401

say() { echo "rstmdb clients: $*"; }
die() { say "$*" >&2; exit 2; }

BIN="${RAFTMESH_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/raftmesh}"
[ -x "$BIN" ] || die "no raftmesh binary at $BIN (cargo build --bin raftmesh, or set RAFTMESH_BIN)"

CLI="$TOOLS/bin/rstmdb-cli"
if [ ! -x "$CLI" ] || ! "$CLI" --version 2>/dev/null | grep -q 0.3.0; then
  say "installing rstmdb-cli 0.3.0 into $TOOLS"
  CARGO_TARGET_DIR="$HOME/.cache/raftmesh-tools-target" \
    cargo install --quiet --locked rstmdb-cli --version 0.3.0 --root "$TOOLS" || die "cargo install rstmdb-cli failed"
fi
if ! "$PY/bin/python" -c 'import rstmdb' 2>/dev/null; then
  say "installing PyPI rstmdb 0.2.1 into $PY"
  command -v python3 >/dev/null || die "needs python3"
  python3 -m venv "$PY" 2>/dev/null || {
    apt-get install -y -qq python3-venv >/dev/null && python3 -m venv "$PY"
  } || die "cannot make a venv at $PY"
  "$PY/bin/pip" install -q rstmdb==0.2.1 || die "pip install rstmdb==0.2.1 failed"
fi

STATE="$(mktemp -d /tmp/rstmdb-clients.XXXXXX)"
l3() {
  RAFTMESH_BIN="$BIN" RAFTMESH_LOCAL_DIR="$STATE" RAFTMESH_LOCAL_HTTP_PORT="$HTTP_PORT" \
    RAFTMESH_LOCAL_GRPC_PORT="$GRPC_PORT" RAFTMESH_LOCAL_RSTMDB_PORT="$RSTMDB_PORT" \
    RAFTMESH_LOCAL_WAIT_S=30 timeout 90 "$HERE/local-3.sh" "$@"
}
cleanup() { l3 down --purge >/dev/null 2>&1; rm -rf "$STATE"; }
trap cleanup EXIT
l3 up >/dev/null || die "the local cluster did not start (logs in $STATE)"

pass=0 fail=0
ok() { pass=$((pass + 1)); echo "ok   - $*"; }
bad() { fail=$((fail + 1)); echo "FAIL - $*"; }
# check NAME: passes if the command before it succeeded; shows $out if not.
check() { if [ "$?" = 0 ]; then ok "$1"; else bad "$1"; printf '%s\n' "$out" | sed 's/^/       /'; fi; }
leader="$(curl -sS --noproxy '*' "127.0.0.1:$HTTP_PORT/cluster" | "$PY/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["leader"])')"
follower=1
[ "$leader" = 1 ] && follower=2
F="127.0.0.1:$((RSTMDB_PORT + follower - 1))"
cli() { timeout 20 "$CLI" -s "$1" "${@:2}" 2>&1; }

# The command reference's examples, through a follower.
DEF='{"states":["pending","paid","shipped"],"initial":"pending","transitions":[{"from":"pending","event":"PAY","to":"paid"},{"from":"paid","event":"SHIP","to":"shipped"}]}'
out="$(cli "$F" ping)" && grep -q PONG <<<"$out"
check "cli ping ($F, follower)"
out="$(cli "$F" put-machine -n order -v 1 "$DEF")" && grep -qi created <<<"$out"
check "cli put-machine"
out="$(cli "$F" create-instance -m order -V 1 -i order-001 -c '{"customer":"alice"}')" && grep -q pending <<<"$out"
check "cli create-instance"
out="$(cli "$F" apply-event -i order-001 -e PAY -p '{"amount":99.99}')" && grep -q paid <<<"$out"
check "cli apply-event"
for i in 1 2 3; do
  out="$(cli "127.0.0.1:$((RSTMDB_PORT + i - 1))" get-instance order-001)" && grep -q paid <<<"$out" && grep -q 99.99 <<<"$out"
  check "cli get-instance on node $i"
done
out="$(cli "$F" list-machines)" && grep -q order <<<"$out"
check "cli list-machines"
out="$(cli "$F" get-machine -n order -v 1)" && grep -q shipped <<<"$out"
check "cli get-machine"
out="$(cli "$F" wal-read -f 0 -l 10)" && grep -q apply_event <<<"$out"
check "cli wal-read"
out="$(cli "$F" info)" && grep -q raftmesh <<<"$out"
check "cli info"
out="$(cli "$F" apply-event -i order-001 -e PAY)"
grep -q INVALID_TRANSITION <<<"$out"
check "cli: a refused event names INVALID_TRANSITION"
# The README's POST /rstmdb line, on the follower's HTTP port.
out="$(curl -sS --noproxy '*' --max-time 10 "127.0.0.1:$((HTTP_PORT + follower - 1))/rstmdb" \
  -d '{"type":"request","id":"1","op":"GET_INSTANCE","params":{"instance_id":"order-001"}}')" &&
  grep -q '"status":"ok"' <<<"$out" && grep -q '"state":"paid"' <<<"$out"
check "POST /rstmdb GET_INSTANCE on the follower"
out="$(cli "$F" delete-instance order-001)"
check "cli delete-instance"
out="$(cli "$F" compact -f)" && grep -q 'Snapshots created: *3' <<<"$out"
check "cli compact: a snapshot on each of the 3 members"

# The Python client against every node.
out="$(RSTMDB_PORTS="$RSTMDB_PORT,$((RSTMDB_PORT + 1)),$((RSTMDB_PORT + 2))" timeout 60 "$PY/bin/python" - <<'EOF' 2>&1
import asyncio, os
from rstmdb import Client

async def main():
    ports = [int(p) for p in os.environ["RSTMDB_PORTS"].split(",")]
    async with Client("127.0.0.1", ports[1]) as c:
        await c.put_machine("py", 1, {"states": ["a", "b"], "initial": "a",
                                      "transitions": [{"from": "a", "event": "GO", "to": "b"}]})
        r = await c.create_instance("py", 1, instance_id="p-1", initial_ctx={"n": 1})
        assert r.state == "a", r
        r = await c.apply_event("p-1", "GO", payload={"m": 2}, idempotency_key="k1")
        again = await c.apply_event("p-1", "GO", payload={"m": 2}, idempotency_key="k1")
        assert again.wal_offset == r.wal_offset, (r, again)
        none = await c.create_instance("py", 1, instance_id="p-2")
        assert none.state == "a"
    for p in ports:
        async with Client("127.0.0.1", p) as c:
            g = await c.get_instance("p-1")
            assert g.state == "b" and g.ctx == {"n": 1, "m": 2}, g
            assert (await c.get_instance("p-2")).ctx == {}
            l = await c.list_instances(machine="py")
            assert l.total == 2 and [i.id for i in l.instances] == ["p-1", "p-2"], l
            assert await c.ping()
            w = await c.wal_stats()
            assert w.entry_count >= 0 and w.io_stats.fsyncs > 0, w
            print(f"port {p}: ok")

asyncio.run(main())
EOF
)"
rc=$?
[ "$rc" = 0 ] && [ "$(grep -c ': ok' <<<"$out")" = 3 ]
check "Python client on every node"

echo "rstmdb clients: $pass passed, $fail failed"
[ "$fail" = 0 ]
