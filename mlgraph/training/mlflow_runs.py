"""The training group's MLflow runs: one parent run per Dagster run, one child run per model family.

Runs are written through mlgraph.core.tracking (explicit client, lock retries), from the asset's own process:
training workers return results and the parent process logs them, so one Dagster run never makes
two writers. The parent run's status is set here, not by dagster-mlflow's hook (which can mark the
MLflow run finished while later ops still run, dagster issue #21872): FAILED as soon as a step fails,
FINISHED after the run's last training step, and FAILED again at the end of the run if any other step
of it failed (MlflowTracking's teardown, and the run-status sensors in sensors/mlflow_status.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

from mlgraph.core.experiment import LoadedExperiment
from mlgraph.core.metrics import mlflow_metric_key
from mlgraph.core.tags import RETRAINING_TAGS
from mlgraph.core.tracking import Tracker

# The assets that write this Dagster run's parent run, in run order (the training group).
TRAINING_STEPS = ("candidate_models", "decision_threshold", "evaluation_metrics", "champion_model")


def later_steps(step: str) -> tuple[str, ...]:
    """The training steps that run after `step` when a run selects them."""
    return TRAINING_STEPS[TRAINING_STEPS.index(step) + 1 :]


def ran_training(selected: Iterable[str]) -> bool:
    return any(name in TRAINING_STEPS for name in selected)


def execution_params(
    loaded: LoadedExperiment, meta: Mapping[str, Any], selection_metric: str | None = None
) -> dict[str, Any]:
    """The execution's inputs, as the comparison table shows them (`selection_metric`: resolved for the target)."""
    config = loaded.config
    params = {
        "experiment": config.name,
        "task": config.task,
        "config_hash": config.config_hash,
        "families": ",".join(config.model_names),
        "selection_metric": selection_metric or config.selection_metric,
        "cv_folds": config.cv_folds,
        "seed": config.seed,
        "sampling.strategy": config.sampling.strategy,
        "sampling.train_rows": config.sampling.train_rows,
        "sampling.test_rows": config.sampling.test_rows,
        "split.test_size": config.split.test_size,
        "train_rows": meta.get("train_rows_after"),
        "test_rows": meta.get("test_rows_after"),
    }
    if config.task == "classification":
        params["precision_target"] = config.precision_target
    if config.task == "forecasting":
        params.update({f"forecast.{k}": v for k, v in config.forecast.model_dump().items()})
        params.update({f"composite.{k}": v for k, v in config.selection.composite_weights.items()})
    return params


def trigger_tags(run_tags: Mapping[str, str]) -> dict[str, str]:
    """What started the Dagster run (a drift trigger: reason and window), in MLflow's tag spelling."""
    return {name.replace("/", "."): run_tags[name] for name in RETRAINING_TAGS if name in run_tags}


class ExecutionRun:
    """One Dagster run's MLflow parent run, as one training step sees it."""

    def __init__(
        self,
        tracker: Tracker,
        dagster_run_id: str,
        partition: str,
        job_name: str,
        run_tags: Mapping[str, str] | None = None,
    ):
        self.trigger = trigger_tags(run_tags or {})
        self.tracker = tracker
        self.dagster_run_id = dagster_run_id
        self.partition = partition
        self.job_name = job_name
        self.run_id: str | None = None
        self.created = False
        self.failed = False  # set when the step knows the Dagster run will fail (a blocking check)

    def open(self, loaded: LoadedExperiment, meta: Mapping[str, Any], selection_metric: str | None = None) -> str:
        """Create the parent run (first step of the Dagster run) or reopen it; returns its id."""
        config = loaded.config
        tags = {
            "mlgraph.experiment": config.name,
            "mlgraph.partition": self.partition,
            "mlgraph.config_hash": config.config_hash,
            "mlgraph.dataset_sha256": meta["dataset_sha256"],
            "mlgraph.train_sha256": meta["train_sha256"],
            "mlgraph.test_sha256": meta["test_sha256"],
            "mlgraph.job": self.job_name,
            "mlgraph.config_file": str(loaded.path),
            **self.trigger,
        }
        name = f"{config.name}-{self.dagster_run_id[:8]}"
        self.run_id, self.created = self.tracker.parent_run(
            self.dagster_run_id, name, tags, execution_params(loaded, meta, selection_metric)
        )
        return self.run_id

    def existing(self) -> str | None:
        return self.run_id or self.tracker.find_parent(self.dagster_run_id)

    def child_tags(self, loaded: LoadedExperiment, meta: Mapping[str, Any]) -> dict[str, str]:
        config = loaded.config
        return {
            "dagster_run_id": self.dagster_run_id,
            "mlgraph.experiment": config.name,
            "mlgraph.partition": self.partition,
            "mlgraph.config_hash": config.config_hash,
            "mlgraph.dataset_sha256": meta["dataset_sha256"],
            "mlgraph.train_sha256": meta["train_sha256"],
            "mlgraph.task": config.task,
        }

    def finish(self, run_continues: bool) -> None:
        """After a successful step: FAILED if the step failed the run, FINISHED if no training step follows."""
        run_id = self.existing()
        if run_id is None:
            return
        if self.failed:
            self.tracker.set_status(run_id, "FAILED")
        elif not run_continues:
            self.tracker.set_status(run_id, "FINISHED")


def log_candidate(
    tracker: Tracker,
    parent_id: str,
    result: Any,
    tags: Mapping[str, str],
    config: Any,
    best_trial_run: str | None = None,
) -> str:
    """One child run for a trained model spec: params, fold metrics, CV summary, epoch losses, the model file.

    `result` is a candidates.ModelOutcome; the run is named after the spec. Fold metrics are series with
    step = fold index, per-epoch losses series with step = epoch.
    """
    # Specs train in worker processes before anything is logged: date the child run back by its own
    # compute time (fit + CV) so its MLflow duration (and `mlgraph compare`'s) is the spec's cost.
    start_ms = int((time.time() - result.fit_seconds - result.cv_seconds) * 1000)
    run_tags = {**tags, "mlgraph.family": result.family, "mlgraph.model": result.name}
    if "sweep_trial" in result.metadata:  # a swept spec: the candidate is its best trial
        run_tags.update({"mlgraph.sweep_trial": result.metadata["sweep_trial"]})
        if best_trial_run:
            run_tags["mlgraph.sweep_trial_run_id"] = best_trial_run
    run_id = tracker.child_run(parent_id, result.name, run_tags, start_ms)
    params = {
        **{f"model.{k}": v for k, v in result.params.items()},
        "family": result.family,
        **({"model_name": result.name} if result.name != result.family else {}),
        **({"import_path": result.spec.import_path} if result.spec.import_path else {}),
        "seed": config.seed,
        "cv_folds": config.cv_folds,
    }
    metrics = {f"cv_{m}_mean": s["mean"] for m, s in result.cv.items()}
    metrics.update({f"cv_{m}_std": s["std"] for m, s in result.cv.items()})
    metrics.update({"fit_seconds": result.fit_seconds, "cv_seconds": result.cv_seconds})
    series = [(f"cv_{m}", v, fold) for fold, fm in enumerate(result.fold_metrics) for m, v in fm.items()]
    for epoch in result.history:
        series += [("train_loss", epoch["train_loss"], epoch["epoch"]), ("val_loss", epoch["val_loss"], epoch["epoch"])]
    if result.history:
        metrics.update({"epochs_run": len(result.history), "best_epoch": result.metadata.get("best_epoch", 0)})
    tracker.log(run_id, params=params, metrics=metrics, series=series)
    tracker.log_artifact(run_id, str(result.artifact), artifact_path=result.name)
    tracker.set_status(run_id, "FINISHED")
    return run_id


def log_candidates(
    tracker: Tracker,
    parent_id: str,
    outcome: Any,
    tags: Mapping[str, str],
    config: Any,
    best_trial_runs: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Child runs for every spec of a candidates.TrainingOutcome, then the parent's totals; spec name → run id.

    Written one after another once the workers are done: the workers never touch MLflow.
    """
    best = best_trial_runs or {}
    run_ids = {
        name: log_candidate(tracker, parent_id, result, tags, config, best.get(name))
        for name, result in outcome.models.items()
    }
    tracker.log(parent_id, metrics={"training_seconds": outcome.wall_seconds, "workers": outcome.n_jobs})
    return run_ids


def log_thresholds(
    tracker: Tracker, parent_id: str, manifest: Mapping[str, Any], results: Mapping[str, Any], chosen: str
) -> None:
    """Each spec's calibrated threshold on its child run; the chosen spec's on the parent run."""
    for name, entry in manifest["families"].items():
        result = results[name]
        tracker.log(
            entry["run_id"],
            metrics={
                "threshold": result.threshold,
                "oof_precision_at_threshold": result.precision,
                "oof_recall_at_threshold": result.recall,
            },
            tags={"mlgraph.threshold_reached_target": str(result.reached_target).lower()},
        )
    tracker.log(parent_id, metrics={"threshold": results[chosen].threshold})


def run_link(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """Where a run opens in the MLflow UI (a server URI), else its id (a file or database store)."""
    if tracking_uri.startswith(("http://", "https://")):
        from mlgraph.core.tracking import redact_url

        return f"{redact_url(tracking_uri).rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return run_id


class SweepTracking:
    """A spec's sweep in MLflow: one run for the sweep (child of the execution), one child run per trial.

    A trial's run is opened when the trial starts (RUNNING, its params already there) and completed from
    its record: CV and test metrics, per-fold and per-epoch series, its duration, its status (a failed
    trial FAILED with its error as a tag, a pruned one KILLED and tagged pruned).
    """

    def __init__(
        self, tracker: Tracker, parent_id: str, tags: Mapping[str, str], spec: Any, sweep_key: str, metric: str
    ):
        from mlgraph.core.tracking import PARENT_TAG, ROLE_SWEEP, ROLE_TAG

        self.tracker = tracker
        self.spec = spec
        self.base_tags = {
            **tags,
            "mlgraph.sweep": spec.key,
            "mlgraph.sweep_key": sweep_key,
            "mlgraph.model": spec.key,
            "mlgraph.family": spec.family,
        }
        sweep = spec.sweep
        self.run_id = tracker.create_run(
            f"{spec.key}-sweep", {**self.base_tags, PARENT_TAG: parent_id, ROLE_TAG: ROLE_SWEEP}
        )
        settings: dict[str, Any] = {"kind": "grid" if sweep.grid is not None else "search", "selection_metric": metric}
        if sweep.grid is not None:
            settings.update({f"grid.{k}": json.dumps(v) for k, v in sweep.grid.items()})
        else:
            search = sweep.search
            settings.update(sampler=search.sampler, n_trials=search.n_trials, timeout=search.timeout, seed=search.seed)
            settings.update({f"space.{k}": _space_text(v) for k, v in search.space.items()})
        settings.update(prune=sweep.prune, max_parallel=sweep.max_parallel)
        tracker.log(self.run_id, params={f"sweep.{k}": v for k, v in settings.items()})

    def trial_started(self, running: Any) -> None:
        from mlgraph.core.tracking import PARENT_TAG, ROLE_TAG, ROLE_TRIAL

        tags = {
            **self.base_tags,
            PARENT_TAG: self.run_id,
            ROLE_TAG: ROLE_TRIAL,
            "mlgraph.trial_key": running.key,
            "mlgraph.trial_number": str(running.number),
            "mlgraph.trial_runner": running.owner.kind,
        }
        if running.owner.job_id:
            tags["slurm.job_id"] = running.owner.job_id
        run_id = self.tracker.create_run(f"{self.spec.key}-t{running.number:03d}", tags)
        self.tracker.log(run_id, params={f"model.{k}": v for k, v in running.params.items()})
        running.mlflow_run_id = run_id

    def trial_ended(self, record: Mapping[str, Any], running: Any) -> str:
        if running.mlflow_run_id is None:  # adopted from an orchestrator that had not opened it
            self.trial_started(running)
        run_id = running.mlflow_run_id
        metrics: dict[str, float] = {}
        for name, summary in (record.get("cv") or {}).items():
            metrics[f"cv_{mlflow_metric_key(name)}_mean"] = summary["mean"]
            metrics[f"cv_{mlflow_metric_key(name)}_std"] = summary["std"]
        metrics.update({f"test_{mlflow_metric_key(k)}": v for k, v in (record.get("test") or {}).items()})
        for key in ("fit_seconds", "cv_seconds", "trial_wall_seconds", "overhead_seconds"):
            if record.get(key) is not None:
                metrics[key] = record[key]
        series = [
            (f"cv_{mlflow_metric_key(m)}", v, fold)
            for fold, fm in enumerate(record.get("fold_metrics") or [])
            for m, v in fm.items()
        ]
        for epoch in record.get("history") or []:
            series += [
                ("train_loss", epoch["train_loss"], epoch["epoch"]),
                ("val_loss", epoch["val_loss"], epoch["epoch"]),
            ]
        if record.get("prune_losses") and not record.get("history"):
            series += [("val_loss", v, i) for i, v in enumerate(record["prune_losses"], start=1)]
        tags = {"mlgraph.trial_state": record["status"]}
        if record.get("error"):
            tags["mlgraph.error"] = str(record["error"])[:4000]
        if record.get("slurm_job_id"):
            tags["slurm.job_id"] = str(record["slurm_job_id"])
        self.tracker.log(run_id, metrics=metrics, series=series, tags=tags)
        status = {"finished": "FINISHED", "pruned": "KILLED"}.get(record["status"], "FAILED")
        end_ms = int(record["ended_at"] * 1000) if record.get("ended_at") else None
        self.tracker.set_status(run_id, status, end_ms)
        return run_id

    def finish(self, outcome: Any, best_run_id: str | None) -> None:
        counts = outcome.counts()
        metrics = {f"trials_{k}": v for k, v in counts.items()}
        metrics.update(sweep_seconds=outcome.wall_seconds, trials_reused=outcome.reused, trials_ran=outcome.ran)
        tags = {"mlgraph.sweep_runner": outcome.runner}
        if outcome.best is not None:
            tags.update(
                {"mlgraph.best_trial": outcome.best["key"], "mlgraph.best_trial_number": str(outcome.best["number"])}
            )
            if best_run_id:
                tags["mlgraph.best_trial_run_id"] = best_run_id
            value = outcome.best["cv"][outcome.metric]["mean"]
            metrics[f"best_cv_{mlflow_metric_key(outcome.metric)}"] = value
        self.tracker.log(self.run_id, metrics=metrics, tags=tags)
        self.tracker.set_status(self.run_id, "FINISHED" if outcome.best is not None else "FAILED")


def _space_text(space: Any) -> str:
    if isinstance(space, list):
        return json.dumps(space)
    text = f"{space.low}..{space.high}"
    return text + (" log" if space.log else "") + (" int" if space.type == "int" else "")
