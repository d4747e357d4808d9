"""Checks on checkpoint evaluation: the observed metric set and row counts next to what they must be."""

import math

import dagster as dg
import pyarrow.parquet as pq

from core import evaluation_store
from pipeline_assets.external import evaluation
from pipeline_assets.external.assets import checkpoint_evaluation
from pipeline_assets.training.metrics import TASK_METRICS
from resources.storage import SharedDrive
from core.signals import EVAL_COMPLETE, read_signal


@dg.asset_check(asset=checkpoint_evaluation)
def checkpoint_evaluation_metrics_complete(
    context: dg.AssetCheckExecutionContext, storage: SharedDrive
) -> dg.AssetCheckResult:
    """Every metric of the task is present and finite, and there is one prediction per test row."""
    import duckdb

    experiment = context.partition_key
    eval_dir = storage.evaluation_dir(experiment)
    done, _ = read_signal(eval_dir / EVAL_COMPLETE)
    with duckdb.connect() as con:
        rows = con.execute(
            f"SELECT metric, value FROM {evaluation_store.read_metrics_sql(eval_dir)} "
            "WHERE model = ? AND dataset = 'test'",
            [done.model],
        ).fetchall()
    values = dict(rows)
    task = "regression" if "r2" in values else "classification"
    missing = sorted(set(TASK_METRICS[task]) - set(values))
    non_finite = sorted(k for k, v in values.items() if v is None or not math.isfinite(v))
    test_rows = pq.read_metadata(storage.dataset_path(experiment, "test")).num_rows
    prediction_rows = pq.read_metadata(evaluation.predictions_path(eval_dir, done.checkpoint_id)).num_rows
    return dg.AssetCheckResult(
        passed=not missing and not non_finite and prediction_rows == test_rows,
        metadata={
            "model": done.model,
            "task": task,
            "missing_metrics": ", ".join(missing) or "none",
            "non_finite_metrics": ", ".join(non_finite) or "none",
            "prediction_rows": prediction_rows,
            "test_rows_required": test_rows,
        },
    )
