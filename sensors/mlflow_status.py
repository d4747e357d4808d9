"""Run-status sensors that make an MLflow parent run's final status match its Dagster run.

The training steps end their parent run themselves (FAILED on error, FINISHED after the last training
step; see mlgraph/training/mlflow_runs.py). A step *after* them in the same Dagster run — a
deployment check, a crash outside the step — can still fail or cancel the run; these sensors, run by
the daemon, then set the parent run FAILED or KILLED. In-process runs (CI, `mlgraph demo`) have no
daemon and rely on the in-step handling alone.
"""

import dagster as dg

from mlgraph.core.tags import DAGSTER_PARTITION_TAG
from mlgraph.core.tracking import reconcile_parent
from mlgraph.training.mlflow_runs import ran_training
from resources.tracking import MlflowTracking


def _ran_training(run: dg.DagsterRun) -> bool:
    selection = run.asset_selection
    # No explicit selection (None, or empty for op jobs): the whole job ran; let the MLflow lookup decide.
    return not selection or ran_training(key.to_user_string() for key in selection)


def reconcile(context: dg.RunStatusSensorContext, tracking: MlflowTracking, status: str) -> dg.SkipReason | None:
    run = context.dagster_run
    experiment = run.tags.get(DAGSTER_PARTITION_TAG)
    if not experiment or not _ran_training(run):
        return dg.SkipReason(f"run {run.run_id[:8]} ran no training step of an experiment partition")
    changed = reconcile_parent(tracking.client(), tracking.experiment_name(experiment), run.run_id, status)
    if changed is None:
        return dg.SkipReason(f"run {run.run_id[:8]}: no MLflow parent run to correct")
    context.log.info(f"MLflow parent run {changed} of Dagster run {run.run_id} set to {status}")
    return None


@dg.run_failure_sensor(minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
def mlflow_run_failure_sensor(context: dg.RunFailureSensorContext, mlflow: MlflowTracking):
    """Marks the MLflow parent run of a failed Dagster run FAILED."""
    return reconcile(context, mlflow, "FAILED")


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.CANCELED, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING
)
def mlflow_run_canceled_sensor(context: dg.RunStatusSensorContext, mlflow: MlflowTracking):
    """Marks the MLflow parent run of a canceled Dagster run KILLED."""
    return reconcile(context, mlflow, "KILLED")
