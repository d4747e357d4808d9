"""The prediction log's contract: one JSON object per line, and how rotated files are named (one home).

The service writes it (serving/); drift, the observed `prediction_log` asset and the dashboard read it.
A record is one prediction; a batch request writes one record per row, sharing the request id:

    {"time": "2026-11-30T16:02:57.123456+00:00", "request_id": "…", "row": 0, "model_version": "3",
     "inputs": {"feature": value, …}, "output": {"prediction": …, "probability": …}}

`output` holds what the response returned for that row: `prediction` always; `probability` for a
binary classifier (the positive class), `probabilities` (class → share) for multiclass.

The current file is `serving/{experiment}/prediction_log.jsonl`; when it passes its size limit it is
renamed to `prediction_log.<UTC yyyymmddTHHMMSSffffff>.jsonl` beside it, so sorting the rotated names
sorts them by age and the current file is always the newest.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
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


def rotated_name(current: Path, when: datetime | None = None) -> Path:
    """The name `current` takes when it is rotated at `when` (UTC now by default)."""
    stamp = (when or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%dT%H%M%S%f")
    return current.with_name(f"{current.stem}.{stamp}.jsonl")


def log_files(current: Path) -> list[Path]:
    """Every file of the log, oldest first: the rotated files by their stamp, then the current one."""
    rotated = []
    if current.parent.is_dir():
        for path in current.parent.iterdir():
            match = _ROTATED.match(path.name)
            if match and match["stem"] == current.stem and path.is_file():
                rotated.append(path)
    files = sorted(rotated, key=lambda p: p.name)
    if current.is_file():
        files.append(current)
    return files
