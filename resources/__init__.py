"""Typed Dagster resources: the shared drive, the experiment catalog, DuckDB, MLflow, Slurm."""
