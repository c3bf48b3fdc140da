"""Unicast-only subscribers: the publisher pushes its stream to them by unicast UDP."""

from __future__ import annotations

from typing import Callable

import mcsync
from conftest import CONVERGE


def test_a_unicast_subscriber_converges_by_push_without_joining_the_group(
    publisher: mcsync.Publisher, make_subscriber: Callable[..., mcsync.Subscriber]
) -> None:
    db = publisher.database("pushed")
    sub = make_subscriber("wan", unicast=True, user="wan").subscribe("pushed")
    for i in range(300):
        db.put(f"k{i % 50}", f"v{i}")
    sub.wait_for_version(db.version, timeout=CONVERGE)
    assert dict(sub.items()) == dict(db.items())
    stats = sub.stats()
    assert stats["unicast_datagrams"] > 0
    # Everything it received was pushed; it never polled.
    assert stats["packets_received"] == stats["unicast_datagrams"]
    assert stats["status_polls"] == 0
    p = publisher.stats()
    assert p["unicast_datagrams"] > 0
    assert p["unicast_targets"] == 1
