"""A relay: master → Relay → a downstream subscriber that pins the relay's certificate."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import mcsync
from conftest import CONVERGE, open_publisher, unique_group


def test_a_downstream_replica_of_a_relay_equals_the_master(tmp_path: Path) -> None:
    group, port = unique_group()
    with open_publisher(tmp_path / "master") as master:
        db = master.database("ledger")
        for i in range(50):
            db.put(f"k{i % 30}", f"before {i}")
        relay = mcsync.Relay(
            upstream=dict(
                data_dir=tmp_path / "relay-up",
                control_addr=master.control_addr,
                fingerprint=master.fingerprint,
            ),
            downstream=dict(
                data_dir=tmp_path / "relay-down",
                group=group,
                port=port,
                control_addr="127.0.0.1:0",
                open_access=True,
            ),
            databases=["ledger"],
        )
        with relay:
            assert relay.fingerprint is not None
            assert relay.fingerprint != master.fingerprint
            epoch = relay.key_epoch("ledger")
            seen: list[int] = []
            with mcsync.Subscriber(
                tmp_path / "down",
                control_addr=relay.control_addr,
                fingerprint=relay.fingerprint,
            ) as down:
                sub = down.subscribe("ledger", lambda u: seen.append(u.version))
                db.rotate_key()
                for i in range(150):
                    db.put(f"k{i % 30}", f"during {i}")
                sub.wait_for_version(db.version, timeout=CONVERGE)
                assert dict(sub.items()) == dict(db.items())
                assert seen == list(range(1, db.version + 1))
            assert relay.version("ledger") == db.version
            assert relay.key_epoch("ledger") == epoch
            # An import is counted once its outcome is collected, just after it is journaled.
            deadline = time.monotonic() + CONVERGE
            while relay.stats()["imported"] < db.version and time.monotonic() < deadline:
                time.sleep(0.01)
            assert relay.stats()["imported"] == db.version
        assert relay.closed
        with pytest.raises(mcsync.ClosedError):
            relay.version("ledger")


def test_relay_options_are_checked(tmp_path: Path) -> None:
    with pytest.raises(mcsync.ConfigError):
        mcsync.Relay(
            upstream=dict(data_dir=tmp_path / "up", control_addr="127.0.0.1:1"),
            downstream=dict(data_dir=tmp_path / "down", open_access=True),
            databases=[],
        )
    with pytest.raises(TypeError):
        mcsync.Relay(
            upstream=dict(data_dir=tmp_path / "up", no_such_option=1),
            downstream=dict(data_dir=tmp_path / "down"),
            databases=["x"],
        )
