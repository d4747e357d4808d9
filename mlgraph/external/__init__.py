"""The external domain: plain Python (no Dagster) behind the `external` asset group."""
