"""docs/PYTHON.md: the quick start runs as shown and the API reference is current."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import unique_group

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "PYTHON.md"
TOOL = ROOT / "mcsync-py" / "tools" / "api_reference.py"


def quick_start() -> str:
    section = DOC.read_text().split("## Quick start", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "no python block in the quick start"
    return match.group(1)


def test_quick_start_replicates_the_dict(tmp_path: Path) -> None:
    code = quick_start()
    assert len([l for l in code.splitlines() if l.strip()]) <= 11
    group, port = unique_group()  # never the documented default group in tests
    code = code.replace('group="239.255.77.1", port=47100', f'group="{group}", port={port}')
    assert group in code
    script = tmp_path / "quick_start.py"
    script.write_text(code)
    r = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "1 b'alice' b'admin'",
        "2 b'bob' b'staff'",
        "3 b'carol' b'guest'",
        "{'alice': 'admin', 'bob': 'staff', 'carol': 'guest'}",
    ]


def test_api_reference_is_current() -> None:
    r = subprocess.run(
        [sys.executable, str(TOOL), "--check", str(DOC)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if r.returncode != 0:
        pytest.fail(r.stderr)
