"""A program that uses mcsync the way applications do, for ``mypy --strict`` (run by
scripts/test-python.sh; never executed): every context manager lets a function return from
inside its ``with`` block, ``get(key, default)`` narrows, literal options and fields are
checked, and a ``Subscription`` is a ``Mapping[bytes, bytes]``."""

from __future__ import annotations

from collections.abc import Mapping

from typing import Literal

from typing_extensions import assert_never, assert_type

import mcsync


def version_of(path: str) -> int:
    # A `with` block that returns: no "missing return statement" after it.
    with mcsync.Publisher(path, open_access=True, durability="async") as pub:
        return pub.database("orders").put("k", "v", groups=["sales"])


def commit(db: mcsync.Database) -> int:
    with db.transaction() as t:
        t.put(b"a", b"1")
        t.delete("b")
        return len(t)


def prepared(db: mcsync.Database) -> int:
    t = db.transaction(two_phase=True, timeout=5)
    t.put("a", "1")
    with t.prepare() as p:
        state = p.state
        assert_type(
            state, Literal["prepared", "committing", "committed", "rolled back", "failed"]
        )
        return p.version


def read(path: str, pub: mcsync.Publisher) -> bytes:
    with mcsync.Subscriber(
        path, control_addr=pub.control_addr, fingerprint=pub.fingerprint
    ) as s:
        with s.subscribe("orders") as sub:
            assert_type(sub.get("k"), bytes | None)
            assert_type(sub.get(b"k", b""), bytes)
            assert_type(sub.get("k", 0), bytes | int)
            assert_type(sub.wait_until_current(timeout=10), int)
            count: int = len(sub)
            keys: list[bytes] = list(sub)
            pairs: dict[bytes, bytes] = dict(sub.items())
            values: list[bytes] = list(sub.values())
            as_mapping: Mapping[bytes, bytes] = sub
            assert count == len(keys) == len(pairs) == len(values) == len(as_mapping)
            return sub.get("k", b"default")


def on_update(u: mcsync.Update) -> None:
    for op in u:
        if op.operation == "put":
            assert op.value is not None
        elif op.operation == "delete":
            assert op.value is None
        else:  # only the two literals exist
            assert_never(op.operation)


def database_get(db: mcsync.Database) -> bytes:
    assert_type(db.get("k"), bytes | None)
    return db.get("k", b"")


def grant() -> mcsync.Grant:
    mcsync.add_user("/tmp/users", "alice", "pw", databases=("orders",), groups=["sales"])
    return mcsync.Grant(groups=["sales"])
