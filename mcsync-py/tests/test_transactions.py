"""The transaction context manager commits on success and discards on an exception."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

import mcsync
from conftest import CONVERGE, open_publisher


def test_with_block_commits_once_as_one_update(
    publisher: mcsync.Publisher, make_subscriber: Callable[..., mcsync.Subscriber]
) -> None:
    db = publisher.database("txn")
    db.put("c", "old")
    updates: list[mcsync.Update] = []
    sub = make_subscriber().subscribe("txn", updates.append)
    with db.transaction() as t:
        t.put("a", "1")
        t.put(b"b", b"2")
        t.delete("c")
        assert len(t) == 3
        assert t.version is None
        assert db.version == 1  # nothing is written before the block ends
    assert t.version == db.version == 2
    assert len(t) == 0
    sub.wait_for_version(2, timeout=CONVERGE)
    assert dict(sub) == {b"a": b"1", b"b": b"2"}
    assert [u.version for u in updates] == [1, 2]
    assert [(op.operation, op.key) for op in updates[1].ops] == [
        ("put", b"a"),
        ("put", b"b"),
        ("delete", b"c"),
    ]
    with pytest.raises(mcsync.ClosedError, match="already committed"):
        t.put("late", "x")
    with pytest.raises(mcsync.ClosedError):
        t.commit()


def test_with_block_discards_on_exception(publisher: mcsync.Publisher) -> None:
    db = publisher.database("discard")
    v = db.put("keep", "1")

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with db.transaction() as t:
            t.put("keep", "2")
            t.put("new", "x")
            raise Boom()
    assert t.version is None
    assert db.version == v
    assert db.get("keep") == b"1" and db.get("new") is None
    with pytest.raises(mcsync.ClosedError):
        t.put("after", "x")
    # A commit error inside the block is not masked by __exit__.
    with pytest.raises(mcsync.ClosedError):
        with db.transaction() as t2:
            t2.put("x", "y")
            t2.rollback()
            t2.commit()
    assert db.version == v


def test_explicit_commit_rollback_and_empty(publisher: mcsync.Publisher) -> None:
    db = publisher.database("explicit")
    t = db.transaction()
    t.put("a", "1")
    assert t.commit() == 1 == t.version
    t = db.transaction()
    t.put("a", "2")
    t.rollback()
    t.rollback()  # idempotent
    assert t.version is None and db.get("a") == b"1"
    with db.transaction():
        pass  # an empty block commits nothing
    assert db.version == 1
    with pytest.raises(mcsync.ConfigError, match="empty transaction"):
        db.transaction().commit()


def test_too_large_update_is_refused(tmp_path: Path) -> None:
    with open_publisher(tmp_path / "p", max_update_bytes=1024) as p:
        db = p.database("small")
        with pytest.raises(mcsync.TooLargeError):
            db.put("k", b"x" * 2000)
        with pytest.raises(mcsync.TooLargeError):
            with db.transaction() as t:
                for i in range(100):
                    t.put(f"k{i}", b"x" * 50)
        assert db.version == 0
