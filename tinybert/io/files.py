"""Write a text file atomically: into a temporary file beside it, fsync, then rename over it.

A reader (or a run interrupted half-way) sees the old file or the new one, never part of one.
"""
from __future__ import annotations

import os
import tempfile


def write_text_atomic(path, text: str) -> str:
    """Write ``text`` (UTF-8, '\\n' line ends) to ``path`` atomically; return the path."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path
