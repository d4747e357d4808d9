"""Signal-file sensors: .training_complete → checkpoint evaluation; .eval_complete → analysis report.

Each tick lists `$SHARED_DRIVE/models/*/` (or `evaluation/*/`) with os.scandir and stats only the
signal names, so a drive with thousands of experiments costs milliseconds. A file is taken once it
has settled (unchanged for `settle_seconds`), passes its schema and names a known experiment and,
for training, a checkpoint inside the drive.

Cursor: the highest change time handled (`high_water_ns`) and the run keys handled at exactly that
time. Change time is max(mtime, ctime): a signal moved into place keeps the mtime of its temporary
file, which can be older than signals already handled, but its ctime is the moment it appeared, so
it still runs. Only settled files raise the high-water mark, and a settled file's change time is
before the tick started, so a file that appears during a scan is never skipped. Run keys are
`<path relative to the drive>:<sha256 of the content>`: a rewrite with new content runs again, and
the same content never runs twice (Dagster also refuses a run key twice per sensor, which covers a
daemon killed between launching a run and saving the cursor).
"""

import json
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from pipeline_assets.jobs import analysis_report_job, checkpoint_evaluation_job
from core.tags import COMPUTE_TAG, slurm_tags
from pipeline_assets.partitions import experiment_partitions_def
from core.experiment import ConfigError
from resources.experiments import ExperimentCatalog
from resources.storage import SharedDrive
from core.signals import EVAL_COMPLETE, EVAL_FAILED, EXPERIMENT_NAME_RE, MAX_SIGNAL_BYTES, SIGNAL_MODELS, TRAINING_COMPLETE, EvalComplete, EvalFailed, SignalError, TrainingComplete, checkpoint_id, content_sha256, parse_signal, resolve_checkpoint
from core.tags import TAG_CHECKPOINT_ID, TAG_CHECKPOINT_PATH, TAG_CONFIG_HASH, TAG_EVAL_JOB_ID, TAG_EXPERIMENT, TAG_MLFLOW_RUN_ID, TAG_SIGNAL_FILE, TAG_SIGNAL_SHA256, TAG_TRAINING_MLFLOW_RUN_ID, TAG_TRIGGER

SETTLE_SECONDS = 2.0
# Bounds one tick's work (each new file is read, validated and turned into a run) well inside the
# daemon's 60 s sensor timeout; a backlog, e.g. after the cursor was reset, drains over several ticks.
MAX_SIGNALS_PER_TICK = 300
# The daemon evaluates sensors at most every 5 s anyway; a scan costs milliseconds.
MIN_INTERVAL_SECONDS = 5
SETTLE_ENV = "MLGRAPH_SIGNAL_SETTLE_SECONDS"
COMPUTE_ENV = "MLGRAPH_SIGNAL_COMPUTE"
TAG_EVAL_RUN_ID = "mlgraph/eval_run_id"
RUN_KEY_TAG = "dagster/run_key"
_SKIP_MESSAGE_LIMIT = 2000


@dataclass
class SignalCursor:
    high_water_ns: int = 0
    keys: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, raw: str | None) -> "SignalCursor":
        if not raw:
            return cls()
        try:
            data = json.loads(raw)
            return cls(high_water_ns=int(data["high_water_ns"]), keys=sorted(str(k) for k in data["keys"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(
                f"sensor cursor {raw[:200]!r} is not a signal cursor ({exc}). Fix: clear the cursor in the "
                "Dagster UI (Sensors → cursor); every signal is then re-checked and runs that exist are not repeated."
            ) from None

    def serialize(self) -> str:
        return json.dumps({"high_water_ns": self.high_water_ns, "keys": sorted(set(self.keys))}, sort_keys=True)


@dataclass(frozen=True)
class SignalFile:
    """A signal file found by the scan: where it is and when it last changed."""

    path: Path
    experiment: str
    name: str
    changed_ns: int
    size: int
    is_symlink: bool
    dir_is_symlink: bool


@dataclass
class Accepted:
    file: SignalFile
    signal: TrainingComplete | EvalComplete | EvalFailed
    sha256: str
    run_key: str
    checkpoint: Path | None = None


@dataclass
class Rejected:
    file: SignalFile
    reason: str
    run_key: str


def scan(drive: Path, area: str, names: tuple[str, ...]) -> Iterator[SignalFile]:
    """Every `drive/area/*/name` that exists; one lstat per name and directory, nothing is read."""
    base = drive / area
    try:
        entries = os.scandir(base)
    except FileNotFoundError:
        return
    with entries:
        for entry in entries:
            try:
                if not entry.is_dir():
                    continue
                dir_is_symlink = entry.is_symlink()
            except OSError:
                continue
            for name in names:
                path = os.path.join(entry.path, name)
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                yield SignalFile(
                    path=Path(path),
                    experiment=entry.name,
                    name=name,
                    changed_ns=max(st.st_mtime_ns, st.st_ctime_ns),
                    size=st.st_size,
                    is_symlink=stat.S_ISLNK(st.st_mode),
                    dir_is_symlink=dir_is_symlink,
                )


def run_key(drive: Path, path: Path, sha256: str) -> str:
    return f"{path.relative_to(drive).as_posix()}:{sha256}"


def inspect_signal(drive: Path, file: SignalFile) -> Accepted | Rejected:
    """Read and validate one settled signal file (size checked before reading); never raises."""
    unread_key = f"{file.path.relative_to(drive).as_posix()}:unread-{file.changed_ns}-{file.size}"
    if not EXPERIMENT_NAME_RE.match(file.experiment):
        return Rejected(file, f"directory name {file.experiment!r} is not an experiment name", unread_key)
    if file.is_symlink or file.dir_is_symlink:
        real = file.path.resolve()
        if not real.is_relative_to(drive):
            return Rejected(file, f"symlink leads outside the shared drive (to {real})", unread_key)
    try:
        size = file.path.stat().st_size
        if size > MAX_SIGNAL_BYTES:
            return Rejected(file, f"{size} bytes, over the {MAX_SIGNAL_BYTES}-byte limit", unread_key)
        with open(file.path, "rb") as fh:
            data = fh.read(MAX_SIGNAL_BYTES + 1)
    except OSError as exc:
        return Rejected(file, f"cannot read it ({exc.strerror or exc})", unread_key)
    sha = content_sha256(data)
    key = run_key(drive, file.path, sha)
    try:
        signal = parse_signal(data, SIGNAL_MODELS[file.name], source=file.path)
    except SignalError as exc:
        return Rejected(file, f"{exc.reason}. Fix: {exc.fix}", key)
    if signal.experiment != file.experiment:
        return Rejected(file, f"field 'experiment' is {signal.experiment!r} but the file is in directory "
                              f"{file.experiment!r}. Fix: write the signal into its experiment's directory", key)
    checkpoint = None
    if isinstance(signal, TrainingComplete):
        try:
            checkpoint = resolve_checkpoint(drive, signal.checkpoint_path, source=file.path)
        except SignalError as exc:
            return Rejected(file, f"{exc.reason}. Fix: {exc.fix}", key)
    return Accepted(file, signal, sha, key, checkpoint)


@dataclass
class TickPlan:
    """What one tick decided: files to act on, files rejected, files left to settle, and the next cursor."""

    accepted: list[Accepted] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    settling: list[SignalFile] = field(default_factory=list)
    backlog: int = 0
    scanned: int = 0
    cursor: SignalCursor = field(default_factory=SignalCursor)


def plan_tick(drive: Path, area: str, names: tuple[str, ...], cursor: SignalCursor, settle_seconds: float,
              max_files: int = MAX_SIGNALS_PER_TICK, now_ns: int | None = None) -> TickPlan:
    """Scan, keep the settled files changed since the cursor (oldest first, at most about `max_files`),
    inspect them, and advance the cursor to the last one taken."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    settle_ns = int(settle_seconds * 1e9)
    plan = TickPlan(cursor=SignalCursor(cursor.high_water_ns, list(cursor.keys)))
    fresh = []
    for file in scan(drive, area, names):
        plan.scanned += 1
        if file.changed_ns < cursor.high_water_ns:
            continue
        if now_ns - file.changed_ns < settle_ns:
            # Possibly still being written; a later tick takes it once it stops changing.
            plan.settling.append(file)
            continue
        fresh.append(file)
    fresh.sort(key=lambda f: (f.changed_ns, str(f.path)))
    taken = 0
    for position, file in enumerate(fresh):
        # Stop only between distinct change times, so the files left all lie above the new cursor.
        if taken >= max_files and file.changed_ns > plan.cursor.high_water_ns:
            plan.backlog = len(fresh) - position
            break
        outcome = inspect_signal(drive, file)
        if file.changed_ns > plan.cursor.high_water_ns:
            plan.cursor = SignalCursor(file.changed_ns, [])
        plan.cursor.keys.append(outcome.run_key)
        if outcome.run_key in cursor.keys:
            # Handled last time (same content; at most touched or copied over itself).
            continue
        taken += 1
        (plan.accepted if isinstance(outcome, Accepted) else plan.rejected).append(outcome)
    return plan


def _settle_seconds(configured: float | None) -> float:
    if configured is not None:
        return configured
    raw = os.environ.get(SETTLE_ENV)
    return float(raw) if raw else SETTLE_SECONDS


def _route(kind: str) -> dict[str, str]:
    # Read at tick time: an operator can keep signal-driven runs local without a code change.
    if os.environ.get(COMPUTE_ENV, "slurm").strip().lower() == "local":
        return {COMPUTE_TAG: "local"}
    return slurm_tags(kind=kind)


def _existing_runs(instance: dg.DagsterInstance, keys: list[str]) -> dict[str, str]:
    """run key → id of a run that already has it (one query per 500 keys)."""
    found: dict[str, str] = {}
    for i in range(0, len(keys), 500):
        chunk = keys[i: i + 500]
        for run in instance.get_runs(filters=dg.RunsFilter(tags={RUN_KEY_TAG: chunk})):
            found.setdefault(run.tags[RUN_KEY_TAG], run.run_id)
    return found


# (config file, mtime_ns, size) → config hash; the code server lives on between ticks, YAML parsing is slow.
_CONFIG_HASHES: dict[tuple[str, int, int], str] = {}


class _Experiments:
    """Known experiments for one tick: registered partitions, plus YAML files that load (added on the fly)."""

    def __init__(self, instance: dg.DagsterInstance, catalog: ExperimentCatalog):
        self.instance = instance
        self.catalog = catalog
        self._registered: set[str] | None = None
        self.to_add: list[str] = []
        self.config_hashes: dict[str, str] = {}

    def check(self, name: str) -> str:
        """The config hash of a usable experiment; a ValueError says why it is not usable."""
        if name in self.config_hashes:
            return self.config_hashes[name]
        if self._registered is None:
            self._registered = set(self.instance.get_dynamic_partitions(experiment_partitions_def.name))
        path = self.catalog.path(name)
        try:
            st = path.stat()
            cache_key = (str(path), st.st_mtime_ns, st.st_size)
            config_hash = _CONFIG_HASHES.get(cache_key) or self.catalog.load(name).config.config_hash
            _CONFIG_HASHES[cache_key] = config_hash
        except (OSError, ConfigError) as exc:
            state = "registered, but its config does not load" if name in self._registered else "unknown"
            detail = exc if isinstance(exc, ConfigError) else f"{path}: no such experiment config"
            raise ValueError(f"experiment {name!r} is {state}: {detail}") from None
        if name not in self._registered and name not in self.to_add:
            self.to_add.append(name)
        self.config_hashes[name] = config_hash
        return config_hash

    def requests(self) -> list:
        return [experiment_partitions_def.build_add_request(sorted(self.to_add))] if self.to_add else []


def _rel(drive: Path, path: Path) -> str:
    return path.relative_to(drive).as_posix()


def _skip_message(plan: TickPlan, drive: Path, area: str, reasons: list[str], notes: list[str]) -> str:
    parts = []
    if reasons:
        parts.append(f"rejected {len(reasons)}: " + " | ".join(reasons))
    parts.extend(notes)
    if plan.settling:
        parts.append(f"{len(plan.settling)} settling: " + ", ".join(_rel(drive, f.path) for f in plan.settling[:5]))
    if plan.backlog:
        parts.append(f"{plan.backlog} more left for the next tick")
    if not parts:
        parts.append(f"no new signal files ({plan.scanned} seen under {drive / area})")
    message = "; ".join(parts)
    return message if len(message) <= _SKIP_MESSAGE_LIMIT else message[: _SKIP_MESSAGE_LIMIT - 1] + "…"


def _start_tick(
    context: dg.SensorEvaluationContext, storage: SharedDrive, catalog: ExperimentCatalog, subdir: str,
    names: tuple[str, ...], settle_seconds: float, max_per_tick: int,
) -> tuple[Path, TickPlan, _Experiments, list[str], dict[str, str]]:
    """What both sensors start a tick with: the scan's plan, the known experiments, the rejection
    reasons, and the runs that already exist for the accepted files' run keys."""
    drive = storage.root_path
    plan = plan_tick(drive, subdir, names, SignalCursor.parse(context.cursor), settle_seconds, max_per_tick)
    reasons = [item_reason(drive, r) for r in plan.rejected]
    ran = _existing_runs(context.instance, [a.run_key for a in plan.accepted])
    return drive, plan, _Experiments(context.instance, catalog), reasons, ran


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


def build_signal_sensors(
    minimum_interval_seconds: int = MIN_INTERVAL_SECONDS,
    settle_seconds: float | None = None,
    max_per_tick: int = MAX_SIGNALS_PER_TICK,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
) -> tuple[dg.SensorDefinition, dg.SensorDefinition]:
    """The two signal sensors; `settle_seconds` None means $MLGRAPH_SIGNAL_SETTLE_SECONDS at tick time, else 2 s."""

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
        drive, plan, experiments, reasons, ran = _start_tick(
            context, storage, catalog, "models", (TRAINING_COMPLETE,), _settle_seconds(settle_seconds), max_per_tick
        )
        runs, events, notes = [], [], []
        for item in plan.accepted:
            signal: TrainingComplete = item.signal  # type: ignore[assignment]
            rel = _rel(drive, item.file.path)
            try:
                config_hash = experiments.check(signal.experiment)
            except ValueError as exc:
                reasons.append(f"{rel}: {exc}")
                continue
            existing = ran.get(item.run_key)
            if existing:
                notes.append(f"{rel}: this content was already evaluated by run {existing}")
                continue
            ckpt_id = checkpoint_id(item.checkpoint)
            tags = {
                **_signal_tags("evaluation", "training_complete_sensor", item, config_hash),
                TAG_CHECKPOINT_ID: ckpt_id,
                TAG_CHECKPOINT_PATH: str(item.checkpoint),
            }
            if signal.mlflow_run_id:
                tags[TAG_TRAINING_MLFLOW_RUN_ID] = signal.mlflow_run_id
            runs.append(dg.RunRequest(
                run_key=item.run_key,
                partition_key=signal.experiment,
                tags=tags,
                run_config={"ops": {"checkpoint_evaluation": {"config": {"checkpoint_path": str(item.checkpoint)}}}},
            ))
            events.append(dg.AssetMaterialization(
                asset_key="external_checkpoint",
                partition=signal.experiment,
                description=f"checkpoint {ckpt_id} reported by {signal.user}@{signal.hostname}",
                metadata={
                    **{k: v for k, v in signal.model_dump(mode="json", exclude_none=True).items()
                       if k != "metrics"},
                    **{f"metric_{k}": v for k, v in (signal.metrics or {}).items()},
                    "checkpoint_id": ckpt_id,
                    "signal_file": dg.MetadataValue.path(str(item.file.path)),
                    "signal_sha256": item.sha256,
                    "config_hash": config_hash,
                },
            ))
            context.log.info(f"{rel}: evaluating checkpoint {ckpt_id} of {signal.experiment}")
        return _result(context, drive, "models", plan, experiments, runs, events, reasons, notes)

    @dg.sensor(
        name="eval_complete_sensor",
        job=analysis_report_job,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        description="Analyzes each completed evaluation (.eval_complete); reports .eval_failed without analysis.",
    )
    def eval_complete_sensor(
        context: dg.SensorEvaluationContext, storage: SharedDrive, catalog: ExperimentCatalog
    ) -> dg.SensorResult:
        drive, plan, experiments, reasons, ran = _start_tick(
            context, storage, catalog, "evaluation", (EVAL_COMPLETE, EVAL_FAILED), _settle_seconds(settle_seconds),
            max_per_tick,
        )
        runs, events, notes = [], [], []
        for item in plan.accepted:
            signal = item.signal
            rel = _rel(drive, item.file.path)
            try:
                config_hash = experiments.check(signal.experiment)
            except ValueError as exc:
                reasons.append(f"{rel}: {exc}")
                continue
            if isinstance(signal, EvalFailed) or (isinstance(signal, EvalComplete) and signal.status == "failed"):
                # Reported, not analyzed: there is nothing sound to analyze.
                message = signal.error_message or "evaluation reported status 'failed' without a message"
                context.log.error(f"{rel}: evaluation of {signal.experiment} failed (job {signal.job_id}): {message}")
                events.append(dg.AssetObservation(
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
                ))
                notes.append(f"{rel}: evaluation failed ({message[:200]}); reported, not analyzed")
                continue
            existing = ran.get(item.run_key)
            if existing:
                notes.append(f"{rel}: this content was already analyzed by run {existing}")
                continue
            tags = {
                **_signal_tags("analysis", "eval_complete_sensor", item, signal.config_hash or config_hash),
                TAG_EVAL_JOB_ID: signal.job_id,
            }
            for tag, value in ((TAG_CHECKPOINT_ID, signal.checkpoint_id), (TAG_CHECKPOINT_PATH, signal.checkpoint_path),
                               (TAG_EVAL_RUN_ID, signal.dagster_run_id), (TAG_MLFLOW_RUN_ID, signal.mlflow_run_id)):
                if value:
                    tags[tag] = value
            run_config = (
                {"ops": {"analysis_report": {"config": {"checkpoint_id": signal.checkpoint_id}}}}
                if signal.checkpoint_id else {}
            )
            runs.append(dg.RunRequest(run_key=item.run_key, partition_key=signal.experiment, tags=tags,
                                      run_config=run_config))
            context.log.info(f"{rel}: analyzing {signal.experiment} (evaluation job {signal.job_id})")
        return _result(context, drive, "evaluation", plan, experiments, runs, events, reasons, notes)

    return training_complete_sensor, eval_complete_sensor


def item_reason(drive: Path, rejected: Rejected) -> str:
    return f"{_rel(drive, rejected.file.path)}: {rejected.reason}"


def _result(context: dg.SensorEvaluationContext, drive: Path, area: str, plan: TickPlan, experiments: _Experiments,
            runs: list, events: list, reasons: list[str], notes: list[str]) -> dg.SensorResult:
    for reason in reasons:
        context.log.warning(f"rejected signal {reason}")
    for note in notes:
        context.log.info(note)
    return dg.SensorResult(
        run_requests=runs,
        asset_events=events,
        dynamic_partitions_requests=experiments.requests(),
        cursor=plan.cursor.serialize(),
        skip_reason=None if runs else _skip_message(plan, drive, area, reasons, notes),
    )


training_complete_sensor, eval_complete_sensor = build_signal_sensors()
