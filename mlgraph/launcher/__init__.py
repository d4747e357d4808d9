"""Dagster instance plugins: the Slurm run launcher (configured in dagster.yaml, not in `defs`)."""
