"""The `mlgraph` command line."""
