"""mlgraph's core: the shared contracts, in plain Python with no Dagster.

Drive layout and atomic writes, hashing, run-tag names, signal and experiment schemas, the
evaluation-store layout and metadata rendering. Everything above (domain modules, resources,
assets, sensors, the CLI) and the trainer-side hook import from here; nothing here imports
from above.
"""
