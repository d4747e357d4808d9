"""mlgraph's Dagster code location: `pipeline_assets.definitions.defs`."""

from pipeline_assets.definitions import defs

__all__ = ["defs"]
