"""The shared-drive layout every asset reads and writes (the atomic write helpers live in atomic.py)."""

from pathlib import Path

import dagster as dg
from pydantic import Field

# Re-exported: assets import the layout and the write helpers from one place.
from resources.atomic import (  # noqa: F401
    PROJECT_ROOT,
    SHARED_DRIVE_ENV,
    atomic_append_line,
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    canonical_json,
    default_shared_drive,
)


class SharedDrive(dg.ConfigurableResource):
    """The shared-drive layout every asset reads and writes."""

    root: str | None = Field(
        default=None,
        description="Root of the shared drive; unset means $SHARED_DRIVE, else <project>/.shared",
    )

    @property
    def root_path(self) -> Path:
        return Path(self.root).resolve() if self.root else default_shared_drive()

    def _dir(self, *parts: str) -> Path:
        return self.root_path.joinpath(*parts)

    def dataset_dir(self, experiment: str) -> Path:
        return self._dir("datasets", experiment)

    def dataset_path(self, experiment: str, name: str) -> Path:
        """`name` is raw, train or test."""
        return self.dataset_dir(experiment) / f"{name}.parquet"

    def artifacts_dir(self, experiment: str, *sub: str) -> Path:
        return self._dir("artifacts", experiment, *sub)

    def constraint_dir(self, experiment: str, constraint: str) -> Path:
        return self.artifacts_dir(experiment, "constraints", constraint)

    def intermediate_dir(self, experiment: str, constraint: str) -> Path:
        return self.artifacts_dir(experiment, "intermediate", constraint)

    def models_dir(self, experiment: str) -> Path:
        return self._dir("models", experiment)

    def evaluation_dir(self, experiment: str) -> Path:
        return self._dir("evaluation", experiment)

    def analysis_dir(self, experiment: str) -> Path:
        return self._dir("analysis", experiment)

    def promotion_dir(self, config_hash: str) -> Path:
        return self._dir("model-promotion", "global", config_hash)

    def serving_dir(self, experiment: str) -> Path:
        return self._dir("serving", experiment)

    def state_dir(self) -> Path:
        return self._dir("state")

    def logs_dir(self, kind: str) -> Path:
        return self._dir("logs", kind)
