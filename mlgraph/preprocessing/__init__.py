"""The preprocessing domain: plain Python (no Dagster) behind the `preprocessing` asset group."""
