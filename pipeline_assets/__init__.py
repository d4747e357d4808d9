"""mlgraph's Dagster code location; the single `defs` is built in `pipeline_assets.definitions`.

This package also holds the plain-Python domain modules of each asset group, so its `__init__`
imports nothing: importing `mlgraph.training.metrics` must not build the code location (and
sensors, which import `pipeline_assets.jobs`, must not find themselves half-imported).
Point Dagster at `pipeline_assets.definitions` (workspace.yaml, `[tool.dagster]` in pyproject.toml).
"""
