"""Experiment-level analysis: constraint sweep tables, significance, plots, reports, manifests."""
