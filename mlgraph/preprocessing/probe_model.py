"""The probe model: a small, fast model per task that tells whether a constraint hurt the features.

regression: Ridge; classification: LogisticRegression; forecasting: Ridge on the target's lags,
the previous step's features (known at forecast time) and the current step's calendar features.
It is trained under the constraint's compute cap; the sweep compares its metrics across constraints.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from mlgraph.core.constraints import Constraint
from mlgraph.preprocessing.compute import compute_cap

MAX_LAGS = 24

# The column of constraint_experiment.csv that the trade-off plots call "accuracy", per task.
ACCURACY_COLUMN = {
    "regression": "model_accuracy_r2",
    "forecasting": "model_accuracy_r2",
    "classification": "model_roc_auc",
}
ACCURACY_LABEL = {
    "regression": "Model accuracy (R²)",
    "forecasting": "Model accuracy (R²)",
    "classification": "Model accuracy (ROC AUC)",
}
METRIC_COLUMNS = {
    "regression": ("model_accuracy_r2", "model_rmse", "model_mae"),
    "forecasting": ("model_accuracy_r2", "model_rmse", "model_mae"),
    "classification": ("model_accuracy", "model_roc_auc", "model_f1"),
}


@dataclass(frozen=True)
class ProbeResult:
    model: str
    metrics: dict[str, float]
    training_time_s: float
    train_rows: int
    test_rows: int
    threads: int
    params: dict[str, Any] = field(default_factory=dict)


def _matrix(table: pa.Table, target: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    names = [n for n in table.column_names if n != target]
    x = np.empty((table.num_rows, len(names)))
    for j, name in enumerate(names):
        x[:, j] = table[name].to_numpy()
    return x, table[target].to_numpy(zero_copy_only=False), names


def _lagged(
    x: np.ndarray, y: np.ndarray, names: list[str], lags: int, calendar_prefix: str | None
) -> tuple[np.ndarray, np.ndarray]:
    """Rows t ≥ lags: y[t-1..t-lags], x[t-1], calendar features at t (known in advance)."""
    n = len(y)
    calendar = [j for j, name in enumerate(names) if calendar_prefix and name.startswith(calendar_prefix)]
    parts = [np.column_stack([y[lags - k : n - k] for k in range(1, lags + 1)]), x[lags - 1 : n - 1]]
    if calendar:
        parts.append(x[lags:, calendar])
    return np.hstack(parts), y[lags:]


def _regression_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    return {
        "model_accuracy_r2": float(r2_score(y, pred)),
        "model_rmse": math.sqrt(float(mean_squared_error(y, pred))),
        "model_mae": float(mean_absolute_error(y, pred)),
    }


def train_probe(
    task: str,
    train: pa.Table,
    test: pa.Table,
    target: str,
    compute_limit: float = 1.0,
    time_column: str | None = None,
    window: int = MAX_LAGS,
    seed: int = 0,
) -> ProbeResult:
    """Fit the task's probe model on `train` features and score it on `test` features."""
    from sklearn.linear_model import LogisticRegression, Ridge

    x_train, y_train, names = _matrix(train, target)
    x_test, y_test, _ = _matrix(test, target)
    if len(y_train) == 0 or len(y_test) == 0:
        raise ValueError(f"probe model needs rows: {len(y_train)} train, {len(y_test)} test")
    with compute_cap(compute_limit) as threads:
        if task == "classification":
            model = LogisticRegression(max_iter=1000, C=1.0, random_state=seed)
            start = time.perf_counter()
            model.fit(x_train, y_train)
            training_time = time.perf_counter() - start
            metrics = _classification_metrics(model, x_test, y_test)
            return ProbeResult(
                "logistic_regression",
                metrics,
                training_time,
                len(y_train),
                len(y_test),
                threads,
                {"C": 1.0, "max_iter": 1000},
            )
        if task == "forecasting":
            lags = max(1, min(window, MAX_LAGS, len(y_train) - 1))
            prefix = f"{time_column}_" if time_column else None
            x_lag, y_lag = _lagged(x_train, y_train.astype(np.float64), names, lags, prefix)
            # The test window's first lags come from the end of the train split (it is chronological).
            x_all = np.vstack([x_train[-lags:], x_test])
            y_all = np.concatenate([y_train[-lags:], y_test]).astype(np.float64)
            x_eval, y_eval = _lagged(x_all, y_all, names, lags, prefix)
            model = Ridge(alpha=1.0)
            start = time.perf_counter()
            model.fit(x_lag, y_lag)
            training_time = time.perf_counter() - start
            metrics = _regression_metrics(y_eval, model.predict(x_eval))
            return ProbeResult(
                "ridge_lags", metrics, training_time, len(y_lag), len(y_eval), threads, {"alpha": 1.0, "lags": lags}
            )
        model = Ridge(alpha=1.0)
        start = time.perf_counter()
        model.fit(x_train, y_train)
        training_time = time.perf_counter() - start
        metrics = _regression_metrics(y_test, model.predict(x_test))
        return ProbeResult("ridge", metrics, training_time, len(y_train), len(y_test), threads, {"alpha": 1.0})


def _classification_metrics(model: Any, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    pred = model.predict(x)
    proba = model.predict_proba(x)
    classes = list(model.classes_)
    present = set(np.unique(y).tolist())
    if len(classes) == 2:
        auc = float(roc_auc_score(y, proba[:, 1])) if len(present) == 2 else float("nan")
        f1 = float(f1_score(y, pred, pos_label=classes[1], zero_division=0))
    else:
        auc = float(roc_auc_score(y, proba, multi_class="ovr", labels=classes)) if len(present) > 1 else float("nan")
        f1 = float(f1_score(y, pred, average="macro", zero_division=0))
    return {"model_accuracy": float(accuracy_score(y, pred)), "model_roc_auc": auc, "model_f1": f1}


def constraint_run_row(
    experiment: str,
    constraint_key: str,
    task: str,
    constraint: Constraint,
    summary: Mapping[str, Any],
    result: ProbeResult,
) -> dict[str, Any]:
    """constraint_run.json: the constraint, its streaming run's summary and the probe model's scores."""
    return {
        "experiment": experiment,
        "constraint": constraint_key,
        "task": task,
        "chunk_size": constraint.chunk_size,
        "memory_limit_mb": constraint.memory_limit_mb,
        "compute_limit": constraint.compute_limit,
        "preprocessing_latency_s": summary["latency_s"],
        "peak_memory_mb": summary["peak_memory_mb"],
        "training_time_s": result.training_time_s,
        **result.metrics,
        "probe_model": result.model,
        "probe_params": result.params,
        "train_rows": result.train_rows,
        "test_rows": result.test_rows,
        "threads": result.threads,
        "chunks": summary["chunks"],
        "attempts_over_limit": summary["attempts_over_limit"],
        "resumed_chunks": summary["resumed_chunks"],
    }
