"""Delivery to the host: at least once across close and restart, exactly once with
``after=``, and a reset (the whole state) when the journal no longer reaches back."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

import mcsync
from conftest import CONVERGE, open_publisher

DB = "orders"
# Every version is called back on its own (a replica far behind is not compacted).
NEVER_COMPACT = 2**64 - 1


class Host:
    """A host's own copy of the database: its rows, the version it holds (stored with the
    rows, as a real host would in one transaction) and every version it was handed."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rows: dict[bytes, bytes] = {}
        self.version = 0
        self.seen: list[int] = []
        self.resets: list[mcsync.Update] = []

    def apply(self, u: mcsync.Update) -> None:
        with self.lock:
            if u.reset:
                self.resets.append(u)
                self.rows.clear()
            for op in u:
                if op.operation == "put":
                    assert op.value is not None
                    self.rows[op.key] = op.value
                else:
                    self.rows.pop(op.key, None)
            self.version = u.version
            self.seen.append(u.version)


def publish(db: mcsync.Database, start: int, n: int) -> int:
    """Single-put (and every seventh a delete) transactions; returns the last version."""
    v = 0
    for i in range(start, start + n):
        if i % 7 == 3:
            v = db.delete(f"k{(i // 2) % 150}")
        else:
            v = db.put(f"k{i % 150}", f"value {i}")
    return v


def wait_until(what: str, cond: Callable[[], bool]) -> None:
    deadline = time.monotonic() + CONVERGE
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def host_subscription(
    s: mcsync.Subscriber, host: Host, after: int | None, close_at: int | None
) -> mcsync.Subscription:
    """Subscribes with ``host`` as the callback. With ``close_at`` the callback closes the
    subscription from inside once the host reaches that version, leaving whatever the
    replica applied beyond it undelivered (and kept)."""
    me: list[mcsync.Subscription] = []

    def on_update(u: mcsync.Update) -> None:
        host.apply(u)
        if close_at is not None and u.version >= close_at and me:
            me.pop().close()

    sub = s.subscribe(DB, on_update, after=after)
    me.append(sub)
    return sub


def first_session_under_load(
    tmp_path: Path, publisher: mcsync.Publisher, after: int | None
) -> tuple[mcsync.Database, Host, threading.Thread, list[int]]:
    """Publishes 1,500 versions from a thread; a host subscribes once 500 are out (so its
    replica catches up in one large batch) and closes its subscription from its callback at
    version 300, with the rest of the batch applied but not yet called back, while the
    thread goes on.
    Returns the database, the host, the (running or finished) publishing thread and the
    versions the host saw in this first session."""
    db = publisher.database(DB)
    writer = threading.Thread(target=publish, args=(db, 0, 1500))
    writer.start()
    wait_until("500 versions published", lambda: db.version >= 500)
    host = Host()
    with mcsync.Subscriber(
        tmp_path / "sub",
        control_addr=publisher.control_addr,
        fingerprint=publisher.fingerprint,
        compact_catch_up_after=NEVER_COMPACT,
    ) as s:
        sub = host_subscription(s, host, after, close_at=300)
        wait_until("the callback closed the subscription", lambda: sub.closed)
    with host.lock:
        first = list(host.seen)
    assert first and first[-1] >= 300, first[-5:]
    return db, host, writer, first


def reopen(tmp_path: Path, publisher: mcsync.Publisher) -> mcsync.Subscriber:
    return mcsync.Subscriber(
        tmp_path / "sub",
        control_addr=publisher.control_addr,
        fingerprint=publisher.fingerprint,
        compact_catch_up_after=NEVER_COMPACT,
    )


def test_a_host_that_keeps_its_version_gets_every_update_exactly_once_across_close(
    tmp_path: Path, publisher: mcsync.Publisher
) -> None:
    db, host, writer, first = first_session_under_load(tmp_path, publisher, after=0)
    assert first == list(range(1, first[-1] + 1))
    # Reopened while the publisher is still busy, passing the version the host holds.
    with reopen(tmp_path, publisher) as s:
        sub = host_subscription(s, host, after=host.version, close_at=None)
        caught_up = sub.wait_caught_up(CONVERGE)
        assert caught_up >= 500
        assert sub.version >= caught_up
        writer.join(CONVERGE)
        assert not writer.is_alive()
        last = db.version
        sub.wait_for_version(last, timeout=CONVERGE)
        with host.lock:
            assert host.seen == list(range(1, last + 1))
            assert host.rows == dict(db.items())
            assert host.resets == []
        stats = sub.stats()
        # The close left applied updates of the catch-up batch uncalled: they came from
        # the replica's kept updates.
        assert stats["updates_replayed"] > 0
        assert stats["resets_delivered"] == 0


def test_without_the_hosts_version_delivery_is_at_least_once_in_order_without_gaps(
    tmp_path: Path, publisher: mcsync.Publisher
) -> None:
    db, host, writer, first = first_session_under_load(tmp_path, publisher, after=None)
    assert first == list(range(1, first[-1] + 1))
    with reopen(tmp_path, publisher) as s:
        sub = host_subscription(s, host, after=None, close_at=None)
        writer.join(CONVERGE)
        assert not writer.is_alive()
        last = db.version
        sub.wait_for_version(last, timeout=CONVERGE)
        with host.lock:
            second = host.seen[len(first) :]
            rows = dict(host.rows)
    # Replays are allowed (the durable cursor may lag), gaps are not.
    assert second, "the second session delivered nothing"
    assert second[0] <= first[-1] + 1, f"gap: resumed at {second[0]} after {first[-1]}"
    assert second == list(range(second[0], last + 1))
    assert rows == dict(db.items())


def test_a_host_behind_a_trimmed_journal_gets_the_whole_state_as_a_reset(
    tmp_path: Path,
) -> None:
    with open_publisher(
        tmp_path / "pub",
        retention_max_bytes=0,
        retention_max_age=0,
        retention_min_count=5,
    ) as pub:
        db = pub.database(DB)
        v1 = publish(db, 0, 60)
        pub.apply_retention()  # the publisher also trims by itself about once a second
        wait_until("the journal trimmed", lambda: pub.stats()["journal_trimmed"] >= 55)

        def subscriber() -> mcsync.Subscriber:
            return mcsync.Subscriber(
                tmp_path / "sub", control_addr=pub.control_addr, fingerprint=pub.fingerprint
            )

        # A replica without a host: it applies everything and delivers nothing.
        with subscriber() as s:
            s.subscribe(DB, queue_size=0).wait_for_version(v1, timeout=CONVERGE)

        # A host at version 0 (holding a row it should not): the updates after 0 are gone
        # from the journal, so only the whole state can bring it up to date.
        host = Host()
        host.rows[b"stale"] = b"not at the master"
        with subscriber() as s:
            sub = host_subscription(s, host, after=0, close_at=None)
            assert sub.wait_caught_up(CONVERGE) == v1
            with host.lock:
                assert len(host.resets) == 1
                reset = host.resets[0]
                assert host.seen == [reset.version]
                state_at_reset = dict(host.rows)
            assert reset.version == v1
            assert all(op.operation == "put" for op in reset)
            assert {op.key: op.value for op in reset} == dict(db.items())
            assert state_at_reset == dict(db.items())
            assert "reset" in repr(reset)
            # Live updates follow it one by one.
            v2 = publish(db, 60, 20)
            sub.wait_for_version(v2, timeout=CONVERGE)
            with host.lock:
                assert host.seen == [v1, *range(v1 + 1, v2 + 1)]
                assert host.rows == dict(db.items())
                assert b"stale" not in host.rows
            stats: dict[str, Any] = sub.stats()
            assert stats["resets_delivered"] == 1


def test_updates_are_not_resets_and_after_must_be_a_version(
    publisher: mcsync.Publisher, make_subscriber: Callable[..., mcsync.Subscriber]
) -> None:
    db = publisher.database(DB)
    db.put("a", "1")
    got: list[mcsync.Update] = []
    sub = make_subscriber().subscribe(DB, got.append, after=0)
    assert sub.wait_caught_up(CONVERGE) == 1
    assert [u.reset for u in got] == [False]
    with pytest.raises(OverflowError):
        make_subscriber("other").subscribe(DB, got.append, after=-1)
