"""mlgraph's Dagster code location; the single `defs` is built in `pipeline_assets.definitions`.

This `__init__` imports nothing, so importing one asset group (or `pipeline_assets.partitions` from a
sensor) does not build the whole code location. The plain-Python domain code the assets wrap lives in the
`mlgraph` library. Point Dagster at `pipeline_assets.definitions` (workspace.yaml, `[tool.dagster]`).
"""
