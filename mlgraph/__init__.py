"""mlgraph: machine-learning experiments as a Dagster asset graph (the library; imports nothing)."""
