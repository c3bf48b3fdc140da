#!/usr/bin/env bash
# Builds mcsync and runs the demo: one publisher, three subscribers on loopback multicast.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo build --release -p mcsync-cli
exec target/release/mcsync demo "$@"
