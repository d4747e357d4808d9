"""Atomic writes: plain Python, no Dagster, importable by trainers.

Everything written to the shared drive goes through here: temp file in the same directory, fsync,
rename, fsync of the directory, so nothing half-written is ever read as complete.
"""

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlgraph.core.hashing import canonical_json


def _fsync_dir(directory: Path) -> None:
    # The rename is only durable once the directory entry is on disk too.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success fsync it and rename it over `target`.

    Writers that need a file name (pyarrow, matplotlib) write to the yielded path;
    readers never see a half-written `target`, and a failure leaves the old one intact.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates 0600; files on a shared drive must be readable by other users and nodes.
        os.chmod(tmp, 0o644)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def atomic_write_text(target: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(target, text.encode("utf-8"))


def atomic_write_json(target: str | os.PathLike[str], obj: Any) -> Path:
    return atomic_write_text(target, canonical_json(obj))


def atomic_append_line(target: str | os.PathLike[str], line: str) -> Path:
    """Append one line by rewriting the file atomically (history files stay small)."""
    target = Path(target)
    existing = target.read_bytes() if target.exists() else b""
    if existing and not existing.endswith(b"\n"):
        existing += b"\n"
    return atomic_write_bytes(target, existing + line.rstrip("\n").encode("utf-8") + b"\n")
