# raftmesh — the two commands of the README:
#   make run    one node on embedded defaults (HTTP 127.0.0.1:8080, gRPC 127.0.0.1:7080)
#   make test   the whole test suite
# Both start by installing the system packages the build needs (as root).

CARGO ?= cargo
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

test: deps
	$(CARGO) test --workspace

fmt:
	$(CARGO) fmt --all

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
