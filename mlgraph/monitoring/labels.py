"""Delayed labels: the ground truth of logged predictions, arriving after the answer (issue 22).

Ids. Every prediction has one id its client got back: `/predict` answers its `request_id`; `/batch_predict`
answers one `<request_id>-<row>` per row (`prediction_id`). The prediction log already keeps both parts
(`request_id`, `row`), so the id is derived from a record, never stored twice, and logs written before ids
existed join as they are. A row-0 record answers to its bare request id too (`record_ids`): the service's
request ids are 32 hex digits with no '-', so the two spellings never name different predictions.

The store, `serving/{experiment}/labels.jsonl`, holds one JSON object per label:

    {"time": "<received, ISO UTC>", "id": "…", "label": …, "label_time": "<optional, the client's>",
     "source": "feedback" | "file:<name>"}

Two writers append to it, the service (`POST /feedback`) and the labels sensor (files dropped into
`serving/{experiment}/labels/`, mlgraph/monitoring/label_files.py), each through `append_labels`: a batch
is validated whole first, then written in one `write` under an exclusive `flock` (the two writers never
interleave lines) and fsynced, so a batch is stored whole or not at all. A line torn by a crash mid-write
is skipped by readers and counted (`bad_lines`), and the next writer starts on a fresh line so the torn
one never swallows a good one. The file is opened only through `open_append` (no symlink followed).

Last label wins: `read_labels` keeps, per id, the last line in file order (arrival order) and counts the
earlier ones as duplicates. Whether an id names a logged prediction is known only against the log: the
join (mlgraph/monitoring/live.py) counts and reports the labels that match none (`unknown_ids`); an id this
service can never have given (empty, too long, control characters) is counted as unknown on arrival and
not stored.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlgraph.core.untrusted import open_append, open_regular

SOURCE_FEEDBACK = "feedback"
MAX_ID_CHARS = 128
# Ids the service gives are hex, plus '-<row>' for a batch row; anything printable and short is accepted
# so that a store written by another id scheme still joins, but nothing that could corrupt a log line.
_ID = re.compile(rf"^[A-Za-z0-9._:@/+=-]{{1,{MAX_ID_CHARS}}}$")
_TORN_LINE_FIX = b"\n"


def prediction_id(request_id: str, row: int, batch: bool) -> str:
    """The id a client gets back for one prediction: the request id (`/predict`), `<request id>-<row>` (a batch row)."""
    return f"{request_id}-{row}" if batch else request_id


def record_ids(request_id: str, row: int) -> tuple[str, ...]:
    """Every id that names the logged record (request_id, row): the batch spelling, and the bare id for row 0."""
    return (f"{request_id}-{row}", request_id) if row == 0 else (f"{request_id}-{row}",)


def valid_id(value: object) -> bool:
    return isinstance(value, str) and _ID.match(value) is not None


def label_problem(label: object, task: str, classes: Sequence[Any] | None) -> str | None:
    """What is wrong with `label` as ground truth for `task` (None: nothing).

    Classification: one of the model's classes, of the class's own JSON type (1 is not "1", true is not 1).
    Regression and forecasting: a finite number (not a boolean).
    """
    if task == "classification":
        if label is None or isinstance(label, (dict, list)):
            return f"{json.dumps(label)[:40]} is not a class label"
        for cls in classes or ():
            same_kind = isinstance(label, bool) == isinstance(cls, bool) and isinstance(label, str) == isinstance(
                cls, str
            )
            if same_kind and label == cls:
                return None
        shown = ", ".join(json.dumps(c) for c in list(classes or ())[:20])
        return f"{json.dumps(label)[:40]} is not one of the model's classes [{shown}]"
    if isinstance(label, bool) or not isinstance(label, (int, float)):
        return f"{json.dumps(label)[:40]} is not a number"
    if not math.isfinite(float(label)):
        return f"{label} is not a finite number"
    return None


@dataclass
class Batch:
    """Labels ready to store (one per id, last wins), and what was counted on the way."""

    labels: dict[str, tuple[Any, str | None]] = field(default_factory=dict)  # id → (label, label_time)
    duplicates: int = 0  # labels replaced by a later one for the same id in this batch
    unknown: int = 0  # ids this service never gives: counted, not stored

    def add(self, label_id: object, label: Any, label_time: str | None = None) -> None:
        if not valid_id(label_id):
            self.unknown += 1
            return
        if label_id in self.labels:
            self.duplicates += 1
            del self.labels[label_id]  # re-inserted last: the store keeps arrival order
        self.labels[label_id] = (label, label_time)

    def summary(self) -> dict[str, int]:
        return {"accepted": len(self.labels), "duplicates": self.duplicates, "unknown_ids": self.unknown}


def _iso_now() -> str:
    return datetime.now(UTC).isoformat()


def encode(batch: Batch, source: str, received: str | None = None) -> bytes:
    received = received or _iso_now()
    lines = []
    for label_id, (label, label_time) in batch.labels.items():
        record = {"time": received, "id": label_id, "label": label, "source": source}
        if label_time is not None:
            record["label_time"] = label_time
        lines.append(json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n")
    return "".join(lines).encode("utf-8")


def _last_byte(path: Path, size: int) -> bytes:
    # The append descriptor is write-only; the same regular file (open_append refused anything else) read here.
    with open_regular(path) as handle:
        handle.seek(size - 1)
        return handle.read(1)


def append_labels(path: Path, batch: Batch, source: str, within: str | Path | None = None) -> int:
    """Append the batch's labels to the store at `path` in one locked write (whole, or raises); returns bytes written."""
    data = encode(batch, source)
    if not data:
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = open_append(path, within)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # the service and the sensor append to the same file
        size = os.fstat(fd).st_size
        if size and _last_byte(path, size) != b"\n":
            data = _TORN_LINE_FIX + data  # a crash tore the last line: never glue the first label onto it
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
        return len(data)
    finally:
        os.close(fd)  # releases the lock


@dataclass
class Stored:
    """The store, read: per id the last label (file order), and what was skipped."""

    labels: dict[str, dict[str, Any]] = field(default_factory=dict)  # id → {"label", "time", "label_time", "source"}
    lines: int = 0
    duplicates: int = 0
    bad_lines: int = 0


def read_labels(path: Path) -> Stored:
    """Every label in the store at `path` (missing: none); last wins per id, torn or foreign lines counted."""
    stored = Stored()
    try:
        handle = open_regular(path)
    except FileNotFoundError:
        return stored
    except OSError as exc:
        raise ValueError(
            f"{path}: the labels store cannot be read ({exc}). Fix: make it a regular file written by mlgraph"
        ) from None
    with handle:
        for line in handle:
            if not line.strip():
                continue
            stored.lines += 1
            if not line.endswith(b"\n"):
                stored.bad_lines += 1  # still being written, or torn by a crash
                continue
            try:
                record = json.loads(line)
                label_id = record["id"]
                if "label" not in record:  # not a label line (a foreign file at the store's name)
                    raise KeyError("label")
            except (ValueError, KeyError, TypeError):
                stored.bad_lines += 1
                continue
            if not valid_id(label_id):
                stored.bad_lines += 1
                continue
            if label_id in stored.labels:
                stored.duplicates += 1
            stored.labels[label_id] = record
    return stored


def store_version(path: Path) -> str | None:
    """Size and modification time of the store: changes whenever labels were appended (None: no store)."""
    try:
        info = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    return f"{info.st_size}-{info.st_mtime_ns}"


def feedback_batch(items: Iterable[tuple[object, Any, str | None]]) -> Batch:
    batch = Batch()
    for label_id, label, label_time in items:
        batch.add(label_id, label, label_time)
    return batch
