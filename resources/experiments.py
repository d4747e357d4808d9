"""The experiment catalog as a resource: mlgraph.core.catalog's rules under a typed, configurable root."""

from pathlib import Path

import dagster as dg
from pydantic import Field

from mlgraph.core.catalog import CatalogRules, resolve_config_dir


class ExperimentCatalog(dg.ConfigurableResource, CatalogRules):
    """The config directory holding experiments/*.yaml and constraints.yaml."""

    config_dir: str | None = Field(
        default=None,
        description="Config directory; unset means $MLGRAPH_CONFIG_DIR, else <project>/config",
    )

    @property
    def root(self) -> Path:
        return resolve_config_dir(self.config_dir)
