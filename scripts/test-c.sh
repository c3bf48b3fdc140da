#!/usr/bin/env bash
# C API tests: builds libmcsync (cargo, dev profile) and the C examples (system cc, -Werror,
# into target/examples-c/debug), then runs, on loopback only, with a random multicast group in
# 239.0.0.0/8:
#   1. converge     one publisher + two subscribers in one C process, 5 % injected loss each;
#                   replicas checked from C against a model of every write
#   2. processes    the publisher and subscriber examples as three processes, 5 % loss;
#                   each replica's digest must equal the publisher's
#   2a. interrupt   publisher.c gets SIGINT while publishing: it must stop, commit, print its
#                   version line for what it wrote, close, print "publisher: closed", exit 0
#   2b. exactly_once  exactly_once_host.c (a SQLite host subscribing with
#                   mcsync_subscriber_subscribe_after) killed with SIGKILL at 5 seeded random
#                   moments while publisher.c publishes, restarted each time; its table must
#                   equal the publisher's contents and it must have applied every version
#                   exactly once (a repeat breaks its `seen` primary key and it exits 3)
#   3. legacy_hook  a legacy server's update hook replicating through mcsync
#   4. misuse       NULL handles, invalid config, double close, callbacks closing their own
#                   subscription (no crash, no deadlock; each an error code and a message)
#   4b. twophase    two C two-phase participants, one refusing through its vote callback
#                   (the error names it); prepare/rollback/commit; verify reports agreement
#   4d. relay       test_relay.c: a publisher, a relay (mcsync_relay_open) and a subscriber of
#                   the relay; the downstream replica equals the master, the relay's key epoch
#                   is its own, its stats count every import; misuse gives status codes
#   4c. users       a users file written with mcsync_users_add; each user gets its grant;
#                   bad arguments are errors
#   5. valgrind     converge (small), misuse, twophase and users under valgrind --leak-check=full
#   6. install      the release library (cargo build --release): make install PREFIX=...;
#                   the installed libmcsync.so.VERSION has the SONAME libmcsync.so.MAJOR, no
#                   debug info and is under 8 MB; then the full example of docs/C_API.md built
#                   three ways and run: $(pkg-config --libs mcsync) (loads libmcsync.so.MAJOR),
#                   $(pkg-config --libs mcsync-static) (no libmcsync.so dependency), and
#                   cc -static $(pkg-config --static --libs mcsync) (no dynamic dependency);
#                   make install SPLIT_DEBUG=1 of the debug library keeps its debug info apart
# Prints PASS/FAIL per test and "N passed, M failed"; exits non-zero if anything failed.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
source scripts/setup.sh

CONVERGE_UPDATES=${CONVERGE_UPDATES:-2000}
VALGRIND_UPDATES=${VALGRIND_UPDATES:-1000}
PROCESS_UPDATES=${PROCESS_UPDATES:-1000}
EXACTLY_ONCE_UPDATES=${EXACTLY_ONCE_UPDATES:-3000}
EXACTLY_ONCE_KILLS=${EXACTLY_ONCE_KILLS:-5}

passed=0
failed=0
failures=()
pass() { echo "PASS $1"; passed=$((passed + 1)); }
fail() { echo "FAIL $1"; failed=$((failed + 1)); failures+=("$1"); }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/mcsync-test-c.XXXXXX")
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  wait 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

# A random administratively scoped group and port base, so parallel runs never hear each
# other. Each test adds its own offset to both.
rand32() { od -An -N4 -tu4 /dev/urandom | tr -d ' '; }
R=$(rand32)
G1=$((1 + R % 250)); G2=$(((R >> 8) % 256)); G3=$((1 + (R >> 16) % 150))
PORT_BASE=$((20000 + $(rand32) % 40000))
group() { echo "239.$G1.$G2.$((G3 + $1))"; }   # $1: 0..99
port() { echo $((PORT_BASE + $1)); }
echo "== C tests: group base $(group 0), port base $PORT_BASE, work dir $WORK"

echo "== cargo build -p mcsync-ffi"
if ! cargo build -p mcsync-ffi; then
  fail "build: cargo build -p mcsync-ffi"
  echo "0 passed, 1 failed"
  exit 1
fi
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET_DIR/examples-c/debug

echo "== make -C examples/c PROFILE=debug O=$BIN"
if make -B -C examples/c PROFILE=debug O="$BIN" >"$WORK/make.log" 2>&1; then
  pass "build: C examples compile with -Wall -Wextra -Werror against include/mcsync.h"
else
  cat "$WORK/make.log"
  fail "build: C examples"
  echo "$passed passed, $failed failed"
  exit 1
fi
SUPP=$ROOT/examples/c/valgrind.supp

# run NAME TIMEOUT_SECONDS COMMAND...: runs a test program, shows its output, and records
# PASS when it exits 0 and printed a PASS line.
run() {
  local name=$1 limit=$2
  shift 2
  local log="$WORK/$name.log" start=$SECONDS
  timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1
  local rc=$?
  sed 's/^/    /' "$log"
  if [ $rc -eq 0 ] && grep -q '^PASS' "$log"; then
    pass "$name ($((SECONDS - start)) s)"
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    fail "$name: timed out after $limit s (deadlock?)"
  else
    fail "$name: exit status $rc"
  fi
}

echo "== 1. converge: publisher + 2 subscribers, 5 % loss, $CONVERGE_UPDATES updates"
run converge 300 "$BIN/test_mcsync" converge "$WORK/converge" "$(group 0)" "$(port 0)" \
  "$CONVERGE_UPDATES"

# wait_for PID SECONDS: sets WAIT_RC to the process's exit status, killing it (status 124)
# if it is still running after SECONDS. (Not in a $(...) subshell: only this shell can wait
# for its children.)
wait_for() {
  local pid=$1 limit=$2 waited=0
  while kill -0 "$pid" 2>/dev/null && [ $waited -lt $((limit * 10)) ]; do
    sleep 0.1
    waited=$((waited + 1))
  done
  WAIT_RC=0
  if kill -0 "$pid" 2>/dev/null; then
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    WAIT_RC=124
    return
  fi
  wait "$pid" || WAIT_RC=$?
}

echo "== 2. processes: publisher.c + 2 x subscriber.c, 5 % loss, $PROCESS_UPDATES updates"
processes_test() {
  local dir=$WORK/processes start=$SECONDS
  mkdir -p "$dir"
  "$BIN/publisher" "$dir/pub" "$(group 10)" "$(port 10)" "$PROCESS_UPDATES" \
    >"$dir/pub.out" 2>"$dir/pub.err" &
  local pub=$!
  PIDS+=("$pub")
  local control="" key=""
  for _ in $(seq 1 200); do
    control=$(sed -n 's/^control=//p' "$dir/pub.out")
    key=$(sed -n "s/^fingerprint=//p" "$dir/pub.out")
    [ -n "$control" ] && [ -n "$key" ] && break
    kill -0 "$pub" 2>/dev/null || break
    sleep 0.05
  done
  if [ -z "$control" ] || [ -z "$key" ]; then
    cat "$dir/pub.out" "$dir/pub.err"
    fail "processes: publisher did not start"
    return
  fi
  # Every put is one version, plus the transaction deleting every tenth key.
  local expect=$((PROCESS_UPDATES + 1)) s1 s2
  "$BIN/subscriber" "$dir/sub1" "$control" "$key" demo "$expect" 0.05 11 \
    >"$dir/sub1.out" 2>"$dir/sub1.err" &
  s1=$!
  "$BIN/subscriber" "$dir/sub2" "$control" "$key" demo "$expect" 0.05 22 \
    >"$dir/sub2.out" 2>"$dir/sub2.err" &
  s2=$!
  PIDS+=("$s1" "$s2")
  local rc1 rc2 rcp
  wait_for "$s1" 240; rc1=$WAIT_RC
  wait_for "$s2" 240; rc2=$WAIT_RC
  for _ in $(seq 1 100); do grep -q '^version=' "$dir/pub.out" && break; sleep 0.1; done
  kill -TERM "$pub" 2>/dev/null
  wait_for "$pub" 30; rcp=$WAIT_RC
  local want got1 got2
  want=$(grep '^version=' "$dir/pub.out" | sed 's/ callbacks=.*//')
  got1=$(grep '^version=' "$dir/sub1.out" | sed 's/ callbacks=.*//')
  got2=$(grep '^version=' "$dir/sub2.out" | sed 's/ callbacks=.*//')
  echo "publisher:   $want (exit $rcp)"
  echo "subscriber1: $(cat "$dir/sub1.out") (exit $rc1; $(cat "$dir/sub1.err"))"
  echo "subscriber2: $(cat "$dir/sub2.out") (exit $rc2; $(cat "$dir/sub2.err"))"
  if [ $rc1 -eq 0 ] && [ $rc2 -eq 0 ] && [ $rcp -eq 0 ] && [ -n "$want" ] &&
     [ "$got1" = "$want" ] && [ "$got2" = "$want" ] &&
     grep -q "callbacks=$expect\$" "$dir/sub1.out" && grep -q "callbacks=$expect\$" "$dir/sub2.out"; then
    pass "processes: both replicas equal the publisher's contents ($want) ($((SECONDS - start)) s)"
  else
    tail -5 "$dir/pub.err" "$dir/sub1.err" "$dir/sub2.err"
    fail "processes: replicas differ from the publisher or a process failed"
  fi
}
processes_test

echo "== 2a. interrupt: SIGINT to publisher.c while it publishes"
interrupt_test() {
  local dir=$WORK/interrupt start=$SECONDS
  mkdir -p "$dir"
  # 1 ms between puts: 100,000 would take minutes; it is interrupted after about a second.
  "$BIN/publisher" "$dir/pub" "$(group 12)" "$(port 12)" 100000 \
    >"$dir/pub.out" 2>"$dir/pub.err" &
  local pub=$!
  PIDS+=("$pub")
  for _ in $(seq 1 200); do
    grep -q '^fingerprint=' "$dir/pub.out" && break
    kill -0 "$pub" 2>/dev/null || break
    sleep 0.05
  done
  sleep 1
  kill -INT "$pub" 2>/dev/null
  local rc
  wait_for "$pub" 30; rc=$WAIT_RC
  # It wrote keys 0..n-1, one version each, then deleted every tenth in one more version.
  local n want
  n=$(sed -n 's/^publisher: interrupted after \([0-9]*\) of 100000 puts$/\1/p' "$dir/pub.err")
  [ -n "$n" ] && want="version=$((n + 1)) records=$((n - (n + 9) / 10)) "
  echo "publisher: exit $rc after $n puts; $(grep '^version=' "$dir/pub.out")"
  if [ "$rc" -eq 0 ] && [ -n "$n" ] && [ "$n" -gt 0 ] && grep -q "^$want" "$dir/pub.out" &&
     [ "$(tail -1 "$dir/pub.err")" = "publisher: closed" ]; then
    pass "interrupt: SIGINT while publishing: the publisher committed $n puts, closed and exited 0 ($((SECONDS - start)) s)"
  else
    cat "$dir/pub.out" "$dir/pub.err"
    fail "interrupt: the publisher did not end cleanly on SIGINT while publishing (exit $rc)"
  fi
}
interrupt_test

echo "== 2b. exactly_once: SQLite host killed -9 $EXACTLY_ONCE_KILLS times while publisher.c writes $EXACTLY_ONCE_UPDATES updates"
exactly_once_test() {
  local dir=$WORK/exactly_once start=$SECONDS
  mkdir -p "$dir"
  # The kill moments come from this seed; rerun with EXACTLY_ONCE_SEED=... to repeat them.
  local seed=${EXACTLY_ONCE_SEED:-$(($(rand32) % 1000000))}
  echo "exactly_once: seed $seed"
  RANDOM=$seed
  "$BIN/publisher" "$dir/pub" "$(group 15)" "$(port 15)" "$EXACTLY_ONCE_UPDATES" \
    >"$dir/pub.out" 2>"$dir/pub.err" &
  local pub=$!
  PIDS+=("$pub")
  local control="" key=""
  for _ in $(seq 1 200); do
    control=$(sed -n 's/^control=//p' "$dir/pub.out" 2>/dev/null)
    key=$(sed -n "s/^fingerprint=//p" "$dir/pub.out" 2>/dev/null)
    [ -n "$control" ] && [ -n "$key" ] && break
    kill -0 "$pub" 2>/dev/null || break
    sleep 0.05
  done
  if [ -z "$control" ] || [ -z "$key" ]; then
    cat "$dir/pub.out" "$dir/pub.err"
    fail "exactly_once: publisher did not start"
    return
  fi
  # Every put is one version, plus the transaction deleting every tenth key.
  local expect=$((EXACTLY_ONCE_UPDATES + 1))
  local host=("$BIN/exactly_once_host" "$dir/replica" "$dir/host.sqlite" "$control" "$key" demo)
  local i pid delay rc kills=0 bad=""
  for i in $(seq 1 "$EXACTLY_ONCE_KILLS"); do
    "${host[@]}" "$expect" >>"$dir/host.out" 2>>"$dir/host.err" &
    pid=$!
    PIDS+=("$pid")
    delay=$(printf '0.%03d' $((200 + RANDOM % 800)))
    sleep "$delay"
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null; rc=$?
    if [ $rc -eq 137 ]; then
      kills=$((kills + 1))
      echo "    run $i: killed -9 after $delay s"
    else
      # It ended before the kill: only a clean exit (caught up) is acceptable.
      echo "    run $i: ended by itself within $delay s (exit $rc)"
      [ $rc -eq 0 ] || bad="run $i exited $rc"
    fi
    [ -n "$bad" ] && break
  done
  local rch=1
  if [ -z "$bad" ]; then
    "${host[@]}" "$expect" >>"$dir/host.out" 2>>"$dir/host.err" &
    pid=$!
    PIDS+=("$pid")
    wait_for "$pid" 240; rch=$WAIT_RC
  fi
  for _ in $(seq 1 100); do grep -q '^version=' "$dir/pub.out" && break; sleep 0.1; done
  kill -TERM "$pub" 2>/dev/null
  local rcp
  wait_for "$pub" 30; rcp=$WAIT_RC
  local want got seen
  want=$(grep '^version=' "$dir/pub.out")
  got=$(grep '^version=' "$dir/host.out" | tail -1)
  seen=$(grep '^seen=' "$dir/host.out" | tail -1)
  echo "host starts: $(sed -n 's/.*host at version \([0-9]*\)$/\1/p' "$dir/host.err" | tr '\n' ' ')"
  echo "publisher: $want (exit $rcp)"
  echo "host:      $got (exit $rch after $kills kills)"
  echo "host:      $seen (want seen=$expect first=1 last=$expect resets=0)"
  if [ -z "$bad" ] && [ $rch -eq 0 ] && [ $rcp -eq 0 ] && [ -n "$want" ] && [ "$got" = "$want" ] &&
     [ "$seen" = "seen=$expect first=1 last=$expect resets=0" ] && [ $kills -ge 1 ]; then
    pass "exactly_once: after $kills kill -9s the SQLite host equals the publisher and saw each of $expect versions once (seed $seed) ($((SECONDS - start)) s)"
  else
    [ -n "$bad" ] && echo "$bad"
    tail -5 "$dir/pub.err"
    tail -20 "$dir/host.err"
    fail "exactly_once: seed $seed: ${bad:-the host table or versions differ, or a process failed}"
  fi
}
exactly_once_test

echo "== 3. legacy_hook"
run legacy_hook 120 "$BIN/legacy_hook" "$WORK/legacy" "$(group 20)" "$(port 20)"

echo "== 4. misuse"
run misuse 180 "$BIN/test_mcsync" misuse "$WORK/misuse" "$(group 30)" "$(port 30)"

echo "== 4b. twophase"
run twophase 120 "$BIN/test_mcsync" twophase "$WORK/twophase" "$(group 35)" "$(port 35)"

echo "== 4d. relay"
run relay 180 "$BIN/test_relay" "$WORK/relay" "$(group 45)" "$(port 45)"

echo "== 4c. users"
run users 120 "$BIN/test_mcsync" users "$WORK/users" "$(group 37)" "$(port 37)"

echo "== 4d. observe (log callback, metrics)"
run observe 120 "$BIN/test_mcsync" observe "$WORK/observe" "$(group 38)" "$(port 38)"

echo "== 5. valgrind"
if ! command -v valgrind >/dev/null 2>&1; then
  echo "valgrind not found: installing it"
  (apt-get update -qq && apt-get install -y -qq valgrind) >"$WORK/apt.log" 2>&1 ||
    cat "$WORK/apt.log"
fi
if command -v valgrind >/dev/null 2>&1; then
  VG=(valgrind --error-exitcode=1 --leak-check=full --suppressions="$SUPP" -q)
  run valgrind-converge 600 "${VG[@]}" "$BIN/test_mcsync" converge "$WORK/vg-converge" \
    "$(group 40)" "$(port 40)" "$VALGRIND_UPDATES"
  run valgrind-misuse 600 "${VG[@]}" "$BIN/test_mcsync" misuse "$WORK/vg-misuse" \
    "$(group 50)" "$(port 50)"
  run valgrind-twophase 300 "${VG[@]}" "$BIN/test_mcsync" twophase "$WORK/vg-twophase" \
    "$(group 55)" "$(port 55)"
  run valgrind-users 300 "${VG[@]}" "$BIN/test_mcsync" users "$WORK/vg-users" \
    "$(group 57)" "$(port 57)"
  run valgrind-observe 300 "${VG[@]}" "$BIN/test_mcsync" observe "$WORK/vg-observe" \
    "$(group 58)" "$(port 58)"
else
  fail "valgrind: not installed and could not be installed"
fi

echo "== 6. make install + pkg-config (release library)"
MAX_SO_BYTES=$((8 * 1024 * 1024))
# run_quickstart NAME: runs the docs/C_API.md example built as $WORK/NAME; true if it worked.
run_quickstart() {
  local name=$1 offset=$2
  LD_LIBRARY_PATH=$PREFIX_DIR/lib timeout 60 "$WORK/$name" "$WORK/$name-data" \
    "$(group "$offset")" "$(port "$offset")" >"$WORK/$name.log" 2>&1 &&
    grep -q '^pears = 7 ' "$WORK/$name.log" && return 0
  cat "$WORK/$name.log"
  return 1
}
# readelf OPTION FILE, then grep -q PATTERN over its whole output. Never `readelf | grep -q`
# under pipefail: grep -q exits at the first match, readelf (more than a pipe buffer of output)
# dies of SIGPIPE, and the pipeline fails although the pattern was there.
elf_has() {
  local out
  out=$(readelf "$1" -W "$2" 2>/dev/null) || return 1
  grep -q -- "$3" <<<"$out"
}
install_test() {
  PREFIX_DIR=$WORK/prefix
  local prefix=$PREFIX_DIR lib=$WORK/prefix/lib
  echo "== cargo build --release -p mcsync-ffi"
  if ! cargo build --release -p mcsync-ffi; then
    fail "install: cargo build --release -p mcsync-ffi"
    return
  fi
  if ! make -C examples/c install PREFIX="$prefix" O="$WORK/build-release" \
       >"$WORK/install.log" 2>&1; then
    cat "$WORK/install.log"
    fail "install: make install failed"
    return
  fi
  local version major real soname size debug
  version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
  major=${version%%.*}
  real=$lib/libmcsync.so.$version
  soname=$(readelf -d "$real" 2>/dev/null | sed -n 's/.*Library soname: \[\(.*\)\]/\1/p')
  size=$(stat -c %s "$real" 2>/dev/null || echo 0)
  debug=$(readelf -S -W "$real" "$lib/libmcsync.a" 2>/dev/null | grep -c ' \.debug_')
  (cd "$lib" && ls -l libmcsync.*) | sed 's/^/    /'
  echo "libmcsync.so.$version: $size bytes, SONAME $soname, $debug debug sections (.so and .a)"
  if [ "$soname" = "libmcsync.so.$major" ] && [ "$(readlink "$lib/libmcsync.so.$major")" = "libmcsync.so.$version" ] &&
     [ "$(readlink "$lib/libmcsync.so")" = "libmcsync.so.$major" ] && [ "$size" -gt 0 ] &&
     [ "$size" -lt $MAX_SO_BYTES ] && [ "$debug" -eq 0 ]; then
    pass "install: libmcsync.so.$version ($size bytes, no debug info) with SONAME $soname and its symlinks"
  else
    fail "install: libmcsync.so.$version: want SONAME libmcsync.so.$major, symlinks, under $MAX_SO_BYTES bytes, no debug info"
  fi
  # The full example of docs/C_API.md, exactly as printed there.
  sed -n '/<!-- full-example:begin -->/,/<!-- full-example:end -->/p' docs/C_API.md |
    sed '/^```/d; /^<!--/d' >"$WORK/quickstart.c"
  local pc=(env PKG_CONFIG_PATH="$lib/pkgconfig" pkg-config) flags
  local cc_=(cc -std=c11 -Wall -Wextra -Werror)

  # Shared: the program records the SONAME and loads it.
  if ! flags=$("${pc[@]}" --cflags --libs mcsync); then
    fail "install: pkg-config does not find mcsync"
    return
  fi
  # shellcheck disable=SC2086
  if ! "${cc_[@]}" -o "$WORK/quickstart" "$WORK/quickstart.c" $flags; then
    fail "install: the docs/C_API.md example does not build with \$(pkg-config --cflags --libs mcsync)"
  elif ! elf_has -d "$WORK/quickstart" "NEEDED.*\[libmcsync.so.$major\]"; then
    readelf -d "$WORK/quickstart" | grep NEEDED
    fail "install: a program linked with -lmcsync does not load libmcsync.so.$major"
  elif run_quickstart quickstart 60; then
    sed 's/^/    /' "$WORK/quickstart.log"
    pass "install: the docs/C_API.md example built with \$(pkg-config --cflags --libs mcsync) loads libmcsync.so.$major and runs"
  else
    fail "install: the docs/C_API.md example (shared) failed"
  fi

  # libmcsync.a, system libraries shared: no libmcsync.so dependency.
  flags=$("${pc[@]}" --cflags --libs mcsync-static)
  # shellcheck disable=SC2086
  if ! "${cc_[@]}" -o "$WORK/quickstart-static" "$WORK/quickstart.c" $flags; then
    fail "install: the example does not build with \$(pkg-config --cflags --libs mcsync-static) ($flags)"
  elif elf_has -d "$WORK/quickstart-static" 'NEEDED.*libmcsync'; then
    ldd "$WORK/quickstart-static"
    fail "install: linked with mcsync-static, the example still needs libmcsync.so"
  elif run_quickstart quickstart-static 62; then
    pass "install: \$(pkg-config --cflags --libs mcsync-static) links libmcsync.a: no libmcsync.so dependency ($(ldd "$WORK/quickstart-static" | awk '{print $1}' | tr '\n' ' '))"
  else
    fail "install: the example linked with mcsync-static failed"
  fi

  # Everything static: what pkg-config --static gives must be enough.
  flags=$("${pc[@]}" --static --cflags --libs mcsync)
  # glibc warns that a static getaddrinfo needs its shared NSS modules at run time: not an error.
  # shellcheck disable=SC2086
  if ! "${cc_[@]}" -static -o "$WORK/quickstart-full-static" "$WORK/quickstart.c" $flags \
       2>"$WORK/static-link.log"; then
    cat "$WORK/static-link.log"
    fail "install: the example does not build with cc -static \$(pkg-config --static --cflags --libs mcsync) ($flags)"
  elif elf_has -d "$WORK/quickstart-full-static" NEEDED; then
    fail "install: cc -static \$(pkg-config --static ...) produced a dynamically linked program"
  elif run_quickstart quickstart-full-static 64; then
    pass "install: cc -static \$(pkg-config --static --cflags --libs mcsync) ($flags) links and runs"
  else
    fail "install: the fully static example failed"
  fi

  # SPLIT_DEBUG=1: the debug library installed without its debug info, kept in lib/.debug.
  local dprefix=$WORK/prefix-debug dreal
  dreal=$dprefix/lib/libmcsync.so.$version
  if make -C examples/c install PROFILE=debug SPLIT_DEBUG=1 PREFIX="$dprefix" \
       O="$WORK/build-debug" >"$WORK/install-debug.log" 2>&1 &&
     [ "$(readelf -S -W "$dreal" | grep -c ' \.debug_')" -eq 0 ] &&
     elf_has -S "$dreal" ' \.gnu_debuglink' &&
     elf_has -S "$dprefix/lib/.debug/libmcsync.so.$version.debug" ' \.debug_info'; then
    pass "install: SPLIT_DEBUG=1 installs the debug library stripped ($(stat -c %s "$dreal") bytes) with its debug info in lib/.debug ($(stat -c %s "$dprefix/lib/.debug/libmcsync.so.$version.debug") bytes)"
  else
    cat "$WORK/install-debug.log"
    fail "install: make install SPLIT_DEBUG=1"
  fi
}
if ! command -v pkg-config >/dev/null 2>&1; then
  (apt-get update -qq && apt-get install -y -qq pkg-config) >"$WORK/apt.log" 2>&1 ||
    cat "$WORK/apt.log"
fi
if command -v pkg-config >/dev/null 2>&1; then
  install_test
else
  fail "install: pkg-config not installed"
fi

echo "== C tests done"
if [ "$failed" -gt 0 ]; then
  printf 'failed: %s\n' "${failures[@]}"
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
