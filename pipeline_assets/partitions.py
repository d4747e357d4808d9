"""The partition definitions, defined once: experiment (dynamic) × constraint (static)."""

from __future__ import annotations

import functools
import warnings

import dagster as dg

from mlgraph.core.catalog import ConfigCatalog
from mlgraph.core.constraints import load_constraint_grid


@functools.cache
def constraint_keys() -> list[str]:
    """Keys of the grid in the configured config directory's constraints.yaml ($MLGRAPH_CONFIG_DIR, else
    the project's config/); read once, when the code location is built, because a static partition set
    is part of the definitions."""
    return [c.key for c in load_constraint_grid(ConfigCatalog().constraints_file).constraints()]


experiment_partitions_def = dg.DynamicPartitionsDefinition(name="experiment")
constraint_partitions_def = dg.StaticPartitionsDefinition(constraint_keys())
experiment_constraint_partitions_def = dg.MultiPartitionsDefinition(
    {"experiment": experiment_partitions_def, "constraint": constraint_partitions_def}
)
# Experiment-level assets read every constraint partition of their own experiment.
with warnings.catch_warnings():
    # Beta in Dagster 1.13, and exactly the mapping this graph needs; the warning is noise on every load.
    warnings.simplefilter("ignore", dg.BetaWarning)
    experiment_from_constraints_mapping = dg.MultiToSingleDimensionPartitionMapping(
        partition_dimension_name="experiment"
    )
