"""Signal-file sensors: .training_complete → checkpoint evaluation; .eval_complete → analysis report.

What a tick finds, and how its cursor moves, is `mlgraph.external.signal_scan`. Here each accepted signal of a
known experiment becomes a run request tagged with the signal that caused it (or, for a failed
evaluation, an observation saying so), and a tick that requests nothing says why. A signal in a
directory that names no experiment config is rejected before it is read, and a tick lists at most
MAX_LISTED_REJECTIONS rejections one by one (logs, alerts, skip reason) and counts the rest, so a flood
of junk files costs a stat each and one line. An unexpected error while turning one accepted signal into
a run rejects that signal (its traceback logged); the other signals of the tick still run.
"""

import os
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg

from mlgraph.core.catalog import ConfigHashCache
from mlgraph.core.experiment import ConfigError
from mlgraph.core.signals import (
    EVAL_COMPLETE,
    EVAL_FAILED,
    TRAINING_COMPLETE,
    EvalComplete,
    EvalFailed,
    TrainingComplete,
    checkpoint_id,
)
from mlgraph.core.tags import (
    COMPUTE_LOCAL,
    COMPUTE_TAG,
    DAGSTER_RUN_KEY_TAG,
    TAG_CHECKPOINT_ID,
    TAG_CHECKPOINT_PATH,
    TAG_CONFIG_HASH,
    TAG_EVAL_JOB_ID,
    TAG_EVAL_RUN_ID,
    TAG_EXPERIMENT,
    TAG_MLFLOW_RUN_ID,
    TAG_SIGNAL_FILE,
    TAG_SIGNAL_SHA256,
    TAG_TRAINING_MLFLOW_RUN_ID,
    TAG_TRIGGER,
    slurm_tags,
)
from mlgraph.core.untrusted import printable
from mlgraph.external.signal_scan import (
    MAX_SIGNALS_PER_TICK,
    Accepted,
    SignalCursor,
    TickPlan,
    plan_tick,
    rejection_reason,
    skip_message,
)
from pipeline_assets.analysis.report_assets import AnalysisReportConfig
from pipeline_assets.external.assets import CheckpointEvaluationConfig
from pipeline_assets.jobs import checkpoint_comparison_report_job, checkpoint_evaluation_job
from pipeline_assets.partitions import experiment_partitions_def
from resources.experiments import ExperimentCatalog
from resources.storage import SharedDrive
from sensors.alerts import alert_rejected_signals

# A file younger than this may still be written by a writer that does not rename into place: one that
# already reads as a complete, valid signal is taken at once, any other waits this long before it is
# judged (mlgraph.external.signal_scan). ctime ordering re-reads a file rewritten later anyway.
SETTLE_SECONDS = 0.5
# The daemon's loop (every 5 s) is the real interval. At 5 s this bound raced the loop — the loop came
# back a hair under 5 s after the last tick's start, skipped the sensor, and left the drive unwatched for
# 10 s — so it only stops a second tick within the same second.
MIN_INTERVAL_SECONDS = 1
# Dagster's sensor daemon starts an evaluation at most every 5 s (its loop), which alone made signal →
# run take 2.5 s on average and 5 s at worst before settling and launching. A tick that finds nothing
# new keeps looking, once a second, for up to LISTEN_SECONDS and returns as soon as a signal settles:
# the daemon then watches the drive almost continuously at one scan per second (the design documents'
# inotify, on any file system, a network mount included).
# 3.5 s, not 4: a tick also spends up to a second planning and reporting, and one still running when the
# loop comes back is skipped for a whole loop.
LISTEN_SECONDS = 3.5
LISTEN_POLL_SECONDS = 1.0
SETTLE_ENV = "MLGRAPH_SIGNAL_SETTLE_SECONDS"
LISTEN_ENV = "MLGRAPH_SIGNAL_LISTEN_SECONDS"
COMPUTE_ENV = "MLGRAPH_SIGNAL_COMPUTE"
# Rejections a tick logs, alerts and shows one by one; the rest are counted in one line. A hundred thousand
# junk files alerted one by one would flood the alert log, the webhook and the tick's log.
MAX_LISTED_REJECTIONS = 20


_CONFIG_HASHES = ConfigHashCache()


def _settle_seconds(configured: float | None) -> float:
    if configured is not None:
        return configured
    raw = os.environ.get(SETTLE_ENV)
    return float(raw) if raw else SETTLE_SECONDS


def _listen_seconds(configured: float | None) -> float:
    if configured is not None:
        return configured
    raw = os.environ.get(LISTEN_ENV)
    return float(raw) if raw else LISTEN_SECONDS


def listen(
    make_tick: Callable[[], "_Tick"],
    listen_seconds: float,
    poll_seconds: float = LISTEN_POLL_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
) -> "_Tick":
    """A tick, re-planned every `poll_seconds` while it finds nothing to do, for up to `listen_seconds`.

    Anything to say — a signal accepted or rejected, a backlog — ends the wait; files still settling do not.
    """
    deadline = monotonic() + listen_seconds
    tick = make_tick()
    while not tick.has_news() and monotonic() + poll_seconds <= deadline:
        sleep(poll_seconds)
        tick = make_tick()
    return tick


def _route(kind: str) -> dict[str, str]:
    # Read at tick time: an operator can keep signal-driven runs local without a code change.
    if os.environ.get(COMPUTE_ENV, "slurm").strip().lower() == COMPUTE_LOCAL:
        return {COMPUTE_TAG: COMPUTE_LOCAL}
    return slurm_tags(kind=kind)


def _existing_runs(instance: dg.DagsterInstance, keys: list[str]) -> dict[str, str]:
    """run key → id of a run that already has it (one query per 500 keys)."""
    found: dict[str, str] = {}
    for i in range(0, len(keys), 500):
        chunk = keys[i : i + 500]
        for run in instance.get_runs(filters=dg.RunsFilter(tags={DAGSTER_RUN_KEY_TAG: chunk})):
            found.setdefault(run.tags[DAGSTER_RUN_KEY_TAG], run.run_id)
    return found


class _Experiments:
    """Known experiments for one tick: registered partitions, plus YAML files that load (added on the fly)."""

    def __init__(self, instance: dg.DagsterInstance, catalog: ExperimentCatalog, cache: ConfigHashCache):
        self.instance = instance
        self.catalog = catalog
        self.cache = cache
        self._registered: set[str] | None = None
        self._listed = False
        # None after a listing that failed: then every signal is read, and `check` names the problem per file.
        self._configured: set[str] | None = None
        self._config_home: Path | None = None
        self.to_add: list[str] = []
        self.config_hashes: dict[str, str] = {}

    def registered(self, name: str) -> bool:
        if self._registered is None:
            self._registered = set(self.instance.get_dynamic_partitions(experiment_partitions_def.name))
        return name in self._registered

    def problem(self, name: str) -> str | None:
        """Why a signal in directory `name` is unusable, when its name alone tells: no config file. One listing
        of the config directory per tick, so junk directories by the thousand cost a set lookup each."""
        if not self._listed:
            self._listed = True
            # Resolved once: catalog.path resolves the config directory on every call.
            self._config_home = self.catalog.experiments_dir
            try:
                self._configured = set(self.catalog.names())
            except OSError:
                self._configured = None
        if self._configured is None or name in self._configured:
            return None
        state = "registered, but its config does not load" if self.registered(name) else "unknown"
        return (
            f"experiment {name!r} is {state}: {self._config_home}/{name}.yaml: no such experiment config. Fix: "
            "add that config, then rewrite the signal (it is re-checked when it changes), or remove the directory"
        )

    def check(self, name: str) -> str:
        """The config hash of a usable experiment; a ValueError says why it is not usable."""
        if name in self.config_hashes:
            return self.config_hashes[name]
        path = self.catalog.path(name)
        try:
            config_hash = self.cache.config_hash(path, lambda: self.catalog.load(name).config.config_hash)
        except (OSError, ConfigError) as exc:
            state = "registered, but its config does not load" if self.registered(name) else "unknown"
            detail = exc if isinstance(exc, ConfigError) else f"{path}: no such experiment config"
            raise ValueError(f"experiment {name!r} is {state}: {detail}") from None
        if not self.registered(name) and name not in self.to_add:
            self.to_add.append(name)
        self.config_hashes[name] = config_hash
        return config_hash

    def requests(self) -> list:
        return [experiment_partitions_def.build_add_request(sorted(self.to_add))] if self.to_add else []


def _signal_tags(kind: str, sensor_name: str, item: Accepted, config_hash: str) -> dict[str, str]:
    """Routing plus the tags linking a run to the signal file that caused it."""
    return {
        **_route(kind),
        TAG_TRIGGER: sensor_name,
        TAG_SIGNAL_FILE: str(item.file.path),
        TAG_SIGNAL_SHA256: item.sha256,
        TAG_EXPERIMENT: item.signal.experiment,
        TAG_CONFIG_HASH: config_hash,
    }


def _evaluation_request(item: Accepted, config_hash: str) -> tuple[dg.RunRequest, dg.AssetMaterialization]:
    """The checkpoint's evaluation run, and the external_checkpoint materialization that records it."""
    signal: TrainingComplete = item.signal  # type: ignore[assignment]
    ckpt_id = checkpoint_id(item.checkpoint)
    tags = {
        **_signal_tags("evaluation", "training_complete_sensor", item, config_hash),
        TAG_CHECKPOINT_ID: ckpt_id,
        TAG_CHECKPOINT_PATH: str(item.checkpoint),
    }
    if signal.mlflow_run_id:
        tags[TAG_TRAINING_MLFLOW_RUN_ID] = signal.mlflow_run_id
    request = dg.RunRequest(
        run_key=item.run_key,
        partition_key=signal.experiment,
        tags=tags,
        run_config=dg.RunConfig(
            ops={"checkpoint_evaluation": CheckpointEvaluationConfig(checkpoint_path=str(item.checkpoint))}
        ),
    )
    event = dg.AssetMaterialization(
        asset_key="external_checkpoint",
        partition=signal.experiment,
        description=f"checkpoint {ckpt_id} reported by {signal.user}@{signal.hostname}",
        metadata={
            **{k: v for k, v in signal.model_dump(mode="json", exclude_none=True).items() if k != "metrics"},
            **{f"metric_{k}": v for k, v in (signal.metrics or {}).items()},
            "checkpoint_id": ckpt_id,
            "signal_file": dg.MetadataValue.path(str(item.file.path)),
            "signal_sha256": item.sha256,
            "config_hash": config_hash,
        },
    )
    return request, event


def _failed_evaluation(item: Accepted, message: str) -> dg.AssetObservation:
    signal: EvalComplete | EvalFailed = item.signal  # type: ignore[assignment]
    return dg.AssetObservation(
        asset_key="checkpoint_evaluation",
        partition=signal.experiment,
        description=f"evaluation failed: {message[:200]}",
        metadata={
            "status": "failed",
            "error_message": message,
            "error_type": getattr(signal, "error_type", None) or "unknown",
            "job_id": signal.job_id,
            "checkpoint_id": signal.checkpoint_id or "unknown",
            "dagster_run_id": signal.dagster_run_id or "none",
            "signal_file": dg.MetadataValue.path(str(item.file.path)),
            "signal_sha256": item.sha256,
        },
    )


def _analysis_request(item: Accepted, config_hash: str) -> dg.RunRequest:
    signal: EvalComplete = item.signal  # type: ignore[assignment]
    tags = {
        **_signal_tags("analysis", "eval_complete_sensor", item, signal.config_hash or config_hash),
        TAG_EVAL_JOB_ID: signal.job_id,
    }
    for tag, value in (
        (TAG_CHECKPOINT_ID, signal.checkpoint_id),
        (TAG_CHECKPOINT_PATH, signal.checkpoint_path),
        (TAG_EVAL_RUN_ID, signal.dagster_run_id),
        (TAG_MLFLOW_RUN_ID, signal.mlflow_run_id),
    ):
        if value:
            tags[tag] = value
    run_config = (
        dg.RunConfig(ops={"checkpoint_comparison_report": AnalysisReportConfig(checkpoint_id=signal.checkpoint_id)})
        if signal.checkpoint_id
        else None
    )
    return dg.RunRequest(run_key=item.run_key, partition_key=signal.experiment, tags=tags, run_config=run_config)


class _Tick:
    """One sensor evaluation: the scan's plan, the known experiments, and what to say about each file."""

    def __init__(
        self,
        context: dg.SensorEvaluationContext,
        storage: SharedDrive,
        catalog: ExperimentCatalog,
        base: Path,
        names: tuple[str, ...],
        settle_seconds: float,
        max_per_tick: int,
        now_ns: int,
    ):
        self.context = context
        self.drive = storage.root_path
        self.experiments = _Experiments(context.instance, catalog, _CONFIG_HASHES)
        self.plan: TickPlan = plan_tick(
            self.drive,
            base,
            names,
            SignalCursor.load(context.cursor),
            settle_seconds,
            max_per_tick,
            now_ns,
            experiment_problem=self.experiments.problem,
        )
        listed = self.plan.rejected[:MAX_LISTED_REJECTIONS]
        self.reasons = [rejection_reason(r) for r in listed]
        self.unlisted = len(self.plan.rejected) - len(listed)
        for rejected in self.plan.rejected:
            if rejected.traceback:
                context.log.error(
                    f"signal check failed unexpectedly: {rejection_reason(rejected)}\n{rejected.traceback}"
                )
        self.notes: list[str] = []
        self.runs: list[dg.RunRequest] = []
        self.events: list = []
        self._ran = _existing_runs(context.instance, [a.run_key for a in self.plan.accepted])

    def has_news(self) -> bool:
        return bool(self.plan.accepted or self.plan.rejected or self.plan.backlog)

    def rel(self, item: Accepted) -> str:
        return item.file.rel

    def config_hash(self, item: Accepted) -> str | None:
        """The experiment's config hash, or None (and the reason recorded) when it is not usable."""
        try:
            return self.experiments.check(item.signal.experiment)
        except ValueError as exc:
            self.reasons.append(f"{self.rel(item)}: {exc}")
            return None

    @contextmanager
    def guard(self, item: Accepted) -> Iterator[None]:
        """The per-signal boundary: an unexpected error rejects this signal, logged with its traceback."""
        try:
            yield
        except Exception as exc:
            reason = printable(
                f"{self.rel(item)}: unexpected error while requesting its run "
                f"({type(exc).__name__}: {str(exc)[:300]}). Fix: report this mlgraph bug with "
                "the traceback from the sensor log"
            )
            self.reasons.append(reason)
            self.context.log.error(f"{reason}\n{traceback.format_exc()}")

    def already_ran(self, item: Accepted, verb: str) -> bool:
        existing = self._ran.get(item.run_key)
        if existing:
            self.notes.append(f"{self.rel(item)}: this content was already {verb} by run {existing}")
        return bool(existing)

    def result(self) -> dg.SensorResult:
        reasons = list(self.reasons)
        if self.unlisted:
            reasons.append(
                f"{self.plan.base}: {self.unlisted} more signal files rejected in this tick, not listed one by one "
                f"(the first {MAX_LISTED_REJECTIONS} are). Fix: correct or remove them; a file in a directory "
                "that names no experiment config is rejected unread"
            )
        for reason in reasons:
            self.context.log.warning(f"rejected signal {printable(reason)}")
        alert_rejected_signals(self.drive, reasons, self.context.log)
        for note in self.notes:
            self.context.log.info(printable(note))
        return dg.SensorResult(
            run_requests=self.runs,
            asset_events=self.events,
            dynamic_partitions_requests=self.experiments.requests(),
            cursor=self.plan.cursor.dump(),
            skip_reason=None if self.runs else skip_message(self.plan, self.reasons, self.notes, self.unlisted),
        )


def _handle_evaluation_signal(tick: _Tick, item: Accepted) -> None:
    """.eval_complete → an analysis run; a failed evaluation → an observation saying so, no analysis."""
    signal = item.signal
    config_hash = tick.config_hash(item)
    if config_hash is None:
        return
    if isinstance(signal, EvalFailed) or (isinstance(signal, EvalComplete) and signal.status == "failed"):
        # Reported, not analyzed: there is nothing sound to analyze.
        message = signal.error_message or "evaluation reported status 'failed' without a message"
        tick.context.log.error(
            f"{tick.rel(item)}: evaluation of {signal.experiment} failed (job {signal.job_id}): {message}"
        )
        tick.events.append(_failed_evaluation(item, message))
        tick.notes.append(f"{tick.rel(item)}: evaluation failed ({message[:200]}); reported, not analyzed")
        return
    if tick.already_ran(item, "analyzed"):
        return
    tick.runs.append(_analysis_request(item, config_hash))
    tick.context.log.info(f"{tick.rel(item)}: analyzing {signal.experiment} (evaluation job {signal.job_id})")


def build_signal_sensors(
    minimum_interval_seconds: int = MIN_INTERVAL_SECONDS,
    settle_seconds: float | None = None,
    max_per_tick: int = MAX_SIGNALS_PER_TICK,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
    clock: Callable[[], int] = time.time_ns,
    listen_seconds: float | None = None,
) -> tuple[dg.SensorDefinition, dg.SensorDefinition]:
    """The two signal sensors; `settle_seconds` None means $MLGRAPH_SIGNAL_SETTLE_SECONDS at tick time, else
    SETTLE_SECONDS; `listen_seconds` None means $MLGRAPH_SIGNAL_LISTEN_SECONDS, else LISTEN_SECONDS (0: one
    scan per tick). `clock` (wall time in ns) decides which files have settled."""

    @dg.sensor(
        name="training_complete_sensor",
        job=checkpoint_evaluation_job,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        description="Evaluates each checkpoint a trainer reports in models/{experiment}/.training_complete.",
    )
    def training_complete_sensor(
        context: dg.SensorEvaluationContext, storage: SharedDrive, catalog: ExperimentCatalog
    ) -> dg.SensorResult:
        tick = listen(
            lambda: _Tick(
                context,
                storage,
                catalog,
                storage.models_root(),
                (TRAINING_COMPLETE,),
                _settle_seconds(settle_seconds),
                max_per_tick,
                clock(),
            ),
            _listen_seconds(listen_seconds),
        )
        for item in tick.plan.accepted:
            with tick.guard(item):
                config_hash = tick.config_hash(item)
                if config_hash is None or tick.already_ran(item, "evaluated"):
                    continue
                request, event = _evaluation_request(item, config_hash)
                tick.runs.append(request)
                tick.events.append(event)
                context.log.info(
                    f"{tick.rel(item)}: evaluating checkpoint {request.tags[TAG_CHECKPOINT_ID]} "
                    f"of {item.signal.experiment}"
                )
        return tick.result()

    @dg.sensor(
        name="eval_complete_sensor",
        job=checkpoint_comparison_report_job,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        description="Analyzes each completed evaluation (.eval_complete); reports .eval_failed without analysis.",
    )
    def eval_complete_sensor(
        context: dg.SensorEvaluationContext, storage: SharedDrive, catalog: ExperimentCatalog
    ) -> dg.SensorResult:
        tick = listen(
            lambda: _Tick(
                context,
                storage,
                catalog,
                storage.evaluation_root(),
                (EVAL_COMPLETE, EVAL_FAILED),
                _settle_seconds(settle_seconds),
                max_per_tick,
                clock(),
            ),
            _listen_seconds(listen_seconds),
        )
        for item in tick.plan.accepted:
            with tick.guard(item):
                _handle_evaluation_signal(tick, item)
        return tick.result()

    return training_complete_sensor, eval_complete_sensor


training_complete_sensor, eval_complete_sensor = build_signal_sensors()
