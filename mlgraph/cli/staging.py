"""Materialize the graph for some experiments in-process, without a daemon: what `mlgraph demo` and tests run.

The stage plan comes from the graph. A Dagster run targets one partitions definition, so each asset
goes in the first stage after all its parents' stages, one stage later than a parent of another
partitions definition: today that gives experiment assets upstream of the constraint sweep, the
experiment × constraint assets, then the experiment assets that read the sweep. The assets are those
automation keeps fresh (`pipeline_assets.automation.AUTOMATED`): not the signal-driven ones, which
only a trainer's signal starts. Each experiment's source is observed first, as the daemon's
`experiment_source_sensor` would, so a daemon started later finds the graph up to date.

Output: by default each run prints one line through `echo` and Dagster's events go to its console
logger, as a plain `execute_in_process` would (`mlgraph demo --verbose`, and the tests). Given an
`event_log` file, the runs log there instead, through a logger handed to the run's config (Dagster
then drops its console logger), together with the `dagster` Python loggers; given a `Progress`, the
same events drive one bar or line per stage (materializations counted), and the model scoreboards and
the failing steps' errors are printed after it.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from mlgraph.cli.progress import Progress
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


# What a materialization's metadata may carry that the demo prints after its stage (the model tables).
TABLE_METADATA = ("scoreboard",)
# Dagster's console format, so the file reads like `--verbose` output.
LOG_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"
EVENT_LOGGER = "mlgraph_event_log"

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


class _RunEvents(logging.Handler):
    """Reads the runs' Dagster events off their log records: counts materializations, keeps model tables."""

    def __init__(self, progress: Progress | None) -> None:
        super().__init__(logging.DEBUG)
        self.progress = progress
        self.tables: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        event = (getattr(record, "dagster_meta", None) or {}).get("dagster_event")
        if event is None or event.event_type != dg.DagsterEventType.ASSET_MATERIALIZATION:
            return
        if self.progress is not None:
            self.progress.advance()
        materialization = event.step_materialization_data.materialization
        for name in TABLE_METADATA:
            value = materialization.metadata.get(name)
            if value is not None:
                where = f"{materialization.partition}: " if materialization.partition else ""
                self.tables.append(f"{where}{materialization.asset_key.to_user_string()} {name}\n{value.value}")


def _event_logger(handlers: list[logging.Handler]) -> dg.LoggerDefinition:
    """A run logger writing every event (DEBUG up) to `handlers`; named in run config, it replaces the console."""

    def build(_context: dg.InitLoggerContext) -> logging.Logger:
        logger = logging.Logger("dagster", logging.DEBUG)  # not registered: nothing propagates to the root
        for handler in handlers:
            logger.addHandler(handler)
        return logger

    return dg.LoggerDefinition(build, description="mlgraph demo: Dagster's event log to a file")


class _OutsideRuns(logging.Handler):
    """Passes the `dagster` Python loggers' records to `target`, but not those a run already captured."""

    def __init__(self, target: logging.Handler) -> None:
        super().__init__(logging.DEBUG)
        self.target = target

    def emit(self, record: logging.LogRecord) -> None:
        # A record a run captured carries dagster_meta: it reaches the file through the run's logger.
        if not hasattr(record, "dagster_meta"):
            self.target.handle(record)


@contextlib.contextmanager
def _dagster_python_logs_to(target: logging.Handler) -> Iterator[None]:
    """Send the `dagster` Python loggers' records to `target` (not the terminal) while the runs go."""
    base = logging.getLogger("dagster")
    handler = _OutsideRuns(target)
    propagate = base.propagate
    base.addHandler(handler)
    base.propagate = False
    try:
        yield
    finally:
        base.removeHandler(handler)
        base.propagate = propagate


def failure_lines(result: dg.ExecuteInProcessResult) -> list[str]:
    """What went wrong in a failed run: each failing step and its error (the innermost cause, where raised)."""
    errors = [(e.step_key, e.step_failure_data.error) for e in result.all_events if e.is_step_failure]
    if not errors:  # failed outside a step (resources, the plan): the engine's or the run's error
        errors = [(None, getattr(e.event_specific_data, "error", None)) for e in result.all_events]
    lines = []
    for step, error in errors:
        if error is None:
            continue
        while error.cause is not None:  # Dagster wraps the asset's own exception
            error = error.cause
        where = next((frame.strip().splitlines()[0] for frame in reversed(error.stack) if frame.strip()), "")
        lines.append(f"{step or 'run'} failed: {error.message.strip()}" + (f"\n  at {where}" if where else ""))
    return lines or [e.message or "run failed" for e in result.all_events if e.is_run_failure]


def materialize_experiments(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    experiments: list[str],
    selection: Iterable[dg.AssetKey] | None = None,
    constraints: list[str] | None = None,
    echo: Callable[[str], None] = print,
    raise_on_error: bool = False,
    event_log: Path | None = None,
    progress: Progress | None = None,
) -> MaterializeSummary:
    """Register the experiments as partitions and materialize every selected asset for them.

    `event_log`: append Dagster's events and Python logs there instead of the console. `progress`: one
    bar or line per stage instead of `echo`'s line per run, then the model tables and any failure.
    """
    known = set(instance.get_dynamic_partitions(experiment_partitions_def.name))
    missing = [e for e in experiments if e not in known]
    if missing:
        instance.add_dynamic_partitions(experiment_partitions_def.name, missing)
    observe_sources(instance, experiments)
    job = defs.resolve_implicit_global_asset_job_def()
    run_config = None
    events = _RunEvents(progress)
    python_logs: contextlib.AbstractContextManager = contextlib.nullcontext()
    file_handler = None
    if event_log is not None or progress is not None:
        handlers: list[logging.Handler] = [events]
        loggers = {EVENT_LOGGER: _event_logger(handlers)}
        if event_log is None:  # keep the console beside the progress
            loggers = {**job.loggers, **loggers}
        else:
            event_log.parent.mkdir(parents=True, exist_ok=True)
            file_handler = logging.FileHandler(event_log, encoding="utf-8")
            file_handler.setFormatter(logging.Formatter(LOG_FORMAT))
            handlers.append(file_handler)
            python_logs = _dagster_python_logs_to(file_handler)
        job = job.with_logger_defs(loggers)
        run_config = {"loggers": {name: {} for name in loggers}}
        if "console" in loggers:
            run_config["loggers"]["console"] = {"config": {"log_level": "DEBUG"}}
    constraint_keys = constraints or constraint_partitions_def.get_partition_keys()
    runner = _StageRunner(job, instance, run_config, raise_on_error, events, progress, echo, event_log)
    start = time.perf_counter()
    stages = plan_stages(defs, selection)
    say = progress.echo if progress is not None else echo
    try:
        with python_logs:
            for experiment in experiments:
                for stage in stages:
                    if not runner.run(experiment, stage, constraint_keys):
                        # Later stages read this one's outputs; running them would only add noise.
                        say(f"[{experiment}] skipping later stages after a failure")
                        break
    finally:
        if progress is not None:
            progress.close()
        if file_handler is not None:
            file_handler.close()
    runner.summary.seconds = time.perf_counter() - start
    return runner.summary


@dataclass
class _StageRunner:
    job: dg.JobDefinition
    instance: dg.DagsterInstance
    run_config: dict | None
    raise_on_error: bool
    events: _RunEvents
    progress: Progress | None
    echo: Callable[[str], None]
    event_log: Path | None
    summary: MaterializeSummary = field(default_factory=MaterializeSummary)

    def run(self, experiment: str, stage: StagePlan, constraint_keys: list[str]) -> bool:
        """One stage for one experiment: one run per partition; False when a run failed."""
        if stage.multi:
            keys = [dg.MultiPartitionKey({"experiment": experiment, "constraint": c}) for c in constraint_keys]
        else:
            keys = [experiment]
        progress = self.progress
        if progress is not None:
            progress.start(stage.name, experiment, len(stage.keys) * len(keys))
        failed: list[str] = []
        errors: list[str] = []
        run_ids: list[str] = []
        for partition_key in keys:
            t0 = time.perf_counter()
            if progress is not None and stage.multi:
                progress.running(partition_key.keys_by_dimension["constraint"])
            result = self.job.execute_in_process(
                instance=self.instance,
                partition_key=partition_key,
                asset_selection=stage.keys,
                raise_on_error=self.raise_on_error,
                run_config=self.run_config,
            )
            self.summary.runs += 1
            self.summary.assets.update(k.to_user_string() for k in stage.keys)
            self.summary.partitions.add(str(partition_key))
            run_ids.append(result.run_id)
            if progress is None:
                self.echo(
                    f"[{stage.name}] {partition_key}: {len(stage.keys)} asset(s) "
                    f"{'ok' if result.success else 'FAILED'} in {time.perf_counter() - t0:.1f}s "
                    f"(run {result.run_id[:8]})"
                )
            if not result.success:
                failed.append(str(partition_key))
                self.summary.failed.append(f"{stage.name}:{partition_key}")
                if self.event_log is not None:  # the console did not show the error: say it here
                    errors += [f"{partition_key}: {line}" for line in failure_lines(result)]
        if progress is not None:
            note = f"run {run_ids[0][:8]}" if len(run_ids) == 1 else f"{len(run_ids)} runs"
            if failed:
                note += f"; failed: {', '.join(failed)}"
            progress.finish(not failed, note)
            for table in self.events.tables:
                progress.echo(table)
        self.events.tables.clear()
        if errors:
            errors.append(f"full log: {self.event_log}")
            for line in errors:
                progress.echo(line, stream=sys.stderr) if progress is not None else self.echo(line)
        return not failed
