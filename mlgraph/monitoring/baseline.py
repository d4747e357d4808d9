"""The drift baseline: the champion's training distribution, saved beside the model (design document 001, stage 5).

Per numeric feature (numeric, integer and boolean columns) the mean, standard deviation, quantiles,
missing share and a quantile sketch (up to 1,001 quantiles at evenly spaced probabilities: what the KS,
Wasserstein and PSI tests of mlgraph/monitoring/distribution.py compare a window with; never the rows); per categorical feature the category shares (the most frequent `MAX_CATEGORIES`,
the rest pooled as `other_share`); for the target the positive rate (binary), the class shares
(multiclass) or mean and standard deviation (regression, forecasting). It records the champion
version, run and config hash it was computed for, so a report knows when it is out of date.

Version 2 added the sketch. A version-1 baseline still loads: its report gives the sketch's tests as
"not available (baseline predates it; rematerialize drift_baseline)" and decides on the others.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlgraph.core.atomic import atomic_write_json
from mlgraph.core.drive import DrivePaths
from mlgraph.core.experiment import ExperimentConfig
from mlgraph.core.untrusted import read_regular_file
from mlgraph.monitoring.distribution import SKETCH_POINTS, quantile_sketch, sketch_points

BASELINE_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: no quantile sketch (the distribution tests are then not available)
# A baseline holds per-feature summaries: ~20 KB of sketch per numeric feature, so 64 MiB is ~3,000 features.
BASELINE_MAX_BYTES = 64 << 20
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
MAX_CATEGORIES = 200
NUMERIC_TYPES = {"numeric", "integer", "boolean"}


def feature_kinds(frame: pd.DataFrame, config: ExperimentConfig) -> tuple[list[str], list[str]]:
    """(numeric, categorical) feature columns: declared types first, else the column's dtype; datetimes are left out."""
    skip = {config.target, config.time_column, *config.exclude_columns}
    numeric, categorical = [], []
    for name in frame.columns:
        if name in skip:
            continue
        declared = config.columns.get(name)
        dtype = frame[name].dtype
        if declared == "datetime" or (declared is None and pd.api.types.is_datetime64_any_dtype(dtype)):
            continue
        if declared in NUMERIC_TYPES or (
            declared is None and (pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype))
        ):
            numeric.append(str(name))
        else:
            categorical.append(str(name))
    return numeric, categorical


def plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def label_key(value: Any) -> str:
    """A class label as the report compares it: 1, 1.0 and "1" are the same class; True is "true"."""
    if isinstance(value, bool | np.bool_):
        return str(bool(value)).lower()
    if isinstance(value, int | float | np.integer | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value)


def numeric_stats(values: pd.Series, sketch_size: int = SKETCH_POINTS) -> dict[str, Any]:
    finite = pd.to_numeric(values, errors="coerce").astype(np.float64)
    present = finite[np.isfinite(finite)]
    if present.empty:
        return {"count": 0, "mean": None, "std": None, "quantiles": {}, "missing_share": 1.0, "sketch": []}
    return {
        "count": int(len(present)),
        "mean": float(present.mean()),
        "std": float(present.std(ddof=0)),
        "quantiles": {str(q): float(v) for q, v in zip(QUANTILES, np.quantile(present, QUANTILES), strict=True)},
        "missing_share": float(1 - len(present) / len(values)) if len(values) else 0.0,
        "sketch": quantile_sketch(present.to_numpy(), sketch_size),
    }


def categorical_stats(values: pd.Series) -> dict[str, Any]:
    present = values.dropna().map(label_key)
    counts = present.value_counts()
    total = int(counts.sum())
    kept = counts.iloc[:MAX_CATEGORIES]
    return {
        "count": total,
        "frequencies": {str(k): float(v / total) for k, v in kept.items()} if total else {},
        "other_share": float(1 - kept.sum() / total) if total else 0.0,
        "missing_share": float(1 - total / len(values)) if len(values) else 0.0,
    }


def target_stats(target: pd.Series, task: str) -> dict[str, Any]:
    """What the model's predictions are compared with: class shares (binary: the positive rate) or the value's spread."""
    present = target.dropna()
    if task != "classification":
        values = present.astype(np.float64)
        return {"kind": "value", "mean": float(values.mean()), "std": float(values.std(ddof=0))}
    # Index 1 of the sorted classes is the positive label (mlgraph/training/labels.py).
    classes = sorted(pd.unique(present))
    shares = {label_key(c): float((present == c).mean()) for c in classes}
    if len(classes) == 2:
        positive = label_key(classes[1])
        return {"kind": "binary", "positive_label": positive, "positive_rate": shares[positive], "shares": shares}
    return {"kind": "multiclass", "shares": shares}


def compute_baseline(train: pd.DataFrame, config: ExperimentConfig, champion: Mapping[str, Any]) -> dict[str, Any]:
    """The baseline of `train` (the champion's training split) for the champion pointer `champion`."""
    numeric, categorical = feature_kinds(train, config)
    return {
        "baseline_version": BASELINE_VERSION,
        "experiment": config.name,
        "task": config.task,
        "config_hash": config.config_hash,
        "champion_version": str(champion.get("model_version", "")),
        "champion_run_id": str(champion.get("run_id", "")),
        "model_type": str(champion.get("model_type", "")),
        "model_name": str(champion.get("model_name") or champion.get("model_type", "")),
        "dataset_sha256": str(champion.get("dataset_sha256", "")),
        "computed_at": dt.datetime.now(dt.UTC).isoformat(),
        "rows": len(train),
        "numeric": {name: numeric_stats(train[name], sketch_points(len(numeric))) for name in numeric},
        "categorical": {name: categorical_stats(train[name]) for name in categorical},
        "target": target_stats(train[config.target], config.task),
    }


def write_baseline(drive: DrivePaths, experiment: str, baseline: Mapping[str, Any]) -> Path:
    return atomic_write_json(drive.drift_baseline_json(experiment), dict(baseline))


def read_baseline(drive: DrivePaths, experiment: str) -> dict[str, Any] | None:
    """The saved baseline, None when there is none yet; a corrupt file is an error naming it and the fix."""
    path = drive.drift_baseline_json(experiment)
    if not path.exists() and not path.is_symlink():
        return None
    try:
        # Read as untrusted: the drift sensor's tick and the service read it, and a FIFO must not hang them.
        data = json.loads(read_regular_file(path, BASELINE_MAX_BYTES))
    except (ValueError, UnicodeDecodeError) as exc:  # Unusable is a ValueError
        raise ValueError(
            f"{path}: not a drift baseline ({exc}). Fix: materialize drift_baseline for {experiment}."
        ) from None
    if not isinstance(data, dict) or data.get("baseline_version") not in READABLE_VERSIONS:
        raise ValueError(
            f"{path}: not a drift baseline of version {' or '.join(map(str, READABLE_VERSIONS))}. "
            f"Fix: materialize drift_baseline for {experiment}."
        )
    return data
