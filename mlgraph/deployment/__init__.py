"""The deployment domain: plain Python (no Dagster) behind the `deployment` asset group."""
