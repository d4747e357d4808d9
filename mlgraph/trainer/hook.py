"""The training completion hook: the last call of a training script on any machine that mounts the drive.

    from mlgraph.trainer import signal_training_complete
    result = signal_training_complete("salary", checkpoint_dir, final_loss=0.12, num_epochs=20)
    if not result:
        print(result.error)

It validates the signal, logs final metrics to MLflow when configured, and writes
`$SHARED_DRIVE/models/{experiment}/.training_complete` atomically, retrying transient I/O errors.
It never raises into the training script: the model is already trained, so a failed signal is
logged and returned, never turned into a crash. Importing it loads neither dagster, torch nor mlflow.
"""

import logging
import os
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from pydantic import ValidationError

from mlgraph.core.drive import SHARED_DRIVE_ENV, DriveLayout, resolve_drive_root
from mlgraph.core.retry import Retry
from mlgraph.core.signals import (
    SignalError,
    TrainingComplete,
    checkpoint_id,
    describe_invalid,
    parse_signal,
    utc_now,
)
from mlgraph.core.tracking import TRACKING_URI_ENV
from mlgraph.core.untrusted import printable

log = logging.getLogger("mlgraph.hook")


@dataclass(frozen=True)
class HookResult:
    """What the hook did; falsy when no signal was written."""

    ok: bool
    signal_path: Path | None = None
    signal: TrainingComplete | None = None
    mlflow_run_id: str | None = None
    attempts: int = 0
    error: str | None = None
    warnings: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.ok


def shared_drive_root(shared_drive: str | os.PathLike[str] | None = None) -> Path:
    """The drive root: the argument, else $SHARED_DRIVE, else <project>/.shared (as the resource)."""
    return resolve_drive_root(shared_drive)


def signal_path(experiment: str, shared_drive: str | os.PathLike[str] | None = None) -> Path:
    return DriveLayout.at(shared_drive).training_complete_signal(experiment)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and commit else None


def _current_user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        # No passwd entry (containers): the uid still identifies the trainer.
        return f"uid-{os.getuid()}"


def signal_training_complete(
    experiment: str,
    checkpoint_path: str | os.PathLike[str],
    *,
    config_path: str | os.PathLike[str] | None = None,
    num_epochs: int | None = None,
    final_loss: float | None = None,
    total_steps: int | None = None,
    git_commit: str | None = None,
    metrics: Mapping[str, float] | None = None,
    params: Mapping[str, object] | None = None,
    hostname: str | None = None,
    user: str | None = None,
    timestamp: datetime | None = None,
    shared_drive: str | os.PathLike[str] | None = None,
    mlflow: bool | None = None,
    mlflow_tracking_uri: str | None = None,
    retries: int = 4,
    backoff_seconds: float = 0.5,
    detect_git: bool = True,
) -> HookResult:
    """Write models/{experiment}/.training_complete for `checkpoint_path`; never raises.

    MLflow logging happens when `mlflow` is True, or when it is None and a tracking URI is given
    (argument or $MLFLOW_TRACKING_URI); its run id goes into the signal.
    """
    try:
        return _signal_training_complete(
            experiment=experiment,
            checkpoint_path=checkpoint_path,
            config_path=config_path,
            num_epochs=num_epochs,
            final_loss=final_loss,
            total_steps=total_steps,
            git_commit=git_commit,
            metrics=metrics,
            params=params,
            hostname=hostname,
            user=user,
            timestamp=timestamp,
            shared_drive=shared_drive,
            mlflow=mlflow,
            mlflow_tracking_uri=mlflow_tracking_uri,
            retries=retries,
            backoff_seconds=backoff_seconds,
            detect_git=detect_git,
        )
    except Exception as exc:
        log.exception("training completion hook failed for %s", experiment)
        return HookResult(ok=False, error=f"{type(exc).__name__}: {exc}")


def _fail(message: str, **kwargs) -> HookResult:
    log.error("training completion hook: %s", message)
    return HookResult(ok=False, error=message, **kwargs)


def _signal_training_complete(
    *,
    experiment,
    checkpoint_path,
    config_path,
    num_epochs,
    final_loss,
    total_steps,
    git_commit,
    metrics,
    params,
    hostname,
    user,
    timestamp,
    shared_drive,
    mlflow,
    mlflow_tracking_uri,
    retries,
    backoff_seconds,
    detect_git,
) -> HookResult:
    drive = shared_drive_root(shared_drive)
    if not drive.is_dir():
        # Never create the root: a missing mount would silently become a local directory.
        return _fail(f"shared drive {drive} does not exist. Fix: mount it or set {SHARED_DRIVE_ENV}.")
    checkpoint = Path(checkpoint_path).expanduser().resolve()
    if not checkpoint.exists():
        return _fail(f"checkpoint {checkpoint} does not exist. Fix: save the checkpoint before signalling.")
    if not checkpoint.is_relative_to(drive):
        return _fail(
            f"checkpoint {checkpoint} is outside the shared drive {drive}. "
            f"Fix: save it under {drive / 'models' / experiment}."
        )
    try:
        signal = TrainingComplete(
            timestamp=timestamp or utc_now(),
            experiment=experiment,
            checkpoint_path=str(checkpoint),
            hostname=hostname or socket.gethostname(),
            user=user or _current_user(),
            config_path=str(config_path) if config_path is not None else None,
            num_epochs=num_epochs,
            final_loss=final_loss,
            total_steps=total_steps,
            git_commit=git_commit or (_git_commit() if detect_git else None),
            metrics={k: float(v) for k, v in metrics.items()} if metrics else None,
        )
    except ValidationError as exc:
        # The readers' own rules (mlgraph.core.signals), so what the hook writes the sensor accepts.
        reason, fix = describe_invalid(exc)
        return _fail(f"invalid training_complete signal for {printable(str(experiment))[:80]!r}: {reason}. Fix: {fix}")
    except ValueError as exc:
        return _fail(f"invalid training_complete signal for {printable(str(experiment))[:80]!r}: {exc}")
    target = DriveLayout(drive).training_complete_signal(experiment)

    warnings: list[str] = []
    tracking_uri = mlflow_tracking_uri or os.environ.get(TRACKING_URI_ENV)
    run_id = None
    if mlflow or (mlflow is None and tracking_uri):
        try:
            run_id = _log_to_mlflow(signal, drive, target, tracking_uri, params or {})
            signal = signal.model_copy(update={"mlflow_run_id": run_id})
        except Exception as exc:
            message = f"MLflow logging failed ({type(exc).__name__}: {exc}); the signal is written without it"
            log.warning(message)
            warnings.append(message)

    payload = signal.to_json().encode("utf-8")
    attempts = 0

    def write() -> None:
        nonlocal attempts
        attempts += 1
        _write_and_verify(target, payload)

    def warn(attempt: int, exc: BaseException, delay: float) -> None:
        log.warning("writing %s failed (%s); retry %d/%d in %.1fs", target, exc, attempt, retries, delay)

    # Network drives fail transiently (EIO, ESTALE, timeouts): back off and try again. A refusal is final.
    policy = Retry(
        attempts=max(retries, 0) + 1,
        delay=backoff_seconds,
        transient=lambda exc: isinstance(exc, OSError) and not isinstance(exc, PermissionError),
        sleep=time.sleep,
        on_retry=warn,
    )
    try:
        policy.call(write)
    except (PermissionError, SignalError) as exc:
        return _fail(f"cannot write {target}: {exc}", signal=signal, attempts=attempts, warnings=warnings)
    except OSError as exc:
        return _fail(
            f"cannot write {target} after {attempts} attempts: {exc}",
            signal=signal,
            attempts=attempts,
            warnings=warnings,
        )
    log.info("wrote %s (checkpoint %s)", target, signal.checkpoint_path)
    return HookResult(
        ok=True, signal_path=target, signal=signal, mlflow_run_id=run_id, attempts=attempts, warnings=warnings
    )


def _write_and_verify(target: Path, payload: bytes) -> None:
    # Imported here: a trainer importing the hook pays only for what it calls.
    from mlgraph.core.atomic import atomic_write_bytes

    atomic_write_bytes(target, payload)
    written = target.read_bytes()
    if written != payload:
        raise OSError(f"{target} reads back different bytes than were written")
    parse_signal(written, TrainingComplete, source=target)


def _log_to_mlflow(
    signal: TrainingComplete, drive: Path, target: Path, tracking_uri: str | None, params: Mapping[str, object]
) -> str:
    """Log final metrics to the active MLflow run, else to a new run in mlgraph/{experiment}; return its id."""
    import mlflow

    from mlgraph.core import tracking

    uri = tracking.resolve_tracking_uri(tracking_uri, drive)
    values = {"final_loss": signal.final_loss, "num_epochs": signal.num_epochs, "total_steps": signal.total_steps}
    values.update(signal.metrics or {})
    step = signal.total_steps or 0
    series = [(k, float(v), step) for k, v in values.items() if v is not None]
    tags = {
        "mlgraph.experiment": signal.experiment,
        "mlgraph.checkpoint_path": signal.checkpoint_path,
        "mlgraph.signal_path": str(target),
        "mlgraph.hostname": signal.hostname,
    }
    if signal.git_commit:
        tags["mlflow.source.git.commit"] = signal.git_commit
    active = mlflow.active_run()
    if active is not None and mlflow.get_tracking_uri() == uri:
        # The trainer already tracks this run: its final metrics belong there.
        tracker = tracking.Tracker(tracking.mlflow_client(uri), active.info.experiment_id)
        tracker.log(active.info.run_id, params=params, tags=tags, series=series)
        return active.info.run_id
    tracker = tracking.Tracker.open(signal.experiment, uri, drive_root=drive)
    run_id = tracker.create_run(f"external-training-{checkpoint_id(signal.checkpoint_path)}", tags)
    tracker.log(run_id, params=params, series=series)
    tracker.set_status(run_id, "FINISHED")
    return run_id
