"""The experiment catalog: where experiment YAML files live and how they are loaded."""

import os
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field

from resources.storage import PROJECT_ROOT

if TYPE_CHECKING:
    from pipeline_assets.settings import LoadedExperiment

CONFIG_DIR_ENV = "MLGRAPH_CONFIG_DIR"


class ExperimentCatalog(dg.ConfigurableResource):
    """The config directory holding experiments/*.yaml and constraints.yaml."""

    config_dir: str | None = Field(
        default=None,
        description="Config directory; unset means $MLGRAPH_CONFIG_DIR, else <project>/config",
    )

    @property
    def root(self) -> Path:
        return Path(self.config_dir or os.environ.get(CONFIG_DIR_ENV) or PROJECT_ROOT / "config").resolve()

    @property
    def experiments_dir(self) -> Path:
        return self.root / "experiments"

    def names(self) -> list[str]:
        # Imported here: pipeline_assets imports this module while building its definitions.
        from pipeline_assets.settings import experiment_names

        return experiment_names(self.root)

    def path(self, experiment: str) -> Path:
        return self.experiments_dir / f"{experiment}.yaml"

    def load(self, experiment: str) -> "LoadedExperiment":
        from pipeline_assets.settings import load_experiment_file

        return load_experiment_file(self.path(experiment))
