"""Two-phase updates: participants vote, a refusal (or silence) aborts everywhere and is
named in the error, and prepared updates are committed or rolled back."""

from __future__ import annotations

import gc
import re
import threading
import time
from typing import Any, Callable

import pytest

import mcsync
from conftest import CONVERGE

# Vote timeout of the tests that expect every participant to answer.
VOTES = 30.0

# After an aborted two-phase update its version is given back and the next update, one- or
# two-phase, takes it. The ABORT is repeated until acknowledged; it names its round, so a
# repeat arriving after the next PREPARE of the same version leaves that PREPARE alone.


def participants(publisher: mcsync.Publisher, database: str) -> set[str]:
    return {
        r["client"]
        for r in publisher.subscribers()
        if r["participant"] and r["database"] == database
    }


def test_two_participants_vote_and_commit(
    publisher: mcsync.Publisher, make_subscriber: Callable[..., mcsync.Subscriber]
) -> None:
    db = publisher.database("ledger")
    db.put("a", "1")
    votes: list[tuple[int, list[tuple[str, bytes, bytes | None]], bytes | None]] = []
    replicas: dict[str, mcsync.Subscription] = {}

    def vote(u: mcsync.Update) -> None:
        # Runs before anything of the update is visible in the replica.
        ops = [(op.operation, op.key, op.value) for op in u]
        votes.append((u.version, ops, replicas["p1"].get("balance")))

    seen: dict[str, list[int]] = {"p1": [], "p2": []}
    replicas["p1"] = make_subscriber("p1", client_name="p1").subscribe(
        "ledger", lambda u: seen["p1"].append(u.version), participant=True, vote=vote
    )
    # Without vote= a participant votes PREPARED whenever it can apply the update.
    replicas["p2"] = make_subscriber("p2", client_name="p2").subscribe(
        "ledger", lambda u: seen["p2"].append(u.version), participant=True
    )
    observer = make_subscriber("observer").subscribe("ledger")
    assert replicas["p1"].participant and not observer.participant
    assert participants(publisher, "ledger") == {"p1", "p2"}

    with db.transaction(two_phase=True, timeout=VOTES) as t:
        t.put("balance", "100")
        t.put("owner", "alice")
        assert db.version == 1
    assert t.version == db.version == 2
    for sub in (*replicas.values(), observer):
        sub.wait_for_version(2, timeout=CONVERGE)
        assert sub["balance"] == b"100" and sub["owner"] == b"alice"
    assert votes[0] == (2, [("put", b"balance", b"100"), ("put", b"owner", b"alice")], None)
    assert {v for v, _, _ in votes} == {2}
    assert seen == {"p1": [1, 2], "p2": [1, 2]}
    assert replicas["p2"].stats()["votes_prepared"] >= 1

    # commit_two_phase() on a plain transaction; one-phase commits follow in one order.
    t = db.transaction()
    t.delete("owner")
    assert t.commit_two_phase(timeout=VOTES) == 3 == t.version
    assert db.put("after", "x") == 4
    for sub in replicas.values():
        sub.wait_for_version(4, timeout=CONVERGE)
        assert "owner" not in sub and sub["after"] == b"x"
    stats = publisher.stats()
    assert (stats["two_phase_committed"], stats["two_phase_aborted"]) == (2, 0)


def test_a_refusal_aborts_everywhere_and_names_the_refuser(
    publisher: mcsync.Publisher, make_subscriber: Callable[..., mcsync.Subscriber]
) -> None:
    db = publisher.database("guarded")
    db.put("a", "1")

    def strict(u: mcsync.Update) -> str | None:
        if any(op.key == b"forbidden" for op in u):
            return "key not allowed here"
        return None

    seen: list[mcsync.Update] = []
    easy = make_subscriber("easy", client_name="easy-going").subscribe(
        "guarded", participant=True
    )
    picky = make_subscriber("picky", client_name="strict", user="carol").subscribe(
        "guarded", seen.append, participant=True, vote=strict
    )
    t = db.transaction()
    t.put("forbidden", "x")
    t.put("a", "changed")
    with pytest.raises(mcsync.RefusedError) as e:
        t.commit_two_phase(timeout=VOTES)
    message = str(e.value)
    assert "strict (carol) refused: key not allowed here" in message, message
    assert "easy-going" not in message
    assert e.value.refused == (("strict (carol)", "key not allowed here"),)
    assert e.value.timed_out == ()
    assert isinstance(e.value, mcsync.Error)
    assert t.version is None
    with pytest.raises(mcsync.ClosedError):
        t.commit()
    # Nothing is visible anywhere and the version was given back.
    assert db.get("forbidden") is None and db.version == 1
    assert db.put("b", "2") == 2
    for sub in (easy, picky):
        sub.wait_for_version(2, timeout=CONVERGE)
        assert "forbidden" not in sub and sub["a"] == b"1"
    assert [u.version for u in seen] == [1, 2]
    assert picky.stats()["votes_refused"] == 1
    assert publisher.stats()["two_phase_aborted"] == 1


def test_vote_false_exceptions_and_bad_results_refuse_and_are_reported(
    publisher: mcsync.Publisher,
    make_subscriber: Callable[..., mcsync.Subscriber],
    unraisable: list[Any],
) -> None:
    db = publisher.database("moody")

    class NoSuchAccount(Exception):
        pass

    def vote(u: mcsync.Update) -> Any:
        if u.key == b"raise":
            raise NoSuchAccount("account 7 is closed")
        if u.key == b"false":
            return False
        if u.key == b"number":
            return 42
        return True

    reported: list[tuple[type, str, int]] = []
    sub = make_subscriber(client_name="moody").subscribe(
        "moody",
        participant=True,
        vote=vote,
        on_error=lambda e, u: reported.append((type(e), str(e), u.version)),
    )
    for key, reason in [
        ("raise", "NoSuchAccount: account 7 is closed"),
        ("false", "refused by the vote callback"),
        ("number", "TypeError: vote must return None, True, False or a str, not int"),
    ]:
        with pytest.raises(mcsync.RefusedError, match=re.escape(f"moody () refused: {reason}")):
            with db.transaction(two_phase=True, timeout=VOTES) as t:
                t.put(key, "x")
        assert t.version is None
    # Each refused round gave version 1 back; the next two-phase round takes it at once.
    with db.transaction(two_phase=True, timeout=VOTES) as t:
        t.put("fine", "x")
    assert t.version == 1
    sub.wait_for_version(1, timeout=CONVERGE)
    assert dict(sub) == {b"fine": b"x"}
    # Exceptions went to on_error (nothing to sys.unraisablehook) and were counted.
    assert reported == [
        (NoSuchAccount, "account 7 is closed", 1),
        (TypeError, "vote must return None, True, False or a str, not int", 1),
    ]
    assert not unraisable
    assert sub.stats()["callback_errors"] == 2


def test_vote_must_be_callable_and_needs_participant(
    publisher: mcsync.Publisher, make_subscriber: Callable[..., mcsync.Subscriber]
) -> None:
    publisher.database("args").put("a", "b")
    s = make_subscriber()
    with pytest.raises(TypeError, match="vote must be callable"):
        s.subscribe("args", participant=True, vote=42)  # type: ignore[arg-type]
    with pytest.raises(mcsync.ConfigError, match="participant=True"):
        s.subscribe("args", vote=lambda u: None)
    db = publisher.database("args")
    with pytest.raises(mcsync.ConfigError, match="two_phase=True"):
        db.transaction(timeout=5)
    for bad in (-1.0, float("inf"), float("nan")):
        with pytest.raises(mcsync.ConfigError):
            db.transaction(two_phase=True, timeout=bad)
    with pytest.raises(mcsync.ConfigError, match="empty transaction"):
        db.transaction().commit_two_phase()
    with pytest.raises(mcsync.ConfigError, match="empty transaction"):
        db.transaction().prepare()


def test_an_unanswered_vote_times_out_and_names_the_participant(
    publisher: mcsync.Publisher, make_subscriber: Callable[..., mcsync.Subscriber]
) -> None:
    db = publisher.database("slowvote")
    release = threading.Event()

    def slow(u: mcsync.Update) -> None:
        release.wait(10)  # waits with the GIL released

    sub = make_subscriber(client_name="sleepy").subscribe(
        "slowvote", participant=True, vote=slow
    )
    t0 = time.monotonic()
    with pytest.raises(mcsync.RefusedError, match="no answer in time from sleepy"):
        with db.transaction(two_phase=True, timeout=0.5) as t:
            t.put("k", "v")
    assert time.monotonic() - t0 < 5
    release.set()
    assert db.put("k2", "v2") == 1
    sub.wait_for_version(1, timeout=CONVERGE)
    assert "k" not in sub


def test_prepare_then_rollback_shows_nothing(
    publisher: mcsync.Publisher, make_subscriber: Callable[..., mcsync.Subscriber]
) -> None:
    db = publisher.database("tentative")
    db.put("k", "committed")
    seen: list[int] = []
    sub = make_subscriber(client_name="p").subscribe(
        "tentative", lambda u: seen.append(u.version), participant=True
    )
    sub.wait_for_version(1, timeout=CONVERGE)

    t = db.transaction()
    t.put("k", "tentative")
    t.put("extra", "x")
    p = t.prepare(timeout=VOTES)
    assert isinstance(p, mcsync.Prepared)
    assert (p.version, p.database, p.state) == (2, "tentative", "prepared")
    assert "prepared at version 2" in repr(p)
    assert t.version is None and len(t) == 0
    time.sleep(0.2)  # the participant holds the update, invisibly
    assert sub["k"] == b"committed" and "extra" not in sub
    p.rollback()
    p.rollback()  # idempotent
    assert p.state == "rolled back"
    with pytest.raises(mcsync.ClosedError, match="already rolled back"):
        p.commit()
    assert db.get("k") == b"committed" and db.version == 1
    # The version is given back; nothing of the update ever shows.
    assert db.put("other", "1") == 2
    sub.wait_for_version(2, timeout=CONVERGE)
    assert dict(sub) == {b"k": b"committed", b"other": b"1"}
    assert seen == [1, 2]


def test_prepared_context_manager_and_drop(
    publisher: mcsync.Publisher, make_subscriber: Callable[..., mcsync.Subscriber]
) -> None:
    db = publisher.database("prepared")
    sub = make_subscriber(client_name="p").subscribe("prepared", participant=True)

    t = db.transaction()
    t.put("k", "two-phase")
    with t.prepare(timeout=VOTES) as committed:
        assert committed.version == 1
    assert committed.state == "committed" and t.version == 1 == db.version
    with pytest.raises(mcsync.ClosedError, match="already committed"):
        committed.rollback()

    class Boom(Exception):
        pass

    # An exception in the Prepared's block rolls it back ...
    with pytest.raises(Boom):
        with db.transaction() as t:
            t.put("k", "never")
            with t.prepare(timeout=VOTES) as p:
                raise Boom()
    assert p.state == "rolled back" and t.version is None
    # ... and so does one in the transaction's block, for an update it left prepared.
    with pytest.raises(Boom):
        with db.transaction() as t:
            t.put("k", "never either")
            p = t.prepare(timeout=VOTES)
            raise Boom()
    assert p.state == "rolled back"
    # Dropping an unresolved Prepared rolls it back (later commits would wait for it).
    t = db.transaction()
    t.put("k", "dropped")
    p = t.prepare(timeout=VOTES)
    del p, t
    gc.collect()
    # Three rounds of version 2 were rolled back; the next commit takes it.
    assert db.put("last", "1") == 2
    sub.wait_for_version(2, timeout=CONVERGE)
    assert dict(sub) == {b"k": b"two-phase", b"last": b"1"}


def test_closing_the_publisher_rolls_back_what_is_prepared(
    publisher: mcsync.Publisher, make_subscriber: Callable[..., mcsync.Subscriber]
) -> None:
    db = publisher.database("closing")
    make_subscriber(client_name="p").subscribe("closing", participant=True)
    t = db.transaction()
    t.put("k", "v")
    p = t.prepare(timeout=VOTES)
    t0 = time.monotonic()
    publisher.close()  # would wait for the prepared update forever otherwise
    assert time.monotonic() - t0 < 10
    assert p.state == "rolled back"
    with pytest.raises(mcsync.ClosedError, match="publisher closed"):
        p.commit()
    assert db.get("k") is None
