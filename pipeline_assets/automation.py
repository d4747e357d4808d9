"""Declarative automation, written once: which assets keep themselves fresh, on what condition, where they run.

In the daemon (`make ui`), a new experiment partition, a new `experiment_source` version (a changed
byte in the data file or a changed config, see sensors/sources.py) or a bumped `code_version`
materializes what is missing or outdated downstream, once, with blocking checks respected.

- `keep_fresh` is Dagster's `eager()` (newly missing, or a dependency updated; nothing upstream missing
  or running) plus a code-version change, when blocking checks allow it (`blocking_checks_passed`,
  `check_inputs_settled`) and nothing upstream is still to change (`ancestors_settled`).
- Why `ancestors_settled`: one run cannot span two partitions definitions nor two automation sensors,
  so an experiment's constraint sweep (experiment × constraint) and its training (Slurm sensor) run
  apart from its experiment-level assets. `run_manifest` reads the sweep summary and earlier
  experiment-level assets; plain `eager()` runs it once after the early ones and again after the
  sweep. The gate holds an asset while an ancestor across such a boundary is pending, so a change
  flows through the graph once. Within one run boundary `eager()` already requests an asset in the same
  run as its updated parents, so each asset looks only as far up as its farthest boundary crossing.
- The signal-driven assets (the `external` group and what reads it: `checkpoint_evaluation`,
  `checkpoint_comparison_report`) get no condition; their sensors run them when a trainer signals.
- Two automation sensors with disjoint targets, both on by default: runs of the heavy assets
  (`jobs.ON_SLURM`: training and the constraint sweep) carry `jobs.SLURM_RUN_TAGS`, so the run launcher
  sends them to Slurm; the rest run locally. One run per partition (no backfills), as the launcher expects.
"""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg

from pipeline_assets.jobs import ON_SLURM, SLURM_RUN_TAGS

AC = dg.AutomationCondition

# Started by a trainer's signal file (sensors/signal_sensors.py), never by automation.
SIGNAL_DRIVEN = dg.AssetSelection.groups("external").downstream()
# The service writes the log and drift_sensor reads it each tick; a report is materialized on demand.
# (By key prefix: unlike `assets(...)`, it resolves in graphs without them, e.g. the tests' stand-ins.)
ON_DEMAND = dg.AssetSelection.key_prefixes("prediction_log", "drift_report")
AUTOMATED = dg.AssetSelection.all() - SIGNAL_DRIVEN - ON_DEMAND
# A tick costs the daemon well under a second on this graph (2 cores); Dagster's default is 30 s, and
# each hop of a change through the graph (data, then sweep and training, then the summary) waits one.
MIN_INTERVAL_SECONDS = 15


def outdated() -> dg.AutomationCondition:
    """A dependency updated after this asset last did."""
    return AC.any_deps_match(AC.newly_updated()).since(AC.newly_updated()).with_label("outdated")


def pending() -> dg.AutomationCondition:
    """About to change outside the run being planned: running, outdated, or fed by an asset requested now."""
    return (
        AC.in_progress() | (~AC.will_be_requested() & (outdated() | AC.any_deps_match(AC.will_be_requested())))
    ).with_label("pending")


def ancestors_settled(depth: int) -> dg.AutomationCondition:
    """No ancestor up to `depth` levels up is pending (conditions see direct dependencies only, hence the nesting)."""
    upstream = pending()
    for _ in range(depth - 1):
        upstream = pending() | AC.any_deps_match(upstream)
    return (~AC.any_deps_match(upstream)).with_label("ancestors_settled")


def blocking_checks_passed() -> dg.AutomationCondition:
    """Each dependency refreshes in the run being planned (its blocking checks run there and stop this asset
    if they fail) or has passed its blocking checks.

    Dagster's `all_deps_blocking_checks_passed()` accepts a check in-tick only when the check itself is
    requested, which takes a condition on every check; this is the same rule stated on the assets.
    """
    return AC.all_deps_match(
        AC.will_be_requested() | AC.all_checks_match(AC.check_passed(), blocking_only=True)
    ).with_label("blocking_checks_passed")


def check_inputs_settled(key: dg.AssetKey) -> dg.AutomationCondition:
    """What this asset's blocking checks read besides the asset (e.g. batch_features) is there and not pending."""
    unready = (AC.missing() & ~AC.will_be_requested()) | pending()
    return (
        ~AC.any_checks_match(AC.any_deps_match(unready).ignore(dg.AssetSelection.assets(key)), blocking_only=True)
    ).with_label("check_inputs_settled")


def keep_fresh(key: dg.AssetKey, depth: int) -> dg.AutomationCondition:
    """Missing, a dependency updated or the code version changed, and not yet handled; then as `eager()`, once
    blocking checks allow it and no ancestor up to `depth` is pending."""
    # eager() resets its trigger on the first evaluation too, so partitions already missing when the
    # sensor starts (registered by `mlgraph init`, or before the daemon's first tick) would never run.
    trigger = (
        (AC.newly_missing() | AC.any_deps_updated() | AC.code_version_changed())
        .since(AC.newly_requested() | AC.newly_updated())
        .with_label("missing_or_updated_since_handled")
    )
    condition = (
        trigger
        & ~AC.any_deps_missing()
        & ~AC.any_deps_in_progress()
        & ~AC.in_progress()
        & blocking_checks_passed()
        & check_inputs_settled(key)
    )
    if depth:
        condition = condition & ancestors_settled(depth)
    return condition.with_label("keep_fresh")


def gate_depths(
    parents: dict[dg.AssetKey, list[dg.AssetKey]], apart: dict[dg.AssetKey, tuple]
) -> dict[dg.AssetKey, int]:
    """For each asset, how many levels up `ancestors_settled` must look to see every ancestor that starts
    a run of its own.

    `apart[key]` says which runs an asset can share (its partitions definition, its sensor); an asset
    that differs there from a parent starts a new run, and is where pending work can hide.
    """
    run_starts = {k for k, ps in parents.items() if any(apart.get(p, apart[k]) != apart[k] for p in ps)}
    depths = {}
    for key in parents:
        distance, frontier, seen, depths[key] = 0, {key}, {key}, 0
        while frontier:
            distance += 1
            frontier = {p for k in frontier for p in parents.get(k, [])} - seen
            seen |= frontier
            if frontier & run_starts:
                depths[key] = distance
    return depths


def with_automation(assets: Sequence) -> list:
    """The assets with `keep_fresh` attached to every automated one (the policy lives here, not per asset)."""
    definitions = [dg.AssetsDefinition(specs=[a]) if isinstance(a, dg.AssetSpec) else a for a in assets]
    automated = AUTOMATED.resolve(definitions)
    on_slurm = ON_SLURM.resolve(definitions)
    specs = [s for a in definitions if isinstance(a, dg.AssetsDefinition) for s in a.specs]
    parents = {s.key: [d.asset_key for d in s.deps] for s in specs}
    depths = gate_depths(parents, {s.key: (s.partitions_def, s.key in on_slurm) for s in specs})

    def attach(spec: dg.AssetSpec) -> dg.AssetSpec:
        if spec.key not in automated:
            return spec
        return spec.replace_attributes(automation_condition=keep_fresh(spec.key, depths[spec.key]))

    return [a.map_asset_specs(attach) if isinstance(a, dg.AssetsDefinition) and a.is_executable else a for a in assets]


def automation_sensors() -> list[dg.AutomationConditionSensorDefinition]:
    """The local and the Slurm automation sensor: disjoint targets, on by default."""
    common = {
        "default_status": dg.DefaultSensorStatus.RUNNING,
        "minimum_interval_seconds": MIN_INTERVAL_SECONDS,
        "emit_backfills": False,
    }
    return [
        dg.AutomationConditionSensorDefinition(
            "automation_sensor",
            target=AUTOMATED - ON_SLURM,
            **common,
            description="Keeps every automated asset but the Slurm ones fresh; runs locally.",
        ),
        dg.AutomationConditionSensorDefinition(
            "slurm_automation_sensor",
            target=AUTOMATED & ON_SLURM,
            run_tags=SLURM_RUN_TAGS,
            **common,
            description="Keeps training and the constraint sweep fresh; its runs carry the Slurm tags.",
        ),
    ]
