#!/usr/bin/env bash
# Scripted check of deploy/local-3.sh and of the README's "pm3 KV against it"
# examples, on real nodes on loopback:
#   - the binary is found under $CARGO_TARGET_DIR/release;
#   - `up` twice: the second says the nodes run and keeps their pids;
#   - `stop 2` waits for the exit (kill -9 after the bound, for a node that
#     does not act on TERM), `start 2` brings it back;
#   - `up` of a second cluster on the same ports fails and names the port;
#   - a node killed with -9 (stale pid file) is restarted by `up`, alone;
#   - a node whose pid file was lost is found, not started twice;
#   - `down` keeps the data, `down --purge` leaves nothing;
#   - the README examples, run on a fresh cluster, answer what the README
#     shows, and a second pass after `down --purge` gives the same revisions.
#
#   deploy/test-local-3.sh       (exit 0 pass, 1 fail, 2 cannot run)
#
# Binary: $RAFTMESH_BIN, else ${CARGO_TARGET_DIR:-target}/{release,debug}/raftmesh.
# Ports: node 1's are RAFTMESH_LOCAL_HTTP_PORT (18081) and
# RAFTMESH_LOCAL_GRPC_PORT (19081), away from a developer's cluster on 8081;
# the README's localhost:808N become 127.0.0.1 on these. Every wait is bounded.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
L3="$HERE/local-3.sh"
README="$ROOT/README.md"
HTTP_PORT="${RAFTMESH_LOCAL_HTTP_PORT:-18081}"
GRPC_PORT="${RAFTMESH_LOCAL_GRPC_PORT:-19081}"
RSTMDB_PORT="${RAFTMESH_LOCAL_RSTMDB_PORT:-17401}"

say() { echo "local-3 test: $*"; }
cannot() { say "$*" >&2; exit 2; }

BIN="${RAFTMESH_BIN:-}"
if [ -z "$BIN" ]; then
  for c in "${CARGO_TARGET_DIR:-$ROOT/target}/release/raftmesh" "${CARGO_TARGET_DIR:-$ROOT/target}/debug/raftmesh"; do
    if [ -x "$c" ]; then BIN="$c"; break; fi
  done
fi
if [ -z "$BIN" ] || [ ! -x "$BIN" ]; then cannot "no raftmesh binary: cargo build --bin raftmesh, or set RAFTMESH_BIN"; fi
BIN="$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")"
command -v curl >/dev/null || cannot "needs curl"
for i in 0 1 2; do
  for p in $((HTTP_PORT + i)) $((GRPC_PORT + i)) $((RSTMDB_PORT + i)); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      cannot "127.0.0.1:$p is in use; free it or set RAFTMESH_LOCAL_HTTP_PORT / RAFTMESH_LOCAL_GRPC_PORT / RAFTMESH_LOCAL_RSTMDB_PORT"
    fi
  done
done

TMP="$(mktemp -d /tmp/local3-test.XXXXXX)"
STATE="$TMP/state"
# local-3.sh must find the binary through CARGO_TARGET_DIR alone.
mkdir -p "$TMP/target/release"
ln -s "$BIN" "$TMP/target/release/raftmesh"
l3() {
  env -u RAFTMESH_BIN CARGO_TARGET_DIR="$TMP/target" RAFTMESH_LOCAL_DIR="$STATE" \
    RAFTMESH_LOCAL_HTTP_PORT="$HTTP_PORT" RAFTMESH_LOCAL_GRPC_PORT="$GRPC_PORT" \
    RAFTMESH_LOCAL_RSTMDB_PORT="$RSTMDB_PORT" RAFTMESH_LOCAL_WAIT_S=30 RAFTMESH_LOCAL_STOP_S="${STOP_S:-10}" timeout 90 "$L3" "$@"
}

pass=0
fail=0
ok() { pass=$((pass + 1)); echo "ok   - $*"; }
bad() { fail=$((fail + 1)); echo "FAIL - $*"; }
# check NAME: passes if the command before it succeeded.
check() { if [ "$?" = 0 ]; then ok "$1"; else bad "$1"; fi; }
summary() {
  say "$pass passed, $fail failed"
  [ "$fail" = 0 ] && [ "$pass" -gt 0 ]
}
cleanup() {
  l3 down --purge >/dev/null 2>&1
  # Whatever local-3.sh could not stop: only pids this test saw, still ours.
  for p in $SEEN_PIDS; do
    if [ "$p" != - ] && tr '\0' ' ' 2>/dev/null <"/proc/$p/cmdline" | grep -qF -- "--data-dir $STATE/"; then
      kill -KILL "$p" 2>/dev/null && say "killed leftover pid $p"
    fi
  done
  rm -rf "$TMP"
}
SEEN_PIDS=""
trap cleanup EXIT
trap 'say interrupted; exit 130' INT TERM

# PIDS: the three pid files' contents ("-" for none).
pids() {
  local i
  PIDS=""
  for i in 1 2 3; do PIDS="$PIDS${PIDS:+ }$(cat "$STATE/n$i.pid" 2>/dev/null || echo -)"; done
  SEEN_PIDS="$SEEN_PIDS $PIDS"
}
alive() { [ -d "/proc/$1" ] && [ "$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null)" != Z ]; }
none_alive() {
  local p
  for p in "$@"; do if [ "$p" != - ] && alive "$p"; then return 1; fi; done
}
url() { echo "http://127.0.0.1:$((HTTP_PORT + $1 - 1))$2"; }
get() { curl -sS --noproxy '*' --connect-timeout 1 --max-time 5 "$(url "$1" "$2")"; }
put() { curl -sS --noproxy '*' --connect-timeout 1 --max-time 5 -X PUT "$(url "$1" "$2")" -d "$3"; }

# The README's pm3 examples: "COMMAND<TAB>EXPECTED" per curl line, EXPECTED
# the first word after "→" (on its line or the comment line under it).
readme_examples() {
  awk '/^## pm3 KV against it/ {s = 1; next}
       s && /^## / {exit}
       s && /^```sh/ {b = 1; next}
       b && /^```/ {exit}
       b' "$README" |
    {
      cmd="" want=""
      while IFS= read -r line; do
        case "$line" in
        curl\ *)
          if [ -n "$cmd" ]; then printf '%s\t%s\n' "$cmd" "$want"; fi
          cmd="${line%%#*}" want=""
          ;;
        *"#"*) ;;
        *) continue ;;
        esac
        if [[ "$line" == *"# → "* ]]; then
          want="${line#*# → }"
          want="${want%% *}"
        fi
      done
      if [ -n "$cmd" ]; then printf '%s\t%s\n' "$cmd" "$want"; fi
    }
}

# readme_pass OUT: runs every example against this cluster, writes
# "COMMAND → ANSWER" lines for those the README shows an answer for, and
# fails if an answer differs from the README or a command fails.
readme_pass() {
  local out="$1" cmd want got rc n=0 errs=0 c rest i
  : >"$out"
  while IFS=$'\t' read -r cmd want; do
    # Only plain curl calls, and only to the three nodes.
    c="$cmd"
    for i in 1 2 3; do c="${c//localhost:808$i/127.0.0.1:$((HTTP_PORT + i - 1))}"; done
    rest="$c"
    for i in 1 2 3; do rest="${rest//127.0.0.1:$((HTTP_PORT + i - 1))/}"; done
    if [[ "$c" =~ [\;\&\|\$\`\<\>\\\(\)] ]] || [[ "$rest" =~ ([A-Za-z0-9.-]+:[0-9]+|://|localhost) ]]; then
      echo "       not run (not a plain curl to a local-3 node): $cmd"
      errs=$((errs + 1))
      continue
    fi
    got="$(eval "curl -sS -f --noproxy '*' --connect-timeout 1 --max-time 5 ${c#curl }" 2>&1)"
    rc=$?
    n=$((n + 1))
    if [ "$rc" != 0 ]; then
      echo "       $cmd: curl exit $rc: $got"
      errs=$((errs + 1))
    elif [ -n "$want" ]; then
      echo "$cmd → $got" >>"$out"
      if [ "$got" != "$want" ]; then
        echo "       $cmd"
        echo "         README: $want"
        echo "         got:    $got"
        errs=$((errs + 1))
      fi
    fi
  done < <(readme_examples)
  [ "$n" -ge 5 ] || { echo "       only $n examples found in $README"; errs=$((errs + 1)); }
  [ "$errs" = 0 ]
}

say "binary $BIN, state in $STATE, HTTP ports $HTTP_PORT-$((HTTP_PORT + 2))"

# --- binary lookup -------------------------------------------------------
out="$(env -u RAFTMESH_BIN CARGO_TARGET_DIR="$TMP/none" RAFTMESH_LOCAL_DIR="$STATE" \
  RAFTMESH_LOCAL_HTTP_PORT="$HTTP_PORT" RAFTMESH_LOCAL_GRPC_PORT="$GRPC_PORT" \
  RAFTMESH_LOCAL_RSTMDB_PORT="$RSTMDB_PORT" timeout 30 "$L3" up 2>&1)"
rc=$?
[ "$rc" != 0 ] && [[ "$out" == *"$TMP/none/release/raftmesh"* ]] && [ ! -e "$STATE" ]
check "up without a binary fails, names \$CARGO_TARGET_DIR/release/raftmesh, creates nothing"

# --- up, README pass 1 on the fresh cluster -------------------------------
if ! out="$(l3 up 2>&1)"; then
  bad "up"
  printf '%s\n' "$out"
  for i in 1 2 3; do echo "--- n$i.log" && tail -n 10 "$STATE/n$i.log" 2>/dev/null; done
  summary
  exit 1
fi
ok "up (binary found through CARGO_TARGET_DIR)"
pids
first="$PIDS"
readme_pass "$TMP/pass1"
check "README examples on a fresh cluster answer what the README shows"
# The README's watch line: node 3 replays every change the examples made
# through nodes 1 and 2 (curl ends it after its --max-time; exit 28).
out="$(curl -sSN --noproxy '*' --max-time 2 "$(url 3 '/watch/kv?from=1')" 2>/dev/null)"
grep -qx '{"revision":2,"key":"exampleKey","value":4}' <<<"$out" &&
  grep -qx '{"revision":4,"key":"exampleKey","value":6}' <<<"$out" &&
  grep -qx '{"revision":5,"key":"exampleKey","deleted":true}' <<<"$out"
check "watch from 1 on node 3 streams the examples' writes in order"
# The README's room line: a room made on node 1, known on node 3.
out="$(curl -sS --noproxy '*' --max-time 5 -X POST "$(url 1 /new)")"
room="$(sed -n 's/.*"room":"\([0-9a-f]*\)".*/\1/p' <<<"$out")"
[ -n "$room" ] && grep -q "\"socket_url\":\"ws://127.0.0.1:$HTTP_PORT/room/$room/connect\"" <<<"$out" &&
  get 3 "/room/$room" | grep -q "\"room\":\"$room\""
check "POST /new on node 1 makes a room node 3 knows, its socket_url on node 1"

out="$(l3 up 2>&1)"
rc=$?
pids
[ "$rc" = 0 ] && [ "$PIDS" = "$first" ]
check "up again: exit 0, pids unchanged ($first)"
[ "$(grep -c "node [123]: running (pid [0-9]*)" <<<"$out")" = 3 ] && ! grep -q started <<<"$out"
check "up again says each node runs, with its pid, and starts none"
out="$(l3 status)" && [ "$(grep -c ": running (pid" <<<"$out")" = 3 ]
check "status: exit 0, three nodes running"
# A second cluster on the same ports (another state dir) must refuse to
# start, not take over: the clash a developer's own cluster would cause.
out="$(env -u RAFTMESH_BIN CARGO_TARGET_DIR="$TMP/target" RAFTMESH_LOCAL_DIR="$TMP/other" \
  RAFTMESH_LOCAL_HTTP_PORT="$HTTP_PORT" RAFTMESH_LOCAL_GRPC_PORT="$GRPC_PORT" \
  RAFTMESH_LOCAL_RSTMDB_PORT="$RSTMDB_PORT" timeout 30 "$L3" up 2>&1)"
rc=$?
pids
[ "$rc" != 0 ] && grep -q "127.0.0.1:$HTTP_PORT is already in use" <<<"$out" && [ "$PIDS" = "$first" ] &&
  [ -z "$(ls "$TMP/other"/*.pid 2>/dev/null)" ]
check "up of another cluster on the same ports fails, names the port, leaves this one alone"
rm -rf "$TMP/other"

# --- stop 2 / start 2 -----------------------------------------------------
read -r p1 p2 p3 <<<"$first"
l3 stop 2 >/dev/null 2>&1
rc=$?
# Checked at once: stop must not return before the process is gone.
[ "$rc" = 0 ] && ! alive "$p2" && [ ! -e "$STATE/n2.pid" ]
check "stop 2 returns after node 2 (pid $p2) exited"
out="$(l3 status)"
grep -qx "node 2: not running" <<<"$out"
check "status says node 2 is not running"
alive "$p1" && alive "$p3"
check "nodes 1 and 3 still running"
[[ "$(put 1 /kv/two '{"value":2}')" =~ ^[0-9]+$ ]]
check "a write goes through with two nodes"
out="$(l3 stop 2)" && grep -q "node 2: not running" <<<"$out"
check "stop 2 again: says not running, exit 0"
out="$(l3 start 2 2>&1)"
rc=$?
pids
read -r _ q2 _ <<<"$PIDS"
[ "$rc" = 0 ] && [ "$q2" != "$p2" ] && alive "$q2" && grep -q "node 2: ready" <<<"$out"
check "start 2: ready, new pid $q2"
out="$(l3 start 2)" && grep -q "already running (pid $q2)" <<<"$out"
check "start 2 when running: says so, same pid"
# A node that does not act on TERM (here: stopped) is killed after the bound.
kill -STOP "$q2"
t0=$SECONDS
out="$(STOP_S=2 l3 stop 2 2>&1)"
rc=$?
[ "$rc" = 0 ] && ! alive "$q2" && grep -q "kill -9" <<<"$out" && [ $((SECONDS - t0)) -le 6 ]
check "stop 2 of a node ignoring TERM: kill -9 after RAFTMESH_LOCAL_STOP_S=2"
out="$(l3 start 2 2>&1)"
rc=$?
pids
read -r _ q2 _ <<<"$PIDS"
[ "$rc" = 0 ] && alive "$q2"
check "start 2 again (pid $q2)"
! l3 stop 4 >/dev/null 2>&1
check "stop 4 is refused"

# --- stale and lost pid files ---------------------------------------------
kill -KILL "$p3"
for _ in $(seq 1 50); do alive "$p3" || break; sleep 0.1; done
out="$(l3 up 2>&1)"
rc=$?
pids
read -r r1 r2 r3 <<<"$PIDS"
[ "$rc" = 0 ] && grep -q "node 3: stale pid file" <<<"$out" && [ "$r1 $r2" = "$p1 $q2" ] &&
  [ "$r3" != "$p3" ] && alive "$r3" && [ "$(grep -c started <<<"$out")" = 1 ]
check "up after kill -9 of node 3: stale pid file reported, only node 3 started"
rm -f "$STATE/n1.pid"
out="$(l3 up 2>&1)"
rc=$?
[ "$rc" = 0 ] && grep -q "node 1: running (pid $r1)" <<<"$out" && ! grep -q started <<<"$out" &&
  [ "$(cat "$STATE/n1.pid" 2>/dev/null)" = "$r1" ]
check "up after node 1's pid file was lost: finds pid $r1, starts nothing"

# --- down keeps data, down --purge deletes it ------------------------------
rev="$(put 2 /kv/kept '{"value":7}')"
pids
before="$PIDS"
l3 down >/dev/null 2>&1
rc=$?
# shellcheck disable=SC2086 # a list of pids
[ "$rc" = 0 ] && none_alive $before
check "down stops all three (pids $before)"
[ -d "$STATE/n1" ] && [ -d "$STATE/n2" ] && [ -d "$STATE/n3" ]
check "down keeps the data"
l3 up >/dev/null 2>&1
pids
[ "$(get 3 /kv/kept)" = "{\"revision\":$rev,\"value\":7}" ]
check "after down and up the data is there: kept -> {\"revision\":$rev,\"value\":7}"
# Why the README asks for a fresh cluster: revisions are log indexes.
r="$(put 2 /kv/exampleKey '{"value": 4}')" && [[ "$r" =~ ^[0-9]+$ ]] && [ "$r" -gt 2 ]
check "on a cluster with data, the README's first PUT answers more than 2 (${r:-?})"

pids
before="$PIDS"
l3 down --purge >/dev/null 2>&1
rc=$?
# shellcheck disable=SC2086 # a list of pids
[ "$rc" = 0 ] && none_alive $before && [ ! -e "$STATE" ]
check "down --purge: no process, no data dir"

# --- README pass 2 ----------------------------------------------------------
if l3 up >/dev/null 2>&1; then
  pids
  readme_pass "$TMP/pass2"
  check "README examples after down --purge and up answer what the README shows"
  if [ -s "$TMP/pass1" ] && cmp -s "$TMP/pass1" "$TMP/pass2"; then
    ok "second pass gives the same revisions as the first ($(grep -c . "$TMP/pass1") answers)"
  else
    bad "second pass differs from the first"
    diff "$TMP/pass1" "$TMP/pass2" | sed 's/^/       /'
  fi
else
  bad "up after down --purge"
fi

pids
before="$PIDS"
l3 down --purge >/dev/null 2>&1
rc=$?
# shellcheck disable=SC2086 # a list of pids
[ "$rc" = 0 ] && none_alive $before && [ ! -e "$STATE" ]
check "down --purge at the end: no process, no data dir"

summary
