"""What the page shows, collected read-only: runs from the Dagster instance, Slurm's view of their jobs,
each experiment's latest training signal, and the open alerts. Plain values; render.py turns them into HTML."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from mlgraph.core.drive import DriveLayout
from mlgraph.core.experiment import is_experiment_name
from mlgraph.core.signals import SignalError, TrainingComplete, read_signal
from mlgraph.core.tags import (
    DAGSTER_PARTITION_TAG,
    SLURM_ELAPSED_TAG,
    SLURM_JOB_ID_TAG,
    SLURM_KIND_TAG,
    SLURM_LOG_TAG,
    SLURM_STATE_TAG,
    SLURM_TIME_TAG,
    TAG_MLFLOW_RUN_ID,
    TAG_TRAINING_MLFLOW_RUN_ID,
    experiment_tag,
)
from mlgraph.dashboard.file_cache import StatCache
from mlgraph.dashboard.live import LiveCache, LiveMetric
from mlgraph.dashboard.slurm_poller import SlurmSnapshot
from mlgraph.slurm.jobs import FAILED_STATES, SlurmJob

STATUSES = ("complete", "running", "failed")
# Dagster run statuses by the colour they get (values of dg.DagsterRunStatus).
_COMPLETE_RUNS = {"SUCCESS"}
_FAILED_RUNS = {"FAILURE", "CANCELED"}
# Slurm states a person should read as words, not codes.
STATE_WORDS = {
    "NODE_FAIL": "node failure",
    "OUT_OF_MEMORY": "out of memory",
    "TIMEOUT": "time limit reached",
    "CANCELLED": "cancelled",
    "PREEMPTED": "preempted",
    "BOOT_FAIL": "node boot failure",
}
_KIND_BY_JOB = {
    "checkpoint_evaluation_job": "evaluation",
    "checkpoint_comparison_report_job": "analysis",
    "training_job": "training",
}
_MAX_EXPERIMENT_DIRS = 2000
# Dagster's implicit job for "materialize these assets" (`__ASSET_JOB`, `__anonymous_asset_job_...`): the run is
# described by its asset selection, not by that name.
_IMPLICIT_ASSET_JOBS = ("__ASSET_JOB", "__anonymous_asset_job")
_RANGE_TAGS = ("dagster/asset_partition_range_start", "dagster/asset_partition_range_end")
# The asset keys a row keeps (its hover text lists them; the cell names the first few).
MAX_ASSETS = 50
# Paging: newest first, `per_page` runs a page; page 1 also lists older failed runs, up to FAILED_ON_FIRST_PAGE.
DEFAULT_PER_PAGE = 100
MAX_PER_PAGE = 500
MAX_PAGE = 1_000_000
FAILED_ON_FIRST_PAGE = 100


@dataclass(frozen=True)
class RunRow:
    run_id: str
    job_name: str
    kind: str
    experiment: str
    status: str  # complete | running | failed (the colour)
    label: str  # what the status cell says, e.g. "FAILURE · TIMEOUT (time limit reached)"
    dagster_status: str
    slurm_job_id: str | None
    slurm_state: str | None
    reason: str | None
    submitted: str | None
    started: str | None
    elapsed: str | None
    time_limit: str | None
    mlflow_run_id: str | None
    log_path: str | None
    created: float
    # What ran besides the job: the run's asset selection (None: the whole job) and its partition (or range).
    assets: tuple[str, ...] | None = None
    assets_total: int = 0
    partition: str | None = None

    @property
    def implicit_job(self) -> bool:
        return self.job_name.startswith(_IMPLICIT_ASSET_JOBS)


@dataclass(frozen=True)
class TrainingSignal:
    experiment: str
    signal: TrainingComplete | None = None
    error: str | None = None


@dataclass
class DashboardState:
    runs: list[RunRow]
    total_runs: int
    experiments: list[str]
    signals: dict[str, TrainingSignal]
    queue: list[SlurmJob]
    slurm: SlurmSnapshot
    alerts: list[dict]
    # experiment -> kind -> its most recent run (unfiltered by status: a failure stays visible)
    latest: dict[str, dict[str, RunRow]] = field(default_factory=dict)
    generated_at: float = field(default_factory=time.time)
    # Paging: `runs` is page `page` of the `matched` runs the filters select, `per_page` a page.
    experiment_filter: str = ""
    status_filter: str = ""
    matched: int = 0
    page: int = 1
    per_page: int = DEFAULT_PER_PAGE
    # Page 1 only (no status filter): failed runs older than the page, newest first, at most FAILED_ON_FIRST_PAGE,
    # and how many there are in all (the rest are a link away: ?status=failed).
    older_failed: list[RunRow] = field(default_factory=list)
    older_failed_total: int = 0
    # run id -> (page, whether the status filter is kept) for the experiments table's links to a run's row.
    run_pages: dict[str, tuple[int, bool]] = field(default_factory=dict)
    # experiment -> its live metric and trend (delayed labels; only experiments with a live_performance report)
    live: dict[str, LiveMetric] = field(default_factory=dict)

    @property
    def pages(self) -> int:
        return max(1, -(-self.matched // self.per_page))


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    # Local time, as Slurm prints its own submit and start times: one clock on the page.
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%dT%H:%M:%S")


def _duration(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    days, rest = divmod(seconds, 86400)
    clock = f"{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}-{clock}" if days else clock


def run_experiment(tags: Mapping[str, str]) -> str:
    """The experiment a run names (mlgraph.core.tags.EXPERIMENT_TAGS), "" for none."""
    named = experiment_tag(tags)
    return named[1].split("|", 1)[0] if named else ""


def classify(dagster_status: str, slurm_state: str | None) -> tuple[str, str]:
    """(colour, words): Dagster's verdict on a finished run wins; Slurm's state explains it or an unfinished run."""
    words = dagster_status
    if slurm_state and slurm_state != dagster_status:
        named = STATE_WORDS.get(slurm_state)
        words += f" · {slurm_state}" + (f" ({named})" if named else "")
    if dagster_status in _COMPLETE_RUNS:
        return "complete", words
    if dagster_status in _FAILED_RUNS or (slurm_state in FAILED_STATES):
        return "failed", words
    return "running", words


def _partition(tags: Mapping[str, str]) -> str | None:
    if partition := tags.get(DAGSTER_PARTITION_TAG):
        return partition
    start, end = (tags.get(name) for name in _RANGE_TAGS)
    return f"{start}…{end}" if start and end else None


def _assets(run) -> tuple[tuple[str, ...] | None, int]:
    selection = run.asset_selection
    if not selection:  # None: the whole job; empty: an op job (no assets)
        return None, 0
    names = sorted(key.to_user_string() for key in selection)
    return tuple(names[:MAX_ASSETS]), len(names)


def build_row(record, slurm: SlurmSnapshot, now: float) -> RunRow:
    run = record.dagster_run
    tags = run.tags
    job_id = tags.get(SLURM_JOB_ID_TAG)
    job = slurm.job(job_id)
    state = job.state if job else tags.get(SLURM_STATE_TAG)
    status, label = classify(run.status.value, state)
    raw = job.raw if job else {}
    assets, assets_total = _assets(run)
    start_ts, end_ts = record.start_time, record.end_time
    # Slurm's own figure first (the live queue, the completion record, or what job_end tagged at the end).
    elapsed = (job.elapsed if job else None) or tags.get(SLURM_ELAPSED_TAG)
    if elapsed is None and start_ts:
        elapsed = _duration((end_ts or now) - start_ts)
    return RunRow(
        run_id=run.run_id,
        job_name=run.job_name,
        # A run of any other job has no kind: the page names its job, assets and partition instead.
        kind=tags.get(SLURM_KIND_TAG) or _KIND_BY_JOB.get(run.job_name, ""),
        experiment=run_experiment(tags),
        status=status,
        label=label,
        dagster_status=run.status.value,
        slurm_job_id=job_id,
        slurm_state=state,
        reason=job.reason if job and job.reason not in (None, "None") else None,
        submitted=raw.get("SubmitTime") or _iso(record.create_timestamp.timestamp()),
        started=raw.get("StartTime") or _iso(start_ts),
        elapsed=elapsed,
        time_limit=(job.time_limit if job else None) or tags.get(SLURM_TIME_TAG),
        mlflow_run_id=tags.get(TAG_MLFLOW_RUN_ID) or tags.get(TAG_TRAINING_MLFLOW_RUN_ID),
        log_path=tags.get(SLURM_LOG_TAG),
        created=record.create_timestamp.timestamp(),
        assets=assets,
        assets_total=assets_total,
        partition=_partition(tags),
    )


class SignalCache:
    """Each experiment's parsed `.training_complete`, reread only when the file's (mtime, size, inode) changes."""

    def __init__(self) -> None:
        self._files: StatCache[TrainingSignal] = StatCache()

    def read(self, drive: DriveLayout, experiment: str) -> TrainingSignal | None:
        path = drive.training_complete_signal(experiment)

        def parsed() -> TrainingSignal:
            try:
                signal, _ = read_signal(path, TrainingComplete, within=drive.root_path)
                return TrainingSignal(experiment, signal=signal)
            except SignalError as exc:
                return TrainingSignal(experiment, error=str(exc))

        return self._files.get(path, parsed)


def signal_experiments(drive: DriveLayout) -> list[str]:
    """Experiments with a directory under models/ (where trainers drop `.training_complete`)."""
    try:
        with os.scandir(drive.models_root()) as entries:
            names = [e.name for e in itertools.islice(entries, _MAX_EXPERIMENT_DIRS) if is_experiment_name(e.name)]
    except OSError:
        return []
    return names


def matches(row: RunRow, experiment: str, status: str) -> bool:
    """The page's filter: experiment is a substring search (case-insensitive), status one of STATUSES or empty."""
    return (not experiment or experiment.lower() in row.experiment.lower()) and (not status or row.status == status)


def _page_of(rows: list[RunRow], wanted: set[str], per_page: int) -> dict[str, int]:
    found = {}
    for index, row in enumerate(rows):
        if row.run_id in wanted:
            found[row.run_id] = index // per_page + 1
    return found


def collect(
    records: Iterable,
    slurm: SlurmSnapshot,
    drive: DriveLayout,
    signals: SignalCache,
    alerts: list[dict],
    experiment: str = "",
    status: str = "",
    page: int = 1,
    per_page: int = DEFAULT_PER_PAGE,
    live: LiveCache | None = None,
) -> DashboardState:
    """Every run is classified (filters and the experiments table need them all); only page `page` is kept."""
    now = time.time()
    rows = [build_row(record, slurm, now) for record in records]
    names = {row.experiment for row in rows if row.experiment} | set(signal_experiments(drive))
    found = {name: signals.read(drive, name) for name in sorted(names)}
    latest: dict[str, dict[str, RunRow]] = {}
    for row in rows:  # records come newest first
        latest.setdefault(row.experiment, {}).setdefault(row.kind, row)
    shown = [row for row in rows if matches(row, experiment, status)]
    start = (page - 1) * per_page
    runs = shown[start : start + per_page]
    older_failed: list[RunRow] = []
    older_failed_total = 0
    if page == 1 and not status:
        # Failed runs are never hidden: those older than the first page are listed under it.
        failed = [row for row in shown[per_page:] if row.status == "failed"]
        older_failed, older_failed_total = failed[:FAILED_ON_FIRST_PAGE], len(failed)
    # Where the experiments table's links land: the row's page with these filters, else without the status one.
    wanted = {row.run_id for kinds in latest.values() for row in kinds.values()}
    kept = _page_of(shown, wanted, per_page)
    run_pages = {run_id: (number, True) for run_id, number in kept.items()}
    if status and len(kept) < len(wanted):
        unfiltered = [row for row in rows if matches(row, experiment, "")]
        for run_id, number in _page_of(unfiltered, wanted - kept.keys(), per_page).items():
            run_pages[run_id] = (number, False)
    experiments = sorted(name for name in names if not experiment or experiment.lower() in name.lower())
    metrics = {name: live.read(drive, name) for name in experiments} if live is not None else {}
    linked = {row.slurm_job_id for row in rows if row.slurm_job_id}
    queue = sorted(
        (job for job in slurm.queue.values() if job.job_id not in linked and not job.is_terminal),
        key=lambda job: job.job_id,
    )
    return DashboardState(
        runs=runs,
        total_runs=len(rows),
        experiments=experiments,
        signals={k: v for k, v in found.items() if v is not None},
        queue=queue,
        slurm=slurm,
        latest=latest,
        alerts=[
            a
            for a in alerts
            if not experiment or experiment.lower() in str(a.get("experiment") or "").lower() or not a.get("experiment")
        ],
        experiment_filter=experiment,
        status_filter=status,
        matched=len(shown),
        page=page,
        per_page=per_page,
        older_failed=older_failed,
        older_failed_total=older_failed_total,
        run_pages=run_pages,
        live={k: v for k, v in metrics.items() if v is not None},
    )
