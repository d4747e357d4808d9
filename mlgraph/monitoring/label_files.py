"""Labels files other machines drop into `serving/{experiment}/labels/`: read, validated, ingested, put aside.

A file is CSV or parquet with a `request_id` column (or `id`), a `label` column and optionally `time`
(when the label was established). It is read bounded (`MAX_FILE_BYTES`, regular files only, inside the
drive: mlgraph.core.untrusted.read_regular_file) and validated whole before anything is stored: a label
of the wrong type (labels.label_problem), a missing column or an unreadable file rejects the file with a
reason naming the file, the column and the first bad rows; nothing of it is stored. Duplicate ids (last
row wins) and ids the service never gives are counted, never fatal.

Once handled, a file leaves the inbox so it is never read twice: an ingested one moves to `processed/`,
a rejected one to `rejected/` with `<name>.reason.txt` beside it (both renames in the same directory
tree). A file is only picked up after it stopped changing for `SETTLE_SECONDS`: a copy still arriving is
not rejected as truncated (writers should still write elsewhere and rename in). Ingesting then moving is
not atomic: a crash between the two ingests the file again on the next tick, which only adds duplicates
(the same labels; last wins).
"""

from __future__ import annotations

import io
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlgraph.core.atomic import atomic_write_text
from mlgraph.core.untrusted import Unusable, printable, read_regular_file
from mlgraph.monitoring.labels import Batch, label_problem

MAX_FILE_BYTES = 64 << 20
SETTLE_SECONDS = 5.0
SUFFIXES = (".csv", ".parquet")
PROCESSED, REJECTED = "processed", "rejected"
ID_COLUMNS = ("request_id", "id")
MAX_PROBLEMS_SHOWN = 5


class Rejected(ValueError):
    """The file cannot be ingested; the message names the file, what is wrong and the fix."""


@dataclass(frozen=True)
class Ready:
    path: Path
    size: int


def pending_files(inbox: Path, settle: float = SETTLE_SECONDS, now: float | None = None) -> list[Ready]:
    """The regular .csv/.parquet files directly in `inbox` that stopped changing `settle` seconds ago, by name."""
    now = time.time() if now is None else now
    ready = []
    try:
        entries = sorted(os.scandir(inbox), key=lambda e: e.name)
    except FileNotFoundError:
        return []
    for entry in entries:
        if not entry.name.endswith(SUFFIXES) or entry.name.startswith("."):
            continue
        info = entry.stat(follow_symlinks=False)
        if stat.S_ISLNK(info.st_mode) or not stat.S_ISREG(info.st_mode):
            continue  # a link or FIFO is not a labels file; moved aside by `reject` (see odd_entries)
        if now - info.st_mtime >= settle:
            ready.append(Ready(Path(entry.path), info.st_size))
    return ready


def odd_entries(inbox: Path) -> list[Path]:
    """Links, FIFOs and other non-regular entries with a labels file's name (rejected without being opened)."""
    odd = []
    try:
        for entry in os.scandir(inbox):
            if entry.name.endswith(SUFFIXES) and not entry.is_file(follow_symlinks=False):
                odd.append(Path(entry.path))
    except FileNotFoundError:
        pass
    return sorted(odd)


def _table(path: Path, data: bytes):
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    try:
        if path.suffix == ".parquet":
            return pq.read_table(pa.BufferReader(data))
        # Empty cells are nulls in every column type (ARCHITECTURE: pyarrow keeps '' otherwise).
        return pacsv.read_csv(io.BytesIO(data), convert_options=pacsv.ConvertOptions(strings_can_be_null=True))
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise Rejected(
            f"{path.name}: not a readable {path.suffix[1:]} file ({printable(str(exc))[:200]}). "
            "Fix: write it whole (then rename it into labels/) with columns request_id, label[, time]"
        ) from None


def _plain(value: Any) -> Any:
    item = getattr(value, "item", None)
    return item() if callable(item) else value


def read_labels_file(path: Path, task: str, classes: tuple[Any, ...] | None, within: Path | None) -> Batch:
    """The file's labels as one batch (last row per id wins), or Rejected saying why none is stored."""
    try:
        data = read_regular_file(path, MAX_FILE_BYTES, within)
    except Unusable as exc:
        raise Rejected(f"{path.name}: {exc}") from None
    table = _table(path, data)
    names = table.column_names
    id_column = next((c for c in ID_COLUMNS if c in names), None)
    if id_column is None or "label" not in names:
        raise Rejected(
            f"{path.name}: columns {names[:10]} lack {'request_id' if id_column is None else 'label'}. "
            "Fix: name the columns request_id, label and (optionally) time"
        )
    ids = table.column(id_column).to_pylist()
    labels = [_plain(v) for v in table.column("label").to_pylist()]
    times = table.column("time").to_pylist() if "time" in names else [None] * len(ids)
    problems = []
    for row, label in enumerate(labels):
        if (problem := label_problem(label, task, classes)) is not None:
            problems.append(f"row {row + 1}: {problem}")
    if problems:
        shown = "; ".join(problems[:MAX_PROBLEMS_SHOWN])
        more = f" (and {len(problems) - MAX_PROBLEMS_SHOWN} more)" if len(problems) > MAX_PROBLEMS_SHOWN else ""
        raise Rejected(
            f"{path.name}: column 'label': {len(problems)} wrong label(s): {shown}{more}. "
            f"Fix: give each row a label of the {task} target's type"
        )
    batch = Batch()
    for label_id, label, when in zip(ids, labels, times, strict=True):
        label_id = str(_plain(label_id)) if isinstance(_plain(label_id), int) else label_id
        batch.add(label_id, label, None if when is None else str(when))
    return batch


def _aside(path: Path, folder: str) -> Path:
    target_dir = path.parent / folder
    target_dir.mkdir(exist_ok=True)
    target = target_dir / path.name
    if target.exists() or target.is_symlink():  # the same name dropped again: keep both
        target = target_dir / f"{path.stem}.{time.time_ns()}{path.suffix}"
    os.rename(path, target)
    return target


def mark_processed(path: Path) -> Path:
    return _aside(path, PROCESSED)


def reject(path: Path, reason: str) -> Path:
    """Move the file (or link, or FIFO: renamed, never opened) to rejected/ with its reason beside it."""
    target = _aside(path, REJECTED)
    atomic_write_text(target.with_name(target.name + ".reason.txt"), reason + "\n")
    return target


def known_classes(drive: Any, config: Any) -> tuple[Any, ...] | None:
    """The classes a classifier's labels must be one of: the champion's (multiclass pointer), else the train
    split's target values, sorted (mlgraph.training.labels.target_classes' order); None for other tasks."""
    if config.task != "classification":
        return None
    from mlgraph.training.promotion import PromotionStore

    pointer = PromotionStore(drive.promotion_dir(config.config_hash)).current()
    if pointer and pointer.get("classes"):
        return tuple(pointer["classes"])
    import pyarrow.parquet as pq

    path = drive.dataset_path(config.name, "train")
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing, so labels files for {config.name!r} cannot be checked against the target's "
            "classes. Fix: materialize train_test_split first"
        )
    values = pq.read_table(path, columns=[config.target]).column(0).to_pylist()
    return tuple(sorted({v for v in values if v is not None}))
