"""Writes the API reference section of docs/PYTHON.md from the built module's docstrings.

    python mcsync-py/tools/api_reference.py docs/PYTHON.md           # rewrite the section
    python mcsync-py/tools/api_reference.py --check docs/PYTHON.md   # exit 1 if it drifted

The section lies between the markers ``<!-- api-reference:start -->`` and
``<!-- api-reference:end -->``. Run with the interpreter that has ``mcsync`` installed.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import mcsync

START = "<!-- api-reference:start -->"
END = "<!-- api-reference:end -->"

CLASSES = [
    "Publisher",
    "Database",
    "Transaction",
    "Prepared",
    "Subscriber",
    "Subscription",
    "UpdateIterator",
    "ResyncReport",
    "Relay",
    "Update",
    "Op",
    "Grant",
]
FUNCTIONS = ["add_user", "close_all"]
ERRORS = [
    "Error",
    "ConfigError",
    "TimeoutError",
    "ClosedError",
    "IoError",
    "StorageError",
    "ProtocolError",
    "AuthError",
    "TooLargeError",
    "RefusedError",
]
PROTOCOLS = [
    ("__enter__", "`with` (closes or commits on exit)"),
    ("__iter__", "`iter()`"),
    ("__len__", "`len()`"),
    ("__getitem__", "`obj[key]`"),
    ("__contains__", "`key in obj`"),
]


def doc(obj: object) -> str:
    return inspect.cleandoc(getattr(obj, "__doc__", None) or "").strip()


def signature(obj: object) -> str:
    try:
        return str(inspect.signature(obj))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "()"


def render_class(name: str) -> list[str]:
    cls = getattr(mcsync, name)
    init = signature(cls) if getattr(cls, "__text_signature__", None) else ""
    out = [f"### `mcsync.{name}{init}`", ""]
    if doc(cls):
        out += [doc(cls), ""]
    protocols = [text for dunder, text in PROTOCOLS if dunder in cls.__dict__]
    if protocols:
        out += ["Supports " + ", ".join(protocols) + ".", ""]
    public = [(a, m) for a, m in cls.__dict__.items() if not a.startswith("_")]
    # Properties sorted (their native order is not stable), then methods as defined.
    properties = sorted((a, m) for a, m in public if inspect.isdatadescriptor(m))
    methods = [(a, m) for a, m in public if not inspect.isdatadescriptor(m)]
    for attr, member in properties + methods:
        if inspect.isdatadescriptor(member):
            out.append(f"- `{name}.{attr}` (read-only property)")
        else:
            sig = signature(member)
            for with_self, without in (
                ("(self, /)", "()"),
                ("(self)", "()"),
                ("(self, /, ", "("),
                ("(self, ", "("),
            ):
                sig = sig.replace(with_self, without, 1)
            out.append(f"- `{name}.{attr}{sig}`")
        text = doc(member)
        if text:
            out += ["", *("  " + line if line else "" for line in text.splitlines())]
        out.append("")
    return out


def render() -> str:
    out = ["## API reference", "", f"Generated from the docstrings of mcsync {mcsync.__version__}.", ""]
    for name in CLASSES:
        out += render_class(name)
    out += ["### Functions", ""]
    for name in FUNCTIONS:
        f = getattr(mcsync, name)
        out += [f"- `mcsync.{name}{signature(f)}`", "", *("  " + l if l else "" for l in doc(f).splitlines()), ""]
    out += ["### Exceptions", ""]
    for name in ERRORS:
        cls = getattr(mcsync, name)
        bases = ", ".join(
            b.__name__ if b.__module__ == "builtins" else f"mcsync.{b.__name__}" for b in cls.__bases__
        )
        out.append(f"- `mcsync.{name}({bases})`: {doc(cls)}")
    out.append("")
    return "\n".join(line.rstrip() for line in out)


def main(argv: list[str]) -> int:
    check = "--check" in argv
    paths = [a for a in argv if a != "--check"]
    if len(paths) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    path = Path(paths[0])
    text = path.read_text()
    head, sep1, rest = text.partition(START)
    _, sep2, tail = rest.partition(END)
    if not (sep1 and sep2):
        print(f"{path}: markers {START} ... {END} not found", file=sys.stderr)
        return 2
    new = f"{head}{START}\n{render()}\n{END}{tail}"
    if check:
        if new != text:
            print(
                f"{path}: the API reference is out of date; run "
                f"`python mcsync-py/tools/api_reference.py {path}`",
                file=sys.stderr,
            )
            return 1
        return 0
    path.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
