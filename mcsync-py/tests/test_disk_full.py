"""A full disk is named as such, on the publisher and on the subscriber (LMDB itself
reports a write cut short by a full device as "Input/output error").

Each test mounts a small tmpfs, so they need root (and are skipped without it)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import pytest

import mcsync
from conftest import CONVERGE, open_publisher

VALUE = b"x" * 65536


def mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB file system, unmounted after the test."""
    path = tmp_path / "small"
    mount_tmpfs(path, "3m")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_publisher_on_a_full_disk_says_so(small_disk: Path) -> None:
    with open_publisher(small_disk / "pub") as pub:
        db = pub.database("full")
        with pytest.raises(mcsync.StorageError) as e:
            for i in range(200):
                db.put(f"k{i}", VALUE)
        text = str(e.value)
        assert "no space left on device" in text, text
        assert str(small_disk / "pub") in text, text
        assert "bytes free" in text, text


def test_a_subscriber_on_a_full_disk_says_so(
    small_disk: Path, publisher: mcsync.Publisher
) -> None:
    db = publisher.database("full")
    s = mcsync.Subscriber(
        small_disk / "sub",
        control_addr=publisher.control_addr,
        fingerprint=publisher.fingerprint,
    )
    with s:
        sub = s.subscribe("full", lambda u: None)
        v = 0
        for i in range(100):  # 6.4 MiB for a 3 MiB disk
            v = db.put(f"k{i}", VALUE)
        with pytest.raises(mcsync.StorageError) as e:
            sub.wait_for_version(v, timeout=CONVERGE)
        text = str(e.value)
        assert "no space left on device" in text, text
        assert str(small_disk / "sub") in text, text
        assert not text.startswith("storage:"), text
        assert sub.closed  # it stopped; the replica stays readable
        assert sub.get("k0") == VALUE
