"""The analysis domain: plain Python (no Dagster) behind the `analysis` asset group."""
