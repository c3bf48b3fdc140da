#!/usr/bin/env bash
# Builds and installs the Python package into a virtualenv (target/py-venv) the way a user
# would (`pip install ./mcsync-py`, maturin pulled in by pip), checks that its native module
# is under 8 MB without debug info, then runs its pytest suite with warnings as errors,
# checks the type stub against the built module, and type-checks a program using it with
# mypy --strict.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

PYTHON="${PYTHON:-python3}"
VENV=target/py-venv
if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"

echo "== pip install pytest pytest-timeout mypy prometheus_client ./mcsync-py"
"$PY" -m pip install --quiet pytest pytest-timeout mypy prometheus_client
# Rebuilt every run (the version does not change between builds); mcsync has no
# dependencies. pip fetches maturin into an isolated build environment.
"$PY" -m pip install --quiet --force-reinstall --no-deps ./mcsync-py

echo "== the native module: size and debug info"
# What the wheel ships: built by the release profile, without debug info (Cargo.toml).
MODULE=$(cd target && "../$PY" -c 'import mcsync._mcsync as m; print(m.__file__)')
MODULE_BYTES=$(stat -c %s "$MODULE")
echo "$MODULE: $MODULE_BYTES bytes"
if [ "$MODULE_BYTES" -ge $((8 * 1024 * 1024)) ]; then
  echo "the native module is 8 MB or more: debug info in the release profile?" >&2
  exit 1
fi
# (readelf's output captured first: `readelf | grep -q` under pipefail races with SIGPIPE)
if command -v readelf >/dev/null 2>&1 && grep -q ' \.debug_' <<<"$(readelf -S -W "$MODULE")"; then
  echo "the native module carries debug info" >&2
  exit 1
fi

# Keep caches and bytecode out of the work tree.
export PYTHONDONTWRITEBYTECODE=1
export MYPY_CACHE_DIR="$PWD/target/mypy-cache"

echo "== stub check (mypy.stubtest mcsync._mcsync)"
(cd target && "../$PY" -m mypy.stubtest mcsync._mcsync)

echo "== mypy --strict mcsync-py/tests/typing_check.py (a program using the stub)"
"$PY" -m mypy --strict mcsync-py/tests/typing_check.py

# The CLI, for the tests that scrape `mcsync serve/subscribe --metrics`.
cargo build --quiet -p mcsync-cli
export MCSYNC_BIN="$PWD/target/debug/mcsync"

echo "== pytest mcsync-py/tests"
status=0
"$PY" -m pytest -W error -p no:cacheprovider mcsync-py/tests || status=$?
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure here" >&2
  exit 1
fi
exit "$status"
