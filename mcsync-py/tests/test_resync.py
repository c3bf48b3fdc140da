"""Hash resync (verify, resync, request_resync), journal retention and compacted catch-up."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import pytest

import mcsync
from conftest import CONVERGE, open_publisher


def wait_for_stat(sub: mcsync.Subscription, name: str, above: int) -> None:
    deadline = time.monotonic() + CONVERGE
    while sub.stats()[name] <= above:
        assert time.monotonic() < deadline, f"{name} stayed at {above}"
        time.sleep(0.02)


def test_verify_reports_agreement_on_a_converged_replica(
    publisher: mcsync.Publisher, make_subscriber: Callable[..., mcsync.Subscriber]
) -> None:
    db = publisher.database("inventory")
    for i in range(50):
        db.put(f"item{i}", f"{i}")
    db.delete("item7")
    subscriber = make_subscriber()
    sub = subscriber.subscribe("inventory")
    sub.wait_for_version(db.version, timeout=CONVERGE)

    r = subscriber.verify("inventory")
    assert isinstance(r, mcsync.ResyncReport)
    assert r.in_agreement and r.differing_ranges == []
    assert r.version == r.previous_version == db.version == 51
    assert r.local_records == r.remote_records == 49
    assert (r.fetched, r.deleted, r.journal_updates, r.full_copy) == (0, 0, 0, False)
    assert r.bytes > 0
    assert "in_agreement=True" in repr(r)
    # A live subscription resyncs on its own thread, not through the subscriber.
    with pytest.raises(mcsync.ConfigError, match="live subscription"):
        subscriber.resync("inventory")


def test_verify_finds_a_stale_replica_and_resync_repairs_it(
    publisher: mcsync.Publisher, make_subscriber: Callable[..., mcsync.Subscriber]
) -> None:
    db = publisher.database("stale")
    for i in range(20):
        db.put(f"k{i}", "old")
    subscriber = make_subscriber()
    sub = subscriber.subscribe("stale")
    sub.wait_for_version(20, timeout=CONVERGE)
    sub.close()
    for i in range(10):
        db.put(f"k{i}", "new")
    db.delete("k19")
    db.put("added", "x")
    assert db.version == 32

    r = subscriber.verify("stale")
    assert not r.in_agreement
    assert r.differing_ranges
    assert all(0 <= lo <= hi < 2**64 for lo, hi in r.differing_ranges)
    assert (r.previous_version, r.version) == (20, 32)
    assert (r.local_records, r.remote_records) == (20, 20)
    assert sub.version == 20  # verify changes nothing

    r = subscriber.resync("stale")
    assert (r.previous_version, r.version) == (20, 32)
    assert (r.fetched, r.deleted) == (11, 1)
    assert list(sub.items()) == db.items()  # the closed subscription still reads the replica
    assert subscriber.verify("stale").in_agreement


def test_request_resync_runs_on_the_subscription_thread(
    publisher: mcsync.Publisher, make_subscriber: Callable[..., mcsync.Subscriber]
) -> None:
    db = publisher.database("onrequest")
    for i in range(10):
        db.put(f"k{i}", str(i))
    sub = make_subscriber().subscribe("onrequest", lambda u: None)
    sub.wait_for_version(10, timeout=CONVERGE)
    before = sub.stats()["catchups_resync"]
    assert sub.request_resync() is None  # returns at once
    wait_for_stat(sub, "catchups_resync", before)
    assert sub.stats()["resync_bytes"] > 0
    assert dict(sub) == dict(db.items())
    db.put("after", "1")
    sub.wait_for_version(11, timeout=CONVERGE)


def test_retention_trims_the_journal_and_a_new_replica_still_catches_up(
    tmp_path: Path,
) -> None:
    with open_publisher(
        tmp_path / "pub",
        retention_max_bytes=0,
        retention_max_age=0,
        retention_min_count=5,
    ) as pub:
        db = pub.database("trimmed")
        for i in range(60):
            db.put(f"k{i % 20}", str(i))
        removed = pub.apply_retention()
        # The publisher also trims by itself about once a second.
        assert 0 <= removed <= 55
        assert pub.stats()["journal_trimmed"] == 55
        assert pub.apply_retention() == 0
        with mcsync.Subscriber(
            tmp_path / "late", control_addr=pub.control_addr, fingerprint=pub.fingerprint
        ) as s:
            sub = s.subscribe("trimmed")
            sub.wait_for_version(60, timeout=CONVERGE)
            assert dict(sub) == dict(db.items())
            assert sub.stats()["catchups_full_copy"] == 1
    with pytest.raises(mcsync.ConfigError, match="retention_max_age"):
        open_publisher(tmp_path / "bad", retention_max_age=-1)


def test_a_replica_far_behind_catches_up_compacted(
    publisher: mcsync.Publisher, make_subscriber: Callable[..., mcsync.Subscriber]
) -> None:
    db = publisher.database("compacted")
    for i in range(200):
        db.put(f"k{i % 10}", f"value {i}")
    seen: list[int] = []
    sub = make_subscriber(compact_catch_up_after=50).subscribe(
        "compacted", lambda u: seen.append(u.version)
    )
    sub.wait_for_version(200, timeout=CONVERGE)
    assert dict(sub) == dict(db.items())
    assert sub.stats()["catchups_compacted"] == 1
    assert len(seen) < 20, seen  # the latest value per key, not every step
