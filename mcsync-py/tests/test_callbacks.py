"""Callbacks: exceptions are reported and counted, the subscription keeps going, and
closing while (or from) a callback is safe."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

import pytest

import mcsync
from conftest import CONVERGE


class Flaky(Exception):
    pass


def test_exception_in_callback_goes_to_unraisablehook_and_is_counted(
    publisher: mcsync.Publisher,
    make_subscriber: Callable[..., mcsync.Subscriber],
    unraisable: list[Any],
) -> None:
    db = publisher.database("flaky")
    seen: list[int] = []

    def on_update(u: mcsync.Update) -> None:
        seen.append(u.version)
        if u.version in (2, 4):
            raise Flaky(f"bad version {u.version}")

    sub = make_subscriber().subscribe("flaky", on_update)
    for i in range(6):
        db.put("k", str(i))
    sub.wait_for_version(6, timeout=CONVERGE)
    assert seen == [1, 2, 3, 4, 5, 6]
    assert not sub.closed
    assert sub.stats()["callback_errors"] == 2
    assert [(t, str(e), o) for t, e, o in unraisable] == [
        (Flaky, "bad version 2", on_update),
        (Flaky, "bad version 4", on_update),
    ]
    assert sub["k"] == b"5"


def test_on_error_receives_the_exception_and_the_update(
    publisher: mcsync.Publisher,
    make_subscriber: Callable[..., mcsync.Subscriber],
    unraisable: list[Any],
) -> None:
    db = publisher.database("onerror")
    reported: list[tuple[BaseException, int | None]] = []

    def on_error(e: BaseException, u: mcsync.Update | None) -> None:
        reported.append((e, u.version if u else None))
        if u is not None and u.version == 3:
            raise RuntimeError("the handler fails too")

    def on_update(u: mcsync.Update) -> None:
        if u.version % 2:
            raise Flaky(u.version)

    sub = make_subscriber().subscribe("onerror", on_update, on_error=on_error)
    for i in range(4):
        db.put("k", str(i))
    sub.wait_for_version(4, timeout=CONVERGE)
    assert [(type(e), v) for e, v in reported] == [(Flaky, 1), (Flaky, 3)]
    # A failing handler falls back to sys.unraisablehook.
    assert [(t, o) for t, _, o in unraisable] == [(RuntimeError, on_error)]
    assert sub.stats()["callback_errors"] == 2


def test_callbacks_must_be_callable(
    publisher: mcsync.Publisher, make_subscriber: Callable[..., mcsync.Subscriber]
) -> None:
    publisher.database("notcallable").put("a", "b")
    with pytest.raises(TypeError, match="on_update must be callable"):
        make_subscriber().subscribe("notcallable", 42)  # type: ignore[arg-type]


def test_close_from_another_thread_while_a_callback_runs(
    publisher: mcsync.Publisher, make_subscriber: Callable[..., mcsync.Subscriber]
) -> None:
    db = publisher.database("busy")
    entered = threading.Event()
    events: list[str] = []

    def slow(u: mcsync.Update) -> None:
        if u.version == 2:
            entered.set()
            time.sleep(0.5)
            events.append("callback done")

    subscriber = make_subscriber()
    sub = subscriber.subscribe("busy", slow)
    db.put("k", "0")
    db.put("k", "1")
    assert entered.wait(CONVERGE)

    def close() -> None:
        sub.close()
        events.append("closed")

    closer = threading.Thread(target=close)
    closer.start()
    for i in range(2, 20):  # updates keep arriving while the subscription closes
        db.put("k", str(i))
    closer.join(10)
    assert not closer.is_alive()
    # close() waited for the running callback.
    assert events == ["callback done", "closed"]
    assert sub.closed
    with pytest.raises(mcsync.ClosedError):
        sub.wait_for_version(10**6, timeout=1)
    assert sub.get("k") is not None  # the replica stays readable
    # Closing the subscriber afterwards (and twice) is fine.
    subscriber.close()
    subscriber.close()


def test_close_from_inside_the_callback(
    publisher: mcsync.Publisher, make_subscriber: Callable[..., mcsync.Subscriber]
) -> None:
    db = publisher.database("selfclose")
    holder: list[mcsync.Subscription] = []
    seen: list[int] = []

    def on_update(u: mcsync.Update) -> None:
        seen.append(u.version)
        if u.version == 2:
            holder[0].close()  # returns at once; the threads stop after we return

    holder.append(make_subscriber().subscribe("selfclose", on_update))
    for i in range(5):
        db.put("k", str(i))
    with pytest.raises(mcsync.ClosedError):
        holder[0].wait_for_version(10**6, timeout=CONVERGE)
    assert holder[0].closed
    assert seen[:2] == [1, 2]


def test_dropping_a_subscription_with_a_busy_callback_does_not_deadlock(
    publisher: mcsync.Publisher, make_subscriber: Callable[..., mcsync.Subscriber]
) -> None:
    db = publisher.database("dropped")
    entered = threading.Event()

    def slow(u: mcsync.Update) -> None:
        entered.set()
        time.sleep(0.2)

    sub = make_subscriber().subscribe("dropped", slow)
    db.put("a", "1")
    assert entered.wait(CONVERGE)
    t0 = time.monotonic()
    del sub  # frees the object while its callback holds or wants the GIL
    assert time.monotonic() - t0 < 10
