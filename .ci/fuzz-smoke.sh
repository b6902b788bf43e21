#!/usr/bin/env bash
# Fuzz smoke: builds every fuzz target (proto/, gateway/, raft-store/fuzz) with
# nightly and runs each for a few seconds from its committed corpus, so a
# target that stops building, or a seed that now fails, fails CI. Real
# fuzzing is longer runs by hand: `cd proto && cargo +nightly fuzz run
# decode_entry` (targets: `cargo +nightly fuzz list`).
#
# The smoke build is unoptimized and without AddressSanitizer: on a cold
# 2-core machine that build is most of the time, and the code under test is
# safe Rust (the panics and assertions are what is checked).
set -euo pipefail
cd "$(dirname "$0")/.."

SECS="${FUZZ_SMOKE_SECS:-4}"
# Outside the clone, and apart from the workspace's target dir: fuzz builds
# use other compiler flags, sharing would rebuild both every time.
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$HOME/.cache/raftmesh-fuzz-target}"
export CARGO_TERM_COLOR=never

if ! cargo +nightly --version >/dev/null 2>&1; then
  if ! rustup toolchain install nightly --profile minimal; then
    echo "fuzz smoke skipped: no nightly toolchain and it could not be installed"
    exit 0
  fi
fi
if ! command -v cargo-fuzz >/dev/null; then
  cargo install cargo-fuzz --version 0.13.2 --locked
fi

build=(--dev --sanitizer none)
failed=()
for crate in gateway proto raft-store; do
  (cd "$crate" && cargo +nightly fuzz build "${build[@]}")
  for target in $(cd "$crate" && cargo +nightly fuzz list); do
    # New inputs go to a scratch dir; the committed corpus stays as it is.
    scratch="$(mktemp -d)"
    log="$scratch.log"
    if (cd "$crate" && cargo +nightly fuzz run "${build[@]}" "$target" "$scratch" \
      "fuzz/corpus/$target" -- -max_total_time="$SECS" -print_final_stats=1) >"$log" 2>&1; then
      echo "fuzz $crate/$target: ok, $(sed -n 's/^stat::number_of_executed_units: //p' "$log") runs"
    else
      echo "fuzz $crate/$target: FAILED (input in $crate/fuzz/artifacts/$target/)"
      tail -n 40 "$log"
      failed+=("$crate/$target")
    fi
    rm -rf "$scratch" "$log"
  done
done

if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz smoke failed: ${failed[*]}"
  exit 1
fi
echo "fuzz smoke: all targets ok"
