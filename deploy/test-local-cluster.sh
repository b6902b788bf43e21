#!/usr/bin/env bash
# Integration test of the compose topology on real processes in network
# namespaces (deploy/local-cluster.sh): bring it up, write through node 1,
# read through node 2, kill -9 the leader, write and read through the two
# survivors, restart the killed node and watch it catch up, then tear it all
# down and check that nothing (namespaces, veths, bridge, processes) is left.
#
#   sudo deploy/test-local-cluster.sh       (exit 0 pass, 1 fail, 2 cannot run)
#
# Talks only to the namespace addresses local-cluster.sh creates
# (10.88.0.11-13); every wait is bounded. Binary: as local-cluster.sh
# (RAFTMESH_BIN, else target/{release,debug}/raftmesh).
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LC="$HERE/local-cluster.sh"
NET=10.88.0
KEY=deploy-test

if [ "$(id -u)" != 0 ]; then
  echo "local-cluster test: needs root (network namespaces)" >&2
  exit 2
fi
if ip netns list 2>/dev/null | grep -q '^rmlc-' || ip link show rmlcbr0 >/dev/null 2>&1; then
  echo "local-cluster test: a local cluster is already up; run '$LC down' first" >&2
  exit 2
fi

STATE="$(mktemp -d /tmp/rmlc-test.XXXXXX)"
export RAFTMESH_LOCAL_DIR="$STATE"
export RMLC_WAIT_S="${RMLC_WAIT_S:-30}"
pass=0
fail=0
torn_down=0

ok() { pass=$((pass + 1)); echo "ok   - $*"; }
bad() { fail=$((fail + 1)); echo "FAIL - $*"; }
summary() {
  echo "local-cluster test: $pass passed, $fail failed"
  [ "$fail" = 0 ] && [ "$pass" -gt 0 ]
}
cleanup() {
  if [ "$torn_down" = 0 ]; then
    "$LC" down --purge >/dev/null 2>&1 || true
  fi
  rm -rf "$STATE"
}
trap cleanup EXIT
trap 'echo "local-cluster test: interrupted"; exit 130' INT TERM

abort() {
  bad "$*"
  for i in 1 2 3; do
    if [ -f "$STATE/n$i.log" ]; then
      echo "--- n$i.log (last lines)"
      tail -n 15 "$STATE/n$i.log"
    fi
  done
  summary
  exit 1
}

url() { echo "http://$NET.$((10 + $1)):8080$2"; }

# req METHOD NODE PATH [BODY]: sets CODE and BODY (CODE 000: no answer).
req() {
  local out
  out="$(curl -sS --noproxy '*' --connect-timeout 1 --max-time 8 -o - -w '\n%{http_code}' \
    -X "$1" ${4:+-d "$4"} "$(url "$2" "$3")" 2>/dev/null)"
  CODE="${out##*$'\n'}"
  BODY="${out%$'\n'*}"
  [ -n "$CODE" ] || CODE=000
}

# retry SECONDS METHOD NODE PATH [BODY]: repeats while the answer is "no
# leader yet" (503), "outcome unknown" (504; an unconditional PUT of the same
# value is safe to repeat) or no answer, for at most SECONDS.
retry() {
  local deadline=$((SECONDS + $1))
  shift
  while :; do
    req "$@"
    case "$CODE" in 503 | 504 | 000) ;; *) return 0 ;; esac
    [ "$SECONDS" -lt "$deadline" ] || return 0
    sleep 0.3
  done
}

json_int() { grep -o "\"$1\":[0-9]*" <<<"$2" | head -n 1 | cut -d: -f2; }

echo "local-cluster test: state in $STATE"

# 1. up: three namespaces, nodes configured as the compose services, all ready.
if "$LC" up; then ok "up: three nodes ready"; else abort "up failed"; fi

# 2. write through node 1.
retry 10 PUT 1 "/kv/$KEY" '{"value":1}'
rev1="$BODY"
if [ "$CODE" = 200 ] && [[ "$rev1" =~ ^[0-9]+$ ]]; then
  ok "PUT /kv/$KEY {\"value\":1} via node 1 -> revision $rev1"
else
  abort "PUT via node 1: HTTP $CODE $BODY"
fi

# 3. linearizable read through node 2.
retry 10 GET 2 "/kv/$KEY"
if [ "$CODE" = 200 ] && [ "$BODY" = "{\"revision\":$rev1,\"value\":1}" ]; then
  ok "GET via node 2 -> $BODY"
else
  abort "GET via node 2: HTTP $CODE $BODY (expected {\"revision\":$rev1,\"value\":1})"
fi

# 4. kill -9 the leader.
req GET 1 /cluster
leader="$(json_int leader "$BODY")"
case "$leader" in 1 | 2 | 3) ;; *) abort "no leader in node 1's /cluster: $BODY" ;; esac
pid="$(cat "$STATE/n$leader.pid" 2>/dev/null || true)"
if [ -z "$pid" ] || ! grep -q raftmesh "/proc/$pid/cmdline" 2>/dev/null; then
  abort "no live pid for leader $leader"
fi
kill -KILL "$pid"
for _ in $(seq 1 50); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
if [ -d "/proc/$pid" ]; then abort "leader $leader (pid $pid) still alive after kill -9"; fi
ok "kill -9 leader node $leader (pid $pid)"
survivors=()
for i in 1 2 3; do [ "$i" = "$leader" ] || survivors+=("$i"); done
a="${survivors[0]}"
b="${survivors[1]}"

# 5. the survivors elect a new leader.
new_leader=""
deadline=$((SECONDS + 20))
while [ "$SECONDS" -lt "$deadline" ]; do
  req GET "$a" /cluster
  new_leader="$(json_int leader "$BODY")"
  if [ -n "$new_leader" ] && [ "$new_leader" != "$leader" ] && [ "$new_leader" != 0 ]; then break; fi
  new_leader=""
  sleep 0.3
done
if [ -n "$new_leader" ]; then ok "new leader: node $new_leader"; else abort "no new leader within 20s (node $a: $BODY)"; fi

# 6. write through one survivor...
retry 20 PUT "$a" "/kv/$KEY" '{"value":2}'
rev2="$BODY"
if [ "$CODE" = 200 ] && [[ "$rev2" =~ ^[0-9]+$ ]] && [ "$rev2" -gt "$rev1" ]; then
  ok "PUT {\"value\":2} via node $a -> revision $rev2"
else
  abort "PUT via survivor $a: HTTP $CODE $BODY"
fi

# 7. ...and read it back through the other.
retry 20 GET "$b" "/kv/$KEY"
if [ "$CODE" = 200 ] && [ "$BODY" = "{\"revision\":$rev2,\"value\":2}" ]; then
  ok "GET via node $b -> $BODY"
else
  abort "GET via survivor $b: HTTP $CODE $BODY (expected {\"revision\":$rev2,\"value\":2})"
fi

# 8. the killed node restarts from its data and catches up (local read).
if "$LC" start "$leader"; then
  caught=""
  deadline=$((SECONDS + 20))
  while [ "$SECONDS" -lt "$deadline" ]; do
    req GET "$leader" "/kv/$KEY?stale"
    if [ "$CODE" = 200 ] && [ "$BODY" = "{\"revision\":$rev2,\"value\":2}" ]; then caught=1; break; fi
    sleep 0.3
  done
  if [ -n "$caught" ]; then ok "restarted node $leader caught up: $BODY"; else bad "restarted node $leader did not catch up: HTTP $CODE $BODY"; fi
else
  bad "restarting node $leader failed"
fi

# 9. down removes everything.
pids="$(cat "$STATE"/n*.pid 2>/dev/null | tr '\n' ' ')"
if "$LC" down --purge; then
  torn_down=1
  left=""
  ip netns list 2>/dev/null | grep -q '^rmlc-' && left="$left namespaces"
  ip link show rmlcbr0 >/dev/null 2>&1 && left="$left bridge"
  ip -o link show 2>/dev/null | grep -q ': rmlc-' && left="$left veths"
  for p in $pids; do [ -d "/proc/$p" ] && left="$left pid:$p"; done
  [ -e "$STATE/n1" ] && left="$left data"
  if [ -z "$left" ]; then ok "down: no namespace, veth, bridge, process or data left"; else bad "down left:$left"; fi
else
  bad "down failed"
fi

summary
