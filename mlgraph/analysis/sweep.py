"""The constraint sweep table: one row per constraint partition, plus the experiment-level chunk reports."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mlgraph.core.drive import OPERATOR_PROFILE_CSV, STREAMING_CHUNKS_JSONL
from mlgraph.core.warehouse import replace_rows
from mlgraph.preprocessing import outputs
from mlgraph.preprocessing.probe_model import METRIC_COLUMNS

# The design document's columns first (metrics per task), then what helps to read them.
BASE_COLUMNS = [
    "chunk_size",
    "memory_limit_mb",
    "compute_limit",
    "preprocessing_latency_s",
    "peak_memory_mb",
    "training_time_s",
]
EXTRA_COLUMNS = [
    "constraint",
    "probe_model",
    "threads",
    "train_rows",
    "test_rows",
    "chunks",
    "attempts_over_limit",
    "resumed_chunks",
]
ALL_METRICS = ["model_accuracy_r2", "model_rmse", "model_mae", "model_accuracy", "model_roc_auc", "model_f1"]
WAREHOUSE_TABLE = "constraint_experiment"
WAREHOUSE_COLUMNS = {
    "experiment": "VARCHAR",
    "constraint": "VARCHAR",
    "task": "VARCHAR",
    "chunk_size": "BIGINT",
    "memory_limit_mb": "BIGINT",
    "compute_limit": "DOUBLE",
    "preprocessing_latency_s": "DOUBLE",
    "peak_memory_mb": "DOUBLE",
    "training_time_s": "DOUBLE",
    **dict.fromkeys(ALL_METRICS, "DOUBLE"),
    "probe_model": "VARCHAR",
    "threads": "BIGINT",
    "train_rows": "BIGINT",
    "test_rows": "BIGINT",
    "chunks": "BIGINT",
    "attempts_over_limit": "BIGINT",
}


def columns_for(task: str) -> list[str]:
    return [*BASE_COLUMNS, *METRIC_COLUMNS[task], *EXTRA_COLUMNS]


def collect_runs(run_files: Mapping[str, Path]) -> tuple[list[dict[str, Any]], list[str]]:
    """constraint key → its constraint_run.json: the rows of those that exist, sorted by (chunk, memory,
    compute); the keys of the rest."""
    rows, missing = [], []
    for key, path in run_files.items():
        if path.exists():
            rows.append(json.loads(path.read_text()))
        else:
            missing.append(key)
    rows.sort(key=lambda r: (r["chunk_size"], r["memory_limit_mb"], r["compute_limit"]))
    return rows, sorted(missing)


def combined_chunk_records(constraint_dirs: Mapping[str, Path], keys: Sequence[str]) -> list[dict[str, Any]]:
    """Every constraint's chunk records in one list (each already carries its constraint key)."""
    records = []
    for key in keys:
        path = constraint_dirs[key] / STREAMING_CHUNKS_JSONL
        if path.exists():
            records.extend(outputs.read_records(path))
    return records


def combined_profile_rows(constraint_dirs: Mapping[str, Path], keys: Sequence[str]) -> list[dict[str, Any]]:
    rows = []
    for key in keys:
        path = constraint_dirs[key] / OPERATOR_PROFILE_CSV
        if path.exists():
            rows.extend({"constraint": key, **row} for row in outputs.read_csv_rows(path))
    return rows


def replace_in_warehouse(connection: Any, experiment: str, rows: Sequence[Mapping[str, Any]]) -> int:
    """Replace this experiment's rows of the warehouse table in one transaction (idempotent)."""
    return replace_rows(connection, WAREHOUSE_TABLE, WAREHOUSE_COLUMNS, {"experiment": experiment}, rows)
