"""What the prediction log holds right now: its files, rows, size and last write (the observed `prediction_log`).

Rotated files never change again, so their line counts are remembered by (path, size, mtime) for the
life of the process (the code server answers every sensor tick): a tick counts the current file only.
"""

from __future__ import annotations

import datetime as dt
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from mlgraph.core.prediction_log import log_files

MAX_REMEMBERED = 4096
_ROTATED_LINES: OrderedDict[tuple[str, int, int], int] = OrderedDict()


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


def _count_lines(path: Path) -> int:
    lines = 0
    with open(path, "rb") as handle:
        while block := handle.read(8 << 20):
            lines += block.count(b"\n")
    return lines


def log_status(current: Path) -> LogStatus:
    """The log whose current file is `current` (every rotated file counted, the current one read each time)."""
    rows = size = 0
    newest = None
    files = log_files(current)
    for path in files:
        try:
            stat = path.stat()
            key = (str(path), stat.st_size, stat.st_mtime_ns)
            if path == current:
                count = _count_lines(path)
            elif key in _ROTATED_LINES:
                count = _ROTATED_LINES[key]
                _ROTATED_LINES.move_to_end(key)
            else:
                count = _ROTATED_LINES[key] = _count_lines(path)
                if len(_ROTATED_LINES) > MAX_REMEMBERED:
                    _ROTATED_LINES.popitem(last=False)
        except FileNotFoundError:  # rotated or removed while we looked
            continue
        rows, size = rows + count, size + stat.st_size
        newest = max(newest or 0, stat.st_mtime)
    last = dt.datetime.fromtimestamp(newest, dt.UTC).isoformat() if newest is not None else None
    return LogStatus(current=str(current), files=len(files), rows=rows, bytes=size, last_write=last)
