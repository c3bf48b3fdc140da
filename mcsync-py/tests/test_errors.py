"""Errors say what went wrong once, in Python's words, as early as they can."""

from __future__ import annotations

import socket
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

import mcsync
from conftest import CONVERGE, open_publisher

KIND_WORDS = ("config:", "io:", "storage:", "protocol:", "auth:", "closed:", "timeout:",
              "too large:", "refused:")


def plain(e: BaseException) -> str:
    """The message, checked not to start with the engine's name of its kind."""
    text = str(e)
    assert not text.lower().startswith(KIND_WORDS), f"{type(e).__name__}: {text}"
    return text


def test_messages_do_not_repeat_their_class(
    tmp_path: Path, publisher: mcsync.Publisher, make_subscriber: Callable[..., mcsync.Subscriber]
) -> None:
    with pytest.raises(mcsync.ConfigError) as config:
        publisher.database("bad name!")
    plain(config.value)
    with pytest.raises(mcsync.RefusedError) as refused:
        make_subscriber("r").subscribe("never-published")
    assert "not published" in plain(refused.value)
    assert (refused.value.refused, refused.value.timed_out) == ((), ())
    v = publisher.database("errors").put("k", "v")
    sub = make_subscriber("t").subscribe("errors")
    sub.wait_for_version(v, timeout=CONVERGE)
    with pytest.raises(mcsync.TimeoutError) as timeout:
        sub.wait_for_version(v + 1, timeout=0.05)
    assert plain(timeout.value).startswith('database "errors" at version 1')
    sub.close()
    with pytest.raises(mcsync.ClosedError) as closed:
        sub.wait_for_version(v + 1, timeout=1)
    plain(closed.value)

    def refuse(user: str, secret: str, peer: tuple[str, int]) -> None:
        raise mcsync.AuthError("no entry for " + user)

    with open_publisher(tmp_path / "locked", authenticator=refuse) as locked:
        s = mcsync.Subscriber(
            tmp_path / "s", control_addr=locked.control_addr,
            fingerprint=locked.fingerprint, user="mallory",
        )
        with s, pytest.raises(mcsync.AuthError) as auth:
            s.subscribe("db")
        assert "no entry for mallory" in plain(auth.value)


def test_a_key_or_a_value_too_large_is_the_same_error(tmp_path: Path) -> None:
    with open_publisher(tmp_path / "p", max_update_bytes=4096) as pub:
        db = pub.database("big")
        with pytest.raises(mcsync.TooLargeError) as key:
            db.put(b"k" * 600, "v")
        assert "key of 600 bytes exceeds 511" in plain(key.value)
        with pytest.raises(mcsync.TooLargeError) as value:
            db.put("k", b"v" * 5000)
        assert "max_update_bytes" in plain(value.value)
        t = db.transaction()
        with pytest.raises(mcsync.TooLargeError):
            t.put(b"k" * 512, "v")
        assert len(t) == 0  # the transaction is unchanged and still usable
        with pytest.raises(mcsync.ConfigError):
            db.put(b"", "v")  # an empty key is invalid, not too large
        assert db.version == 0


def test_the_largest_value_is_max_update_bytes_less_its_key_and_33_bytes(
    publisher: mcsync.Publisher,
) -> None:
    # max_update_bytes (default 16 MiB) counts the whole encoded update, as documented:
    # a single put of key k takes 33 bytes besides its key and value.
    db = publisher.database("limit")
    limit = 16 * 1024 * 1024
    key = b"blob"
    with pytest.raises(mcsync.TooLargeError) as e:
        db.put(key, bytes(limit))  # a value of exactly 16 MiB does not fit
    assert f"would be {limit + 33 + len(key)} bytes encoded" in str(e.value)
    assert f"the maximum is {limit} (max_update_bytes)" in str(e.value)
    with pytest.raises(mcsync.TooLargeError):
        db.put(key, bytes(limit - 33 - len(key) + 1))
    assert db.put(key, bytes(limit - 33 - len(key))) == 1
    assert len(db.get(key, b"")) == limit - 33 - len(key)


@pytest.mark.parametrize("call", ["Database.put", "Transaction.put", "Grant", "add_user"])
def test_groups_must_be_a_list_not_a_str(
    tmp_path: Path, publisher: mcsync.Publisher, call: str
) -> None:
    db = publisher.database("groups")
    calls: dict[str, Callable[[Any], object]] = {
        "Database.put": lambda g: db.put("k", "v", groups=g),
        "Transaction.put": lambda g: db.transaction().put("k", "v", groups=g),
        "Grant": lambda g: mcsync.Grant(groups=g),
        "add_user": lambda g: mcsync.add_user(tmp_path / "users", "u", "pw", groups=g),
    }
    with pytest.raises(TypeError) as e:
        calls[call]("sales")
    assert str(e.value) == "groups must be a list of str, not a str: write groups=['sales']"
    with pytest.raises(TypeError, match="groups must be a list of str, not a list holding int"):
        calls[call](["sales", 7])
    with pytest.raises(TypeError, match="groups must be a list of str, not int"):
        calls[call](7)
    calls[call](("sales", "ops"))  # a tuple is fine
    if call == "Grant":
        assert mcsync.Grant(databases=["a"], groups=("x",)).groups == ("x",)
        with pytest.raises(TypeError, match="databases must be a list of str"):
            mcsync.Grant(databases="a")  # type: ignore[arg-type]


def test_a_malformed_fingerprint_is_refused_when_the_subscriber_opens(tmp_path: Path) -> None:
    for bad in ("abc", "zz" * 32, "00" * 31):
        with pytest.raises(mcsync.ConfigError, match="not 64 hex digits"):
            mcsync.Subscriber(tmp_path / "s", control_addr="127.0.0.1:9", fingerprint=bad)
    # Upper case and colons are fine.
    with mcsync.Subscriber(
        tmp_path / "s", control_addr="127.0.0.1:9", fingerprint=":".join(["AB"] * 32)
    ):
        pass


@pytest.fixture
def silent_server() -> Iterator[tuple[str, int]]:
    """A control address that accepts connections (the kernel does) and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield s.getsockname()


@pytest.mark.parametrize("tls", [True, False])
def test_a_publisher_that_never_answers_times_out_saying_so(
    tmp_path: Path, silent_server: tuple[str, int], tls: bool
) -> None:
    trust: dict[str, Any] = (
        {"fingerprint": "00" * 32} if tls else {"insecure_loopback": True}
    )
    with mcsync.Subscriber(
        tmp_path / "s", control_addr=silent_server, repair_io_timeout=0.3, **trust
    ) as s:
        with pytest.raises(mcsync.IoError) as e:
            s.subscribe("db")
    text = plain(e.value)
    assert "timed out" in text, text
    assert "no progress within" in text, text
    assert f"{silent_server[0]}:{silent_server[1]}" in text, text
    assert "temporarily unavailable" not in text, text


def test_a_first_publisher_without_users_says_how_to_add_them(tmp_path: Path) -> None:
    with pytest.raises(mcsync.ConfigError) as e:
        open_publisher(tmp_path / "p", open_access=False)
    text = plain(e.value)
    users = str(tmp_path / "p" / "users")
    assert f"no users file at {users}" in text
    assert f'mcsync.add_user("{users}", user, password)' in text
    assert "open_access=True" in text and "authenticator=" in text
    assert "mcsync users add" in text
    mcsync.add_user(tmp_path / "p" / "users", "alice", "pw")
    with open_publisher(tmp_path / "p", open_access=False):
        pass


def test_control_addr_is_one_name_on_both_sides(
    tmp_path: Path, publisher: mcsync.Publisher
) -> None:
    addr = publisher.control_addr
    with mcsync.Subscriber(
        tmp_path / "a", control_addr=addr, fingerprint=publisher.fingerprint
    ) as s:
        assert s.control_addr == addr
        with pytest.warns(DeprecationWarning, match="Subscriber.control_addr"):
            assert s.server == addr
    # The old keyword still works, with a warning.
    with pytest.warns(DeprecationWarning, match="control_addr"):
        old = mcsync.Subscriber(tmp_path / "b", server=addr, fingerprint=publisher.fingerprint)
    with old:
        assert old.control_addr == addr
    with pytest.raises(TypeError, match="needs control_addr="):
        mcsync.Subscriber(tmp_path / "c", fingerprint=publisher.fingerprint)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(TypeError, match="not both"):
            mcsync.Subscriber(
                tmp_path / "d", control_addr=addr, server=addr,
                fingerprint=publisher.fingerprint,
            )
