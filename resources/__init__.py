"""Typed Dagster resources over mlgraph's plain classes: the shared drive, the experiment catalog, DuckDB, MLflow."""
