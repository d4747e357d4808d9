"""The MLflow resource: where runs go, for assets, checks, sensors and the CLI.

A thin Dagster adapter over mlgraph/core/tracking.py, the one implementation of client construction, lock
retries, get-or-create experiment and run writing (the trainer hook uses it too). SQLite under the
shared drive by default; mlflow is imported only when a client is built.
"""

from typing import Any

import dagster as dg
from pydantic import Field

from mlgraph.core import tracking
from mlgraph.core.tags import DAGSTER_PARTITION_TAG
from mlgraph.core.tracking import Tracker


class MlflowTracking(dg.ConfigurableResource):
    """Where MLflow runs go; mlflow is imported only when a run starts."""

    tracking_uri: str | None = Field(
        default=None,
        description="Tracking URI; unset means $MLFLOW_TRACKING_URI, else sqlite:///$SHARED_DRIVE/state/mlflow.db",
    )
    artifact_root: str | None = Field(
        default=None, description="Artifact location for new experiments; default $SHARED_DRIVE/mlflow-artifacts"
    )
    experiment_prefix: str = Field(
        default=tracking.EXPERIMENT_PREFIX, description="MLflow experiment = <prefix>/<experiment>"
    )

    @property
    def resolved_tracking_uri(self) -> str:
        return tracking.resolve_tracking_uri(self.tracking_uri)

    def experiment_name(self, experiment: str) -> str:
        return tracking.experiment_name(experiment, self.experiment_prefix)

    def registered_model_name(self, experiment: str) -> str:
        """Model Registry name of an experiment's champions (the alias `champion` marks the current one)."""
        return tracking.registered_model_name(experiment, self.experiment_prefix)

    def client(self) -> Any:
        """An MlflowClient bound to this tracking URI (imports mlflow lazily: 1.6 s)."""
        return tracking.mlflow_client(self.resolved_tracking_uri)

    def ensure_experiment(self, experiment: str) -> str:
        """Create the MLflow experiment (with its artifact location) if needed; return its id."""
        return self.tracker(experiment).experiment_id

    def tracker(self, experiment: str) -> Tracker:
        """The runs of this experiment's MLflow experiment, created on first use."""
        return Tracker.open(experiment, self.resolved_tracking_uri, self.experiment_prefix, self.artifact_root)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        """At the end of a run (in-process executor: once, after every step), fail the MLflow parent run
        if any step of the Dagster run failed, including steps after the training steps.

        Only ever corrects towards FAILED, from recorded step failures, so a per-step teardown (other
        executors) can never end a parent run early the way dagster issue #21872 describes.
        """
        run = context.run
        experiment = run.tags.get(DAGSTER_PARTITION_TAG) if run is not None else None
        if run is None or context.instance is None or not experiment:
            return
        failures = context.instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
        if not failures:
            return
        try:
            changed = tracking.reconcile_parent(self.client(), self.experiment_name(experiment), run.run_id, "FAILED")
        except tracking.TrackingServerError as exc:  # the step's own failure is what the run reports
            context.log.warning(f"could not mark the MLflow parent run FAILED: {exc}")
            return
        if changed:
            context.log.info(
                f"MLflow parent run {changed} marked FAILED: step(s) {sorted({e.step_key for e in failures})} failed"
            )
