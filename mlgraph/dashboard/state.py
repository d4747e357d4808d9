"""What the page shows, collected read-only: runs from the Dagster instance, Slurm's view of their jobs,
each experiment's latest training signal, and the open alerts. Plain values; render.py turns them into HTML."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from mlgraph.core.drive import DriveLayout
from mlgraph.core.experiment import is_experiment_name
from mlgraph.core.signals import SignalError, TrainingComplete, read_signal
from mlgraph.core.tags import (
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


def build_row(record, slurm: SlurmSnapshot, now: float) -> RunRow:
    run = record.dagster_run
    tags = run.tags
    job_id = tags.get(SLURM_JOB_ID_TAG)
    job = slurm.job(job_id)
    state = job.state if job else tags.get(SLURM_STATE_TAG)
    status, label = classify(run.status.value, state)
    raw = job.raw if job else {}
    start_ts, end_ts = record.start_time, record.end_time
    # Slurm's own figure first (the live queue, the completion record, or what job_end tagged at the end).
    elapsed = (job.elapsed if job else None) or tags.get(SLURM_ELAPSED_TAG)
    if elapsed is None and start_ts:
        elapsed = _duration((end_ts or now) - start_ts)
    return RunRow(
        run_id=run.run_id,
        job_name=run.job_name,
        kind=tags.get(SLURM_KIND_TAG) or _KIND_BY_JOB.get(run.job_name, "other"),
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
    )


class SignalCache:
    """Each experiment's parsed `.training_complete`, reread only when the file's (mtime, size, inode) changes."""

    def __init__(self) -> None:
        self._entries: dict[Path, tuple[tuple[int, int, int], TrainingSignal]] = {}

    def read(self, drive: DriveLayout, experiment: str) -> TrainingSignal | None:
        path = drive.training_complete_signal(experiment)
        try:
            st = os.stat(path)
        except OSError:
            self._entries.pop(path, None)
            return None
        version = (st.st_mtime_ns, st.st_size, st.st_ino)
        cached = self._entries.get(path)
        if cached and cached[0] == version:
            return cached[1]
        try:
            signal, _ = read_signal(path, TrainingComplete, within=drive.root_path)
            entry = TrainingSignal(experiment, signal=signal)
        except SignalError as exc:
            entry = TrainingSignal(experiment, error=str(exc))
        self._entries[path] = (version, entry)
        return entry


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


def collect(
    records: Iterable,
    slurm: SlurmSnapshot,
    drive: DriveLayout,
    signals: SignalCache,
    alerts: list[dict],
    experiment: str = "",
    status: str = "",
) -> DashboardState:
    now = time.time()
    rows = [build_row(record, slurm, now) for record in records]
    names = {row.experiment for row in rows if row.experiment} | set(signal_experiments(drive))
    found = {name: signals.read(drive, name) for name in sorted(names)}
    latest: dict[str, dict[str, RunRow]] = {}
    for row in rows:  # records come newest first
        latest.setdefault(row.experiment, {}).setdefault(row.kind, row)
    shown = [row for row in rows if matches(row, experiment, status)]
    experiments = sorted(name for name in names if not experiment or experiment.lower() in name.lower())
    linked = {row.slurm_job_id for row in rows if row.slurm_job_id}
    queue = sorted(
        (job for job in slurm.queue.values() if job.job_id not in linked and not job.is_terminal),
        key=lambda job: job.job_id,
    )
    return DashboardState(
        runs=shown,
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
    )
