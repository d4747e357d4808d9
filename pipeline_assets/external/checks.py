"""Checks on checkpoint evaluation: the observed metric set and row counts next to what they must be."""

import dagster as dg
import pyarrow.parquet as pq

from mlgraph.core import evaluation_store
from mlgraph.core.signals import EvalComplete, read_signal
from mlgraph.external import evaluation
from pipeline_assets.external.assets import checkpoint_evaluation
from resources.experiments import ExperimentCatalog
from resources.storage import SharedDrive


@dg.asset_check(asset=checkpoint_evaluation)
def checkpoint_evaluation_metrics_complete(
    context: dg.AssetCheckExecutionContext, storage: SharedDrive, catalog: ExperimentCatalog
) -> dg.AssetCheckResult:
    """Every metric of the experiment's task is present and finite, and there is one prediction per test row."""
    import duckdb

    experiment = context.partition_key
    task = catalog.load(experiment).config.task
    done, _ = read_signal(storage.eval_complete_signal(experiment), EvalComplete)
    with duckdb.connect() as con:
        rows = con.execute(
            f"SELECT metric, value FROM {evaluation_store.read_metrics_sql(storage.evaluation_dir(experiment))} "
            "WHERE model = ? AND dataset = 'test'",
            [done.model],
        ).fetchall()
    missing, non_finite = evaluation.metric_gaps(task, dict(rows))
    test_rows = pq.read_metadata(storage.dataset_path(experiment, "test")).num_rows
    prediction_rows = pq.read_metadata(storage.checkpoint_predictions(experiment, done.checkpoint_id)).num_rows
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
