#!/usr/bin/env bash
# Runs every test: Rust unit, property, simulation and integration tests (real multicast on
# loopback, real LMDB files), then the C and Python suites when present.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test"
# --no-fail-fast and no early exit: one failing test must not hide the others, nor keep the
# C and Python suites from running. The script still fails if anything failed.
failed=()
cargo test --workspace --no-fail-fast 2>&1 | tee target/cargo-test.log || failed+=("cargo test")
for extra in scripts/test-c.sh scripts/test-python.sh; do
  if [ -x "$extra" ]; then
    echo "== $extra"
    "$extra" || failed+=("$extra")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "== FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "== all tests passed"
