"""The experiment's inputs as an observable source: what `raw_dataset` reads, versioned by content.

`experiment_source_sensor` reports these observations without a run; "Observe" in the UI runs the
function below for a partition. Both build the data version with `sources.source_version`, so an unchanged YAML and data
file always give the version already recorded, and Dagster's automation sees nothing new.
"""

import warnings

import dagster as dg

from mlgraph.data import sources
from pipeline_assets.partitions import experiment_partitions_def
from resources.experiments import ExperimentCatalog

# Dagster's event tag for a data version: what `DataVersion`s returned by an observation become; a
# sensor reporting an observation itself has to set it.
DATA_VERSION_TAG = "dagster/data_version"
EXPERIMENT_SOURCE = dg.AssetKey("experiment_source")
DESCRIPTION = "The experiment's YAML and the data file (or generator) it names, versioned by content."


def _metadata(version: sources.SourceVersion) -> dict[str, str]:
    return {
        "config_hash": version.config_hash,
        "source": version.source,
        "source_sha256": version.source_sha256 or "(generated: the config holds rows and seed)",
    }


def source_observation(version: sources.SourceVersion) -> dg.AssetObservation:
    """The observation of one experiment's inputs, as the sensor and `mlgraph demo` report it (no run)."""
    return dg.AssetObservation(
        EXPERIMENT_SOURCE,
        partition=version.experiment,
        tags={DATA_VERSION_TAG: version.data_version},
        metadata=_metadata(version),
    )


with warnings.catch_warnings():
    # Beta in Dagster 1.13 (observable sources are stable in use); the warning is noise on every load.
    warnings.simplefilter("ignore", dg.BetaWarning)

    @dg.multi_observable_source_asset(
        specs=[dg.AssetSpec(EXPERIMENT_SOURCE, partitions_def=experiment_partitions_def, description=DESCRIPTION)],
        partitions_def=experiment_partitions_def,
    )
    def experiment_source(context: dg.AssetExecutionContext, catalog: ExperimentCatalog) -> dg.ObserveResult:
        """Observes one experiment partition's inputs: the data version is their content hash."""
        version = sources.source_version(catalog.load(context.partition_key))
        return dg.ObserveResult(data_version=dg.DataVersion(version.data_version), metadata=_metadata(version))
