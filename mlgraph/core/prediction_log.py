"""The prediction log's contract: one JSON object per line, and how rotated files are named (one home).

The service writes it (serving/); drift, the observed `prediction_log` asset and the dashboard read it.
A record is one prediction; a batch request writes one record per row, sharing the request id:

    {"time": "2026-11-30T16:02:57.123456+00:00", "request_id": "…", "row": 0, "model_version": "3",
     "inputs": {"feature": value, …}, "output": {"prediction": …, "probability": …}}

Prediction ids (delayed labels, mlgraph/monitoring/labels.py): a client gets back `request_id` from
/predict and `<request_id>-<row>` per row from /batch_predict; both are derived from a record's
`request_id` and `row`, so no field was added and logs written before ids existed join as they are.

`output` holds what the response returned for that row: `prediction` always; `probability` for a
binary classifier (the positive class), `probabilities` (class → share) for multiclass.

The current file is `serving/{experiment}/prediction_log.jsonl`; when it passes its size limit it is
renamed to `prediction_log.<UTC yyyymmddTHHMMSSffffff>.jsonl` beside it, so sorting the rotated names
sorts them by age and the current file is always the newest.

Only regular files are log files: a symlink, FIFO or directory named like one is neither listed nor
opened (readers open them with mlgraph.core.untrusted.open_regular: no link followed, no FIFO blocked on).
Rotated files are kept by size and age (`prune_rotated`): by default at most `DEFAULT_RETENTION_BYTES`
(1 GiB) of them, none older than `DEFAULT_RETENTION_DAYS` (30 days) by its rotation stamp, per experiment.
"""

from __future__ import annotations

import os
import re
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

# Record fields, spelled once.
TIME = "time"
REQUEST_ID = "request_id"
ROW = "row"
MODEL_VERSION = "model_version"
INPUTS = "inputs"
OUTPUT = "output"
PREDICTION = "prediction"
PROBABILITY = "probability"
PROBABILITIES = "probabilities"
RECORD_FIELDS = (TIME, REQUEST_ID, ROW, MODEL_VERSION, INPUTS, OUTPUT)

_ROTATED = re.compile(r"^(?P<stem>.+)\.(?P<stamp>\d{8}T\d{12})\.jsonl$")
_STAMP = "%Y%m%dT%H%M%S%f"

# Rotated files kept per experiment: the newest up to this many bytes in all, none rotated longer ago.
DEFAULT_RETENTION_BYTES = 1 << 30
DEFAULT_RETENTION_DAYS = 30.0


def rotated_name(current: Path, when: datetime | None = None) -> Path:
    """The name `current` takes when it is rotated at `when` (UTC now by default)."""
    stamp = (when or datetime.now(UTC)).astimezone(UTC).strftime(_STAMP)
    return current.with_name(f"{current.stem}.{stamp}.jsonl")


def rotated_at(path: Path) -> datetime | None:
    """When the rotated file `path` was rotated (its name's stamp), or None for any other name."""
    match = _ROTATED.match(path.name)
    try:
        return datetime.strptime(match["stamp"], _STAMP).replace(tzinfo=UTC) if match else None
    except ValueError:  # digits that are no date (month 13): not a name the writer gives
        return None


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)  # lstat: a symlink is not a log file, whatever it points at
    except OSError:
        return False


def rotated_files(current: Path) -> list[Path]:
    """The rotated files of the log whose current file is `current`, oldest first (regular files only)."""
    rotated = []
    if current.parent.is_dir():
        for path in current.parent.iterdir():
            match = _ROTATED.match(path.name)
            if match and match["stem"] == current.stem and _is_regular(path):
                rotated.append(path)
    return sorted(rotated, key=lambda p: p.name)


def log_files(current: Path) -> list[Path]:
    """Every file of the log, oldest first: the rotated files by their stamp, then the current one."""
    files = rotated_files(current)
    if _is_regular(current):
        files.append(current)
    return files


def prune_rotated(
    current: Path,
    keep_bytes: int | None = DEFAULT_RETENTION_BYTES,
    keep_days: float | None = DEFAULT_RETENTION_DAYS,
    now: datetime | None = None,
) -> list[Path]:
    """Delete the rotated files of `current`'s log past retention; returns those deleted, oldest first.

    A file goes when it was rotated more than `keep_days` ago, or when it and the newer rotated files
    together pass `keep_bytes` (the current file is never deleted). None keeps without that limit. A file
    that cannot be deleted raises OSError after the others were tried.
    """
    now = now or datetime.now(UTC)
    oldest = now - timedelta(days=keep_days) if keep_days is not None else None
    doomed, kept_bytes, failure = [], 0, None
    for path in reversed(rotated_files(current)):  # newest first: the newest are kept
        try:
            size = os.lstat(path).st_size
        except FileNotFoundError:
            continue
        when = rotated_at(path)
        too_old = oldest is not None and when is not None and when < oldest
        if too_old or (keep_bytes is not None and kept_bytes + size > keep_bytes):
            doomed.append(path)
        else:
            kept_bytes += size
    deleted = []
    for path in reversed(doomed):
        try:
            path.unlink()
            deleted.append(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            failure = failure or exc
    if failure is not None:
        raise failure
    return deleted
