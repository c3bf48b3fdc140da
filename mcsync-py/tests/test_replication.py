"""Replication end to end: one Python publisher, Python subscribers, loopback multicast."""

from __future__ import annotations

import collections.abc
import threading
from pathlib import Path
from typing import Callable

import pytest

import mcsync
from conftest import CONVERGE, open_publisher


def recorder(versions: list[int]) -> Callable[[mcsync.Update], None]:
    return lambda u: versions.append(u.version)


def test_two_subscribers_converge_under_loss_with_ordered_callbacks(
    publisher: mcsync.Publisher, make_subscriber: Callable[..., mcsync.Subscriber]
) -> None:
    db = publisher.database("converge")
    for i in range(20):  # before anyone subscribes: served by catch-up
        db.put(f"early{i}", f"value{i}")

    seen: dict[str, list[int]] = {"a": [], "b": []}
    subs = []
    for name, seed in (("a", 11), ("b", 22)):
        s = make_subscriber(name, loss=0.05, loss_seed=seed)
        subs.append(s.subscribe("converge", recorder(seen[name])))

    n_writes = 400
    target = db.version + n_writes
    errors: list[BaseException] = []

    def write() -> None:
        try:
            for i in range(n_writes):
                if i % 50 == 49:
                    with db.transaction() as t:
                        t.put(f"tx{i}", b"x" * 100)
                        t.delete(f"k{i - 1}")
                elif i % 7 == 0:
                    db.delete(f"k{i - 3}")
                else:
                    # Some values span several datagrams (chains of many packets).
                    db.put(f"k{i}", bytes([i % 256]) * (i * 13 % 5000))
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    writer = threading.Thread(target=write)
    writer.start()
    # The writer needs the GIL while we wait: wait_for_version must release it.
    for sub in subs:
        sub.wait_for_version(target, timeout=CONVERGE)
    writer.join(timeout=CONVERGE)
    assert not errors
    assert db.version == target

    master = dict(db.items())
    for name, sub in zip("ab", subs):
        assert dict(sub) == master
        assert sub.version == target
        assert seen[name] == list(range(1, target + 1)), f"callbacks of {name}"
        stats = sub.stats()
        assert stats["dropped_injected"] > 0, stats
        assert stats["callback_errors"] == 0
    assert publisher.stats()["updates_committed"] == target


def test_pull_style_updates_iterator(
    publisher: mcsync.Publisher, make_subscriber: Callable[..., mcsync.Subscriber]
) -> None:
    db = publisher.database("pull")
    db.put("seed", "0")
    sub = make_subscriber().subscribe("pull")
    db.put("k", "v")
    db.delete("seed")
    with db.transaction() as t:
        t.put(b"x", b"1")
        t.put(b"y", b"2")

    got = []
    for u in sub.updates(timeout=CONVERGE):
        got.append(u)
        if u.version == 4:
            break
    assert [u.version for u in got] == [1, 2, 3, 4]
    assert (got[1].operation, got[1].key, got[1].value) == ("put", b"k", b"v")
    assert (got[2].operation, got[2].key, got[2].value) == ("delete", b"seed", None)
    assert len(got[3]) == 2
    assert [(op.key, op.value, op.groups) for op in got[3]] == [
        (b"x", b"1", ()),
        (b"y", b"2", ()),
    ]
    with pytest.raises(ValueError, match="2 operations"):
        _ = got[3].key
    assert got[0].timestamp > 1.6e9

    # Nothing more arrives: the iterator ends after the idle timeout.
    assert list(sub.updates(timeout=0.2)) == []
    sub.close()
    # A closed subscription ends the iterator at once, even without a timeout.
    assert list(sub.updates()) == []


def test_pull_queue_keeps_the_newest_and_counts_the_dropped(
    publisher: mcsync.Publisher, make_subscriber: Callable[..., mcsync.Subscriber]
) -> None:
    db = publisher.database("overflow")
    db.put("a", "0")
    sub = make_subscriber().subscribe("overflow", queue_size=3)
    for i in range(10):
        db.put("a", str(i))
    sub.wait_for_version(11, timeout=CONVERGE)
    # timeout=0 takes what is queued and stops.
    assert [u.version for u in sub.updates(timeout=0)] == [9, 10, 11]
    assert sub.stats()["updates_dropped"] == 11 - 3

    with pytest.raises(mcsync.ConfigError):
        make_subscriber("other").subscribe("overflow", lambda u: None).updates()


def test_keys_and_values_accept_bytes_and_str(
    publisher: mcsync.Publisher, make_subscriber: Callable[..., mcsync.Subscriber]
) -> None:
    db = publisher.database("types")
    db.put("só", "välue")
    db.put(b"\x00\xff", bytearray(b"raw"))
    v = db.put("empty", b"")
    sub = make_subscriber().subscribe("types")
    sub.wait_for_version(v, timeout=CONVERGE)
    assert sub.get("só") == "välue".encode()
    assert sub["só".encode()] == "välue".encode()
    assert sub.get(b"\x00\xff") == b"raw"
    assert sub.get("empty") == b""
    assert sub.get("missing") is None
    assert sub.get("missing", b"dflt") == b"dflt"
    assert "empty" in sub and "missing" not in sub
    with pytest.raises(KeyError):
        sub["missing"]
    with pytest.raises(TypeError, match="key must be bytes or str"):
        db.put(42, "x")  # type: ignore[arg-type]
    assert db.get("só") == "välue".encode()
    assert sub.name == "types" and db.name == "types"


def test_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(mcsync.ConfigError, match="not a multicast address") as e:
        open_publisher(tmp_path / "p", group="10.0.0.1")
    assert isinstance(e.value, ValueError) and isinstance(e.value, mcsync.Error)
    with pytest.raises(mcsync.ConfigError, match="at most one of"):
        open_publisher(tmp_path / "p", users=tmp_path / "users", open_access=True)
    with pytest.raises(mcsync.ConfigError, match="go together"):
        open_publisher(tmp_path / "p", certificate=tmp_path / "cert.pem")
    with pytest.raises(mcsync.ConfigError, match="no users file"):
        open_publisher(tmp_path / "p", open_access=False)
    with pytest.raises(mcsync.ConfigError, match="exactly one of"):
        mcsync.Subscriber(tmp_path / "s", control_addr="127.0.0.1:1")
    with pytest.raises(mcsync.ConfigError, match="control_addr"):
        mcsync.Subscriber(tmp_path / "s", control_addr="nowhere", insecure_loopback=True)
    with pytest.raises(TypeError):
        mcsync.Subscriber(tmp_path / "s", control_addr=1234, insecure_loopback=True)  # type: ignore[arg-type]
    with open_publisher(tmp_path / "p") as p:
        with pytest.raises(mcsync.ConfigError, match="database name"):
            p.database("bad name!")
        with pytest.raises(mcsync.ConfigError, match="schedule"):
            p.set_schedule("sometimes")
        with pytest.raises(mcsync.ConfigError, match="schedule window 1"):
            p.set_schedule([(0, 60), (1440, 10)])
    for cls in (
        mcsync.AuthError,
        mcsync.ProtocolError,
        mcsync.StorageError,
        mcsync.ClosedError,
        mcsync.TooLargeError,
        mcsync.RefusedError,
        mcsync.IoError,
        mcsync.TimeoutError,
    ):
        assert issubclass(cls, mcsync.Error)
    assert issubclass(mcsync.TimeoutError, TimeoutError)


def test_unknown_database_is_refused(
    publisher: mcsync.Publisher, make_subscriber: Callable[..., mcsync.Subscriber]
) -> None:
    with pytest.raises(mcsync.RefusedError, match="not published"):
        make_subscriber().subscribe("nobody-publishes-this")


def test_closed_publisher_refuses_writes(publisher: mcsync.Publisher) -> None:
    db = publisher.database("closing")
    db.put("a", "1")
    assert not publisher.closed
    publisher.close()
    assert publisher.closed
    with pytest.raises(mcsync.ClosedError):
        db.put("a", "2")
    with pytest.raises(mcsync.ClosedError):
        publisher.database("closing")
    publisher.close()  # idempotent


def test_a_closed_subscriber_refuses_what_would_start_work(
    publisher: mcsync.Publisher, make_subscriber: Callable[..., mcsync.Subscriber]
) -> None:
    # The engine refuses: closed by close(), or only in the engine (close_all at exit).
    publisher.database("shut").put("a", "1")
    closed_here = make_subscriber("here")
    closed_here.close()
    closed_at_exit = make_subscriber("exit")
    sub = closed_at_exit.subscribe("shut")
    sub.wait_for_version(1, timeout=CONVERGE)
    mcsync.close_all()
    assert sub.closed
    for s in (closed_here, closed_at_exit):
        assert s.closed  # core's state: close_all at exit closes it too
        with pytest.raises(mcsync.ClosedError, match="^subscriber is closed$"):
            s.subscribe("shut")
        with pytest.raises(mcsync.ClosedError, match="^subscriber is closed$"):
            s.verify("shut")
        with pytest.raises(mcsync.ClosedError, match="^subscriber is closed$"):
            s.resync("shut")
    assert sub.get("a") == b"1"  # the replica stays readable


def test_async_durability_returns_at_once_and_flush_waits_for_the_journal(
    tmp_path: Path,
) -> None:
    with pytest.raises(mcsync.ConfigError, match="durability"):
        open_publisher(tmp_path / "bad", durability="eventually")
    with open_publisher(tmp_path / "pub", durability="async") as pub:
        db = pub.database("hooked")
        with mcsync.Subscriber(
            tmp_path / "sub", control_addr=pub.control_addr, fingerprint=pub.fingerprint
        ) as s:
            seen: list[int] = []
            replica = s.subscribe("hooked", recorder(seen))
            # One update per call, as from a host's update hook: versions in call order.
            versions = [db.put(f"k{i % 50}", f"v{i}") for i in range(1000)]
            assert versions == list(range(1, 1001))
            pub.flush()
            assert db.version == 1000 and db.get("k49") == b"v999"
            replica.wait_for_version(1000, timeout=CONVERGE)
            assert dict(replica) == dict(db.items())
            assert seen == versions
            assert pub.stats()["commits_lost"] == 0


def test_a_subscription_is_a_read_only_mapping(
    publisher: mcsync.Publisher, make_subscriber: Callable[..., mcsync.Subscriber]
) -> None:
    db = publisher.database("mapping")
    for k, v in (("b", "2"), ("a", "1"), ("c", "3")):
        db.put(k, v)
    v = db.delete("c")
    sub = make_subscriber().subscribe("mapping")
    sub.wait_for_version(v, timeout=CONVERGE)
    assert isinstance(sub, collections.abc.Mapping)
    assert len(sub) == 2
    # Iteration yields keys (in key order), like any mapping; items() yields the pairs.
    assert list(sub) == [b"a", b"b"]
    assert list(sub.keys()) == [b"a", b"b"]
    assert list(sub.values()) == [b"1", b"2"]
    assert list(sub.items()) == [(b"a", b"1"), (b"b", b"2")]
    assert isinstance(sub.keys(), collections.abc.KeysView)
    assert isinstance(sub.values(), collections.abc.ValuesView)
    assert isinstance(sub.items(), collections.abc.ItemsView)
    assert (b"a", b"1") in sub.items() and b"b" in sub.keys()
    assert dict(sub) == dict(sub.items()) == {b"a": b"1", b"b": b"2"}
    assert sub == {b"a": b"1", b"b": b"2"} and sub != {b"a": b"1"}
    assert b"a" in sub and "a" in sub and b"c" not in sub and 42 not in sub
    assert sub.get("c", b"gone") == b"gone"
    with pytest.raises(TypeError):
        hash(sub)  # a mapping that changes is not hashable
    with pytest.raises(TypeError):
        sub[b"a"] = b"x"  # type: ignore[index]
    # The views are snapshots of one version.
    items = sub.items()
    sub.wait_for_version(db.put("d", "4"), timeout=CONVERGE)
    assert len(items) == 2 and len(sub) == 3


def test_wait_until_current_needs_no_version(
    publisher: mcsync.Publisher, make_subscriber: Callable[..., mcsync.Subscriber]
) -> None:
    db = publisher.database("current")
    db.put("early", "x")
    sub = make_subscriber().subscribe("current")
    assert sub.wait_caught_up(timeout=CONVERGE) == 1
    last = 0
    for i in range(100):
        last = db.put(f"k{i}", str(i))
    assert sub.wait_until_current(timeout=CONVERGE) == last
    assert sub.version >= last and sub["k99"] == b"99"
    sub.close()
    with pytest.raises(mcsync.ClosedError):
        sub.wait_until_current(timeout=5)
