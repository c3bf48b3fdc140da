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
cargo test --workspace 2>&1 | tee target/cargo-test.log
for extra in scripts/test-c.sh scripts/test-python.sh; do
  if [ -x "$extra" ]; then
    echo "== $extra"
    "$extra"
  fi
done
