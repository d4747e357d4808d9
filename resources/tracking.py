"""MLflow tracking wiring (dagster-mlflow); SQLite backend under the shared drive by default."""

import os
from pathlib import Path

import dagster as dg
from pydantic import Field

from resources.storage import default_shared_drive

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

    def ensure_experiment(self, experiment: str) -> str:
        """Create the MLflow experiment (with its artifact location) if needed; return its id."""
        client = self.client()
        name = self.experiment_name(experiment)
        found = client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        return client.create_experiment(name, artifact_location=self.resolved_artifact_root + f"/{experiment}")
