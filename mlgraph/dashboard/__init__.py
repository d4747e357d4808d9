"""The read-only job dashboard: the chain per experiment, the Slurm queue, alerts (entry point layer)."""
