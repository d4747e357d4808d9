"""Keeps the `experiment` partitions in step with config/experiments/*.yaml."""

import dagster as dg

from mlgraph.core.experiment import ConfigError, load_experiment_file
from pipeline_assets.partitions import experiment_partitions_def
from resources.experiments import ExperimentCatalog


@dg.sensor(minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
def experiment_config_sensor(
    context: dg.SensorEvaluationContext, catalog: ExperimentCatalog
) -> dg.SensorResult | dg.SkipReason:
    """Adds an experiment partition for each valid YAML file and removes those whose file is gone."""
    existing = set(context.instance.get_dynamic_partitions(experiment_partitions_def.name))
    valid, invalid = [], []
    for name in catalog.names():
        try:
            load_experiment_file(catalog.path(name))
        except ConfigError as exc:
            # A broken file is reported every tick but never blocks the valid ones.
            context.log.warning(str(exc))
            invalid.append(name)
            continue
        valid.append(name)
    # A file that exists but no longer validates keeps its partition (and its history).
    present = set(valid) | set(invalid)
    to_add = sorted(set(valid) - existing)
    to_remove = sorted(existing - present)
    if not to_add and not to_remove:
        detail = f"; invalid: {', '.join(invalid)}" if invalid else ""
        return dg.SkipReason(f"{len(existing)} experiment partition(s) match {catalog.experiments_dir}{detail}")
    requests = []
    if to_add:
        context.log.info(f"adding experiment partitions: {to_add}")
        requests.append(experiment_partitions_def.build_add_request(to_add))
    if to_remove:
        context.log.info(f"removing experiment partitions whose YAML is gone: {to_remove}")
        requests.append(experiment_partitions_def.build_delete_request(to_remove))
    return dg.SensorResult(dynamic_partitions_requests=requests)
