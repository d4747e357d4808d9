"""MLflow bookkeeping: one parent run per Dagster run, one child run per model family.

Everything goes through an explicit `MlflowClient` (no fluent global "active run"), from the
asset's own process: training workers return results and the parent process writes them, so a
SQLite backend never sees two writers from one Dagster run. Writers from *other* runs (parallel
partitions, Slurm jobs) can still collide; every call retries "database is locked" with backoff.

The parent run carries dagster-mlflow's `dagster_run_id` tag, so the dagster-mlflow resource
(`dagster_mlflow.mlflow_tracking`) used in an op job would attach to the same run. Its status is
set here, not by dagster-mlflow's hook, which ends the MLflow run when the *first* op finishes
(dagster issue #21872): FAILED as soon as a step fails, FINISHED after the run's last training step,
and FAILED again at the end of the run if any other step of it failed (MlflowTracking's teardown,
and the run-status sensors in sensors/mlflow_status.py for runs the daemon sees).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")

DAGSTER_RUN_TAG = "dagster_run_id"  # dagster-mlflow's tag name
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own nesting tag (the UI nests on it)
ROLE_TAG = "mlgraph.role"
ROLE_PARENT = "execution"
ROLE_CANDIDATE = "candidate"
_LOCKED = ("database is locked", "database table is locked", "sqlite_busy", "database schema has changed")
MAX_PARAM_LENGTH = 6000


def is_lock_error(exc: BaseException) -> bool:
    text = f"{exc} {exc.__cause__ or ''}".lower()
    return any(marker in text for marker in _LOCKED)


def with_retry(fn: Callable[..., T], *args: Any, attempts: int = 12, base_delay: float = 0.05, **kwargs: Any) -> T:
    """Call `fn`, retrying SQLite lock errors with jittered exponential backoff (≈ 25 s in all)."""
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if not is_lock_error(exc) or attempt == attempts - 1:
                raise
            # Jitter from a private RNG: the global one is seeded for the models.
            time.sleep(min(5.0, base_delay * 2**attempt) * (0.5 + random.Random().random()))
    raise AssertionError("unreachable")


def _param_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= MAX_PARAM_LENGTH else text[: MAX_PARAM_LENGTH - 3] + "..."


class Tracker:
    """Runs of one MLflow experiment, written through one client with lock retries."""

    def __init__(self, client: Any, experiment_id: str):
        self.client = client
        self.experiment_id = experiment_id

    def find_parent(self, dagster_run_id: str) -> str | None:
        runs = with_retry(
            self.client.search_runs,
            [self.experiment_id],
            filter_string=f"tags.{DAGSTER_RUN_TAG} = '{dagster_run_id}'",
            max_results=100,
        )
        parents = [r for r in runs if PARENT_TAG not in r.data.tags]
        return parents[0].info.run_id if parents else None

    def parent_run(
        self, dagster_run_id: str, run_name: str, tags: Mapping[str, str], params: Mapping[str, Any]
    ) -> tuple[str, bool]:
        """The parent run of this Dagster run, created (with its params) on first use; (run_id, created)."""
        existing = self.find_parent(dagster_run_id)
        if existing is not None:
            self.set_status(existing, "RUNNING")
            return existing, False
        all_tags = {**tags, DAGSTER_RUN_TAG: dagster_run_id, ROLE_TAG: ROLE_PARENT}
        run = with_retry(self.client.create_run, self.experiment_id, run_name=run_name, tags=all_tags)
        self.log(run.info.run_id, params=params)
        return run.info.run_id, True

    def child_run(self, parent_id: str, run_name: str, tags: Mapping[str, str], start_time_ms: int | None = None) -> str:
        all_tags = {**tags, PARENT_TAG: parent_id, ROLE_TAG: ROLE_CANDIDATE}
        run = with_retry(
            self.client.create_run, self.experiment_id, run_name=run_name, tags=all_tags, start_time=start_time_ms
        )
        return run.info.run_id

    def log(
        self,
        run_id: str,
        params: Mapping[str, Any] | None = None,
        metrics: Mapping[str, float] | None = None,
        tags: Mapping[str, str] | None = None,
        series: Iterable[tuple[str, float, int]] = (),
    ) -> None:
        """One batch: params, metrics (step 0), tags and (key, value, step) series such as per-epoch losses."""
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        metric_list = [Metric(k, float(v), now, 0) for k, v in (metrics or {}).items() if v == v]  # drop NaN
        metric_list += [Metric(k, float(v), now, int(step)) for k, v, step in series if v == v]
        param_list = [Param(k, _param_value(v)) for k, v in (params or {}).items() if v is not None]
        tag_list = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
        # MLflow caps one batch at 1000 metrics / 100 params / 100 tags.
        for i in range(0, len(metric_list), 1000):
            with_retry(self.client.log_batch, run_id, metrics=metric_list[i : i + 1000])
        for i in range(0, len(param_list), 100):
            with_retry(self.client.log_batch, run_id, params=param_list[i : i + 100])
        for i in range(0, len(tag_list), 100):
            with_retry(self.client.log_batch, run_id, tags=tag_list[i : i + 100])

    def log_artifact(self, run_id: str, path: str, artifact_path: str) -> None:
        with_retry(self.client.log_artifact, run_id, path, artifact_path=artifact_path)

    def set_status(self, run_id: str, status: str) -> None:
        """RUNNING reopens a run; FINISHED / FAILED / KILLED end it (and stamp its end time)."""
        if status == "RUNNING":
            with_retry(self.client.update_run, run_id, status="RUNNING")
        else:
            with_retry(self.client.set_terminated, run_id, status=status)

    def status(self, run_id: str) -> str:
        return with_retry(self.client.get_run, run_id).info.status


def log_candidate(tracker: Tracker, parent_id: str, result: Any, tags: Mapping[str, str], config: Any) -> str:
    """One child run for a trained family: params, fold metrics, CV summary, epoch losses, the model file.

    `result` is a candidates.FamilyOutcome; fold metrics are series with step = fold index, per-epoch
    losses series with step = epoch.
    """
    # Families train in worker processes before anything is logged: date the child run back by its own
    # compute time (fit + CV) so its MLflow duration (and `mlgraph compare`'s) is the family's cost.
    start_ms = int((time.time() - result.fit_seconds - result.cv_seconds) * 1000)
    run_id = tracker.child_run(parent_id, result.family, {**tags, "mlgraph.family": result.family}, start_ms)
    params = {**{f"model.{k}": v for k, v in result.params.items()}, "family": result.family,
              "seed": config.seed, "cv_folds": config.cv_folds}
    metrics = {f"cv_{m}_mean": s["mean"] for m, s in result.cv.items()}
    metrics.update({f"cv_{m}_std": s["std"] for m, s in result.cv.items()})
    metrics.update({"fit_seconds": result.fit_seconds, "cv_seconds": result.cv_seconds})
    series = [(f"cv_{m}", v, fold) for fold, fm in enumerate(result.fold_metrics) for m, v in fm.items()]
    for epoch in result.history:
        series += [("train_loss", epoch["train_loss"], epoch["epoch"]), ("val_loss", epoch["val_loss"], epoch["epoch"])]
    if result.history:
        metrics.update({"epochs_run": len(result.history), "best_epoch": result.metadata.get("best_epoch", 0)})
    tracker.log(run_id, params=params, metrics=metrics, series=series)
    tracker.log_artifact(run_id, str(result.artifact), artifact_path=result.family)
    tracker.set_status(run_id, "FINISHED")
    return run_id


def reconcile_parent(client: Any, experiment_name: str, dagster_run_id: str, status: str) -> str | None:
    """Set the parent run of `dagster_run_id` to `status` if it says otherwise; returns its id when changed.

    Never creates anything: a Dagster run without an MLflow experiment or parent run is left alone.
    """
    experiment = with_retry(client.get_experiment_by_name, experiment_name)
    if experiment is None:
        return None
    tracker = Tracker(client, experiment.experiment_id)
    run_id = tracker.find_parent(dagster_run_id)
    if run_id is None or tracker.status(run_id) == status:
        return None
    tracker.set_status(run_id, status)
    return run_id
