"""mlgraph's Dagster code location: `defs` (built in pipeline_assets.definitions).

`dagster ... -m pipeline_assets` finds it here. The shared contracts this package uses live in
`core` (no Dagster), so nothing below imports back into the code location.
"""

from pipeline_assets.definitions import defs

__all__ = ["defs"]
