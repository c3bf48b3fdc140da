"""Security options: authenticators, users files, access groups, TLS trust, keys."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

import mcsync
from conftest import CONVERGE, open_publisher


def subscriber_of(
    pub: mcsync.Publisher, data_dir: Path, user: str = "", secret: str = "", **options: Any
) -> mcsync.Subscriber:
    options.setdefault("fingerprint", pub.fingerprint)
    return mcsync.Subscriber(
        data_dir, control_addr=pub.control_addr, user=user, secret=secret, **options
    )


def test_authenticator_grants_databases_and_access_groups(
    tmp_path: Path, unraisable: list[Any]
) -> None:
    calls: list[tuple[str, str]] = []

    def authenticate(user: str, secret: str, peer: tuple[str, int]) -> Any:
        calls.append((user, peer[0]))
        if (user, secret) == ("alice", "wonderland"):
            return mcsync.Grant(databases=["shared"], groups=["sales"])
        if user == "mallory":
            raise mcsync.AuthError("mallory is not welcome")
        if user == "buggy":
            raise LookupError("bug in the authenticator")
        return None

    with open_publisher(tmp_path / "pub", authenticator=authenticate) as pub:
        pub.database("private").put("x", "y")
        shared = pub.database("shared")
        shared.put("public", "everyone")
        shared.put("sales-only", "alice sees this", groups=["sales"])
        v = shared.put("hr-only", "alice does not", groups=["hr"])

        with subscriber_of(pub, tmp_path / "alice", "alice", "wonderland") as s:
            updates: list[mcsync.Update] = []
            replica = s.subscribe("shared", updates.append)
            replica.wait_for_version(v, timeout=CONVERGE)
            assert dict(replica) == {
                b"public": b"everyone",
                b"sales-only": b"alice sees this",
            }
            # Every version is called back; ops outside alice's groups are withheld.
            assert [u.version for u in updates] == [1, 2, 3]
            assert [[(op.key, op.groups) for op in u] for u in updates] == [
                [(b"public", ())],
                [(b"sales-only", ("sales",))],
                [],
            ]
            with pytest.raises(mcsync.AuthError, match="may not subscribe"):
                s.subscribe("private")  # not in alice's grant
            assert [(r["user"], r["database"]) for r in pub.subscribers()] == [
                ("alice", "shared")
            ]
        for user, secret, message in [
            ("alice", "wrong", "access denied"),
            ("mallory", "", "mallory is not welcome"),
            ("buggy", "", "access denied"),
        ]:
            with subscriber_of(pub, tmp_path / user, user, secret) as s:
                with pytest.raises(mcsync.AuthError, match=message):
                    s.subscribe("shared")
        assert pub.stats()["auth_failures"] >= 3
    assert ("alice", "127.0.0.1") in calls
    # The buggy authenticator's exception is reported, not lost.
    assert [(t, o) for t, _, o in unraisable] == [(LookupError, authenticate)]


def test_grant() -> None:
    g = mcsync.Grant(databases=["a", "b"], groups=["sales"])
    assert (g.databases, g.groups) == (("a", "b"), ("sales",))
    assert repr(g) == "Grant(databases=('a', 'b'), groups=('sales',), participant=False)"
    assert mcsync.Grant().databases is None and mcsync.Grant().groups == ()
    assert not g.participant and mcsync.Grant(participant=True).participant
    with pytest.raises(TypeError):
        mcsync.Grant(databases="a")  # type: ignore[arg-type]


def test_users_file(tmp_path: Path) -> None:
    users = tmp_path / "users"
    mcsync.add_user(users, "carol", "s3cret", databases=["inventory"], groups=["emea"])
    mcsync.add_user(users, "dave", "pw", participant=True)
    with pytest.raises(mcsync.ConfigError, match="already"):
        mcsync.add_user(users, "carol", "again")
    before = users.read_text()
    with pytest.raises(mcsync.ConfigError, match="password"):
        mcsync.add_user(users, "erin", "")
    with pytest.raises(mcsync.ConfigError, match="databases"):
        mcsync.add_user(users, "erin", "pw", databases=[])
    with pytest.raises(mcsync.ConfigError, match="spaces"):
        mcsync.add_user(users, "erin", "pw", groups=["two words"])
    assert users.read_text() == before
    assert users.read_text().splitlines()[1].endswith(" - participant")
    with open_publisher(tmp_path / "pub", users=users) as pub:
        inventory = pub.database("inventory")
        v = inventory.put("widget", "7")
        with subscriber_of(pub, tmp_path / "carol", "carol", "s3cret") as s:
            # carol's grant does not let her vote on (or veto) two-phase updates.
            with pytest.raises(mcsync.AuthError, match="two-phase participant"):
                s.subscribe("inventory", participant=True)
            s.subscribe("inventory").wait_for_version(v, timeout=CONVERGE)
        with subscriber_of(pub, tmp_path / "dave", "dave", "pw") as s:
            replica = s.subscribe("inventory", participant=True)
            t = inventory.transaction()
            t.put("widget", "8")
            v = t.commit_two_phase(timeout=CONVERGE)
            replica.wait_for_version(v, timeout=CONVERGE)
            assert replica["widget"] == b"8"
            assert [r["participant"] for r in pub.subscribers() if r["user"] == "dave"] == [
                True
            ]
        with subscriber_of(pub, tmp_path / "eve", "carol", "guess") as s:
            with pytest.raises(mcsync.AuthError):
                s.subscribe("inventory")


def test_insecure_loopback_and_certificate_pinning(tmp_path: Path) -> None:
    with open_publisher(tmp_path / "plain", insecure_loopback=True) as pub:
        assert pub.fingerprint is None
        v = pub.database("plain").put("a", "1")
        with subscriber_of(pub, tmp_path / "s1", insecure_loopback=True) as s:
            s.subscribe("plain").wait_for_version(v, timeout=CONVERGE)
    with pytest.raises(mcsync.ConfigError, match="loopback"):
        open_publisher(tmp_path / "p2", insecure_loopback=True, control_addr="0.0.0.0:0")

    with open_publisher(tmp_path / "tls") as pub:
        fp = pub.fingerprint
        assert fp is not None and len(fp) == 64
        pub.database("tls").put("a", "1")
        # (A short I/O timeout: the engine notices the mismatch only when it expires.)
        wrong: dict[str, Any] = {"fingerprint": "00" * 32, "repair_io_timeout": 1.0}
        with subscriber_of(pub, tmp_path / "s2", **wrong) as s:
            with pytest.raises(mcsync.Error, match="fingerprint"):
                s.subscribe("tls")
    # The self-signed certificate is kept: the fingerprint survives a restart.
    with open_publisher(tmp_path / "tls") as pub:
        assert pub.fingerprint == fp


def test_key_rotation_and_revocation(tmp_path: Path) -> None:
    with open_publisher(
        tmp_path / "pub", authenticator=lambda user, secret, peer: user in ("ann", "bob")
    ) as pub:
        db = pub.database("keys")
        subs = {}
        for user in ("ann", "bob"):
            subs[user] = subscriber_of(pub, tmp_path / user, user).subscribe("keys")
        v = db.put("before", "rotation")
        epoch = db.key_epoch
        assert db.rotate_key() > epoch
        v = db.put("after", "rotation")
        for sub in subs.values():
            sub.wait_for_version(v, timeout=CONVERGE)
            assert sub.get("after") == b"rotation"

        pub.revoke("bob")
        assert db.key_epoch > epoch + 1
        v = db.put("after", "revocation")
        subs["ann"].wait_for_version(v, timeout=CONVERGE)
        # Bob cannot follow: he learns he is revoked when he re-registers, or times out.
        with pytest.raises((mcsync.AuthError, mcsync.TimeoutError)):
            subs["bob"].wait_for_version(v, timeout=5)
        assert subs["bob"].get("after") == b"rotation"
        with subscriber_of(pub, tmp_path / "bob2", "bob") as s:
            with pytest.raises(mcsync.AuthError):
                s.subscribe("keys")


def test_schedule_never_replicates_by_unicast(tmp_path: Path) -> None:
    with open_publisher(tmp_path / "pub", schedule="never") as pub:
        db = pub.database("quiet")
        # The engine applies the schedule to a new database within 50 ms; wait for that.
        time.sleep(0.2)
        with subscriber_of(pub, tmp_path / "s") as s:
            sub = s.subscribe("quiet")
            for i in range(5):
                v = db.put(f"k{i}", "v")
            sub.wait_for_version(v, timeout=CONVERGE)
        assert pub.stats()["data_packets_sent"] == 0
        pub.set_schedule([(0, 1440)])
        pub.set_schedule("always")
