"""MLflow tracking wiring (dagster-mlflow); SQLite backend under the shared drive by default."""

import os
from pathlib import Path

import dagster as dg
from pydantic import Field

from core.drive import default_shared_drive

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"


class MlflowTracking(dg.ConfigurableResource):
    """Where MLflow runs go; mlflow and dagster-mlflow are imported only when a run starts."""

    tracking_uri: str | None = Field(
        default=None,
        description="Tracking URI; unset means $MLFLOW_TRACKING_URI, else sqlite:///$SHARED_DRIVE/state/mlflow.db",
    )
    artifact_root: str | None = Field(
        default=None, description="Artifact location for new experiments; default $SHARED_DRIVE/mlflow-artifacts"
    )
    experiment_prefix: str = Field(default="mlgraph", description="MLflow experiment = <prefix>/<experiment>")

    @property
    def resolved_tracking_uri(self) -> str:
        if self.tracking_uri:
            return self.tracking_uri
        if os.environ.get(TRACKING_URI_ENV):
            return os.environ[TRACKING_URI_ENV]
        db = default_shared_drive() / "state" / "mlflow.db"
        db.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{db}"

    @property
    def resolved_artifact_root(self) -> str:
        root = Path(self.artifact_root) if self.artifact_root else default_shared_drive() / "mlflow-artifacts"
        root.mkdir(parents=True, exist_ok=True)
        return root.resolve().as_uri()

    def experiment_name(self, experiment: str) -> str:
        return f"{self.experiment_prefix}/{experiment}"

    def client(self):
        """An MlflowClient bound to this tracking URI (imports mlflow lazily: 1.6 s)."""
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.resolved_tracking_uri)

    def registered_model_name(self, experiment: str) -> str:
        """Model Registry name of an experiment's champions (the alias `champion` marks the current one)."""
        return f"{self.experiment_prefix}.{experiment}"

    def ensure_experiment(self, experiment: str) -> str:
        """Create the MLflow experiment (with its artifact location) if needed; return its id."""
        from pipeline_assets.training.mlflow_runs import with_retry

        client = self.client()
        name = self.experiment_name(experiment)
        found = with_retry(client.get_experiment_by_name, name)
        if found is not None:
            return found.experiment_id
        try:
            return with_retry(
                client.create_experiment, name, artifact_location=self.resolved_artifact_root + f"/{experiment}"
            )
        except Exception:
            # Another process created it between our lookup and our create.
            found = with_retry(client.get_experiment_by_name, name)
            if found is None:
                raise
            return found.experiment_id

    def tracker(self, experiment: str):
        """A Tracker (pipeline_assets.training.mlflow_runs) for this experiment's MLflow runs."""
        from pipeline_assets.training.mlflow_runs import Tracker

        experiment_id = self.ensure_experiment(experiment)
        return Tracker(self.client(), experiment_id)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        """At the end of a run (in-process executor: once, after every step), fail the MLflow parent run
        if any step of the Dagster run failed, including steps after the training steps.

        Only ever corrects towards FAILED, from recorded step failures, so a per-step teardown (other
        executors) can never end a parent run early the way dagster issue #21872 describes.
        """
        run = context.run
        experiment = run.tags.get("dagster/partition") if run is not None else None
        if run is None or context.instance is None or not experiment:
            return
        failures = context.instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
        if not failures:
            return
        from pipeline_assets.training.mlflow_runs import reconcile_parent

        changed = reconcile_parent(self.client(), self.experiment_name(experiment), run.run_id, "FAILED")
        if changed:
            context.log.info(
                f"MLflow parent run {changed} marked FAILED: step(s) {sorted({e.step_key for e in failures})} failed"
            )
