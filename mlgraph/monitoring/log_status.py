"""What the prediction log holds right now: its files, rows, size and last write (the observed `prediction_log`).

Line counts are remembered per log (one experiment's current path) and per file identity (device,
inode), so a sensor tick reads only what was appended since the last one: a rotated file keeps its inode
when it is renamed and is never read again; the current file is read from where the last count stopped.
A file whose size shrank or whose first bytes changed (truncated and rewritten in place, as logrotate's
`copytruncate` does) is counted again from its start. A log's memory holds exactly the files it has now,
so it cannot thrash however many files the log keeps (retention bounds that: mlgraph.core.prediction_log),
and at most `MAX_LOGS` logs are remembered, least recently used dropped first.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from mlgraph.core.prediction_log import log_files
from mlgraph.core.untrusted import open_regular

MAX_LOGS = 1024
HEAD_BYTES = 256  # a file's first bytes: the same file, not one truncated and rewritten in place
_BLOCK = 8 << 20


@dataclass(frozen=True)
class _Counted:
    size: int  # bytes counted
    mtime_ns: int
    head: bytes
    lines: int


_LOGS: OrderedDict[str, dict[tuple[int, int], _Counted]] = OrderedDict()
_LOCK = threading.Lock()  # sensor ticks may run on several threads of one code server


@dataclass(frozen=True)
class LogStatus:
    current: str
    files: int
    rows: int  # lines; the drift report says how many of them were records
    bytes: int
    last_write: str | None  # UTC ISO time of the newest file's last change

    @property
    def version(self) -> str:
        """Changes whenever a line is written or a file rotated."""
        return f"{self.files}:{self.rows}:{self.bytes}:{self.last_write}"

    def metadata(self) -> dict[str, str | int]:
        return {
            "current_file": self.current,
            "files": self.files,
            "rows": self.rows,
            "bytes": self.bytes,
            "last_write": self.last_write or "never",
        }


def _count(path: Path, known: _Counted | None) -> tuple[tuple[int, int], _Counted]:
    """`path`'s identity and line count, reading only the bytes after `known` when it is still the same file."""
    with open_regular(path) as handle:
        opened = os.fstat(handle.fileno())
        head = handle.read(HEAD_BYTES)
        resume = (
            known is not None
            and opened.st_size >= known.size
            and head.startswith(known.head)
            and len(known.head) == min(HEAD_BYTES, known.size)
        )
        position, lines = (known.size, known.lines) if resume else (0, 0)
        handle.seek(position)
        while block := handle.read(_BLOCK):
            lines += block.count(b"\n")
            position += len(block)
    return (opened.st_dev, opened.st_ino), _Counted(position, opened.st_mtime_ns, head, lines)


def log_status(current: Path) -> LogStatus:
    """The log whose current file is `current` (every file counted; only new bytes are read)."""
    key = str(current)
    with _LOCK:
        known = dict(_LOGS.get(key, {}))
    seen: dict[tuple[int, int], _Counted] = {}
    rows = size = count = 0
    newest = None
    for path in log_files(current):
        try:
            stat = os.lstat(path)
            identity = (stat.st_dev, stat.st_ino)
            counted = known.get(identity)
            if counted is None or (counted.size, counted.mtime_ns) != (stat.st_size, stat.st_mtime_ns):
                identity, counted = _count(path, counted)
        except FileNotFoundError:  # rotated or removed while we looked
            continue
        seen[identity] = counted
        count += 1
        rows, size = rows + counted.lines, size + counted.size
        newest = max(newest or 0, counted.mtime_ns)
    with _LOCK:
        _LOGS[key] = seen  # only the files the log has now: deleted files are forgotten
        _LOGS.move_to_end(key)
        while len(_LOGS) > MAX_LOGS:
            _LOGS.popitem(last=False)
    last = dt.datetime.fromtimestamp(newest / 1e9, dt.UTC).isoformat() if newest is not None else None
    return LogStatus(current=str(current), files=count, rows=rows, bytes=size, last_write=last)
