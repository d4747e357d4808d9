"""The files a preprocessing run leaves on the shared drive, written atomically, and their readers.

Per run directory (`constraints/{constraint}/` or `batch/`): features.parquet (written by the
engine), fit.json, summary.json, streaming_chunks.jsonl (one record per chunk attempt) and
operator_profile.csv (one row per accepted transform chunk).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mlgraph.core.atomic import atomic_write_json, atomic_write_text
from mlgraph.core.drive import FIT_JSON, OPERATOR_PROFILE_CSV, STREAMING_CHUNKS_JSONL, SUMMARY_JSON
from mlgraph.preprocessing.engine import RunResult
from mlgraph.preprocessing.fitting import Fit
from mlgraph.preprocessing.records import PROFILE_COLUMNS, operator_profile_rows

__all__ = [
    "PROFILE_COLUMNS",
    "csv_text",
    "jsonl_text",
    "read_csv_rows",
    "read_fit",
    "read_records",
    "read_summary",
    "write_run_outputs",
]


def csv_text(rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k) for k in columns})  # str(float) round-trips exactly
    return buffer.getvalue()


def jsonl_text(records: Iterable[Mapping[str, Any]]) -> str:
    return "".join(json.dumps(dict(r), sort_keys=True) + "\n" for r in records)


def write_run_outputs(directory: Path, result: RunResult, extra: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """fit.json and summary.json; for streaming runs also streaming_chunks.jsonl and operator_profile.csv."""
    extra = dict(extra or {})
    records = [{**extra, **r.to_json()} for r in result.records]
    summary = {**extra, **result.summary()}
    if result.mode == "batch":
        summary["record"] = records[0]  # one "chunk": the whole table, with the fields of a streaming one
    paths = {
        "fit": atomic_write_json(directory / FIT_JSON, result.fit.to_json()),
        "summary": atomic_write_json(directory / SUMMARY_JSON, summary),
    }
    if result.mode == "streaming":
        paths["chunks"] = atomic_write_text(directory / STREAMING_CHUNKS_JSONL, jsonl_text(records))
        paths["profile"] = atomic_write_text(
            directory / OPERATOR_PROFILE_CSV, csv_text(operator_profile_rows(result.records), PROFILE_COLUMNS)
        )
    return paths


def read_fit(directory: Path) -> Fit:
    return Fit.from_json(json.loads((directory / FIT_JSON).read_text()))


def read_summary(directory: Path) -> dict[str, Any]:
    return json.loads((directory / SUMMARY_JSON).read_text())


def read_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))
