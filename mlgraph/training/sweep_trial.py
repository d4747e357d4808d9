"""One sweep trial, run by a worker process (local pool or a Slurm job): train, score, write the record.

A trial is one execution of a model spec with the trial's params: cross-validation and the final fit
exactly as `candidate_models` trains any spec (mlgraph.training.candidates), then the test-set metrics.
Everything lands in the trial's directory, each file atomically, the record (`trial.json`) last: a
record on the drive means the trial ended, and says how (finished, failed, pruned). The worker never
touches MLflow or Dagster; the orchestrator (mlgraph.training.sweeps) logs what the record says.

    python -m mlgraph.training.sweep_trial TRIAL_DIR/request.json     (what a Slurm job runs)
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mlgraph.core.atomic import atomic_write_json
from mlgraph.core.untrusted import read_regular_file

REQUEST_FILE = "request.json"
RECORD_FILE = "trial.json"
OOF_FILE = "oof.parquet"
FINISHED, FAILED, PRUNED = "finished", "failed", "pruned"
ENDED = (FINISHED, FAILED, PRUNED)
# A failed trial's message is for a table cell and an MLflow tag: the end of the traceback is enough.
MAX_ERROR_CHARS = 2000
MAX_REQUEST_BYTES = 64 << 20  # a request carries the experiment's config as JSON


@dataclass
class PruneSetup:
    """What the worker's median pruner compares against: earlier completed trials' per-epoch losses."""

    startup_trials: int
    warmup_epochs: int
    completed: list[list[float]] = field(default_factory=list)


@dataclass
class TrialRequest:
    experiment_json: str  # the validated ExperimentConfig, as JSON: the trial runs what was asked
    spec: str
    params: dict[str, Any]
    number: int
    key: str
    sweep_key: str
    train_path: str
    test_path: str
    trial_dir: str
    prune: PruneSetup | None = None
    parent_pid: int | None = None  # a local worker exits when the orchestrator is gone

    def write(self) -> Path:
        path = Path(self.trial_dir) / REQUEST_FILE
        atomic_write_json(path, asdict(self))
        return path

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> TrialRequest:
        # On the drive, writable by anyone: a regular file, bounded (Unusable, a ValueError, otherwise).
        data = json.loads(read_regular_file(path, MAX_REQUEST_BYTES))
        prune = data.pop("prune", None)
        return cls(**data, prune=PruneSetup(**prune) if prune else None)


def read_record(trial_dir: Path) -> dict[str, Any] | None:
    """The trial's record, or None while it has not ended (or its file is unreadable: then it reruns)."""
    path = trial_dir / RECORD_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("status") in ENDED else None


_FRAMES: dict[tuple[str, int, int], Any] = {}


def _read_parquet(path: str):
    """A worker runs many trials on the same splits: read each file once per process (keyed by its stamp)."""
    import pandas as pd

    stat = os.stat(path)
    key = (path, stat.st_mtime_ns, stat.st_size)
    if key not in _FRAMES:
        if len(_FRAMES) >= 4:
            _FRAMES.clear()
        _FRAMES[key] = pd.read_parquet(path)
    return _FRAMES[key]


class _Pruner:
    """Optuna's MedianPruner on the first fit's validation losses (the final fit runs first)."""

    def __init__(self, setup: PruneSetup):
        import optuna
        from optuna.trial import TrialState, create_trial

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        pruner = optuna.pruners.MedianPruner(n_startup_trials=setup.startup_trials, n_warmup_steps=setup.warmup_epochs)
        study = optuna.create_study(direction="minimize", pruner=pruner)
        for losses in setup.completed:
            if losses:
                study.add_trial(
                    create_trial(
                        state=TrialState.COMPLETE,
                        value=min(losses),
                        intermediate_values=dict(enumerate(losses, start=1)),
                    )
                )
        self.trial = study.ask()
        self.last_epoch = 0
        self.listening = True
        self.losses: list[float] = []

    def __call__(self, epoch: int, val_loss: float) -> None:
        from mlgraph.training.epochs import TrialPruned

        if not self.listening or epoch <= self.last_epoch:
            self.listening = False  # a new fit (a CV fold) began: the pruner watched the first one only
            return
        self.last_epoch = epoch
        self.losses.append(val_loss)
        self.trial.report(val_loss, epoch)
        if self.trial.should_prune():
            raise TrialPruned(epoch, val_loss)


def run_trial(request: TrialRequest) -> dict[str, Any]:
    """Train and score one trial; write its files and record; return the record (never raises for the trial)."""
    from mlgraph.training.candidates import exit_with_parent

    if request.parent_pid is not None:
        exit_with_parent(request.parent_pid)
    started = time.time()
    trial_dir = Path(request.trial_dir)
    record: dict[str, Any] = {
        "key": request.key,
        "sweep_key": request.sweep_key,
        "spec": request.spec,
        "number": request.number,
        "params": request.params,
        "started_at": started,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
    }
    pruner = None
    try:
        from mlgraph.training.epochs import TrialPruned, epoch_listener

        pruner = _Pruner(request.prune) if request.prune is not None else None
        try:
            if pruner is not None:
                with epoch_listener(pruner):
                    record.update(_train_and_score(request, trial_dir))
            else:
                record.update(_train_and_score(request, trial_dir))
            record["status"] = FINISHED
        except TrialPruned as pruned:
            record.update(status=PRUNED, pruned_at_epoch=pruned.epoch, error=str(pruned))
    except Exception as exc:  # the trial failed; the sweep goes on and records why
        text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        record.update(
            status=FAILED,
            error=(text + (f" (at {Path(where.filename).name}:{where.lineno})" if where else ""))[:MAX_ERROR_CHARS],
        )
    if pruner is not None:
        record["prune_losses"] = pruner.losses
    record["ended_at"] = time.time()
    record["wall_seconds"] = record["ended_at"] - started
    atomic_write_json(trial_dir / RECORD_FILE, record)
    return record


def _train_and_score(request: TrialRequest, trial_dir: Path) -> dict[str, Any]:
    from mlgraph.core.atomic import atomic_path
    from mlgraph.core.experiment import ExperimentConfig
    from mlgraph.training.candidates import train_candidates
    from mlgraph.training.evaluation import evaluate

    config = ExperimentConfig.model_validate_json(request.experiment_json)
    spec = config.model_spec(request.spec)
    trial_spec = spec.model_copy(update={"params": {**spec.params, **request.params}, "sweep": None})
    trial_config = config.model_copy(update={"models": [trial_spec]})
    train, test = _read_parquet(request.train_path), _read_parquet(request.test_path)
    outcome = train_candidates(trial_config, train, trial_dir, n_jobs=1, where=request.train_path)
    model = outcome.models[request.spec]
    scoring = time.perf_counter()
    test_metrics = evaluate(trial_config, train, test, {request.spec: model.artifact}, {}, outcome.data.scale)
    score_seconds = time.perf_counter() - scoring
    with atomic_path(trial_dir / OOF_FILE) as tmp:
        outcome.oof.to_parquet(tmp, index=False)
    return {
        "family": model.family,
        "resolved_params": model.params,
        "artifact": model.artifact.name,
        "artifact_sha256": model.artifact_sha256,
        "cv": model.cv,
        "fold_metrics": model.fold_metrics,
        "test": test_metrics.metrics[request.spec],
        "selection_metric": outcome.selection_metric,
        "fit_seconds": model.fit_seconds,
        "cv_seconds": model.cv_seconds,
        "score_seconds": score_seconds,
        "history": model.history,
        "metadata": model.metadata,
        "scale": outcome.data.scale,
    }


def run_request_file(path: str) -> dict[str, Any]:
    return run_trial(TrialRequest.read(path))


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m mlgraph.training.sweep_trial TRIAL_DIR/request.json", file=sys.stderr)
        return 2
    try:
        request = TrialRequest.read(args[0])
    except (OSError, ValueError, TypeError) as exc:
        print(f"{args[0]}: not a readable trial request ({exc})", file=sys.stderr)
        return 2
    record = run_trial(request)
    print(json.dumps({"key": record["key"], "status": record["status"], "error": record.get("error")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
