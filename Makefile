# raftmesh — the two commands of the README:
#   make run    one node on embedded defaults (HTTP 127.0.0.1:8080, gRPC 127.0.0.1:7080)
#   make test   the whole test suite
# Both start by installing the system packages the build needs (as root).

CARGO ?= cargo
# Where cargo puts builds (CARGO_TARGET_DIR when set).
TARGET_DIR := $(if $(CARGO_TARGET_DIR),$(CARGO_TARGET_DIR),$(CURDIR)/target)
APT_PACKAGES := librocksdb-dev libclang-dev clang pkg-config ca-certificates curl iproute2 iptables faketime

.PHONY: deps run test build release fmt lint

# Debian's RocksDB is linked instead of the bundled C++ build (see DESIGN.md);
# bindgen needs libclang. apt-get runs only when something is missing.
deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@command -v $(CARGO) >/dev/null || { echo "cargo (Rust >= 1.80) is required: https://rustup.rs"; exit 1; }

run: deps
	$(CARGO) run --release --bin raftmesh

build: deps
	$(CARGO) build --workspace

release: deps
	$(CARGO) build --release --bin raftmesh

# Then the real clients of the originals against a local 3-node cluster of
# this build: rstmdb-cli 0.3.0 and PyPI rstmdb 0.2.1, and the npm DriftDB
# client 1.0.12 (each installed once, cached in $$HOME/.cache, outside the clone).
test: deps
	$(CARGO) test --workspace
	$(CARGO) build --bin raftmesh
	RAFTMESH_BIN="$(TARGET_DIR)/debug/raftmesh" bash deploy/test-rstmdb-clients.sh
	RAFTMESH_BIN="$(TARGET_DIR)/debug/raftmesh" bash deploy/test-driftdb-client.sh

fmt:
	$(CARGO) fmt --all

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
