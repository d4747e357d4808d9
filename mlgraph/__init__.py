"""mlgraph: machine-learning experiments as a Dagster asset graph; the library behind the code location.

Imports nothing: `import mlgraph.core.drive` on a GPU machine must not load Dagster or the domain.
docs/architecture.md says what each subpackage holds and what it may import.
"""
