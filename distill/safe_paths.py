"""One check for every path taken from an untrusted source and written under a user folder.

Archive members, file names from servers and the like must land inside
their target folder: `safe_join(root, name)` accepts only a normalized
relative path (no absolute path, drive letter or other colon, backslash,
NUL, empty, "." or ".." part) and confirms with `os.path.commonpath` that the result stays
inside `root`. `os.path.join` alone would drop `root` at an absolute part
("datasets/svamp//etc/passwd" has one after the double slash).
"""
from __future__ import annotations

import os

from distill.errors import UserError


def check_relative(name: str, source: str) -> list[str]:
    """The parts of a safe relative path `name`; UserError naming `source` otherwise."""
    parts = name.split("/")
    unsafe = (not name or "\\" in name or "\0" in name or name.startswith("/")
              or any(part in ("", ".", "..") or ":" in part for part in parts))
    if unsafe:
        raise UserError(f"{source}: unsafe member path {name!r}; refusing to unpack this archive")
    return parts


def safe_join(root: str, name: str, source: str) -> str:
    """root/name after `check_relative`, guaranteed to stay inside root."""
    check_relative(name, source)
    root = os.path.abspath(root)
    target = os.path.abspath(os.path.join(root, *name.split("/")))
    if os.path.commonpath([root, target]) != root:
        raise UserError(f"{source}: member path {name!r} leaves {root}; refusing to unpack this archive")
    return target
