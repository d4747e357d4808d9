"""The experiment catalog: where experiment YAML files live and how they are loaded."""

import os
from pathlib import Path
import dagster as dg
from pydantic import Field

from core.drive import PROJECT_ROOT
from core.experiment import LoadedExperiment, experiment_names, load_experiment_file

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
        return experiment_names(self.root)

    def path(self, experiment: str) -> Path:
        return self.experiments_dir / f"{experiment}.yaml"

    def load(self, experiment: str) -> LoadedExperiment:
        return load_experiment_file(self.path(experiment))
