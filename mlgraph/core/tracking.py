"""MLflow, written one way: the client for a tracking URI, lock retries, get-or-create experiment, runs.

Everything that writes MLflow goes through here: the `MlflowTracking` resource (training and
external assets, the MLflow status sensors), the CLI, and the trainer-side hook (which may import
only core). Plain Python; mlflow is imported inside the functions that call it (1.6 s), never at
module import.

Every call goes through an explicit `MlflowClient` (no fluent global "active run"), so two writers in
one process never share hidden state. Writers in *other* processes (parallel partitions, Slurm jobs,
a trainer) can still collide on a SQLite store: every call retries "database is locked" with
jittered backoff, and nothing else.

Against an HTTP tracking server (`mlgraph mlflow-server`) MLflow's client sends
$MLFLOW_TRACKING_USERNAME/$MLFLOW_TRACKING_PASSWORD itself; its request retries are bounded here
(defaults set only where the user set none), and an unreachable or unauthorized server surfaces as
a `TrackingServerError` naming the URI and the fix, never as an endless wait.

Experiments are named `<prefix>/<experiment>` and store their artifacts under
`$SHARED_DRIVE/mlflow-artifacts/<experiment>`. A Dagster run has one parent run (tag
`dagster_run_id`, dagster-mlflow's name for it) and one child run per trained family (MLflow's
`mlflow.parentRunId` nesting tag).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from mlgraph.core.drive import DriveLayout
from mlgraph.core.retry import Retry, jittered

T = TypeVar("T")

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
EXPERIMENT_PREFIX = "mlgraph"
DAGSTER_RUN_TAG = "dagster_run_id"  # dagster-mlflow's tag name
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own nesting tag (the UI nests on it)
ROLE_TAG = "mlgraph.role"
ROLE_PARENT = "execution"
ROLE_CANDIDATE = "candidate"
ROLE_SWEEP = "sweep"  # a model spec's sweep: child of the execution, parent of its trials
ROLE_TRIAL = "trial"
RUN_STATUSES = ("RUNNING", "FINISHED", "FAILED", "KILLED")
MAX_PARAM_LENGTH = 6000
ALREADY_EXISTS = "RESOURCE_ALREADY_EXISTS"
# MLflow's client retries a dead server ~7 times with doubling backoff (minutes): fail within seconds.
# And against a server, MLflow writes "View run ... at <url>" onto stdout, which belongs to the caller
# (a trainer's JSON summary, a CLI's output).
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}
_UNREACHABLE = (
    "max retries exceeded",
    "failed to establish a new connection",
    "connection refused",
    "connectionerror",
    "timed out",
    "name or service not known",
    "remotedisconnected",
)
_LOCKED = ("database is locked", "database table is locked", "sqlite_busy", "database schema has changed")


def experiment_name(experiment: str, prefix: str = EXPERIMENT_PREFIX) -> str:
    return f"{prefix}/{experiment}"


def registered_model_name(experiment: str, prefix: str = EXPERIMENT_PREFIX) -> str:
    """Model Registry name of an experiment's champions (the alias `champion` marks the current one)."""
    return f"{prefix}.{experiment}"


def resolve_tracking_uri(tracking_uri: str | None = None, drive_root: str | os.PathLike[str] | None = None) -> str:
    """The URI given, else $MLFLOW_TRACKING_URI, else SQLite at $SHARED_DRIVE/state/mlflow.db (read at call time)."""
    if tracking_uri:
        return tracking_uri
    if os.environ.get(TRACKING_URI_ENV):
        return os.environ[TRACKING_URI_ENV]
    db = DriveLayout.at(drive_root).mlflow_db()
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}"


def artifact_location(
    experiment: str,
    artifact_root: str | os.PathLike[str] | None = None,
    drive_root: str | os.PathLike[str] | None = None,
) -> str:
    """`<artifact_root>/<experiment>` as a file URI; the root defaults to $SHARED_DRIVE/mlflow-artifacts."""
    root = Path(artifact_root) if artifact_root else DriveLayout.at(drive_root).mlflow_artifacts_dir()
    root.mkdir(parents=True, exist_ok=True)
    return root.resolve().as_uri() + f"/{experiment}"


def is_lock_error(exc: BaseException) -> bool:
    text = f"{exc} {exc.__cause__ or ''}".lower()
    return any(marker in text for marker in _LOCKED)


def is_already_exists(exc: BaseException) -> bool:
    """MLflow's answer to creating something that exists (error code, or its message from older stores)."""
    return getattr(exc, "error_code", None) == ALREADY_EXISTS or "already exists" in str(exc).lower()


class TrackingServerError(RuntimeError):
    """The tracking server cannot be reached or refuses the credentials; the message names the URI and fix."""


# URL query parameters that carry a password (libpq and SQLAlchemy accept one as `?password=`).
PASSWORD_PARAMETERS = ("password",)
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")


def redact_url(url: str) -> str:
    """`url` safe to print: the password of its user part and a `password` query parameter shown as ***
    (SQLAlchemy, libpq and http URLs alike, whatever characters the password holds).

    A URL that cannot be parsed is never quoted: only its scheme is shown."""
    if "@" not in url and "password" not in url.lower():
        return url  # no user part and no password parameter: nothing to hide (paths, file:, sqlite:)
    scheme = url.partition("://")[0] if "://" in url else ""
    scheme = scheme if _SCHEME.fullmatch(scheme) else "?"
    unparseable = f"{scheme}://<a URL that cannot be parsed; not shown, it may hold a password>"
    # Lazy: sqlalchemy costs ~0.3 s to import, and only printing a URL needs it.
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError, TypeError):
        return unparseable
    if "@" in (parsed.host or "") or "@" in (parsed.username or ""):
        return unparseable  # an unescaped '@' in the password: part of it would show as the host
    query = {key: ("***" if key.lower() in PASSWORD_PARAMETERS else value) for key, value in parsed.query.items()}
    rendered = parsed.set(query=query).render_as_string(hide_password=True)
    return rendered.replace("=%2A%2A%2A", "=***")


def describe_server_error(exc: BaseException, tracking_uri: str | None) -> str | None:
    """A clear message when `exc` says the tracking server is unreachable or refused us; None otherwise."""
    if not tracking_uri or not tracking_uri.startswith(("http://", "https://")):
        return None
    uri = redact_url(tracking_uri)
    code = getattr(exc, "error_code", None)
    status = exc.get_http_status_code() if hasattr(exc, "get_http_status_code") else None
    if code == "UNAUTHENTICATED" or status == 401:
        return (
            f"MLflow tracking server {uri} answered 401 unauthorized: check MLFLOW_TRACKING_USERNAME/"
            "MLFLOW_TRACKING_PASSWORD (the user must exist on that server; ask its admin)"
        )
    if code == "PERMISSION_DENIED" or status == 403:
        return (
            f"MLflow tracking server {uri} answered 403 forbidden: the user in MLFLOW_TRACKING_USERNAME may "
            "not write here; the server's admin can grant EDIT on the experiment"
        )
    text = f"{exc} {exc.__cause__ or ''}".lower()
    if any(marker in text for marker in _UNREACHABLE):
        return (
            f"MLflow tracking server {uri} unreachable: is `mlgraph mlflow-server` running there, and "
            "MLFLOW_TRACKING_URI right? (gave up after MLFLOW_HTTP_REQUEST_MAX_RETRIES="
            f"{os.environ.get('MLFLOW_HTTP_REQUEST_MAX_RETRIES', '?')} retries)"
        )
    return None


def with_retry(fn: Callable[..., T], *args: Any, attempts: int = 12, base_delay: float = 0.05, **kwargs: Any) -> T:
    """Call `fn`, retrying SQLite lock errors with jittered exponential backoff (≈ 25 s in all)."""
    policy = Retry(attempts=attempts, delay=base_delay, max_delay=5.0, transient=is_lock_error, jitter=jittered)
    try:
        return policy.call(fn, *args, **kwargs)
    except Exception as exc:
        message = describe_server_error(exc, getattr(getattr(fn, "__self__", None), "tracking_uri", None))
        if message:
            raise TrackingServerError(message) from exc
        raise


def mlflow_client(tracking_uri: str) -> Any:
    """An MlflowClient bound to `tracking_uri` (imports mlflow here, not at module import)."""
    from mlflow.tracking import MlflowClient

    if tracking_uri.startswith(("http://", "https://")):
        for name, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(name, value)

    return MlflowClient(tracking_uri=tracking_uri)


def ensure_experiment(client: Any, name: str, location: str) -> str:
    """The id of MLflow experiment `name`, created with artifact location `location` if it does not exist."""
    found = with_retry(client.get_experiment_by_name, name)
    if found is not None:
        return found.experiment_id
    try:
        return with_retry(client.create_experiment, name, artifact_location=location)
    except Exception as exc:
        # Only a creation race (another process created it since our lookup) is expected here.
        if not is_already_exists(exc):
            raise
        found = with_retry(client.get_experiment_by_name, name)
        if found is None:
            raise
        return found.experiment_id


def _param_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= MAX_PARAM_LENGTH else text[: MAX_PARAM_LENGTH - 3] + "..."


class Tracker:
    """Runs of one MLflow experiment, written through one client with lock retries."""

    def __init__(self, client: Any, experiment_id: str):
        self.client = client
        self.experiment_id = experiment_id

    @classmethod
    def open(
        cls,
        experiment: str,
        tracking_uri: str | None = None,
        prefix: str = EXPERIMENT_PREFIX,
        artifact_root: str | os.PathLike[str] | None = None,
        drive_root: str | os.PathLike[str] | None = None,
    ) -> Tracker:
        """The tracker of `<prefix>/<experiment>`, creating the experiment (and its artifact location) if needed."""
        client = mlflow_client(resolve_tracking_uri(tracking_uri, drive_root))
        location = artifact_location(experiment, artifact_root, drive_root)
        return cls(client, ensure_experiment(client, experiment_name(experiment, prefix), location))

    def create_run(self, run_name: str, tags: Mapping[str, str], start_time_ms: int | None = None) -> str:
        run = with_retry(
            self.client.create_run, self.experiment_id, run_name=run_name, tags=dict(tags), start_time=start_time_ms
        )
        return run.info.run_id

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
        self,
        dagster_run_id: str,
        run_name: str,
        tags: Mapping[str, str],
        params: Mapping[str, Any],
        start_time_ms: int | None = None,
    ) -> tuple[str, bool]:
        """The parent run of this Dagster run, created (with its params) on first use; (run_id, created)."""
        existing = self.find_parent(dagster_run_id)
        if existing is not None:
            self.set_status(existing, "RUNNING")
            return existing, False
        all_tags = {**tags, DAGSTER_RUN_TAG: dagster_run_id, ROLE_TAG: ROLE_PARENT}
        run_id = self.create_run(run_name, all_tags, start_time_ms)
        self.log(run_id, params=params)
        return run_id, True

    def child_run(
        self, parent_id: str, run_name: str, tags: Mapping[str, str], start_time_ms: int | None = None
    ) -> str:
        return self.create_run(run_name, {**tags, PARENT_TAG: parent_id, ROLE_TAG: ROLE_CANDIDATE}, start_time_ms)

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

    def set_status(self, run_id: str, status: str, end_time_ms: int | None = None) -> None:
        """RUNNING reopens a run; FINISHED / FAILED / KILLED end it (and stamp its end time, default now)."""
        if status not in RUN_STATUSES:
            raise ValueError(f"MLflow run status {status!r} is not one of {RUN_STATUSES}")
        if status == "RUNNING":
            with_retry(self.client.update_run, run_id, status="RUNNING")
        else:
            with_retry(self.client.set_terminated, run_id, status=status, end_time=end_time_ms)

    def status(self, run_id: str) -> str:
        return with_retry(self.client.get_run, run_id).info.status


def reconcile_parent(client: Any, name: str, dagster_run_id: str, status: str) -> str | None:
    """Set the parent run of `dagster_run_id` in MLflow experiment `name` to `status` if it says otherwise.

    Returns the run id when it changed. Never creates anything: a Dagster run without an MLflow
    experiment or parent run is left alone.
    """
    experiment = with_retry(client.get_experiment_by_name, name)
    if experiment is None:
        return None
    tracker = Tracker(client, experiment.experiment_id)
    run_id = tracker.find_parent(dagster_run_id)
    if run_id is None or tracker.status(run_id) == status:
        return None
    tracker.set_status(run_id, status)
    return run_id
