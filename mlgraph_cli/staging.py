"""Materialize the whole graph for some experiments, in-process, stage by stage.

A Dagster run targets one partitions definition, so the graph is cut into stages:
experiment assets upstream of the constraint sweep, the experiment × constraint assets,
then the experiment assets that read the sweep. `mlgraph demo` and the tests use this.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import dagster as dg

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


# Assets that start from a trainer's signal file: the sensors run them, a batch materialization cannot.
SIGNAL_DRIVEN_GROUPS = frozenset({"external"})


def default_selection(graph) -> set[dg.AssetKey]:
    """Every materializable asset except the signal-driven ones and what depends on them."""
    keys = set(graph.materializable_asset_keys)
    signal_driven = {k for k in keys if graph.get(k).group_name in SIGNAL_DRIVEN_GROUPS}
    downstream = {k for k in keys if graph.get_ancestor_asset_keys(k) & signal_driven}
    return keys - signal_driven - downstream


def plan_stages(defs: dg.Definitions, selection: Iterable[dg.AssetKey] | None = None) -> list[StagePlan]:
    graph = defs.resolve_asset_graph()
    wanted = set(selection) if selection is not None else default_selection(graph)
    multi = {k for k in wanted if graph.get(k).partitions_def == experiment_constraint_partitions_def}
    downstream_of_multi = set()
    for key in wanted - multi:
        if graph.get(key).partitions_def is None:
            continue
        if graph.get_ancestor_asset_keys(key) & multi:
            downstream_of_multi.add(key)
    before = wanted - multi - downstream_of_multi
    unpartitioned = {k for k in before if graph.get(k).partitions_def is None}
    stages = [
        StagePlan("experiment", sorted(before - unpartitioned), multi=False),
        StagePlan("experiment x constraint", sorted(multi), multi=True),
        StagePlan("experiment (after sweep)", sorted(downstream_of_multi), multi=False),
    ]
    return [s for s in stages if s.keys]


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
