"""Checks on checkpoint evaluation: the observed metric set and row counts next to what they must be."""

import dagster as dg
import pyarrow.parquet as pq

from mlgraph.core import evaluation_store
from mlgraph.core.signals import EvalComplete, read_signal
from mlgraph.external import evaluation
from mlgraph.training.labels import class_count
from pipeline_assets.external.assets import checkpoint_evaluation
from resources.experiments import ExperimentCatalog
from resources.storage import SharedDrive


@dg.asset_check(asset=checkpoint_evaluation)
def checkpoint_evaluation_metrics_complete(
    context: dg.AssetCheckExecutionContext, storage: SharedDrive, catalog: ExperimentCatalog
) -> dg.AssetCheckResult:
    """Every metric of the target's task (binary, multiclass, regression) is present and finite; one prediction per test row."""
    import duckdb

    experiment = context.partition_key
    config = catalog.load(experiment).config
    task = config.task
    done, _ = read_signal(storage.eval_complete_signal(experiment), EvalComplete)
    with duckdb.connect() as con:
        rows = con.execute(
            f"SELECT metric, value FROM {evaluation_store.read_metrics_sql(storage.evaluation_dir(experiment))} "
            "WHERE model = ? AND dataset = 'test'",
            [done.model],
        ).fetchall()
    test_path = storage.dataset_path(experiment, "test")
    # The metric set follows the target as the test split shows it (binary or k classes), not the metric
    # names found: a multiclass evaluation that lost its per-class rows still owes them.
    n_classes = None
    if task == "classification":
        target = pq.read_table(test_path, columns=[config.target]).to_pandas()
        n_classes = class_count(target, config)
    missing, non_finite = evaluation.metric_gaps(task, dict(rows), n_classes)
    test_rows = pq.read_metadata(test_path).num_rows
    prediction_rows = pq.read_metadata(storage.checkpoint_predictions(experiment, done.checkpoint_id)).num_rows
    return dg.AssetCheckResult(
        passed=not missing and not non_finite and prediction_rows == test_rows,
        metadata={
            "model": done.model,
            "task": task,
            "classes": n_classes if n_classes is not None else "n/a",
            "missing_metrics": ", ".join(missing) or "none",
            "non_finite_metrics": ", ".join(non_finite) or "none",
            "prediction_rows": prediction_rows,
            "test_rows_required": test_rows,
        },
    )
