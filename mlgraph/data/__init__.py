"""The data domain: plain Python (no Dagster) behind the `data` asset group."""
