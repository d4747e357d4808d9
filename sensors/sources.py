"""Observes each experiment's inputs, so a changed byte in its data file or a changed config reaches automation.

Each tick loads every registered experiment's YAML and stats the data file it names; a file is hashed
again only when its stamp changed (`sources.SourceVersion.fresh`). An `experiment_source` observation
is reported, without a run, only for an experiment whose version differs from the one in the cursor.
Reporting the same version again (say, after the cursor was cleared) is harmless: automation compares
data versions, and an unchanged one starts nothing.
"""

from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from mlgraph.core.cursor import JsonCursor
from mlgraph.core.experiment import ConfigError
from mlgraph.data import sources
from pipeline_assets.data.source_assets import source_observation
from pipeline_assets.partitions import experiment_partitions_def
from resources.experiments import ExperimentCatalog

# A tick costs a YAML parse and a stat per experiment; hashing happens only when a file changed. As
# often as the automation sensors look.
MIN_INTERVAL_SECONDS = 15


@dataclass
class SourceCursor(JsonCursor):
    """The last source version reported per experiment."""

    KIND = "a source cursor"
    SENSOR = "experiment_source_sensor"
    AFTER_RESET = "every experiment is then observed again, which starts no run where nothing changed."

    versions: dict[str, sources.SourceVersion] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any) -> "SourceCursor":
        return cls({name: sources.SourceVersion.from_dict(version) for name, version in data.items()})

    def to_json(self) -> dict:
        return {name: version.to_dict() for name, version in self.versions.items()}


@dg.sensor(minimum_interval_seconds=MIN_INTERVAL_SECONDS, default_status=dg.DefaultSensorStatus.RUNNING)
def experiment_source_sensor(context: dg.SensorEvaluationContext, catalog: ExperimentCatalog) -> dg.SensorResult:
    """Reports a new experiment_source observation for each experiment whose config or data file changed."""
    seen = SourceCursor.load(context.cursor).versions
    current: dict[str, sources.SourceVersion] = {}
    observations = []
    for name in sorted(context.instance.get_dynamic_partitions(experiment_partitions_def.name)):
        try:
            version = sources.source_version(catalog.load(name), previous=seen.get(name))
        except (ConfigError, OSError) as exc:
            # One broken experiment is reported every tick but never hides the others' changes.
            context.log.warning(str(exc))
            if name in seen:
                current[name] = seen[name]
            continue
        current[name] = version
        if name not in seen or seen[name].data_version != version.data_version:
            observations.append(source_observation(version))
    cursor = SourceCursor(current).dump()
    if not observations:
        return dg.SensorResult(skip_reason=f"{len(current)} experiment source(s) unchanged", cursor=cursor)
    context.log.info(f"new source versions: {', '.join(o.partition for o in observations)}")
    return dg.SensorResult(asset_events=observations, cursor=cursor)
