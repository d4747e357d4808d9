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
from mlgraph.core.untrusted import REGULAR_FIX, Unusable, read_regular_file

# atomic_append_line rewrites the whole file: past this size a history file is not "small" any more.
APPEND_LINE_MAX_BYTES = 16 * 1024 * 1024
SHARED_FILE_MODE = 0o644


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    # The rename is only durable once the directory entry is on disk too.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], mode: int = SHARED_FILE_MODE) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success fsync it and rename it over `target`.

    Writers that need a file name (pyarrow, matplotlib) write to the yielded path;
    readers never see a half-written `target`, and a failure leaves the old one intact.
    `mode`: the file's permissions (0o600 for a file only its owner may read).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates 0600; files on a shared drive must be readable by other users and nodes.
        os.chmod(tmp, mode)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        fsync_dir(target.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes, mode: int = SHARED_FILE_MODE) -> Path:
    with atomic_path(target, mode) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def atomic_write_text(target: str | os.PathLike[str], text: str, mode: int = SHARED_FILE_MODE) -> Path:
    return atomic_write_bytes(target, text.encode("utf-8"), mode)


def atomic_write_json(target: str | os.PathLike[str], obj: Any, mode: int = SHARED_FILE_MODE) -> Path:
    return atomic_write_text(target, canonical_json(obj), mode)


def atomic_append_line(target: str | os.PathLike[str], line: str, max_bytes: int = APPEND_LINE_MAX_BYTES) -> Path:
    """Append one line by rewriting the file atomically (history files stay small).

    The old content is read as untrusted: only a regular file of at most `max_bytes` (a symlink, FIFO
    or device at `target` is refused with an `Unusable` naming the file, never followed or opened).
    """
    target = Path(target)
    try:
        os.lstat(target)
    except FileNotFoundError:
        existing = b""
    else:
        try:
            if os.path.islink(target):
                # The rename below would replace the link anyway; reading through it would copy its target.
                raise Unusable("is a symlink; it was not followed", REGULAR_FIX)
            existing = read_regular_file(target, max_bytes)
        except Unusable as exc:
            raise Unusable(f"{target}: {exc.reason}", exc.fix) from None
    if existing and not existing.endswith(b"\n"):
        existing += b"\n"
    return atomic_write_bytes(target, existing + line.rstrip("\n").encode("utf-8") + b"\n")
