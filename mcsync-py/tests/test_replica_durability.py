"""Replica durability: how the subscriber's replica store reaches the disk."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import pytest

import mcsync
from conftest import CONVERGE


@pytest.mark.parametrize(
    "options",
    [
        {"replica_durability": "eventually"},
        {"replica_durability": "SYNC"},
        {"replica_flush_interval": 0.0},
        {"replica_flush_interval": -1.0},
        {"replica_flush_interval": float("nan")},
        {"replica_flush_interval": 7200.0},
        {"replica_durability": "sync", "replica_flush_interval": 1.0},
        {"replica_durability": "none", "replica_flush_interval": 1.0},
    ],
)
def test_bad_replica_durability_is_a_value_error(
    publisher: mcsync.Publisher,
    make_subscriber: Callable[..., mcsync.Subscriber],
    options: dict[str, Any],
) -> None:
    with pytest.raises(ValueError, match="replica"):
        make_subscriber(**options)


@pytest.mark.parametrize(
    ("options", "code"),
    [
        ({}, 1),
        ({"replica_durability": "sync"}, 0),
        ({"replica_durability": "periodic", "replica_flush_interval": 0.05}, 1),
        ({"replica_durability": "none"}, 2),
    ],
)
def test_every_mode_replicates_and_a_clean_close_leaves_the_replica_synced(
    tmp_path: Path,
    publisher: mcsync.Publisher,
    make_subscriber: Callable[..., mcsync.Subscriber],
    options: dict[str, Any],
    code: int,
) -> None:
    db = publisher.database("d")
    s = make_subscriber("sub", **options)
    replica = s.subscribe("d")
    v = 0
    for i in range(50):
        v = db.put(f"k{i}", f"v{i}")
    replica.wait_for_version(v, timeout=CONVERGE)
    stats = replica.stats()
    assert stats["replica_durability"] == code
    assert stats["replica_rebuilds"] == 0
    if options.get("replica_flush_interval"):
        # The flusher runs every 50 ms: wait for it (generously) rather than sleep.
        deadline = time.monotonic() + CONVERGE
        while replica.stats()["replica_flushes"] == 0:
            assert time.monotonic() < deadline, "the replica was never flushed"
            time.sleep(0.02)
    s.close()
    # Flushed at close: no unsynced marker is left behind, and the replica reopens whole.
    assert not (tmp_path / "sub" / "replica-unsynced").exists()
    with make_subscriber("sub", **options) as again:
        r = again.subscribe("d")
        r.wait_for_version(v, timeout=CONVERGE)
        assert dict(r) == dict(db.items())
        assert r.stats()["replica_rebuilds"] == 0
