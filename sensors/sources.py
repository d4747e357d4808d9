"""Observes each experiment's inputs, so a changed byte in its data file or a changed config reaches automation.

Each tick loads every registered experiment's YAML and stats the data file it names; a file is hashed
again only when its stamp changed (`sources.SourceVersion.fresh`). An `experiment_source` observation
is reported, without a run, only for an experiment whose version differs from the one in the cursor.
Reporting the same version again (say, after the cursor was cleared) is harmless: automation compares
data versions, and an unchanged one starts nothing.
"""

import json

import dagster as dg

from mlgraph.core.experiment import ConfigError
from mlgraph.data import sources
from pipeline_assets.data.source_assets import source_observation
from pipeline_assets.partitions import experiment_partitions_def
from resources.experiments import ExperimentCatalog

# A tick costs a YAML parse and a stat per experiment; hashing happens only when a file changed. As
# often as the automation sensors look.
MIN_INTERVAL_SECONDS = 15


def parse_cursor(raw: str | None) -> dict[str, sources.SourceVersion]:
    if not raw:
        return {}
    try:
        return {name: sources.SourceVersion.from_dict(data) for name, data in json.loads(raw).items()}
    except (ValueError, TypeError, AttributeError) as exc:
        raise ValueError(
            f"sensor cursor {raw[:200]!r} is not a source cursor ({exc}). Fix: clear the cursor in the Dagster "
            "UI (Sensors → experiment_source_sensor → cursor); every experiment is then observed again, "
            "which starts no run where nothing changed."
        ) from None


@dg.sensor(minimum_interval_seconds=MIN_INTERVAL_SECONDS, default_status=dg.DefaultSensorStatus.RUNNING)
def experiment_source_sensor(context: dg.SensorEvaluationContext, catalog: ExperimentCatalog) -> dg.SensorResult:
    """Reports a new experiment_source observation for each experiment whose config or data file changed."""
    seen = parse_cursor(context.cursor)
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
    cursor = json.dumps({name: v.to_dict() for name, v in current.items()}, sort_keys=True)
    if not observations:
        return dg.SensorResult(skip_reason=f"{len(current)} experiment source(s) unchanged", cursor=cursor)
    context.log.info(f"new source versions: {', '.join(o.partition for o in observations)}")
    return dg.SensorResult(asset_events=observations, cursor=cursor)
