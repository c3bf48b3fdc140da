"""Shared fixtures: every test gets its own multicast group and port, its own data
directories, and real sockets and LMDB files on loopback only."""

from __future__ import annotations

import random
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

import mcsync

# Generous: the machine is a shared 2-core box.
CONVERGE = 60.0


def unique_group() -> tuple[str, int]:
    """A random administratively scoped group (239.0.0.0/8) and a random high port, so
    tests running at the same time never hear each other."""
    r = random.SystemRandom()
    group = f"239.{r.randint(1, 250)}.{r.randint(0, 255)}.{r.randint(1, 200)}"
    return group, r.randint(20_000, 59_999)


def open_publisher(data_dir: Path, **options: Any) -> mcsync.Publisher:
    """A publisher on loopback with its own group and port (anyone may subscribe unless
    the options say otherwise)."""
    group, port = unique_group()
    if not {"users", "authenticator"} & options.keys():
        options.setdefault("open_access", True)
    options.setdefault("group", group)
    options.setdefault("port", port)
    options.setdefault("control_addr", "127.0.0.1:0")
    return mcsync.Publisher(data_dir, **options)


@pytest.fixture
def publisher(tmp_path: Path) -> Iterator[mcsync.Publisher]:
    with open_publisher(tmp_path / "pub") as p:
        yield p


@pytest.fixture
def make_subscriber(
    tmp_path: Path, publisher: mcsync.Publisher
) -> Iterator[Callable[..., mcsync.Subscriber]]:
    """Opens subscribers of `publisher` that pin its certificate's fingerprint."""
    opened: list[mcsync.Subscriber] = []

    def make(name: str = "sub", **options: Any) -> mcsync.Subscriber:
        options.setdefault("fingerprint", publisher.fingerprint)
        s = mcsync.Subscriber(tmp_path / name, control_addr=publisher.control_addr, **options)
        opened.append(s)
        return s

    yield make
    for s in opened:
        s.close()


@pytest.fixture
def unraisable(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Collects what reaches sys.unraisablehook during the test (instead of pytest turning
    it into a warning, which -W error would make a failure)."""
    seen: list[Any] = []

    def hook(args: Any) -> None:
        seen.append((args.exc_type, args.exc_value, args.object))

    monkeypatch.setattr(sys, "unraisablehook", hook)
    return seen
