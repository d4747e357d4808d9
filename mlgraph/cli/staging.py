"""Materialize the graph for some experiments in-process, without a daemon: what `mlgraph demo` and tests run.

The stage plan comes from the graph. A Dagster run targets one partitions definition, so each asset
goes in the first stage after all its parents' stages, one stage later than a parent of another
partitions definition: today that gives experiment assets upstream of the constraint sweep, the
experiment × constraint assets, then the experiment assets that read the sweep. The assets are those
automation keeps fresh (`pipeline_assets.automation.AUTOMATED`): not the signal-driven ones, which
only a trainer's signal starts. Each experiment's source is observed first, as the daemon's
`experiment_source_sensor` would, so a daemon started later finds the graph up to date.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import dagster as dg

from mlgraph.core.catalog import ConfigCatalog
from mlgraph.data import sources
from pipeline_assets.automation import AUTOMATED
from pipeline_assets.data.source_assets import source_observation
from pipeline_assets.partitions import (
    constraint_partitions_def,
    experiment_constraint_partitions_def,
    experiment_partitions_def,
)


@dataclass
class StagePlan:
    name: str
    keys: list[dg.AssetKey]
    multi: bool  # experiment × constraint partitions


@dataclass
class MaterializeSummary:
    runs: int = 0
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0
    assets: set[str] = field(default_factory=set)
    partitions: set[str] = field(default_factory=set)


STAGE_NAMES = {experiment_partitions_def: "experiment", experiment_constraint_partitions_def: "experiment x constraint"}


def default_selection(graph) -> set[dg.AssetKey]:
    """What automation keeps fresh: every materializable asset but the signal-driven ones."""
    return set(AUTOMATED.resolve(graph))


def plan_stages(defs: dg.Definitions, selection: Iterable[dg.AssetKey] | None = None) -> list[StagePlan]:
    """Stages in dependency order; one stage per run of a partitions definition (unpartitioned assets aside)."""
    graph = defs.resolve_asset_graph()
    wanted = set(selection) if selection is not None else default_selection(graph)
    stage_of: dict[dg.AssetKey, int] = {}
    for key in graph.toposorted_asset_keys:
        if key not in wanted or graph.get(key).partitions_def is None:
            continue
        own = graph.get(key).partitions_def
        stage_of[key] = max(
            (stage_of[p] + (graph.get(p).partitions_def != own) for p in graph.get(key).parent_keys if p in stage_of),
            default=0,
        )
    stages: list[StagePlan] = []
    for index, partitions_def in sorted(
        {(i, graph.get(k).partitions_def) for k, i in stage_of.items()}, key=lambda pair: (pair[0], str(pair[1]))
    ):
        keys = sorted(k for k, i in stage_of.items() if i == index and graph.get(k).partitions_def == partitions_def)
        if partitions_def not in STAGE_NAMES:
            raise ValueError(f"{keys}: partitioned by {partitions_def}, which an experiment stage cannot run")
        label = STAGE_NAMES[partitions_def]
        name = f"{label} (after {stages[-1].name})" if any(s.name == label for s in stages) else label
        stages.append(StagePlan(name, keys, multi=partitions_def == experiment_constraint_partitions_def))
    return stages


def observe_sources(instance: dg.DagsterInstance, experiments: list[str]) -> None:
    """Record each experiment's source version, as experiment_source_sensor does in the daemon."""
    catalog = ConfigCatalog()
    for name in experiments:
        instance.report_runless_asset_event(source_observation(sources.source_version(catalog.load(name))))


def materialize_experiments(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    experiments: list[str],
    selection: Iterable[dg.AssetKey] | None = None,
    constraints: list[str] | None = None,
    echo: Callable[[str], None] = print,
    raise_on_error: bool = False,
) -> MaterializeSummary:
    """Register the experiments as partitions and materialize every selected asset for them."""
    known = set(instance.get_dynamic_partitions(experiment_partitions_def.name))
    missing = [e for e in experiments if e not in known]
    if missing:
        instance.add_dynamic_partitions(experiment_partitions_def.name, missing)
    observe_sources(instance, experiments)
    job = defs.resolve_implicit_global_asset_job_def()
    constraint_keys = constraints or constraint_partitions_def.get_partition_keys()
    summary = MaterializeSummary()
    start = time.perf_counter()
    stages = plan_stages(defs, selection)
    for experiment in experiments:
        for stage in stages:
            if stage.multi:
                keys = [dg.MultiPartitionKey({"experiment": experiment, "constraint": c}) for c in constraint_keys]
            else:
                keys = [experiment]
            stage_ok = True
            for partition_key in keys:
                t0 = time.perf_counter()
                result = job.execute_in_process(
                    instance=instance,
                    partition_key=partition_key,
                    asset_selection=stage.keys,
                    raise_on_error=raise_on_error,
                )
                summary.runs += 1
                summary.assets.update(k.to_user_string() for k in stage.keys)
                summary.partitions.add(str(partition_key))
                echo(
                    f"[{stage.name}] {partition_key}: {len(stage.keys)} asset(s) "
                    f"{'ok' if result.success else 'FAILED'} in {time.perf_counter() - t0:.1f}s "
                    f"(run {result.run_id[:8]})"
                )
                if not result.success:
                    stage_ok = False
                    summary.failed.append(f"{stage.name}:{partition_key}")
            if not stage_ok:
                # Later stages read this one's outputs; running them would only add noise.
                echo(f"[{experiment}] skipping later stages after a failure")
                break
    summary.seconds = time.perf_counter() - start
    return summary
