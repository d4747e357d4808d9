"""The evaluation parquet contract shared by trained candidates and external checkpoints.

Layout: evaluation/{experiment}/metrics/dataset={split}/metric={name}/{source}.parquet, one row per
model, columns METRIC_COLUMNS (dataset and metric are also hive partition keys, so DuckDB's
`hive_partitioning` and plain parquet readers see the same values). A metric name with other characters
than letters, digits, '_', '.', '-' (a per-class metric such as `recall[setosa]`) is percent-encoded in
its directory (`metric=recall%5Bsetosa%5D`), which DuckDB and pyarrow decode back. Predictions go to
evaluation/{experiment}/predictions/{split}.parquet (trained candidates) or {split}-{source}.parquet.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pyarrow as pa
import pyarrow.parquet as pq

from mlgraph.core.atomic import atomic_path

METRIC_COLUMNS = ("experiment", "model", "dataset", "metric", "value", "config_hash", "timestamp")
METRIC_SCHEMA = pa.schema(
    [
        ("experiment", pa.string()),
        ("model", pa.string()),
        ("dataset", pa.string()),
        ("metric", pa.string()),
        ("value", pa.float64()),
        ("config_hash", pa.string()),
        ("timestamp", pa.timestamp("us", tz="UTC")),
    ]
)
_SAFE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
_ENCODED = re.compile(r"^[A-Za-z0-9_.~%-]{1,240}$")


def _safe(kind: str, value: str) -> str:
    if not _SAFE.match(value):
        raise ValueError(f"{kind} {value!r} cannot be a path component: use letters, digits, '_', '.', '-'")
    return value


def _metric_component(metric: str) -> str:
    """A metric name as a hive partition value: unchanged when safe, else percent-encoded."""
    encoded = quote(metric, safe="")
    if not _ENCODED.match(encoded):
        raise ValueError(f"metric {metric!r} cannot be a path component: empty, or over 240 characters once encoded")
    return encoded


def write_metrics(evaluation_dir: Path, records: Iterable[Mapping[str, Any]], source: str) -> list[Path]:
    """Write metric rows, one file per (dataset, metric) for this `source` (e.g. "candidates").

    Rewriting the same source replaces its files atomically; other sources are untouched.
    """
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for rec in records:
        missing = [c for c in METRIC_COLUMNS if c not in rec]
        if missing:
            raise ValueError(f"metric record {dict(rec)} lacks {missing}")
        groups.setdefault((rec["dataset"], rec["metric"]), []).append(rec)
    written = []
    for (dataset, metric), rows in sorted(groups.items()):
        directory = (
            metrics_dir(evaluation_dir) / f"dataset={_safe('dataset', dataset)}" / f"metric={_metric_component(metric)}"
        )
        table = pa.Table.from_pylist(
            [{c: r[c] for c in METRIC_COLUMNS} for r in sorted(rows, key=lambda r: r["model"])],
            schema=METRIC_SCHEMA,
        )
        path = directory / f"{_safe('source', source)}.parquet"
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
        written.append(path)
    return written


def metrics_dir(evaluation_dir: Path) -> Path:
    return evaluation_dir / "metrics"


def metrics_glob(evaluation_dir: Path, dataset: str | None = None, source: str | None = None) -> str:
    """Every metric file of one experiment, or only those of one dataset and/or one source."""
    partition = f"dataset={_safe('dataset', dataset)}" if dataset else "*"
    name = f"{_safe('source', source)}.parquet" if source else "*.parquet"
    return str(metrics_dir(evaluation_dir) / partition / "*" / name)


def read_metrics_sql(evaluation_dir: Path) -> str:
    """A DuckDB relation over every metric file of one experiment."""
    return f"read_parquet('{metrics_glob(evaluation_dir)}', hive_partitioning = true, union_by_name = true)"
