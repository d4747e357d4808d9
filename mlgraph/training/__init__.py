"""The training domain: plain Python (no Dagster) behind the `training` asset group."""
