"""Evaluate an external checkpoint on an experiment's test split, in the candidates' evaluation schema.

Each task is scored like the trained candidates (mlgraph/training/evaluation.py), so their rows and
predictions line up: regression by REGRESSION_METRICS on the values; binary classification by
CLASSIFICATION_METRICS on the positive class's probability (y_true and y_pred keep the target's own
values); a target with k > 2 classes by MULTICLASS_METRICS plus per-class precision, recall and F1,
with y_true and y_pred as class indices in sorted-class order and one `proba[<class>]` column per class.

Plain Python: no Dagster. The asset in assets.py wires it to the drive, the run and the signals.
"""

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mlgraph.core import metrics
from mlgraph.core.atomic import atomic_path
from mlgraph.core.drive import checkpoint_source
from mlgraph.core.signals import EvalComplete, EvalFailed, utc_now
from mlgraph.core.tracking import PARENT_TAG, Tracker
from mlgraph.core.untrusted import printable
from mlgraph.trainer.checkpoint import CheckpointError, LoadedCheckpoint, load_checkpoint, plain, predict
from mlgraph.training.labels import probability_columns

PREDICTION_SCHEMA = pa.schema(
    [
        ("row", pa.int64()),
        ("model", pa.string()),
        ("y_true", pa.float64()),
        ("y_pred", pa.float64()),
        ("y_score", pa.float64()),
    ]
)


def model_name(checkpoint_id: str) -> str:
    return f"checkpoint:{checkpoint_id}"


def source_name(checkpoint_id: str) -> str:
    """The evaluation_store source (file name) for one checkpoint's metric rows."""
    return checkpoint_source(checkpoint_id)


def compute_metrics(
    task: str,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    y_score: np.ndarray | None,
    threshold: float = 0.5,
    classes: list[Any] | None = None,
) -> dict[str, float]:
    """The trained candidates' metrics (mlgraph.core.metrics), so the rows compare like for like.

    Binary: `y_true` holds 0/1 (1 = the positive class) and `y_score` its probability. Multiclass: `y_true`
    holds class indices and `y_score` the (n, k) probabilities, columns in the order of `classes`.
    """
    if task == "regression":
        return metrics.regression_metrics(y_true, y_pred)
    if task == "classification" and y_score is not None and np.ndim(y_score) == 2:
        return metrics.multiclass_metrics(y_true, y_score, classes)
    if task == "classification":
        return metrics.classification_metrics(y_true, y_pred if y_score is None else y_score, threshold)
    raise CheckpointError(f"task {task!r} has no checkpoint metrics; use a regression or classification experiment")


def summary_metrics(values: Mapping[str, float]) -> dict[str, float]:
    """`values` without the per-class metrics: what a signal, run metadata and a glance need."""
    return {k: v for k, v in values.items() if metrics.split_per_class(k) is None}


@dataclass
class CheckpointEvaluation:
    checkpoint_id: str
    model: str
    task: str
    metrics: dict[str, float]
    predictions: pa.Table
    rows: int
    seconds: float
    metadata: dict[str, Any]
    # Classification: the classes, in the order of the class indices and proba columns (binary:
    # [negative, positive]); regression: None.
    classes: list[Any] | None = None

    @property
    def multiclass(self) -> bool:
        return self.classes is not None and len(self.classes) > 2


def _class_key(value: Any) -> Any:
    # 1, 1.0 and numpy's 1 name one class: a JSON round trip or a float target column may change the type.
    value = plain(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return str(value)


def sorted_class_order(classes: list[Any]) -> list[int]:
    """Output indices in sorted-class order, the built-in candidates' class-index order (training/labels.py)."""
    try:
        return sorted(range(len(classes)), key=lambda i: classes[i])
    except TypeError:  # labels of mixed types: keep the checkpoint's own order
        return list(range(len(classes)))


def encode_classes(values: pd.Series, classes: list[Any], where: str, fix_source: str) -> np.ndarray:
    """Class indices of `values` in `classes`; a CheckpointError for missing values or unknown classes."""
    if values.isna().any():
        raise CheckpointError(
            f"{where}: column {values.name!r} has {int(values.isna().sum())} missing value(s). Fix: clean the target."
        )
    index = {_class_key(c): i for i, c in enumerate(classes)}
    codes_of = {v: index.get(_class_key(v), -1) for v in pd.unique(values)}
    unknown = sorted(str(plain(v)) for v, code in codes_of.items() if code < 0)
    if unknown:
        raise CheckpointError(
            f"{where}: column {values.name!r} has value(s) {unknown[:10]} that are not among field 'classes' "
            f"{list(classes)[:20]} of {fix_source}. Fix: evaluate the checkpoint on the experiment it was "
            "trained for, or retrain it on a target with every class listed."
        )
    return values.map(codes_of).to_numpy(dtype=np.int64)


def _prediction_table(name: str, y_true: np.ndarray, y_pred: np.ndarray, y_score, extra: Mapping[str, np.ndarray]):
    n = len(y_true)
    columns = {
        "row": np.arange(n, dtype="int64"),
        "model": [name] * n,
        "y_true": y_true,
        "y_pred": y_pred,
        "y_score": y_score if y_score is not None else pa.nulls(n, pa.float64()),
        **extra,
    }
    schema = PREDICTION_SCHEMA
    for column in extra:
        schema = schema.append(pa.field(column, pa.float64()))
    return pa.Table.from_pydict(columns, schema=schema)


def _multiclass(
    checkpoint: LoadedCheckpoint, test: pd.DataFrame, target: str, test_path: Path, name: str
) -> tuple[pa.Table, dict[str, float], list[Any]]:
    """(predictions, metrics, classes) of a k-class checkpoint, in sorted-class order like the candidates'."""
    _, proba = predict(checkpoint, test, where=str(test_path))
    order = sorted_class_order(checkpoint.classes)
    classes = [checkpoint.classes[i] for i in order]
    proba = proba[:, order]
    y_true = encode_classes(test[target], classes, str(test_path), str(checkpoint.directory / "metadata.json"))
    # The label is the most probable class of these columns: the file and multiclass_metrics agree on ties.
    y_pred = proba.argmax(axis=1)
    extra = dict(zip(probability_columns(tuple(classes)), proba.T, strict=True))
    table = _prediction_table(name, y_true.astype("float64"), y_pred.astype("float64"), None, extra)
    return table, metrics.multiclass_metrics(y_true, proba, classes), classes


def evaluate_checkpoint(checkpoint_dir: Path, checkpoint_id: str, test_path: Path, target: str) -> CheckpointEvaluation:
    """Load the checkpoint, predict every test row, and score it; rows keep test.parquet's order."""
    start = time.perf_counter()
    checkpoint = load_checkpoint(checkpoint_dir)
    if checkpoint.target != target:
        raise CheckpointError(
            f"{checkpoint_dir / 'metadata.json'}: field 'target' is {checkpoint.target!r} but the experiment "
            f"predicts {target!r}. Fix: signal the checkpoint under the experiment it was trained for."
        )
    if not test_path.is_file():
        raise FileNotFoundError(
            f"{test_path}: test split missing. Fix: materialize train_test_split for this experiment."
        )
    test = pq.read_table(test_path).to_pandas()
    if target not in test.columns:
        raise CheckpointError(f"{test_path}: target column {target!r} missing. Fix: re-run train_test_split.")
    name = model_name(checkpoint_id)
    classes = checkpoint.classes
    if checkpoint.multiclass:
        predictions, values, classes = _multiclass(checkpoint, test, target, test_path, name)
    else:
        y_true = pd.to_numeric(test[target], errors="coerce").astype("float64").to_numpy()
        if np.isnan(y_true).any():
            raise CheckpointError(
                f"{test_path}: column {target!r} has missing or non-numeric values. Fix: clean the target."
            )
        y_pred, y_score = predict(checkpoint, test, where=str(test_path))
        predictions = _prediction_table(name, y_true, y_pred, y_score, {})
        scored = y_true
        if classes is not None:
            # classification_metrics counts 1 as the positive class: mark rows of classes[1] (the class
            # the checkpoint scores), whatever its value; a value of neither class would count as negative.
            encode_classes(test[target], classes, str(test_path), str(checkpoint.directory / "metadata.json"))
            scored = (y_true == float(classes[1])).astype("float64")
        threshold = float(checkpoint.metadata.get("threshold", 0.5))
        values = compute_metrics(checkpoint.task, scored, y_pred, y_score, threshold)
    return CheckpointEvaluation(
        checkpoint_id=checkpoint_id,
        model=name,
        task=checkpoint.task,
        metrics=values,
        predictions=predictions,
        rows=len(test),
        seconds=time.perf_counter() - start,
        metadata=checkpoint.metadata,
        classes=classes,
    )


def metric_records(
    evaluation: CheckpointEvaluation, experiment: str, config_hash: str, timestamp: datetime, dataset: str = "test"
) -> list[dict[str, Any]]:
    return [
        {
            "experiment": experiment,
            "model": evaluation.model,
            "dataset": dataset,
            "metric": metric,
            "value": value,
            "config_hash": config_hash,
            "timestamp": timestamp,
        }
        for metric, value in sorted(evaluation.metrics.items())
    ]


def write_predictions(table: pa.Table, path: Path) -> Path:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return path


def metric_gaps(
    task: str, values: Mapping[str, float | None], n_classes: int | None = None
) -> tuple[list[str], list[str]]:
    """(metrics of `task` that are missing, metrics whose value is not finite) among `values`.

    A target with `n_classes` > 2 needs MULTICLASS_METRICS and each per-class metric for every class;
    a per-class metric short of classes is reported as e.g. `f1[*] (2 of 3 classes)`.
    """
    missing = sorted(set(metrics.target_metrics(task, n_classes)) - set(values))
    if metrics.is_multiclass(task, n_classes):
        per_class: dict[str, int] = {}
        for name in values:
            parts = metrics.split_per_class(name)
            if parts is not None:
                per_class[parts[0]] = per_class.get(parts[0], 0) + 1
        for name in metrics.PER_CLASS_METRICS:
            if per_class.get(name, 0) < n_classes:
                missing.append(f"{name}[*] ({per_class.get(name, 0)} of {n_classes} classes)")
    non_finite = sorted(k for k, v in values.items() if v is None or not math.isfinite(v))
    return missing, non_finite


def log_to_mlflow(
    tracker: Tracker, result: CheckpointEvaluation, dagster_run_id: str, training_run_id: str | None = None
) -> str:
    """One finished MLflow run with the test metrics, nested under the trainer's run when it has one."""
    tags = {
        "mlgraph.dagster_run_id": dagster_run_id,
        "mlgraph.checkpoint_id": result.checkpoint_id,
        "mlgraph.kind": "checkpoint_evaluation",
    }
    if training_run_id:
        # Links the evaluation under the trainer's run in the MLflow UI.
        tags[PARENT_TAG] = training_run_id
    run_id = tracker.create_run(f"checkpoint-evaluation-{result.checkpoint_id}", tags)
    tracker.log(
        run_id,
        params={"test_rows": result.rows, **({"classes": len(result.classes)} if result.multiclass else {})},
        # Per-class names (`recall[a b]`) are not valid MLflow keys: `recall/a b`, as the candidates log them.
        metrics={f"test_{metrics.mlflow_metric_key(name)}": value for name, value in sorted(result.metrics.items())},
    )
    tracker.set_status(run_id, "FINISHED")
    return run_id


def completion_signal(
    result: CheckpointEvaluation,
    experiment: str,
    job_id: str,
    started: datetime,
    checkpoint_path: Path,
    dagster_run_id: str,
    mlflow_run_id: str,
    config_hash: str,
) -> EvalComplete:
    return EvalComplete(
        timestamp=utc_now(),
        experiment=experiment,
        job_id=job_id,
        status="complete",
        datasets_evaluated=["test"],
        # Summary metrics only: per-class names grow with the classes, and a signal stays small.
        metrics_summary=summary_metrics(result.metrics),
        eval_duration_seconds=round((utc_now() - started).total_seconds(), 3),
        checkpoint_id=result.checkpoint_id,
        checkpoint_path=str(checkpoint_path),
        model=result.model,
        dagster_run_id=dagster_run_id,
        mlflow_run_id=mlflow_run_id,
        config_hash=config_hash,
    )


def failure_signal(
    experiment: str,
    job_id: str,
    exc: BaseException,
    formatted_traceback: str,
    checkpoint_id: str | None,
    checkpoint_path: Path | None,
    dagster_run_id: str,
) -> EvalFailed:
    return EvalFailed(
        timestamp=utc_now(),
        experiment=experiment,
        job_id=job_id,
        error_type=type(exc).__name__,
        # Escaped: the readers refuse control characters in a signal, and this one must still be written.
        error_message=printable(str(exc) or type(exc).__name__, multiline=True)[:20_000],
        traceback=printable(formatted_traceback, multiline=True)[-20_000:],
        checkpoint_id=checkpoint_id,
        checkpoint_path=str(checkpoint_path) if checkpoint_path else None,
        dagster_run_id=dagster_run_id,
    )
