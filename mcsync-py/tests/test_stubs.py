"""The type stub matches the built native module."""

from __future__ import annotations

import ast
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

import mcsync
import mcsync._mcsync

STUB = Path(mcsync._mcsync.__file__).with_name("_mcsync.pyi")


def test_stubtest_passes(tmp_path: Path) -> None:
    env = dict(os.environ, MYPY_CACHE_DIR=str(tmp_path / "mypy-cache"))
    r = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "mcsync._mcsync"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def stub_new_parameters(class_name: str) -> list[tuple[str, str, str | None]]:
    tree = ast.parse(STUB.read_text())
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            for f in node.body:
                if isinstance(f, ast.FunctionDef) and f.name == "__new__":
                    a = f.args
                    out: list[tuple[str, str, str | None]] = [
                        (p.arg, "positional", None) for p in a.args[1:]
                    ]
                    for p, d in zip(a.kwonlyargs, a.kw_defaults):
                        default = None if d is None else ast.unparse(d)
                        out.append((p.arg, "keyword", default))
                    return out
    raise AssertionError(f"no {class_name}.__new__ in {STUB}")


@pytest.mark.parametrize("cls", [mcsync.Publisher, mcsync.Subscriber])
def test_constructor_signatures_match_the_stub(cls: type) -> None:
    # stubtest sees the native __new__ as (*args, **kwargs), so compare the signature
    # PyO3 publishes on the class with the stub's __new__ here.
    runtime: list[tuple[str, str, str | None]] = []
    for p in inspect.signature(cls).parameters.values():
        if p.kind is p.KEYWORD_ONLY:
            default = None if p.default is p.empty else repr(p.default)
            runtime.append((p.name, "keyword", default))
        else:
            runtime.append((p.name, "positional", None))
    assert runtime == stub_new_parameters(cls.__name__)


def test_mypy_catches_what_the_stub_promises(tmp_path: Path) -> None:
    # The other side of tests/typing_check.py (which must pass mypy --strict): a typo in
    # a literal option, and using get() without a default as bytes, are errors.
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import mcsync\n"
        "mcsync.Publisher('/x', durability='asynch')\n"
        "def f(s: mcsync.Subscription) -> bytes:\n"
        "    return s.get('k')\n"
        "def g(u: mcsync.Update) -> bool:\n"
        "    return u.operation == 'update'\n"
    )
    env = dict(os.environ, MYPY_CACHE_DIR=str(tmp_path / "mypy-cache"))
    r = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--strict-equality", str(bad)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=170,
    )
    out = r.stdout
    assert r.returncode == 1, out + r.stderr
    assert 'bad.py:2: error: Argument "durability"' in out, out
    assert "bad.py:4: error: Incompatible return value type" in out, out
    assert "bad.py:6: error: Non-overlapping equality check" in out, out
