"""Evaluate an external checkpoint on an experiment's test split, in the candidates' evaluation schema.

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
from mlgraph.trainer.checkpoint import CheckpointError, load_checkpoint, predict

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
    task: str, y_true: np.ndarray, y_pred: np.ndarray, y_score: np.ndarray | None, threshold: float = 0.5
) -> dict[str, float]:
    """The trained candidates' metrics (mlgraph.core.metrics), so the rows compare like for like."""
    if task == "regression":
        return metrics.regression_metrics(y_true, y_pred)
    if task == "classification":
        return metrics.classification_metrics(y_true, y_pred if y_score is None else y_score, threshold)
    raise CheckpointError(f"task {task!r} has no checkpoint metrics; use a regression or classification experiment")


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
    y_true = pd.to_numeric(test[target], errors="coerce").astype("float64").to_numpy()
    if np.isnan(y_true).any():
        raise CheckpointError(
            f"{test_path}: column {target!r} has missing or non-numeric values. Fix: clean the target."
        )
    y_pred, y_score = predict(checkpoint, test, where=str(test_path))
    name = model_name(checkpoint_id)
    predictions = pa.Table.from_pydict(
        {
            "row": np.arange(len(test), dtype="int64"),
            "model": [name] * len(test),
            "y_true": y_true,
            "y_pred": y_pred,
            "y_score": y_score if y_score is not None else pa.nulls(len(test), pa.float64()),
        },
        schema=PREDICTION_SCHEMA,
    )
    return CheckpointEvaluation(
        checkpoint_id=checkpoint_id,
        model=name,
        task=checkpoint.task,
        metrics=compute_metrics(
            checkpoint.task, y_true, y_pred, y_score, float(checkpoint.metadata.get("threshold", 0.5))
        ),
        predictions=predictions,
        rows=len(test),
        seconds=time.perf_counter() - start,
        metadata=checkpoint.metadata,
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


def metric_gaps(task: str, values: Mapping[str, float | None]) -> tuple[list[str], list[str]]:
    """(metrics of `task` that are missing, metrics whose value is not finite) among `values`."""
    missing = sorted(set(metrics.task_metrics(task)) - set(values))
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
        params={"test_rows": result.rows},
        metrics={f"test_{name}": value for name, value in sorted(result.metrics.items())},
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
        metrics_summary=result.metrics,
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
