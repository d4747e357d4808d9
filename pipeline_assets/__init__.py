"""mlgraph's Dagster code location: `pipeline_assets.definitions.defs`.

`defs` is resolved lazily (PEP 562) so that importing a domain module such as
`pipeline_assets.settings` does not build the whole code location, which would make
resources/ and sensors/ (imported by the definitions) circular. `dagster ... -m pipeline_assets`
still finds it: Dagster scans `dir(module)` and reads each attribute.
"""


def __getattr__(name: str):
    if name == "defs":
        from pipeline_assets.definitions import defs

        return defs
    raise AttributeError(f"module 'pipeline_assets' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "defs"])
