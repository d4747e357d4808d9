"""Sensors: experiment configs and sources, signal files, MLflow run status, drift, alerts."""
