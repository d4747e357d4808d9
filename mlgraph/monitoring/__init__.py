"""The monitoring domain: plain Python (no Dagster) behind the `monitoring` asset group."""
