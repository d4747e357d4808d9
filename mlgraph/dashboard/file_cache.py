"""A file on the drive parsed once and reread only when its (mtime, size, inode) changes: what the dashboard
polls on every refresh (signals, live-performance reports) costs a stat while nothing moves."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

T = TypeVar("T")


class StatCache(Generic[T]):
    """path → parsed entry, keyed by the file's stat; a missing file drops its entry and gives None."""

    def __init__(self, follow_symlinks: bool = True) -> None:
        self._follow = follow_symlinks
        self._entries: dict[Path, tuple[tuple[int, int, int], T]] = {}

    def get(self, path: Path, parse: Callable[[], T]) -> T | None:
        try:
            st = os.stat(path, follow_symlinks=self._follow)
        except OSError:
            self._entries.pop(path, None)
            return None
        version = (st.st_mtime_ns, st.st_size, st.st_ino)
        cached = self._entries.get(path)
        if cached and cached[0] == version:
            return cached[1]
        entry = parse()
        self._entries[path] = (version, entry)
        return entry
