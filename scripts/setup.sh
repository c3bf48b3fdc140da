# Sourced by the other scripts: makes sure the toolchain and system packages exist.
# Installs what is missing (needs root for apt-get, as on CI); does nothing when all is there.
if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "cargo not found: install Rust from https://rustup.rs first" >&2
    exit 1
  fi
fi
if ! command -v cc >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq build-essential >/dev/null
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true
# SQLite headers and library for examples/c/exactly_once_host.c.
if [ ! -f /usr/include/sqlite3.h ]; then
  apt-get update -qq && apt-get install -y -qq libsqlite3-dev >/dev/null
fi
