"""The experiment catalog: which config directory holds the experiments, and how one is loaded.

The rule, written once: an explicit directory, else `$MLGRAPH_CONFIG_DIR`, else the project's
`config/`; experiments are `experiments/<name>.yaml` there, the constraint grid `constraints.yaml`.
`CatalogRules` is mixed into the plain `ConfigCatalog` (the service, the CLI, the trainer) and into
the `ExperimentCatalog` resource (assets, sensors), as `DrivePaths` is into the drive's two forms.
"""

from __future__ import annotations

import os
from pathlib import Path

from mlgraph.core.drive import CONFIG_DIR_ENV, resolve_config_dir
from mlgraph.core.experiment import LoadedExperiment, experiment_names, load_experiment_file

__all__ = ["CONFIG_DIR_ENV", "CatalogRules", "ConfigCatalog", "resolve_config_dir"]


class CatalogRules:
    """Paths and loading below a config directory; subclasses provide `root`."""

    @property
    def root(self) -> Path:
        raise NotImplementedError

    @property
    def experiments_dir(self) -> Path:
        return self.root / "experiments"

    @property
    def constraints_file(self) -> Path:
        return self.root / "constraints.yaml"

    def names(self) -> list[str]:
        return experiment_names(self.root)

    def path(self, experiment: str) -> Path:
        return self.experiments_dir / f"{experiment}.yaml"

    def load(self, experiment: str) -> LoadedExperiment:
        return load_experiment_file(self.path(experiment))


class ConfigCatalog(CatalogRules):
    """The catalog as plain Python: `ConfigCatalog().load("salary")`."""

    def __init__(self, config_dir: str | os.PathLike[str] | None = None):
        self._root = resolve_config_dir(config_dir)

    @property
    def root(self) -> Path:
        return self._root
