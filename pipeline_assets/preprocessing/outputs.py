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

from pipeline_assets.preprocessing.engine import Fit, RunResult, operator_profile_rows
from core.atomic import atomic_write_json, atomic_write_text

FEATURES = "features.parquet"
FIT = "fit.json"
SUMMARY = "summary.json"
CHUNKS = "streaming_chunks.jsonl"
PROFILE = "operator_profile.csv"
PROFILE_COLUMNS = [
    "chunk_id",
    "preprocess_s",
    "feature_engineering_s",
    "feature_selection_s",
    "encode_scale_s",
    "estimated_input_bandwidth_mb_s",
    "input_bytes",
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
    records = [{**extra, **r} for r in result.records]
    summary = {**extra, **result.summary()}
    if result.mode == "batch":
        summary["record"] = records[0]  # one "chunk": the whole table
    paths = {
        "fit": atomic_write_json(directory / FIT, result.fit.to_json()),
        "summary": atomic_write_json(directory / SUMMARY, summary),
    }
    if result.mode == "streaming":
        paths["chunks"] = atomic_write_text(directory / CHUNKS, jsonl_text(records))
        paths["profile"] = atomic_write_text(
            directory / PROFILE, csv_text(operator_profile_rows(result.records), PROFILE_COLUMNS)
        )
    return paths


def read_fit(directory: Path) -> Fit:
    return Fit.from_json(json.loads((directory / FIT).read_text()))


def read_summary(directory: Path) -> dict[str, Any]:
    return json.loads((directory / SUMMARY).read_text())


def read_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))
