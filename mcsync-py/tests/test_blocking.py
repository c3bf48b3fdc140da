"""Blocking calls: timeouts, Ctrl-C, and interpreter exit without close()."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Callable

import pytest

import mcsync
from conftest import unique_group

# Opens a publisher and a subscriber in a child process; the scripts below add to it.
PRELUDE = """
import sys, threading, time
import mcsync

data, group, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
pub = mcsync.Publisher(data + "/pub", group=group, port=port, open_access=True)
db = pub.database("child")
db.put("k", "v")
subscriber = mcsync.Subscriber(
    data + "/sub", control_addr=pub.control_addr, fingerprint=pub.fingerprint
)
"""


def run_child(tmp_path: Path, body: str) -> subprocess.Popen[str]:
    script = tmp_path / "child.py"
    script.write_text(PRELUDE + textwrap.dedent(body))
    group, port = unique_group()
    return subprocess.Popen(
        [sys.executable, str(script), str(tmp_path), group, str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "child printed nothing"
    return proc.stdout.readline().strip()


def test_wait_for_version_times_out(
    publisher: mcsync.Publisher, make_subscriber: Callable[..., mcsync.Subscriber]
) -> None:
    publisher.database("slow").put("a", "1")
    sub = make_subscriber().subscribe("slow")
    sub.wait_for_version(1, timeout=30)
    t0 = time.monotonic()
    with pytest.raises(mcsync.TimeoutError, match="waiting for 2") as e:
        sub.wait_for_version(2, timeout=0.3)
    elapsed = time.monotonic() - t0
    assert 0.25 <= elapsed < 5, elapsed
    assert isinstance(e.value, TimeoutError)  # the builtin
    assert isinstance(e.value, mcsync.Error)
    sub.wait_for_version(1, timeout=0)  # already there: returns at once
    with pytest.raises(mcsync.ConfigError):
        sub.wait_for_version(2, timeout=-1)


@pytest.mark.parametrize(
    "blocking_call",
    [
        "sub.wait_for_version(10**9)",
        "for u in sub.updates(): pass",
    ],
)
def test_sigint_interrupts_a_blocked_wait_promptly(
    tmp_path: Path, blocking_call: str
) -> None:
    proc = run_child(
        tmp_path,
        f"""
        sub = subscriber.subscribe("child")
        print("ready", flush=True)
        try:
            {blocking_call}
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            sys.exit(3)
        """,
    )
    try:
        assert read_line(proc, 60) == "ready"
        time.sleep(0.3)  # let it block
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGINT)
        assert read_line(proc, 10) == "interrupted"
        assert time.monotonic() - t0 < 2.0
        assert proc.wait(timeout=30) == 3
    finally:
        proc.kill()
        proc.communicate()


def test_script_that_never_closes_exits(tmp_path: Path) -> None:
    # Callbacks still running, a pull subscription, and a daemon thread blocked in a wait
    # when the script ends: the atexit hook closes everything and the process exits.
    proc = run_child(
        tmp_path,
        """
        seen = []
        def on_update(u):
            time.sleep(0.002)
            seen.append(u.version)
        sub = subscriber.subscribe("child", on_update)
        other_db = pub.database("other")
        other_db.put("x", "1")
        pull = subscriber.subscribe("other")

        def waiter():
            try:
                sub.wait_for_version(10**9)
            except mcsync.ClosedError:
                pass
        threading.Thread(target=waiter, daemon=True).start()
        for i in range(200):
            db.put(f"k{i}", "v" * i)
        sub.wait_for_version(50, timeout=60)
        print("done", len(seen) >= 50, flush=True)
        """,
    )
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"script did not exit; stdout={out!r} stderr={err!r}")
    assert proc.returncode == 0, err
    assert out.strip() == "done True"
    assert err == ""


def test_a_non_daemon_thread_blocked_in_a_wait_holds_the_exit_until_ctrl_c(
    tmp_path: Path,
) -> None:
    # As documented: Python waits for non-daemon threads before it runs atexit hooks, so
    # close_all cannot end their waits; Ctrl-C (or a timeout, or a daemon thread) does.
    proc = run_child(
        tmp_path,
        """
        sub = subscriber.subscribe("child")
        def waiter():
            try:
                sub.wait_for_version(10**9)
            except mcsync.ClosedError:
                print("closed", flush=True)
        threading.Thread(target=waiter).start()
        print("ready", flush=True)
        """,
    )
    try:
        assert read_line(proc, 60) == "ready"
        time.sleep(1.0)
        assert proc.poll() is None, "exited although a non-daemon thread waits"
        os.kill(proc.pid, signal.SIGINT)
        # The interrupt ends Python's wait for the thread; atexit then closes everything,
        # which ends the thread's wait.
        assert read_line(proc, 10) == "closed"
        proc.wait(timeout=30)
    finally:
        proc.kill()
        proc.communicate()


def test_objects_freed_without_close_stop_their_threads(tmp_path: Path) -> None:
    proc = run_child(
        tmp_path,
        """
        import gc, os

        def threads():
            return len(os.listdir("/proc/self/task"))

        before = threads()
        sub = subscriber.subscribe("child", lambda u: None)
        sub.wait_for_version(1, timeout=60)
        during = threads()
        del sub, subscriber, db, pub
        gc.collect()
        deadline = time.monotonic() + 10
        while threads() > 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        print(during > before, threads(), flush=True)
        """,
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.split() == ["True", "1"]


@pytest.mark.parametrize(
    "body, after",
    [
        # A two-phase commit waiting for a slow vote; once interrupted, the update is
        # rolled back when the vote wait ends, so the next commit reuses its version.
        (
            """
            sub = subscriber.subscribe(
                "child", participant=True, vote=lambda u: time.sleep(1.5)
            )
            t = db.transaction(two_phase=True, timeout=5)
            t.put("k", "prepared")
            print("ready", flush=True)
            try:
                t.commit()
            except KeyboardInterrupt:
                print("interrupted", flush=True)
            print(db.put("k", "one-phase"), db.get("k").decode(), t.version, flush=True)
            """,
            "2 one-phase None",
        ),
        # A one-phase commit queued behind a prepared update held by the same thread
        # (it would wait forever); the commit stays queued until the update is resolved.
        (
            """
            sub = subscriber.subscribe("child", participant=True)
            t = db.transaction()
            t.put("k", "two-phase")
            p = t.prepare(timeout=30)
            print("ready", flush=True)
            try:
                db.put("k", "queued")
            except KeyboardInterrupt:
                print("interrupted", flush=True)
            p.rollback()
            deadline = time.monotonic() + 30
            while db.version < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            print(db.version, db.get("k").decode(), p.state, flush=True)
            """,
            "2 queued rolled back",
        ),
    ],
    ids=["commit_two_phase", "commit-behind-prepared"],
)
def test_sigint_interrupts_two_phase_waits(tmp_path: Path, body: str, after: str) -> None:
    proc = run_child(
        tmp_path,
        textwrap.dedent(body) + "sys.exit(3)\n",
    )
    try:
        assert read_line(proc, 60) == "ready"
        time.sleep(0.3)  # let it block
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGINT)
        assert read_line(proc, 10) == "interrupted"
        assert time.monotonic() - t0 < 2.0
        assert read_line(proc, 30) == after
        assert proc.wait(timeout=30) == 3
    finally:
        proc.kill()
        proc.communicate()
